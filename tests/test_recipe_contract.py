"""The recipe contract: every shipped recipe starts and trains.

Each recipe in recipes/ (`config.packaged_recipes()`), with its model pointed at the SmolLM2
fixture and its data at a tiny prepared set, builds its real trainer (TRL's GRPOTrainer or
SFTTrainer) through `grpo.train` / `sft.train`, the code path of `train` / `sft`, and runs one
optimizer step with the recipe's own batch geometry (micro-batch, accumulation, group size,
generation batch), LoRA, rewards, template and trainer settings. A recipe that cannot start
fails here by name (the test id is the recipe's name).

What is changed, and why:
- model: conftest's `tiny_dir`, SmolLM2-135M's tokenizer and chat template on a 2-layer random
  Llama. The recipes' own geometry means up to 64 completions of ~400-token reczero prompts per
  step: seconds on that model, minutes per recipe on the 135M weights. The 135M model itself
  trains in test_grpo / test_sft / test_demo; this test is about the recipes.
- data: a tiny prepared set (training_helpers.write_prepared); SFT reads template traces of its
  cold-start split; RecOne's `init_adapter` is a real peft adapter saved on that model.
- length: `max_steps=1` (and one step of a format warm-up), completions of 8 tokens, 2 dev
  examples of 8 tokens for the final dev evaluation that every run ends with (SFT also
  evaluates before training), no evaluation before GRPO.
- the CPU settings: what `training.device_settings` and `models.py` apply anyway without CUDA
  (fp32, no 4-bit, no bf16, no gradient checkpointing); vLLM, which the CPU refuses with one
  line, is switched off.
- `report_to`: kept when its integration is installed (the `track` extra); otherwise `none`,
  since then the recipe stops at once, by design, with the one line that test_config checks.

The multi-adapter recipe also passes `launch --dry-run`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from training_helpers import main, write_prepared, write_template_traces

from recone_lite.config import (
    load_recipe,
    packaged_recipes,
    read_raw_recipe,
    report_to_names,
)
from recone_lite.errors import InputError

RECIPES = sorted(packaged_recipes())


def contract_overrides(name: str, model: Path, data: Path, out: Path,
                       adapter: Path) -> list[str]:
    """The overrides of the module docstring for recipe `name`."""
    from recone_lite.config import check_integrations

    raw = load_recipe(name)
    section = raw.kind
    values = getattr(raw, section)
    overrides = [
        f"model.name={model}", f"data.dir={data}", f"output_dir={out}", "data.eval_limit=2",
        "evaluation.max_new_tokens=8", "evaluation.at_start=false", f"{section}.max_steps=1",
    ]
    if section == "grpo":
        overrides.append("grpo.max_completion_length=8")
        if values.get("use_vllm"):
            overrides.append("grpo.use_vllm=false")
    if raw.init_adapter:
        overrides.append(f"init_adapter={adapter}")
    if raw.warmup:  # the format warm-up runs, one SFT step of it
        overrides.append("warmup.steps=1")
    if report_to_names(values.get("report_to")):
        try:
            check_integrations(section, values.get("report_to"))
        except InputError:
            overrides.append(f"{section}.report_to=none")
    return overrides


@pytest.fixture(scope="module")
def contract_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny prepared set, with template traces (the four tagged blocks ending in the true
    rating) of its cold-start split for the SFT recipes."""
    return write_template_traces(write_prepared(tmp_path_factory.mktemp("contract") / "tiny"))


@pytest.fixture(scope="module")
def sft_adapter(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LoRA adapter saved by peft on `tiny_dir` (r 16 on all linear layers, as music-sft), for
    the RecOne recipe's `init_adapter`."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    config = LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM")
    out = tmp_path_factory.mktemp("adapter") / "music-sft"
    get_peft_model(model, config).save_pretrained(out)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("name", RECIPES)
def test_recipe_trains_one_step(
    name: str, tiny_dir: Path, contract_data: Path, sft_adapter: Path, tmp_path: Path
) -> None:
    from recone_lite import grpo, sft
    from recone_lite.training import resolve_recipe

    out = tmp_path / "run"
    overrides = contract_overrides(name, tiny_dir, contract_data, out, sft_adapter)
    recipe = resolve_recipe(name, overrides, None, None)  # what `train` / `sft` do first
    if recipe.kind == "sft":
        result = sft.train(recipe, contract_data / "traces.jsonl", recipe_name=name)
    else:
        result = grpo.train(recipe, recipe_name=name)
    assert result["status"] == "finished" and result["global_step"] == 1, result
    assert (out / "adapter_model.safetensors").is_file() and (out / "recipe.yaml").is_file()
    run: dict[str, Any] = json.loads((out / "run.json").read_text())
    assert run["status"] == "finished" and run["dev_metrics"]["n"] == 2
    if recipe.init_adapter:
        assert run["init_adapter"] == str(sft_adapter)


LAUNCHED = [n for n, path in packaged_recipes().items() if read_raw_recipe(path).get("launch")]


@pytest.mark.parametrize("name", LAUNCHED)
def test_multi_adapter_recipe_launch_dry_run(name: str, capsys: pytest.CaptureFixture) -> None:
    code, out, err = main(capsys, "launch", "--recipe", name, "--dry-run")
    assert code == 0, err
    lines = out.strip().splitlines()
    assert len(lines) == len(load_recipe(name).launch.jobs)
    assert all(f"-m recone_lite train --recipe {name} " in line for line in lines)
