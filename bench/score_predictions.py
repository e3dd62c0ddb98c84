"""Score one `predict` output on ML-100k as bench/quality.py scores its stages: beside every
baseline fitted on train, the estimate in the prompt and the linear blend of the prompt's numbers,
with paired-bootstrap intervals against MF, item-kNN and the blend.

For an adapter measured outside a full bench run (e.g. the warm-up adapter of a run whose GRPO
stage did not run), predicted with the recipe's prompt settings and `--readout expected`:

    recone-lite predict data/ml-100k/test.jsonl --adapter RUN/warmup-adapter ... \\
        --readout expected --out warm-test.jsonl
    python bench/score_predictions.py warm-test.jsonl --split test
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from quality import blend, bootstrap_lines, filled, score  # noqa: E402

from recone_lite.baselines import LABELS, baseline_predictions, fit_on_train  # noqa: E402
from recone_lite.config import load_recipe  # noqa: E402
from recone_lite.jsonl import read_jsonl  # noqa: E402
from recone_lite.metrics import fmt_metric, paired_bootstrap, summarize  # noqa: E402
from recone_lite.prompts import stats_estimate  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("predictions", type=Path, help="predict's JSONL (--readout expected)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--recipe", default="cpu-quality", help="for the blend's features")
    parser.add_argument("--data", type=Path, default=ROOT / "data" / "ml-100k")
    parser.add_argument("--limit", type=int, default=None, help="the split's first N examples")
    parser.add_argument("--json", type=Path, default=None, help="also write the result here")
    args = parser.parse_args(argv)
    recipe = load_recipe(args.recipe, [f"data.dir={args.data}"])
    scale = tuple(json.loads((args.data / "manifest.json").read_text())["rating_scale"])
    examples = [e for _, e in read_jsonl(args.data / f"{args.split}.jsonl")][: args.limit]
    truths = [float(e["rating"]) for e in examples]
    fitted, note = fit_on_train(args.data, recipe.seed)
    fallback = note["global_mean"]
    rows = {name: values for name, values in baseline_predictions(fitted, examples).items()}
    rows["prompt_estimate"] = [stats_estimate(e["stats"], scale) for e in examples]
    rows["blend"], blend_note = blend(recipe, args.data, examples, scale)
    predicted = [row for _, row in read_jsonl(args.predictions)]
    scored = score(predicted, examples, scale, fallback)
    lines = [f"| {args.split} (n = {len(examples)}) | MAE | RMSE | coverage |", "|---|---|---|---|"]
    for name, values in rows.items():
        report = summarize(values, truths, scale, fallback)
        lines.append(f"| {LABELS.get(name, name)} | {fmt_metric(report['mae'])} | "
                     f"{fmt_metric(report['rmse'])} | 1.0000 |")
    for readout in ("expected", "text"):
        metrics = scored[readout]
        lines.append(f"| model, {readout} readout | {fmt_metric(metrics['mae'])} | "
                     f"{fmt_metric(metrics['rmse'])} | {fmt_metric(metrics['coverage'])} |")
    model = filled(predicted, examples, "rating", fallback)
    bootstrap = {f"model - {LABELS.get(name, name)}": {
        "n": len(truths), **paired_bootstrap(model, rows[name], truths, scale)}
        for name in ("mf", "knn", "blend")}
    lines += ["", "Paired bootstrap, A minus B (negative: A is better), expected readout, "
              "failed rows as the global mean, 95% intervals:", *bootstrap_lines(bootstrap)]
    print("\n".join(lines))
    if args.json:
        args.json.write_text(json.dumps({"predictions": str(args.predictions),
                                         "split": args.split, "n": len(examples),
                                         "model": scored, "bootstrap": bootstrap,
                                         "blend": blend_note}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
