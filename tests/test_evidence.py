"""`data prepare` evidence: `item_history` and `stats` obey the leak rule of the user history.

Rule: train-period interactions only (never a dev/test target), strictly before the example's
time (same second excluded); item history = the newest K by other users, oldest first.
Everything is checked against a plain-Python recomputation from the raw rows.
"""

from __future__ import annotations

import json
from bisect import bisect_left
from collections import defaultdict
from itertools import accumulate
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from data_helpers import SPLITS, amazon_2023, cli, iter_split, k_core_pairs, read_all
from test_data_prepare import random_reviews

from recone_lite.data.prepare import Options, fold, prepare


class Row(NamedTuple):
    user: str
    item: str
    rating: float
    seconds: int
    review: str


def train_period(rows: list[Row], k: int, cutoff: tuple[int, int] | None = None) -> list[Row]:
    """Dedupe (latest per pair), k-core, split, all by hand: the train-period rows."""
    latest: dict[tuple[str, str], tuple[int, int]] = {}
    for line, row in enumerate(rows):
        key = (row.user, row.item)
        if key not in latest or row.seconds >= latest[key][0]:
            latest[key] = (row.seconds, line)
    pairs = k_core_pairs(set(latest), k)
    per_user: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for user, item in pairs:
        per_user[user].append(latest[(user, item)])
    train = []
    for events in per_user.values():
        events.sort()
        period = events[:-2] if cutoff is None else [e for e in events if e[0] < cutoff[0]]
        train += [rows[line] for _, line in period]
    return train


def mean(values: list[float]) -> float | None:
    return round(sum(values) / len(values), 4) if values else None


def check_evidence(folder: Path, train: list[Row], k: int, chars: int,
                   train_every: int = 1) -> int:
    """Compare every example's `item_history` and `stats` with a brute-force recomputation."""
    held_out = {(r["user_id"], r["item_id"]) for name in ("dev", "test")
                for r in iter_split(folder, name)}
    by_item: dict[str, list[Row]] = defaultdict(list)
    by_user: dict[str, list[Row]] = defaultdict(list)
    for row in train:
        by_item[row.item].append(row)
        by_user[row.user].append(row)
    ordered = sorted(train, key=lambda r: r.seconds)
    times_sorted = [r.seconds for r in ordered]
    sums = [0.0, *accumulate(r.rating for r in ordered)]
    checked = 0
    for name in SPLITS:
        for ex in iter_split(folder, name, train_every if name == "train" else 1):
            stamp, user, item = ex["timestamp"], ex["user_id"], ex["item_id"]
            earlier = [r for r in by_item[item] if r.seconds < stamp]
            entries = ex["item_history"]
            assert len(entries) <= k
            times = [e["timestamp"] for e in entries]
            newest = sorted(r.seconds for r in earlier)[-k:] if k else []
            assert times == newest, "not the newest K, oldest first"
            allowed = {(r.user, r.seconds, r.rating, fold(r.review, chars)) for r in earlier}
            for entry in entries:
                assert list(entry) == ["user_id", "timestamp", "rating", "review"]
                assert entry["timestamp"] < stamp, "item history from the future (or a tie)"
                assert entry["user_id"] != user
                assert (entry["user_id"], item) not in held_out, "a dev/test target as evidence"
                assert (entry["user_id"], entry["timestamp"], entry["rating"],
                        entry["review"]) in allowed
            assert len({e["user_id"] for e in entries}) == len(entries)
            mine = [r.rating for r in by_user[user] if r.seconds < stamp]
            count = bisect_left(times_sorted, stamp)  # train ratings strictly before
            assert ex["stats"] == {
                "user_mean": mean(mine), "user_count": len(mine),
                "item_mean": mean([r.rating for r in earlier]), "item_count": len(earlier),
                "global_mean": round(sums[count] / count, 4) if count else None}
            checked += 1
    return checked


def synthetic(n: int, seed: int) -> list[Row]:
    """Random rows; a review depends on (user, item) only, as `amazon_2023(texts=...)` needs."""
    return [Row(u, i, r, s, f"review of {i} by {u}, {'long ' * (len(u + i) * 3)}text")
            for u, i, r, s in random_reviews(n, seed)]


def write(tmp_path: Path, rows: list[Row]) -> Path:
    return amazon_2023(tmp_path / "r.jsonl", [r[:4] for r in rows],
                       texts={(r.user, r.item): r.review for r in rows})


@pytest.mark.parametrize(("k", "chars", "cutoff"), [(5, 120, None), (2, 9, None),
                                                    (3, 120, (30 * 3600, 40 * 3600))])
def test_evidence_matches_brute_force(tmp_path: Path, k: int, chars: int,
                                      cutoff: tuple[int, int] | None) -> None:
    rows = synthetic(1500, seed=k)
    out = tmp_path / "out"
    prepare("amazon-2023", write(tmp_path, rows), None, out,
            Options(k_core=2, coldstart=20, item_history=k, item_review_chars=chars,
                    time_cutoff=cutoff))
    assert check_evidence(out, train_period(rows, 2, cutoff), k, chars) > 500
    full = sum(len(r["item_history"]) == k for name in SPLITS for r in iter_split(out, name))
    assert full > 100, "the cap was never reached: the test would not see it"


def test_same_second_is_not_evidence(tmp_path: Path) -> None:
    rows = [Row(u, i, 4.0 if u == "u1" else 2.0, s, f"{u} on {i}") for u, i, s in [
        ("u1", "a", 100), ("u2", "a", 100), ("u3", "a", 50),  # u1 and u2 rate a in one second
        ("u1", "b", 200), ("u2", "b", 300), ("u3", "b", 60),
        ("u1", "c", 400), ("u2", "c", 500), ("u3", "c", 700),
        ("u1", "d", 600), ("u2", "d", 800), ("u3", "d", 900)]]
    out = tmp_path / "out"
    prepare("amazon-2023", write(tmp_path, rows), None, out, Options(k_core=1, coldstart=0))
    train = {r["id"]: r for r in read_all(out)["train"]}
    assert [e["user_id"] for e in train["train-u1-b"]["item_history"]] == ["u3"]
    # u1's a is u1's first review: history only. u2's a at t=100 sees u3 (50), not u1 (100).
    assert "train-u2-a" not in train  # also first for u2
    assert train["train-u2-b"]["item_history"] == [
        {"user_id": "u3", "timestamp": 60, "rating": 2.0, "review": "u3 on b"},
        {"user_id": "u1", "timestamp": 200, "rating": 4.0, "review": "u1 on b"}]
    assert train["train-u2-b"]["stats"] == {  # u2's a (2.0); b by u3 and u1; all before 300
        "user_mean": 2.0, "user_count": 1, "item_mean": 3.0, "item_count": 2,
        "global_mean": 2.8}
    test = {r["id"]: r for r in read_all(out)["test"]}
    # d by u1 (600) is u1's test target: never evidence for u2's d (800) or u3's d (900).
    assert test["test-u2-d"]["item_history"] == []
    assert test["test-u3-d"]["item_history"] == []
    assert test["test-u3-d"]["stats"]["item_count"] == 0
    assert test["test-u3-d"]["stats"]["item_mean"] is None
    check_evidence(out, train_period(rows, 1), 5, 120)


@pytest.mark.parametrize(("review_chars", "chars"), [(300, 10), (8, 10)])
def test_item_reviews_are_folded_and_cut(tmp_path: Path, review_chars: int, chars: int) -> None:
    texts = ["café  crème\n\tbrûlée", 'say "hi" \\ to   it all', "plain ascii words here",
             "  leading spaces and trailing  ", "emoji 🎵🎵 and ünïcödé letters"]
    rows = [Row(f"u{u}", f"i{i}", 3.0, 100 * (u + i), texts[(u + i) % len(texts)])
            for u in range(6) for i in range(6)]
    out = tmp_path / "out"
    prepare("amazon-2023", write(tmp_path, rows), None, out,
            Options(k_core=1, coldstart=0, review_chars=review_chars, item_review_chars=chars))
    text = {(r.user, r.item): r.review for r in rows}
    entries = [(e, r["item_id"]) for name in SPLITS for r in iter_split(out, name)
               for e in r["item_history"]]
    assert len(entries) > 30
    for entry, item in entries:
        assert entry["review"] == fold(text[(entry["user_id"], item)], min(chars, review_chars))


def test_item_history_zero_and_review_chars_from_the_cli(tmp_path: Path) -> None:
    rows = synthetic(600, seed=5)
    reviews = write(tmp_path, rows)
    result = cli("data", "prepare", "--source", "amazon-2023", "--reviews", reviews,
                 "--out", tmp_path / "none", "--k-core", "2", "--item-history", "0")
    assert result.returncode == 0, result.stderr
    examples = [r for name in SPLITS for r in iter_split(tmp_path / "none", name)]
    assert examples and all(r["item_history"] == [] for r in examples)
    assert any(r["stats"]["item_count"] for r in examples), "stats stay on without item history"
    result = cli("data", "prepare", "--source", "amazon-2023", "--reviews", reviews,
                 "--out", tmp_path / "short", "--k-core", "2", "--item-history", "7",
                 "--item-review-chars", "6")
    assert result.returncode == 0, result.stderr
    manifest = json.loads((tmp_path / "short" / "manifest.json").read_text())
    assert manifest["options"]["item_history"] == 7
    assert manifest["options"]["item_review_chars"] == 6
    entries = [e for r in iter_split(tmp_path / "short", "test") for e in r["item_history"]]
    assert entries and {e["review"] for e in entries} == {"review"}
    assert max(len(r["item_history"]) for r in iter_split(tmp_path / "short", "test")) == 7


def test_evidence_on_ml_100k(ml_100k_dir: Path) -> None:
    """The real data set: every dev/test/coldstart example and every 7th train example."""
    from recone_lite.data.records import ReadState
    from recone_lite.data.sources import loader

    loaded = loader("recbole-ml-100k")(None, None, ReadState())
    rows = [Row(r.user_id, r.item_id, r.rating, r.timestamp, r.review)
            for r in loaded.interactions()]
    options: dict[str, Any] = json.loads((ml_100k_dir / "manifest.json").read_text())["options"]
    train = train_period(rows, options["k_core"])
    assert check_evidence(ml_100k_dir, train, options["item_history"],
                          options["item_review_chars"], train_every=7) > 15_000
