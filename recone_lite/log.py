"""One rich console on stderr for logs and progress; stdout is kept for data (JSONL).

`progress` is the one progress bar of every long job (data prepare, traces make, predict, train,
sft, export): on stderr, with elapsed time and ETA, erased when the job ends, and drawn only when
stderr is a terminal; a pipe, a log file or CI gets the jobs' own log lines and no bar.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator

from rich.console import Console
from rich.markup import escape

console = Console(stderr=True, soft_wrap=True)


def rank_prefix() -> str:
    """`[rank N] ` on the other ranks of a distributed run (torchrun / `accelerate launch` set
    RANK), so their lines are told apart from rank 0's, which alone writes the run folder and
    stdout; "" in a single process and on rank 0.

    >>> rank_prefix() if "RANK" not in os.environ else ""
    ''
    """
    rank = os.environ.get("RANK", "0")
    return "" if rank in ("", "0") else f"[rank {rank}] "


def info(message: str) -> None:
    console.print(escape(rank_prefix()) + message, highlight=False)


def warn(message: str) -> None:
    console.print(f"{escape(rank_prefix())}[yellow]warning:[/yellow] {message}", highlight=False)


def _no_bar(advance: float = 0, **fields: object) -> None:
    """What `progress` yields where no bar is drawn."""


@contextlib.contextmanager
def progress(label: str, total: float | None = None, *, unit: str = "",
             note: str = "") -> Iterator[Callable[..., None]]:
    """A bar with ETA on stderr while the block runs; yields `step(advance=1, *, note=None,
    total=None)`: `advance` adds work done (bytes for `unit="bytes"`; counted as "done/total
    unit" for another unit, not shown without one), `note` replaces the text
    after the count (a rate, a cost so far), `total` sets or changes the amount of work (None: a
    count without ETA). Where stderr is no terminal, or another bar is already shown,
    `step` does nothing.

    >>> with progress("read", 10, unit="bytes") as step:  # under a test: no terminal, no bar
    ...     step(4, note="half way")
    """
    if not sys.stderr.isatty():
        yield _no_bar
        return
    from rich.errors import LiveError
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    count = [DownloadColumn()] if unit == "bytes" else [MofNCompleteColumn()] if unit else []
    columns = [  # with no total yet: a pulsing bar, "3/?" and no ETA
        TextColumn("{task.description}"),
        BarColumn(),
        *count,
        TextColumn(f"{'' if unit == 'bytes' else unit} {{task.fields[note]}}", markup=False),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    ]
    # two refreshes a second: the refresh thread takes the GIL from Python-bound loops
    # (generation); speed over the last 10 minutes, so steps of a minute still give an ETA
    bar = Progress(*columns, console=console, transient=True, refresh_per_second=2,
                   speed_estimate_period=600)
    task = bar.add_task(label, total=total, note=note)
    try:
        bar.start()
    except LiveError:  # a bar is already shown (e.g. a job run inside another one)
        yield _no_bar
        return

    def step(advance: float = 1, *, note: str | None = None, total: float | None = None) -> None:
        fields = {} if note is None else {"note": note}
        bar.update(task, advance=advance, total=total, **fields)

    try:
        yield step
    finally:
        bar.stop()
