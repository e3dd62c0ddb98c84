"""`train --dry-run` / `sft --dry-run`: what a run would do, printed before any weights load.

The memory line is `plan.estimate`'s (through `plan.plan_recipe`), the same numbers as
`recone-lite plan --recipe R --device cpu` on a CPU; there is one memory model, in plan.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from recone_lite import log
from recone_lite.config import Recipe
from recone_lite.gpu import (
    cuda_available,
    cuda_capability,
    describe_precision,
    total_memory_gib,
    world_size_from_env,
)
from recone_lite.models import check_spec
from recone_lite.plan import plan_recipe
from recone_lite.prompts import load_tokenizer
from recone_lite.run_folder import RunFolder
from recone_lite.runs import latest_checkpoint
from recone_lite.training import total_steps
from recone_lite.trl_batch import config_prompts_per_step


def plan_memory(recipe: Recipe) -> dict[str, Any]:
    """`plan.plan_recipe` for this machine: the `cpu` profile without CUDA; on CUDA the
    `rtx4090` profile's speeds with this card's memory, at the launcher's world size."""
    if not cuda_available():
        return plan_recipe(recipe, device_name="cpu")
    memory = total_memory_gib()
    return plan_recipe(recipe, device_name="rtx4090", memory_gib=memory,
                       gpus=max(world_size_from_env(), 1))


def print_run_plan(
    section: str,
    recipe: Recipe,
    args: Any,
    *,
    n_train: int,
    n_pool: int,
    n_dev: int,
    prompt: Any,
    out_state: str,
    extra: list[str] | None = None,
) -> dict[str, Any]:
    """What a run would do, on stderr; the same facts returned as a dict (for tests). The memory
    is `plan.estimate`'s peak (`recone-lite plan` prints its parts in full)."""
    memory = plan_memory(recipe)
    parts = memory["parts_gib"]
    steps = total_steps(args, n_train)
    per_step = config_prompts_per_step(args)
    unit = "prompts" if section == "grpo" else "examples"
    generations = ""
    if section == "grpo":
        generations = f" x {args.num_generations} generations ({per_step * args.num_generations} " \
                      f"completions of at most {args.max_completion_length} tokens)"
    how = f"{args.num_train_epochs:g} epochs"
    if args.max_steps and args.max_steps > 0:
        how = "max_steps"
    adapter = f"continue {recipe.init_adapter}" if recipe.init_adapter else \
        f"LoRA r={recipe.lora.r} alpha={recipe.lora.alpha} on {recipe.lora.target_modules}"
    precision = run_precision(args)
    vllm = f", vLLM {parts['vllm']:.2f}" if parts["vllm"] else ""
    lines = [
        f"plan: {section} ({'cuda' if cuda_available() else 'cpu'})",
        f"  precision {precision}",
        f"  model    {recipe.model.name} ({memory['parameters'] / 1e6:,.1f}M parameters), "
        f"{recipe.model.quantization}",
        f"  adapter  {adapter} (~{memory['lora_parameters'] / 1e6:.2f}M trainable)",
        f"  data     {recipe.data.dir}: {n_train} {unit} used of {n_pool}; {n_dev} dev examples",
        f"  steps    {steps} ({how}) · {per_step} {unit} per step{generations}",
        *(extra or []),
        f"  memory   ~{memory['peak_gib']:.1f} GiB peak ({memory['verdict']} in "
        f"{memory['memory_gib']:g} GiB; runtime {parts['runtime']:.2f}, weights "
        f"{parts['weights']:.2f}, adapter + optimizer {parts['adapter']:.2f}, activations "
        f"{parts['activations']:.2f}, logits {parts['logits']:.2f}, KV cache "
        f"{parts['kv_cache']:.2f}, prefill {parts['prefill']:.2f}{vllm}; "
        f"`recone-lite plan --device {memory['device']}` has the details)",
        f"  output   {args.output_dir}: {out_state}",
        f"  prompt   {prompt.n_tokens} tokens (one rendered example below)",
    ]
    for line in lines:
        log.info(line)
    log.console.print(prompt.text, markup=False, highlight=False)
    return {"steps": steps, "per_step": per_step, "memory_gib": memory["peak_gib"],
            "precision": precision.split()[0]}


def recipe_tokenizer(recipe: Recipe) -> Any:
    """Only the recipe's tokenizer (for a dry run): no weights are loaded."""
    check_spec(recipe.model)
    folder, gguf = recipe.model.source()
    return load_tokenizer(folder, gguf, trust_remote_code=recipe.model.trust_remote_code)


def run_precision(args: Any) -> str:
    """The precision a TRL config trains in, with the card's reason (for the dry run)."""
    if getattr(args, "use_cpu", False) or not cuda_available():
        return "fp32 (CPU)"
    chosen = "bf16" if args.bf16 else "fp16" if args.fp16 else "fp32"
    card = describe_precision(cuda_capability())
    return chosen if card.startswith(chosen) else f"{chosen} (the card: {card})"


def run_dir_state(out: Path) -> str:
    """How `train` would treat the output directory (for the dry run)."""
    if not out.exists() or not any(out.iterdir()):
        return "new run"
    folder = RunFolder(out)
    if not folder.is_run:
        return "not empty and holds no run: refused (choose a new or empty folder)"
    if folder.run.get("status") == "finished":
        return "holds a finished run (--overwrite to replace it)"
    checkpoint = latest_checkpoint(out)
    return f"unfinished run, --resume continues from {checkpoint.name}" if checkpoint else \
        "holds files of an unfinished run (--resume or --overwrite)"
