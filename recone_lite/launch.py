"""`recone-lite launch`: several training jobs side by side on one node, one adapter each.

A recipe with a `launch:` section (`Recipe.launch`, typed in config.py) lists jobs. Each job
is one `recone-lite train` run on its own subset of the node's GPUs, started through
`accelerate launch` (DDP or DeepSpeed, from the configs in `recipes/accelerate/`): the engine's
own multi-process code, none of ours. Jobs get consecutive GPUs (2 + 3 + 3 on 8) through
`CUDA_VISIBLE_DEVICES` and distinct rendezvous ports, write their own log file, and run to the
end whatever the others do; the exit code is non-zero when any failed. TRL's vLLM generation is
a recipe setting (`grpo.use_vllm`, `grpo.vllm_mode: colocate`), not something launched here.

    launch:
      accelerate_config: ddp        # recipes/accelerate/ddp.yaml, or a path
      output_dir: runs/h20x8
      jobs:
        - {name: music, gpus: 2, overrides: [data.dir=data/music]}
        - {name: book, gpus: 3, overrides: [data.dir=data/book]}
        - {name: yelp, gpus: 3, recipe: yelp-grpo}

The section is typed in config.py (`LaunchSection`, `Job`), beside the rest of a recipe.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from recone_lite import log
from recone_lite.config import LaunchSection, load_recipe, recipes_dir
from recone_lite.errors import InputError, ReconeError
from recone_lite.runs import check_run_out
from recone_lite.training import run_inputs

BASE_PORT = 29500  # torch.distributed's default; job i rendezvous on BASE_PORT + i


def accelerate_config_path(name: str) -> Path:
    """A packaged accelerate config (`ddp`, `zero2`, `zero3`) or a path to one.

    >>> accelerate_config_path("ddp").name
    'ddp.yaml'
    """
    path = Path(name)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise InputError("no such accelerate config", path=path)
        return path
    packaged = recipes_dir() / "accelerate" / f"{name}.yaml"
    if not packaged.is_file():
        known = ", ".join(p.stem for p in sorted((recipes_dir() / "accelerate").glob("*.yaml")))
        raise InputError(f"unknown accelerate config {name!r}; known: {known}",
                         field="launch.accelerate_config")
    return packaged


def check_multi_process(config: Path, processes: int) -> None:
    """InputError for a config that would start one process where a job asks for several:
    accelerate 1.15 runs `distributed_type: MULTI_CPU` (what `accelerate config` writes for a
    CPU) and `NO` through its `simple_launcher` (accelerate/commands/launch.py), one process
    unless an mpirun hostfile is given, so the job would silently train on one rank."""
    if processes < 2:
        return
    try:
        loaded = yaml.safe_load(config.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return  # accelerate itself reports an unreadable config
    kind = loaded.get("distributed_type") if isinstance(loaded, dict) else None
    if kind in ("MULTI_CPU", "NO"):
        raise InputError(
            f"distributed_type {kind} starts one process in `accelerate launch` (without an "
            f"mpirun hostfile), not {processes}; for several CPU processes use "
            "`recone-lite launch --cpu` (torchrun, gloo)", path=config)


def accelerate_command() -> list[str]:
    """`accelerate` of this Python environment (the console script beside the interpreter)."""
    beside = Path(sys.executable).parent / "accelerate"
    if beside.is_file():
        return [str(beside)]
    found = shutil.which("accelerate")
    return [found] if found else [sys.executable, "-m", "accelerate.commands.launch"]


@dataclass
class Command:
    """One job as it will run: argv, the environment it adds, its run dir and log file."""

    name: str
    gpus: int
    argv: list[str]
    env: dict[str, str]
    run_dir: Path
    log: Path

    def shell(self) -> str:
        """The command as a shell line (what `--dry-run` prints)."""
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in self.env.items())
        return (env + " " if env else "") + shlex.join(self.argv)


def build_commands(
    recipe_ref: str,
    section: LaunchSection,
    *,
    cpu: bool = False,
    only: list[str] | None = None,
    train_flags: list[str] | None = None,
    output_dir: str | None = None,
) -> list[Command]:
    """The per-job commands (pure: nothing is started or checked on disk besides the configs).

    `recipe_ref` is how the launching recipe was named (a packaged name or a file); a job without
    its own `recipe` trains that one. With `cpu`, no GPU is assigned (CUDA_VISIBLE_DEVICES is
    empty) and no config file is passed (DDP and DeepSpeed configs are for GPUs): a one-process
    job gets accelerate's `--cpu`, a job of N processes `--multi_gpu` (torchrun), whose ranks
    find no CUDA, so `train` sets TRL's use_cpu and they join over gloo. (accelerate's `--cpu`
    with `--num_processes 2` starts one process only, in accelerate 1.15.)

    >>> from recone_lite.config import Job
    >>> section = LaunchSection(gpus=8, jobs=[Job(name="a", gpus=2), Job(name="b", gpus=3)])
    >>> a, b = build_commands("r", section)
    >>> a.env, b.env
    ({'CUDA_VISIBLE_DEVICES': '0,1'}, {'CUDA_VISIBLE_DEVICES': '2,3,4'})
    >>> b.argv[b.argv.index("--num_processes") + 1], b.argv[b.argv.index("--main_process_port") + 1]
    ('3', '29501')
    >>> b.argv[-6:]
    ['recone_lite', 'train', '--recipe', 'r', '--out', 'runs/launch/b']
    """
    out = Path(output_dir or section.output_dir)
    commands: list[Command] = []
    first_gpu = 0
    selected = [job for job in section.jobs if not only or job.name in only]
    if only and (missing := set(only) - {job.name for job in section.jobs}):
        raise InputError(f"no job named {', '.join(sorted(missing))}; the jobs are "
                         f"{', '.join(job.name for job in section.jobs)}", field="--only")
    for index, job in enumerate(section.jobs):
        gpus = list(range(first_gpu, first_gpu + job.gpus))
        first_gpu += job.gpus
        if job not in selected:
            continue
        argv = [*accelerate_command(), "launch"]
        if cpu:  # torchrun's processes; `train` sets use_cpu without CUDA, so they use gloo
            argv += ["--multi_gpu" if job.gpus > 1 else "--cpu", "--mixed_precision", "no"]
        else:
            config = accelerate_config_path(job.accelerate_config or section.accelerate_config)
            check_multi_process(config, job.gpus)
            argv += ["--config_file", str(config)]
        argv += ["--num_machines", "1", "--num_processes", str(job.gpus),
                 "--main_process_port", str(BASE_PORT + index)]
        run_dir = out / job.name
        argv += ["-m", "recone_lite", "train", "--recipe", job.recipe or recipe_ref,
                 "--out", str(run_dir), *(train_flags or []), *job.overrides]
        env = {"CUDA_VISIBLE_DEVICES": "" if cpu else ",".join(map(str, gpus))}
        commands.append(Command(job.name, job.gpus, argv, env, run_dir,
                                out / "logs" / f"{job.name}.log"))
    return commands


@dataclass
class Running:
    command: Command
    process: subprocess.Popen | None = None
    started: float = 0.0
    ended: float | None = None
    returncode: int | None = None
    last_line: str = ""
    handle: Any = field(default=None, repr=False)

    @property
    def status(self) -> str:
        if self.process is None:
            return "waiting"
        if self.returncode is None:
            return "running"
        return "finished" if self.returncode == 0 else f"failed ({self.returncode})"


def _last_line(path: Path, limit: int = 4096) -> str:
    """The last non-empty line of a log, read from its tail only."""
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(handle.tell() - limit, 0))
            text = handle.read().decode("utf-8", "replace")
    except OSError:
        return ""
    lines = [line.strip() for line in text.replace("\r", "\n").splitlines() if line.strip()]
    return lines[-1][:90] if lines else ""


def status_table(jobs: list[Running]) -> Any:
    """The rich table of the jobs: name, GPUs, status, elapsed time, log, last log line."""
    from rich.table import Table

    table = Table(title="recone-lite launch", title_justify="left")
    for column in ("job", "gpus", "status", "elapsed", "log", "last line"):
        table.add_column(column, overflow="fold" if column == "last line" else "ellipsis")
    now = time.monotonic()
    for job in jobs:
        colour = {"running": "cyan", "finished": "green", "waiting": "dim"}.get(
            job.status, "red")
        elapsed = ((job.ended or now) - job.started) if job.started else 0.0
        gpus = job.command.env.get("CUDA_VISIBLE_DEVICES") or f"{job.command.gpus} cpu"
        table.add_row(job.command.name, gpus, f"[{colour}]{job.status}[/{colour}]",
                      f"{elapsed:.0f} s", str(job.command.log), job.last_line)
    return table


def run_jobs(commands: list[Command], *, refresh: float = 1.0) -> list[dict[str, Any]]:
    """Start every job, show their status until all have ended, and return one summary each.

    Each job runs in its own process group with stdout and stderr in its log file. A job that
    fails leaves the others running. Ctrl-C (or SIGTERM) stops every job's process group.
    """
    from rich.live import Live

    jobs = [Running(c) for c in commands]
    for job in jobs:
        job.command.log.parent.mkdir(parents=True, exist_ok=True)
        # appended: a second launch (a --resume, or one whose jobs are refused) keeps what the
        # earlier attempts logged
        job.handle = job.command.log.open("a", encoding="utf-8")
        job.handle.write(f"$ {job.command.shell()}\n")
        job.handle.flush()
        job.process = subprocess.Popen(
            job.command.argv, env={**os.environ, **job.command.env}, stdin=subprocess.DEVNULL,
            stdout=job.handle, stderr=subprocess.STDOUT, start_new_session=True)
        job.started = time.monotonic()
        log.info(f"started {job.command.name} (pid {job.process.pid}): log {job.command.log}")

    previous = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, _interrupt)  # `kill` of launch stops the jobs as Ctrl-C does
    try:
        with Live(status_table(jobs), console=log.console, refresh_per_second=2,
                  transient=False) as live:
            while any(job.returncode is None for job in jobs):
                for job in jobs:
                    if job.returncode is None and job.process is not None:
                        job.returncode = job.process.poll()
                        if job.returncode is not None:
                            job.ended = time.monotonic()
                    job.last_line = _last_line(job.command.log)
                live.update(status_table(jobs))
                if any(job.returncode is None for job in jobs):
                    time.sleep(refresh)
    except KeyboardInterrupt:
        log.warn("interrupted: stopping every job")
        _stop([job.process for job in jobs if job.returncode is None and job.process])
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
        for job in jobs:
            if job.handle is not None:
                job.handle.close()
    return [{"job": job.command.name, "status": "finished" if job.returncode == 0 else "failed",
             "returncode": job.returncode, "seconds": round((job.ended or 0) - job.started, 1),
             "run_dir": str(job.command.run_dir), "log": str(job.command.log)} for job in jobs]


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _stop(processes: list[subprocess.Popen], grace: float = 30.0) -> None:
    """SIGTERM to each job's process group (accelerate and its ranks), SIGKILL after `grace` s."""
    for process in processes:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for process in processes:
        try:
            process.wait(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def launch_recipe(
    recipe_ref: str,
    *,
    dry_run: bool = False,
    cpu: bool = False,
    only: list[str] | None = None,
    output_dir: str | None = None,
    train_flags: list[str] | None = None,
) -> list[Any]:
    """The `launch` command: validate the recipe and every job's recipe with its overrides
    (before anything starts), then print the commands (`dry_run`: a list of shell lines) or run
    them (a list of per-job summaries)."""
    recipe = load_recipe(recipe_ref)
    if recipe.launch is None:
        raise InputError(f"recipe {recipe_ref} has no launch: section (see "
                         "h20x8-multi-adapter); run a single recipe with `recone-lite train`",
                         field="launch")
    commands = build_commands(recipe_ref, recipe.launch, cpu=cpu, only=only,
                              train_flags=train_flags, output_dir=output_dir)
    run_dirs = {c.name: c.run_dir for c in commands}
    flags = train_flags or []
    for job in recipe.launch.jobs:
        if not only or job.name in only:
            job_recipe = load_recipe(job.recipe or recipe_ref, job.overrides)  # a bad override
            if job_recipe.model.trust_remote_code and "--trust-remote-code" not in (
                    train_flags or []):  # fails here, and so does remote code nobody allowed
                raise InputError(f"job {job.name} asks for model.trust_remote_code: true, which "
                                 "runs the model repository's own Python code; pass "
                                 "--trust-remote-code on the command line to allow it")
            if not dry_run:  # each job's run folder as its `train` will check it, before any
                # job starts or any log is opened: a refused job is one line here, exit 2
                check_run_out(run_dirs[job.name], resume="--resume" in flags,
                              overwrite="--overwrite" in flags,
                              inputs=run_inputs(job_recipe, job.recipe or recipe_ref))
    if dry_run:
        return [c.shell() for c in commands]
    log.info(f"launch: {len(commands)} jobs; logs in {commands[0].log.parent}")
    return run_jobs(commands)


def raise_if_failed(results: list[Any]) -> None:
    """A ReconeError (exit 1) naming the failed jobs and their logs, when any failed.

    >>> raise_if_failed([{"job": "a", "status": "finished"}, "a shell line"])
    >>> raise_if_failed([{"job": "b", "status": "failed", "returncode": 1, "log": "b.log"}])
    Traceback (most recent call last):
    ...
    recone_lite.errors.ReconeError: 1 of 1 jobs failed: b (exit 1, log b.log)
    """
    jobs = [r for r in results if isinstance(r, dict)]
    failed = [r for r in jobs if r["status"] != "finished"]
    if failed:
        names = ", ".join(f"{r['job']} (exit {r['returncode']}, log {r['log']})" for r in failed)
        raise ReconeError(f"{len(failed)} of {len(jobs)} jobs failed: {names}")
