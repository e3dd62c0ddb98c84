"""The GPU path as users meet it, checked on CPU with the facts passed in (issue 17): precision by
compute capability, TRL's batch rules at every world size the recipes and docs show (real
GRPOConfig / SFTConfig objects built at that world size), vLLM's context and 4-bit rules, the
ZeRO-3 rules, and the recipe settings that must not differ between Unsloth and transformers."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from recone_lite.cli import app
from recone_lite.config import (
    load_recipe,
    packaged_recipes,
    read_raw_recipe,
    recipes_dir,
    trainer_defaults,
)
from recone_lite.errors import InputError
from recone_lite.gpu import (
    check_vllm_quantization,
    check_zero_quantization,
    device_map,
    load_dtype,
    precision_for,
    precision_settings,
    unsloth_kwargs,
    vllm_settings,
    zero_stage_from_env,
)
from recone_lite.plan import fix_values, plan_recipe
from recone_lite.training import (
    device_settings,
    trainer_config,
    vllm_lora_rank,
    wants_checkpointing,
)
from recone_lite.trl_batch import grpo_layout

runner = CliRunner()
ROOT = Path(__file__).resolve().parent.parent
RECIPES = sorted(packaged_recipes())
WORLD_SIZES = (1, 2, 3, 8)


def at_world_size(cls: type, n: int) -> type:
    """TRL's config class as `n` processes see it: `world_size` is what TrainingArguments reads
    from the launcher's distributed state, the only thing that differs between ranks' configs."""
    return type(f"{cls.__name__}At{n}", (cls,), {"world_size": property(lambda self: n)})


def trl_config(section: str, values: dict[str, Any], world_size: int, tmp: Path) -> Any:
    """The real TRL config of a recipe section at `world_size`, with the CPU's device settings
    (precision does not enter the batch rules; vLLM, which the CPU refuses, is off)."""
    import trl

    values = {k: v for k, v in values.items() if k != "use_vllm"}
    cls = trl.GRPOConfig if section == "grpo" else trl.SFTConfig
    forced = device_settings(section, values, on_cuda=False)
    merged = {**values, **forced, "report_to": "none"}
    return at_world_size(cls, world_size)(output_dir=str(tmp), **merged)


# --- precision ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("capability", "precision", "auto", "asked_bf16", "trl"),
    [((7, 5), "fp16", "float16", "float16", {"bf16": False, "fp16": True}),  # T4, RTX 20xx
     ((7, 0), "fp16", "float16", "float16", {"bf16": False, "fp16": True}),  # V100
     ((8, 0), "bf16", "bfloat16", "bfloat16", {}),  # A100
     ((8, 6), "bf16", "bfloat16", "bfloat16", {}),  # RTX 30xx
     ((9, 0), "bf16", "bfloat16", "bfloat16", {}),  # H100 / H20
     (None, "fp32", "float32", "float32", None)],  # CPU
)
def test_precision_follows_the_compute_capability(capability, precision, auto, asked_bf16,
                                                  trl) -> None:
    assert precision_for(capability) == precision
    assert load_dtype("auto", capability) == auto
    assert load_dtype("bfloat16", capability) == asked_bf16
    if trl is not None:
        assert precision_settings({"bf16": True}, capability) == trl
        assert device_settings("grpo", {"bf16": True}, on_cuda=True, capability=capability) == trl


def test_a_turing_card_trains_the_bf16_recipes_in_fp16(tmp_path: Path) -> None:
    """music-grpo and music-sft say bf16: true and dtype bfloat16; on a T4 the model loads fp16
    and TRL's config (built for real) trains fp16, as Unsloth's fp16 model requires."""
    import trl

    for name, cls in (("music-grpo", trl.GRPOConfig), ("music-sft", trl.SFTConfig)):
        recipe = load_recipe(name)
        values = getattr(recipe, recipe.kind)
        assert values["bf16"] is True and recipe.model.dtype == "bfloat16"
        forced = device_settings(recipe.kind, values, on_cuda=True, capability=(7, 5))
        cpu = {"report_to": "none", "use_cpu": True}  # this machine's; the flags are the card's
        args = cls(output_dir=str(tmp_path), **{**values, **forced, **cpu})
        assert (args.bf16, args.fp16) == (False, True)
        assert load_dtype(recipe.model.dtype, (7, 5)) == "float16"
        ampere = device_settings(recipe.kind, values, on_cuda=True, capability=(8, 0))
        assert cls(output_dir=str(tmp_path), **{**values, **ampere, **cpu}).bf16


def test_plan_on_a_t4_says_fp16_and_whether_it_fits() -> None:
    result = runner.invoke(app, ["plan", "--recipe", "music-grpo", "--device", "t4"])
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout.strip().splitlines()[-1])
    assert plan["precision"] == "fp16" and plan["device"] == "t4"
    assert plan["verdict"] in ("fits", "tight", "does not fit")
    assert "precision: fp16 (compute capability 7.5 has no native bf16)" in result.stderr
    assert plan["verdict"] in result.stderr
    # the 16 GB recipe is the one for a T4
    small = plan_recipe(load_recipe("music-grpo-16gb"), device_name="t4")
    assert small["precision"] == "fp16" and small["verdict"] == "fits"


@pytest.mark.parametrize(("device", "precision"),
                         [("rtx2080ti", "fp16"), ("rtx3090", "bf16"), ("h100", "bf16"),
                          ("cpu", "fp32")])
def test_each_device_profile_has_its_precision(device: str, precision: str) -> None:
    assert plan_recipe(load_recipe("music-grpo"), device_name=device)["precision"] == precision


# --- batch layout at a world size ---------------------------------------------------------------


def documented_world_sizes(name: str) -> set[int]:
    """The world sizes a recipe must hold at: 1, 2, 3 and 8, and its launch jobs' GPU counts."""
    raw = read_raw_recipe(packaged_recipes()[name])
    jobs = (raw.get("launch") or {}).get("jobs") or []
    return set(WORLD_SIZES) | {int(job["gpus"]) for job in jobs}


@pytest.mark.parametrize("name", RECIPES)
def test_every_recipe_builds_its_trl_config_at_every_world_size(name: str, tmp_path: Path) -> None:
    recipe = load_recipe(name)
    values = getattr(recipe, recipe.kind)
    for world in sorted(documented_world_sizes(name)):
        args = trl_config(recipe.kind, values, world, tmp_path)  # raises if TRL refuses it
        assert args.world_size == world
        if recipe.kind == "grpo":
            layout = grpo_layout(values, world, trainer_defaults("grpo"))
            assert layout.problem is None, (world, layout.problem)
            assert layout.generation_batch == args.generation_batch_size
            assert layout.steps_per_generation == args.steps_per_generation


@pytest.mark.parametrize("name", [n for n, p in packaged_recipes().items()
                                  if read_raw_recipe(p).get("launch")])
def test_every_launch_job_builds_at_its_gpu_count(name: str, tmp_path: Path) -> None:
    recipe = load_recipe(name)
    for job in recipe.launch.jobs:
        job_recipe = load_recipe(job.recipe or name, job.overrides)
        args = trl_config(job_recipe.kind, getattr(job_recipe, job_recipe.kind), job.gpus,
                          tmp_path)
        assert args.generation_batch_size % args.num_generations == 0


def documented_commands() -> list[tuple[str, int, str, list[str]]]:
    """`(where, world size, recipe, overrides)` of every `--num_processes N ... train --recipe R`
    command in docs/scaling.md and the accelerate configs' comments (a command spread over
    lines with `\\`; `$((8 * NNODES))` taken at 2 nodes)."""
    files = [ROOT / "docs" / "scaling.md", *sorted((recipes_dir() / "accelerate").glob("*.yaml"))]
    found = []
    for path in files:
        text = re.sub(r"\\\n[#\s]*", " ", path.read_text(encoding="utf-8"))
        for line in text.splitlines():
            if "--num_processes" not in line or "--recipe" not in line:
                continue
            count = re.search(r"--num_processes (\d+|\$\(\(8 \* \$?\w+\)\))", line).group(1)
            world = int(count) if count.isdigit() else 16
            recipe, *rest = line.split("--recipe ", 1)[1].split()
            overrides = [t.strip("'") for t in rest if "=" in t]
            found.append((path.name, world, recipe, overrides))
    return found


def test_the_docs_show_multi_gpu_commands() -> None:
    worlds = {world for _, world, _, _ in documented_commands()}
    assert {8, 16} <= worlds


@pytest.mark.parametrize(("where", "world", "recipe", "overrides"), documented_commands())
def test_every_documented_command_is_valid_at_its_world_size(
    where: str, world: int, recipe: str, overrides: list[str], tmp_path: Path
) -> None:
    loaded = load_recipe(recipe, overrides)
    trl_config(loaded.kind, getattr(loaded, loaded.kind), world, tmp_path)
    if loaded.kind == "grpo":
        assert grpo_layout(loaded.grpo, world, trainer_defaults("grpo")).problem is None


GEOMETRIES = [
    {"per_device_train_batch_size": pdb, "gradient_accumulation_steps": gas,
     "num_generations": groups, **extra}
    for pdb in (1, 3, 4, 8) for gas in (1, 3, 8) for groups in (2, 4, 6, 8)
    for extra in ({}, {"generation_batch_size": 32}, {"generation_batch_size": 12},
                  {"steps_per_generation": 2})
]


@pytest.mark.parametrize("world", WORLD_SIZES)
def test_the_layout_rules_agree_with_trl_and_every_fix_is_accepted(world: int,
                                                                   tmp_path: Path) -> None:
    """grpo_layout says valid exactly when TRL's GRPOConfig accepts the geometry; where it is
    not, TRL accepts the geometry with the printed overrides applied."""
    import trl

    cls = at_world_size(trl.GRPOConfig, world)
    refused = 0
    for values in GEOMETRIES:
        layout = grpo_layout(values, world, trainer_defaults("grpo"))
        try:
            args = cls(output_dir=str(tmp_path), use_cpu=True, bf16=False, report_to="none",
                       **values)
        except ValueError:
            assert layout.problem is not None, values
            refused += 1
            fixed = {**values, **fix_values(layout.fix)}
            args = cls(output_dir=str(tmp_path), use_cpu=True, bf16=False, report_to="none",
                       **fixed)
            assert grpo_layout(fixed, world).problem is None
            continue
        assert layout.problem is None, (values, layout.problem)
        assert layout.generation_batch == args.generation_batch_size, values
    assert refused > 0  # the grid has broken layouts at every world size


def test_plan_with_gpus_reports_the_layout_or_the_exact_override() -> None:
    for gpus in (3, 8):
        result = runner.invoke(app, ["plan", "--recipe", "music-grpo", "--gpus", str(gpus)])
        assert result.exit_code == 0, result.output
        plan = json.loads(result.stdout.strip().splitlines()[-1])
        assert plan["batch_layout"]["valid"], plan["batch_layout"]
        assert plan["batch_layout"]["generation_batch"] == 32 * gpus
        assert f"batch at {gpus} GPU(s): valid" in result.stderr
    # the layout the recipe had before issue 17: refused at 3 GPUs, with the override printed
    old = ["grpo.steps_per_generation=null", "grpo.generation_batch_size=32"]
    result = runner.invoke(app, ["plan", "--recipe", "music-grpo", "--gpus", "3", *old])
    plan = json.loads(result.stdout.strip().splitlines()[-1])
    layout = plan["batch_layout"]
    assert not layout["valid"] and "divisible by the global batch size (24" in layout["problem"]
    assert layout["fix"] == ["grpo.generation_batch_size=null", "grpo.steps_per_generation=4"]
    assert "override: grpo.generation_batch_size=null grpo.steps_per_generation=4" in \
        result.stderr
    # the per-GPU generation batch the memory estimate uses is the fixed layout's
    assert plan["settings"]["generation_batch"] == 32


def test_train_under_a_launcher_refuses_a_broken_layout_with_the_override(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    values = {"per_device_train_batch_size": 8, "gradient_accumulation_steps": 8,
              "num_generations": 8, "generation_batch_size": 32, "report_to": "none"}
    assert trainer_config("grpo", values, tmp_path, 0).generation_batch_size == 32
    monkeypatch.setenv("WORLD_SIZE", "3")
    with pytest.raises(InputError) as err:
        trainer_config("grpo", values, tmp_path, 0)
    assert str(err.value) == (
        "grpo: generation_batch_size (32) must be divisible by the global batch size (24 = 8 per "
        "device x 3) at 3 process(es); override grpo.generation_batch_size=null "
        "grpo.steps_per_generation=4")


# --- vLLM ---------------------------------------------------------------------------------------


def test_the_vllm_recipe_bounds_vllms_context() -> None:
    recipe = load_recipe("h20x8-multi-adapter")
    assert recipe.grpo["use_vllm"] is True
    assert recipe.grpo["vllm_max_model_length"] == recipe.model.max_seq_length
    assert vllm_settings(recipe.grpo, recipe.model.max_seq_length) == {}  # set: left alone
    unbounded = load_recipe("h20x8-multi-adapter", ["grpo.vllm_max_model_length=null"])
    assert vllm_settings(unbounded.grpo, 2304) == {"vllm_max_model_length": 2304}
    plan = plan_recipe(unbounded, device_name="h20")
    assert any("grpo.vllm_max_model_length=2304" in line for line in plan["checks"])


def test_vllm_with_a_4bit_base_needs_unsloth() -> None:
    recipe = load_recipe("music-grpo", ["grpo.use_vllm=true"])
    with pytest.raises(InputError) as err:
        check_vllm_quantization(recipe.grpo, recipe.model.quantization, unsloth=False)
    assert "\n" not in str(err.value) and "need Unsloth" in str(err.value)
    assert "grpo.use_vllm=false" in str(err.value)
    check_vllm_quantization(recipe.grpo, recipe.model.quantization, unsloth=True)
    check_vllm_quantization(recipe.grpo, "none", unsloth=False)
    plan = plan_recipe(recipe, device_name="rtx4090")
    assert any(line.startswith("without Unsloth: grpo.use_vllm") for line in plan["checks"])


def test_unsloth_serves_vllm_rollouts_for_the_adapters_rank(tmp_path: Path) -> None:
    recipe = load_recipe("h20x8-multi-adapter")
    assert vllm_lora_rank(recipe) == 64 and vllm_lora_rank(load_recipe("music-grpo")) is None
    kwargs = unsloth_kwargs(name=recipe.model.name, max_seq_length=recipe.model.max_seq_length,
                            dtype=None, quantization="4bit", vllm_lora_rank=64)
    assert kwargs["fast_inference"] is True and kwargs["max_lora_rank"] == 64
    assert kwargs["load_in_4bit"] is True and kwargs["max_seq_length"] == 2304
    # RecOne continues an adapter: its own rank, not the recipe's lora.r
    adapter = tmp_path / "sft"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"r": 32}))
    recone = load_recipe("music-recone", ["grpo.use_vllm=true", f"init_adapter={adapter}"])
    assert vllm_lora_rank(recone) == 32


# --- DeepSpeed ----------------------------------------------------------------------------------


def zero_stage_of_config(path: str | Path) -> int | None:
    """The ZeRO stage an accelerate config file sets (None: not DeepSpeed)."""
    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        return None
    if not isinstance(raw, dict) or raw.get("distributed_type") != "DEEPSPEED":
        return None
    stage = (raw.get("deepspeed_config") or {}).get("zero_stage")
    return int(stage) if isinstance(stage, int) else None


def test_zero3_takes_no_device_map_and_no_4bit_base() -> None:
    zero3 = recipes_dir() / "accelerate" / "zero3.yaml"
    assert zero_stage_of_config(zero3) == 3
    assert zero_stage_of_config(recipes_dir() / "accelerate" / "zero2.yaml") == 2
    assert zero_stage_of_config(recipes_dir() / "accelerate" / "ddp.yaml") is None
    assert device_map(True, 3, 5) is None and device_map(True, 2, 5) == {"": 5}
    env = {"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3"}
    assert zero_stage_from_env(env) == 3
    with pytest.raises(InputError, match="ZeRO-3 cannot shard a 4bit base"):
        check_zero_quantization(zero_stage_from_env(env), "4bit")
    check_zero_quantization(3, "none")


def test_train_under_zero3_refuses_a_4bit_recipe_in_one_line(monkeypatch: pytest.MonkeyPatch,
                                                             capsys) -> None:
    from training_helpers import main

    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", "3")
    code, _, err = main(capsys, "train", "--recipe", "music-grpo", "--dry-run",
                        "grpo.report_to=none")
    assert code == 2, err
    lines = [line for line in err.strip().splitlines() if "ZeRO-3" in line]
    assert len(lines) == 1 and "model.quantization=none" in lines[0]


# --- the same run on both paths -----------------------------------------------------------------


@pytest.mark.parametrize("name", [n for n in RECIPES if not n.startswith("cpu-")])
def test_gpu_recipes_name_their_optimizer(name: str) -> None:
    """Unsloth's trainer configs default to adamw_8bit and weight_decay 0.001, transformers' to
    fused AdamW and 0: a GPU recipe names both so it trains the same on either path."""
    recipe = load_recipe(name)
    values = getattr(recipe, recipe.kind)
    assert "optim" in values and "weight_decay" in values


def test_sft_reads_its_own_gradient_checkpointing() -> None:
    off = load_recipe("music-sft", ["sft.gradient_checkpointing=false"])
    assert off.grpo.get("gradient_checkpointing", True) and not wants_checkpointing(off)
    assert wants_checkpointing(load_recipe("music-sft"))
    assert not wants_checkpointing(load_recipe("music-grpo", ["grpo.gradient_checkpointing=false"]))
    assert wants_checkpointing(load_recipe("music-grpo", ["sft.gradient_checkpointing=false"]))


def test_a_continued_adapter_gets_unsloths_patches(tiny_dir: Path, monkeypatch) -> None:
    """SFT -> GRPO under Unsloth: the continued adapter goes through Unsloth's patch_peft_model
    (fused LoRA kernels, its gradient checkpointing), as a new adapter does through
    get_peft_model. Unsloth needs CUDA, so a stand-in module records the call; the model is a
    real peft model."""
    import sys
    import types

    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from recone_lite.training import continue_with_unsloth

    calls: list[Any] = []

    class FastLanguageModel:
        @staticmethod
        def patch_peft_model(model: Any, use_gradient_checkpointing: Any) -> Any:
            calls.append(use_gradient_checkpointing)
            return model

    monkeypatch.setitem(sys.modules, "unsloth", types.SimpleNamespace(
        FastLanguageModel=FastLanguageModel))
    base = AutoModelForCausalLM.from_pretrained(tiny_dir)
    model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj"],
                                            task_type="CAUSAL_LM"))
    assert continue_with_unsloth(model, load_recipe("music-recone")) is model
    assert continue_with_unsloth(model, load_recipe(
        "music-recone", ["grpo.gradient_checkpointing=false"])) is model
    assert calls == ["unsloth", False]
    plain = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_dir),
                           LoraConfig(r=4, target_modules=["q_proj"]))  # no task type
    assert continue_with_unsloth(plain, load_recipe("music-recone")) is plain
    assert calls == ["unsloth", False]
