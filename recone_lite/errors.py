"""Errors the CLI turns into one-line messages and exit codes (2: bad input, 1: runtime)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


class ReconeError(Exception):
    """A runtime failure the user should see as one line; the CLI exits 1."""

    exit_code = 1


class InputError(ReconeError):
    """Bad usage or bad input (a file, a line, a field); the CLI exits 2.

    >>> str(InputError("rating 7 is outside the scale 1-5", path="r.jsonl", line=3, field="rating"))
    'r.jsonl:3: rating: rating 7 is outside the scale 1-5'
    >>> str(InputError("no such file", path="x.jsonl"))
    'x.jsonl: no such file'
    """

    exit_code = 2

    def __init__(
        self,
        message: str,
        *,
        path: str | Path | None = None,
        line: int | None = None,
        field: str | None = None,
    ) -> None:
        self.message, self.path, self.line, self.field = message, path, line, field
        where = ""
        if path is not None:
            where = f"{path}:{line}: " if line is not None else f"{path}: "
        if field is not None:
            where += f"{field}: "
        super().__init__(where + message)


def first_line(err: BaseException) -> str:
    """The first line of an exception's message (its type's name when the message is empty), for
    one-line errors.

    >>> first_line(OSError("no such file\\nmore detail")), first_line(ValueError())
    ('no such file', 'ValueError')
    """
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__


def validation_problem(err: Any) -> tuple[str, str, int]:
    """`(key, message, count)` of a pydantic ValidationError's first problem, the one way every
    command turns one into an InputError: the dotted key it is at ('' for a model's own
    validator), its message as a person reads it ("unknown key" for a key the model does not
    have, pydantic's "Value error, " prefix dropped) and how many problems there are.

    >>> from pydantic import BaseModel, ConfigDict, ValidationError
    >>> class Spec(BaseModel):
    ...     model_config = ConfigDict(extra="forbid")
    ...     size: int
    >>> try:
    ...     Spec.model_validate({"size": "big", "colour": 1})
    ... except ValidationError as err:
    ...     validation_problem(err)
    ('size', 'Input should be a valid integer, unable to parse string as an integer', 2)
    >>> try:
    ...     Spec.model_validate({"size": 1, "colour": 1})
    ... except ValidationError as err:
    ...     validation_problem(err)
    ('colour', 'unknown key', 1)
    """
    first = err.errors()[0]
    key = ".".join(str(part) for part in first["loc"])
    message = "unknown key" if first["type"] == "extra_forbidden" else first["msg"]
    return key, message.removeprefix("Value error, "), err.error_count()


def no_file(path: str | Path, **where: object) -> InputError:
    """The error for a path that is not a readable file: "is a folder" when it is one.

    >>> import tempfile
    >>> str(no_file(tempfile.gettempdir())).endswith("is a folder, not a file")
    True
    >>> str(no_file("no-such.jsonl"))
    'no-such.jsonl: no such file'
    """
    message = "is a folder, not a file" if Path(path).is_dir() else "no such file"
    return InputError(message, path=path, **where)  # type: ignore[arg-type]


def remote_code_hint(err: BaseException) -> str:
    """What to add to a load error that transformers raised for a model with its own code (it
    raises when trust_remote_code is False; it never asks, as we never pass None).

    >>> remote_code_hint(ValueError("The repository x contains custom code which must be run"))
    ' (its own code runs only with --trust-remote-code)'
    >>> remote_code_hint(OSError("no config.json"))
    ''
    """
    return " (its own code runs only with --trust-remote-code)" if "custom code" in str(err) \
        else ""
