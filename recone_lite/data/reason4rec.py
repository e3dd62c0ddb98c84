"""Reason4Rec's prepared pickles (`raw_data/{train,valid,test}.pkl`), only with `--allow-pickle`.

Loading a pickle runs code chosen by whoever wrote the file, so it is refused unless the user
says they trust it. Each pickle holds a pandas DataFrame (or a list of dicts) with the columns
`user_id, item_id, ratings (or rating), unixReviewTime (or timestamp), reviews (or review),
title`. The files are read together and split again chronologically by `data prepare`; the
item meta is the `title` column. Rows are numbered from 1 in error messages.
"""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

from recone_lite.data.readers import file_record
from recone_lite.data.records import Interaction, Loaded, Meta, ReadState, meta, short
from recone_lite.errors import InputError

SPLITS = ("train.pkl", "valid.pkl", "test.pkl")
ALIASES = {"rating": ("ratings", "rating", "overall"),
           "timestamp": ("unixReviewTime", "timestamp"),
           "review": ("reviews", "review", "reviewText")}


def _rows(path: Path, state: ReadState) -> Iterator[dict[str, Any]]:
    state.path, state.line = path, 0
    with open(path, "rb") as handle:
        data = pickle.load(handle)  # the user allowed it (--allow-pickle)
    if hasattr(data, "to_dict"):
        data = data.to_dict("records")
    if not isinstance(data, list) or not data:
        raise InputError("expected a non-empty DataFrame or list of dicts in the pickle", path=path)
    for number, row in enumerate(data, start=1):
        state.line = number
        if not isinstance(row, dict):
            state.bad("malformed_row", "expected a dict per row")
            continue
        yield row


def _pick(row: dict[str, Any], name: str) -> tuple[str, Any]:
    for alias in ALIASES[name]:
        if row.get(alias) is not None:
            return alias, row[alias]
    return ALIASES[name][0], None


def _interactions(paths: list[Path], state: ReadState) -> Iterator[Interaction]:
    for path in paths:
        for row in _rows(path, state):
            if row.get("user_id") is None or row.get("item_id") is None:
                field = "user_id" if row.get("user_id") is None else "item_id"
                state.bad("missing_field", "missing required field", field)
                continue
            rating_field, rating = _pick(row, "rating")
            time_field, time = _pick(row, "timestamp")
            if rating is None or time is None:
                state.bad("missing_field", "missing required field",
                          rating_field if rating is None else time_field)
                continue
            value, seconds = state.rating(rating, rating_field), state.timestamp(time, time_field)
            if value is None or seconds is None:
                continue
            review = _pick(row, "review")[1]
            yield Interaction(str(row["user_id"]), str(row["item_id"]), value, seconds,
                              "" if review is None else str(review))
        state.files.append(file_record(path))


def _titles(paths: list[Path], state: ReadState) -> Iterator[tuple[str, Meta]]:
    for path in paths:
        for row in _rows(path, state):
            if row.get("item_id") is not None:
                yield str(row["item_id"]), meta(title=short(row.get("title")))


def load(reviews: Path | None, meta_path: Path | None, state: ReadState) -> Loaded:
    if reviews is None:
        raise InputError("--source reason4rec needs --reviews PATH (a .pkl file or raw_data/)")
    if reviews.is_dir():
        paths = [reviews / name for name in SPLITS if (reviews / name).is_file()]
        if not paths:
            raise InputError(f"no {', '.join(SPLITS)} in this folder", path=reviews)
    elif reviews.is_file():
        paths = [reviews]
    else:
        raise InputError("no such file", path=reviews)
    if not state.allow_pickle:
        raise InputError("reading a pickle runs code from the file; pass --allow-pickle only "
                         "if you trust where it came from", path=paths[0])
    if meta_path is not None:
        raise InputError("--source reason4rec takes item titles from the pickles; drop --meta")
    return Loaded(interactions=partial(_interactions, paths, state),
                  meta=partial(_titles, paths, state), scale=(1.0, 5.0))
