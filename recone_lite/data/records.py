"""The common interaction record every loader yields, item meta, and the state of reading input.

A loader turns one raw line into an `Interaction` (user, item, rating, time in seconds, review
text) and, from the meta file, `(item_id, meta)` pairs where meta is a small dict of short,
non-empty fields (`title`, `categories`, `brand`/`store`, `price`, `description`, ...).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from recone_lite.errors import InputError

META_TEXT_CHARS = 200  # description / features / attributes are cut to this many characters
MIN_SECONDS, MAX_SECONDS = -62135596800, 253402300799  # 0001-01-01 .. 9999-12-31 (UTC)


class Interaction(NamedTuple):
    """One user's rating (and review) of one item; `timestamp` in seconds since the epoch."""

    user_id: str
    item_id: str
    rating: float
    timestamp: int
    review: str


Meta = dict[str, Any]


class Loaded(NamedTuple):
    """What a loader hands to `prepare`: two re-startable streams and the rating scale.

    `interactions()` streams the reviews; `meta()` streams `(item_id, meta)` pairs (read after the
    k-core filter, so only kept items need to be held); `scale` is the source's rating scale.
    """

    interactions: Callable[[], Iterator[Interaction]]
    meta: Callable[[], Iterator[tuple[str, Meta]]]
    scale: tuple[float, float]


def no_meta() -> Iterator[tuple[str, Meta]]:
    """The meta stream of a source read without a meta file."""
    return iter(())


@dataclass
class ReadState:
    """Reading options and a running account of what was read.

    `path` and `line` always name the record being parsed, so any check can raise an error that
    points at it. With `skip_bad`, bad records are counted by reason in `skipped` instead.
    """

    scale: tuple[float, float] = (1.0, 5.0)
    salvage: bool = False
    skip_bad: bool = False
    allow_pickle: bool = False
    files: list[dict[str, Any]] = field(default_factory=list)
    skipped: Counter = field(default_factory=Counter)
    path: str | Path = ""
    line: int = 0

    def bad(self, reason: str, message: str, field: str | None = None) -> None:
        """Raise an InputError naming the current file, line and field, or count a skip.

        >>> state = ReadState(path="r.jsonl", line=3)
        >>> state.bad("missing_field", "missing required field", "user_id")
        Traceback (most recent call last):
        ...
        recone_lite.errors.InputError: r.jsonl:3: user_id: missing required field
        >>> state.skip_bad = True
        >>> state.bad("missing_field", "missing required field", "user_id")
        >>> dict(state.skipped)
        {'missing_field': 1}
        """
        if not self.skip_bad:
            raise InputError(message, path=self.path, line=self.line, field=field)
        self.skipped[reason] += 1

    def rating(self, value: Any, field: str) -> float | None:
        """`value` as a float on the scale, or None after counting a skip.

        >>> ReadState(path="r", line=1).rating("4", "overall")
        4.0
        >>> ReadState(path="r", line=2).rating(7, "overall")
        Traceback (most recent call last):
        ...
        recone_lite.errors.InputError: r:2: overall: rating 7 is outside the scale 1-5
        >>> ReadState(path="r", line=3).rating(True, "overall")  # JSON true is not 1 star
        Traceback (most recent call last):
        ...
        recone_lite.errors.InputError: r:3: overall: rating True is not a number
        """
        try:
            if isinstance(value, bool):  # bool is an int in Python: float(True) == 1.0
                raise TypeError
            rating = float(value)
        except (TypeError, ValueError):
            self.bad("bad_value", f"rating {value!r} is not a number", field)
            return None
        low, high = self.scale
        if not (low <= rating <= high) or math.isnan(rating):
            self.bad("rating_out_of_scale",
                     f"rating {rating:g} is outside the scale {low:g}-{high:g}", field)
            return None
        return rating

    def timestamp(self, value: Any, field: str, divisor: int = 1) -> int | None:
        """`value` (seconds, or milliseconds with divisor=1000) as int seconds, or None.

        Seconds must fall between the years 1 and 9999 (what dates can show); `Infinity`, NaN,
        `1e30` and JSON `true` are bad values, raised or counted like any other.

        >>> ReadState().timestamp(1588615855070, "timestamp", 1000)
        1588615855
        >>> ReadState().timestamp("881250949", "timestamp"), ReadState().timestamp(8.5e8, "t")
        (881250949, 850000000)
        >>> ReadState(path="r", line=4).timestamp(float("inf"), "timestamp")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        recone_lite.errors.InputError: r:4: timestamp: timestamp inf is not a time in seconds ...
        >>> state = ReadState(path="r", line=5, skip_bad=True)
        >>> state.timestamp(1e30, "timestamp"), dict(state.skipped)
        (None, {'bad_timestamp': 1})
        """
        seconds: int | None = None
        if not isinstance(value, bool):
            try:
                seconds = int(value) // divisor
            except (TypeError, ValueError, OverflowError):
                try:
                    number = float(value)
                    seconds = int(number) // divisor if math.isfinite(number) else None
                except (TypeError, ValueError, OverflowError):
                    self.bad("bad_value", f"timestamp {value!r} is not a number", field)
                    return None
        if seconds is None or not MIN_SECONDS <= seconds <= MAX_SECONDS:
            self.bad("bad_timestamp", f"timestamp {value!r} is not a time in seconds between "
                     "the years 1 and 9999", field)
            return None
        return seconds


def missing(obj: dict[str, Any], fields: tuple[str, ...]) -> str | None:
    """The first of `fields` that is absent, null or empty in `obj`, else None.

    >>> missing({"a": 1, "b": ""}, ("a", "b"))
    'b'
    >>> missing({"a": 0, "b": "x"}, ("a", "b")) is None
    True
    """
    for name in fields:
        value = obj.get(name)
        if value is None or value == "":
            return name
    return None


def short(text: Any, chars: int = META_TEXT_CHARS) -> str:
    """Text (or a list of texts) as one stripped string of at most `chars` characters.

    >>> short(["Soft cotton.", "", "Machine wash."], 20)
    'Soft cotton. Machine'
    >>> short(None)
    ''
    """
    if text is None:
        return ""
    if isinstance(text, (list, tuple)):
        text = " ".join(str(part).strip() for part in text if part and str(part).strip())
    return " ".join(str(text).split())[:chars].strip()


def categories(value: Any) -> list[str]:
    """Categories from a list, a list of lists (Amazon 2014) or a comma-separated string.

    Order is kept, duplicates and empties dropped.

    >>> categories([["Books", "Fiction"], ["Books", "Mystery"]])
    ['Books', 'Fiction', 'Mystery']
    >>> categories("Pizza, Italian, Pizza")
    ['Pizza', 'Italian']
    """
    if not value:
        return []
    if isinstance(value, str):
        value = value.split(",")
    flat: list[str] = []
    for part in value:
        flat.extend(categories(part) if isinstance(part, (list, tuple)) else [str(part).strip()])
    return list(dict.fromkeys(name for name in flat if name))


def meta(**fields: Any) -> Meta:
    """A meta dict of the non-empty fields, in the order given.

    >>> meta(title="Blue Train", categories=[], price=None, brand="Blue Note")
    {'title': 'Blue Train', 'brand': 'Blue Note'}
    """
    return {key: value for key, value in fields.items() if value not in (None, "", [], {})}
