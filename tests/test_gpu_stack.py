"""The GPU stack's pins and rules that a CPU can check (issue 26): the `vllm` extra inside the
vLLM range TRL 1.14.2 accepts and below the version that moved bitsandbytes out of tree, errors
that name the missing piece, the recipe's vLLM share passed to Unsloth, `vllm_mode: server`
refused under Unsloth, and ZeRO-3 adapters whose LoRA weights take the base's dtype."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from recone_lite.config import load_recipe, trainer_defaults
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
from recone_lite.training import vllm_memory

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


# --- ZeRO-3 adapters ---------------------------------------------------------------------------


def accelerate_env(config: str) -> dict[str, str]:
    """The environment `accelerate launch --config_file recipes/accelerate/CONFIG.yaml` gives
    each process, built by accelerate's own launcher code (no DeepSpeed needed to build it)."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

    args = launch_command_parser().parse_args(
        ["--config_file", str(ROOT / "recipes" / "accelerate" / f"{config}.yaml"),
         "--num_processes", "2", "train.py"])
    args, defaults, _ = _validate_launch_command(args)
    if args.use_deepspeed:  # as accelerate's launch_command sets it before its DeepSpeed launcher
        args.deepspeed_fields_from_accelerate_config = ",".join(defaults.deepspeed_config)
        return prepare_deepspeed_cmd_env(args)[1]
    return prepare_multi_gpu_env(args)


def make_llama() -> object:
    """A real 2-layer Llama in bf16, the base dtype of a ZeRO-3 run."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
    return LlamaForCausalLM(config).to(torch.bfloat16)


@pytest.fixture()
def bf16_llama() -> object:
    return make_llama()


def lora_dtypes(model: object) -> set[str]:
    return {str(p.dtype).removeprefix("torch.") for n, p in model.named_parameters()
            if "lora_" in n}


@pytest.mark.parametrize("config, want", [("zero3", {"bfloat16"}), ("zero2", {"float32"}),
                                          ("ddp", {"float32"})])
def test_lora_takes_the_base_dtype_under_zero3(config: str, want: set[str], bf16_llama: object,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """The adapter `train` builds in a process launched with each packaged accelerate config:
    under ZeRO-3 the LoRA weights are bf16 like the base (mixed bf16/fp32 raises in ZeRO-3's
    first optimizer step, TRL #6089); elsewhere peft's fp32 upcast stays."""
    from recone_lite.gpu import zero_stage
    from recone_lite.training import add_lora

    env = accelerate_env(config)
    assert (env.get("ACCELERATE_DEEPSPEED_ZERO_STAGE") == "3") == (config == "zero3")
    for key, value in env.items():
        if key.startswith("ACCELERATE_"):
            monkeypatch.setenv(key, value)
    assert zero_stage() == (3 if config == "zero3" else 2 if config == "zero2" else None)
    recipe = load_recipe("cpu-demo", ["lora.r=4", "lora.target_modules=[q_proj,v_proj]"])
    model = add_lora(bf16_llama, recipe)
    assert lora_dtypes(model) == want
    assert {str(p.dtype) for n, p in model.named_parameters() if "lora_" not in n} == \
        {"torch.bfloat16"}


def test_a_continued_adapter_takes_the_base_dtype_under_zero3(
        bf16_llama: object, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`init_adapter` (SFT -> GRPO) loads a saved adapter for training: bf16 under ZeRO-3 too."""
    from peft import LoraConfig, get_peft_model

    from recone_lite.models import ModelSpec, _load_adapter

    saved = get_peft_model(bf16_llama, LoraConfig(r=4, target_modules=["q_proj", "v_proj"],
                                                  task_type="CAUSAL_LM"))
    saved.save_pretrained(tmp_path / "adapter")
    spec = ModelSpec(name="tiny", adapter=str(tmp_path / "adapter"))
    monkeypatch.delenv("ACCELERATE_USE_DEEPSPEED", raising=False)
    assert lora_dtypes(_load_adapter(make_llama(), spec, for_training=True)) == {"float32"}
    for key, value in accelerate_env("zero3").items():
        if key.startswith("ACCELERATE_"):
            monkeypatch.setenv(key, value)
    model = _load_adapter(make_llama(), spec, for_training=True)
    assert lora_dtypes(model) == {"bfloat16"}
    assert all(p.requires_grad for n, p in model.named_parameters() if "lora_" in n)


def test_deepspeed_reads_zero3_from_the_packaged_config(bf16_llama: object) -> None:
    """With DeepSpeed installed: transformers' own ZeRO-3 switch (what TrainingArguments sets
    from a DeepSpeed config, without accelerate's environment) also gives bf16 LoRA. Skipped
    where DeepSpeed is not installed (it is not a recone-lite dependency)."""
    pytest.importorskip("deepspeed", reason="DeepSpeed not installed: config check not run")
    from transformers.integrations import HfDeepSpeedConfig

    from recone_lite.gpu import adapter_autocast, zero_stage, zero_stage_of_config

    stage = zero_stage_of_config(ROOT / "recipes" / "accelerate" / "zero3.yaml")
    assert stage == 3
    keep = HfDeepSpeedConfig({"zero_optimization": {"stage": stage},  # noqa: F841 (weakref)
                              "train_micro_batch_size_per_gpu": 1, "bf16": {"enabled": True}})
    assert zero_stage() == 3 and adapter_autocast(zero_stage(), quantized=False) is False
