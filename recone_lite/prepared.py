"""Reading a prepared directory (written by `recone-lite data prepare`): scale, splits, one example.

- `DIR/manifest.json`: `{"rating_scale": [min, max], ...}`
- `DIR/{train,dev,test,coldstart}.jsonl`: one prepared example per line
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from recone_lite.errors import InputError
from recone_lite.jsonl import read_json_object, read_jsonl

SPLITS = ("train", "dev", "test", "coldstart")  # data prepare's split codes 0..3
MANIFEST = "manifest.json"


def manifest_path(data_dir: str | Path) -> Path:
    """Where a prepared directory's manifest lies (also what marks a folder as prepared)."""
    return Path(data_dir) / MANIFEST


def is_prepared(data_dir: str | Path) -> bool:
    """Whether `data_dir` holds a manifest.json (the file `data prepare` writes last)."""
    return manifest_path(data_dir).is_file()


def parse_scale(text: str, field: str = "scale") -> tuple[float, float]:
    """`"1,5"` -> (1.0, 5.0): a `MIN,MAX` rating scale from the command line (`predict --scale`,
    `export --scale`, `data prepare --rating-scale`); NaN and infinite bounds are refused.

    >>> parse_scale("1,5"), parse_scale("0.5, 10")
    ((1.0, 5.0), (0.5, 10.0))
    >>> parse_scale("5,1")
    Traceback (most recent call last):
    ...
    recone_lite.errors.InputError: scale: expected MIN,MAX with MIN < MAX, got '5,1'
    >>> parse_scale("nan,5", field="--rating-scale")
    Traceback (most recent call last):
    ...
    recone_lite.errors.InputError: --rating-scale: expected MIN,MAX with MIN < MAX, got 'nan,5'
    """
    try:
        low, high = (float(part) for part in text.split(","))
    except ValueError:
        low = high = math.nan
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise InputError(f"expected MIN,MAX with MIN < MAX, got {text!r}", field=field)
    return low, high


def read_manifest(data_dir: str | Path) -> dict[str, Any]:
    """A prepared directory's manifest.json; a missing or corrupt one is one InputError."""
    path = manifest_path(data_dir)
    if not path.is_file():
        raise InputError(
            "no manifest.json: not a prepared directory (run `recone-lite data prepare`)", path=path
        )
    return read_json_object(path, "; `data prepare --overwrite` writes it again")


def read_scale(data_dir: str | Path) -> tuple[float, float]:
    """The rating scale `[min, max]` from a prepared directory's manifest.json."""
    path = manifest_path(data_dir)
    manifest = read_manifest(data_dir)
    try:
        low, high = manifest["rating_scale"]
        scale = (float(low), float(high))
    except (ValueError, KeyError, TypeError) as err:
        raise InputError(f'expected "rating_scale": [min, max] ({err})', path=path) from None
    if not scale[0] < scale[1]:
        raise InputError("rating_scale must be [min, max] with min < max", path=path)
    return scale


def iter_split(data_dir: str | Path, split: str) -> Iterator[dict[str, Any]]:
    """Stream the examples of `DIR/<split>.jsonl`, each checked (`check_example`): a bad line
    raises InputError naming the file, the line and the field."""
    path = Path(data_dir) / f"{split}.jsonl"
    for line, example in read_jsonl(path):
        problem = check_example(example)
        if problem is not None:
            raise InputError(problem[1], path=path, line=line, field=problem[0])
        yield example


def check_example(example: dict[str, Any]) -> tuple[str, str] | None:
    """`(field, problem)` when a prepared example lacks what training, eval and the baselines
    read (`id`, `user_id`, `item_id`, a numeric `rating`, a `history` list), else None.

    >>> good = {"id": "t-u-i", "user_id": "u", "item_id": 7, "rating": 4.0, "history": []}
    >>> check_example(good) is None
    True
    >>> check_example({**good, "user_id": None}), check_example({**good, "rating": True})
    (('user_id', 'missing (a string or an integer)'), ('rating', 'expected a number'))
    >>> check_example({**good, "history": {"a": 1}})
    ('history', 'expected a list of objects')
    """
    for name in ("id", "user_id", "item_id"):
        value = example.get(name)
        if not isinstance(value, (str, int)) or isinstance(value, bool) or value == "":
            return name, "missing (a string or an integer)"
    if not is_number(example.get("rating")):
        return "rating", "expected a number"
    history = example.get("history")
    if history is not None and (
        not isinstance(history, list) or not all(isinstance(h, dict) for h in history)
    ):
        return "history", "expected a list of objects"
    return None


def read_split(data_dir: str | Path, split: str) -> list[dict[str, Any]]:
    """All examples of `DIR/<split>.jsonl` (see `iter_split`)."""
    return list(iter_split(data_dir, split))


def is_number(value: Any) -> bool:
    """A finite int or float, not a bool (JSON `true` is no 1-star rating).

    >>> is_number(4), is_number(3.5), is_number(True), is_number(float("nan")), is_number("4")
    (True, True, False, False, False)
    """
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
