"""`data prepare`: raw reviews -> deduplicated, k-core, chronologically split examples on disk.

How it stays small in memory: user and item ids are interned to ints, and each review is kept as
five numbers in compact arrays (user, item, rating, time, end offset of its text: 32 bytes).
The review text (already cut to `review_chars`) is spilled to a temporary file, and so is the
meta of the items that survive the k-core filter (meta is read after the filter); both are read
back by offset (`os.pread`) while the examples are written, a block of users at a time. What
still grows with the input: those 32 bytes per review (plus the sort and split arrays built
from them, and about 35 bytes per review of evidence arrays, below) and the two id
dictionaries.

The split, for each user with interactions sorted by time (file order breaks ties):
last -> test, second to last -> dev, the rest -> the train period (or, with `time_cutoff`,
by time: before DEV_START -> train period, before TEST_START -> dev, later -> test).
History of any example = the user's train-period interactions strictly before the target's
time (same-time interactions are left out), the most recent `history` of them, oldest first.
So no dev or test target is ever shown as history. Train-period interactions with fewer than
`min_history` earlier ones are history only, not train targets. The cold-start pool is drawn
(seeded) from the train targets and removed from them.

Evidence of any example, under the same rule (train period only, strictly before the target's
time, so never a dev or test target and never anything from the same second):
- `item_history`: the target item's train-period interactions by other users, the newest
  `item_history` of them (0: none), oldest first, each `{user_id, timestamp, rating, review}`
  with the review cut to `item_review_chars` characters. Equal times keep the row order (users
  in order of first appearance; at the cap the later ones are kept). A user never has an
  earlier interaction with their own target item (duplicates keep the latest), so the entries
  are always by other users.
- `stats`: `{user_mean, user_count, item_mean, item_count, global_mean}`: the mean rating and
  count of the user's earlier train-period interactions (all of them, not capped by `history`),
  of the item's (by any other user), and the mean of all earlier train-period ratings. Means are
  rounded to 4 decimals, `null` when there is nothing to average.
Both come from sorted arrays: the train-period rows sorted by (item, time) with
`np.searchsorted` for the item windows, prefix sums of ratings for the means. The item-history
fragments are spilled once in that item-major order, so each example's item history is one
contiguous byte range of the spill file.

Over 600 lines and one unit: one streaming pipeline over numpy arrays (read, dedupe, k-core,
split, windows, evidence, write), whose steps share the arrays' layout.
"""

from __future__ import annotations

import json
import os
import time
from array import array
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from recone_lite import __version__
from recone_lite.data.cf import add_cf, choose
from recone_lite.data.records import MAX_SECONDS, MIN_SECONDS, Loaded, ReadState
from recone_lite.data.sources import loader
from recone_lite.errors import InputError
from recone_lite.files import atomic_path, check_inputs_outside, check_replaceable, writer_lock
from recone_lite.jsonl import dumps
from recone_lite.log import info, warn
from recone_lite.prepared import (  # split codes 0..3; -1 = history only
    MANIFEST,
    SPLITS,
    manifest_path,
)

TRAIN, DEV, TEST, COLD, NONE = 0, 1, 2, 3, -1
BLOCK = 1 << 14  # rows per block of users while writing
# everything `data prepare` leaves in its --out (`_write`'s four split files, the manifest last):
# --overwrite replaces a folder holding only these, never one holding anything else
LAYOUT = (*(f"{name}.jsonl" for name in SPLITS), MANIFEST)
_encode = json.encoder.encode_basestring  # type: ignore[attr-defined]  # C, ensure_ascii=False


@dataclass(frozen=True)
class Options:
    """Everything that decides the output besides the input files (recorded in the manifest)."""

    k_core: int = 5
    history: int = 10
    review_chars: int = 300
    item_history: int = 5
    item_review_chars: int = 120
    coldstart: int = 1000
    seed: int = 0
    time_cutoff: tuple[int, int] | None = None
    min_history: int = 1
    rating_scale: tuple[float, float] | None = None
    salvage: bool = False
    skip_bad: bool = False
    allow_pickle: bool = False
    cf: str = "none"  # collaborative evidence (data/cf.py): auto, none or a list; the CLI: auto
    cf_recent: int = 5  # recency folds of the out-of-fold predictions for train examples
    cf_folds: int = 5  # random folds of the older train ratings


def parse_time(text: str) -> int:
    """Seconds since the epoch from a date (`2015-06-01`, UTC) or a number of seconds.

    >>> parse_time("2015-06-01"), parse_time("1433116800")
    (1433116800, 1433116800)
    """
    text = text.strip()
    try:
        number = float(text)
    except ValueError:
        number = None
    if number is not None and number == number:  # a number, not NaN
        if not MIN_SECONDS <= number <= MAX_SECONDS:  # inf, 1e30: no date
            raise InputError(f"{text!r} is not a time between the years 1 and 9999",
                             field="--time-cutoff")
        return int(number)
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise InputError(f"{text!r} is neither a date (2015-06-01) nor seconds since the epoch",
                         field="--time-cutoff") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return int(parsed.timestamp())


def parse_time_cutoff(text: str) -> tuple[int, int]:
    """`DEV_START,TEST_START` as two times in seconds; dev must start before test.

    >>> parse_time_cutoff("2015-01-01,2016-01-01")
    (1420070400, 1451606400)
    """
    parts = text.split(",")
    if len(parts) != 2:
        raise InputError("expected DEV_START,TEST_START (two dates or epoch seconds)",
                         field="--time-cutoff")
    dev, test = parse_time(parts[0]), parse_time(parts[1])
    if dev >= test:
        raise InputError("DEV_START must be before TEST_START", field="--time-cutoff")
    return dev, test


def fold(text: str, chars: int) -> str:
    """Text with its whitespace folded to single spaces, cut to `chars` characters.

    >>> fold("  Great\\n\\nsound,   small case. ", 14)
    'Great sound, s'
    >>> fold("plain text", 5)
    'plain'
    """
    head = text[:chars]
    if "  " in head or "\n" in head or "\t" in head or "\r" in head or head[:1].isspace() or \
            head[-1:].isspace():
        head = " ".join(text[: chars * 2].split())[:chars].rstrip()
    return head


# --- pure array steps --------------------------------------------------------------------------


def latest_per_pair(users: np.ndarray, items: np.ndarray, times: np.ndarray) -> np.ndarray:
    """Indices (ascending) of the latest review of each (user, item); later lines win ties.

    >>> latest_per_pair(np.array([0, 0, 1, 0]), np.array([5, 5, 5, 5]), np.array([3, 1, 2, 3]))
    array([2, 3])
    """
    order = np.lexsort((times, items, users))  # stable: equal times stay in file order
    su, si = users[order], items[order]
    last = np.ones(order.size, dtype=bool)
    last[:-1] = (su[1:] != su[:-1]) | (si[1:] != si[:-1])
    return np.sort(order[last])


def k_core(users: np.ndarray, items: np.ndarray, k: int) -> np.ndarray:
    """Mask of the rows left when users and items with fewer than `k` rows are dropped, repeated
    until nothing changes.

    >>> k_core(np.array([0, 0, 1, 1, 2]), np.array([0, 1, 0, 1, 0]), 2)
    array([ True,  True,  True,  True, False])
    """
    mask = np.ones(users.size, dtype=bool)
    if k <= 1:
        return mask
    while True:
        rows = np.flatnonzero(mask)
        uu, ii = users[rows], items[rows]
        ok = (np.bincount(uu)[uu] >= k) & (np.bincount(ii)[ii] >= k)
        if ok.all():
            return mask
        mask[rows[~ok]] = False


def assign_splits(users: np.ndarray, times: np.ndarray,
                  cutoff: tuple[int, int] | None = None) -> np.ndarray:
    """Split code per row of rows sorted by (user, time): per user last -> TEST (2), second to
    last -> DEV (1), earlier -> TRAIN (0); or by time with `cutoff = (dev_start, test_start)`.

    >>> assign_splits(np.array([0, 0, 0, 1, 1]), np.array([1, 2, 3, 1, 2]))
    array([0, 1, 2, 1, 2], dtype=int8)
    >>> assign_splits(np.array([0, 0, 0]), np.array([1, 5, 9]), cutoff=(5, 9))
    array([0, 1, 2], dtype=int8)
    """
    split = np.full(users.size, TRAIN, dtype=np.int8)
    if cutoff is not None:
        split[times >= cutoff[0]] = DEV
        split[times >= cutoff[1]] = TEST
        return split
    last = np.ones(users.size, dtype=bool)
    last[:-1] = users[1:] != users[:-1]
    second = np.zeros(users.size, dtype=bool)
    second[:-1] = last[1:] & (users[:-1] == users[1:])
    split[second] = DEV
    split[last] = TEST
    return split


def history_windows(users: np.ndarray, times: np.ndarray, usable: np.ndarray,
                    size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For rows sorted by (user, time): each row's history as a range `[lo, hi)` of indices
    into the usable rows (`np.flatnonzero(usable)`), and how many were available before the cap.

    History = the same user's usable rows strictly earlier in time, the `size` most recent.

    >>> users, times = np.array([0, 0, 0, 0, 1]), np.array([1, 2, 2, 3, 1])
    >>> lo, hi, available = history_windows(users, times, np.array([1, 1, 1, 0, 1], bool), 2)
    >>> lo.tolist(), hi.tolist(), available.tolist()
    ([0, 0, 0, 1, 3], [0, 1, 1, 3, 3], [0, 1, 1, 3, 0])
    """
    n = users.size
    index = np.int64 if n >= 2**31 else np.int32
    before = np.zeros(n + 1, dtype=index)
    np.cumsum(usable, out=before[1:])
    new_user = np.ones(n, dtype=bool)
    new_user[1:] = users[1:] != users[:-1]
    new_time = new_user.copy()
    new_time[1:] |= times[1:] != times[:-1]
    position = np.arange(n, dtype=index)
    user_start = np.maximum.accumulate(np.where(new_user, position, 0))
    time_start = np.maximum.accumulate(np.where(new_time, position, 0))
    del position, new_user, new_time
    hi = before[time_start]
    first = before[user_start]
    return np.maximum(first, hi - size), hi, hi - first


def time_ranks(times: np.ndarray) -> np.ndarray:
    """Dense rank of each time, 0 = the earliest; equal times share a rank.

    >>> time_ranks(np.array([30, 10, 30, 20])).tolist()
    [2, 0, 2, 1]
    """
    ranks = np.unique(times, return_inverse=True)[1].reshape(-1)
    return ranks.astype(np.int64 if times.size >= 2**31 else np.int32)


def item_keys(items: np.ndarray, ranks: np.ndarray, span: int) -> np.ndarray:
    """One sortable int64 per row, item first, then time rank (`span` = the number of ranks).

    >>> item_keys(np.array([1, 0]), np.array([0, 2]), 3).tolist()
    [3, 2]
    """
    return items.astype(np.int64) * span + ranks


def item_order(keys: np.ndarray, usable: np.ndarray) -> np.ndarray:
    """The usable rows sorted by `keys` (item, then time); equal keys keep the row order.

    >>> item_order(np.array([5, 1, 3, 1]), np.array([1, 1, 0, 1], bool)).tolist()
    [1, 3, 0]
    """
    rows = np.flatnonzero(usable)
    return rows[np.argsort(keys[rows], kind="stable")]


def item_windows(sorted_keys: np.ndarray, keys: np.ndarray, span: int,
                 size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For rows with `keys` (`item_keys`): the same item's usable rows strictly earlier in time as
    a range `[lo, hi)` of positions in the item order (`sorted_keys` = the usable rows' keys,
    sorted), the `size` newest of them, and how many were available before the cap.

    >>> items, ranks = np.array([0, 1, 0, 0, 0]), np.array([0, 0, 1, 1, 2])
    >>> keys = item_keys(items, ranks, 3)
    >>> order = item_order(keys, np.array([1, 1, 1, 0, 1], bool))
    >>> order.tolist()
    [0, 2, 4, 1]
    >>> lo, hi, available = item_windows(keys[order], keys, 3, 1)
    >>> lo.tolist(), hi.tolist(), available.tolist()
    ([0, 3, 0, 0, 1], [0, 3, 1, 1, 2], [0, 0, 1, 1, 2])
    """
    hi = np.searchsorted(sorted_keys, keys, side="left")
    first = np.searchsorted(sorted_keys, keys - keys % span, side="left")
    return np.maximum(first, hi - size), hi, hi - first


def prefix_sums(values: np.ndarray) -> np.ndarray:
    """Sums of the first 0, 1, ..., n values (n + 1 of them, float64).

    >>> prefix_sums(np.array([4.0, 2.0, 5.0])).tolist()
    [0.0, 4.0, 6.0, 11.0]
    """
    out = np.zeros(values.size + 1, dtype=np.float64)
    np.cumsum(values, out=out[1:])
    return out


def before_rank(ranks: np.ndarray, usable: np.ndarray, ratings: np.ndarray,
                span: int) -> tuple[np.ndarray, np.ndarray]:
    """Per time rank: how many usable rows are strictly earlier, and the sum of their ratings.

    >>> count, total = before_rank(np.array([1, 0, 1, 2]), np.array([1, 1, 1, 0], bool),
    ...                            np.array([4.0, 2.0, 5.0, 1.0]), 3)
    >>> count.tolist(), total.tolist()
    ([0, 1, 3], [0.0, 2.0, 11.0])
    """
    counts = np.bincount(ranks[usable], minlength=span)
    count = np.zeros(span + 1, dtype=np.int64 if ranks.size >= 2**31 else np.int32)
    np.cumsum(counts, out=count[1:])
    total = prefix_sums(np.bincount(ranks[usable], weights=ratings[usable], minlength=span))
    return count[:span], total[:span]


def shorter_review(review: bytes, chars: int) -> bytes:
    r"""A spilled review (JSON string of text already folded) cut to `chars` characters, as
    `fold` would cut the text; without decoding it when it is plain ASCII with no escapes.

    >>> shorter_review(b'"Great sound, small case"', 13), shorter_review(b'"caf\xc3\xa9 noir"', 4)
    (b'"Great sound,"', b'"caf\xc3\xa9"')
    >>> shorter_review(b'"say \\"hi\\" to it"', 8)
    b'"say \\"hi\\""'
    """
    body = review[1:-1]
    if body.isascii() and b"\\" not in body:  # one byte per character, and only spaces
        return b'"' + body[:chars].rstrip(b" ") + b'"'
    return _encode(fold(json.loads(review), chars)).encode("utf-8", "replace")


def mean_json(total: float, count: int) -> str:
    """A mean rounded to 4 decimals, as JSON (`repr(round(mean, 4))`, about 3x faster);
    `null` when there is nothing to average.

    >>> mean_json(11.0, 3), mean_json(8.0, 2), mean_json(0.0, 0), mean_json(-1e-05, 1)
    ('3.6667', '4.0', 'null', '-0.0')
    >>> values = [0.12345, 2.00005, 3.99995, 1 / 3, 4.56785, 7.0, 1e-05]
    >>> [mean_json(v, 1) for v in values] == [repr(round(v, 4)) for v in values]
    True
    """
    if not count:
        return "null"
    text = f"{total / count:.4f}".rstrip("0")  # correctly rounded, as round() is
    return text + "0" if text[-1] == "." else text


def stats_json(user_sum: float, user_count: int, item_sum: float, item_count: int,
               global_sum: float, global_count: int) -> bytes:
    """The `stats` object of one example.

    >>> stats_json(7.0, 2, 0.0, 0, 10.0, 3)
    b'{"user_mean":3.5,"user_count":2,"item_mean":null,"item_count":0,"global_mean":3.3333}'
    """
    return (f'{{"user_mean":{mean_json(user_sum, user_count)},"user_count":{user_count},'
            f'"item_mean":{mean_json(item_sum, item_count)},"item_count":{item_count},'
            f'"global_mean":{mean_json(global_sum, global_count)}}}').encode()


@dataclass
class Evidence:
    """What the writer needs for `item_history` and `stats`: sorted arrays, no Python objects.

    `ranks`: time rank per row; `sorted_keys`: item keys of the usable rows in item order;
    `item_sums`: prefix sums of their ratings in that order (the user's sums are made per block
    of whole users); `global_count`, `global_sum`: per time rank; `offsets`: where the
    item-history fragment of each usable row (in item order, each followed by a comma) starts
    in the spill file, plus the end (all equal when `item_history` is 0); `size`: the cap.
    """

    ranks: np.ndarray
    span: int
    sorted_keys: np.ndarray
    item_sums: np.ndarray
    global_count: np.ndarray
    global_sum: np.ndarray
    offsets: np.ndarray
    size: int


# --- the pipeline ------------------------------------------------------------------------------


def _read(loaded: Loaded, state: ReadState, spill_path: Path, chars: int) -> dict[str, Any]:
    """Stream interactions into compact arrays; review text goes to `spill_path` as JSON."""
    users: dict[str, int] = {}
    items: dict[str, int] = {}
    u, i, t, ends = array("i"), array("i"), array("q"), array("q")
    r = array("d")
    offset = 0
    with open(spill_path, "wb", buffering=1 << 20) as spill:
        for rec in loaded.interactions():
            uid = users.get(rec.user_id)
            if uid is None:
                uid = users[rec.user_id] = len(users)
            iid = items.get(rec.item_id)
            if iid is None:
                iid = items[rec.item_id] = len(items)
            u.append(uid)
            i.append(iid)
            r.append(rec.rating)
            t.append(rec.timestamp)
            data = _encode(fold(rec.review, chars)).encode("utf-8", "replace") if \
                rec.review and chars > 0 else b'""'
            spill.write(data)
            offset += len(data)
            ends.append(offset)
    if not u:
        raise InputError("no interactions were read", path=state.path)
    return {"users": list(users), "items": list(items),
            "u": np.frombuffer(u, dtype=np.int32), "i": np.frombuffer(i, dtype=np.int32),
            "r": np.frombuffer(r, dtype=np.float64), "t": np.frombuffer(t, dtype=np.int64),
            "end": np.frombuffer(ends, dtype=np.int64)}


def _read_meta(loaded: Loaded, item_names: list[str], kept: np.ndarray,
               spill_path: Path) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """Append the meta JSON of the kept items to the spill file.

    Returns the offset and length of each item's meta there (length 0: no meta), and the counts
    of meta records that matched no kept item or repeated one.
    """
    wanted = {item_names[j]: j for j in kept.tolist()}
    offsets = np.zeros(len(item_names), dtype=np.int64)
    lengths = np.zeros(len(item_names), dtype=np.int32)
    unused = duplicates = 0
    with open(spill_path, "ab", buffering=1 << 20) as spill:
        offset = spill.tell()
        for item_id, fields in loaded.meta():
            j = wanted.get(item_id)
            if j is None:
                unused += 1
            elif lengths[j]:
                duplicates += 1
            else:
                data = dumps(fields).encode("utf-8", "replace")
                spill.write(data)
                offsets[j], lengths[j] = offset, len(data)
                offset += len(data)
    return offsets, lengths, {"meta_records_unused": unused, "meta_duplicates": duplicates}


def _evidence(rows: dict[str, np.ndarray], usable: np.ndarray, order: np.ndarray,
              sorted_keys: np.ndarray, ranks: np.ndarray, span: int, offsets: np.ndarray,
              size: int) -> Evidence:
    """The evidence arrays, from the rows sorted by (user, time) and the item order."""
    global_count, global_sum = before_rank(ranks, usable, rows["r"], span)
    return Evidence(ranks=ranks, span=span, sorted_keys=sorted_keys,
                    item_sums=prefix_sums(rows["r"][order]), global_count=global_count,
                    global_sum=global_sum, offsets=offsets, size=size)


def _spill_item_reviews(spill_path: Path, rows: dict[str, np.ndarray], order: np.ndarray,
                        user_names: list[str], chars: int, review_chars: int) -> np.ndarray:
    """Append the item-history fragment of each usable row, in item order, to the spill file:
    `{"user_id", "timestamp", "rating", "review"},` with the review cut to `chars`. Returns where
    each starts, plus the end, so that a window `[lo, hi)` is one byte range."""
    offsets = np.empty(order.size + 1, dtype=np.int64)
    cut = chars < review_chars
    with open(spill_path, "rb") as source, open(spill_path, "ab", buffering=1 << 20) as out:
        read = _reader(source)
        position = offsets[0] = out.tell()
        for a in range(0, order.size, BLOCK):
            index = order[a:a + BLOCK]
            ends = array("q")
            for u, t, r, start, end in zip(*(rows[key][index].tolist() for key in
                                              ("u", "t", "r", "start", "end")), strict=True):
                review = read(end - start, start) if chars else b'""'
                if cut and len(review) > chars + 2:  # JSON of over `chars` characters
                    review = shorter_review(review, chars)
                frag = b"".join((b'{"user_id":', _encode(user_names[u]).encode("utf-8", "replace"),
                                 b',"timestamp":', str(t).encode(), b',"rating":',
                                 repr(r).encode(), b',"review":', review, b"},"))
                out.write(frag)
                position += len(frag)
                ends.append(position)
            offsets[a + 1:a + 1 + index.size] = np.frombuffer(ends, dtype=np.int64)
    return offsets


def _block_evidence(ev: Evidence, rows: dict[str, np.ndarray], usable: np.ndarray, a: int, b: int,
                    base: int, hi: np.ndarray, available: np.ndarray) -> list[list]:
    """Per row of rows[a:b] (whole users; `base` usable rows before them): item-history byte
    range (start, end) and the six stats numbers."""
    keys = item_keys(rows["i"][a:b], ev.ranks[a:b], ev.span)
    ilo, ihi, icount = item_windows(ev.sorted_keys, keys, ev.span, ev.size)
    del keys
    ranks = ev.ranks[a:b]
    user_sums = prefix_sums(rows["r"][a:b][usable[a:b]])
    user_hi = hi[a:b] - base
    return [ev.offsets[ilo].tolist(), ev.offsets[ihi].tolist(),
            (user_sums[user_hi] - user_sums[user_hi - available[a:b]]).tolist(),
            available[a:b].tolist(),
            (ev.item_sums[ihi] - ev.item_sums[ihi - icount]).tolist(), icount.tolist(),
            ev.global_sum[ranks].tolist(), ev.global_count[ranks].tolist()]


def _write(folder: Path, rows: dict[str, np.ndarray], target: np.ndarray, usable: np.ndarray,
           windows: tuple[np.ndarray, np.ndarray, np.ndarray], names: dict[str, list[str]],
           meta: tuple[np.ndarray, np.ndarray], spill_path: Path,
           ev: Evidence) -> dict[str, int]:
    """Write the four JSONL files, user by user, building each line from pre-encoded parts."""
    lo, hi, available = windows
    folder.mkdir()
    handles = [open(folder / f"{name}.jsonl", "wb", buffering=1 << 20) for name in SPLITS]
    counts = dict.fromkeys(SPLITS, 0)
    n = target.size
    with open(spill_path, "rb") as spill_file:
        spill = _reader(spill_file)
        try:
            a = base = 0
            while a < n:
                b = min(n, a + BLOCK)
                while b < n and rows["u"][b] == rows["u"][b - 1]:  # whole users per block
                    b += 1
                cols = [rows[key][a:b].tolist() for key in ("u", "i", "r", "t", "start", "end")]
                _write_block(handles, counts, zip(*cols, target[a:b].tolist(),
                                                  usable[a:b].tolist(), lo[a:b].tolist(),
                                                  hi[a:b].tolist(),
                                                  *_block_evidence(ev, rows, usable, a, b, base, hi,
                                                                   available),
                                                  strict=True),
                             base, names, meta, spill)
                base += int(np.count_nonzero(usable[a:b]))
                a = b
        finally:
            for handle in handles:
                handle.close()
    return counts


def _reader(handle: Any) -> Any:
    """`read(size, offset)` on an open binary file: `os.pread` where there is one (no mmap:
    mapped pages would count as the process's memory), else seek and read."""
    if hasattr(os, "pread"):
        return partial(os.pread, handle.fileno())

    def read(size: int, offset: int) -> bytes:
        handle.seek(offset)
        return handle.read(size)

    return read


def _write_block(handles, counts, block, base, names, meta, spill) -> None:
    user_names, item_names = names["users"], names["items"]
    meta_offsets, meta_lengths = meta
    items: dict[int, tuple[bytes, bytes]] = {}  # item -> (id JSON, meta JSON), for this block
    frags: list[bytes] = []
    last_user, user_json, user_name = -1, b"", ""
    for (u, i, r, t, start, end, split, usable, lo, hi, item_start, item_end, user_sum,
         user_count, item_sum, item_count, global_sum, global_count) in block:
        if u != last_user:
            last_user, user_name = u, user_names[u]
            user_json = _encode(user_name).encode("utf-8", "replace")
        cached = items.get(i)
        if cached is None:
            size = int(meta_lengths[i])
            cached = items[i] = (_encode(item_names[i]).encode("utf-8", "replace"),
                                 spill(size, int(meta_offsets[i])) if size else b"{}")
        ij, item_meta = cached
        rating, stamp = repr(r).encode(), str(t).encode()
        if split >= 0:
            name = SPLITS[split]
            example_id = _encode(f"{name}-{user_name}-{item_names[i]}").encode("utf-8", "replace")
            line = b"".join((
                b'{"id":', example_id,
                b',"user_id":', user_json, b',"item_id":', ij, b',"rating":', rating,
                b',"timestamp":', stamp, b',"history":[', b",".join(frags[lo - base:hi - base]),
                b'],"target":', item_meta,
                b',"item_history":[', spill(item_end - item_start - 1, item_start)
                if item_end > item_start else b"",
                b'],"stats":', stats_json(user_sum, user_count, item_sum, item_count, global_sum,
                                          global_count), b"}\n"))
            handles[split].write(line)
            counts[name] += 1
        if usable:
            frags.append(b"".join((b'{"item_id":', ij, b',"timestamp":', stamp, b',"item":',
                                   item_meta, b',"rating":', rating, b',"review":',
                                   spill(end - start, start), b"}")))


def prepare(source: str, reviews: Path | None, meta: Path | None, out: Path,
            options: Options = Options(), overwrite: bool = False) -> dict[str, Any]:
    """Prepare `out/` (train, dev, test, coldstart JSONL + manifest.json); return the manifest.

    The whole folder is written under a temporary name and renamed at the end, so a failure
    leaves nothing at `out`. `overwrite` replaces only a prepared data folder (manifest.json)
    holding nothing but what prepare writes (`LAYOUT`), or an empty one, and the old data stays
    until the new is complete; an input (`reviews`, `meta`) inside `out` is refused, since the
    replacement would delete it. A second prepare to the same `out` while one runs is refused
    (the lock `.NAME.lock` beside it).
    """
    load = loader(source)
    out = Path(out)
    check_inputs_outside(out, ((reviews, "--reviews"), (meta, "--meta")))
    with writer_lock(out):
        check_replaceable(out, overwrite=overwrite, marker=MANIFEST,
                          what="prepared data folder", layout=LAYOUT)
        return _prepare(source, reviews, meta, out, options, load)


def _prepare(source: str, reviews: Path | None, meta: Path | None, out: Path, options: Options,
             load: Any) -> dict[str, Any]:
    """`prepare` once `out` is locked and checked.

    Long on purpose: one pass over the data, in the order the files come out (read, filter,
    split, add the evidence, write the splits, then the manifest last); each step is a call."""
    for given, flag in ((reviews, "--reviews"), (meta, "--meta")):
        if given is not None and not Path(given).exists():
            raise InputError("no such file or folder", path=given, field=flag)
    choose(options.cf, 0)  # a bad --cf is refused before anything is read
    state = ReadState(salvage=options.salvage, skip_bad=options.skip_bad,
                      allow_pickle=options.allow_pickle)
    loaded = load(Path(reviews) if reviews else None, Path(meta) if meta else None, state)
    state.scale = options.rating_scale or loaded.scale
    clock = time.perf_counter()
    with atomic_path(out, marker=MANIFEST, layout=LAYOUT) as tmp_out:
        spill_path = tmp_out.parent / "reviews.spill"
        table = _read(loaded, state, spill_path, options.review_chars)
        n = table["u"].size
        info(f"read {n:,} interactions ({table['u'].max() + 1:,} users, "
             f"{table['i'].max() + 1:,} items) in {time.perf_counter() - clock:.1f} s")

        keep = latest_per_pair(table["u"], table["i"], table["t"])
        duplicates = n - keep.size
        keep = keep[k_core(table["u"][keep], table["i"][keep], options.k_core)]
        if keep.size == 0:
            raise InputError(f"no interactions left after the {options.k_core}-core filter; "
                             "lower --k-core", field="--k-core")
        keep = keep[np.lexsort((table["t"][keep], table["u"][keep]))]  # by user, time, file order
        # Gather the kept rows column by column, freeing each raw column as soon as it is copied.
        end = table.pop("end")
        rows = {"start": np.where(keep > 0, end[keep - 1], 0), "end": end[keep]}
        del end
        for key in ("u", "i", "r", "t"):
            rows[key] = table.pop(key)[keep]
        split = assign_splits(rows["u"], rows["t"], options.time_cutoff)
        usable = split == TRAIN
        lo, hi, available = history_windows(rows["u"], rows["t"], usable, options.history)
        target = split.copy()
        short_history = usable & (available < options.min_history)
        target[short_history] = NONE
        eligible = np.flatnonzero((target == TRAIN) & (available >= max(1, options.min_history)))
        pool = min(options.coldstart, eligible.size)
        if pool:
            picked = np.random.default_rng(options.seed).choice(eligible, size=pool, replace=False)
            target[picked] = COLD
        if options.coldstart and pool * 2 > eligible.size:
            warn(f"the cold-start pool ({pool:,}) takes more than half of the train targets")

        kept_items = np.unique(rows["i"])
        meta_offsets, meta_lengths, meta_counts = _read_meta(loaded, table["items"], kept_items,
                                                             spill_path)
        without_meta = int(np.count_nonzero(meta_lengths[kept_items] == 0))
        if without_meta and meta is not None:
            warn(f"{without_meta:,} of {kept_items.size:,} items have no meta; their meta is {{}}")
        ranks = time_ranks(rows["t"])
        span = int(ranks.max()) + 1
        keys = item_keys(rows["i"], ranks, span)
        order = item_order(keys, usable)
        sorted_keys = keys[order]
        del keys
        offsets = (_spill_item_reviews(spill_path, rows, order, table["users"],
                                       options.item_review_chars, options.review_chars)
                   if options.item_history else np.zeros(order.size + 1, dtype=np.int64))
        evidence = _evidence(rows, usable, order, sorted_keys, ranks, span, offsets,
                             options.item_history)
        del order
        examples = _write(tmp_out, rows, target, usable, (lo, hi, available),
                          {"users": table["users"], "items": table["items"]},
                          (meta_offsets, meta_lengths), spill_path, evidence)
        cf_note = add_cf(tmp_out, [name for name in SPLITS if examples.get(name)], state.scale,
                         choose(options.cf, int(kept_items.size)), options.cf_recent,
                         options.cf_folds, options.seed)
        for name in ("train", "dev", "test"):
            if not examples[name]:
                warn(f"the {name} split is empty; check --time-cutoff, --k-core, --min-history")
        manifest = {
            "format": "recone-lite prepared data 1",
            "recone_lite_version": _version(),
            "source": source,
            "files": state.files,
            "rating_scale": list(state.scale),
            "seed": options.seed,
            "split": "time-cutoff" if options.time_cutoff else "per-user-last",
            "options": asdict(options),
            "cf": cf_note,
            "counts": {
                "records": n + sum(state.skipped.values()),
                "skipped": dict(sorted(state.skipped.items())),
                "interactions": n,
                "duplicates": int(duplicates),
                "kept_after_k_core": int(keep.size),
                "users": int(np.unique(rows["u"]).size),
                "items": int(kept_items.size),
                "items_without_meta": without_meta,
                "interactions_without_meta": int(np.count_nonzero(meta_lengths[rows["i"]] == 0)),
                **meta_counts,
                "history_only_short_history": int(np.count_nonzero(short_history)),
                "examples": examples,
            },
        }
        manifest_path(tmp_out).write_text(
            json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        spill_path.unlink()
    info(f"wrote {out}: " + ", ".join(f"{k} {v:,}" for k, v in examples.items())
         + f" ({time.perf_counter() - clock:.1f} s)")
    return manifest


def _version() -> str:
    return __version__
