"""Helpers for the data tests: write small raw files in each format, read a prepared folder."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

SPLITS = ("train", "dev", "test", "coldstart")

def k_core_pairs(pairs: set[tuple[str, str]], k: int) -> set[tuple[str, str]]:
    """The (user, item) pairs left when users and items with fewer than k pairs are dropped,
    repeated until nothing changes: the slow, obvious reference for `prepare.k_core`."""
    while True:
        by_user: dict[str, int] = defaultdict(int)
        by_item: dict[str, int] = defaultdict(int)
        for user, item in pairs:
            by_user[user] += 1
            by_item[item] += 1
        kept = {(u, i) for u, i in pairs if by_user[u] >= k and by_item[i] >= k}
        if kept == pairs:
            return pairs
        pairs = kept


def write_lines(path: Path, lines: list[str], gz: bool = False) -> Path:
    data = "".join(line + "\n" for line in lines).encode("utf-8")
    path.write_bytes(gzip.compress(data, mtime=0) if gz else data)
    return path


def amazon_2023(path: Path, rows: list[tuple[str, str, float, int]], gz: bool = False,
                texts: dict[tuple[str, str], str] | None = None) -> Path:
    """rows of (user, item, rating, seconds) as Amazon 2023 review lines (time in ms)."""
    texts = texts or {}
    return write_lines(path, [json.dumps({
        "rating": rating, "title": f"title {user} {item}",
        "text": texts.get((user, item), f"review of {item} by {user}"), "images": [],
        "asin": item, "parent_asin": item, "user_id": user, "timestamp": seconds * 1000,
        "helpful_vote": 0, "verified_purchase": True}) for user, item, rating, seconds in rows], gz)


def amazon_2023_meta(path: Path, items: list[str]) -> Path:
    return write_lines(path, [json.dumps({
        "main_category": "Digital Music", "title": f"Album {item}", "categories": [],
        "price": None, "store": f"Artist {item}", "features": ["Remastered"],
        "description": [], "parent_asin": item}) for item in items])


def read_split(folder: Path, name: str) -> list[dict[str, Any]]:
    text = (folder / f"{name}.jsonl").read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines()]


def read_all(folder: Path) -> dict[str, list[dict[str, Any]]]:
    return {name: read_split(folder, name) for name in SPLITS}


def cli(*args: str | Path) -> subprocess.CompletedProcess:
    """Run `python -m recone_lite ARGS` as a shell user would (exit codes included)."""
    return subprocess.run([sys.executable, "-m", "recone_lite", *map(str, args)],
                          capture_output=True, text=True, timeout=120)


def iter_split(folder: Path, name: str, every: int = 1) -> Iterator[dict[str, Any]]:
    """The examples of a split, streamed; `every=k` parses only each k-th line (big files)."""
    with open(folder / f"{name}.jsonl", encoding="utf-8") as handle:
        for number, line in enumerate(handle):
            if number % every == 0:
                yield json.loads(line)


def check_no_leaks(folder: Path, history: int, train_every: int = 1) -> int:
    """Check the split invariants of a prepared folder, streaming it; return the examples checked.

    `train_every=k` checks only each k-th train example (the real-data tests, for time).
    """
    held_out = {(row["user_id"], row["item_id"]) for name in ("dev", "test")
                for row in iter_split(folder, name)}
    targets: set[tuple[str, str]] = set()
    for name in SPLITS:
        for row in iter_split(folder, name, train_every if name == "train" else 1):
            pair = (row["user_id"], row["item_id"])
            assert pair not in targets, f"{pair} is a target twice"
            targets.add(pair)
            assert row["id"] == f"{name}-{row['user_id']}-{row['item_id']}"
            assert len(row["history"]) <= history
            times = [entry["timestamp"] for entry in row["history"]]
            assert times == sorted(times), "history must be oldest first"
            for entry in row["history"]:
                assert entry["timestamp"] < row["timestamp"], "history from the future (or tie)"
                assert (row["user_id"], entry["item_id"]) not in held_out, "dev/test in history"
                assert entry["item_id"] != row["item_id"]
    return len(targets)
