"""`recone-lite train` (GRPO) end to end on CPU with the real SmolLM2-135M GGUF: steps run, the
adapter changes, rewards are logged, predict loads the adapter, a killed run resumes to the same
step count, a frozen adapter is refused; and the bad-input paths (no model needed)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from training_helpers import (
    adapter_tensors,
    main,
    prepare_run_dir,
    write_prepared,
    write_recipe,
)

from recone_lite.errors import InputError, ReconeError
from recone_lite.runs import recipe_difference


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_prepared(tmp_path_factory.mktemp("data") / "tiny")


@pytest.fixture(scope="module")
def grpo_run(
    prepared: Path, smollm2_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """Warm-up (6 SFT steps: the format) then 2 GRPO steps, checkpoints every step. Sampling
    at temperature 0.7 keeps most answers well-formed with varied ratings, so the groups have
    reward variance and the step has a gradient."""
    from recone_lite import grpo
    from recone_lite.config import load_recipe

    tmp = tmp_path_factory.mktemp("grpo")
    path = write_recipe(tmp / "r.yaml", prepared, tmp / "run", smollm2_dir,
                        warmup={"steps": 6, "learning_rate": 3e-3, "batch_size": 4},
                        grpo={"temperature": 0.7})
    grpo.train(load_recipe(str(path)), recipe_name="test")
    return tmp / "run"


@pytest.mark.slow
def test_two_steps_change_the_adapter_and_log_rewards(grpo_run: Path) -> None:
    run = json.loads((grpo_run / "run.json").read_text())
    assert run["status"] == "finished" and run["global_step"] == 2
    for key in ("versions", "git", "seed", "device", "wall_time_s", "gpu_hours",
                "train_samples_seen", "mean_output_tokens", "dev_metrics", "warmup"):
        assert key in run, key
    assert run["gpu_hours"] == 0 and run["train_samples_seen"] == 2  # 1 prompt x 4 per step
    assert {"mae", "rmse", "coverage", "format_rate"} <= set(run["dev_metrics"])
    logs = [json.loads(line) for line in (grpo_run / "log.jsonl").read_text().splitlines()]
    steps = [entry for entry in logs if "reward" in entry]
    assert len(steps) == 2
    for key in ("rewards/format/mean", "rewards/answer/mean", "format_rate", "parse_rate",
                "frac_reward_zero_std", "completions/clipped_ratio"):
        assert key in steps[0], key
    assert any(k.startswith("dev/") for entry in logs for k in entry)
    # the second GRPO step moved the adapter (checkpoint-1 holds it after the first)
    before, after = adapter_tensors(grpo_run / "checkpoint-1"), adapter_tensors(grpo_run)
    assert set(before) == set(after)
    assert any((before[k] - after[k]).abs().max() > 0 for k in before), "adapter unchanged"
    assert (grpo_run / "recipe.yaml").is_file() and (grpo_run / "adapter_config.json").is_file()


@pytest.mark.slow
def test_the_saved_adapter_loads_in_predict(
    grpo_run: Path, prepared: Path, smollm2_dir: Path, tmp_path: Path
) -> None:
    from recone_lite.predict import predict

    out = tmp_path / "pred.jsonl"
    counts = predict(str(prepared / "dev.jsonl"), model=str(smollm2_dir),
                     adapter=str(grpo_run), template="none", max_new_tokens=8, batch_size=8,
                     out=str(out))
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert counts.rows == len(rows) == 8
    assert all({"id", "rating", "ok"} <= set(row) for row in rows)


@pytest.mark.slow
def test_a_frozen_adapter_is_refused(grpo_run: Path, smollm2_dir: Path) -> None:
    from peft import PeftModel

    from recone_lite.models import ModelSpec, load_model
    from recone_lite.training import check_trainable

    base, _ = load_model(ModelSpec(name=str(smollm2_dir)), for_training=True)
    frozen = PeftModel.from_pretrained(base, str(grpo_run))  # is_trainable defaults to False
    with pytest.raises(ReconeError, match="no trainable parameters"):
        check_trainable(frozen)
    frozen.load_adapter(str(grpo_run), adapter_name="trainable", is_trainable=True)
    frozen.set_adapter("trainable")
    assert check_trainable(frozen)[0] > 0


@pytest.mark.slow
def test_a_killed_run_resumes_to_the_same_step_count(
    prepared: Path, tiny_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Kill -9 right after the first checkpoint; --resume ends at the same step count."""
    out = tmp_path / "run"
    recipe = write_recipe(tmp_path / "r.yaml", prepared, out, tiny_dir,
                          grpo={"max_steps": 40, "save_total_limit": 2},
                          evaluation={"at_start": False})
    command = [sys.executable, "-m", "recone_lite", "train", "--recipe", str(recipe)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while not (out / "checkpoint-1" / "trainer_state.json").is_file():
        assert process.poll() is None, process.stderr.read().decode()
        assert time.monotonic() < deadline, "no checkpoint in time"
        time.sleep(0.1)
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed = json.loads((out / "run.json").read_text())
    assert killed["status"] == "running" and killed["global_step"] < 40

    code, _, err = main(capsys, "train", "--recipe", recipe)  # without --resume: refused
    assert code == 2 and "unfinished run" in err and "--resume" in err
    code, _, err = main(capsys, "train", "--recipe", recipe, "--resume")
    assert code == 0, err
    assert "resuming from" in err
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "finished" and run["global_step"] == 40 and run["resumed"]
    assert run["wall_time_s"] > killed["wall_time_s"]  # the killed attempt's time is kept
    code, _, err = main(capsys, "train", "--recipe", recipe, "--resume")
    assert code == 2 and "--overwrite" in err


# --- no model needed ------------------------------------------------------------------------


def test_a_bad_recipe_key_exits_2_naming_the_key(
    prepared: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    recipe = write_recipe(tmp_path / "r.yaml", prepared, tmp_path / "run", grpo={"max_step": 2})
    code, _, err = main(capsys, "train", "--recipe", recipe, "--dry-run")
    assert code == 2 and "grpo.max_step: unknown key (did you mean max_steps?)" in err
    good = write_recipe(tmp_path / "good.yaml", prepared, tmp_path / "run")
    code, _, err = main(capsys, "train", "--recipe", good, "lora.rank=8", "--dry-run")
    assert code == 2 and "lora.rank: unknown key" in err


def test_a_data_dir_missing_a_split_is_a_clear_error(prepared: Path, tmp_path: Path) -> None:
    from recone_lite.config import load_recipe
    from recone_lite.grpo import train

    broken = write_prepared(tmp_path / "broken", {"train": 4, "test": 2})
    recipe = load_recipe(str(write_recipe(tmp_path / "r.yaml", broken, tmp_path / "run")))
    with pytest.raises(InputError, match="no dev.jsonl"):
        train(recipe, dry_run=True)
    recipe = recipe.model_copy(update={"data": recipe.data.model_copy(
        update={"dir": str(tmp_path / "nowhere")})})
    with pytest.raises(InputError, match="no such prepared data directory"):
        train(recipe, dry_run=True)


def test_run_dir_rules(tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert prepare_run_dir(out, "a: 1\n", resume=False, overwrite=False) == (None, {})
    (out / "checkpoint-2").mkdir()
    (out / "checkpoint-2" / "trainer_state.json").write_text("{}")
    with pytest.raises(InputError, match="unfinished run .*checkpoint-2.*--resume"):
        prepare_run_dir(out, "a: 1\n", resume=False, overwrite=False)
    with pytest.raises(InputError, match=r"a: 1 -> 2"):
        prepare_run_dir(out, "a: 2\n", resume=True, overwrite=False)
    checkpoint, _ = prepare_run_dir(out, "a: 1\n", resume=True, overwrite=False)
    assert checkpoint == out / "checkpoint-2"
    (out / "run.json").write_text(json.dumps({"status": "finished"}))
    with pytest.raises(InputError, match="finished run; pass --overwrite"):
        prepare_run_dir(out, "a: 1\n", resume=True, overwrite=False)
    assert prepare_run_dir(out, "a: 2\n", resume=False, overwrite=True) == (None, {})
    assert not (out / "checkpoint-2").exists()
    assert recipe_difference("a: {b: 1}\n", "a: {b: 1}\n") is None


@pytest.mark.slow
def test_dry_run_prints_the_plan_and_writes_nothing(
    prepared: Path, tiny_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    recipe = write_recipe(tmp_path / "r.yaml", prepared, tmp_path / "run", tiny_dir)
    code, out, err = main(capsys, "train", "--recipe", recipe, "--dry-run")
    assert code == 0, err
    plan = json.loads(out)
    assert plan["steps"] == 2 and plan["per_step"] == 1 and plan["memory_gib"] > 0
    assert "plan: grpo" in err and "<|im_start|>user" in err
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads Linux's /proc")
def test_busy_threads_sees_a_spinning_process() -> None:
    """The CPU thread rule counts another process's running thread (and so leaves it a core)."""
    from recone_lite.runtime import busy_threads

    spin = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)
        assert busy_threads() >= 1
    finally:
        spin.kill()
        spin.wait()
