"""Reading a prepared directory (written by `recone-lite data prepare`): scale, splits, one example.

- `DIR/manifest.json`: `{"rating_scale": [min, max], ...}`
- `DIR/{train,dev,test,coldstart}.jsonl`: one prepared example per line
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from recone_lite.errors import InputError
from recone_lite.jsonl import read_jsonl

SPLITS = ("train", "dev", "test", "coldstart")


def read_scale(data_dir: str | Path) -> tuple[float, float]:
    """The rating scale `[min, max]` from a prepared directory's manifest.json."""
    path = Path(data_dir) / "manifest.json"
    if not path.is_file():
        raise InputError(
            "no manifest.json: not a prepared directory (run `recone-lite data prepare`)", path=path
        )
    try:
        low, high = json.loads(path.read_text(encoding="utf-8"))["rating_scale"]
        scale = (float(low), float(high))
    except (ValueError, KeyError, TypeError) as err:
        raise InputError(f'expected "rating_scale": [min, max] ({err})', path=path) from None
    if not scale[0] < scale[1]:
        raise InputError("rating_scale must be [min, max] with min < max", path=path)
    return scale


def iter_split(data_dir: str | Path, split: str) -> Iterator[dict[str, Any]]:
    """Stream the examples of `DIR/<split>.jsonl`, each checked for an `id` and a numeric
    `rating` (a bad line raises InputError naming it)."""
    path = Path(data_dir) / f"{split}.jsonl"
    for line, example in read_jsonl(path):
        if "id" not in example:
            raise InputError("missing required field", path=path, line=line, field="id")
        if not is_number(example.get("rating")):
            raise InputError("expected a number", path=path, line=line, field="rating")
        yield example


def read_split(data_dir: str | Path, split: str) -> list[dict[str, Any]]:
    """All examples of `DIR/<split>.jsonl` (see `iter_split`)."""
    return list(iter_split(data_dir, split))


def is_number(value: Any) -> bool:
    """A finite int or float, not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def find_example(data_dir: str | Path, example_id: str) -> tuple[str, dict[str, Any]]:
    """`(split, example)` for the example with this id, searching every split file present
    (first the one its id starts with: prepared ids look like `test-USER-ITEM`)."""
    first = [s for s in SPLITS if str(example_id).startswith(f"{s}-")]
    for split in first + [s for s in SPLITS if s not in first]:
        path = Path(data_dir) / f"{split}.jsonl"
        if path.is_file():
            for _, example in read_jsonl(path):
                if str(example.get("id")) == str(example_id):
                    return split, example
    raise InputError(f"no example with id {example_id!r} in {', '.join(SPLITS)}", path=data_dir)
