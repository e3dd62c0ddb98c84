"""JSONL and JSON reading with line-numbered errors, and JSONL writing (atomically, through
files.py, which holds the atomic writes, locks and signals).

The standard library and `datasets` read JSONL too, but neither names the file, line and field
of a bad record in one line, which is what a shell user needs; hence these few helpers.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from recone_lite.errors import InputError, no_file
from recone_lite.files import atomic_path


def read_jsonl(
    path: str | Path, stream: IO[str] | IO[bytes] | Iterable[str] | None = None
) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield `(line_number, object)` for each non-blank line; a bad line raises InputError.

    `stream` reads an open stream (stdin's binary buffer, a text stream, a list of lines) and
    names it `path` in errors. Bytes are decoded line by line, so a non-UTF-8 byte names its line.

    >>> import io
    >>> list(read_jsonl("-", io.StringIO('{"a": 1}\\n\\n{"a": 2}\\n')))
    [(1, {'a': 1}), (3, {'a': 2})]
    >>> list(read_jsonl("-", io.StringIO('{"a": 1}\\n[1]\\n')))
    Traceback (most recent call last):
    ...
    recone_lite.errors.InputError: -:2: expected a JSON object
    >>> list(read_jsonl("-", io.BytesIO(b'{"a": 1}\\n{"a": "caf\\xe9"}\\n')))
    Traceback (most recent call last):
    ...
    recone_lite.errors.InputError: -:2: not valid UTF-8 (invalid continuation byte at byte 11)
    """
    if stream is None:
        if not Path(path).is_file():
            raise no_file(path=path)
        with open(path, "rb") as handle:  # decoded line by line, so a bad byte names its line
            yield from read_jsonl(path, handle)
        return
    number = 0
    lines = iter(stream)
    while True:
        try:
            text = next(lines)
        except StopIteration:
            return
        except UnicodeDecodeError as err:  # a text stream decodes ahead: the line is a lower bound
            raise InputError(f"not valid UTF-8 ({err.reason}) at or after this line", path=path,
                             line=number + 1) from None
        number += 1
        if isinstance(text, bytes):
            try:
                text = text.decode("utf-8")
            except UnicodeDecodeError as err:
                raise InputError(f"not valid UTF-8 ({err.reason} at byte {err.start + 1})",
                                 path=path, line=number) from None
        if not text.strip():
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as err:
            raise InputError(f"malformed JSON ({err.msg})", path=path, line=number) from None
        if not isinstance(obj, dict):
            raise InputError("expected a JSON object", path=path, line=number)
        yield number, obj


def read_json_object(path: Path, fix: str = "") -> dict[str, Any]:
    """A JSON file that holds one object (a manifest, a run.json); one InputError naming the
    file when it is not UTF-8, not JSON (`fix` says how to mend it) or not an object.

    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "run.json"
    >>> _ = path.write_text('{"status": "running"}')
    >>> read_json_object(path)
    {'status': 'running'}
    >>> _ = path.write_text('[1]')
    >>> read_json_object(path)
    Traceback (most recent call last):
    ...
    recone_lite.errors.InputError: ...run.json:1: expected a JSON object
    """
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise InputError(f"not valid UTF-8 ({err.reason} at byte {err.start + 1})",
                         path=path) from None
    except json.JSONDecodeError as err:
        raise InputError(f"malformed JSON ({err.msg}){fix}", path=path, line=err.lineno) from None
    if not isinstance(value, dict):
        raise InputError("expected a JSON object", path=path, line=1)
    return value


def dumps(obj: Any) -> str:
    """One compact, deterministic JSON line (keys in insertion order, UTF-8 kept)."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


def write_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> int:
    """Write rows atomically; return how many were written."""
    count = 0
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(dumps(row) + "\n")
            count += 1
    return count
