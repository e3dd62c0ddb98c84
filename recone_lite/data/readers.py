"""Stream the lines of a plain or gzip file in 1 MiB chunks, hashing it on the way (with a bar
of the bytes read on a terminal's stderr).

Gzip is recognised by its magic bytes, not its name. A truncated gzip file (common for dumps
found in the wild) is an error naming the file and its last complete line, unless `salvage` is
set: then the complete lines are kept and the lost partial line is counted. zlib's
`decompressobj(16 + MAX_WBITS)` is used instead of `gzip.open` because it hands back everything
decompressed before the cut, and it handles multi-member files (`cat a.gz b.gz`).
"""

from __future__ import annotations

import hashlib
import json
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from recone_lite.data.records import ReadState
from recone_lite.errors import InputError, no_file
from recone_lite.log import progress

CHUNK = 1 << 20
GZIP_MAGIC = b"\x1f\x8b"
BOM = b"\xef\xbb\xbf"  # a UTF-8 byte order mark, dropped from the start of a file


def _chunks(path: Path, state: ReadState, report: dict[str, Any]) -> Iterator[bytes]:
    """Decompressed chunks of `path`; fills `report` (sha256, bytes, gzip, truncated) at the end."""
    digest = hashlib.sha256()
    size = 0
    gz = False
    complete = True  # False while inside a gzip member that has not ended yet
    inflate = None
    with open(path, "rb") as handle, progress(f"reading {path.name}", path.stat().st_size,
                                              unit="bytes") as step:
        for raw in iter(lambda: handle.read(CHUNK), b""):
            step(len(raw))
            if size == 0:
                gz = raw[:2] == GZIP_MAGIC
            digest.update(raw)
            size += len(raw)
            if not gz:
                yield raw
                continue
            while raw:
                if complete:  # the first member, or the next one of a multi-member file
                    inflate, complete = zlib.decompressobj(16 + zlib.MAX_WBITS), False
                try:  # bounded output per call: a small chunk may inflate to gigabytes
                    out = inflate.decompress(raw, 4 * CHUNK)
                except zlib.error as err:
                    raise InputError(f"corrupt gzip data after line {state.line} ({err})",
                                     path=path) from None
                if out:
                    yield out
                complete = inflate.eof
                raw = inflate.unused_data if complete else inflate.unconsumed_tail
        if not complete and inflate is not None:
            tail = inflate.flush()  # output still held back by the last bounded call
            complete = inflate.eof
            if tail:
                yield tail
    report.update(sha256=digest.hexdigest(), bytes=size, gzip=gz, truncated=not complete)


def iter_lines(path: str | Path, state: ReadState) -> Iterator[bytes]:
    """Yield each non-blank line of `path` (bytes, no line ending), keeping `state.line` on it.

    At the end, appends `{"path", "sha256", "bytes", "lines"}` to `state.files`.
    An empty file, or one with only blank lines, is an InputError.
    """
    path = Path(path)
    if not path.is_file():
        raise no_file(path=path)
    state.path, state.line = path, 0
    report: dict[str, Any] = {}
    number = 0
    records = 0
    rest = b""
    for chunk in _chunks(path, state, report):
        if number == 0 and not rest and chunk.startswith(BOM):
            chunk = chunk[len(BOM):]
        parts = (rest + chunk).split(b"\n")
        rest = parts.pop()
        for part in parts:
            number += 1
            if part.strip():
                state.line = number
                records += 1
                yield part
    if report["truncated"]:
        if not state.salvage:
            raise InputError(
                f"truncated gzip file: it is cut off after line {number}, the last complete "
                f"line; pass --salvage to keep the complete lines", path=path)
        if rest.strip():
            state.skipped["salvage_lost_partial_line"] += 1
        rest = b""
    if rest.strip():
        number += 1
        state.line = number
        records += 1
        yield rest
    if records == 0:
        raise InputError("empty file: no records", path=path)
    state.files.append({"path": str(path), "sha256": report["sha256"], "bytes": report["bytes"],
                        "lines": number, **({"salvaged": True} if report["truncated"] else {})})


_scan = json.JSONDecoder().scan_once  # the C scanner behind json.loads, without its wrappers


def parse_json(line: bytes) -> Any:
    """`json.loads` of one UTF-8 line, with less overhead per call (it is called per record).

    >>> parse_json(b' {"a": [1, 2.5]} ')
    {'a': [1, 2.5]}
    >>> parse_json(b'{"a": 1} x')
    Traceback (most recent call last):
    ...
    json.decoder.JSONDecodeError: Extra data: line 1 column 9 (char 8)
    """
    text = line.decode("utf-8").strip()
    try:
        obj, end = _scan(text, 0)
    except StopIteration as err:
        raise json.JSONDecodeError("Expecting value", text, err.value) from None
    if end != len(text):
        raise json.JSONDecodeError("Extra data", text, end)
    return obj


def iter_json(path: str | Path, state: ReadState,
              literal: bool = False) -> Iterator[dict[str, Any]]:
    """Yield the JSON object on each line; `literal` also accepts Python literals (Amazon 2014).

    Python literals are parsed with `ast.literal_eval`, which evaluates no code.
    """
    for line in iter_lines(path, state):
        try:
            obj = parse_json(line)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            obj = _literal(line) if literal else None
            if obj is None:
                reason = getattr(err, "msg", "not UTF-8")
                state.bad("malformed_json", f"malformed JSON ({reason})")
                continue
        if not isinstance(obj, dict):
            state.bad("malformed_json", "expected a JSON object")
            continue
        yield obj


def _literal(line: bytes) -> dict[str, Any] | None:
    import ast

    try:
        obj = ast.literal_eval(line.decode("utf-8", errors="replace"))
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return None
    return obj if isinstance(obj, dict) else None


def file_record(path: Path) -> dict[str, Any]:
    """`{"path", "sha256", "bytes"}` of a file that is read whole (a pickle)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(CHUNK), b""):
            digest.update(chunk)
    return {"path": str(path), "sha256": digest.hexdigest(), "bytes": path.stat().st_size}
