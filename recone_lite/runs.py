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

Rules: a finished run is never overwritten unless `--overwrite`; a directory holding an unfinished
run is continued only with `--resume` (from its newest checkpoint, to the same total step count,
with the same recipe); `--resume` with no checkpoint yet starts from step 0.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import yaml

from recone_lite.errors import InputError
from recone_lite.jsonl import atomic_path, dumps
from recone_lite.log import info

RUN_JSON = "run.json"
RECIPE_YAML = "recipe.yaml"
LOG_JSONL = "log.jsonl"
_CHECKPOINT = re.compile(r"checkpoint-(\d+)")


def read_run_json(out: Path) -> dict[str, Any]:
    path = out / RUN_JSON
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def write_run_json(out: Path, record: dict[str, Any]) -> None:
    with atomic_path(out / RUN_JSON) as tmp:
        tmp.write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def latest_checkpoint(out: Path) -> Path | None:
    """The `checkpoint-N` folder with the largest N that holds a trainer state, or None.

    >>> import tempfile
    >>> root = Path(tempfile.mkdtemp())
    >>> for n in (2, 10):
    ...     (root / f"checkpoint-{n}").mkdir()
    ...     _ = (root / f"checkpoint-{n}" / "trainer_state.json").write_text("{}")
    >>> (root / "checkpoint-11").mkdir()  # being written when the run was killed: no state yet
    >>> latest_checkpoint(root).name
    'checkpoint-10'
    """
    found = [
        (int(m.group(1)), p)
        for p in out.glob("checkpoint-*")
        if (m := _CHECKPOINT.fullmatch(p.name)) and (p / "trainer_state.json").is_file()
    ]
    return max(found)[1] if found else None


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(node, dict):
        return {prefix: node}
    flat: dict[str, Any] = {}
    for key, value in node.items():
        flat.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def recipe_difference(saved: str, current: str) -> str | None:
    """The first key whose value differs between two resolved recipes (YAML), or None.

    >>> recipe_difference("a: 1\\nb: {c: 2}\\n", "a: 1\\nb: {c: 3}\\n")
    'b.c: 2 -> 3'
    >>> recipe_difference("a: 1\\n", "a: 1\\n") is None
    True
    """
    old, new = _flatten(yaml.safe_load(saved) or {}), _flatten(yaml.safe_load(current) or {})
    for key in sorted(set(old) | set(new)):
        if old.get(key) != new.get(key):
            return f"{key}: {old.get(key)} -> {new.get(key)}"
    return None


def is_main_process() -> bool:
    """False on the other ranks of a distributed run (`accelerate launch` sets RANK)."""
    return int(os.environ.get("RANK", "0")) == 0


def prepare_run_dir(
    out: Path, recipe_yaml: str, *, resume: bool, overwrite: bool
) -> tuple[Path | None, dict[str, Any]]:
    """Make `out` ready for a run; return the checkpoint to resume from and the earlier run.json.

    Writes `recipe.yaml`. Raises InputError where the rules above forbid going on.
    """
    if resume and overwrite:
        raise InputError("--resume and --overwrite contradict each other; pass one")
    if not is_main_process():  # distributed: rank 0 alone checks and writes the run folder
        return (latest_checkpoint(out) if resume and out.is_dir() else None), {}
    if out.exists() and not out.is_dir():
        raise InputError("exists and is not a directory", path=out)
    previous = read_run_json(out) if out.is_dir() else {}
    if overwrite and out.is_dir():
        shutil.rmtree(out)
        previous = {}
    if previous.get("status") == "finished":
        raise InputError(
            "holds a finished run; pass --overwrite to replace it or choose another --out", path=out
        )
    checkpoint = latest_checkpoint(out) if out.is_dir() else None
    if resume:
        saved = out / RECIPE_YAML
        if checkpoint is not None and saved.is_file():
            change = recipe_difference(saved.read_text(encoding="utf-8"), recipe_yaml)
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
        where = f" (newest checkpoint: {checkpoint.name})" if checkpoint else ""
        raise InputError(
            f"holds an unfinished run{where}; pass --resume to continue it or --overwrite to start "
            "again",
            path=out,
        )
    out.mkdir(parents=True, exist_ok=True)
    (out / RECIPE_YAML).write_text(recipe_yaml, encoding="utf-8")
    return checkpoint, previous


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


def device_name() -> tuple[str, int]:
    """`(description, GPUs used)` of where this process trains."""
    import torch

    if torch.cuda.is_available():
        count = torch.cuda.device_count()
        return f"cuda: {torch.cuda.get_device_name(0)} x{count}", count
    return f"cpu ({torch.get_num_threads()} threads)", 0


class RunRecord:
    """run.json while a run goes on (status "running", rewritten at each checkpoint, so a resumed
    run adds its wall time to the killed one's) and when it ends (status "finished")."""

    def __init__(self, out: Path, kind: str, recipe_name: str, seed: int,
                 previous: dict[str, Any]) -> None:
        from recone_lite.versions import stack_versions

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
