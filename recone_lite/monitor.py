"""The monitor of `train` and `sft`: one line per logged step, alarms, dev evaluation every
`eval_steps`, run.json after each checkpoint. The loop it watches (train, save, evaluate, finish
the run record) is train_loop.py's.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable
from typing import Any

from recone_lite import log
from recone_lite.jsonl import write_jsonl
from recone_lite.runs import RunRecord, is_main_process


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


@dataclasses.dataclass
class Alarm:
    """A warning condition read from TRL's logs: `test(history) -> message | None`."""

    name: str
    test: Callable[[list[dict[str, Any]]], str | None]
    active: bool = False


def series(history: list[dict[str, Any]], key: str) -> list[float]:
    return [h[key] for h in history if isinstance(h.get(key), (int, float))]


def zero_std_alarm(
    history: list[dict[str, Any]], steps: int = 10, share: float = 0.5, flat_steps: int = 3
) -> str | None:
    """More than half of the groups had identical rewards in each of the last `steps` logs, or
    every group did in each of the last `flat_steps`: then GRPO's advantages are all zero and the
    adapter does not move at all, which a short run (8 steps on a CPU) must hear at once.

    >>> zero_std_alarm([{"frac_reward_zero_std": 0.75}] * 10)[:40]
    'rewards identical within 75% of groups f'
    >>> zero_std_alarm([{"frac_reward_zero_std": 0.75}] * 9) is None
    True
    >>> zero_std_alarm([{"frac_reward_zero_std": 1.0}] * 3)[:45]
    'rewards identical within every group for 3 lo'
    >>> zero_std_alarm([{"frac_reward_zero_std": 1.0}] * 2) is None
    True
    """
    values = series(history, "frac_reward_zero_std")
    if len(values) >= flat_steps and min(values[-flat_steps:]) >= 1.0:
        return (
            f"rewards identical within every group for {flat_steps} logged steps: every advantage "
            "is zero and the adapter does not change (the model writes the same answer in each "
            "rollout; bench/rollout_spread.py measures it: raise temperature or "
            "num_generations, or warm up less)"
        )
    values = values[-steps:]
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
    values = series(history, "completions/clipped_ratio")
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
    values = series(history, "format_rate")
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
            rows = metrics.pop("predictions", None)
            if record is not None and rows is not None and is_main_process():  # per-row dev
                write_jsonl(record.out / f"dev-step{step}.jsonl", rows)  # rows, paired stages
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
