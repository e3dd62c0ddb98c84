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

Only `run.json` marks a run folder (recone-lite writes it, first, before recipe.yaml or anything
else: a placeholder with status "starting" until the run's own record replaces it), so a folder
holding a recipe.yaml of someone's own is no run. What recone-lite never does to a folder:

- replace or resume in a folder without run.json that holds anything (refused, one line, exit 2);
- `--overwrite` or `--resume` in a folder that holds an input of the same command (the recipe
  file, data.dir, --traces and its .cache, init_adapter, model.adapter, a local model.name); the
  one exception is `--resume` from the run's own recipe.yaml;
- `--overwrite` a folder holding an entry no run writes (`RUN_ENTRIES`: recone-lite's files,
  TRL's, transformers' and peft's, `report/` and the demo's test files): the error names the
  first such entry;
- `--overwrite` through a symbolic link named as --out.

`--overwrite` replaces only such a run folder: the old run is moved aside to
`.NAME.PID.replaced` and removed once the new run has started (its model loaded, its first
run.json written); a new run that fails before that puts the old one back, and the next run
does so for one that was killed. The current folder is never replaced. One process at a time
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
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

from recone_lite.errors import InputError
from recone_lite.files import (
    atomic_path,
    exit_on_sigterm,
    first_inside,
    foreign_entry,
    holds_cwd,
    writer_lock,
)
from recone_lite.gpu import device_name
from recone_lite.jsonl import dumps, read_json_object
from recone_lite.log import info, warn
from recone_lite.versions import stack_versions

RUN_JSON = "run.json"
RECIPE_YAML = "recipe.yaml"
LOG_JSONL = "log.jsonl"
WARMUP_ADAPTER = "warmup-adapter"  # in the run folder: the adapter as the warm-up left it
_CHECKPOINT = re.compile(r"checkpoint-(\d+)")
STARTING = "starting"  # run.json's status from the folder's check until the run's own record

# Every name a run folder holds that recone-lite, TRL, transformers or peft wrote there (`train`,
# `sft`, GRPO's warm-up, `report`, `demo`): --overwrite refuses a folder holding anything else.
RUN_ENTRIES = (
    RUN_JSON, RECIPE_YAML, LOG_JSONL, "dev-step*.jsonl",  # runs.py, train_loop.py, monitor.py
    WARMUP_ADAPTER, "warmup",  # warmup.py: the warmed-up adapter, the warm-up's scratch folder
    "report", "test-sample.jsonl", "test-predictions.jsonl", "test-eval.json",  # report, demo
    "checkpoint-*", "training_args.bin", "runs",  # transformers: checkpoints, TensorBoard logs
    "completions", "emissions.csv", "model_architecture.txt",  # TRL's log_completions, report_to
    "adapter_config.json", "adapter_model.safetensors", "adapter_model.bin", "README.md",  # peft
    "tokenizer*", "special_tokens_map.json", "added_tokens.json", "chat_template.*",  # tokenizer
    "vocab.*", "merges.txt", "spiece.model", "sentencepiece*.model",
)
# what a run writes before it has started (its model loaded, its own run.json written): a folder
# holding nothing else is what an --overwrite killed before that start left
_PRE_START = (RUN_JSON, RECIPE_YAML, WARMUP_ADAPTER, "warmup", "runs", "completions")


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
    """Whether `folder` holds a recone-lite run: its run.json, which only recone-lite writes (a
    recipe.yaml may be anyone's). The only kind of folder --overwrite and --resume touch."""
    return (folder / RUN_JSON).is_file()


def _input_inside(out: Path, inputs: Mapping[str, Path | str | None], resume: bool
                  ) -> tuple[str | Path, str] | None:
    """The first input (its path, its name on the command line or in the recipe) that lies
    inside `out` (`files.first_inside`); `--resume` may read the run's own recipe.yaml."""
    own_recipe = out / RECIPE_YAML

    def own(label: str, value: Path | str | None) -> bool:
        return (resume and label == "--recipe" and value is not None and own_recipe.is_file()
                and Path(value).is_file() and os.path.samefile(value, own_recipe))

    return first_inside(out, ((value, label) for label, value in inputs.items()
                              if not own(label, value)))


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
                 aside: Path | None = None, created: bool = False,
                 recipe_before: bytes | None = None, made: bool = True) -> None:
        self.out, self.checkpoint, self.previous = out, checkpoint, previous
        self.aside, self.created, self.has_started = aside, created, False
        self.made = made  # the folder itself is this run's (an empty one given stays)
        self.recipe_before = recipe_before  # a resumed run's recipe.yaml, put back by `undo`

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
            if self.made:
                with contextlib.suppress(OSError):
                    self.out.rmdir()
        elif self.recipe_before is not None:  # a resumed run: its recipe.yaml as it was
            (self.out / RECIPE_YAML).write_bytes(self.recipe_before)


def _run_status(out: Path) -> str | None:
    """run.json's status ("" when it has none or cannot be read), None without a run.json."""
    if not (out / RUN_JSON).is_file():
        return None
    try:
        return str(read_run_json(out).get("status") or "")
    except InputError:
        return ""


def _restore_killed_overwrite(out: Path) -> None:
    """A run moved aside by an --overwrite that was killed goes back (its replacement never
    started: run.json is still the placeholder, and the folder holds only what a run writes
    before it starts) or away (its replacement had started; never through a link). Called with
    the run folder's lock held, so no live process owns such a folder."""
    for old in sorted(out.parent.glob(f".{glob.escape(out.name)}.*.replaced")):
        status = None if out.is_symlink() or not out.is_dir() else _run_status(out)
        if status not in (None, "", STARTING) and old.is_dir() and not old.is_symlink():
            shutil.rmtree(old)
            warn(f"removed {old}: the run a killed --overwrite had replaced")
        elif not out.exists() and not out.is_symlink() or (
                status in (None, STARTING) and out.is_dir() and not out.is_symlink()
                and foreign_entry(out, _PRE_START) is None):
            if out.exists():
                shutil.rmtree(out)
            os.replace(old, out)
            warn(f"{out}: put back the run that a killed --overwrite had moved aside to {old}")
        else:
            warn(f"{old} holds what a killed --overwrite moved aside from {out}, and {out} is "
                 "not a run that replaced it: both are left for you to remove or move back")


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


def check_run_out(out: Path, *, resume: bool, overwrite: bool,
                  inputs: Mapping[str, Path | str | None] | None = None) -> None:
    """The rules above, read only: InputError (one line, exit 2) where `train` / `sft` may not
    use `out` with these flags and `inputs` (name -> path of what the command reads). Nothing is
    written or moved; `open_run_dir` checks again under the folder's lock. Commands call it
    before loading data or a model; `launch` calls it for each job before starting any."""
    if resume and overwrite:
        raise InputError("--resume and --overwrite contradict each other; pass one")
    out = Path(out)
    if overwrite and out.is_symlink():
        raise InputError(f"is a symbolic link (to {os.readlink(out)}); --overwrite moves a run "
                         "folder aside and never through a link: pass the folder itself or "
                         "choose another --out", path=out)
    if out.exists() and not out.is_dir():
        raise InputError("exists and is not a directory", path=out)
    if not out.is_dir() or not any(out.iterdir()):
        return
    if not is_run_dir(out):
        raise InputError(
            "is not empty and holds no recone-lite run (no run.json); "
            + ("--overwrite replaces only a run folder; " if overwrite else "")
            + "choose a new or empty folder for --out", path=out)
    if resume or overwrite:
        found = _input_inside(out, inputs or {}, resume)
        if found is not None:
            doing = "--overwrite replaces" if overwrite else "--resume writes into"
            raise InputError(f"lies inside --out {out}, which {doing}; a run never uses a "
                             "folder holding its own inputs: move it out or choose another --out",
                             path=found[0], field=found[1])
    if overwrite:
        if holds_cwd(out):
            raise InputError("is the current folder or holds it; --overwrite will not move it "
                             "away: run from another folder", path=out)
        foreign = foreign_entry(out, RUN_ENTRIES)
        if foreign is not None:
            raise InputError(f"holds {foreign}, which no recone-lite run writes; --overwrite "
                             f"would remove it: move it out of {out} or choose another --out",
                             path=out)
        return
    try:
        status = read_run_json(out).get("status")
    except InputError as err:
        if resume:
            return
        raise _corrupt_run_json(err) from None
    if status == "finished":
        raise InputError(
            "holds a finished run; pass --overwrite to replace it or choose another --out", path=out
        )
    if not resume:
        checkpoint = latest_checkpoint(out, quiet=True)
        where = f" (newest complete checkpoint: {checkpoint.name})" if checkpoint else ""
        raise InputError(
            f"holds an unfinished run{where}; pass --resume to continue it or --overwrite to start "
            "again",
            path=out,
        )


def _begin(out: Path, recipe_yaml: str) -> None:
    """Mark `out` a run folder (run.json first, a placeholder unless one is there), then write
    the recipe: a run killed from here on leaves a folder that --resume and --overwrite take."""
    if not (out / RUN_JSON).is_file():
        write_run_json(out, {"status": STARTING})
    (out / RECIPE_YAML).write_text(recipe_yaml, encoding="utf-8")


def _check_run_dir(out: Path, recipe_yaml: str, *, resume: bool, overwrite: bool,
                   inputs: Mapping[str, Path | str | None] | None = None) -> RunStart:
    check_run_out(out, resume=resume, overwrite=overwrite, inputs=inputs)
    filled = out.is_dir() and any(out.iterdir())
    if overwrite and filled:
        aside = out.parent / f".{out.name}.{os.getpid()}.replaced"
        os.replace(out, aside)
        info(f"{out}: the earlier run is moved aside ({aside.name}) until the new one starts")
        try:  # nothing of the old run is left in `out` to check: write the new recipe
            out.mkdir()
            _begin(out, recipe_yaml)
        except BaseException:
            RunStart(out, None, {}, aside).undo()
            raise
        return RunStart(out, None, {}, aside)
    try:
        previous = read_run_json(out) if out.is_dir() else {}
    except InputError as err:  # check_run_out let it through: --resume
        warn(f"{err}; --resume goes on from the newest checkpoint's own state (the earlier "
             "record of dev evaluations and alarms is lost)")
        previous = _checkpoint_step(out)
    if previous.get("status") == STARTING:  # a run killed before it started: nothing to carry
        previous = {}
    checkpoint = latest_checkpoint(out) if out.is_dir() else None
    saved = out / RECIPE_YAML
    if resume:
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
    before = saved.read_bytes() if filled and saved.is_file() else None
    made = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    start = RunStart(out, checkpoint, previous, created=not filled, recipe_before=before,
                     made=made)
    try:
        _begin(out, recipe_yaml)
    except BaseException:
        start.undo()
        raise
    return start


@contextlib.contextmanager
def open_run_dir(
    out: Path, recipe_yaml: str, *, resume: bool, overwrite: bool,
    inputs: Mapping[str, Path | str | None] | None = None,
) -> Iterator[RunStart]:
    """Hold `out` for a run: lock it against a second writer, check it by the rules above
    (`check_run_out`, with the command's `inputs`), write run.json's placeholder and
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
        start = _check_run_dir(out, recipe_yaml, resume=resume, overwrite=overwrite,
                               inputs=inputs)
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
