"""The warm-up alone, measured on dev: does a recipe's warm-up teach the model to use the evidence?

Runs the recipe's `warmup:` section (SFT on offline traces from the cold-start split, exactly as
`train` runs it first) and predicts the dev examples the recipe evaluates (`data.eval_limit`,
seeded) with the warmed-up adapter, greedy, under the recipe's readout. Prints one table: the
model beside the estimate in the prompt and the item mean from the prompt's own stats (both
from earlier ratings only), the spread of its predictions and how they follow the estimate.
No GRPO: ~15 min of warm-up and ~5 min of prediction for cpu-quality on 2 cores.

    python bench/warmup_dev.py                                    # cpu-quality as shipped
    python bench/warmup_dev.py warmup.learning_rate=1e-3          # a variant (recipe overrides)

The docs/results.md "stop 20" rows were measured this way.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from recone_lite import warmup  # noqa: E402
from recone_lite.config import load_recipe  # noqa: E402
from recone_lite.metrics import fmt_metric, summarize  # noqa: E402
from recone_lite.predict import predict, recipe_options  # noqa: E402
from recone_lite.prompts import stats_estimate  # noqa: E402
from recone_lite.training import load_data, load_trainable  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("overrides", nargs="*", help="recipe overrides, key.sub=value")
    parser.add_argument("--recipe", default="cpu-quality")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-warmup")
    args = parser.parse_args(argv)
    recipe = load_recipe(args.recipe, [f"output_dir={args.out}", *args.overrides])
    section = recipe.data
    data = load_data(section, {section.eval_split: section.eval_limit,
                               "coldstart": recipe.warmup.steps * recipe.warmup.batch_size},
                     recipe.seed)
    dev = data.splits[section.eval_split]
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    model, tokenizer = load_trainable(recipe)
    warm = warmup.warm_up(model, tokenizer, recipe, data, args.out)
    warm_s = time.perf_counter() - started
    del model
    requests, rows_path = args.out / "dev-requests.jsonl", args.out / "dev-predictions.jsonl"
    requests.write_text("".join(json.dumps(e) + "\n" for e in dev), encoding="utf-8")
    rows_path.unlink(missing_ok=True)
    started = time.perf_counter()
    predict(str(requests), **recipe_options(recipe), adapter=warm["adapter"], temperature=0.0,
            out=str(rows_path), completion=True, readout=recipe.evaluation.readout)
    predict_s = time.perf_counter() - started
    by_id = {row["id"]: row for row in map(json.loads, rows_path.open(encoding="utf-8"))}
    truths = [float(e["rating"]) for e in dev]
    estimates = [stats_estimate(e["stats"], data.scale) for e in dev]
    item = [e["stats"]["item_mean"] if e["stats"].get("item_count") else
            e["stats"]["global_mean"] for e in dev]
    model_rows = [by_id.get(e["id"], {}) for e in dev]
    lines = [f"| dev (n = {len(dev)}) | MAE | RMSE | coverage |", "|---|---|---|---|"]
    for label, values in (("estimate in the prompt", estimates),
                          ("item mean from the prompt's stats", item),
                          (f"model, {recipe.evaluation.readout} readout",
                           [row.get("rating") for row in model_rows]),
                          ("model, text readout", [row.get("text_rating") for row in model_rows])):
        report = summarize(values, truths, data.scale, data.fallback)
        lines.append(f"| {label} | {fmt_metric(report['mae'])} | {fmt_metric(report['rmse'])} | "
                     f"{fmt_metric(report['coverage'])} |")
    pairs = [(row["rating"], est) for row, est in zip(model_rows, estimates, strict=True)
             if row.get("rating") is not None]
    print("\n".join(lines))
    if len(pairs) > 2:
        predictions, follows = [p for p, _ in pairs], [e for _, e in pairs]
        print(f"\nmodel: mean {statistics.mean(predictions):.3f} (truth "
              f"{statistics.mean(truths):.3f}), sd {statistics.stdev(predictions):.3f} "
              f"(estimate's {statistics.stdev(follows):.3f}), correlation with the estimate "
              f"{statistics.correlation(predictions, follows):.3f}")
    print(f"warm-up {warm['steps']} steps on {warm['examples']} traces: {warm_s / 60:.1f} min; "
          f"predict: {predict_s / 60:.1f} min")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
