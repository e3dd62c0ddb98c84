"""GRPO's warm-up (`warmup:` in a recipe): a few SFT steps on offline traces from one of four
teachers (`TRACES`: `template`, the tags and the true rating; `evidence`, the evidence gathered and
the true rating; `estimate`; `mixed`) before `train` starts GRPO. Not RecOne: no teacher model
reasons here. Here rather than in grpo.py or sft.py so that neither command module imports the
other.
"""

from __future__ import annotations

import random
import re
import shutil
from pathlib import Path
from typing import Any, get_args

from recone_lite import log
from recone_lite.config import Recipe, WarmupSection
from recone_lite.monitor import make_monitor
from recone_lite.rewards import completion_text
from recone_lite.runs import WARMUP_ADAPTER
from recone_lite.traces import evidence_answer, template_answer
from recone_lite.training import Data, kept_history, render_rows, sft_config, sft_row, sft_trainer


def warmup_answer(example: dict[str, Any], template: str, scale: tuple[float, float],
                  teacher: str = "template", cf: tuple[str, ...] = ()) -> str:
    """The template teacher's answer in the recipe's template: the four blocks for reczero
    (`traces.template_answer`), the same notes in one `<think>` block for think, the rating alone
    for none. Ends in the true rating, or for the `estimate` teacher in the prompt's estimate
    (`rounded`, one half of the `mixed` teacher: that estimate rounded to a whole star).

    >>> example = {"rating": 4.0, "history": [], "target": {"title": "Heat"}}
    >>> warmup_answer(example, "none", (1.0, 5.0))
    '<rate>4</rate>'
    >>> from recone_lite.rewards import format_ok
    >>> format_ok(warmup_answer(example, "think", (1.0, 5.0)), "think")
    True
    >>> example["stats"] = {"user_mean": 4.2, "user_count": 30, "global_mean": 3.5}
    >>> warmup_answer(example, "none", (1.0, 5.0), "estimate")  # 3.5 + (4.2 - 3.5) * 30 / 35
    '<rate>4.10</rate>'
    >>> warmup_answer(example, "none", (1.0, 5.0), "evidence")
    '<rate>4</rate>'
    >>> warmup_answer(example, "none", (1.0, 5.0), "rounded")
    '<rate>4</rate>'
    """
    answer = template_answer(example, scale) if teacher == "template" else \
        evidence_answer(example, scale, rate=teacher if teacher in ("estimate", "rounded")
                        else "truth", cf=cf)
    rate = answer[answer.rindex("<rate>"):]
    if template == "none":
        return rate
    if template == "think":
        notes = re.sub(r"</?(?:analyze user|analyze item|match)>", "", answer.rsplit("<rate>")[0])
        return f"<think>\n{notes.strip()}\n</think>\n{rate}"
    return answer


def trace_teacher(teacher: str, index: int) -> str:
    """The teacher of the `index`-th warm-up trace: the recipe's, except that `mixed` alternates
    `estimate` (even: the prompt's estimate, "3.74") and `rounded` (odd: the same rounded to a
    whole star, "4").

    Why mix: a model warmed up on estimate traces alone writes the estimate in every rollout, so
    every GRPO group's rewards are equal and GRPO learns nothing (docs/results.md, stop 22). Left
    two answers per prompt, the estimate and its rounding, the model samples both, and GRPO's
    reward (linear in |y - y_hat|, so it favours the median whole star near the estimate where
    the ratings lean to one side) chooses between them prompt by prompt.

    >>> [trace_teacher("mixed", i) for i in range(3)], trace_teacher("evidence", 1)
    (['estimate', 'rounded', 'estimate'], 'evidence')
    """
    if teacher != "mixed":
        return teacher
    return "estimate" if index % 2 == 0 else "rounded"


# what each teacher's traces are, as `train` and its dry run name them
TRACES = {"template": "template traces (format only)",
          "evidence": "evidence traces (ending in the true rating)",
          "estimate": "estimate traces (ending in the prompt's estimate)",
          "mixed": "mixed traces (half ending in the estimate, half in it rounded to a whole star)"}
assert set(TRACES) == set(get_args(WarmupSection.model_fields["teacher"].annotation))


def answer_room_problem(rows: list[dict[str, Any]], tokenizer: Any, recipe: Recipe
                        ) -> str | None:
    """Why the warm-up's answers do not fit the tokens the run then generates, or None: a model
    that learns answers longer than it may write is cut before `<rate>` on every dev example and
    every rollout (coverage 0, every GRPO group flat; docs/results.md, stop 24). `warm_up` warns
    with it before the warm-up's minutes are spent (a warning, not an error: tests and quick
    looks shrink both on purpose)."""
    longest = max((len(tokenizer.encode(completion_text(row["completion"]),
                                        add_special_tokens=False)) for row in rows), default=0)
    room = {"evaluation.max_new_tokens": recipe.evaluation.max_new_tokens}
    if isinstance(recipe.grpo.get("max_completion_length"), int):
        room["grpo.max_completion_length"] = recipe.grpo["max_completion_length"]
    for key, tokens in room.items():
        if longest >= tokens:
            return (f"the warm-up's answers are up to {longest} tokens, so a model trained on "
                    f"them is cut at {key}={tokens} before <rate> (no rating, coverage 0); "
                    f"raise {key} above {longest}")
    return None


def warm_up(model: Any, tokenizer: Any, recipe: Recipe, data: Data, out: Path) -> dict[str, Any]:
    """A few SFT steps on the teacher's offline traces (`TRACES`: tagged answers ending in the
    true rating, in the prompt's estimate, or half in it and half in its rounding) so a tiny
    model emits the tags before GRPO. Not RecOne: no teacher model reasons here."""
    warmup, template = recipe.warmup, recipe.data.template
    split = "coldstart" if warmup.split == "coldstart" and data.splits.get("coldstart") \
        else recipe.data.train_split
    pool = data.splits[split]
    if warmup.split == "train":  # the files are sorted by user: shuffle, seeded, to mix users
        pool = random.Random(recipe.seed).sample(pool, len(pool))
    examples = pool[: warmup.steps * warmup.batch_size]
    rows = [
        sft_row(rendered.messages,
                warmup_answer(kept_history(example, rendered), template, data.scale,
                              trace_teacher(warmup.teacher, index), tuple(recipe.data.cf)))
        for index, (example, rendered) in enumerate(render_rows(examples, tokenizer, recipe.data,
                                                                data.scale))
    ]
    if problem := answer_room_problem(rows, tokenizer, recipe):
        log.warn(problem)
    log.info(f"warm-up: {warmup.steps} SFT steps on {len(rows)} {TRACES[warmup.teacher]} from "
             f"{split} (offline, not RecOne)")
    args = sft_config({"max_steps": warmup.steps, "learning_rate": warmup.learning_rate,
                       "per_device_train_batch_size": warmup.batch_size, "save_strategy": "no",
                       "report_to": "none", "logging_steps": max(warmup.steps // 5, 1)},
                      recipe, out / "warmup")
    trainer = sft_trainer(model, tokenizer, rows, args, [make_monitor(None)])
    trainer.train()
    shutil.rmtree(out / "warmup", ignore_errors=True)
    trainer.save_model(str(out / WARMUP_ADAPTER))  # the warmed-up adapter, to evaluate on its own
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {"steps": warmup.steps, "examples": len(rows), "split": split,
            "adapter": str(out / WARMUP_ADAPTER),
            "loss_first": losses[0] if losses else None,
            "loss_last": losses[-1] if losses else None}
