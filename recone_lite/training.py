"""What `sft` and `train` (GRPO) share: data, the model with its LoRA adapter, TRL's config
objects with the device settings, the SFT trainer, and the recipe of a run.

Both entry points read top to bottom in `sft.py` and `grpo.py`; this module holds the pieces, each
a small function. Beside it: the monitor (monitor.py), the loop `run_trainer` (train_loop.py),
TRL's batch rules (trl_batch.py), the dev evaluation (dev_eval.py), the dry run's plan
(dry_run.py), the process set-up (runtime.py: CPU threads, Unsloth first). Heavy imports (torch,
transformers, peft, trl) happen inside the functions.
"""

from __future__ import annotations

import collections
import dataclasses
import heapq
import math
import os
import random
import statistics
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from recone_lite import log
from recone_lite.baselines import train_ratings
from recone_lite.config import (
    DataSection,
    Recipe,
    check_integrations,
    check_report_to,
    load_recipe,
    report_to_names,
    resolve_recipe_path,
    trainer_defaults,
)
from recone_lite.errors import InputError, ReconeError, first_line
from recone_lite.gpu import (
    adapter_autocast,
    check_vllm_mode,
    check_vllm_quantization,
    check_zero_quantization,
    cuda_available,
    cuda_capability,
    describe_precision,
    is_quantized,
    is_unsloth,
    log_once,
    precision_settings,
    vllm_install_problem,
    world_size_from_env,
    zero_stage,
    zero_stage_from_env,
)
from recone_lite.models import adapter_config, load_model
from recone_lite.prepared import iter_split, read_scale
from recone_lite.prompts import PromptStyle, render_prompt
from recone_lite.run_folder import RunFolder
from recone_lite.runs import RECIPE_YAML
from recone_lite.runtime import cpu_threads, import_unsloth_first, quiet_progress_bars
from recone_lite.trl_batch import config_prompts_per_step, grpo_layout
from recone_lite.versions import package_version

# --- data ---------------------------------------------------------------------------------------


@dataclasses.dataclass
class Data:
    """A prepared data set as training needs it: the scale, the examples read, the fallback."""

    dir: Path
    scale: tuple[float, float]
    splits: dict[str, list[dict[str, Any]]]  # each split read, or a seeded sample of it
    sizes: dict[str, int]  # examples in each split file
    fallback: float  # the global mean of the train ratings: what a failed answer is scored as


EVAL_SAMPLE_SEED = 0  # the eval split's sample (data.eval_limit) is drawn with this seed


def load_data(section: DataSection, want: dict[str, int | None], seed: int) -> Data:
    """Read the splits in `want` (`{split: at most this many examples, None for all}`); a missing
    directory or split is one clear error. The train split is always streamed once, for the
    fallback (the global mean of its ratings, as `eval` computes it), and only a seeded sample
    of it is kept, so a 100k-example train file costs seconds and little memory. The eval split's
    sample is drawn with EVAL_SAMPLE_SEED, not `seed`."""
    folder = Path(section.dir)
    if not folder.is_dir():
        raise InputError(
            "no such prepared data directory (run `recone-lite data prepare` first)",
            path=folder, field="data.dir",
        )
    want = {section.train_split: 0, **want}
    for split in want:
        if not (folder / f"{split}.jsonl").is_file():
            raise InputError(
                f"the prepared directory has no {split}.jsonl (split {split!r} is missing; "
                "re-run `recone-lite data prepare` or fix data.dir)",
                path=folder, field="data.dir",
            )
    scale = read_scale(folder)
    splits, sizes, ratings = {}, {}, []
    for split, limit in want.items():
        # the eval sample is the same rows whatever the recipe's seed (EVAL_SAMPLE_SEED), so runs
        # that differ in their seed are measured on the same dev examples; training samples
        # follow the seed
        sample = Reservoir(limit, EVAL_SAMPLE_SEED if split == section.eval_split else seed)
        examples = (sample.add(e) for e in iter_split(folder, split))
        if split == section.train_split and section.train_recent and limit != 0:
            ratings = train_ratings(iter_split(folder, split))
            collections.deque((sample.add(e) for e in newest_per_user(
                iter_split(folder, split), section.train_recent)), maxlen=0)
        elif split == section.train_split:
            ratings = train_ratings(examples)
        else:
            collections.deque(examples, maxlen=0)
        if sample.seen == 0:
            raise InputError(f"{split}.jsonl is empty", path=folder, field="data.dir")
        splits[split], sizes[split] = sample.kept, sample.seen
    fallback = statistics.fmean(r for _, _, r in ratings) if ratings else sum(scale) / 2
    return Data(folder, scale, splits, sizes, fallback)


def newest_per_user(examples: Iterable[dict[str, Any]], n: int) -> Iterator[dict[str, Any]]:
    """Each user's newest `n` examples (by timestamp, the later line on a tie), in file order.

    >>> rows = [{"user_id": u, "timestamp": t} for u, t in [("a", 1), ("a", 3), ("b", 1),
    ...                                                      ("a", 2), ("b", 5)]]
    >>> [(r["user_id"], r["timestamp"]) for r in newest_per_user(rows, 2)]
    [('a', 3), ('b', 1), ('a', 2), ('b', 5)]
    """
    by_user: dict[str, list[tuple[float, int, dict[str, Any]]]] = collections.defaultdict(list)
    for index, example in enumerate(examples):  # a heap of the newest n per user: memory ~ n
        newest = by_user[str(example["user_id"])]
        heapq.heappush(newest, (float(example.get("timestamp") or 0), index, example))
        if len(newest) > n:
            heapq.heappop(newest)
    kept = sorted((index, example) for rows in by_user.values() for _, index, example in rows)
    yield from (example for _, example in kept)


class Reservoir:
    """A seeded uniform sample of at most `limit` items of a stream (all when `limit` is None).

    >>> sample = Reservoir(3, seed=0)
    >>> [sample.add(i) for i in range(10)][-1], sample.seen, len(sample.kept)
    (9, 10, 3)
    """

    def __init__(self, limit: int | None, seed: int) -> None:
        self.limit, self.rng = limit, random.Random(seed)
        self.kept: list[Any] = []
        self.seen = 0

    def add(self, item: Any) -> Any:
        self.seen += 1
        if self.limit is None or len(self.kept) < self.limit:
            self.kept.append(item)
        elif (j := self.rng.randrange(self.seen)) < self.limit:
            self.kept[j] = item
        return item


def render_rows(
    examples: list[dict[str, Any]], tokenizer: Any, section: DataSection, scale: tuple[float, float]
) -> list[tuple[dict[str, Any], Any]]:
    """`(example, RenderedPrompt)` pairs, rendered exactly as `predict` renders them (same chat
    template, same token budget); one log line counts the prompts that had to be shortened."""
    style = PromptStyle.of(section)
    rendered = [
        (e, render_prompt(e, tokenizer, section.template, scale, section.max_prompt_tokens, style))
        for e in examples
    ]
    shortened = sum(r.dropped_items > 0 or r.shortened_reviews > 0 for _, r in rendered)
    over = sum(r.over_budget for _, r in rendered)
    lengths = sorted(r.n_tokens for _, r in rendered)
    note = f"; {shortened} without their oldest history items (data.max_history or the " \
        "budget)" if shortened else ""
    note += f"; {over} over budget even with no history" if over else ""
    log.info(
        f"prompts: {len(rendered)} rendered, median {lengths[len(lengths) // 2]} tokens, max "
        f"{lengths[-1]} (data.max_prompt_tokens {section.max_prompt_tokens}){note}"
    )
    return rendered


def kept_history(example: dict[str, Any], rendered: Any) -> dict[str, Any]:
    """The example with only the history items its rendered prompt shows (the newest ones)."""
    history = list(example.get("history") or [])
    return {**example, "history": history[rendered.dropped_items :]}


# --- model and adapter --------------------------------------------------------------------------


def load_trainable(recipe: Recipe) -> tuple[Any, Any]:
    """The model with a trainable LoRA adapter (new, or `init_adapter` to continue), and its
    tokenizer. Unsloth's FastLanguageModel on CUDA when installed (see models.py), else peft."""
    quiet_progress_bars()
    if not cuda_available():
        cpu_threads()
    # peft asks the hub whether a local base (a GGUF's folder) changed its vocabulary on every
    # save and warns when it cannot tell; the adapters here never train the embeddings.
    warnings.filterwarnings("ignore", message="Could not find a config file in", module="peft")
    spec = recipe.model
    if recipe.init_adapter:
        if spec.adapter and spec.adapter != recipe.init_adapter:
            raise InputError("set model.adapter or init_adapter, not both", field="init_adapter")
        spec = spec.model_copy(update={"adapter": recipe.init_adapter})
    model, tokenizer = load_model(spec, for_training=True, vllm_lora_rank=vllm_lora_rank(recipe),
                                  vllm_memory=vllm_memory(recipe))
    if recipe.kind == "grpo":  # Unsloth may have failed to load and left transformers + bnb
        check_vllm_quantization(recipe.grpo, recipe.model.quantization, is_unsloth(model))
        check_vllm_mode(recipe.grpo, is_unsloth(model))
    if spec.adapter:  # models.py loaded it with is_trainable=True
        cfg = model.peft_config.get("default")
        log.info(
            f"adapter: continuing {spec.adapter} (r={getattr(cfg, 'r', '?')}, "
            f"alpha={getattr(cfg, 'lora_alpha', '?')}); the recipe's lora section is not used"
        )
        return (continue_with_unsloth(model, recipe) if is_unsloth(model) else model), tokenizer
    return add_lora(model, recipe), tokenizer


def vllm_lora_rank(recipe: Recipe) -> int | None:
    """The LoRA rank Unsloth's vLLM engine must serve when GRPO generates with vLLM (the
    continued adapter's own rank under `init_adapter`), else None."""
    if recipe.kind != "grpo" or not recipe.grpo.get("use_vllm"):
        return None
    adapter = recipe.init_adapter or recipe.model.adapter
    if adapter:
        return int(adapter_config(adapter).get("r") or recipe.lora.r)
    return recipe.lora.r


def vllm_memory(recipe: Recipe) -> float | None:
    """The GPU share Unsloth's colocated vLLM engine takes: the recipe's
    `grpo.vllm_gpu_memory_utilization`, else TRL's default, the number `plan` counts (Unsloth's
    own default, 0.5, would differ from both)."""
    if recipe.kind != "grpo" or not recipe.grpo.get("use_vllm"):
        return None
    share = recipe.grpo.get("vllm_gpu_memory_utilization")
    if share is None:
        share = trainer_defaults("grpo")["vllm_gpu_memory_utilization"]
    return float(share)


def check_gpu_path(recipe: Recipe) -> None:
    """The rules a run meets on GPUs, checked before any model loads (a dry run too): no 4-bit
    base under ZeRO-3 (announced by `accelerate launch`), no vLLM rollouts from a 4-bit base
    without Unsloth."""
    check_zero_quantization(zero_stage_from_env(), recipe.model.quantization)
    if recipe.kind == "grpo" and cuda_available():
        unsloth = package_version("unsloth") != "not installed"
        check_vllm_quantization(recipe.grpo, recipe.model.quantization, unsloth, unsloth)
        check_vllm_mode(recipe.grpo, unsloth)
        if recipe.grpo.get("use_vllm"):
            problem = vllm_install_problem(package_version("vllm"),
                                           package_version("vllm-bnb-plugin"),
                                           recipe.model.quantization)
            if problem:
                raise ReconeError(f"grpo.use_vllm: {problem}")


ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def wants_checkpointing(recipe: Recipe) -> bool:
    """`gradient_checkpointing` of the recipe's own trainer section (`sft:` for an SFT recipe,
    `grpo:` for GRPO and its warm-up); TRL's default (on) when the section is silent."""
    section = recipe.sft if recipe.kind == "sft" else recipe.grpo
    return bool(section.get("gradient_checkpointing", True))


def continue_with_unsloth(model: Any, recipe: Recipe) -> Any:
    """A continued adapter (`init_adapter`, e.g. SFT -> GRPO) on an Unsloth-loaded base gets what
    `FastLanguageModel.get_peft_model` gives a new one: Unsloth's `patch_peft_model` (fused LoRA
    kernels, Unsloth's gradient checkpointing, float32 LoRA weights, patched saving, the vLLM
    LoRA hooks), as Unsloth's own loader runs it after `PeftModel.from_pretrained(...,
    is_trainable=True)` (unsloth/models/loader.py, 2026.10.9). `get_peft_model` itself skips or
    refuses a model that already has LoRA; Unsloth's `from_pretrained(adapter_dir)` would take the
    base from adapter_config.json instead of the recipe and bypass models.adapter_mismatch."""
    from peft import PeftModelForCausalLM
    from unsloth import FastLanguageModel

    if not isinstance(model, PeftModelForCausalLM):  # patch_peft_model raises TypeError otherwise
        log.warn("the continued adapter is not a CAUSAL_LM adapter: training it without "
                 "Unsloth's fused LoRA kernels")
        return model
    mode: Any = "unsloth" if wants_checkpointing(recipe) else False
    try:  # the sequence-length rule get_peft_model applies first (unsloth/models/_utils.py)
        from unsloth.models._utils import apply_unsloth_gradient_checkpointing

        mode = apply_unsloth_gradient_checkpointing(
            mode, recipe.model.max_seq_length, model.get_input_embeddings().weight.dtype)
    except ImportError:
        pass
    return FastLanguageModel.patch_peft_model(model, use_gradient_checkpointing=mode)


def add_lora(model: Any, recipe: Recipe) -> Any:
    """A fresh LoRA adapter from the recipe's `lora:` section; QLoRA when the base is quantized."""
    lora = recipe.lora
    gradient_checkpointing = wants_checkpointing(recipe)
    if is_unsloth(model):
        from unsloth import FastLanguageModel

        targets = ALL_LINEAR if lora.target_modules == "all-linear" else lora.target_modules
        return FastLanguageModel.get_peft_model(
            model,
            r=lora.r,
            lora_alpha=lora.alpha,
            lora_dropout=lora.dropout,
            target_modules=targets,
            bias="none",
            use_gradient_checkpointing="unsloth" if gradient_checkpointing else False,
            random_state=recipe.seed,
        )
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    quantized = is_quantized(model)
    if quantized:
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=gradient_checkpointing
        )
    config = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
        bias="none",
        task_type="CAUSAL_LM",
    )
    autocast = adapter_autocast(zero_stage(), quantized)
    if not autocast:
        log.info("adapter: LoRA weights in the base's dtype under ZeRO-3 (TRL #6089)")
    return get_peft_model(model, config, autocast_adapter_dtype=autocast)


def check_trainable(model: Any) -> tuple[int, int]:
    """`(trainable, total)` parameter counts; refuse a model whose adapter would not learn.

    A LoRA adapter loaded without `is_trainable=True` is frozen: training it runs, logs a reward
    and changes nothing. That has happened in public reimplementations; here it stops the run.
    """
    trainable = total = adapter = 0
    for name, param in model.named_parameters():
        count = param.numel()
        total += count
        if param.requires_grad:
            trainable += count
            adapter += count if "lora_" in name else 0
    if trainable == 0 or adapter == 0:
        raise ReconeError(
            f"the LoRA adapter has no trainable parameters ({trainable:,} of {total:,} trainable, "
            f"{adapter:,} in LoRA layers): it would train nothing. Load adapters with "
            "is_trainable=True (init_adapter does) and check lora.target_modules"
        )
    log.info(
        f"trainable parameters: {trainable:,} of {total:,} ({100 * trainable / total:.2f}%)"
    )
    return trainable, total


# --- TRL config objects -------------------------------------------------------------------------


def device_settings(section: str, values: dict[str, Any], on_cuda: bool,
                    capability: tuple[int, int] | None = None) -> dict[str, Any]:
    """TRL settings that the device forces. Without CUDA: fp32 on the CPU, no gradient
    checkpointing (bf16 on CPU made a step ~8x slower; checkpointing only saves GPU memory).
    On CUDA, the precision of the card's compute `capability` (gpu.precision_settings): fp16
    instead of bf16 below 8.0 (T4, RTX 20xx), where Unsloth loads fp16 and bf16 is emulated.

    >>> device_settings("grpo", {"bf16": True}, on_cuda=False)
    {'bf16': False, 'fp16': False, 'use_cpu': True, 'gradient_checkpointing': False}
    >>> device_settings("grpo", {}, on_cuda=True, capability=(8, 9))
    {}
    >>> device_settings("sft", {"bf16": True}, on_cuda=True, capability=(7, 5))
    {'bf16': False, 'fp16': True}
    """
    if on_cuda:
        forced = precision_settings(values, capability)
        if forced:
            log_once(f"precision: {describe_precision(capability)}: training with fp16")
        return forced
    if values.get("use_vllm"):
        raise InputError("use_vllm needs CUDA; remove it to generate with transformers on CPU",
                         field=f"{section}.use_vllm")
    forced = {"bf16": False, "fp16": False, "use_cpu": True, "gradient_checkpointing": False}
    changed = [f"{k}={values[k]}" for k in forced if k in values and values[k] != forced[k]]
    if changed:
        log.info(f"no CUDA: {section}.{', '.join(changed)} replaced by the CPU settings")
    return forced


def default_report_to() -> str:
    """TensorBoard when it is installed (TRL's own default is no reporting)."""
    import importlib.util

    return "tensorboard" if importlib.util.find_spec("tensorboard") else "none"


def trainer_config(section: str, values: dict[str, Any], out: Path, seed: int) -> Any:
    """`trl.GRPOConfig` / `trl.SFTConfig` from the recipe's section, with our defaults under it
    and the device settings over it. Bad combinations are an InputError naming the section."""
    import trl

    cls = trl.GRPOConfig if section == "grpo" else trl.SFTConfig
    if values.get("eval_strategy", "no") != "no":
        raise InputError(
            "leave eval_strategy at 'no': recone-lite evaluates on the dev split with real "
            f"generation every {section}.eval_steps",
            field=f"{section}.eval_strategy",
        )
    defaults = {
        "logging_steps": 1,
        "report_to": default_report_to(),
        "disable_tqdm": True,  # the monitor prints one line per logging step instead
        "seed": seed,
        "save_strategy": "steps",
    }
    on_cuda = cuda_available()
    capability = cuda_capability() if on_cuda else None
    merged = {**defaults, **values, **device_settings(section, values, on_cuda, capability)}
    check_integrations(section, merged["report_to"])  # before any model loads, dry runs too
    if "tensorboard" in report_to_names(merged["report_to"]) or merged["report_to"] == "all":
        # transformers 5 takes TensorBoard's folder from this variable only (else OUT/runs/):
        # pinned inside the run folder, so a set variable never sends the logs elsewhere
        os.environ["TENSORBOARD_LOGGING_DIR"] = str(Path(out) / "runs")
    if section == "grpo":  # the batch layout at the launcher's world size, with its fix
        layout = grpo_layout(merged, world_size_from_env(), trainer_defaults(section))
        if layout.problem:
            raise InputError(f"{layout.problem} at {layout.world_size} process(es); override "
                             f"{' '.join(layout.fix)}", field=section)
    try:
        return cls(output_dir=str(out), **merged)
    except (ValueError, TypeError) as err:
        raise InputError(first_line(err), field=section) from None


def total_steps(args: Any, n_examples: int) -> int:
    """The optimizer steps a run will take: max_steps, else epochs over the examples."""
    if args.max_steps and args.max_steps > 0:
        return int(args.max_steps)
    return max(math.ceil(n_examples * args.num_train_epochs / config_prompts_per_step(args)), 1)


# --- the SFT trainer: `sft` and GRPO's warm-up (warmup.py) ----------------------------------------


def sft_row(messages: list[dict[str, str]], answer: str) -> dict[str, Any]:
    """A conversational prompt/completion row (TRL then puts the loss on the completion only).

    >>> sft_row([{"role": "user", "content": "U"}], "<rate>4</rate>")["completion"]
    [{'role': 'assistant', 'content': '<rate>4</rate>'}]
    """
    return {"prompt": messages, "completion": [{"role": "assistant", "content": answer}]}


def sft_trainer(model: Any, tokenizer: Any, rows: list[dict[str, Any]], args: Any,
                callbacks: list[Any] | None = None) -> Any:
    """An `SFTTrainer` on the rows, with the model's adapter already in place (built, not trained:
    the caller runs `train()`)."""
    from datasets import Dataset
    from transformers import PrinterCallback
    from trl import SFTTrainer

    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        callbacks=callbacks,
    )
    trainer.remove_callback(PrinterCallback)  # the monitor prints one line per log instead
    return trainer


def sft_config(values: dict[str, Any], recipe: Recipe, out: Path) -> Any:
    """`trl.SFTConfig` with loss on the completion only and max_length from the model spec."""
    defaults = {"completion_only_loss": True, "max_length": recipe.model.max_seq_length}
    return trainer_config("sft", {**defaults, **values}, out, recipe.seed)


# --- the recipe of a run --------------------------------------------------------------------------


def resolve_recipe(
    name: str, overrides: list[str] | None, out: Path | None, init_adapter: Path | None,
    *, trust_remote_code: bool = False,
) -> Recipe:
    """The recipe with the command line's overrides, `--out` and `--init-adapter` applied (the
    run saves it so, and `--resume` compares against it). Unsloth is imported first, before the
    recipe's validation imports trl. A recipe asking for `model.trust_remote_code` is refused
    unless the command line said `--trust-remote-code` (`trust_remote_code`)."""
    import_unsloth_first()
    recipe = load_recipe(name, overrides)
    if recipe.model.trust_remote_code and not trust_remote_code:
        asked = [o for o in overrides or [] if o.split("=", 1)[0].strip() ==
                 "model.trust_remote_code"]
        where = f"the override {asked[-1]}" if asked else str(resolve_recipe_path(name))
        raise InputError(f"{where} asks for model.trust_remote_code: true, which runs the model "
                         "repository's own Python code; pass --trust-remote-code on the command "
                         "line to allow it")
    check_report_to(recipe, resolve_recipe_path(name))  # trainer_config checks again, for the API
    update: dict[str, Any] = {}
    path = resolve_recipe_path(name)
    if out is None and path.name == RECIPE_YAML and RunFolder(path.parent).is_run:
        out = path.parent  # a run's own recipe.yaml (run.json beside it): that run, wherever it
        # has been moved to; a recipe.yaml of someone's own keeps the recipe's output_dir
    if out is not None:
        update["output_dir"] = str(out)
    if init_adapter is not None:
        update["init_adapter"] = str(init_adapter)
    return recipe.model_copy(update=update) if update else recipe




def run_inputs(recipe: Recipe, recipe_name: str = "", traces: Path | None = None
               ) -> dict[str, Path | str | None]:
    """What a run reads, by the name the user gave it (the flag or the recipe key): `train` and
    `sft` refuse an --out folder that holds one of them with --overwrite or --resume
    (`runs.check_run_out`)."""
    found: dict[str, Path | str | None] = {}
    if recipe_name:
        try:
            found["--recipe"] = resolve_recipe_path(recipe_name)
        except InputError:
            pass  # a recipe given as an object, not a file
    found["data.dir"] = recipe.data.dir
    found["init_adapter"] = recipe.init_adapter
    found["model.adapter"] = recipe.model.adapter
    if Path(recipe.model.name).exists():  # a local model folder or GGUF file, not a hub id
        found["model.name"] = recipe.model.name
    if traces is not None:
        found["--traces"] = traces
        found["the traces' cache"] = Path(f"{traces}.cache")
    return found
