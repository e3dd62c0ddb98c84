"""`recone-lite eval`: join predictions to a prepared split on `id`; score them and the baselines.

Prediction lines are `{"id", "rating": float | null, "ok": bool, ...}` (the output of `predict`).
A null rating is a failure (no parsable answer): it lowers coverage and is scored as the global
mean in "MAE with failures"; it is never dropped silently and never an exact guess. Ratings
outside the scale are clipped and counted.

An example of the split without a prediction (a missing id) is a failure too: it lowers coverage
and is priced as the global mean, so a run that answered 10 of 943 examples cannot report full
coverage. Scoring part of a split on purpose is `subset`: then the metrics and the baselines
cover exactly the examples that have a prediction, and the report says "subset: N of M".

Missing ids, extra ids (predictions for no example of the split), duplicate ids (the first line
counts) and a `truth` field that disagrees with the split are reported; with `strict`, any of
these is an error (exit 2), missing ids excepted under `subset`.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

from recone_lite.baselines import (
    BASELINES,
    LABELS,
    baseline_predictions,
    fit_on_train,
)
from recone_lite.errors import InputError
from recone_lite.jsonl import read_jsonl
from recone_lite.log import console, info, warn
from recone_lite.metrics import confusion, fmt_metric, summarize
from recone_lite.prepared import read_scale, read_split


def read_predictions(path: str | Path) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """`{id: line}` (first line per id wins) and the duplicate ids; a bad line raises InputError."""
    stream = sys.stdin.buffer if str(path) == "-" else None  # bytes: a bad one names its line
    rows: dict[str, dict[str, Any]] = {}
    duplicates: list[str] = []
    for line, row in read_jsonl(path, stream):
        if "id" not in row:
            raise InputError("missing required field", path=path, line=line, field="id")
        if "rating" not in row:
            raise InputError(
                "missing required field (null for no answer)", path=path, line=line, field="rating"
            )
        value = row["rating"]
        if value is not None and (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not math.isfinite(value)
        ):
            raise InputError(
                f"expected a number or null, got {value!r}", path=path, line=line, field="rating"
            )
        key = str(row["id"])
        if key in rows:
            duplicates.append(key)
        else:
            rows[key] = row
    return rows, duplicates


def _listed(ids: list[str], limit: int = 5) -> str:
    shown = ", ".join(ids[:limit])
    return shown + (f" and {len(ids) - limit} more" if len(ids) > limit else "")


def evaluate(
    data_dir: str | Path, predictions_path: str | Path, split: str = "test", strict: bool = False,
    subset: bool = False,
) -> dict[str, Any]:
    """Score predictions on DIR/<split>.jsonl and the baselines on the same examples: every
    example of the split (a missing prediction is a failure), or with `subset` only those that
    have a prediction."""
    scale = read_scale(data_dir)
    examples = read_split(data_dir, split)
    rows, duplicates = read_predictions(predictions_path)
    by_id = {str(e["id"]): e for e in examples}
    missing = [key for key in by_id if key not in rows]
    extra = [key for key in rows if key not in by_id]
    mismatched = [
        key
        for key, row in rows.items()
        if key in by_id
        and isinstance(row.get("truth"), (int, float))
        and float(row["truth"]) != float(by_id[key]["rating"])
    ]
    problems = [
        ([] if subset else missing, f"examples of split {split!r} have no prediction",
         " (counted as failures; --subset scores only the examples with a prediction)"),
        (extra, f"predictions match no example of split {split!r}", ""),
        (duplicates, "ids appear more than once (the first line counts)", ""),
        (mismatched, f"predictions carry a 'truth' that differs from split {split!r}", ""),
    ]
    found = [(f"{len(ids)} {what}: {_listed(ids)}", note) for ids, what, note in problems if ids]
    if strict and found:
        raise InputError("; ".join(m for m, _ in found) + " (--strict)", path=predictions_path)
    for message, note in found:
        warn(message + note)
    matched = [e for e in examples if str(e["id"]) in rows]
    if not matched:
        raise InputError(
            f"no prediction matches an example of split {split!r}", path=predictions_path
        )
    scored = matched if subset else examples
    if subset:
        info(f"subset: {len(matched)} of {len(examples)} examples of split {split!r} have a "
             "prediction and are scored (--subset: the others are left out, not failures)")
    truths = [float(e["rating"]) for e in scored]
    lines = [rows.get(str(e["id"])) for e in scored]
    predictions = [None if line is None else line["rating"] for line in lines]
    fitted, fit = fit_on_train(data_dir)
    fallback = fit["global_mean"]
    ok = [None if line is None else line.get("ok") for line in lines]
    return {
        "split": split,
        "predictions": str(predictions_path),
        "scale": list(scale),
        "examples": len(examples),
        "matched": len(matched),
        "scored": len(scored),
        "subset": f"{len(matched)} of {len(examples)}" if subset else None,
        "missing": len(missing),
        "extra": len(extra),
        "duplicates": len(duplicates),
        "truth_mismatches": len(mismatched),
        "format_ok": round(sum(o is True for o in ok) / len(ok), 4)
        if any(o is not None for o in ok)
        else None,
        # expected: each rating is the mean of the model's distribution (predict's `probs`)
        "readout": "expected" if any(line and "probs" in line for line in lines) else "text",
        "model": summarize(predictions, truths, scale, fallback),
        "confusion": confusion(predictions, truths, scale),
        "baselines": {
            name: summarize(values, truths, scale, fallback)
            for name, values in baseline_predictions(fitted, scored).items()
        },
        "baselines_fit": fit,
    }


def print_report(report: dict[str, Any]) -> None:
    """Rich tables on stderr: the model beside the baselines, then the per-rating breakdown."""
    from rich.table import Table

    model = report["model"]
    if report.get("subset"):
        title = f"{report['split']}, subset: {report['subset']} examples (those with a prediction)"
    else:
        title = (f"{report['split']}: {report['examples']} examples, {report['matched']} with a "
                 "prediction (the others count as failures)")
    table = Table(
        title=title,
        caption=f"MAE w/ failures scores each unparsable answer as the global mean "
        f"({model['failures_scored_as']['prediction']}); lower is better",
    )
    for column in ("", "n", "coverage", "clipped", "MAE", "RMSE", "MAE w/ failures"):
        table.add_column(column, justify="left" if not column else "right")
    rows = [("model", model)] + [(LABELS[n], report["baselines"][n]) for n in BASELINES]
    for label, m in rows:
        table.add_row(
            label,
            str(m["n"]),
            f"{m['coverage']:.1%}",
            str(m["clipped"]),
            fmt_metric(m["mae"]),
            fmt_metric(m["rmse"]),
            fmt_metric(m["mae_with_failures"]),
        )
    console.print(table)

    per = Table(title="MAE by true rating; a model that always says one number shows here")
    for column in ("true rating", "n", "model", "model's mean"):
        per.add_column(column, justify="left" if column == "true rating" else "right")
    for name in BASELINES:
        per.add_column(LABELS[name], justify="right")
    for key, cell in model["per_rating"].items():
        per.add_row(
            key,
            str(cell["n"]),
            fmt_metric(cell["mae"]),
            "-" if cell["mean_prediction"] is None else f"{cell['mean_prediction']:.2f}",
            *(fmt_metric(report["baselines"][n]["per_rating"][key]["mae"]) for n in BASELINES),
        )
    console.print(per)
    histogram = "  ".join(f"{k}: {v}" for k, v in model["histogram"].items())
    console.print(f"model predictions per rating: {histogram}", highlight=False)
