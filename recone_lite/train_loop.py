"""The loop of `train` and `sft` (`run_trainer`): train (resuming from a checkpoint), save the
adapter, evaluate on dev, write log.jsonl and the finished run.json; and the out-of-memory
message that names the recipe's knobs. monitor.py watches the steps in between.
"""

from __future__ import annotations

import contextlib
import statistics
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from recone_lite import log
from recone_lite.errors import ReconeError
from recone_lite.gpu import is_out_of_memory, peak_memory_gib
from recone_lite.monitor import metrics_line, series
from recone_lite.runs import RunRecord, is_main_process, write_log_history
from recone_lite.trl_batch import config_prompts_per_step


def load_checkpoints_on_cpu(trainer: Any) -> None:
    """Make a multi-process CPU run resumable. Under torchrun on CPU, accelerate 1.15 gives each
    rank `torch.device("cpu", local_rank % 1)` (state.py `set_device`: MULTI_CPU), and
    transformers 5.17's `_load_optimizer_and_scheduler` passes `args.device` as `map_location`
    when `world_size > 1`; torch 2.13's `default_restore_location` knows "cpu" but not "cpu:0"
    and raises "don't know how to restore data location ... (tagged with cpu:0)" (seen in
    tests/test_distributed.py). While that method runs, a CPU map_location is passed as plain
    "cpu"; a single process, or a GPU, is left alone."""
    import torch

    device = trainer.args.device
    if trainer.args.world_size <= 1 or device.type != "cpu" or device.index is None:
        return
    load_states = trainer._load_optimizer_and_scheduler

    def load(checkpoint: Any) -> Any:
        original = torch.load

        def on_cpu(*args: Any, **kwargs: Any) -> Any:
            where = kwargs.get("map_location")
            if isinstance(where, torch.device) and where.type == "cpu":
                kwargs["map_location"] = "cpu"
            return original(*args, **kwargs)

        torch.load = on_cpu
        try:
            return load_states(checkpoint)
        finally:
            torch.load = original

    trainer._load_optimizer_and_scheduler = load


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
        load_checkpoints_on_cpu(trainer)
    with explain_oom(section), log.progress(section, unit="steps") as monitor.step:
        trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    trainer.save_model(str(out))
    state = trainer.state
    final = monitor.evaluate(state.global_step)
    if is_main_process():  # distributed: rank 0 alone writes the run folder
        write_log_history(out, state.log_history)
    lengths = series(monitor.history, "completions/mean_length")
    step_times = series(monitor.history, "step_time")
    result = record.finish(
        mean_step_time_s=round(statistics.fmean(step_times), 2) if step_times else None,
        peak_gpu_memory_gib=peak_memory_gib(),
        global_step=state.global_step,
        max_steps=state.max_steps,
        train_samples_seen=state.global_step * config_prompts_per_step(trainer.args),
        mean_output_tokens=round(statistics.fmean(lengths), 1) if lengths else final["mean_tokens"],
        dev_metrics=final,
        dev_history=[_scalars(d) for d in monitor.dev],
        alarms=monitor.raised,
    )
    log.info(f"done: {out} (adapter, recipe.yaml, run.json); dev {metrics_line(final)}")
    return result


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
    try:
        yield
    except RuntimeError as err:  # torch.cuda.OutOfMemoryError is one
        if is_out_of_memory(err):
            raise ReconeError(oom_message(section)) from None
        raise
