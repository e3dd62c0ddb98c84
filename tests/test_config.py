"""Typed recipes: unknown keys are errors that name them, overrides apply, extends merges."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from recone_lite.config import apply_overrides, dump_recipe, load_recipe, packaged_recipes
from recone_lite.errors import InputError

BASE = """\
description: a test recipe
model:
  name: some/model
data:
  dir: data/x
lora:
  r: 8
grpo:
  learning_rate: 2.0e-6
  num_generations: 8
output_dir: runs/x
"""


@pytest.fixture
def recipe_file(tmp_path: Path) -> Path:
    path = tmp_path / "base.yaml"
    path.write_text(BASE)
    return path


def test_load_fills_defaults_and_keeps_trl_keys(recipe_file: Path) -> None:
    recipe = load_recipe(str(recipe_file))
    assert recipe.lora.r == 8 and recipe.lora.alpha == 32
    assert recipe.grpo == {"learning_rate": 2e-6, "num_generations": 8}
    assert recipe.rewards == ["format", "answer"]
    assert "learning_rate: 2.0e-06" in dump_recipe(recipe)


def test_override_changes_nested_value(recipe_file: Path) -> None:
    recipe = load_recipe(str(recipe_file), ["grpo.learning_rate=1e-5", "lora.r=32", "seed=7"])
    assert recipe.grpo["learning_rate"] == 1e-5 and recipe.lora.r == 32 and recipe.seed == 7


@pytest.mark.parametrize(
    ("text", "field"),
    [
        (BASE.replace("  r: 8", "  rank: 8"), "lora.rank"),
        (BASE + "sed: 3\n", "sed"),
        (BASE.replace("learning_rate", "learnin_rate"), "grpo.learnin_rate"),
        (BASE.replace("  r: 8", "  r: many"), "lora.r"),
    ],
)
def test_bad_key_or_type_names_the_key(tmp_path: Path, text: str, field: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(InputError) as err:
        load_recipe(str(path))
    assert f"{path}: {field}:" in str(err.value)


def test_misspelt_trl_key_suggests_the_real_one(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(BASE.replace("learning_rate", "learnin_rate"))
    with pytest.raises(InputError, match="did you mean learning_rate"):
        load_recipe(str(path))


def test_override_with_unknown_key_is_an_error(recipe_file: Path) -> None:
    with pytest.raises(InputError, match="lora.rnk: unknown key"):
        load_recipe(str(recipe_file), ["lora.rnk=4"])


def test_extends_merges_parent_and_child(recipe_file: Path) -> None:
    child = recipe_file.parent / "child.yaml"
    child.write_text("extends: base.yaml\nlora:\n  alpha: 64\n")
    recipe = load_recipe(str(child))
    assert (recipe.lora.r, recipe.lora.alpha, recipe.grpo["num_generations"]) == (8, 64, 8)


def test_unknown_recipe_name_is_an_error() -> None:
    with pytest.raises(InputError, match="unknown recipe"):
        load_recipe("no-such-recipe")


def test_overrides_are_pure() -> None:
    raw = {"a": {"b": 1}}
    assert apply_overrides(raw, ["a.b=2"]) == {"a": {"b": 2}} and raw == {"a": {"b": 1}}


@pytest.mark.parametrize("name", sorted(packaged_recipes()))
def test_every_packaged_recipe_validates(name: str) -> None:
    recipe = load_recipe(name)
    assert recipe.model.name and recipe.output_dir


def test_validate_cli_exits_2_naming_file_and_key(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(BASE + "lora_rank: 4\n")
    result = subprocess.run(
        [sys.executable, "-m", "recone_lite", "recipes", "validate", str(path)],
        capture_output=True, text=True,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == f"error: {path}: lora_rank: unknown key"
