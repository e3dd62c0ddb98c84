"""The GPU stack's pins and rules that a CPU can check (issue 26): the `vllm` extra inside the
vLLM range TRL 1.14.2 accepts and below the version that moved bitsandbytes out of tree, errors
that name the missing piece, the recipe's vLLM share passed to Unsloth, `vllm_mode: server`
refused under Unsloth, and ZeRO-3 adapters whose LoRA weights take the base's dtype."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from recone_lite.config import load_recipe
from recone_lite.errors import InputError
from recone_lite.gpu import (
    TRL_VLLM_RANGE,
    VLLM_BNB_PLUGIN_FROM,
    check_vllm_mode,
    check_vllm_quantization,
    unsloth_kwargs,
    vllm_install_problem,
)
from recone_lite.plan import settings_from_recipe
from recone_lite.training import trainer_defaults, vllm_memory

ROOT = Path(__file__).resolve().parents[1]


def test_the_vllm_extra_is_what_trl_supports_with_bitsandbytes_in_tree() -> None:
    # the extra's line in pyproject.toml (tomllib is 3.11+, the project supports 3.10)
    line = re.search(r'^vllm = \["([^"]+)"\]$', (ROOT / "pyproject.toml").read_text(), re.M)
    assert line, "pyproject.toml: no one-requirement `vllm = [...]` extra"
    spec = Requirement(line.group(1))
    assert spec.name == "vllm"
    # the range TRL itself checks, read from the installed trl's source
    import importlib.util

    source = Path(importlib.util.find_spec("trl.import_utils").origin).read_text()
    found = re.search(r'Version\("([\d.]+)"\) <= _vllm_base_version <= Version\("([\d.]+)"\)',
                      source)
    assert found and found.groups() == TRL_VLLM_RANGE
    low, high = TRL_VLLM_RANGE
    for version in ("0.19.1", "0.20.0", "0.25.1", "0.27.1", "0.28.0", "0.30.0", "0.33.0"):
        allowed = spec.specifier.contains(version)
        inside = low <= version <= high and version < VLLM_BNB_PLUGIN_FROM  # same-width strings
        assert allowed == inside, version
    assert spec.specifier.contains("0.27.1") and not spec.specifier.contains("0.28.0")


@pytest.mark.parametrize("vllm, plugin, quantization, names", [
    ("not installed", "not installed", "4bit", "vllm is not installed"),
    ("0.33.0", "not installed", "none", "outside TRL 1.14.2's supported 0.20.0-0.30.0"),
    ("0.19.1", "not installed", "none", "outside TRL"),
    ("0.28.0", "not installed", "4bit", "pip install vllm-bnb-plugin"),
    ("0.27.1", "not installed", "4bit", None),
    ("0.27.1+cu130", "not installed", "4bit", None),  # a local build tag, as TRL reads it
    ("0.30.0", "0.0.3", "4bit", None),
    ("0.29.0", "not installed", "none", None),  # bf16 needs no plugin
])
def test_vllm_errors_name_the_missing_piece(vllm: str, plugin: str, quantization: str,
                                            names: str | None) -> None:
    problem = vllm_install_problem(vllm, plugin, quantization)
    if names is None:
        assert problem is None
    else:
        assert problem is not None and names in problem and "\n" not in problem
        assert "Unsloth" not in problem  # never "install Unsloth" for a vLLM problem


def test_unsloth_installed_but_not_loaded_is_not_told_to_install_unsloth() -> None:
    recipe = load_recipe("music-grpo", ["grpo.use_vllm=true"])
    with pytest.raises(InputError) as err:
        check_vllm_quantization(recipe.grpo, "4bit", unsloth=False, unsloth_installed=True)
    assert "pip install" not in str(err.value) and "did not load it" in str(err.value)
    with pytest.raises(InputError) as err:
        check_vllm_quantization(recipe.grpo, "8bit", unsloth=True)
    assert err.value.field == "model.quantization" and "4-bit only" in str(err.value)


def test_unsloth_gets_the_recipes_vllm_share() -> None:
    """Unsloth sizes its engine with gpu_memory_utilization (its default 0.5); the recipe's
    share, or TRL's default when silent, is what plan counts and what Unsloth now gets."""
    for overrides in (["grpo.use_vllm=true"],
                      ["grpo.use_vllm=true", "grpo.vllm_gpu_memory_utilization=0.35"]):
        recipe = load_recipe("music-grpo", overrides)
        share = vllm_memory(recipe)
        assert share == settings_from_recipe(recipe).vllm_share
        kwargs = unsloth_kwargs(name="m", max_seq_length=2304, dtype=None, quantization="4bit",
                                vllm_lora_rank=16, vllm_memory=share)
        assert kwargs["gpu_memory_utilization"] == share
    assert vllm_memory(load_recipe("music-grpo", ["grpo.use_vllm=true"])) == \
        trainer_defaults("grpo")["vllm_gpu_memory_utilization"]
    assert vllm_memory(recipe) == 0.35
    assert vllm_memory(load_recipe("music-grpo")) is None  # no vLLM, no share


def test_vllm_server_mode_is_refused_under_unsloth() -> None:
    recipe = load_recipe("music-grpo", ["grpo.use_vllm=true", "grpo.vllm_mode=server"])
    with pytest.raises(InputError) as err:
        check_vllm_mode(recipe.grpo, unsloth=True)
    assert err.value.field == "grpo.vllm_mode" and "colocate" in str(err.value)
    check_vllm_mode(recipe.grpo, unsloth=False)  # TRL's own server mode stays available
