"""`recone-lite train`: RecZero, GRPO on a LoRA/QLoRA adapter with the rule reward, over TRL's
`GRPOTrainer` (Unsloth-patched on CUDA with the `gpu` extra).

Top to bottom: read the data and TRL's `GRPOConfig` (the recipe's `grpo:` section, passed through),
load the model with a trainable adapter (a new one, or `init_adapter`: the RecOne chain from an SFT
adapter) and refuse a frozen one, render the prompts as `predict` does, optionally warm up with a
few SFT steps on offline traces (`warmup:`, warmup.py: one of four teachers, from the tag format
alone to reasoning from the evidence; for small models; not RecOne), then train with the reward
functions of `rewards.py`, reading the true `rating` column. The monitor prints TRL's metrics,
raises alarms and evaluates on dev with real generation every `grpo.eval_steps`; runs.py holds the
run directory, resume and run.json rules.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

from recone_lite.config import Recipe, dump_recipe
from recone_lite.dev_eval import dev_metrics
from recone_lite.dry_run import print_run_plan, recipe_tokenizer, run_dir_state
from recone_lite.errors import InputError
from recone_lite.gpu import cuda_available, vllm_settings
from recone_lite.monitor import make_monitor
from recone_lite.rewards import completion_text, format_ok, parse_rating, reward_functions
from recone_lite.runs import RunRecord, check_run_out, is_main_process, open_run_dir
from recone_lite.train_loop import run_trainer
from recone_lite.training import (
    Data,
    check_gpu_path,
    check_trainable,
    load_data,
    load_trainable,
    render_rows,
    run_inputs,
    trainer_config,
)
from recone_lite.trl_batch import config_prompts_per_step
from recone_lite.warmup import TRACES, warm_up


def with_rate_metrics(
    functions: list[Callable[..., list[float]]], template: str, scale: tuple[float, float]
) -> list[Callable[..., list[float]]]:
    """The reward functions, the first one also logging `format_rate` and `parse_rate` through
    TRL's `log_metric` (what the alarms and the monitor read; the rewards are unchanged).

    >>> from recone_lite.rewards import reward_functions
    >>> logged = {}
    >>> fns = with_rate_metrics(reward_functions(["answer"], "none"), "none", (1.0, 5.0))
    >>> fns[0](["p", "p"], ["<rate>4</rate>", "4"], rating=[4, 4],
    ...        log_metric=logged.__setitem__), logged, fns[0].__name__
    ([1.0, 0.0], {'format_rate': 0.5, 'parse_rate': 0.5}, 'answer')
    """
    first, *rest = functions

    def rated(prompts: Any, completions: Any, log_metric: Any = None, **columns: Any):
        if log_metric is not None:
            texts = [completion_text(c) for c in completions]
            formatted = [format_ok(t, template, scale) for t in texts]
            parsed = [parse_rating(t, scale) is not None for t in texts]
            log_metric("format_rate", statistics.fmean(formatted))
            log_metric("parse_rate", statistics.fmean(parsed))
        return first(prompts, completions, **columns)

    rated.__name__ = rated.__qualname__ = first.__name__
    return [rated, *rest]


def prompt_rows(
    examples: list[dict[str, Any]], tokenizer: Any, recipe: Recipe, data: Data
) -> list[dict[str, Any]]:
    """GRPO rows: the conversational prompt (fitted to the budget) and the true rating."""
    return [
        {"prompt": rendered.messages, "rating": float(example["rating"]), "id": str(example["id"])}
        for example, rendered in render_rows(examples, tokenizer, recipe.data, data.scale)
    ]


def train(
    recipe: Recipe, *, resume: bool = False, overwrite: bool = False, dry_run: bool = False,
    recipe_name: str = "",
) -> dict[str, Any]:
    """The `train` command."""
    from datasets import Dataset
    from transformers import PrinterCallback
    from trl import GRPOTrainer

    if recipe.kind != "grpo":
        raise InputError(f"this is a {recipe.kind} recipe; run it with `recone-lite {recipe.kind}`",
                         field="kind")
    out = Path(recipe.output_dir)
    inputs = run_inputs(recipe, recipe_name)
    if not dry_run and is_main_process():  # before any data or model loads (again under the lock)
        check_run_out(out, resume=resume, overwrite=overwrite, inputs=inputs)
    section = recipe.data
    check_gpu_path(recipe)
    values = {**recipe.grpo, **vllm_settings(recipe.grpo, recipe.model.max_seq_length)}
    args = trainer_config("grpo", values, out, recipe.seed)
    needed = section.train_limit
    if args.max_steps and args.max_steps > 0:  # read and render only the prompts the run reaches
        reach = args.max_steps * config_prompts_per_step(args)
        needed = reach if needed is None else min(needed, reach)
    if recipe.warmup and recipe.warmup.split == "train" and needed is not None:
        needed = max(needed, recipe.warmup.steps * recipe.warmup.batch_size)  # its traces too
    want = {section.train_split: needed, section.eval_split: section.eval_limit}
    if recipe.warmup and recipe.warmup.split == "coldstart" and \
            (Path(section.dir) / "coldstart.jsonl").is_file():
        want["coldstart"] = recipe.warmup.steps * recipe.warmup.batch_size
    data = load_data(section, want, recipe.seed)
    examples, dev = data.splits[section.train_split], data.splits[section.eval_split]
    reward_funcs = with_rate_metrics(
        reward_functions(recipe.rewards, section.template, data.scale), section.template, data.scale
    )
    if dry_run:
        tokenizer = recipe_tokenizer(recipe)
        prompt = render_rows(examples[:1], tokenizer, section, data.scale)[0][1]
        warm = [f"  warm-up  {recipe.warmup.steps} SFT steps x {recipe.warmup.batch_size} "
                f"{TRACES[recipe.warmup.teacher]}"] if recipe.warmup else []
        return print_run_plan("grpo", recipe, args, n_train=len(examples),
                              n_pool=data.sizes[section.train_split], n_dev=len(dev),
                              prompt=prompt, out_state=run_dir_state(out), extra=warm)

    # the folder is locked while the run lasts; a run that --overwrite replaces is removed only
    # once this one has started (model loaded, trainer built, run.json written), else put back
    with open_run_dir(out, dump_recipe(recipe), resume=resume, overwrite=overwrite,
                      inputs=inputs) as start:
        checkpoint = start.checkpoint
        record = RunRecord(out, "grpo", recipe_name, recipe.seed, start.previous)
        model, tokenizer = load_trainable(recipe)
        trainable, total = check_trainable(model)
        rows = prompt_rows(examples, tokenizer, recipe, data)
        if recipe.warmup and checkpoint is None:  # a resumed run's checkpoint holds it warmed up
            record.update(warmup=warm_up(model, tokenizer, recipe, data, out))
        monitor = make_monitor(
            record, lambda: dev_metrics(model, tokenizer, dev, recipe, data), args.eval_steps
        )
        trainer = GRPOTrainer(
            model=model,
            reward_funcs=reward_funcs,
            args=args,
            train_dataset=Dataset.from_list(rows),
            processing_class=tokenizer,
            callbacks=[monitor],
        )
        trainer.remove_callback(PrinterCallback)  # the monitor prints one line per log instead
        start.started(record)
        return run_trainer(
            trainer, monitor, record, checkpoint=checkpoint, section="grpo",
            eval_at_start=recipe.evaluation.at_start,
            extra={"train_prompts": len(rows), "trainable_parameters": trainable,
                   "total_parameters": total, "init_adapter": recipe.init_adapter,
                   "rewards": recipe.rewards, "cuda": cuda_available()},
        )
