"""Non-LLM baselines fitted on the train split: global, user and item mean, biases, biased MF.

What they are fitted on: every rating the train split shows, i.e. each train example's target
and the interactions in its history (deduplicated by user, item and time; the history of a train
example is older than its target, so nothing from dev or test gets in). Never dev or test
targets, and never dev/test histories: a test example's history can hold the user's dev
target, which would leak dev labels into the dev numbers.

Unknown users or items fall back to the global mean (user and item means), or to the global mean
plus the known biases (biases, MF). `biases` is mu + b_u + b_i, scikit-surprise's `BaselineOnly`
with its defaults (regularized biases fitted by ALS, 10 epochs, reg_u 15, reg_i 10; deterministic,
no seed): the strongest simple baseline. MF is scikit-surprise's SVD, a biased matrix
factorisation trained by SGD (Funk SVD with user and item biases; the MF baseline of the
rating-prediction literature), with its default settings and a fixed seed, so two runs print the
same numbers. `knn` is scikit-surprise's KNNBaseline, item-based (40 neighbours, pearson-baseline
similarity) on the baseline residuals. The three come from `data.cf`, which also writes their
predictions into the prepared examples as evidence.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from recone_lite.data import cf
from recone_lite.errors import InputError
from recone_lite.log import console
from recone_lite.metrics import fmt_metric, summarize
from recone_lite.prepared import iter_split, read_scale, read_split

BASELINES = ("global_mean", "user_mean", "item_mean", "biases", "mf", "knn")
LABELS = {
    "global_mean": "global mean",
    "user_mean": "user mean",
    "item_mean": "item mean",
    "biases": "user+item bias",
    "mf": "biased MF",
    "knn": "item-kNN",
}
FIT_ON = "train targets + train histories (deduplicated)"

Predictor = Callable[[str, str], float]


def train_ratings(examples: Iterable[dict[str, Any]]) -> list[tuple[str, str, float]]:
    """`(user, item, rating)` of every train target and train history interaction, deduplicated
    (`data.cf.rated`, without the time).

    >>> a, b = {"item_id": "a", "timestamp": 1, "rating": 4.0}, {"item_id": "b", "timestamp": 2}
    >>> train = [{"user_id": "u", **b, "rating": 5.0, "history": [a]},
    ...          {"user_id": "u", "item_id": "c", "timestamp": 3, "rating": 2.0, "history": [
    ...              a, {**b, "rating": 5.0}]}]
    >>> train_ratings(train)
    [('u', 'a', 4.0), ('u', 'b', 5.0), ('u', 'c', 2.0)]
    """
    return [(user, item, rating) for user, item, _, rating in cf.rated(examples)]


def _means(ratings: Sequence[tuple[str, str, float]], index: int, default: float) -> Predictor:
    sums: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    for row in ratings:
        sums[row[index]][0] += row[2]
        sums[row[index]][1] += 1
    means = {key: total / count for key, (total, count) in sums.items()}
    return lambda user, item: means.get((user, item)[index], default)


def fit_baselines(
    ratings: Sequence[tuple[str, str, float]], scale: tuple[float, float], seed: int = 0
) -> dict[str, Predictor]:
    """Baseline predictors `(user_id, item_id) -> rating`, by name (see BASELINES).

    >>> fitted = fit_baselines([("u", "a", 4.0), ("u", "b", 2.0), ("v", "a", 3.0)], (1.0, 5.0))
    >>> [round(fitted[name]("u", "a"), 4) for name in ("global_mean", "user_mean", "item_mean")]
    [3.0, 3.0, 3.5]
    >>> fitted["user_mean"]("stranger", "a"), fitted["item_mean"]("u", "unknown")  # global mean
    (3.0, 3.0)
    """
    if not ratings:
        raise InputError("no train ratings to fit the baselines on")
    mean = sum(r for _, _, r in ratings) / len(ratings)
    return {
        "global_mean": lambda user, item: mean,
        "user_mean": _means(ratings, 0, mean),
        "item_mean": _means(ratings, 1, mean),
        **cf.fit(ratings, scale, cf.CF_MODELS, seed),  # biases, mf, knn
    }


def baseline_predictions(
    fitted: dict[str, Predictor], examples: Sequence[dict[str, Any]]
) -> dict[str, list[float]]:
    """Each baseline's prediction for each example, in order."""
    return {
        name: [predict(str(e["user_id"]), str(e["item_id"])) for e in examples]
        for name, predict in fitted.items()
    }


def fit_on_train(
    data_dir: str | Path, seed: int = 0
) -> tuple[dict[str, Predictor], dict[str, Any]]:
    """Fit the baselines on DIR/train.jsonl; return them and a note of what they were fitted on."""
    ratings = train_ratings(iter_split(data_dir, "train"))
    fitted = fit_baselines(ratings, read_scale(data_dir), seed)
    note = {
        "from": FIT_ON,
        "ratings": len(ratings),
        "users": len({u for u, _, _ in ratings}),
        "items": len({i for _, i, _ in ratings}),
        "global_mean": round(fitted["global_mean"]("", ""), 4),
        "seed": seed,
    }
    return fitted, note


def baselines_report(
    data_dir: str | Path, splits: Sequence[str] = ("dev", "test"), seed: int = 0
) -> dict[str, Any]:
    """Fit on train, score on each split: `{"scale", "fit", "splits": {split: {name: metrics}}}`."""
    scale = read_scale(data_dir)
    fitted, note = fit_on_train(data_dir, seed)
    report: dict[str, Any] = {"scale": list(scale), "fit": note, "splits": {}}
    for split in splits:
        examples = read_split(data_dir, split)
        truths = [float(e["rating"]) for e in examples]
        scores = {}
        for name, predictions in baseline_predictions(fitted, examples).items():
            metrics = summarize(predictions, truths, scale, note["global_mean"])
            scores[name] = {
                "n": metrics["n"],
                "mae": metrics["mae"],
                "rmse": metrics["rmse"],
                "per_rating_mae": {k: v["mae"] for k, v in metrics["per_rating"].items()},
            }
        report["splits"][split] = scores
    return report


def print_baselines(report: dict[str, Any]) -> None:
    """The baseline table, one row per baseline, MAE and RMSE per split, on stderr."""
    from rich.table import Table

    fit = report["fit"]
    table = Table(
        title=f"Baselines fitted on {fit['ratings']} ratings ({fit['from']})",
        caption="lower is better",
    )
    table.add_column("baseline")
    for split, scores in report["splits"].items():
        n = next(iter(scores.values()))["n"] if scores else 0
        table.add_column(f"{split} MAE (n={n})", justify="right")
        table.add_column(f"{split} RMSE", justify="right")
    for name in BASELINES:
        row = [LABELS[name]]
        for scores in report["splits"].values():
            row += [fmt_metric(scores[name]["mae"]), fmt_metric(scores[name]["rmse"])]
        table.add_row(*row)
    console.print(table)
