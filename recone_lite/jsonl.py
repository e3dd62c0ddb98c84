"""JSONL reading with line-numbered errors, and atomic writes (temp name, then rename).

The standard library and `datasets` read JSONL too, but neither names the file, line and field
of a bad record in one line, which is what a shell user needs; hence these few helpers.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from recone_lite.errors import InputError


def read_jsonl(
    path: str | Path, stream: IO[str] | None = None
) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield `(line_number, object)` for each non-blank line; a bad line raises InputError.

    `stream` reads an open text stream (stdin) and names it `path` in errors.

    >>> import io
    >>> list(read_jsonl("-", io.StringIO('{"a": 1}\\n\\n{"a": 2}\\n')))
    [(1, {'a': 1}), (3, {'a': 2})]
    >>> list(read_jsonl("-", io.StringIO('{"a": 1}\\n[1]\\n')))
    Traceback (most recent call last):
    ...
    recone_lite.errors.InputError: -:2: expected a JSON object
    """
    if stream is None:
        if not Path(path).is_file():
            raise InputError("no such file", path=path)
        with open(path, encoding="utf-8") as handle:
            yield from read_jsonl(path, handle)
        return
    for number, text in enumerate(stream, start=1):
        if not text.strip():
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as err:
            raise InputError(f"malformed JSON ({err.msg})", path=path, line=number) from None
        if not isinstance(obj, dict):
            raise InputError("expected a JSON object", path=path, line=number)
        yield number, obj


def dumps(obj: Any) -> str:
    """One compact, deterministic JSON line (keys in insertion order, UTF-8 kept)."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


@contextlib.contextmanager
def atomic_path(final: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `final`; rename it to `final` only if the block succeeds.

    Works for a file or a directory written at the yielded path. Nothing is left under the final
    name when the block raises (or the process dies).
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    target = tmp / final.name
    try:
        yield target
        if final.is_dir() and not final.is_symlink():
            shutil.rmtree(final)
        os.replace(target, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> int:
    """Write rows atomically; return how many were written."""
    count = 0
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(dumps(row) + "\n")
            count += 1
    return count
