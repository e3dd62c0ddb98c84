"""Collaborative evidence: what the classical recommenders predict for (user, target item).

`data prepare` adds to every example a `cf` object, `{"biases": 3.71, "mf": 3.84, "knn": 3.9}`:
the predictions of scikit-surprise's `BaselineOnly` (mu + b_u + b_i), `SVD` (biased MF) and
`KNNBaseline` (item-based kNN on baseline residuals), the three strongest classical rows of
`recone-lite baselines`. A prompt shows them when the recipe's `data.cf` names them.

The rule is the baselines' rule, not the history's: the models are fitted on the ratings the
train split shows (train targets and train histories, deduplicated), never on a dev or test
target, and never on the example's own label:

- dev, test (and any example whose rating is not among the train ratings): the models fitted on
  all train ratings, exactly what the MF baseline knows;
- train and cold-start examples: **out of fold**. Each user's `recent` newest train ratings form
  recency folds (fold j = every user's j-th newest rating, predicted by models fitted without
  each user's j newest ratings: the same step forward in time that dev and test take), the older
  ones `folds` seeded random folds. Why recency folds: random folds let a model interpolate
  between a user's later ratings, which dev and test never can; measured on ML-100k, a blend
  fitted on random-fold predictions leans on kNN (weight 0.80) and scores test RMSE 1.0252,
  worse than MF alone (1.0162), while one fitted on recency folds scores 1.0158.

Unlike history and stats (strictly before the target's time), a train example's out-of-fold
prediction may come from a model that saw that user's or item's later train ratings (not its own).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from recone_lite.errors import InputError, ReconeError
from recone_lite.prepared import is_number

CF_MODELS = ("biases", "mf", "knn")
KNN_MAX_ITEMS = 20_000  # item-kNN holds an items x items similarity matrix (8 B per pair)

Predictor = Callable[[str, str], float]
Rated = tuple[str, str, Any, float]  # user, item, timestamp, rating


def rated(examples: Iterable[dict[str, Any]]) -> list[Rated]:
    """`(user, item, timestamp, rating)` of every target and history interaction of the
    examples, deduplicated by (user, item, timestamp), in first-seen order.

    >>> a, b = {"item_id": "a", "timestamp": 1, "rating": 4.0}, {"item_id": "b", "timestamp": 2}
    >>> train = [{"user_id": "u", **b, "rating": 5.0, "history": [a]},
    ...          {"user_id": "u", "item_id": "c", "timestamp": 3, "rating": 2.0, "history": [
    ...              a, {**b, "rating": 5.0}]}]
    >>> rated(train)
    [('u', 'a', 1, 4.0), ('u', 'b', 2, 5.0), ('u', 'c', 3, 2.0)]
    """
    seen: dict[tuple[str, str, Any], float] = {}
    for example in examples:
        user = str(example["user_id"])
        for entry in [*(example.get("history") or []), example]:
            rating = entry.get("rating")
            if is_number(rating) and entry.get("item_id") is not None:
                seen.setdefault((user, str(entry["item_id"]), entry.get("timestamp")),
                                float(rating))
    return [(user, item, time, rating) for (user, item, time), rating in seen.items()]


def make(name: str, seed: int) -> Any:
    """A fresh scikit-surprise algorithm for a CF model name (its defaults, a fixed seed)."""
    try:
        import surprise
    except ImportError as err:
        raise ReconeError(f"collaborative evidence needs scikit-surprise ({err}); "
                          "pip install scikit-surprise") from None
    if name == "biases":
        return surprise.BaselineOnly(bsl_options={"method": "als"}, verbose=False)
    if name == "mf":
        return surprise.SVD(random_state=seed)
    if name == "knn":
        return surprise.KNNBaseline(k=40, verbose=False, sim_options={
            "name": "pearson_baseline", "user_based": False})
    raise InputError(f"unknown CF model {name!r}; choose from {', '.join(CF_MODELS)}",
                     field="cf")


def fit(ratings: Sequence[tuple[str, str, float]], scale: tuple[float, float],
        names: Sequence[str], seed: int = 0) -> dict[str, Predictor]:
    """Fit each named model on `(user, item, rating)` rows; predictors clipped to the scale.

    >>> rows = [("u", "a", 4.0), ("u", "b", 2.0), ("v", "a", 3.0), ("v", "b", 1.0)]
    >>> fitted = fit(rows, (1.0, 5.0), ["biases"])
    >>> 1.0 <= fitted["biases"]("u", "a") <= 5.0, round(fitted["biases"]("w", "z"), 2)
    (True, 2.5)
    """
    import pandas as pd
    import surprise

    frame = pd.DataFrame(list(ratings), columns=["user", "item", "rating"])
    trainset = surprise.Dataset.load_from_df(
        frame, surprise.Reader(rating_scale=tuple(scale))).build_full_trainset()
    return {name: _predictor(make(name, seed).fit(trainset)) for name in names}


def _predictor(algo: Any) -> Predictor:
    return lambda user, item: float(algo.predict(user, item).est)


def recency_ranks(rows: Sequence[Rated]) -> np.ndarray:
    """Each row's rank among its user's rows, newest first (1 = the user's newest; ties by row
    order, the later row newer).

    >>> recency_ranks([("u", "a", 1, 4.0), ("v", "a", 5, 3.0), ("u", "b", 2, 1.0),
    ...                ("u", "c", 2, 5.0)]).tolist()
    [3, 1, 2, 1]
    """
    by_user: dict[str, list[int]] = defaultdict(list)
    for index, row in enumerate(rows):
        by_user[row[0]].append(index)
    ranks = np.zeros(len(rows), dtype=np.int64)
    for indices in by_user.values():
        ordered = sorted(indices, key=lambda i: (rows[i][2], i), reverse=True)
        ranks[ordered] = np.arange(1, len(ordered) + 1)
    return ranks


def fold_of(rows: Sequence[Rated], recent: int, folds: int, seed: int) -> np.ndarray:
    """Each row's fold: 0..recent-1 for the recency folds (a user's j-th newest rating is in fold
    j-1), recent..recent+folds-1 for the seeded random folds of the older rows.

    >>> fold_of([("u", "a", 1, 4.0), ("u", "b", 2, 1.0), ("u", "c", 3, 5.0)], 2, 1, 0).tolist()
    [2, 1, 0]
    """
    ranks = recency_ranks(rows)
    random = np.random.default_rng(seed).integers(0, max(folds, 1), len(rows))
    return np.where(ranks <= recent, ranks - 1, recent + random)


def out_of_fold(rows: Sequence[Rated], scale: tuple[float, float], names: Sequence[str],
                recent: int = 5, folds: int = 5, seed: int = 0,
                ) -> tuple[dict[str, Predictor], dict[tuple[str, str], dict[str, float]]]:
    """The models fitted on all rows, and each row's out-of-fold predictions by (user, item).

    A recency fold j is predicted by models fitted without every user's j newest rows; a random
    fold by models fitted without that fold. No row is ever predicted by a model that saw it.
    """
    fold = fold_of(rows, recent, folds, seed)
    ranks = recency_ranks(rows)
    triples = [(user, item, rating) for user, item, _, rating in rows]
    predictions: dict[tuple[str, str], dict[str, float]] = {}
    for k in range(recent + folds):
        held = np.flatnonzero(fold == k)
        if held.size == 0:
            continue
        kept = ranks > k + 1 if k < recent else fold != k
        models = fit([triples[i] for i in np.flatnonzero(kept)], scale, names, seed)
        for i in held:
            user, item = triples[i][0], triples[i][1]
            predictions[(user, item)] = {n: round(models[n](user, item), 4) for n in names}
    return fit(triples, scale, names, seed), predictions


def choose(names: str, items: int) -> tuple[str, ...]:
    """The CF models `--cf` asks for: `auto` is all three, without kNN past KNN_MAX_ITEMS items;
    `none` is none.

    >>> choose("auto", 1682), choose("auto", 50_000), choose("mf,biases", 10), choose("none", 5)
    (('biases', 'mf', 'knn'), ('biases', 'mf'), ('mf', 'biases'), ())
    """
    if names == "auto":
        return CF_MODELS if items <= KNN_MAX_ITEMS else CF_MODELS[:2]
    if names in ("none", ""):
        return ()
    chosen = tuple(part.strip() for part in names.split(","))
    for name in chosen:
        if name not in CF_MODELS:
            raise InputError(f"unknown CF model {name!r}; choose from {', '.join(CF_MODELS)}, "
                             "auto or none", field="--cf")
    if "knn" in chosen and items > KNN_MAX_ITEMS:
        raise InputError(f"item-kNN over {items:,} items needs an items x items matrix; "
                         "leave knn out (--cf biases,mf)", field="--cf")
    return chosen


def cf_json(values: dict[str, float]) -> str:
    """The `cf` object as compact JSON, in CF_MODELS order.

    >>> cf_json({"mf": 3.84, "biases": 3.7})
    '{"biases":3.7,"mf":3.84}'
    """
    return "{" + ",".join(f'"{n}":{values[n]!r}' for n in CF_MODELS if n in values) + "}"


def add_cf(folder: Path, splits: Sequence[str], scale: tuple[float, float],
           names: Sequence[str], recent: int, folds: int, seed: int) -> dict[str, Any]:
    """Append a `cf` object to every example line of the split files in `folder` (fitted on the
    train split's ratings, out of fold where the rating is one of them); the note for the manifest.
    Lines keep their bytes; `"cf":{...}` goes before the closing brace."""
    import json

    if not names:
        return {"models": []}
    with open(folder / "train.jsonl", encoding="utf-8") as lines:
        rows = rated(json.loads(line) for line in lines if line.strip())
    if not rows:
        return {"models": [], "skipped": "no train ratings"}
    full, oof = out_of_fold(rows, scale, names, recent, folds, seed)
    for split in splits:
        path = folder / f"{split}.jsonl"
        out = path.with_suffix(".cf.tmp")
        with open(path, encoding="utf-8") as source, open(out, "w", encoding="utf-8") as sink:
            for line in source:
                text = line.rstrip("\n")
                if not text.strip():
                    continue
                example = json.loads(text)
                user, item = str(example["user_id"]), str(example["item_id"])
                values = oof.get((user, item)) if split in ("train", "coldstart") else None
                if values is None:
                    values = {n: round(full[n](user, item), 4) for n in names}
                sink.write(text[:-1] + ',"cf":' + cf_json(values) + "}\n")
        out.replace(path)
    return {"models": list(names), "fitted_on": "train targets + train histories (deduplicated)",
            "ratings": len(rows), "train_and_coldstart": f"out of fold: {recent} recency folds, "
            f"{folds} random folds of older ratings", "dev_and_test": "fitted on all train ratings"}
