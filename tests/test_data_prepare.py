"""`data prepare`: counts by hand, the split invariants, determinism, and the options."""

from __future__ import annotations

import json
import random
from collections import defaultdict
from pathlib import Path

import pytest
from data_helpers import (
    amazon_2023,
    amazon_2023_meta,
    check_no_leaks,
    k_core_pairs,
    read_all,
    read_split,
)
from typer.testing import CliRunner

from recone_lite.cli import app
from recone_lite.data.prepare import Options, prepare
from recone_lite.errors import InputError

# (user, item, rating, seconds), in file order. Hand-worked in test_counts_match_by_hand.
TINY = [
    ("u1", "a", 5.0, 1000), ("u1", "b", 3.0, 2000), ("u1", "c", 4.0, 3000),
    ("u1", "d", 2.0, 4000), ("u1", "b", 1.0, 1500),  # an older duplicate of (u1, b)
    ("u2", "a", 4.0, 1000), ("u2", "b", 5.0, 2000), ("u2", "c", 3.0, 2000),  # b, c tie
    ("u2", "d", 4.0, 3000),
    ("u3", "a", 2.0, 500), ("u3", "e", 5.0, 600),  # e has one review: 2-core drops it, then u3
]


def tiny(tmp_path: Path, **options) -> tuple[Path, dict]:
    reviews = amazon_2023(tmp_path / "reviews.jsonl", TINY)
    meta = amazon_2023_meta(tmp_path / "meta.jsonl", ["a", "b", "c", "e", "zz"])  # no d
    out = tmp_path / "out"
    manifest = prepare("amazon-2023", reviews, meta, out,
                       Options(**{"k_core": 2, "coldstart": 0, **options}))
    return out, manifest


def test_counts_match_by_hand(tmp_path: Path) -> None:
    out, manifest = tiny(tmp_path)
    counts = manifest["counts"]
    assert counts["records"] == 11 and counts["interactions"] == 11
    assert counts["duplicates"] == 1
    assert counts["kept_after_k_core"] == 8  # u1 and u2 x a, b, c, d
    assert (counts["users"], counts["items"]) == (2, 4)
    assert counts["items_without_meta"] == 1  # d
    assert counts["interactions_without_meta"] == 2
    assert counts["meta_records_unused"] == 2  # e (dropped by the k-core) and zz (unknown)
    assert counts["history_only_short_history"] == 2  # each user's first review
    assert counts["examples"] == {"train": 2, "dev": 2, "test": 2, "coldstart": 0}
    splits = read_all(out)

    def view(name: str) -> list[tuple[str, list[str]]]:
        return [(row["id"], [h["item_id"] for h in row["history"]]) for row in splits[name]]

    assert view("train") == [("train-u1-b", ["a"]), ("train-u2-b", ["a"])]
    # u2's dev item c ties with b (t=2000): same-time interactions are not history.
    assert view("dev") == [("dev-u1-c", ["a", "b"]), ("dev-u2-c", ["a"])]
    # The test history skips the dev item: no dev/test target is ever shown as history.
    assert view("test") == [("test-u1-d", ["a", "b"]), ("test-u2-d", ["a", "b"])]
    first = splits["test"][0]
    assert first == {
        "id": "test-u1-d", "user_id": "u1", "item_id": "d", "rating": 2.0, "timestamp": 4000,
        "history": [
            {"item_id": "a", "timestamp": 1000, "item": {
                "title": "Album a", "categories": ["Digital Music"], "store": "Artist a",
                "description": "Remastered"}, "rating": 5.0, "review": "review of a by u1"},
            # the duplicate (u1, b) kept is the latest one: rating 3 at t=2000
            {"item_id": "b", "timestamp": 2000, "item": {
                "title": "Album b", "categories": ["Digital Music"], "store": "Artist b",
                "description": "Remastered"}, "rating": 3.0, "review": "review of b by u1"},
        ],
        "target": {},  # d has no meta: kept, with empty meta, and counted
        # d by u2 (t=3000) is u2's test target, so never evidence: no item history for d.
        "item_history": [],
        # u1's train-period a (5) and b (3); every train-period rating before 4000: a, b by u1
        # (5, 3) and by u2 (4, 5); c is both users' dev target.
        "stats": {"user_mean": 4.0, "user_count": 2, "item_mean": None, "item_count": 0,
                  "global_mean": 4.25},
    }
    assert list(first) == ["id", "user_id", "item_id", "rating", "timestamp", "history", "target",
                           "item_history", "stats"]
    # u2's train target b (t=2000) sees u1's b? No: u1's b is also at t=2000 (a tie).
    assert splits["train"][1]["item_history"] == []
    assert splits["test"][1]["stats"] == {"user_mean": 4.5, "user_count": 2, "item_mean": None,
                                          "item_count": 0, "global_mean": 4.25}
    check_no_leaks(out, history=10)


def test_manifest_records_sources_scale_and_options(tmp_path: Path) -> None:
    out, manifest = tiny(tmp_path)
    on_disk = json.loads((out / "manifest.json").read_text())
    assert on_disk == manifest
    assert sorted(p.name for p in out.iterdir()) == [
        "coldstart.jsonl", "dev.jsonl", "manifest.json", "test.jsonl", "train.jsonl"]
    assert [Path(f["path"]).name for f in manifest["files"]] == ["reviews.jsonl", "meta.jsonl"]
    assert all(len(f["sha256"]) == 64 for f in manifest["files"])
    assert manifest["rating_scale"] == [1.0, 5.0]
    assert manifest["options"]["k_core"] == 2 and manifest["seed"] == 0
    assert manifest["recone_lite_version"]
    assert not list(tmp_path.glob(".out*")), "temporary folders left behind"


def test_history_cap_and_review_budget(tmp_path: Path) -> None:
    rows = [("u", f"i{k}", 4.0, 100 * k) for k in range(8)]
    rows += [("v", f"i{k}", 3.0, 100 * k) for k in range(8)]
    reviews = amazon_2023(tmp_path / "r.jsonl", rows,
                          texts={("u", "i0"): "  very\n\nlong  text " * 50})
    prepare("amazon-2023", reviews, None, tmp_path / "out",
            Options(k_core=1, history=3, review_chars=12, coldstart=0))
    test = read_split(tmp_path / "out", "test")
    assert [h["item_id"] for h in test[0]["history"]] == ["i3", "i4", "i5"]  # i6 is dev
    train = read_split(tmp_path / "out", "train")
    assert train[0]["history"][0]["review"] == "very long te"  # whitespace folded, 12 chars


def random_reviews(n: int, seed: int) -> list[tuple[str, str, float, int]]:
    rng = random.Random(seed)
    return [(f"u{int(40 * rng.random() ** 2)}", f"i{int(60 * rng.random() ** 2)}",
             float(rng.randint(1, 5)), rng.randrange(50) * 3600) for _ in range(n)]  # many ties


def reference(rows, k: int, history: int) -> dict[str, dict[tuple[str, str], list[str]]]:
    """A slow, obvious implementation of dedupe + k-core + per-user split + histories."""
    latest: dict[tuple[str, str], tuple[int, int, float]] = {}
    for line, (user, item, rating, seconds) in enumerate(rows):
        if (user, item) not in latest or seconds >= latest[(user, item)][0]:
            latest[(user, item)] = (seconds, line, rating)
    pairs = k_core_pairs(set(latest), k)
    per_user = defaultdict(list)
    for user, item in pairs:
        seconds, line, _ = latest[(user, item)]
        per_user[user].append((seconds, line, item))
    out: dict[str, dict[tuple[str, str], list[str]]] = {"train": {}, "dev": {}, "test": {}}
    for user, events in per_user.items():
        events.sort()
        train = events[:-2]
        for position, (seconds, _, item) in enumerate(events):
            split = ("test" if position == len(events) - 1 else
                     "dev" if position == len(events) - 2 else "train")
            earlier = [i for s, _, i in train if s < seconds][-history:] if history else []
            if split != "train" or earlier:
                out[split][(user, item)] = earlier
    return out


@pytest.mark.parametrize("k", [1, 3])
def test_matches_a_slow_reference_on_random_data(tmp_path: Path, k: int) -> None:
    rows = random_reviews(1500, seed=k)
    reviews = amazon_2023(tmp_path / "r.jsonl.gz", rows, gz=True)
    out = tmp_path / "out"
    prepare("amazon-2023", reviews, None, out, Options(k_core=k, history=4, coldstart=25))
    splits = read_all(out)
    check_no_leaks(out, history=4)
    expected = reference(rows, k, 4)
    got = {name: {(r["user_id"], r["item_id"]): [h["item_id"] for h in r["history"]]
                  for r in splits[name]} for name in ("train", "dev", "test", "coldstart")}
    assert got["dev"] == expected["dev"] and got["test"] == expected["test"]
    assert len(got["coldstart"]) == 25
    assert {**got["train"], **got["coldstart"]} == expected["train"]
    assert not set(got["train"]) & set(got["coldstart"])


def test_same_seed_same_bytes_other_seed_other_pool(tmp_path: Path) -> None:
    rows = random_reviews(1200, seed=7)
    reviews = amazon_2023(tmp_path / "r.jsonl", rows)

    def run(name: str, seed: int) -> dict[str, bytes]:
        prepare("amazon-2023", reviews, None, tmp_path / name,
                Options(k_core=2, coldstart=30, seed=seed))
        return {p.name: p.read_bytes() for p in sorted((tmp_path / name).iterdir())}

    first, again, other = run("a", 1), run("b", 1), run("c", 2)
    assert first == again
    assert first["coldstart.jsonl"] != other["coldstart.jsonl"]
    assert first["test.jsonl"] == other["test.jsonl"]


def test_time_cutoff_split(tmp_path: Path) -> None:
    rows = random_reviews(1500, seed=3)
    reviews = amazon_2023(tmp_path / "r.jsonl", rows)
    dev_start, test_start = 30 * 3600, 40 * 3600
    manifest = prepare("amazon-2023", reviews, None, tmp_path / "out",
                       Options(k_core=2, coldstart=10, time_cutoff=(dev_start, test_start)))
    assert manifest["split"] == "time-cutoff"
    splits = read_all(tmp_path / "out")
    assert all(r["timestamp"] < dev_start for r in splits["train"] + splits["coldstart"])
    assert all(dev_start <= r["timestamp"] < test_start for r in splits["dev"])
    assert all(r["timestamp"] >= test_start for r in splits["test"])
    for rows_ in splits.values():
        for row in rows_:
            assert all(h["timestamp"] < dev_start for h in row["history"])
    check_no_leaks(tmp_path / "out", history=10)


def test_refuses_existing_output_unless_overwrite(tmp_path: Path) -> None:
    out, _ = tiny(tmp_path)
    before = (out / "train.jsonl").read_bytes()
    with pytest.raises(InputError, match="already exists; pass --overwrite"):
        tiny(tmp_path)
    (out / "old.txt").write_text("x")  # a file data prepare never writes: never replaced
    for overwrite in (False, True):
        with pytest.raises(InputError, match="holds old.txt, which this command does not write"):
            prepare("amazon-2023", tmp_path / "reviews.jsonl", None, out,
                    Options(k_core=2, coldstart=0), overwrite=overwrite)
        assert (out / "old.txt").read_text() == "x" and (out / "train.jsonl").read_bytes() == before
    (out / "old.txt").unlink()
    prepare("amazon-2023", tmp_path / "reviews.jsonl", None, out,
            Options(k_core=2, coldstart=0), overwrite=True)
    assert (out / "manifest.json").is_file() and not (out / "old.txt").exists()


def test_k_core_that_leaves_nothing_is_an_input_error(tmp_path: Path) -> None:
    reviews = amazon_2023(tmp_path / "r.jsonl", TINY)
    with pytest.raises(InputError, match="no interactions left after the 50-core"):
        prepare("amazon-2023", reviews, None, tmp_path / "out", Options(k_core=50))
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["r.jsonl"]


def test_cli_prepare_prints_counts_and_writes_the_folder(tmp_path: Path) -> None:
    reviews = amazon_2023(tmp_path / "reviews.jsonl", TINY)
    result = CliRunner().invoke(app, [
        "data", "prepare", "--source", "amazon-2023", "--reviews", str(reviews),
        "--out", str(tmp_path / "out"), "--k-core", "2", "--coldstart", "1", "--seed", "3"])
    assert result.exit_code == 0, result.output
    counts = json.loads(result.stdout.strip().splitlines()[-1])
    assert counts["out"] == str(tmp_path / "out")
    assert counts["examples"] == {"train": 1, "dev": 2, "test": 2, "coldstart": 1}
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["seed"] == 3 and manifest["options"]["coldstart"] == 1
