"""How a training process sets itself up on its machine (`train`, `sft`): CPU threads that fit the
machine's load, Unsloth imported before transformers on CUDA, no progress bars in logs.
"""

from __future__ import annotations

import contextlib
import functools
import statistics
from collections.abc import Iterator

from recone_lite import log
from recone_lite.gpu import cuda_available
from recone_lite.versions import package_version


def quiet_progress_bars() -> None:
    """No per-tensor / per-example progress bars in logs that are not a terminal (CI, files):
    the monitor prints one line per logged step instead."""
    import sys

    if sys.stderr.isatty():
        return
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()


@contextlib.contextmanager
def gguf_bar_on_terminals_only() -> Iterator[None]:
    """While a GGUF loads: transformers' reader draws a tqdm bar over the tensors, which in a log
    (stderr not a terminal) is written line after line. Here its bar takes tqdm's
    `disable=None`: drawn on a terminal as before, left out of files and pipes. A transformers
    whose reader draws no such bar is left alone."""
    try:
        from transformers import modeling_gguf_pytorch_utils as reader
    except ImportError:
        reader = None
    drawn = getattr(reader, "tqdm", None)
    if drawn is None:
        yield
        return
    reader.tqdm = functools.partial(drawn, disable=None)
    try:
        yield
    finally:
        reader.tqdm = drawn


def cpu_threads() -> int:
    """On CPU, use the cores that are idle: on a machine shared with other busy processes, more
    threads than free cores make every parallel op wait for a descheduled thread, while on an
    idle machine every core helps (docs/training.md has the measurements). OMP_NUM_THREADS,
    when set, wins. Returns the thread count set."""
    import os

    import torch

    if os.environ.get("OMP_NUM_THREADS"):
        return torch.get_num_threads()
    cores = os.cpu_count() or 1
    others = busy_threads()
    threads = min(torch.get_num_threads(), max(1, cores - others))
    if threads < torch.get_num_threads():
        log.info(f"cpu: {threads} thread(s): {others} busy thread(s) of other processes on "
                 f"{cores} cores (set OMP_NUM_THREADS to choose)")
        torch.set_num_threads(threads)
    return threads


def busy_threads(samples: int = 5, interval: float = 0.1) -> int:
    """Threads of other processes that are running or runnable right now (state R in
    /proc/PID/task/TID/stat), the median over a few samples. Not the load average, which trails by
    a minute and counts this process's own work before training (data loading) as another's;
    not /proc/loadavg's running count, which includes this process's helper threads."""
    import os
    import time

    me = str(os.getpid())
    counts = []
    for _ in range(samples):
        running = 0
        try:
            pids = [p for p in os.listdir("/proc") if p.isdigit() and p != me]
        except OSError:  # not Linux: fall back on the load average
            return round(os.getloadavg()[0])
        for pid in pids:
            try:
                for tid in os.listdir(f"/proc/{pid}/task"):
                    with open(f"/proc/{pid}/task/{tid}/stat", "rb") as stat:
                        running += stat.read().rsplit(b")", 1)[1].split()[0] == b"R"
            except OSError:  # the process ended meanwhile
                continue
        counts.append(running)
        time.sleep(interval)
    return round(statistics.median(counts))


def import_unsloth_first() -> None:
    """On CUDA with the `gpu` extra, import Unsloth before transformers / peft / trl are used, so
    its patches (FastLanguageModel, and TRL's trainers: the old PatchFastRL) apply. No-op on CPU."""
    if package_version("unsloth") == "not installed" or not cuda_available():
        return
    try:
        import unsloth  # noqa: F401
        from unsloth import FastLanguageModel

        patch = getattr(unsloth, "PatchFastRL", None)
        if patch is not None:  # older Unsloth; newer ones patch TRL on import
            patch("GRPO", FastLanguageModel)
    except Exception as err:  # a version clash: models.py falls back to transformers
        log.warn(f"Unsloth did not import ({err}); training with transformers + peft")
