"""Amazon review dumps (McAuley lab, UCSD): the 2023, 2018 and 2014 releases.

| release | review fields used                                            | time        |
|---------|---------------------------------------------------------------|-------------|
| 2023    | user_id, parent_asin, rating, timestamp, text (title if empty) | ms          |
| 2018    | reviewerID, asin, overall, unixReviewTime, reviewText (summary) | s           |
| 2014    | as 2018; lines may be Python literals (`ast.literal_eval`)     | s           |

Meta: 2023 `parent_asin, title, categories|main_category, store, price, description|features`;
2018 `asin, title, category|main_cat, brand, price, description`; 2014 `asin, title, categories
(list of lists), brand, price, description`, usually Python literals. Ratings are 1-5.
"""

from __future__ import annotations

from collections.abc import Iterator
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

SCALE = (1.0, 5.0)


def _reviews(path: Path, state: ReadState, *, user: str, item: str, rating: str, time: str,
             divisor: int, texts: tuple[str, str], literal: bool) -> Iterator[Interaction]:
    required = (user, item, rating, time)
    text_field, fallback = texts
    for obj in iter_json(path, state, literal):
        try:  # the fast path; `missing` names the field when something is absent
            user_id, item_id, value, seconds = obj[user], obj[item], obj[rating], obj[time]
        except KeyError:
            user_id = None
        if user_id is None or item_id is None or value is None or seconds is None or \
                user_id == "" or item_id == "":
            state.bad("missing_field", "missing required field", missing(obj, required))
            continue
        value = state.rating(value, rating)
        seconds = state.timestamp(seconds, time, divisor)
        if value is None or seconds is None:
            continue
        text = obj.get(text_field) or obj.get(fallback) or ""
        yield Interaction(user_id if isinstance(user_id, str) else str(user_id),
                          item_id if isinstance(item_id, str) else str(item_id), value, seconds,
                          text if isinstance(text, str) else str(text))


def _meta(path: Path, state: ReadState, *, key: str, literal: bool,
          fields: Any) -> Iterator[tuple[str, Meta]]:
    for obj in iter_json(path, state, literal):
        if missing(obj, (key,)) is not None:
            state.bad("missing_field", "missing required field", key)
            continue
        yield str(obj[key]), fields(obj)


def _price(value: Any) -> Any:
    """A price as given (number or text); blank, 'None' and NaN count as absent.

    >>> [_price(v) for v in (12.5, "$3.99", "None", "", float("nan"))]
    [12.5, '$3.99', None, None, None]
    """
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, str):
        value = value.strip()
        return None if value in ("", "None", "null") else value[:20]
    return value


def meta_2023(obj: dict[str, Any]) -> Meta:
    """Meta of an Amazon 2023 item.

    >>> meta_2023({"title": "Blue Train", "main_category": "Digital Music", "categories": [],
    ...            "price": None, "store": "John Coltrane", "features": ["Remastered"]})
    {'title': 'Blue Train', 'categories': ['Digital Music'], 'store': 'John Coltrane', \
'description': 'Remastered'}
    """
    return meta(title=short(obj.get("title")),
                categories=categories(obj.get("categories") or [obj.get("main_category") or ""]),
                store=short(obj.get("store")), price=_price(obj.get("price")),
                description=short(obj.get("description")) or short(obj.get("features")))


def meta_2018(obj: dict[str, Any]) -> Meta:
    """Meta of an Amazon 2018 or 2014 item (2014 names the list `categories`, 2018 `category`)."""
    cats = obj.get("category") or obj.get("categories") or [obj.get("main_cat") or ""]
    return meta(title=short(obj.get("title")), categories=categories(cats),
                brand=short(obj.get("brand")), price=_price(obj.get("price")),
                description=short(obj.get("description")))


def _load(reviews: Path | None, meta_path: Path | None, state: ReadState, *,
          release: int) -> Loaded:
    if reviews is None:
        raise InputError(f"--source amazon-{release} needs --reviews PATH")
    literal = release == 2014
    if release == 2023:
        fields = dict(user="user_id", item="parent_asin", rating="rating", time="timestamp",
                      divisor=1000, texts=("text", "title"))
        meta_key, meta_fields = "parent_asin", meta_2023
    else:
        fields = dict(user="reviewerID", item="asin", rating="overall", time="unixReviewTime",
                      divisor=1, texts=("reviewText", "summary"))
        meta_key, meta_fields = "asin", meta_2018
    return Loaded(
        interactions=partial(_reviews, reviews, state, literal=literal, **fields),
        meta=partial(_meta, meta_path, state, key=meta_key, literal=literal, fields=meta_fields)
        if meta_path else no_meta,
        scale=SCALE,
    )


load_2023 = partial(_load, release=2023)
load_2018 = partial(_load, release=2018)
load_2014 = partial(_load, release=2014)
