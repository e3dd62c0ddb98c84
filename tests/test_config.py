"""Typed recipes: unknown keys are errors that name them, overrides apply, extends merges."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from training_helpers import main

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


def test_the_rewards_field_takes_exactly_the_reward_functions_names(recipe_file: Path) -> None:
    from recone_lite.rewards import REWARDS

    for name in REWARDS:
        assert load_recipe(str(recipe_file), [f"rewards=[format,{name}]"]).rewards[1] == name
    with pytest.raises(InputError) as err:
        load_recipe(str(recipe_file), ["rewards=[format,accuracy]"])
    choices = ", ".join(repr(name) for name in REWARDS[:-1]) + f" or {REWARDS[-1]!r}"
    assert str(err.value).splitlines() == [
        f"override 'rewards=[format,accuracy]': rewards.1: Input should be {choices}"]


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


# --- grpo: / sft: values against the types of TRL's config fields ----------------------------


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("grpo.learning_rate=abc", "grpo.learning_rate: Input should be a valid number"),
        ("grpo.max_steps=2.5", "grpo.max_steps: Input should be a valid integer"),
        ("sft.bf16=sometimes", "sft.bf16: Input should be a valid boolean"),
        ("grpo.report_to=[1]", "grpo.report_to[0]: Input should be a valid string"),
    ],
)
def test_a_trainer_value_of_the_wrong_type_names_the_key(
    recipe_file: Path, override: str, message: str
) -> None:
    with pytest.raises(InputError) as err:
        load_recipe(str(recipe_file), [override])
    assert str(err.value).startswith(f"override {override!r}: {message}")  # not the file's
    assert "\n" not in str(err.value)


def test_trainer_values_keep_their_yaml_form_and_numbers_in_strings_convert(
    tmp_path: Path,
) -> None:
    path = tmp_path / "r.yaml"  # YAML 1.1 reads 1e-5 (no dot) as a string
    path.write_text(BASE.replace("2.0e-6", "1e-5") + "sft:\n  lr_scheduler_type: cosine\n"
                    "  save_steps: 25\n  bf16: 'true'\n")
    recipe = load_recipe(str(path))
    assert recipe.grpo["learning_rate"] == 1e-5 and isinstance(recipe.grpo["learning_rate"], float)
    assert recipe.sft == {"lr_scheduler_type": "cosine", "save_steps": 25, "bf16": True}


def _cli(*args: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "recone_lite", *map(str, args)],
                          capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.parametrize("command", ["show", "validate", "dry-run"])
def test_a_bad_trainer_value_is_one_line_before_anything_loads(
    recipe_file: Path, command: str, capsys: pytest.CaptureFixture
) -> None:
    if command == "show":
        code, _, err = main(capsys, "recipes", "show", recipe_file, "grpo.learning_rate=abc")
    elif command == "validate":
        recipe_file.write_text(BASE.replace("2.0e-6", "abc"))
        code, _, err = main(capsys, "recipes", "validate", recipe_file)
    else:
        code, _, err = main(capsys, "train", "--recipe", recipe_file, "--dry-run",
                            "grpo.learning_rate=abc")
    assert code == 2
    where = recipe_file if command == "validate" else "override 'grpo.learning_rate=abc'"
    assert err.strip().splitlines() == [
        f"error: {where}: grpo.learning_rate: Input should be a valid number, unable to "
        "parse string as a number (got 'abc')"
    ]


# --- report_to: every integration a recipe names is imported before a model loads -------------


@pytest.fixture
def without_tensorboard(tmp_path: Path) -> dict[str, str]:
    """An environment in which `import tensorboard` fails as if it were not installed (it is not
    installed here; this makes the test hold where it is)."""
    blocked = tmp_path / "blocked" / "tensorboard"
    blocked.mkdir(parents=True)
    (blocked / "__init__.py").write_text("raise ModuleNotFoundError(\"No module named "
                                         "'tensorboard'\", name='tensorboard')\n")
    return {**os.environ, "PYTHONPATH": str(blocked.parent)}


def tracking_line(section: str) -> str:
    return (f"{section}.report_to: tensorboard needs the tensorboard package, which is not "
            f"installed (pip install 'recone-lite[track]'; or set {section}.report_to=none)")


def test_train_dry_run_without_tensorboard_exits_2_with_one_line(
    without_tensorboard: dict[str, str],
) -> None:
    """The issue's acceptance case, as a shell user meets it: a new process, nothing loaded."""
    result = _cli("train", "--recipe", "music-grpo", "--dry-run", env=without_tensorboard)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: {packaged_recipes()['music-grpo']}: {tracking_line('grpo')}"]


@pytest.mark.parametrize(
    "args",
    [
        ("sft", "--traces", "traces.jsonl", "--recipe", "music-sft", "--dry-run"),
        ("recipes", "validate", "music-grpo-8gb"),
    ],
    ids=["sft", "validate"],
)
def test_a_missing_tracking_package_is_one_line_naming_it_and_the_extra(
    args: tuple[str, ...], capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # `import tensorboard` now fails
    monkeypatch.delitem(sys.modules, "torch.utils.tensorboard", raising=False)
    code, _, err = main(capsys, *args)
    name = args[args.index("--recipe") + 1] if "--recipe" in args else args[-1]
    section = "sft" if name == "music-sft" else "grpo"
    assert code == 2
    assert err.strip().splitlines() == [
        f"error: {packaged_recipes()[name]}: {tracking_line(section)}"]


def test_an_unknown_integration_is_named() -> None:
    from recone_lite.config import check_integrations

    with pytest.raises(InputError, match=r"^grpo.report_to: unknown integration 'tensorbord'"):
        check_integrations("grpo", ["none", "tensorbord"])
    check_integrations("grpo", "none")
    check_integrations("sft", ["all"])


# --- no bitsandbytes CPU-kernel warning on every command -------------------------------------


def test_a_cpu_command_does_not_print_the_bitsandbytes_kernel_warning() -> None:
    bare = subprocess.run([sys.executable, "-c", "import bitsandbytes"], capture_output=True,
                          text=True, timeout=300)
    if "gemm_4bit_forward" not in bare.stderr:
        pytest.skip("bitsandbytes does not log the CPU kernel warning on this CPU")
    result = _cli("recipes", "validate", "cpu-demo")  # imports trl, which imports bitsandbytes
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip().splitlines() == ["ok\tcpu-demo"]
