"""A real multi-process run on this machine: `accelerate launch` with two CPU processes (gloo)
runs `recone-lite train` (GRPO) on conftest's 2-layer tiny model, is killed after a checkpoint,
and resumes at the same world size. Both ranks step, rank 0 alone writes the run folder and
stdout, and the batch layout holds at world size 2 (each step sees two ranks' prompts).

Why `--multi_gpu` and not `--cpu`: accelerate 1.15's `launch --cpu --num_processes 2` starts
ONE process (its `simple_launcher`, accelerate/commands/launch.py; RANK and WORLD_SIZE unset),
so it never runs two ranks. `--multi_gpu` goes through torchrun, which starts both; with
CUDA_VISIBLE_DEVICES empty the ranks find no GPU, `train` sets TRL's use_cpu, and
torch.distributed joins them over gloo. `recone-lite launch --cpu` builds the same command
(tests/test_launch.py runs it).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
from training_helpers import write_prepared, write_recipe

from recone_lite.launch import accelerate_command

STEPS = 8


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(recipe: Path, log: Path, *flags: str) -> subprocess.Popen:
    """`accelerate launch` of `train` on two CPU ranks, in its own process group (so a kill
    from an interrupted pytest reaches it); stderr to `log`, stdout to `log`.stdout."""
    argv = [*accelerate_command(), "launch", "--multi_gpu", "--num_machines", "1",
            "--num_processes", "2", "--mixed_precision", "no", "--dynamo_backend", "no",
            "--main_process_port", str(free_port()),
            "-m", "recone_lite", "train", "--recipe", str(recipe), *flags]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    env.pop("RANK", None)
    return subprocess.Popen(argv, env=env, stdout=open(f"{log}.stdout", "w"),  # noqa: SIM115
                            stderr=open(log, "w"), start_new_session=True)  # noqa: SIM115


def kill_all(process: subprocess.Popen) -> None:
    """SIGKILL the launcher and every process under it, as a crash of the machine would. Not
    the launcher's process group alone: torchrun starts each rank in a session of its own
    (torch/distributed/elastic/multiprocessing/subprocess_handler: start_new_session=True), so
    a `kill -9` of the launcher's group leaves both ranks training on, orphaned."""
    import psutil  # why: here only; accelerate depends on it

    children = psutil.Process(process.pid).children(recursive=True)
    for child in [*children, psutil.Process(process.pid)]:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.send_signal(signal.SIGKILL)
    psutil.wait_procs(children, timeout=30)


@pytest.mark.slow
def test_two_gloo_ranks_train_get_killed_and_resume(tiny_dir: Path, tmp_path: Path) -> None:
    data = write_prepared(tmp_path / "data")
    out = tmp_path / "run"
    recipe = write_recipe(tmp_path / "r.yaml", data, out, tiny_dir,
                          grpo={"max_steps": STEPS, "save_total_limit": 2},
                          evaluation={"at_start": False})
    first_log = tmp_path / "first.log"
    process = launch(recipe, first_log)
    deadline = time.monotonic() + 120
    while not (out / "checkpoint-2" / "trainer_state.json").is_file():
        assert process.poll() is None, first_log.read_text()
        assert time.monotonic() < deadline, "no checkpoint in time\n" + first_log.read_text()
        time.sleep(0.05)
    kill_all(process)
    process.wait()
    killed = json.loads((out / "run.json").read_text())
    assert killed["status"] == "running" and 2 <= killed["global_step"] < STEPS, killed
    stderr = first_log.read_text()
    assert "step 1/" in stderr and "[rank 1] step 1/" in stderr, stderr  # both ranks stepped

    second_log = tmp_path / "second.log"
    process = launch(recipe, second_log, "--resume")
    assert process.wait(timeout=180) == 0, second_log.read_text()
    stderr = second_log.read_text()
    assert "resuming from" in stderr and f"[rank 1] step {STEPS}/{STEPS}" in stderr, stderr
    assert f"\nstep {STEPS}/{STEPS}" in stderr, stderr
    # stdout is data: one summary line, from rank 0
    lines = Path(f"{second_log}.stdout").read_text().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["status"] == "finished", lines
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "finished" and run["global_step"] == STEPS and run["resumed"]
    # the layout at world size 2: 4 completions per rank, 4 per prompt -> 2 prompts per step
    assert run["train_samples_seen"] == 2 * STEPS
    # rank 0 alone wrote: one adapter at the top, one log.jsonl with each step logged once
    names = {p.name for p in out.iterdir()}
    assert {"adapter_model.safetensors", "adapter_config.json", "recipe.yaml", "run.json",
            "log.jsonl"} <= names, names
    assert not [n for n in names if n.startswith(".") or n.endswith(".tmp")], names
    steps = [json.loads(line).get("step") for line in (out / "log.jsonl").read_text()
             .splitlines() if "reward" in json.loads(line)]
    assert steps == list(range(1, STEPS + 1)), steps
