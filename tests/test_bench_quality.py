"""bench/quality.py's own arithmetic (issue 24): the blend fits exactly the numbers the prompt
shows, and the added-information stack tells a model that knows more than its numbers from one
that only re-weights them. On the real prepared MovieLens-100k rows; no model is loaded."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

from recone_lite.config import load_recipe
from recone_lite.prompts import PromptStyle, build_messages

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import quality  # noqa: E402


def rows(folder: Path, split: str, limit: int | None = None) -> list[dict]:
    with open(folder / f"{split}.jsonl", encoding="utf-8") as lines:
        return [json.loads(line) for _, line in zip(range(limit or 10**9), lines, strict=False)]


@pytest.mark.parametrize("overrides", [[], ["data.item_history=3"], ["data.stats=false"]])
def test_the_blend_uses_exactly_the_numbers_the_prompt_shows(
        ml_100k_dir: Path, overrides: list[str]) -> None:
    """Every feature of the blend is a number written in the prompt the recipe renders (2
    decimals), and a block the recipe hides gives the blend no feature."""
    data = load_recipe("cpu-quality", overrides).data
    cf = {"mf": 3.8123, "knn": 2.9071, "biases": 3.4452}  # cf as `data prepare --cf` writes it
    checked = 0
    for example in rows(ml_100k_dir, "test", 40):
        example = {**example, "cf": cf}
        names, values = quality.prompt_numbers(example, data, (1.0, 5.0))
        prompt = build_messages(example, data.template, style=PromptStyle.of(data))[1]["content"]
        shown = set(re.findall(r"\d\.\d\d", prompt))
        if data.item_history and example.get("item_history"):  # the prompt lists the ratings
            ratings = [float(e["rating"]) for e in example["item_history"]][-data.item_history:]
            assert values[names.index("item_history_mean")] == sum(ratings) / len(ratings)
            names, values = names[:-1], values[:-1]
        mean_missing = {name for name in ("user_mean", "item_mean")
                        if example["stats"].get(name) is None}
        for name, value in zip(names, values, strict=True):
            if name not in mean_missing:  # a missing mean is "none yet", filled by the global
                assert f"{value:.2f}" in shown, (name, value, prompt)
                checked += 1
    assert checked >= 40 * 3  # the three cf numbers at least, on every row
    names = quality.prompt_numbers(rows(ml_100k_dir, "test", 1)[0], data, (1.0, 5.0))[0]
    assert ("user_mean" in names) == data.stats
    assert ("item_history_mean" in names) == bool(data.item_history)


def test_added_information_tells_knowing_from_re_weighting(ml_100k_dir: Path) -> None:
    """A model whose prediction is the prompt's own estimate adds nothing out of sample; one that
    knows half the truth beyond it gets a large weight and a better test stack."""
    recipe = load_recipe("cpu-quality", [f"data.dir={ml_100k_dir}", "data.cf=[]"])
    dev = rows(ml_100k_dir, "dev", 500)
    test = rows(ml_100k_dir, "test", 400)
    estimate = lambda e: quality.prompt_numbers(e, recipe.data, (1.0, 5.0))[1][3]  # noqa: E731

    def run(model) -> dict:
        dev_rows = [{"id": e["id"], "rating": model(e), "truth": e["rating"]} for e in dev]
        test_rows = [{"id": e["id"], "rating": model(e)} for e in test]
        return quality.added_information(recipe, ml_100k_dir, dev_rows, test_rows, test,
                                         (1.0, 5.0), 3.5)

    copy = run(estimate)
    assert copy["fitted_on_dev"] == 500
    assert abs(copy["bootstrap"]["rmse"]["diff"]) < 1e-3, copy
    assert abs(copy["bootstrap"]["mae"]["diff"]) < 1e-3, copy

    knowing = run(lambda e: (estimate(e) + e["rating"]) / 2)
    assert knowing["model_weight"] > 0.5
    assert knowing["bootstrap"]["rmse"]["high"] < 0 and knowing["bootstrap"]["mae"]["high"] < 0
    assert knowing["numbers_alone"] == copy["numbers_alone"]
