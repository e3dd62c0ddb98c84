"""What `sft` and `train` (GRPO) share: data, the model with its LoRA adapter, TRL's config
objects with the device settings, the dev evaluation with real generation, and the monitor.

Both entry points read top to bottom in `sft.py` and `grpo.py`; this module holds the pieces, each
a small function. Heavy imports (torch, transformers, peft, trl) happen inside the functions.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import math
import random
import statistics
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from recone_lite import log
from recone_lite.config import DataSection, Recipe, check_integrations
from recone_lite.errors import InputError, ReconeError
from recone_lite.gpu import (
    check_vllm_quantization,
    check_zero_quantization,
    cuda_capability,
    grpo_layout,
    world_size_from_env,
    zero_stage_from_env,
)
from recone_lite.prepared import iter_split, read_scale
from recone_lite.runs import RunRecord, write_log_history

# --- data ---------------------------------------------------------------------------------------


@dataclasses.dataclass
class Data:
    """A prepared data set as training needs it: the scale, the examples read, the fallback."""

    dir: Path
    scale: tuple[float, float]
    splits: dict[str, list[dict[str, Any]]]  # each split read, or a seeded sample of it
    sizes: dict[str, int]  # examples in each split file
    fallback: float  # the global mean of the train ratings: what a failed answer is scored as


def load_data(section: DataSection, want: dict[str, int | None], seed: int) -> Data:
    """Read the splits in `want` (`{split: at most this many examples, None for all}`); a missing
    directory or split is one clear error. The train split is always streamed once, for the
    fallback (the global mean of its ratings, as `eval` computes it), and only a seeded sample
    of it is kept, so a 100k-example train file costs seconds and little memory."""
    from recone_lite.baselines import train_ratings

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
        sample = Reservoir(limit, seed)
        examples = (sample.add(e) for e in iter_split(folder, split))
        if split == section.train_split:
            ratings = train_ratings(examples)
        else:
            collections.deque(examples, maxlen=0)
        if sample.seen == 0:
            raise InputError(f"{split}.jsonl is empty", path=folder, field="data.dir")
        splits[split], sizes[split] = sample.kept, sample.seen
    fallback = statistics.fmean(r for _, _, r in ratings) if ratings else sum(scale) / 2
    return Data(folder, scale, splits, sizes, fallback)


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
    from recone_lite.prompts import PromptStyle, render_prompt

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
    from recone_lite.models import load_model

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
    model, tokenizer = load_model(spec, for_training=True, vllm_lora_rank=vllm_lora_rank(recipe))
    if recipe.kind == "grpo":  # Unsloth may have failed to load and left transformers + bnb
        check_vllm_quantization(recipe.grpo, recipe.model.quantization, is_unsloth(model))
    if spec.adapter:  # models.py loaded it with is_trainable=True
        cfg = model.peft_config.get("default")
        log.info(
            f"adapter: continuing {spec.adapter} (r={getattr(cfg, 'r', '?')}, "
            f"alpha={getattr(cfg, 'lora_alpha', '?')}); the recipe's lora section is not used"
        )
        return model, tokenizer
    return add_lora(model, recipe), tokenizer


def vllm_lora_rank(recipe: Recipe) -> int | None:
    """The LoRA rank Unsloth's vLLM engine must serve when GRPO generates with vLLM (the
    continued adapter's own rank under `init_adapter`), else None."""
    if recipe.kind != "grpo" or not recipe.grpo.get("use_vllm"):
        return None
    adapter = recipe.init_adapter or recipe.model.adapter
    if adapter:
        from recone_lite.models import adapter_config

        return int(adapter_config(adapter).get("r") or recipe.lora.r)
    return recipe.lora.r


def check_gpu_path(recipe: Recipe) -> None:
    """The rules a run meets on GPUs, checked before any model loads (a dry run too): no 4-bit
    base under ZeRO-3 (announced by `accelerate launch`), no vLLM rollouts from a 4-bit base
    without Unsloth."""
    from recone_lite.versions import package_version

    check_zero_quantization(zero_stage_from_env(), recipe.model.quantization)
    if recipe.kind == "grpo" and cuda_available():
        unsloth = package_version("unsloth") != "not installed"
        check_vllm_quantization(recipe.grpo, recipe.model.quantization, unsloth)


def quiet_progress_bars() -> None:
    """No per-tensor / per-example progress bars in logs that are not a terminal (CI, files):
    the monitor prints one line per logged step instead."""
    import sys

    if sys.stderr.isatty():
        return
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()


ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def is_unsloth(model: Any) -> bool:
    """Whether Unsloth loaded this model (it records its version in the config)."""
    config = getattr(getattr(model, "get_base_model", lambda: model)(), "config", None)
    return bool(getattr(config, "unsloth_version", None)) or "unsloth" in type(model).__module__


def wants_checkpointing(recipe: Recipe) -> bool:
    """`gradient_checkpointing` of the recipe's own trainer section (`sft:` for an SFT recipe,
    `grpo:` for GRPO and its format warm-up); TRL's default (on) when the section is silent."""
    section = recipe.sft if recipe.kind == "sft" else recipe.grpo
    return bool(section.get("gradient_checkpointing", True))


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

    if getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False):
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
    return get_peft_model(model, config)


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


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def cpu_threads() -> int:
    """On CPU, use the cores that are idle: on a machine shared with other busy processes, more
    threads than free cores make every parallel op wait for a descheduled thread (measured here:
    a step twice as slow with 2 threads as with 1 under a load of 5 on 2 cores), while on an idle
    machine every core helps (a GRPO backward pass 2.0x faster on 2 threads than on 1).
    OMP_NUM_THREADS, when set, wins. Returns the thread count set."""
    import os

    import torch

    if os.environ.get("OMP_NUM_THREADS"):
        return torch.get_num_threads()
    cores = os.cpu_count() or 1
    others = busy_threads()
    threads = min(torch.get_num_threads(), max(1, cores - others))
    if threads < torch.get_num_threads():
        log.info(f"cpu: {threads} thread(s): {others} busy thread(s) of other processes on "
                 f"{cores} cores (set OMP_NUM_THREADS to choose)")
        torch.set_num_threads(threads)
    return threads


def busy_threads(samples: int = 5, interval: float = 0.1) -> int:
    """Threads of other processes that are running or runnable right now (state R in
    /proc/PID/task/TID/stat), the median over a few samples. Not the load average, which trails by
    a minute and counts this process's own work before training (data loading) as another's;
    not /proc/loadavg's running count, which includes this process's helper threads."""
    import os
    import time

    me = str(os.getpid())
    counts = []
    for _ in range(samples):
        running = 0
        try:
            pids = [p for p in os.listdir("/proc") if p.isdigit() and p != me]
        except OSError:  # not Linux: fall back on the load average
            return round(os.getloadavg()[0])
        for pid in pids:
            try:
                for tid in os.listdir(f"/proc/{pid}/task"):
                    with open(f"/proc/{pid}/task/{tid}/stat", "rb") as stat:
                        running += stat.read().rsplit(b")", 1)[1].split()[0] == b"R"
            except OSError:  # the process ended meanwhile
                continue
        counts.append(running)
        time.sleep(interval)
    return round(statistics.median(counts))


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
        from recone_lite.gpu import describe_precision, log_once, precision_settings

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
    if section == "grpo":  # the batch layout at the launcher's world size, with its fix
        layout = grpo_layout(merged, world_size_from_env(), trainer_defaults(section))
        if layout.problem:
            raise InputError(f"{layout.problem} at {layout.world_size} process(es); override "
                             f"{' '.join(layout.fix)}", field=section)
    try:
        return cls(output_dir=str(out), **merged)
    except (ValueError, TypeError) as err:
        raise InputError(str(err).strip().splitlines()[0], field=section) from None


def trainer_defaults(section: str) -> dict[str, Any]:
    """The defaults of TRL's GRPOConfig / SFTConfig fields."""
    import trl

    cls = trl.GRPOConfig if section == "grpo" else trl.SFTConfig
    return {f.name: f.default for f in dataclasses.fields(cls)
            if f.default is not dataclasses.MISSING}


def prompts_per_step(args: Any) -> int:
    """Distinct prompts per optimizer step (GRPO: completions per step / num_generations)."""
    completions = args.per_device_train_batch_size * args.gradient_accumulation_steps
    completions *= max(args.world_size, 1)
    return max(completions // getattr(args, "num_generations", 1), 1)


def total_steps(args: Any, n_examples: int) -> int:
    """The optimizer steps a run will take: max_steps, else epochs over the examples."""
    if args.max_steps and args.max_steps > 0:
        return int(args.max_steps)
    return max(math.ceil(n_examples * args.num_train_epochs / prompts_per_step(args)), 1)


# --- dev evaluation with real generation --------------------------------------------------------


@contextlib.contextmanager
def generation_mode(model: Any, tokenizer: Any) -> Iterator[None]:
    """Eval mode, left padding and the KV cache for generation; training state restored after."""
    was_training, side = model.training, tokenizer.padding_side
    config = getattr(model, "config", None)
    use_cache = getattr(config, "use_cache", None)
    unsloth = is_unsloth(model)
    if unsloth:
        from unsloth import FastLanguageModel

        FastLanguageModel.for_inference(model)
    model.eval()
    tokenizer.padding_side = "left"
    if config is not None:
        config.use_cache = True
    try:
        yield
    finally:
        tokenizer.padding_side = side
        if config is not None and use_cache is not None:
            config.use_cache = use_cache
        if was_training:
            if unsloth:
                FastLanguageModel.for_training(model)
            model.train()


def evaluate(
    model: Any, tokenizer: Any, examples: list[dict[str, Any]], recipe: Recipe, data: Data
) -> dict[str, Any]:
    """Greedy generation on `examples` as `predict` does it; MAE, RMSE, coverage (metrics.py)
    under the recipe's readout, the format rate and the mean completion length. With the
    expected readout the text readout's MAE/RMSE come along (`text_mae`, `text_rmse`): both
    read the same completions."""
    from recone_lite.metrics import summarize
    from recone_lite.predict import hf_backend
    from recone_lite.prompts import PromptStyle
    from recone_lite.readout import expected_value, scale_values
    from recone_lite.rewards import format_ok, parse_rating

    template, readout = recipe.data.template, recipe.evaluation.readout
    run = hf_backend(
        model,
        tokenizer,
        template=template,
        scale=data.scale,
        max_prompt_tokens=recipe.data.max_prompt_tokens,
        max_new_tokens=recipe.evaluation.max_new_tokens,
        temperature=0.0,
        batch_size=recipe.evaluation.batch_size,
        style=PromptStyle.of(recipe.data),
        readout=readout,
    )
    with generation_mode(model, tokenizer):
        samples = [s[0] for s in run(iter(examples))]
    truths = [float(e["rating"]) for e in examples]
    texts = [parse_rating(s.text, data.scale) for s in samples]
    predictions = texts
    if readout == "expected":
        values = scale_values(data.scale)
        predictions = [None if t is None else expected_value(values, s.probs)
                       for t, s in zip(texts, samples, strict=True)]
    report = summarize(predictions, truths, data.scale, data.fallback)
    formatted = sum(format_ok(s.text, template, data.scale) for s in samples)
    clipped = sum(s.tokens >= recipe.evaluation.max_new_tokens for s in samples)
    result = {
        "n": report["n"],
        "readout": readout,
        "mae": report["mae"],
        "rmse": report["rmse"],
        "coverage": report["coverage"],
        "mae_with_failures": report["mae_with_failures"],
        "format_rate": round(formatted / len(samples), 4),
        "mean_tokens": round(statistics.fmean(s.tokens for s in samples), 1),
        "clipped_ratio": round(clipped / len(samples), 4),
        "histogram": report["histogram"],
        "example": samples[0].text,
    }
    if readout == "expected":
        text_report = summarize(texts, truths, data.scale, data.fallback)
        result["text_mae"], result["text_rmse"] = text_report["mae"], text_report["rmse"]
    return result


def metrics_line(metrics: dict[str, Any]) -> str:
    """Dev metrics on one line.

    >>> metrics_line({"mae": 0.81, "rmse": 1.02, "coverage": 0.9, "format_rate": 0.85,
    ...               "mean_tokens": 61.0})
    'MAE 0.810 · RMSE 1.020 · coverage 0.90 · format 0.85 · 61 tokens'
    """
    def num(key: str, digits: int) -> str:
        value = metrics.get(key)
        return "n/a" if value is None else f"{value:.{digits}f}"

    text = "" if "text_mae" not in metrics else \
        f" (text readout MAE {num('text_mae', 3)} · RMSE {num('text_rmse', 3)})"
    return (
        f"MAE {num('mae', 3)} · RMSE {num('rmse', 3)} · coverage {num('coverage', 2)} · "
        f"format {num('format_rate', 2)} · {metrics.get('mean_tokens', 0):.0f} tokens{text}"
    )


# --- the monitor: one line per log, alarms, dev evaluation, run.json on save ---------------------


@dataclasses.dataclass
class Alarm:
    """A warning condition read from TRL's logs: `test(history) -> message | None`."""

    name: str
    test: Callable[[list[dict[str, Any]]], str | None]
    active: bool = False


def _series(history: list[dict[str, Any]], key: str) -> list[float]:
    return [h[key] for h in history if isinstance(h.get(key), (int, float))]


def zero_std_alarm(
    history: list[dict[str, Any]], steps: int = 10, share: float = 0.5
) -> str | None:
    """More than half of the groups had identical rewards in each of the last `steps` logs.

    >>> zero_std_alarm([{"frac_reward_zero_std": 0.75}] * 10)[:40]
    'rewards identical within 75% of groups f'
    >>> zero_std_alarm([{"frac_reward_zero_std": 0.75}] * 9) is None
    True
    """
    values = _series(history, "frac_reward_zero_std")[-steps:]
    if len(values) == steps and min(values) > share:
        return (
            f"rewards identical within {values[-1]:.0%} of groups for {steps} logged steps: no "
            "learning signal there (raise temperature or num_generations; if the format reward "
            "is -0.5 everywhere, warm up the format with SFT first)"
        )
    return None


def clipped_alarm(history: list[dict[str, Any]], share: float = 0.3) -> str | None:
    """More than `share` of the last step's completions were cut at max_completion_length.

    >>> clipped_alarm([{"completions/clipped_ratio": 0.5}])[:28]
    '50% of completions hit grpo.'
    """
    values = _series(history, "completions/clipped_ratio")
    if values and values[-1] > share:
        return (
            f"{values[-1]:.0%} of completions hit grpo.max_completion_length: truncated answers "
            "have no <rate> block and score as format failures (raise max_completion_length)"
        )
    return None


def format_falling_alarm(
    history: list[dict[str, Any]], window: int = 5, drop: float = 0.2
) -> str | None:
    """The format rate, averaged over `window` logs, fell by more than `drop` from its best.

    >>> rates = [0.9] * 5 + [0.5] * 5
    >>> format_falling_alarm([{"format_rate": r} for r in rates])
    'format rate fell from 0.90 to 0.50 (5-log means): the policy is drifting away from the \
tags (lower grpo.learning_rate, check for reward hacking in the logged completions)'
    """
    values = _series(history, "format_rate")
    if len(values) < 2 * window:
        return None
    means = [statistics.fmean(values[i - window : i]) for i in range(window, len(values) + 1)]
    best, now = max(means), means[-1]
    if best - now > drop:
        return (
            f"format rate fell from {best:.2f} to {now:.2f} ({window}-log means): the policy is "
            "drifting away from the tags (lower grpo.learning_rate, check for reward hacking in "
            "the logged completions)"
        )
    return None


ALARMS = (zero_std_alarm, clipped_alarm, format_falling_alarm)

# What the monitor prints from TRL's log entries, in order: (key, label, digits).
SHOWN = (
    ("reward", "reward", 3),
    ("reward_std", "±", 3),
    ("format_rate", "format", 2),
    ("parse_rate", "parsed", 2),
    ("frac_reward_zero_std", "flat groups", 2),
    ("completions/clipped_ratio", "clipped", 2),
    ("completions/mean_length", "tokens", 0),
    ("loss", "loss", 4),
    ("entropy", "entropy", 3),
    ("step_time", "s/step", 1),
)


def log_line(step: int, max_steps: int, logs: dict[str, Any]) -> str:
    """One logged step as the monitor prints it.

    >>> log_line(3, 20, {"reward": 0.4123, "reward_std": 0.3, "rewards/format/mean": 0.5})
    'step 3/20 · reward 0.412 · ± 0.300 · format/mean 0.500'
    """
    parts = [f"step {step}/{max_steps}"]
    for key, label, digits in SHOWN:
        if isinstance(logs.get(key), (int, float)):
            parts.append(f"{label} {logs[key]:.{digits}f}")
    for key, value in logs.items():
        if key.startswith("rewards/") and key.endswith("/mean") and isinstance(value, float):
            parts.append(f"{key.removeprefix('rewards/')} {value:.3f}")
    return " · ".join(parts)


def make_monitor(
    record: RunRecord | None,
    evaluate_dev: Callable[[], dict[str, Any]] | None = None,
    eval_steps: int | None = None,
) -> Any:
    """A TrainerCallback: prints each log line, raises alarms, evaluates on dev every
    `eval_steps` and logs it (`dev/mae`, ...) through the trainer, and rewrites run.json after
    each checkpoint. Set `.trainer` before training."""
    from transformers import TrainerCallback

    class Monitor(TrainerCallback):
        def __init__(self) -> None:
            self.trainer: Any = None
            self.history: list[dict[str, Any]] = []
            self.alarms = [Alarm(a.__name__.removesuffix("_alarm"), a) for a in ALARMS]
            # a resumed run keeps what the killed one recorded
            earlier = record.record if record is not None else {}
            self.raised: list[dict[str, Any]] = list(earlier.get("alarms") or [])
            self.dev: list[dict[str, Any]] = list(earlier.get("dev_history") or [])
            self.step: Callable[..., None] = lambda *a, **k: None  # run_trainer's bar
            self.first, self.started = 0, time.monotonic()

        def on_log(self, args, state, control, logs=None, **kwargs):
            logs = logs or {}
            if any(k.startswith("dev/") for k in logs) or "train_runtime" in logs:
                return
            self.history.append(dict(logs))
            log.info(log_line(state.global_step, state.max_steps, logs))
            for alarm in self.alarms:
                message = alarm.test(self.history)
                if message and not alarm.active:
                    log.warn(f"step {state.global_step}: {message}")
                    self.raised.append(
                        {"step": state.global_step, "alarm": alarm.name, "message": message}
                    )
                alarm.active = message is not None

        def on_train_begin(self, args, state, control, **kwargs):
            self.first, self.started = state.global_step, time.monotonic()
            self.step(0, total=state.max_steps - state.global_step)

        def on_step_end(self, args, state, control, **kwargs):
            step = state.global_step
            seconds = (time.monotonic() - self.started) / max(step - self.first, 1)
            self.step(note=f"step {step}/{state.max_steps} · {seconds:.1f} s/step")
            if evaluate_dev and eval_steps and step % eval_steps == 0 and step < state.max_steps:
                self.evaluate(step)  # the last step's evaluation is run_trainer's final one

        def evaluate(self, step: int) -> dict[str, Any]:
            metrics = evaluate_dev()
            self.dev.append({"step": step, **metrics})
            log.info(f"dev @ step {step}: {metrics_line(metrics)}")
            if self.trainer is not None:
                model = self.trainer.model
                was_training = model.training
                model.eval()  # TRL's log() then flushes no pending train metrics into this entry
                try:
                    self.trainer.log({f"dev/{k}": v for k, v in metrics.items()
                                      if isinstance(v, (int, float))})
                finally:
                    model.train(was_training)
            return metrics

        def on_save(self, args, state, control, **kwargs):
            if record is not None:
                record.update(global_step=state.global_step, max_steps=state.max_steps,
                              dev_history=self.dev, alarms=self.raised)

    return Monitor()


def run_trainer(
    trainer: Any,
    monitor: Any,
    record: RunRecord,
    *,
    checkpoint: Path | None,
    section: str,
    eval_at_start: bool,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train (from `checkpoint` when resuming), save the final adapter and tokenizer at the top of
    the run directory, evaluate on dev, write log.jsonl and the finished run.json.

    Shared by `sft` and `train`: the same run directory, resume rule and run.json for both.
    """
    out = Path(trainer.args.output_dir)
    monitor.trainer = trainer
    if checkpoint is None and eval_at_start:
        record.update(dev_before=_scalars(monitor.evaluate(0)))
    record.update(**(extra or {}))
    if checkpoint is not None:
        log.info(f"resuming from {checkpoint}")
    with explain_oom(section), log.progress(section, unit="steps") as monitor.step:
        trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    trainer.save_model(str(out))
    state = trainer.state
    final = monitor.evaluate(state.global_step)
    write_log_history(out, state.log_history)
    lengths = _series(monitor.history, "completions/mean_length")
    step_times = _series(monitor.history, "step_time")
    result = record.finish(
        mean_step_time_s=round(statistics.fmean(step_times), 2) if step_times else None,
        peak_gpu_memory_gib=peak_gpu_memory(),
        global_step=state.global_step,
        max_steps=state.max_steps,
        train_samples_seen=state.global_step * prompts_per_step(trainer.args),
        mean_output_tokens=round(statistics.fmean(lengths), 1) if lengths else final["mean_tokens"],
        dev_metrics=final,
        dev_history=[_scalars(d) for d in monitor.dev],
        alarms=monitor.raised,
    )
    log.info(f"done: {out} (adapter, recipe.yaml, run.json); dev {metrics_line(final)}")
    return result


def peak_gpu_memory() -> float | None:
    """Peak memory torch allocated on the GPU in this process, GiB (None on CPU)."""
    import torch

    if not torch.cuda.is_available():
        return None
    return round(torch.cuda.max_memory_allocated() / 1024**3, 2)


def _scalars(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in metrics.items() if k not in ("histogram", "example")}


def oom_message(section: str) -> str:
    generation = "grpo.num_generations, grpo.max_completion_length, " if section == "grpo" else ""
    knobs = (
        f"{section}.per_device_train_batch_size (raise gradient_accumulation_steps to keep the "
        f"batch), {generation}data.max_prompt_tokens, model.quantization: 4bit, lora.r, "
        f"{section}.gradient_checkpointing: true, evaluation.batch_size"
    )
    return f"out of GPU memory; lower one of: {knobs}"


@contextlib.contextmanager
def explain_oom(section: str) -> Iterator[None]:
    """Turn CUDA's out-of-memory error into a one-line message naming the recipe knobs."""
    import torch

    try:
        yield
    except torch.cuda.OutOfMemoryError:
        raise ReconeError(oom_message(section)) from None
    except RuntimeError as err:
        if "out of memory" in str(err).lower():
            raise ReconeError(oom_message(section)) from None
        raise


# --- dry run: the plan ----------------------------------------------------------------------------


def import_unsloth_first() -> None:
    """On CUDA with the `gpu` extra, import Unsloth before transformers / peft / trl are used, so
    its patches (FastLanguageModel, and TRL's trainers: the old PatchFastRL) apply. No-op on CPU."""
    from recone_lite.versions import cuda_available as has_cuda
    from recone_lite.versions import package_version

    if package_version("unsloth") == "not installed" or not has_cuda():
        return
    try:
        import unsloth  # noqa: F401
        from unsloth import FastLanguageModel

        patch = getattr(unsloth, "PatchFastRL", None)
        if patch is not None:  # older Unsloth; newer ones patch TRL on import
            patch("GRPO", FastLanguageModel)
    except Exception as err:  # a version clash: models.py falls back to transformers
        log.warn(f"Unsloth did not import ({err}); training with transformers + peft")


def resolve_recipe(
    name: str, overrides: list[str] | None, out: Path | None, init_adapter: Path | None
) -> Recipe:
    """The recipe with the command line's overrides, `--out` and `--init-adapter` applied (the
    run saves it so, and `--resume` compares against it). Unsloth is imported first, before the
    recipe's validation imports trl."""
    from recone_lite.config import check_report_to, load_recipe, resolve_recipe_path

    import_unsloth_first()
    recipe = load_recipe(name, overrides)
    check_report_to(recipe, resolve_recipe_path(name))  # trainer_config checks again, for the API
    update: dict[str, Any] = {}
    if out is not None:
        update["output_dir"] = str(out)
    if init_adapter is not None:
        update["init_adapter"] = str(init_adapter)
    return recipe.model_copy(update=update) if update else recipe


def load_tokenizer(recipe: Recipe) -> Any:
    """Only the tokenizer (for a dry run): no weights are loaded."""
    from transformers import AutoTokenizer

    from recone_lite.models import check_spec

    check_spec(recipe.model)
    folder, gguf = recipe.model.source()
    kwargs = {"gguf_file": gguf} if gguf else {}
    try:
        return AutoTokenizer.from_pretrained(
            folder, trust_remote_code=recipe.model.trust_remote_code, **kwargs
        )
    except OSError as err:
        raise InputError(f"cannot load the tokenizer of {recipe.model.name}: "
                         f"{str(err).strip().splitlines()[0]}", field="model.name") from None


def memory_estimate(recipe: Recipe, args: Any, section: str) -> dict[str, float]:
    """A rough peak memory in GiB from the model's config alone (a skeleton on the meta device):
    weights, adapter with its gradients and Adam moments, activations and logits of one micro
    batch, and the KV cache of one generation batch (GRPO). Good to a factor of ~1.5."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    folder, gguf = recipe.model.source()
    kwargs = {"gguf_file": gguf} if gguf else {}
    config = AutoConfig.from_pretrained(
        folder, trust_remote_code=recipe.model.trust_remote_code, **kwargs
    )
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config)
    params = sum(p.numel() for p in skeleton.parameters())
    targets = recipe.lora.target_modules
    lora = 0
    for name, module in skeleton.named_modules():
        if not isinstance(module, torch.nn.Linear) or name.endswith("lm_head"):
            continue
        if targets == "all-linear" or name.rsplit(".", 1)[-1] in targets:
            lora += recipe.lora.r * (module.in_features + module.out_features)
    on_cuda = cuda_available()
    weight_bytes = 4.0 if not on_cuda else {"4bit": 0.56, "8bit": 1.06}.get(
        recipe.model.quantization, 2.0)
    act = 2 if on_cuda else 4
    text = getattr(config, "text_config", config)
    hidden, layers = text.hidden_size, text.num_hidden_layers
    vocab = text.vocab_size
    heads = text.num_attention_heads
    kv_dim = getattr(text, "num_key_value_heads", heads) * (hidden // heads)
    if section == "grpo":
        seq = recipe.data.max_prompt_tokens + args.max_completion_length
        gen_batch = args.generation_batch_size or args.per_device_train_batch_size
        kv = gen_batch * seq * layers * 2 * kv_dim * act
    else:
        seq, kv = args.max_length or recipe.model.max_seq_length, 0
    batch = args.per_device_train_batch_size
    per_layer = 2 if args.gradient_checkpointing else 18  # saved tensors per token x hidden
    gib = 1024**3
    parts = {
        "weights": params * weight_bytes / gib,
        "adapter_and_optimizer": lora * 16 / gib,
        "activations": (batch * seq * hidden * layers * per_layer * act + batch * seq * vocab * 8)
        / gib,
        "kv_cache": kv / gib,
    }
    parts["total"] = sum(parts.values())
    parts["parameters"], parts["lora_parameters"] = params, lora
    return parts


def print_plan(
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
    """What a run would do, on stderr; the same facts returned as a dict (for tests)."""
    memory = memory_estimate(recipe, args, section)
    steps = total_steps(args, n_train)
    per_step = prompts_per_step(args)
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
    lines = [
        f"plan: {section} ({'cuda' if cuda_available() else 'cpu'})",
        f"  precision {precision}",
        f"  model    {recipe.model.name} ({memory['parameters'] / 1e6:,.1f}M parameters), "
        f"{recipe.model.quantization}",
        f"  adapter  {adapter} (~{memory['lora_parameters'] / 1e6:.2f}M trainable)",
        f"  data     {recipe.data.dir}: {n_train} {unit} used of {n_pool}; {n_dev} dev examples",
        f"  steps    {steps} ({how}) · {per_step} {unit} per step{generations}",
        *(extra or []),
        f"  memory   ~{memory['total']:.1f} GiB (weights {memory['weights']:.2f}, adapter + "
        f"optimizer {memory['adapter_and_optimizer']:.2f}, activations "
        f"{memory['activations']:.2f}, KV cache {memory['kv_cache']:.2f})",
        f"  output   {args.output_dir}: {out_state}",
        f"  prompt   {prompt.n_tokens} tokens (one rendered example below)",
    ]
    for line in lines:
        log.info(line)
    log.console.print(prompt.text, markup=False, highlight=False)
    return {"steps": steps, "per_step": per_step, "memory_gib": round(memory["total"], 2),
            "precision": precision.split()[0]}


def run_precision(args: Any) -> str:
    """The precision a TRL config trains in, with the card's reason (for the dry run)."""
    from recone_lite.gpu import describe_precision

    if getattr(args, "use_cpu", False) or not cuda_available():
        return "fp32 (CPU)"
    chosen = "bf16" if args.bf16 else "fp16" if args.fp16 else "fp32"
    card = describe_precision(cuda_capability())
    return chosen if card.startswith(chosen) else f"{chosen} (the card: {card})"


def run_dir_state(out: Path) -> str:
    """How `train` would treat the output directory (for the dry run)."""
    from recone_lite.runs import is_run_dir, latest_checkpoint, read_run_json

    if not out.exists() or not any(out.iterdir()):
        return "new run"
    if not is_run_dir(out):
        return "not empty and holds no run: refused (choose a new or empty folder)"
    if read_run_json(out).get("status") == "finished":
        return "holds a finished run (--overwrite to replace it)"
    checkpoint = latest_checkpoint(out)
    return f"unfinished run, --resume continues from {checkpoint.name}" if checkpoint else \
        "holds files of an unfinished run (--resume or --overwrite)"
