"""`data stats`: what a prepared folder holds, per split and overall.

Users, items, examples, the histogram of target ratings, and the distributions (percentiles)
of history length and of review characters per history entry (what a prompt will carry).
One pass over each file; the id sets and the length arrays grow with the data.
"""

from __future__ import annotations

from array import array
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from recone_lite.errors import InputError
from recone_lite.jsonl import read_jsonl
from recone_lite.log import console
from recone_lite.metrics import percentile, percentiles
from recone_lite.prepared import SPLITS, is_prepared, read_manifest, read_scale
from recone_lite.prompts import load_tokenizer, render_prompt

PERCENTILES = (0, 10, 50, 90, 100)


def distribution(values: Any) -> dict[str, float]:
    """Mean and percentiles of a list of numbers (all 0 when empty).

    >>> distribution([0, 1, 2, 3, 10])
    {'mean': 3.2, 'p0': 0.0, 'p10': 0.4, 'p50': 2.0, 'p90': 7.2, 'p100': 10.0}
    """
    data = np.asarray(values, dtype=np.float64)
    if data.size == 0:
        return {"mean": 0.0, **{f"p{p}": 0.0 for p in PERCENTILES}}
    ordered = np.sort(data)
    points = [percentile(ordered, p, interpolate=True) for p in PERCENTILES]
    return {"mean": round(float(data.mean()), 3),
            **{f"p{p}": round(float(v), 3) for p, v in zip(PERCENTILES, points, strict=True)}}


def split_stats(path: Path, users: set[str], items: set[str]) -> dict[str, Any]:
    """Counts and distributions of one split file; adds its ids to `users` and `items`."""
    ratings: Counter = Counter()
    history, review = array("i"), array("i")
    split_users: set[str] = set()
    split_items: set[str] = set()
    examples = 0
    for _, row in read_jsonl(path):
        examples += 1
        split_users.add(row["user_id"])
        split_items.add(row["item_id"])
        ratings[float(row["rating"])] += 1
        entries = row.get("history") or []
        history.append(len(entries))
        for entry in entries:
            items.add(entry["item_id"])
            review.append(len(entry.get("review") or ""))
    users |= split_users
    items |= split_items
    return {"examples": examples, "users": len(split_users), "items": len(split_items),
            "ratings": {f"{k:g}": ratings[k] for k in sorted(ratings)},
            "history_length": distribution(history), "review_chars": distribution(review)}


def stats(folder: str | Path) -> dict[str, Any]:
    """The summary of a prepared folder, as a JSON-ready dict."""
    folder = Path(folder)
    if not is_prepared(folder):
        raise InputError("not a prepared folder (no manifest.json); run `recone-lite data "
                         "prepare` first", path=folder)
    manifest = read_manifest(folder)
    users: set[str] = set()
    items: set[str] = set()
    splits = {name: split_stats(folder / f"{name}.jsonl", users, items) for name in SPLITS}
    return {"folder": str(folder), "source": manifest.get("source"),
            "rating_scale": manifest.get("rating_scale"), "users": len(users),
            "items": len(items), "splits": splits}


def prompt_tokens(folder: str | Path, tokenizer: str, gguf_file: str | None, template: str,
                  sample: int) -> dict[str, Any]:
    """Prompt token length percentiles per split, over the first `sample` examples of each."""
    from itertools import islice

    loaded = load_tokenizer(tokenizer, gguf_file)
    scale = read_scale(folder)
    per_split = {}
    for name in SPLITS:
        rows = (row for _, row in islice(read_jsonl(Path(folder) / f"{name}.jsonl"), sample))
        per_split[name] = prompt_token_lengths(rows, loaded, template, scale)
    return {"tokenizer": tokenizer, "template": template, "sample": sample, "splits": per_split}


def prompt_token_lengths(
    examples: Iterable[dict[str, Any]],
    tokenizer: Any,
    template: str = "reczero",
    scale: tuple[float, float] = (1.0, 5.0),
) -> dict[str, int]:
    """Percentiles of full (unbudgeted) prompt lengths in tokens: `n`, `p50`, `p90`, `p99`, `max`.

    Nearest-rank percentiles, so every number is the length of a real prompt. Look at these
    before picking `max_prompt_tokens`: past it, the oldest history items are dropped.
    """
    lengths = sorted(render_prompt(e, tokenizer, template, scale).n_tokens for e in examples)
    return percentiles(lengths)


def render(summary: dict[str, Any]) -> None:
    """Print the summary as rich tables on stderr."""
    from rich.table import Table

    table = Table(title=f"{summary['folder']} ({summary['source']}, ratings "
                  f"{summary['rating_scale']}): {summary['users']:,} users, "
                  f"{summary['items']:,} items")
    for column in ("split", "examples", "users", "items", "history p50/p90/max",
                   "review chars p50/p90/max"):
        table.add_column(column, justify="left" if column == "split" else "right")
    for name, part in summary["splits"].items():
        h, r = part["history_length"], part["review_chars"]
        table.add_row(name, f"{part['examples']:,}", f"{part['users']:,}", f"{part['items']:,}",
                      f"{h['p50']:g} / {h['p90']:g} / {h['p100']:g}",
                      f"{r['p50']:g} / {r['p90']:g} / {r['p100']:g}")
    console.print(table)
    values = sorted({k for part in summary["splits"].values() for k in part["ratings"]}, key=float)
    hist = Table(title="target ratings")
    hist.add_column("split")
    for value in values:
        hist.add_column(value, justify="right")
    for name, part in summary["splits"].items():
        hist.add_row(name, *(f"{part['ratings'].get(v, 0):,}" for v in values))
    console.print(hist)
    if "prompt_tokens" in summary:
        tokens = summary["prompt_tokens"]
        table = Table(title=f"prompt tokens ({tokens['template']} template, {tokens['tokenizer']}, "
                      f"first {tokens['sample']} examples per split)")
        for column in ("split", "n", "p50", "p90", "p99", "max"):
            table.add_column(column, justify="left" if column == "split" else "right")
        for name, part in tokens["splits"].items():
            table.add_row(name, *(f"{part[k]:,}" for k in ("n", "p50", "p90", "p99", "max")))
        console.print(table)
