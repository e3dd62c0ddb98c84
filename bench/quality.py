"""Rating quality on MovieLens-100k: does training with recone-lite beat the baselines?

Trains the `cpu-quality` recipe (its warm-up, then GRPO) and predicts on the test split
(by default all 943 users) at three stages, beside every baseline fitted on train:

- `before`:  the base model, no adapter;
- `warmup`:  the adapter as the warm-up left it (`RUN/warmup-adapter`);
- `grpo`:    the final adapter.

Each stage is one greedy `predict` pass with `--readout expected`, whose rows carry both the
distribution's mean (`rating`) and the number written in `<rate>` (`text_rating`): both readouts
are scored from the same completions with `metrics.summarize`. Dev metrics (the recipe's
`data.eval_limit` examples, after the warm-up and after GRPO) come from the run's run.json.
Writes the JSON (one `eval`-style summary per stage and readout) and the results table in
docs/results.md, between its markers.

    python bench/quality.py                                   # the full run; run it alone
    python bench/quality.py --test-limit 200 warmup.steps=20  # a shorter look (recipe overrides)

A finished run in --out is reused (pass --retrain to train again); predictions already written
for a stage are reused too (the predict files resume), so a killed bench continues.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from recone_lite import grpo  # noqa: E402
from recone_lite.baselines import LABELS, baseline_predictions, fit_on_train  # noqa: E402
from recone_lite.config import load_recipe  # noqa: E402
from recone_lite.data.prepare import Options, prepare  # noqa: E402
from recone_lite.jsonl import read_jsonl  # noqa: E402
from recone_lite.metrics import fmt_metric, paired_bootstrap, summarize  # noqa: E402
from recone_lite.predict import predict, recipe_options  # noqa: E402
from recone_lite.prepared import iter_split  # noqa: E402
from recone_lite.prompts import stats_estimate  # noqa: E402
from recone_lite.runs import WARMUP_ADAPTER, read_run_json  # noqa: E402
from recone_lite.training import newest_per_user  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MARK_BEGIN, MARK_END = "<!-- quality-ml100k:begin -->", "<!-- quality-ml100k:end -->"
ESTIMATE_LABEL = "estimate in the prompt (earlier means only)"
BLEND_LABEL = "linear blend of the prompt's numbers (least squares on the training pool)"
KEPT = ("n", "parsed", "coverage", "mae", "rmse", "mae_with_failures", "rmse_with_failures",
        "mean_prediction", "per_rating", "histogram", "truth_histogram")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("overrides", nargs="*", help="recipe overrides, key.sub=value")
    parser.add_argument("--recipe", default="cpu-quality")
    parser.add_argument("--data", type=Path, default=ROOT / "data" / "ml-100k")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-quality")
    parser.add_argument("--test-limit", type=int, default=None, help="first N test examples")
    parser.add_argument("--retrain", action="store_true", help="train again over a finished run")
    parser.add_argument("--rescore", action="store_true",
                        help="score the finished run and the predictions already written again "
                        "(no training, no predicting); the timings stay those --results measured")
    parser.add_argument("--results", type=Path,
                        default=ROOT / "bench" / "results" / "quality-ml100k.json")
    parser.add_argument("--docs", type=Path, default=ROOT / "docs" / "results.md",
                        help="the page whose table between the markers is rewritten")
    return parser.parse_args(argv)


def test_file(data: Path, limit: int | None, folder: Path) -> Path:
    """The test split, or its first `limit` lines in a file of their own."""
    source = data / "test.jsonl"
    if limit is None:
        return source
    path = folder / f"test-first-{limit}.jsonl"
    if not path.is_file():
        with open(source, encoding="utf-8") as lines:
            path.write_text("".join(line for _, line in zip(range(limit), lines, strict=False)),
                            encoding="utf-8")
    return path


def predict_stage(recipe: Any, requests: Path, adapter: Path | None, out: Path) -> float:
    """One greedy predict pass with the expected readout (resumes a partial file); wall seconds."""
    started = time.perf_counter()
    predict(str(requests), **recipe_options(recipe), adapter=str(adapter) if adapter else None,
            temperature=0.0, out=str(out), resume=out.exists(), completion=True,
            readout="expected")
    return time.perf_counter() - started


def score(rows: list[dict[str, Any]], examples: list[dict[str, Any]], scale: tuple[float, float],
          fallback: float) -> dict[str, Any]:
    """Both readouts of one stage's rows, in the examples' order (a missing row is a failure)."""
    by_id = {row["id"]: row for row in rows}
    truths = [float(e["rating"]) for e in examples]
    found = [by_id.get(e["id"], {}) for e in examples]
    result = {}
    for readout, key in (("expected", "rating"), ("text", "text_rating")):
        report = summarize([row.get(key) for row in found], truths, scale, fallback)
        result[readout] = {k: report[k] for k in KEPT}
    result["forced"] = sum(bool(row.get("forced")) for row in found)
    result["missing"] = sum(not row for row in found)
    result["mean_tokens"] = round(sum(row.get("tokens", 0) for row in found) / len(found), 1)
    return result


def prompt_numbers(example: dict[str, Any], data: Any, scale: tuple[float, float]
                   ) -> tuple[list[str], list[float]]:
    """The numbers a prompt in the recipe's `data:` style shows, as named features: the cf
    predictions it shows, the stats means (the global mean where one is missing) and the
    estimate when it shows the stats line, and the mean of the item's earlier ratings by others
    when it shows them (the newest `item_history`, as the prompt does).

    >>> from types import SimpleNamespace as Data
    >>> example = {"cf": {"mf": 3.9, "knn": 4.1}, "item_history": [{"rating": 2}, {"rating": 4}],
    ...            "stats": {"user_mean": 4.0, "item_mean": None, "global_mean": 3.5}}
    >>> prompt_numbers(example, Data(cf=["mf"], stats=False, item_history=0), (1.0, 5.0))
    (['mf'], [3.9])
    >>> prompt_numbers(example, Data(cf=[], stats=True, item_history=1), (1.0, 5.0))[1]
    [4.0, 3.5, 3.5, 3.5, 4.0]
    """
    stats = example.get("stats") or {}
    mu = float(stats.get("global_mean") or sum(scale) / 2)
    names = list(data.cf)
    values = [float((example.get("cf") or {}).get(name, mu)) for name in names]
    if data.stats:
        names += ["user_mean", "item_mean", "global_mean", "estimate"]
        values += [float(stats.get("user_mean") or mu), float(stats.get("item_mean") or mu), mu,
                   float(stats_estimate(stats, scale) or mu)]
    if data.item_history:
        shown = [float(e["rating"]) for e in (example.get("item_history") or [])
                 ][-data.item_history:]
        names.append("item_history_mean")
        values.append(sum(shown) / len(shown) if shown else mu)
    return names, values


def least_squares(features: list[list[float]], truths: list[float]) -> Any:
    """Least-squares weights of the features and an intercept (the intercept last)."""
    import numpy as np

    design = np.c_[np.asarray(features, dtype=float), np.ones(len(features))]
    return np.linalg.lstsq(design, np.asarray(truths, dtype=float), rcond=None)[0]


def apply(weights: Any, features: list[list[float]], scale: tuple[float, float]) -> list[float]:
    """The fitted line on new rows, clipped to the scale."""
    import numpy as np

    design = np.c_[np.asarray(features, dtype=float), np.ones(len(features))]
    return np.clip(design @ weights, *scale).tolist()


def blend(recipe: Any, data: Path, examples: list[dict[str, Any]], scale: tuple[float, float]
          ) -> tuple[list[float], dict[str, Any]]:
    """Least squares of the prompt's numbers fitted on the examples the model trains on (each
    user's newest `data.train_recent` train examples, whose cf is out of fold), applied to
    `examples`: what ten lines do with the same evidence the model is shown."""
    pool = list(newest_per_user(iter_split(data, recipe.data.train_split),
                                recipe.data.train_recent or 10**9))
    names = prompt_numbers(pool[0], recipe.data, scale)[0]
    weights = least_squares([prompt_numbers(e, recipe.data, scale)[1] for e in pool],
                            [float(e["rating"]) for e in pool])
    return (apply(weights, [prompt_numbers(e, recipe.data, scale)[1] for e in examples], scale),
            {"fitted_on": len(pool), "weights": dict(zip([*names, "1"],
                                                         [round(float(w), 4) for w in weights],
                                                         strict=True))})


def added_information(recipe: Any, data: Path, dev_rows: list[dict[str, Any]],
                      test_rows: list[dict[str, Any]], examples: list[dict[str, Any]],
                      scale: tuple[float, float], fallback: float, key: str = "rating"
                      ) -> dict[str, Any]:
    """Does the model know more than the numbers in its prompt? Two least-squares stacks fitted
    on the same dev rows (the run's dev predictions): the prompt's numbers alone, and the numbers
    with the model's prediction as one more feature, both scored on test with a paired bootstrap.
    If the model only re-weighted its evidence, the second stack is no better out of sample; a
    better one means its prediction carries what the numbers do not (the model's weight says how
    much). The dev rows' `rating` is the recipe's readout; `key` is the same readout in the
    test rows. Dev fits it, test scores it: dev is never test."""
    by_id = {e["id"]: e for e in iter_split(data, recipe.data.eval_split)}
    dev = [r for r in dev_rows if r.get("id") in by_id]
    value = lambda r: fallback if r.get("rating") is None else float(r["rating"])  # noqa: E731
    numbers = [prompt_numbers(by_id[r["id"]], recipe.data, scale)[1] for r in dev]
    truths = [float(r["truth"]) for r in dev]
    alone = least_squares(numbers, truths)
    stacked = least_squares([n + [value(r)] for n, r in zip(numbers, dev, strict=True)], truths)
    test_numbers = [prompt_numbers(e, recipe.data, scale)[1] for e in examples]
    model = filled(test_rows, examples, key, fallback)
    a = apply(stacked, [n + [m] for n, m in zip(test_numbers, model, strict=True)], scale)
    b = apply(alone, test_numbers, scale)
    test_truths = [float(e["rating"]) for e in examples]
    return {"fitted_on_dev": len(dev), "model_weight": round(float(stacked[-2]), 4),
            "numbers_and_model": {k: summarize(a, test_truths, scale, fallback)[k]
                                  for k in ("mae", "rmse")},
            "numbers_alone": {k: summarize(b, test_truths, scale, fallback)[k]
                              for k in ("mae", "rmse")},
            "bootstrap": {"n": len(examples), **paired_bootstrap(a, b, test_truths, scale)}}


def filled(rows: list[dict[str, Any]], examples: list[dict[str, Any]], key: str,
           fallback: float) -> list[float]:
    """A stage's predictions in the examples' order, the fallback where a row failed (as
    `mae_with_failures` scores it), for paired comparisons."""
    by_id = {row.get("id"): row.get(key) for row in rows}
    return [fallback if by_id.get(e["id"]) is None else float(by_id[e["id"]]) for e in examples]


def bootstrap_lines(comparisons: dict[str, Any]) -> list[str]:
    """One line per paired comparison: the differences with their 95% intervals."""
    lines = []
    for name, result in comparisons.items():
        mae, rmse = result["mae"], result["rmse"]
        lines.append(f"- {name} (n = {result['n']}): MAE {mae['diff']:+.4f} "
                     f"[{mae['low']:+.4f}, {mae['high']:+.4f}], RMSE {rmse['diff']:+.4f} "
                     f"[{rmse['low']:+.4f}, {rmse['high']:+.4f}]")
    return lines


def table(results: dict[str, Any]) -> str:
    """The markdown table of test metrics: every baseline, then each stage under both readouts."""
    lines = ["| test (n = {n}) | readout | MAE | RMSE | coverage |".format(n=results["test_n"]),
             "|---|---|---|---|---|"]
    for name, metrics in results["baselines"].items():
        label = ESTIMATE_LABEL if name == "prompt_estimate" else BLEND_LABEL \
            if name == "blend" else LABELS.get(name, name)
        lines.append(f"| {label} | - | {fmt_metric(metrics['mae'])} | "
                     f"{fmt_metric(metrics['rmse'])} | 1.0000 |")
    for stage, scored in results["stages"].items():
        for readout in ("expected", "text"):
            metrics = scored[readout]
            chosen = "**" if readout == results.get("readout") else ""
            lines.append(f"| {chosen}{stage}{chosen} | {readout} | {fmt_metric(metrics['mae'])} | "
                         f"{fmt_metric(metrics['rmse'])} | {fmt_metric(metrics['coverage'])} |")
    dev = results["dev"]
    lines += ["", "| dev (n = {n}) | MAE | RMSE | coverage | text MAE | text RMSE |".format(
        n=(dev.get("after_warmup") or {}).get("n", "?")), "|---|---|---|---|---|---|"]
    for stage in ("after_warmup", "after_grpo"):
        metrics = dev.get(stage) or {}
        lines.append(f"| {stage.replace('_', ' ')} | {fmt_metric(metrics.get('mae'))} | "
                     f"{fmt_metric(metrics.get('rmse'))} | {fmt_metric(metrics.get('coverage'))} "
                     f"| {fmt_metric(metrics.get('text_mae'))} | "
                     f"{fmt_metric(metrics.get('text_rmse'))} |")
    added = results.get("added_information") or {}
    if added:
        lines += ["", "Does the model know more than its prompt's numbers? Least squares fitted on "
                  "the run's dev predictions, scored on test:", "",
                  "| test, stacked on dev | MAE | RMSE | the model's weight |", "|---|---|---|---|"]
        first = next(iter(added.values()))
        lines.append(f"| the prompt's numbers (n = {first['fitted_on_dev']} dev rows) | "
                     f"{fmt_metric(first['numbers_alone']['mae'])} | "
                     f"{fmt_metric(first['numbers_alone']['rmse'])} | - |")
        for stage, result in added.items():
            lines.append(f"| the numbers + the {stage} model | "
                         f"{fmt_metric(result['numbers_and_model']['mae'])} | "
                         f"{fmt_metric(result['numbers_and_model']['rmse'])} | "
                         f"{result['model_weight']:.2f} |")
    lines += ["", f"Paired bootstrap, A minus B (negative: A is better), {results.get('readout')}"
              " readout, 95% intervals:", *bootstrap_lines(results.get("bootstrap", {}))]
    return "\n".join(lines)


def write_docs(path: Path, text: str) -> None:
    """Replace what stands between the markers of `path` (append the block if they are absent)."""
    block = f"{MARK_BEGIN}\n{text}\n{MARK_END}"
    page = path.read_text(encoding="utf-8") if path.is_file() else "# Results\n"
    if MARK_BEGIN in page and MARK_END in page:
        head, rest = page.split(MARK_BEGIN, 1)
        page = head + block + rest.split(MARK_END, 1)[1]
    else:
        page = page.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(page, encoding="utf-8")


def usage_error(message: str) -> NoReturn:
    """One line on stderr and exit 2 (bad usage or input)."""
    print(f"bench/quality.py: {message}", file=sys.stderr)
    raise SystemExit(2)


def rescore_timings(args: argparse.Namespace, run: dict[str, Any], predictions: Path,
                    suffix: str, n: int) -> tuple[dict[str, float], float]:
    """For --rescore: the timings and wall time that --results recorded when they were measured,
    after checking that the run finished and that every stage predicted all `n` examples (exit 2
    naming what is missing; nothing is trained or predicted)."""
    if run.get("status") != "finished":
        usage_error(f"--rescore: {args.out} holds no finished run")
    for stage in ("before", "warmup", "grpo"):
        path = predictions / f"{stage}{suffix}.jsonl"
        count = sum(1 for _ in read_jsonl(path)) if path.is_file() else 0
        if count < n:
            usage_error(f"--rescore: {path} has {count} of {n} rows")
    try:
        measured = json.loads(args.results.read_text(encoding="utf-8"))
        return dict(measured["timings_s"]), float(measured["wall_s"])
    except (OSError, ValueError, KeyError) as error:
        usage_error(f"--rescore: {args.results}: no measured timings ({error})")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    clock = time.perf_counter()
    timings: dict[str, float] = {}
    measured_wall = 0.0
    if not (args.data / "manifest.json").is_file():
        prepare("recbole-ml-100k", None, None, args.data, Options(cf="auto"))
    recipe = load_recipe(args.recipe, [f"data.dir={args.data}", f"output_dir={args.out}",
                                       *args.overrides])
    scale = tuple(json.loads((args.data / "manifest.json").read_text())["rating_scale"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    requests = test_file(args.data, args.test_limit, args.out.parent)
    examples = [example for _, example in read_jsonl(requests)]

    fitted, note = fit_on_train(args.data, recipe.seed)
    baselines = {}
    truths = [float(e["rating"]) for e in examples]
    for name, predictions in baseline_predictions(fitted, examples).items():
        report = summarize(predictions, truths, scale, note["global_mean"])
        baselines[name] = {"mae": report["mae"], "rmse": report["rmse"]}
    # the estimate the prompt's rating_stats line hands the model (means from before the target
    # only; the baselines above are fitted on all of train): what the model adds beyond it
    if all(isinstance(e.get("stats"), dict) for e in examples):
        report = summarize([stats_estimate(e["stats"], scale) for e in examples], truths, scale,
                           note["global_mean"])
        baselines["prompt_estimate"] = {"mae": report["mae"], "rmse": report["rmse"]}
    baseline_rows = baseline_predictions(fitted, examples)
    blended, blend_note = blend(recipe, args.data, examples, scale)
    report = summarize(blended, truths, scale, note["global_mean"])
    baselines["blend"] = {"mae": report["mae"], "rmse": report["rmse"]}

    predictions = args.out.parent / f"{args.out.name}-predictions"
    suffix = f"-first{args.test_limit}" if args.test_limit else ""
    run = read_run_json(args.out)
    if args.rescore:
        timings, measured_wall = rescore_timings(args, run, predictions, suffix, len(examples))
    else:
        predictions.mkdir(parents=True, exist_ok=True)
        timings["predict_before_s"] = predict_stage(recipe, requests, None,
                                                    predictions / f"before{suffix}.jsonl")
        if run.get("status") != "finished" or args.retrain:
            started = time.perf_counter()
            grpo.train(recipe, resume=bool(run) and not args.retrain, overwrite=args.retrain,
                       recipe_name=args.recipe)
            timings["train_s"] = time.perf_counter() - started
            run = read_run_json(args.out)
        for stage, adapter in (("warmup", args.out / WARMUP_ADAPTER), ("grpo", args.out)):
            timings[f"predict_{stage}_s"] = predict_stage(recipe, requests, adapter,
                                                          predictions / f"{stage}{suffix}.jsonl")
    rows = {stage: [row for _, row in read_jsonl(predictions / f"{stage}{suffix}.jsonl")]
            for stage in ("before", "warmup", "grpo")}
    stages = {stage: score(rows[stage], examples, scale, note["global_mean"]) for stage in rows}
    readout, fallback = recipe.evaluation.readout, note["global_mean"]
    key = "rating" if readout == "expected" else "text_rating"
    final = filled(rows["grpo"], examples, key, fallback)
    warm = filled(rows["warmup"], examples, key, fallback)
    comparisons = {"test: after GRPO - biased MF": (final, baseline_rows["mf"]),
                   "test: after GRPO - item-kNN": (final, baseline_rows["knn"]),
                   "test: after GRPO - blend": (final, blended),
                   "test: after GRPO - after warm-up": (final, warm)}
    bootstrap = {name: {"n": len(truths), **paired_bootstrap(a, b, truths, scale)}
                 for name, (a, b) in comparisons.items()}
    steps = run.get("global_step")
    dev_files = {"warmup": args.out / "dev-step0.jsonl",
                 "grpo": args.out / f"dev-step{steps}.jsonl"}
    dev = {stage: [r for _, r in read_jsonl(path)]
           for stage, path in dev_files.items() if path.is_file()}
    if len(dev) == 2:
        before = {r["id"]: r for r in dev["warmup"]}
        after = dev["grpo"]
        dev_truths = [float(r["truth"]) for r in after]
        value = lambda r: fallback if r.get("rating") is None else float(r["rating"])  # noqa: E731
        bootstrap["dev: after GRPO - after warm-up"] = {
            "n": len(after), **paired_bootstrap([value(r) for r in after],
                                                [value(before[r["id"]]) for r in after],
                                                dev_truths, scale)}
    added = {stage: added_information(recipe, args.data, dev[stage], rows[stage], examples,
                                      scale, fallback, key) for stage in dev}
    for stage, result in added.items():
        bootstrap[f"test: numbers + {stage} model - numbers alone, both stacked on dev"] = \
            result["bootstrap"]
    results = {
        "bench": "quality-ml100k",
        "readout": readout,
        "bootstrap": bootstrap,
        "blend": blend_note,
        "added_information": added,
        "recipe": args.recipe,
        "overrides": args.overrides,
        "test_n": len(examples),
        "baselines": baselines,
        "baselines_fit": note,
        "stages": stages,
        "dev": {"after_warmup": run.get("dev_before"), "after_grpo": run.get("dev_metrics"),
                "history": run.get("dev_history")},
        "run": {key: run.get(key) for key in ("warmup", "global_step", "wall_time_s",
                                              "mean_step_time_s", "versions", "seed")},
        "timings_s": {k: round(v, 1) for k, v in timings.items()},
        "wall_s": measured_wall if args.rescore else round(time.perf_counter() - clock, 1),
        **({"rescored": True} if args.rescore else {}),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
    }
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    text = table(results)
    print(text)
    command = " ".join(["python bench/quality.py", *args.overrides]
                       + ([f"--test-limit {args.test_limit}"] if args.test_limit else []))
    rescored = f", scored again by `{command} --rescore`" if args.rescore else ""
    write_docs(args.docs, text + f"\n\nMeasured by `{command}` ({results['wall_s'] / 60:.0f} min "
               f"on {results['machine']['cpus']} cores{rescored}); the JSON is "
               f"{args.results.name}.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
