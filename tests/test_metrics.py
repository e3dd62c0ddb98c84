"""Metrics with hand-computed values: failures are counted and priced, never dropped or exact."""

from __future__ import annotations

import math

import pytest

from recone_lite.metrics import summarize

SCALE = (1.0, 5.0)


def test_hand_computed_metrics() -> None:
    predictions = [4.0, 2.5, None, 9.0, 1.0]
    truths = [5.0, 2.0, 3.0, 4.0, 1.0]
    m = summarize(predictions, truths, SCALE, fallback=3.6)
    # parsed errors: |4-5|=1, |2.5-2|=0.5, |5-4|=1 (9 clipped to 5), |1-1|=0
    assert (m["n"], m["parsed"], m["failed"], m["coverage"], m["clipped"]) == (5, 4, 1, 0.8, 1)
    assert m["mae"] == 0.625
    assert m["rmse"] == round(math.sqrt((1 + 0.25 + 1 + 0) / 4), 4)
    # with failures: the failure is priced at |3.6 - 3| = 0.6
    assert m["mae_with_failures"] == round((1 + 0.5 + 0.6 + 1 + 0) / 5, 4)
    assert m["rmse_with_failures"] == round(math.sqrt((1 + 0.25 + 0.36 + 1) / 5), 4)
    assert m["failures_scored_as"] == {"prediction": 3.6, "is": "global mean of train ratings"}
    assert m["per_rating"]["3"] == {"n": 1, "parsed": 0, "mae": None, "mean_prediction": None}
    assert m["per_rating"]["4"] == {"n": 1, "parsed": 1, "mae": 1.0, "mean_prediction": 5.0}
    # 2.5 rounds half up to 3; the clipped 9 counts as a 5
    assert m["histogram"] == {"1": 1, "2": 0, "3": 1, "4": 1, "5": 1, "failed": 1}
    assert m["truth_histogram"] == {"1": 1, "2": 1, "3": 1, "4": 1, "5": 1}


def test_a_model_that_always_says_five_is_visible() -> None:
    truths = [1.0, 2.0, 3.0, 4.0, 5.0] * 4
    m = summarize([5.0] * len(truths), truths, SCALE, fallback=3.0)
    assert [m["per_rating"][k]["mae"] for k in "12345"] == [4.0, 3.0, 2.0, 1.0, 0.0]
    assert all(m["per_rating"][k]["mean_prediction"] == 5.0 for k in "12345")
    assert m["histogram"] == {"1": 0, "2": 0, "3": 0, "4": 0, "5": 20, "failed": 0}


def test_unparsable_is_never_an_exact_guess() -> None:
    m = summarize([None, None], [4.0, 4.0], SCALE, fallback=3.5)
    assert m["coverage"] == 0.0 and m["mae"] is None and m["rmse"] is None
    assert m["mae_with_failures"] == 0.5  # priced at the global mean, not 0
    nan = summarize([float("nan")], [4.0], SCALE, fallback=3.5)
    assert nan["parsed"] == 0 and nan["mae_with_failures"] == 0.5


def test_half_star_scale_buckets() -> None:
    m = summarize([4.3, 0.5, 3.0], [4.5, 1.0, 3.5], (0.5, 5.0), fallback=3.5)
    assert list(m["truth_histogram"]) == [str(x / 2).removesuffix(".0") for x in range(1, 11)]
    assert m["truth_histogram"]["4.5"] == 1 and m["truth_histogram"]["3.5"] == 1
    assert m["histogram"]["4.5"] == 1 and m["histogram"]["0.5"] == 1 and m["histogram"]["3"] == 1
    assert m["per_rating"]["4.5"]["mae"] == 0.2


def test_empty_and_mismatched() -> None:
    m = summarize([], [], SCALE, fallback=3.0)
    assert m["n"] == 0 and m["coverage"] is None and m["mae"] is None
    with pytest.raises(ValueError):
        summarize([1.0], [1.0, 2.0], SCALE, fallback=3.0)
