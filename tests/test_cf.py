"""Collaborative evidence (`cf`, data/cf.py) follows the baselines' rule, checked as a black box
through `data prepare`:

- a train or cold-start example's predictions never come from a model that saw its own label:
  change that one rating in the raw file and its `cf` stays byte-identical (while other
  examples' `cf` moves, so the test can fail);
- dev and test targets are in no fit at all: changing one changes no `cf` anywhere;
- dev and test predictions are exactly the baselines fitted on train.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from data_helpers import amazon_2023, read_all
from test_data_prepare import random_reviews

from recone_lite.baselines import baseline_predictions, fit_on_train
from recone_lite.config import DataSection, load_recipe
from recone_lite.data.prepare import Options, prepare
from recone_lite.prompts import PromptStyle, build_messages
from recone_lite.training import load_data

ROWS = random_reviews(900, seed=3)
OPTIONS = Options(k_core=3, coldstart=20, seed=1, cf="auto")


def prepared(tmp_path: Path, name: str, rows: list) -> dict[str, list[dict]]:
    reviews = amazon_2023(tmp_path / f"{name}.jsonl", rows)
    prepare("amazon-2023", reviews, None, tmp_path / name, OPTIONS)
    return read_all(tmp_path / name)


def cf_by_id(splits: dict[str, list[dict]]) -> dict[str, dict]:
    return {e["id"]: e["cf"] for examples in splits.values() for e in examples}


def with_rating(rows: list, user: str, item: str) -> list:
    """The rows with every rating of (user, item) moved to the other end of the scale."""
    return [(u, i, 6.0 - r if r != 3.0 else 5.0, s) if (u, i) == (user, item) else (u, i, r, s)
            for u, i, r, s in rows]


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> tuple[Path, dict[str, list[dict]]]:
    folder = tmp_path_factory.mktemp("cf")
    return folder, prepared(folder, "base", ROWS)


def test_every_example_carries_the_three_predictions(base) -> None:
    _, splits = base
    for examples in splits.values():
        for example in examples:
            assert set(example["cf"]) == {"biases", "mf", "knn"}
            assert all(1.0 <= v <= 5.0 for v in example["cf"].values())


@pytest.mark.parametrize("split", ["train", "coldstart"])
def test_an_examples_own_rating_never_moves_its_cf(base, tmp_path: Path, split: str) -> None:
    folder, splits = base
    changed_ids = 0
    for example in splits[split][:: max(len(splits[split]) // 3, 1)][:3]:
        user, item = example["user_id"], example["item_id"]
        other = cf_by_id(prepared(tmp_path, f"{split}-{user}-{item}", with_rating(ROWS, user,
                                                                                  item)))
        assert other[example["id"]] == example["cf"], (split, example["id"])
        changed_ids += sum(other[key] != value for key, value in cf_by_id(splits).items())
    assert changed_ids > 0  # the changed label did reach the other examples' fits


def test_a_dev_or_test_target_is_in_no_fit(base, tmp_path: Path) -> None:
    _, splits = base
    for split in ("dev", "test"):
        example = splits[split][0]
        other = prepared(tmp_path, split, with_rating(ROWS, example["user_id"],
                                                      example["item_id"]))
        assert cf_by_id(other) == cf_by_id(splits)


def test_dev_and_test_cf_are_the_baselines_fitted_on_train(base) -> None:
    folder, splits = base
    fitted, _ = fit_on_train(folder / "base", seed=OPTIONS.seed)
    for split in ("dev", "test"):
        predictions = baseline_predictions(fitted, splits[split])
        for name in ("biases", "mf", "knn"):
            assert [e["cf"][name] for e in splits[split]] == pytest.approx(
                predictions[name], abs=1e-4)


def test_cf_none_writes_no_cf_and_a_bad_name_is_refused(tmp_path: Path) -> None:
    reviews = amazon_2023(tmp_path / "r.jsonl", ROWS)
    prepare("amazon-2023", reviews, None, tmp_path / "none", Options(k_core=3, cf="none"))
    assert all("cf" not in e for examples in read_all(tmp_path / "none").values()
               for e in examples)
    with pytest.raises(Exception, match="unknown CF model 'svd'"):
        prepare("amazon-2023", reviews, None, tmp_path / "bad", Options(k_core=3, cf="svd"))
    assert not (tmp_path / "bad").exists()


def test_the_prompt_shows_the_cf_the_recipe_names(base) -> None:
    _, splits = base
    example = splits["test"][0]
    plain = build_messages(example, "none")[1]["content"]
    shown = build_messages(example, "none", style=PromptStyle(cf=("mf", "knn")))
    assert "cf_predictions" not in plain
    line = next(t for t in shown[1]["content"].splitlines() if t.startswith("cf_predictions"))
    assert line == (f"cf_predictions: MF {example['cf']['mf']:.2f} | "
                    f"item-kNN {example['cf']['knn']:.2f}")
    assert "classical recommenders" in build_messages(
        example, "reczero", style=PromptStyle(cf=("mf",)))[0]["content"]


def test_train_recent_keeps_each_users_newest_train_examples(base) -> None:
    folder, splits = base
    section = DataSection(dir=str(folder / "base"), train_recent=2)
    data = load_data(section, {"train": None}, seed=0)
    kept = data.splits["train"]
    by_user: dict[str, list[dict]] = {}
    for example in splits["train"]:
        by_user.setdefault(example["user_id"], []).append(example)
    expected = {e["id"] for rows in by_user.values()
                for e in sorted(rows, key=lambda e: e["timestamp"])[-2:]}
    assert {e["id"] for e in kept} == expected
    assert data.sizes["train"] == len(expected) < len(splits["train"])


def test_a_warmup_whose_answers_do_not_fit_is_named_before_training(base, smollm2_dir) -> None:
    """The cf line makes the evidence answers ~85 tokens: a run that generates fewer is told so
    before its warm-up trains (it would be cut before <rate> everywhere: coverage 0)."""
    from transformers import AutoTokenizer

    from recone_lite.config import load_recipe
    from recone_lite.training import sft_row
    from recone_lite.warmup import answer_room_problem, warmup_answer

    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    _, splits = base
    rows = [sft_row([], warmup_answer(e, "reczero", (1.0, 5.0), "evidence", ("mf", "knn",
                                                                              "biases")))
            for e in splits["train"][:20]]
    short = answer_room_problem(rows, tokenizer, load_recipe("cpu-quality", [
        "evaluation.max_new_tokens=32"]))
    assert short and "cut at evaluation.max_new_tokens=32 before <rate>" in short
    rollouts = answer_room_problem(rows, tokenizer, load_recipe("cpu-quality", [
        "evaluation.max_new_tokens=512", "grpo.max_completion_length=20"]))
    assert rollouts and "grpo.max_completion_length=20" in rollouts
    assert answer_room_problem(rows, tokenizer, load_recipe("cpu-quality", [
        "evaluation.max_new_tokens=512", "grpo.max_completion_length=512"])) is None


def test_the_dev_sample_is_the_same_rows_whatever_the_seed(ml_100k_dir: Path) -> None:
    """Runs that differ in their seed are measured on the same dev examples (stop 28: seed 1's
    500 dev rows were other rows, and its dev numbers not comparable); the train sample follows
    the seed."""
    section = load_recipe("cpu-quality", [f"data.dir={ml_100k_dir}"]).data
    ids = {seed: load_data(section, {"dev": 100, "train": 50}, seed=seed) for seed in (0, 1)}
    dev = [[e["id"] for e in ids[seed].splits["dev"]] for seed in (0, 1)]
    train = [[e["id"] for e in ids[seed].splits["train"]] for seed in (0, 1)]
    assert dev[0] == dev[1] and len(dev[0]) == 100
    assert train[0] != train[1] and len(train[0]) == 50
