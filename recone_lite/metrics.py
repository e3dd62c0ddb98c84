"""Rating metrics that keep failures visible: coverage, MAE/RMSE, MAE with failures, breakdowns.

- `mae`, `rmse`: over the parsed predictions only, each clipped to the scale first (`clipped`
  counts how many needed it). They say how good the answers are, not how often there is one.
- `coverage`: parsed / n. Read it beside MAE: a model that answers 10% of the time with MAE 0.3
  is not a good model.
- `mae_with_failures`, `rmse_with_failures`: every example counts; an unparsable answer is
  scored as the fallback prediction, the train set's global mean (`failures_scored_as`). An
  unparsable answer is never an exact guess; it is worth what a model that knows nothing says.
- `per_rating`: by true rating, n, parsed, MAE and the mean prediction; `histogram` counts the
  predictions per rating bucket, `truth_histogram` the truths: a model that always says 5 shows as
  MAE 0 on 5-star examples, large MAE elsewhere, and a histogram with one bar.

Buckets are whole stars when every true rating is whole, half stars otherwise; a prediction goes
to the nearest bucket (halves up) after clipping.

`percentile` is the package's one percentile: nearest rank for lengths that should be real
(`percentiles`: prompt tokens, trace lengths), linear interpolation for `data stats`'
distributions (numpy's default method).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from recone_lite.prompts import fmt_number
from recone_lite.rewards import clip, round_half_up


def percentile(values: Sequence[float], p: float, *, interpolate: bool = False) -> float:
    """The `p`-th percentile (0-100) of sorted `values` (not empty): nearest rank, so the result
    is one of the values, or with `interpolate` linear between the two closest ranks.

    >>> percentile([1, 2, 3, 4], 50), percentile([1, 2, 3, 4], 50, interpolate=True)
    (2, 2.5)
    >>> round(percentile([0, 1, 2, 3, 10], 90, interpolate=True), 3)
    7.2
    """
    if not interpolate:
        return values[max(math.ceil(p / 100 * len(values)) - 1, 0)]
    rank = p / 100 * (len(values) - 1)
    low = math.floor(rank)
    high = min(low + 1, len(values) - 1)
    return values[low] + (values[high] - values[low]) * (rank - low)


def percentiles(values: list[int]) -> dict[str, int]:
    """Nearest-rank p50/p90/p99/max of sorted integers (zeros for an empty list).

    >>> percentiles(list(range(1, 101)))
    {'n': 100, 'p50': 50, 'p90': 90, 'p99': 99, 'max': 100}
    >>> percentiles([7])
    {'n': 1, 'p50': 7, 'p90': 7, 'p99': 7, 'max': 7}
    """
    result = {"n": len(values)}
    for p in (50, 90, 99):
        result[f"p{p}"] = percentile(values, p) if values else 0
    result["max"] = values[-1] if values else 0
    return result


def _bucketer(truths: Sequence[float], scale: tuple[float, float]):
    step = 1.0 if all(float(t).is_integer() for t in truths) else 0.5
    lo, hi = float(scale[0]), float(scale[1])
    count = round_half_up((hi - lo) / step) + 1
    keys = [fmt_number(lo + i * step) for i in range(count)]

    def bucket(value: float) -> str:
        return fmt_number(lo + round_half_up((clip(value, scale) - lo) / step) * step)

    return keys, bucket


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _rmse(errors: Sequence[float]) -> float | None:
    return math.sqrt(sum(e * e for e in errors) / len(errors)) if errors else None


def summarize(
    predictions: Sequence[float | None],
    truths: Sequence[float],
    scale: tuple[float, float],
    fallback: float,
) -> dict:
    """Metrics of predictions (None = no parsable rating) against true ratings.

    `fallback` is what a failure is scored as in the `*_with_failures` metrics: pass the global
    mean of the train ratings (the global-mean baseline's prediction).

    >>> report = summarize([5.0, 4.0, None, 7.0], [5.0, 3.0, 1.0, 4.0], (1.0, 5.0), fallback=3.5)
    >>> report["n"], report["parsed"], report["coverage"], report["clipped"]
    (4, 3, 0.75, 1)
    >>> report["mae"], round(report["rmse"], 4)  # errors 0, 1, 1 (7 clipped to 5)
    (0.6667, 0.8165)
    >>> report["mae_with_failures"], report["failures_scored_as"]  # the failure costs |1 - 3.5|
    (1.125, {'prediction': 3.5, 'is': 'global mean of train ratings'})
    >>> report["per_rating"]["4"]
    {'n': 1, 'parsed': 1, 'mae': 1.0, 'mean_prediction': 5.0}
    >>> report["histogram"]
    {'1': 0, '2': 0, '3': 0, '4': 1, '5': 2, 'failed': 1}
    """
    if len(predictions) != len(truths):
        raise ValueError(f"{len(predictions)} predictions for {len(truths)} truths")
    keys, bucket = _bucketer(truths, scale)
    parsed = [
        (clip(float(p), scale), float(t), bucket(float(t)))
        for p, t in zip(predictions, truths, strict=True)
        if p is not None and math.isfinite(p)
    ]
    clipped = sum(
        1 for p in predictions if p is not None and math.isfinite(p) and clip(p, scale) != p
    )
    errors = [p - t for p, t, _ in parsed]
    with_failures = [
        (clip(float(p), scale) if p is not None and math.isfinite(p) else float(fallback)) - t
        for p, t in zip(predictions, truths, strict=True)
    ]
    n = len(truths)
    per_rating = {}
    for key in keys:
        rows = [(p, t) for p, t, b in parsed if b == key]
        total = sum(1 for t in truths if bucket(float(t)) == key)
        if total:
            per_rating[key] = {
                "n": total,
                "parsed": len(rows),
                "mae": _round(_mean([abs(p - t) for p, t in rows])),
                "mean_prediction": _round(_mean([p for p, _ in rows])),
            }
    histogram = {key: sum(1 for p, _, _ in parsed if bucket(p) == key) for key in keys}
    histogram["failed"] = n - len(parsed)
    return {
        "n": n,
        "parsed": len(parsed),
        "failed": n - len(parsed),
        "coverage": _round(len(parsed) / n if n else None),
        "clipped": clipped,
        "mae": _round(_mean([abs(e) for e in errors])),
        "rmse": _round(_rmse(errors)),
        "mae_with_failures": _round(_mean([abs(e) for e in with_failures])),
        "rmse_with_failures": _round(_rmse(with_failures)),
        "failures_scored_as": {
            "prediction": _round(fallback),
            "is": "global mean of train ratings",
        },
        "mean_prediction": _round(_mean([p for p, _, _ in parsed])),
        "per_rating": per_rating,
        "histogram": histogram,
        "truth_histogram": {key: sum(1 for t in truths if bucket(float(t)) == key) for key in keys},
    }


def confusion(
    predictions: Sequence[float | None], truths: Sequence[float], scale: tuple[float, float]
) -> dict[str, dict[str, int]]:
    """Counts of true rating (rows) x predicted rating (columns, `failed` last), in the buckets
    of `summarize`: `report`'s confusion matrix.

    >>> confusion([5.0, 4.4, None], [5.0, 4.0, 4.0], (1.0, 5.0))["4"]
    {'1': 0, '2': 0, '3': 0, '4': 1, '5': 0, 'failed': 1}
    """
    keys, bucket = _bucketer(truths, scale)
    matrix = {key: dict.fromkeys([*keys, "failed"], 0) for key in keys}
    for p, t in zip(predictions, truths, strict=True):
        ok = p is not None and math.isfinite(p)
        matrix[bucket(float(t))][bucket(float(p)) if ok else "failed"] += 1
    return matrix


def _round(value: float | None) -> float | None:
    """Four decimals in reports: enough to compare with the paper's numbers, stable in tests."""
    return None if value is None else round(value, 4)


def fmt_metric(value: float | None) -> str:
    """A metric in a table cell: four decimals, `-` for none."""
    return "-" if value is None else f"{value:.4f}"


def paired_bootstrap(
    predictions_a: Sequence[float],
    predictions_b: Sequence[float],
    truths: Sequence[float],
    scale: tuple[float, float] = (1.0, 5.0),
    resamples: int = 2000,
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    """A minus B in MAE and in RMSE on the same rows, with a 95% paired-bootstrap interval
    (rows resampled with replacement, both models scored on each resample; percentile interval).
    Negative: A is better. Predictions are clipped to the scale; every row must have both.

    >>> truths = [1.0, 2.0, 3.0, 4.0, 5.0] * 20
    >>> better = [t + 0.1 for t in truths]; worse = [t + 1.0 for t in truths]
    >>> result = paired_bootstrap(better, worse, truths, resamples=200)
    >>> result["mae"]["diff"], result["mae"]["high"] < 0, result["rmse"]["high"] < 0
    (-0.72, True, True)
    """
    import numpy as np

    a = np.clip(np.asarray(predictions_a, dtype=float), *scale)
    b = np.clip(np.asarray(predictions_b, dtype=float), *scale)
    y = np.asarray(truths, dtype=float)
    if not (a.size == b.size == y.size) or a.size == 0:
        raise ValueError(f"paired rows differ: {a.size}, {b.size}, {y.size}")
    abs_a, abs_b, sq_a, sq_b = np.abs(a - y), np.abs(b - y), (a - y) ** 2, (b - y) ** 2
    rows = np.random.default_rng(seed).integers(0, y.size, size=(resamples, y.size))
    mae = abs_a[rows].mean(axis=1) - abs_b[rows].mean(axis=1)
    rmse = np.sqrt(sq_a[rows].mean(axis=1)) - np.sqrt(sq_b[rows].mean(axis=1))
    point = {"mae": abs_a.mean() - abs_b.mean(),
             "rmse": math.sqrt(sq_a.mean()) - math.sqrt(sq_b.mean())}
    return {name: {"diff": round(float(point[name]), 4),
                   "low": round(float(np.percentile(draws, 2.5)), 4),
                   "high": round(float(np.percentile(draws, 97.5)), 4)}
            for name, draws in (("mae", mae), ("rmse", rmse))}
