"""Run directories: what a training run leaves behind, and the rules for overwrite and resume.

A run directory (`train` and `sft` write the same layout):

    adapter_config.json, adapter_model.safetensors   the final LoRA adapter (peft format; what
                                                     `predict --adapter` and vLLM's --lora load)
    tokenizer files                                  the tokenizer the adapter was trained with
    recipe.yaml                                      the fully resolved recipe
    run.json                                         status, versions, git commit, seed, device,
                                                     wall time, GPU-hours, samples, metrics, alarms
    log.jsonl                                        the trainer's log history, one line per entry
    checkpoint-N/                                    adapter + optimizer + trainer state
    warmup-adapter/                                  the adapter as a warm-up left it (GRPO runs
                                                     with a `warmup:` section)

An adapter inside a run (`checkpoint-N/`, `warmup-adapter/`) has no recipe.yaml of its own: the
run's describes it, so `predict --adapter RUN/checkpoint-N` serves the run's prompt
(`run_folder.RunFolder`).

Rules: a finished run is never overwritten unless `--overwrite`; a directory holding an unfinished
run is continued only with `--resume` (from its newest complete checkpoint, to the same total step
count, with the same recipe); `--resume` with no checkpoint yet starts from step 0.

`--overwrite` replaces only a run folder (one with run.json or recipe.yaml): the old run is moved
aside to `.NAME.PID.replaced` and removed once the new run has started (its model loaded, its
first run.json written); a new run that fails before that puts the old one back, and the next run
does so for one that was killed. Any other non-empty folder is refused. One process at a time
writes a run folder: the lock `.NAME.lock` beside it refuses a second.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import re
import shutil
import subprocess
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from recone_lite.errors import InputError
from recone_lite.files import atomic_path, exit_on_sigterm, holds_cwd, writer_lock
from recone_lite.gpu import device_name
from recone_lite.jsonl import dumps, read_json_object
from recone_lite.log import info, warn
from recone_lite.versions import stack_versions

RUN_JSON = "run.json"
RECIPE_YAML = "recipe.yaml"
LOG_JSONL = "log.jsonl"
WARMUP_ADAPTER = "warmup-adapter"  # in the run folder: the adapter as the warm-up left it
_CHECKPOINT = re.compile(r"checkpoint-(\d+)")


def read_run_json(out: Path) -> dict[str, Any]:
    """The run's run.json ({} when there is none); a corrupt one raises InputError (one line)."""
    path = Path(out) / RUN_JSON
    return read_json_object(path) if path.is_file() else {}


def inner_adapter(folder: Path) -> bool:
    """Whether `folder` is an adapter a run keeps inside itself (`checkpoint-N/`,
    `warmup-adapter/`) rather than a run of its own: the run's recipe.yaml describes it.

    >>> inner_adapter(Path("runs/x/checkpoint-8")), inner_adapter(Path("runs/x/warmup-adapter"))
    (True, True)
    >>> inner_adapter(Path("runs/checkpoints")), inner_adapter(Path("exports/x"))
    (False, False)
    """
    return bool(_CHECKPOINT.fullmatch(folder.name)) or folder.name == WARMUP_ADAPTER


def is_run_dir(folder: Path) -> bool:
    """Whether `folder` holds a recone-lite run (the only kind of folder --overwrite replaces)."""
    return (folder / RUN_JSON).is_file() or (folder / RECIPE_YAML).is_file()


def write_run_json(out: Path, record: dict[str, Any]) -> None:
    with atomic_path(out / RUN_JSON) as tmp:
        tmp.write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def safetensors_problem(path: Path) -> str | None:
    """Why a .safetensors file is unreadable (truncated, bad header), or None; reads its header
    only.

    >>> import struct, tempfile
    >>> header = json.dumps({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}})
    >>> path = Path(tempfile.mkdtemp()) / "a.safetensors"
    >>> _ = path.write_bytes(struct.pack("<Q", len(header)) + header.encode() + bytes(8))
    >>> safetensors_problem(path) is None
    True
    >>> _ = path.write_bytes(path.read_bytes()[:-3])  # a copy that stopped early
    >>> safetensors_problem(path)
    'truncated (74 of 77 bytes)'
    """
    size = path.stat().st_size
    with open(path, "rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            return f"truncated ({size} bytes, no header)"
        length = int.from_bytes(head, "little")
        if length > size - 8:
            return f"truncated ({size:,} bytes; the header alone needs {8 + length:,})"
        try:
            header = json.loads(handle.read(length))
            end = max((int(t["data_offsets"][1]) for k, t in header.items()
                       if k != "__metadata__"), default=0)
        except (ValueError, TypeError, KeyError, IndexError, AttributeError):
            return "its header is not valid safetensors JSON"
    if size != 8 + length + end:
        return f"truncated ({size:,} of {8 + length + end:,} bytes)"
    return None


def checkpoint_problem(folder: Path) -> str | None:
    """Why `checkpoint-N` cannot be resumed from, or None when it looks complete: the trainer
    state must be a JSON object, JSON files must parse, safetensors and torch (zip) files must be
    whole."""
    state = folder / "trainer_state.json"
    if not state.is_file():
        return "incomplete (no trainer_state.json: it was being written when the run stopped)"
    for path in sorted(folder.iterdir()):
        if not path.is_file():
            continue
        if path.suffix == ".json":
            try:
                value = json.loads(path.read_text(encoding="utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                return f"{path.name} is not valid JSON"
            if path == state and not isinstance(value, dict):
                return f"{path.name} is not a JSON object"
        elif path.suffix == ".safetensors":
            problem = safetensors_problem(path)
            if problem:
                return f"{path.name} is {problem}" if problem.startswith("truncated") else \
                    f"{path.name}: {problem}"
        elif path.suffix in (".pt", ".pth", ".bin"):
            with open(path, "rb") as handle:
                zipped = handle.read(2) == b"PK"  # torch.save's format; older pickles not checked
            if path.stat().st_size == 0 or (zipped and not zipfile.is_zipfile(path)):
                return f"{path.name} is truncated"
    return None


def latest_checkpoint(out: Path, *, quiet: bool = False) -> Path | None:
    """The `checkpoint-N` folder with the largest N that is complete, or None; a newer one that
    is not is skipped with a warning naming it and why.

    >>> import tempfile
    >>> root = Path(tempfile.mkdtemp())
    >>> for n in (2, 10):
    ...     (root / f"checkpoint-{n}").mkdir()
    ...     _ = (root / f"checkpoint-{n}" / "trainer_state.json").write_text("{}")
    >>> (root / "checkpoint-11").mkdir()  # being written when the run was killed: no state yet
    >>> latest_checkpoint(root, quiet=True).name
    'checkpoint-10'
    """
    found = sorted(
        ((int(m.group(1)), p) for p in out.glob("checkpoint-*")
         if (m := _CHECKPOINT.fullmatch(p.name)) and p.is_dir()),
        reverse=True,
    )
    for _, folder in found:
        problem = checkpoint_problem(folder)
        if problem is None:
            return folder
        if not quiet:
            warn(f"skipping {folder}: {problem}; trying the checkpoint before it")
    return None


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(node, dict):
        return {prefix: node}
    flat: dict[str, Any] = {}
    for key, value in node.items():
        flat.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def recipe_difference(saved: str, current: str, ignore: tuple[str, ...] = ()) -> str | None:
    """The first key whose value differs between two resolved recipes (YAML), or None; keys in
    `ignore` are not compared.

    >>> recipe_difference("a: 1\\nb: {c: 2}\\n", "a: 1\\nb: {c: 3}\\n")
    'b.c: 2 -> 3'
    >>> recipe_difference("a: 1\\n", "a: 1\\n") is None
    True
    >>> recipe_difference("a: 1\\noutput_dir: x\\n", "a: 1\\noutput_dir: y\\n", ("output_dir",))
    """
    old, new = _flatten(yaml.safe_load(saved) or {}), _flatten(yaml.safe_load(current) or {})
    for key in sorted((set(old) | set(new)) - set(ignore)):
        if old.get(key) != new.get(key):
            return f"{key}: {old.get(key)} -> {new.get(key)}"
    return None


def is_main_process() -> bool:
    """False on the other ranks of a distributed run (`accelerate launch` sets RANK)."""
    return int(os.environ.get("RANK", "0")) == 0


class RunStart:
    """What `open_run_dir` yields: the checkpoint to resume from, the earlier run.json, and
    `started()`, to call once the new run has started (model loaded)."""

    def __init__(self, out: Path, checkpoint: Path | None, previous: dict[str, Any],
                 aside: Path | None = None, created: bool = False) -> None:
        self.out, self.checkpoint, self.previous = out, checkpoint, previous
        self.aside, self.created, self.has_started = aside, created, False

    def started(self, record: RunRecord | None = None) -> None:
        """Write the first run.json (when given the record); the replaced run is removed now."""
        if record is not None:
            record.update()
        self.has_started = True
        if self.aside is not None and self.aside.exists():
            shutil.rmtree(self.aside)
            info(f"removed the run that {self.out} held before (--overwrite)")
        self.aside = None

    def undo(self) -> None:
        """The new run failed before it started: put back what was there (nothing, or the run
        that --overwrite replaced)."""
        if self.aside is not None:
            shutil.rmtree(self.out, ignore_errors=True)
            os.replace(self.aside, self.out)
            warn(f"the new run stopped before it started; {self.out} holds the earlier run again")
        elif self.created:  # new or empty before: all in it is this run's (recipe.yaml, the
            for child in self.out.iterdir():  # warm-up's scratch folder and adapter, ...)
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child, ignore_errors=True)
                else:
                    child.unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                self.out.rmdir()


def _restore_killed_overwrite(out: Path) -> None:
    """A run moved aside by an --overwrite that was killed goes back (its replacement never
    started) or away (its replacement had started). Called with the run folder's lock held, so
    no live process owns such a folder."""
    for old in sorted(out.parent.glob(f".{glob.escape(out.name)}.*.replaced")):
        if (out / RUN_JSON).is_file():
            shutil.rmtree(old)
            warn(f"removed {old}: the run a killed --overwrite had replaced")
        elif not out.exists() or {p.name for p in out.iterdir()} <= {RECIPE_YAML}:
            shutil.rmtree(out, ignore_errors=True)
            os.replace(old, out)
            warn(f"{out}: put back the run that a killed --overwrite had moved aside to {old}")
        else:
            warn(f"{old} holds the run that a killed --overwrite replaced; {out} holds other "
                 "files, so it is left for you to remove or move back")


def _corrupt_run_json(err: InputError) -> InputError:
    return InputError(f"{err.message}; --resume continues from the newest complete checkpoint, "
                      "--overwrite starts the run again", path=err.path, line=err.line)


def _checkpoint_step(out: Path) -> dict[str, Any]:
    """What a run.json would say of the newest complete checkpoint: its global step."""
    checkpoint = latest_checkpoint(out, quiet=True)
    if checkpoint is None:
        return {}
    state = json.loads((checkpoint / "trainer_state.json").read_text(encoding="utf-8"))
    return {"global_step": state.get("global_step", 0)}


def _check_run_dir(out: Path, recipe_yaml: str, *, resume: bool, overwrite: bool) -> RunStart:
    if out.exists() and not out.is_dir():
        raise InputError("exists and is not a directory", path=out)
    filled = out.is_dir() and any(out.iterdir())
    if filled and not is_run_dir(out):
        raise InputError(
            "is not empty and holds no recone-lite run (no run.json or recipe.yaml); "
            + ("--overwrite replaces only a run folder; " if overwrite else "")
            + "choose a new or empty folder for --out", path=out)
    if overwrite and filled:
        if holds_cwd(out):
            raise InputError("is the current folder or holds it; --overwrite will not move it "
                             "away: run from another folder", path=out)
        aside = out.parent / f".{out.name}.{os.getpid()}.replaced"
        os.replace(out, aside)
        info(f"{out}: the earlier run is moved aside ({aside.name}) until the new one starts")
        try:  # nothing of the old run is left in `out` to check: write the new recipe
            out.mkdir()
            (out / RECIPE_YAML).write_text(recipe_yaml, encoding="utf-8")
        except BaseException:
            RunStart(out, None, {}, aside).undo()
            raise
        return RunStart(out, None, {}, aside)
    try:
        previous = read_run_json(out) if out.is_dir() else {}
    except InputError as err:
        if not resume:
            raise _corrupt_run_json(err) from None
        warn(f"{err}; --resume goes on from the newest checkpoint's own state (the earlier "
             "record of dev evaluations and alarms is lost)")
        previous = _checkpoint_step(out)
    if previous.get("status") == "finished":
        raise InputError(
            "holds a finished run; pass --overwrite to replace it or choose another --out", path=out
        )
    checkpoint = latest_checkpoint(out) if out.is_dir() else None
    if resume:
        saved = out / RECIPE_YAML
        if checkpoint is not None and saved.is_file():
            # a run folder moved or copied elsewhere resumes where it is now
            change = recipe_difference(saved.read_text(encoding="utf-8"), recipe_yaml,
                                       ignore=("output_dir",))
            if change:
                raise InputError(
                    f"--resume needs the run's own recipe, but {change}; resume with the same "
                    "recipe and overrides, or start again with --overwrite",
                    path=saved,
                )
        if checkpoint is None:
            info(f"no checkpoint in {out} yet: starting from step 0")
            previous = {}
        else:  # what the killed run recorded after its last checkpoint is done again
            step = int(checkpoint.name.removeprefix("checkpoint-"))
            for key in ("dev_history", "alarms"):
                previous[key] = [e for e in previous.get(key) or [] if e.get("step", 0) <= step]
    elif out.is_dir() and any(out.iterdir()):
        where = f" (newest complete checkpoint: {checkpoint.name})" if checkpoint else ""
        raise InputError(
            f"holds an unfinished run{where}; pass --resume to continue it or --overwrite to start "
            "again",
            path=out,
        )
    out.mkdir(parents=True, exist_ok=True)
    (out / RECIPE_YAML).write_text(recipe_yaml, encoding="utf-8")
    return RunStart(out, checkpoint, previous, created=not filled)


@contextlib.contextmanager
def open_run_dir(
    out: Path, recipe_yaml: str, *, resume: bool, overwrite: bool
) -> Iterator[RunStart]:
    """Hold `out` for a run: lock it against a second writer, check it by the rules above, write
    `recipe.yaml`, yield a RunStart. Raises InputError where the rules forbid going on.

    Call `started()` once the run has started; if the block raises before that, `out` is put
    back as it was (the replaced run returns). A block that ends without calling it counts as
    started.
    """
    if resume and overwrite:
        raise InputError("--resume and --overwrite contradict each other; pass one")
    out = Path(out)
    if not is_main_process():  # distributed: rank 0 alone checks and writes the run folder
        yield RunStart(out, latest_checkpoint(out, quiet=True) if resume and out.is_dir()
                       else None, {})
        return
    exit_on_sigterm()  # SIGTERM runs the cleanup below instead of killing outright
    with writer_lock(out):
        _restore_killed_overwrite(out)
        start = _check_run_dir(out, recipe_yaml, resume=resume, overwrite=overwrite)
        try:
            yield start
        except BaseException:
            if not start.has_started:
                start.undo()
            raise
        if not start.has_started:
            start.started()


def git_commit() -> dict[str, Any] | None:
    """The commit of the recone-lite source tree and whether it had local changes (None outside
    a git checkout, e.g. a wheel install)."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10
        )
        if commit.returncode != 0:
            return None
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here, capture_output=True, text=True, timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit.stdout.strip(), "dirty": bool(status.stdout.strip())}


def write_log_history(out: Path, history: list[dict[str, Any]]) -> None:
    with atomic_path(out / LOG_JSONL) as tmp:
        tmp.write_text("".join(dumps(entry) + "\n" for entry in history), encoding="utf-8")


class RunRecord:
    """run.json while a run goes on (status "running", rewritten at each checkpoint, so a resumed
    run adds its wall time to the killed one's) and when it ends (status "finished")."""

    def __init__(self, out: Path, kind: str, recipe_name: str, seed: int,
                 previous: dict[str, Any]) -> None:
        device, self.gpus = device_name()
        self.out, self.start = out, time.monotonic()
        self.earlier_s = float(previous.get("wall_time_s") or 0.0)
        self.record: dict[str, Any] = {
            **previous,
            "status": "running",
            "global_step": previous.get("global_step", 0),
            "kind": kind,
            "recipe": recipe_name,
            "started_at": previous.get("started_at") or time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "resumed": bool(previous),
            "seed": seed,
            "device": device,
            "git": git_commit(),
            "versions": stack_versions(),
        }

    def wall_s(self) -> float:
        return self.earlier_s + time.monotonic() - self.start

    def update(self, **fields: Any) -> None:
        wall = self.wall_s()
        self.record.update(fields)
        self.record["wall_time_s"] = round(wall, 1)
        self.record["gpu_hours"] = round(wall / 3600 * self.gpus, 4)
        if is_main_process():
            write_run_json(self.out, self.record)

    def finish(self, **fields: Any) -> dict[str, Any]:
        self.update(status="finished", finished_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"), **fields)
        return self.record
