"""Yelp Open Dataset: `review.json` and `business.json` (JSON lines, plain or gzip).

Reviews: `user_id, business_id, stars (1-5), date ("2018-07-07 22:09:11", read as UTC), text`.
Businesses: `business_id, name -> title, categories ("Pizza, Italian") -> list, city,
attributes -> a short "key: value; ..." text`. `--reviews` may be the data set's folder, where
the files named `*review*.json*` and `*business*.json*` are used.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Any

from recone_lite.data.readers import iter_json
from recone_lite.data.records import (
    Interaction,
    Loaded,
    Meta,
    ReadState,
    categories,
    meta,
    missing,
    no_meta,
    short,
)
from recone_lite.errors import InputError

REQUIRED = ("user_id", "business_id", "stars", "date")


def seconds(date: Any) -> int:
    """Seconds since the epoch of a Yelp date (UTC) or of a number.

    >>> seconds("2018-07-07 22:09:11")
    1531001351
    """
    if isinstance(date, (int, float)):
        return int(date)
    parsed = datetime.fromisoformat(str(date).strip())
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return int(parsed.timestamp())


def attributes(value: Any) -> str:
    """Yelp's attribute dict as one short line; unset and false values are dropped.

    >>> attributes({"WiFi": "u'free'", "HasTV": "False", "Ambience": None, "NoiseLevel": "quiet"})
    'WiFi: free; NoiseLevel: quiet'
    """
    if not isinstance(value, dict):
        return ""
    parts = []
    for key, raw in value.items():
        text = str(raw).strip()
        if text.startswith(("u'", 'u"')):
            text = text[1:]
        text = text.strip("'\"")
        if raw is None or text in ("", "None", "False", "none"):
            continue
        parts.append(key if text == "True" else f"{key}: {text}")
    return short("; ".join(parts))


def business_meta(obj: dict[str, Any]) -> Meta:
    """Meta of a Yelp business."""
    return meta(title=short(obj.get("name")), categories=categories(obj.get("categories")),
                city=short(obj.get("city")), attributes=attributes(obj.get("attributes")))


def _reviews(path: Path, state: ReadState) -> Iterator[Interaction]:
    for obj in iter_json(path, state):
        absent = missing(obj, REQUIRED)
        if absent is not None:
            state.bad("missing_field", "missing required field", absent)
            continue
        rating = state.rating(obj["stars"], "stars")
        try:
            time = seconds(obj["date"])
        except ValueError:
            state.bad("bad_value", f"date {obj['date']!r} is not a date", "date")
            continue
        if rating is None:
            continue
        text = obj.get("text") or ""
        yield Interaction(str(obj["user_id"]), str(obj["business_id"]), rating, time, str(text))


def _businesses(path: Path, state: ReadState) -> Iterator[tuple[str, Meta]]:
    for obj in iter_json(path, state):
        if missing(obj, ("business_id",)) is not None:
            state.bad("missing_field", "missing required field", "business_id")
            continue
        yield str(obj["business_id"]), business_meta(obj)


def _find(folder: Path, word: str) -> Path | None:
    found = sorted(p for p in folder.glob(f"*{word}*.json*") if p.is_file())
    return found[0] if found else None


def load(reviews: Path | None, meta_path: Path | None, state: ReadState) -> Loaded:
    if reviews is None:
        raise InputError("--source yelp needs --reviews PATH (review.json or its folder)")
    if reviews.is_dir():
        folder = reviews
        reviews = _find(folder, "review")
        if reviews is None:
            raise InputError("no *review*.json file in this folder", path=folder)
        meta_path = meta_path or _find(folder, "business")
    return Loaded(interactions=partial(_reviews, reviews, state),
                  meta=partial(_businesses, meta_path, state) if meta_path else no_meta,
                  scale=(1.0, 5.0))
