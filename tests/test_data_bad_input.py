"""The issue's bad-input list, through the real command line: a one-line error naming file,
line and field, exit code 2, and no output folder (not even a temporary one) left behind."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from data_helpers import amazon_2023, amazon_2023_meta, cli, read_split, write_lines

GOOD = [(f"u{u}", f"i{i}", float((u + i) % 5 + 1), 1000 + 60 * i) for u in range(6)
        for i in range(6)]


def review(user: str = "u", item: str = "i", rating: float = 4.0, seconds: int = 1000) -> str:
    return json.dumps({"rating": rating, "text": "t", "user_id": user, "parent_asin": item,
                       "timestamp": seconds * 1000})


def prepare_cli(tmp_path: Path, reviews: Path, *extra: str, source: str = "amazon-2023"):
    return cli("data", "prepare", "--source", source, "--reviews", reviews,
               "--out", tmp_path / "out", "--k-core", "1", "--coldstart", "0", *extra)


def assert_one_line_error(result, *parts: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: "), result.stderr
    for part in parts:
        assert part in last, (part, last)


def assert_nothing_left(tmp_path: Path, *inputs: str) -> None:
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(inputs)


@pytest.mark.parametrize("line, message", [
    ('{"rating": 4.0, "user_id": ', "reviews.jsonl:2: malformed JSON"),
    ('{"rating": 4.0, "text": "t", "parent_asin": "i", "timestamp": 1}',
     "reviews.jsonl:2: user_id: missing required field"),
    (review(rating=7.0), "reviews.jsonl:2: rating: rating 7 is outside the scale 1-5"),
    (review(rating=0.0), "reviews.jsonl:2: rating: rating 0 is outside the scale 1-5"),
    ('{"rating": 4.0, "user_id": "u", "parent_asin": "i", "timestamp": "soon"}',
     "reviews.jsonl:2: timestamp: timestamp 'soon' is not a number"),
])
def test_bad_review_line(tmp_path: Path, line: str, message: str) -> None:
    reviews = write_lines(tmp_path / "reviews.jsonl", [review(), line, review("v")])
    assert_one_line_error(prepare_cli(tmp_path, reviews), message)
    assert_nothing_left(tmp_path, "reviews.jsonl")


def test_skip_bad_counts_instead(tmp_path: Path) -> None:
    reviews = write_lines(tmp_path / "reviews.jsonl", [
        review("u", "a", 4.0, 1), "{oops", review("u", "b", 9.0, 2), '{"rating": 3}',
        review("u", "c", 2.0, 3), review("u", "d", 5.0, 4)])
    result = prepare_cli(tmp_path, reviews, "--skip-bad")
    assert result.returncode == 0, result.stderr
    counts = json.loads(result.stdout)
    assert counts["skipped"] == {"malformed_json": 1, "missing_field": 1,
                                 "rating_out_of_scale": 1}
    assert counts["records"] == 6 and counts["interactions"] == 3


def test_rating_scale_option(tmp_path: Path) -> None:
    reviews = write_lines(tmp_path / "reviews.jsonl", [review(rating=0.5), review("v")])
    assert_one_line_error(prepare_cli(tmp_path, reviews), "rating 0.5 is outside the scale 1-5")
    result = prepare_cli(tmp_path, reviews, "--rating-scale", "0.5,5")
    assert result.returncode == 0, result.stderr
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["rating_scale"] == [0.5, 5.0]


def test_unknown_meta_and_duplicates_are_counted_not_fatal(tmp_path: Path) -> None:
    rows = GOOD + [("u0", "i0", 1.0, 500)]  # an older duplicate of (u0, i0)
    reviews = amazon_2023(tmp_path / "reviews.jsonl", rows)
    meta = write_lines(tmp_path / "meta.jsonl", [
        json.dumps({"parent_asin": "i1", "title": "One"}),
        json.dumps({"parent_asin": "nowhere", "title": "Unknown item"})])
    result = prepare_cli(tmp_path, reviews, "--meta", meta)
    assert result.returncode == 0, result.stderr
    counts = json.loads(result.stdout)
    assert counts["duplicates"] == 1
    assert counts["items_without_meta"] == 5 and counts["meta_records_unused"] == 1
    assert "5 of 6 items have no meta" in result.stderr
    test = read_split(tmp_path / "out", "test")
    assert {row["item_id"]: row["target"] for row in test}["i5"] == {}


def test_truncated_gzip_fails_naming_the_last_good_line_or_is_salvaged(tmp_path: Path) -> None:
    data = "".join(review(f"u{k % 3}", f"i{k}", 3.0, k) + "\n" for k in range(2000)).encode()
    packed = gzip.compress(data, mtime=0)
    reviews = tmp_path / "reviews.jsonl.gz"
    reviews.write_bytes(packed[: len(packed) * 2 // 3])
    result = prepare_cli(tmp_path, reviews)
    assert_one_line_error(result, "reviews.jsonl.gz: truncated gzip file: it is cut off after line",
                          "--salvage")
    assert_nothing_left(tmp_path, "reviews.jsonl.gz")
    good = int(result.stderr.split("after line ")[1].split(",")[0])
    assert 100 < good < 2000

    result = prepare_cli(tmp_path, reviews, "--salvage")
    assert result.returncode == 0, result.stderr
    counts = json.loads(result.stdout)
    assert counts["interactions"] == good
    assert counts["skipped"] == {"salvage_lost_partial_line": 1}
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["files"][0]["salvaged"] is True


def test_corrupt_gzip(tmp_path: Path) -> None:
    reviews = tmp_path / "reviews.jsonl.gz"
    reviews.write_bytes(b"\x1f\x8b" + b"\x00" * 64)
    assert_one_line_error(prepare_cli(tmp_path, reviews), "reviews.jsonl.gz: corrupt gzip data")


@pytest.mark.parametrize("content", [b"", b"\n  \n", gzip.compress(b"")])
def test_empty_file(tmp_path: Path, content: bytes) -> None:
    reviews = tmp_path / "reviews.jsonl"
    reviews.write_bytes(content)
    assert_one_line_error(prepare_cli(tmp_path, reviews), "reviews.jsonl: empty file")
    assert_nothing_left(tmp_path, "reviews.jsonl")


def test_missing_file(tmp_path: Path) -> None:
    result = prepare_cli(tmp_path, tmp_path / "nope.jsonl")
    assert_one_line_error(result, "nope.jsonl: --reviews: no such file or folder")


def test_unknown_source(tmp_path: Path) -> None:
    reviews = write_lines(tmp_path / "reviews.jsonl", [review()])
    result = prepare_cli(tmp_path, reviews, source="amazon")
    assert_one_line_error(result, "--source: unknown source 'amazon'; choose one of amazon-2023,",
                          "recbole-ml-100k")
    assert_nothing_left(tmp_path, "reviews.jsonl")


def test_pickle_needs_allow_pickle(tmp_path: Path) -> None:
    (tmp_path / "train.pkl").write_bytes(b"not even a pickle")
    result = prepare_cli(tmp_path, tmp_path / "train.pkl", source="reason4rec")
    assert_one_line_error(result, "train.pkl: reading a pickle runs code", "--allow-pickle")


def test_existing_output_needs_overwrite(tmp_path: Path) -> None:
    reviews = amazon_2023(tmp_path / "reviews.jsonl", GOOD)
    (tmp_path / "out").mkdir()
    assert_one_line_error(prepare_cli(tmp_path, reviews), "out: --out: already exists")
    assert prepare_cli(tmp_path, reviews, "--overwrite").returncode == 0


def test_bad_time_cutoff(tmp_path: Path) -> None:
    reviews = amazon_2023(tmp_path / "reviews.jsonl", GOOD)
    result = prepare_cli(tmp_path, reviews, "--time-cutoff", "2016-01-01")
    assert_one_line_error(result, "--time-cutoff: expected DEV_START,TEST_START")


# --- --overwrite never deletes what the user owns (the audit's `--reviews data/u.data --out data`)


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` and its bytes."""
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_overwrite_refuses_an_input_inside_out(tmp_path: Path) -> None:
    reviews = amazon_2023(tmp_path / "reviews.jsonl", GOOD)
    assert prepare_cli(tmp_path, reviews).returncode == 0  # a prepared `out`
    out = tmp_path / "out"
    (out / "reviews.jsonl").write_bytes(reviews.read_bytes())  # the input now lies inside it
    before = snapshot(tmp_path)
    result = cli("data", "prepare", "--source", "amazon-2023", "--reviews", out / "reviews.jsonl",
                 "--out", out, "--k-core", "1", "--coldstart", "0", "--overwrite")
    assert_one_line_error(result, f"{out / 'reviews.jsonl'}: --reviews: lies inside --out {out}")
    assert snapshot(tmp_path) == before
    # the meta too, and even without --overwrite the input is named first
    meta = amazon_2023_meta(out / "meta.jsonl", ["i0"])
    before = snapshot(tmp_path)
    result = prepare_cli(tmp_path, reviews, "--meta", meta, "--overwrite")
    assert_one_line_error(result, f"{meta}: --meta: lies inside --out")
    assert snapshot(tmp_path) == before


def test_overwrite_refuses_a_prepared_folder_holding_a_foreign_file(tmp_path: Path) -> None:
    reviews = amazon_2023(tmp_path / "reviews.jsonl", GOOD)
    assert prepare_cli(tmp_path, reviews).returncode == 0
    out = tmp_path / "out"
    (out / "NOTES.md").write_text("my notes on this data\n")
    (out / "zz-mine").mkdir()
    before = snapshot(tmp_path)
    for flags in (["--overwrite"], []):
        result = prepare_cli(tmp_path, reviews, *flags)
        assert_one_line_error(result, f"{out}: --out: holds NOTES.md, which this command does "
                              "not write", "move it away or choose another --out")
        assert snapshot(tmp_path) == before and (out / "zz-mine").is_dir()
    # once the user's entries are gone, the prepared folder is replaced as before
    (out / "NOTES.md").unlink()
    (out / "zz-mine").rmdir()
    assert prepare_cli(tmp_path, reviews, "--overwrite").returncode == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["train.jsonl", "dev.jsonl", "test.jsonl", "coldstart.jsonl", "manifest.json"])
