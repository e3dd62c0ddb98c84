"""Each source format, from small fixture files written here, to the common record and meta."""

from __future__ import annotations

import gzip
import json
import pickle
from pathlib import Path

import pytest
from data_helpers import read_all, write_lines

from recone_lite.data.prepare import Options, prepare
from recone_lite.data.readers import iter_lines
from recone_lite.data.records import Interaction, ReadState
from recone_lite.data.sources import SOURCES, loader
from recone_lite.errors import InputError


def load(source: str, reviews: Path | None, meta: Path | None = None, **state):
    read = ReadState(**state)
    loaded = loader(source)(reviews, meta, read)
    read.scale = loaded.scale
    return list(loaded.interactions()), dict(loaded.meta()), loaded.scale


def test_amazon_2023(tmp_path: Path) -> None:
    reviews = write_lines(tmp_path / "Music.jsonl", [json.dumps({
        "rating": 4.0, "title": "Nice", "text": "", "user_id": "U1", "parent_asin": "P1",
        "asin": "A1", "timestamp": 1588615855070})], gz=True)
    meta = write_lines(tmp_path / "meta_Music.jsonl", [json.dumps({
        "parent_asin": "P1", "title": "Blue Train", "main_category": "Digital Music",
        "categories": [], "price": "None", "store": "John Coltrane",
        "description": ["A classic.", "Remastered."], "features": [], "details": {}})])
    rows, metas, scale = load("amazon-2023", reviews, meta)
    assert rows == [Interaction("U1", "P1", 4.0, 1588615855, "Nice")]  # ms -> s; title if no text
    assert metas == {"P1": {"title": "Blue Train", "categories": ["Digital Music"],
                            "store": "John Coltrane", "description": "A classic. Remastered."}}
    assert scale == (1.0, 5.0)


def test_amazon_2018(tmp_path: Path) -> None:
    reviews = write_lines(tmp_path / "r.json", [json.dumps({
        "overall": 5.0, "reviewerID": "R1", "asin": "B1", "reviewText": "Fits well",
        "summary": "Five Stars", "unixReviewTime": 1441324800, "style": {"Size:": " L"}})])
    meta = write_lines(tmp_path / "m.json", [json.dumps({
        "asin": "B1", "title": "Shirt", "category": ["Clothing", "Men"], "brand": "Acme",
        "price": "$12.99", "description": ["Cotton"]})])
    rows, metas, _ = load("amazon-2018", reviews, meta)
    assert rows == [Interaction("R1", "B1", 5.0, 1441324800, "Fits well")]
    assert metas == {"B1": {"title": "Shirt", "categories": ["Clothing", "Men"], "brand": "Acme",
                            "price": "$12.99", "description": "Cotton"}}


def test_amazon_2014_python_literal_meta_never_eval(tmp_path: Path) -> None:
    reviews = write_lines(tmp_path / "reviews_Books.json.gz", [json.dumps({
        "overall": 3.0, "reviewerID": "R1", "asin": "0001", "reviewText": "ok",
        "summary": "meh", "unixReviewTime": 1400000000})], gz=True)
    meta = write_lines(tmp_path / "meta_Books.json.gz", [
        "{'asin': '0001', 'title': 'Dune', 'categories': [['Books', 'Sci-Fi']], 'price': 9.5, "
        "'related': {'also_bought': ['0002']}, 'salesRank': {'Books': 1}}",
        "__import__('os').system('echo owned')",  # code, not a literal: refused, not run
    ], gz=True)
    with pytest.raises(InputError, match=r"meta_Books.json.gz:2: malformed JSON"):
        load("amazon-2014", reviews, meta)
    rows, metas, _ = load("amazon-2014", reviews, meta, skip_bad=True)
    assert rows == [Interaction("R1", "0001", 3.0, 1400000000, "ok")]
    assert metas == {"0001": {"title": "Dune", "categories": ["Books", "Sci-Fi"], "price": 9.5}}


def test_yelp_folder(tmp_path: Path) -> None:
    write_lines(tmp_path / "yelp_academic_dataset_review.json", [json.dumps({
        "review_id": "x", "user_id": "U", "business_id": "B", "stars": 2, "useful": 0,
        "text": "Cold pizza.", "date": "2018-07-07 22:09:11"})])
    write_lines(tmp_path / "yelp_academic_dataset_business.json", [json.dumps({
        "business_id": "B", "name": "Luigi's", "city": "Tucson", "stars": 3.5,
        "categories": "Pizza, Italian", "attributes": {"WiFi": "u'free'", "HasTV": "False"}})])
    rows, metas, _ = load("yelp", tmp_path)
    assert rows == [Interaction("U", "B", 2.0, 1531001351, "Cold pizza.")]
    assert metas == {"B": {"title": "Luigi's", "categories": ["Pizza", "Italian"],
                           "city": "Tucson", "attributes": "WiFi: free"}}


def test_movielens_100k(tmp_path: Path) -> None:
    folder = tmp_path / "ml-100k"
    folder.mkdir()
    write_lines(folder / "u.data", ["196\t242\t3\t881250949", "186\t302\t3\t891717742"])
    flags = ["0"] * 19
    flags[3] = flags[5] = "1"  # Animation, Comedy
    (folder / "u.item").write_bytes(
        ("|".join(["242", "Kolya (1996)", "24-Jan-1997", "", "http://x", *flags]) + "\n")
        .encode("latin-1"))
    rows, metas, scale = load("movielens", folder)
    assert rows[0] == Interaction("196", "242", 3.0, 881250949, "")
    assert metas == {"242": {"title": "Kolya (1996)", "categories": ["Animation", "Comedy"]}}
    assert scale == (1.0, 5.0)


def test_movielens_1m_file_path_finds_movies_beside_it(tmp_path: Path) -> None:
    write_lines(tmp_path / "ratings.dat", ["1::1193::5::978300760"])
    (tmp_path / "movies.dat").write_bytes(
        "1193::Amélie (2001)::Comedy|Romance\n".encode("latin-1"))
    rows, metas, _ = load("movielens", tmp_path / "ratings.dat")
    assert rows == [Interaction("1", "1193", 5.0, 978300760, "")]
    assert metas == {"1193": {"title": "Amélie (2001)", "categories": ["Comedy", "Romance"]}}


def test_movielens_latest_half_stars(tmp_path: Path) -> None:
    write_lines(tmp_path / "ratings.csv", ["userId,movieId,rating,timestamp", "1,1,0.5,964982703"])
    write_lines(tmp_path / "movies.csv", ["movieId,title,genres",
                                          '1,"American President, The (1995)",Comedy|Drama',
                                          "2,Untitled,(no genres listed)"])
    rows, metas, scale = load("movielens", tmp_path)
    assert scale == (0.5, 5.0)
    assert rows == [Interaction("1", "1", 0.5, 964982703, "")]
    assert metas["1"] == {"title": "American President, The (1995)",
                          "categories": ["Comedy", "Drama"]}
    assert metas["2"] == {"title": "Untitled"}


def test_recbole_atomic_files(tmp_path: Path) -> None:
    write_lines(tmp_path / "toy.inter", [
        "user_id:token\titem_id:token\trating:float\ttimestamp:float", "1\t10\t4\t881250949.0"])
    write_lines(tmp_path / "toy.item", [
        "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq",
        "10\tToy Story\t1995\tAnimation Comedy"])
    rows, metas, _ = load("recbole", tmp_path)
    assert rows == [Interaction("1", "10", 4.0, 881250949, "")]
    assert metas == {"10": {"title": "Toy Story", "categories": ["Animation", "Comedy"],
                            "year": "1995"}}


def test_recbole_header_without_timestamp(tmp_path: Path) -> None:
    write_lines(tmp_path / "x.inter", ["user_id:token\titem_id:token\trating:float", "1\t2\t3"])
    with pytest.raises(InputError, match=r"x.inter:1: timestamp: the header has no 'timestamp'"):
        load("recbole", tmp_path / "x.inter")


def test_reason4rec_pickles_only_when_allowed(tmp_path: Path) -> None:
    rows = [{"user_id": "u", "item_id": "i", "ratings": 4, "unixReviewTime": 1_300_000_000,
             "reviews": "good", "title": "Song"}]
    for name in ("train.pkl", "test.pkl"):
        (tmp_path / name).write_bytes(pickle.dumps(rows))
    with pytest.raises(InputError, match="pass --allow-pickle"):
        load("reason4rec", tmp_path)
    got, metas, _ = load("reason4rec", tmp_path, allow_pickle=True)
    assert got == [Interaction("u", "i", 4.0, 1_300_000_000, "good")] * 2
    assert metas == {"i": {"title": "Song"}}


def test_reason4rec_dataframe(tmp_path: Path) -> None:
    pandas = pytest.importorskip("pandas")
    frame = pandas.DataFrame([{"user_id": 1, "item_id": 2, "ratings": 5.0,
                               "unixReviewTime": 1_300_000_000, "reviews": "wow", "title": "T"}])
    frame.to_pickle(tmp_path / "train.pkl")
    got, _, _ = load("reason4rec", tmp_path / "train.pkl", allow_pickle=True)
    assert got == [Interaction("1", "2", 5.0, 1_300_000_000, "wow")]


def test_every_source_is_documented_in_docs(tmp_path: Path) -> None:
    docs = Path(__file__).parents[1] / "docs" / "data.md"
    text = docs.read_text(encoding="utf-8")
    for name in SOURCES:
        assert f"`{name}`" in text, f"--source {name} is not in docs/data.md"


def test_gzip_multi_member_and_crlf(tmp_path: Path) -> None:
    path = tmp_path / "two.gz"
    path.write_bytes(gzip.compress(b"a\r\nb\n") + gzip.compress(b"\n\nc"))
    state = ReadState()
    assert [line.rstrip(b"\r") for line in iter_lines(path, state)] == [b"a", b"b", b"c"]
    assert state.files[0]["lines"] == 5 and state.line == 5


def test_byte_order_mark_and_windows_line_ends(tmp_path: Path) -> None:
    line = json.dumps({"rating": 2, "text": "ok", "user_id": "U", "parent_asin": "P",
                       "timestamp": 5000})
    reviews = tmp_path / "r.jsonl"
    reviews.write_bytes(b"\xef\xbb\xbf" + line.encode() + b"\r\n" + line.encode() + b"\r\n")
    rows, _, _ = load("amazon-2023", reviews)
    assert rows == [Interaction("U", "P", 2.0, 5, "ok")] * 2


def test_each_format_prepares_end_to_end(tmp_path: Path) -> None:
    lines = [f"{u}\t{i}\t{(u + i) % 5 + 1}\t{1000 + 10 * i}" for u in range(6) for i in range(7)]
    write_lines(tmp_path / "u.data", lines)
    prepare("movielens", tmp_path, None, tmp_path / "out", Options(coldstart=3))
    splits = read_all(tmp_path / "out")
    assert [len(splits[s]) for s in ("train", "dev", "test", "coldstart")] == [21, 6, 6, 3]
