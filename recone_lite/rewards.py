"""The rule-based reward of RecZero / RecOne: parse the rating, check the format, score the answer.

Pure functions, no model, no I/O. The same `parse_rating` serves GRPO's reward, prediction and
evaluation, so "what counts as an answer" is defined once, here.

An answer is the number inside the LAST `<rate>...</rate>` block. An out-of-scale number
(`<rate>7</rate>` on a 1-5 scale) is still a number: `parse_rating` returns 7.0, and the reward
and the metrics clip it to the scale (metrics count how many were clipped). No parsable number
means no answer: zero answer reward, and a counted failure in evaluation, never an exact guess.

Reward functions follow TRL's signature `(prompts, completions, **columns) -> list[float]` and
read the true rating from the `rating` column; `reward_functions` binds a template and a scale
and names each function after its reward, which is what TRL logs (`rewards/answer/mean`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from typing import Any

from recone_lite.errors import InputError
from recone_lite.prompts import TEMPLATE_BLOCKS

FORMAT_REWARD = 0.5  # +0.5 for a well-formed answer, -0.5 otherwise
CORRECT_REWARD = 2.0  # the correctness-only ablation: 2 when round(y_hat) == y
REWARDS = ("format", "answer", "squared", "correct", "group_mean")

_NUMBER = r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)"
_ANSWER = re.compile(rf"\s*({_NUMBER})\s*(?:/\s*({_NUMBER})\s*)?")


def parse_rating(text: str, scale: tuple[float, float] = (1.0, 5.0)) -> float | None:
    """The number inside the last `<rate>...</rate>` block, or None when there is none.

    Accepted: one plain decimal number, spaces around it, and `N/MAX` where MAX is the top of the
    scale. Rejected: no block, an empty block, words, two numbers, a fraction over another
    denominator, exponents, nan/inf, and a last `<rate>` without its `</rate>` (a cut-off answer).
    The number is returned as written, even outside the scale; clipping happens downstream.

    >>> parse_rating("<rate>4</rate>"), parse_rating("<rate>4.5</rate>")
    (4.0, 4.5)
    >>> parse_rating("<rate> 4.0 </rate>"), parse_rating("<rate>\\n3\\n</rate>")
    (4.0, 3.0)
    >>> parse_rating("<rate>4/5</rate>"), parse_rating("<rate>4 / 5</rate>")
    (4.0, 4.0)
    >>> parse_rating("<rate>8/10</rate>") is None  # a denominator other than the scale's top
    True
    >>> parse_rating("<rate>.5</rate>"), parse_rating("<rate>4.</rate>")
    (0.5, 4.0)
    >>> parse_rating("<rate>+3</rate>")
    3.0
    >>> parse_rating("<rate>7</rate>"), parse_rating("<rate>-1</rate>")  # parsed; clipped later
    (7.0, -1.0)
    >>> parse_rating("<rate>2</rate> on second thought <rate>3</rate>")  # the last block counts
    3.0
    >>> parse_rating("<rate>2</rate> then <rate>3")  # last block never closed: cut off
    >>> parse_rating("<rate></rate>"), parse_rating("<rate>   </rate>")
    (None, None)
    >>> parse_rating("<rate>four</rate>"), parse_rating("<rate>4 stars</rate>")
    (None, None)
    >>> parse_rating("<rate>4 5</rate>"), parse_rating("<rate>4 or 5</rate>")  # two numbers
    (None, None)
    >>> parse_rating("<rate>4-5</rate>"), parse_rating("<rate>4,5</rate>")
    (None, None)
    >>> parse_rating("<rate>4e0</rate>"), parse_rating("<rate>nan</rate>")
    (None, None)
    >>> parse_rating("<rate>4"), parse_rating("4"), parse_rating("rate: 4"), parse_rating("")
    (None, None, None, None)
    >>> parse_rating("<RATE>4</RATE>"), parse_rating("<rate>**4**</rate>")  # tags are exact
    (None, None)
    """
    start = text.rfind("<rate>")
    if start < 0:
        return None
    end = text.find("</rate>", start)
    if end < 0:
        return None
    match = _ANSWER.fullmatch(text[start + len("<rate>") : end])
    if match is None:
        return None
    value, denominator = match.groups()
    if denominator is not None and float(denominator) != float(scale[1]):
        return None
    return float(value)


def format_ok(
    text: str, template: str = "reczero", scale: tuple[float, float] = (1.0, 5.0)
) -> bool:
    """True when `text` is the template's blocks, each once, in order, non-empty, and nothing else.

    Only whitespace may come before, between and after the blocks, and the `<rate>` block must
    hold a parsable rating. Blocks per template: reczero `<analyze user>`, `<analyze item>`,
    `<match>`, `<rate>`; think `<think>`, `<rate>`; none `<rate>`.

    >>> good = "<analyze user>[like] jazz</analyze user> <analyze item>bebop</analyze item>\\n"
    >>> good += "<match>fits</match><rate>4</rate>"
    >>> format_ok(good), format_ok(good + "\\n  "), format_ok(good, "think")
    (True, True, False)
    >>> format_ok(good + " Hope this helps!")  # text after </rate>
    False
    >>> format_ok("Sure! " + good)  # text before the first block
    False
    >>> format_ok(good.replace("<match>fits</match>", ""))  # a block missing
    False
    >>> format_ok(good.replace("<match>fits</match>", "<match> </match>"))  # an empty block
    False
    >>> swapped = "<analyze item>bebop</analyze item><analyze user>jazz</analyze user>"
    >>> format_ok(swapped + "<match>fits</match><rate>4</rate>")  # blocks out of order
    False
    >>> format_ok(good.replace("<rate>4</rate>", "<rate>four</rate>"))  # unparsable rating
    False
    >>> format_ok(good.replace("<match>fits", "<match>say <rate>5</rate>, fits"))  # two <rate>
    False
    >>> format_ok(good.replace("</match>", ""))  # a block not closed
    False
    >>> format_ok("<think>hmm</think><rate>3.5</rate>", "think")
    True
    >>> format_ok("<rate>2</rate>", "none"), format_ok("<rate>2</rate>", "reczero")
    (True, False)
    >>> format_ok("<think></think><rate>3</rate>", "think")
    False
    """
    if template not in TEMPLATE_BLOCKS:
        raise InputError(f"unknown template {template!r}", field="template")
    position = 0
    for name in TEMPLATE_BLOCKS[template]:
        opening, closing = f"<{name}>", f"</{name}>"
        if text.count(opening) != 1 or text.count(closing) != 1:
            return False
        start, end = text.find(opening), text.find(closing)
        if start < position or end < start or text[position:start].strip():
            return False
        if not text[start + len(opening) : end].strip():
            return False
        position = end + len(closing)
    return not text[position:].strip() and parse_rating(text, scale) is not None


def completion_text(completion: Any) -> str:
    """The assistant's text of a completion: a string, or TRL's chat list of messages.

    >>> completion_text("<rate>4</rate>")
    '<rate>4</rate>'
    >>> completion_text([{"role": "assistant", "content": "<rate>4</rate>"}])
    '<rate>4</rate>'
    >>> completion_text([{"role": "assistant", "content": [{"type": "text", "text": "hi"}]}])
    'hi'
    """
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        completion = [completion]
    if isinstance(completion, (list, tuple)):
        parts = []
        for message in completion:
            if not isinstance(message, dict) or message.get("role", "assistant") != "assistant":
                continue
            content = message.get("content") or ""
            if isinstance(content, list):  # content parts: [{"type": "text", "text": ...}]
                content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
            parts.append(str(content))
        return "".join(parts)
    raise TypeError(f"a completion is a string or a list of chat messages, not {type(completion)}")


def clip(value: float, scale: tuple[float, float]) -> float:
    """Clip a rating to the scale.

    >>> clip(7.0, (1.0, 5.0)), clip(-1.0, (1.0, 5.0)), clip(3.5, (1.0, 5.0))
    (5.0, 1.0, 3.5)
    """
    return min(max(value, float(scale[0])), float(scale[1]))


def round_half_up(value: float) -> int:
    """Round to the nearest integer, halves up (Python's round() sends 4.5 to 4).

    >>> round_half_up(4.5), round_half_up(3.5), round_half_up(3.49), round_half_up(1.0)
    (5, 4, 3, 1)
    """
    return math.floor(value + 0.5)


def answer_reward(predicted: float | None, truth: float, scale: tuple[float, float]) -> float:
    """1 - |y - clip(y_hat)| / (max - min) of the scale; 0 when there is no parsable rating.

    >>> s = (1.0, 5.0)
    >>> answer_reward(4.0, 4.0, s), answer_reward(3.0, 4.0, s), answer_reward(5.0, 1.0, s)
    (1.0, 0.75, 0.0)
    >>> answer_reward(9.0, 4.0, s), answer_reward(None, 4.0, s)  # clipped to 5; none
    (0.75, 0.0)
    """
    if predicted is None:
        return 0.0
    return 1.0 - abs(float(truth) - clip(predicted, scale)) / (float(scale[1]) - float(scale[0]))


def squared_reward(predicted: float | None, truth: float, scale: tuple[float, float]) -> float:
    """1 - (y - clip(y_hat))^2 / (max - min)^2 of the scale; 0 when there is no parsable rating.

    Why beside the paper's: `answer_reward` is linear in |y - y_hat|, so its best answer is the
    median of the ratings a prompt may have; a squared error is minimised by their mean, which is
    what RMSE scores (Gneiting 2011). Same range, 1 (exact) to 0 (a whole scale off).

    >>> s = (1.0, 5.0)
    >>> squared_reward(4.0, 4.0, s), squared_reward(3.0, 4.0, s), squared_reward(5.0, 1.0, s)
    (1.0, 0.9375, 0.0)
    >>> squared_reward(3.5, 4.0, s), squared_reward(9.0, 4.0, s), squared_reward(None, 4.0, s)
    (0.984375, 0.9375, 0.0)
    """
    if predicted is None:
        return 0.0
    span = float(scale[1]) - float(scale[0])
    return 1.0 - (float(truth) - clip(predicted, scale)) ** 2 / span**2


def correct_reward(predicted: float | None, truth: float, scale: tuple[float, float]) -> float:
    """2 when the clipped prediction rounds (halves up) to the true rating, else 0.

    >>> s = (1.0, 5.0)
    >>> correct_reward(4.4, 4.0, s), correct_reward(4.5, 4.0, s), correct_reward(9, 5.0, s)
    (2.0, 0.0, 2.0)
    >>> correct_reward(None, 4.0, s)
    0.0
    """
    if predicted is None:
        return 0.0
    return CORRECT_REWARD if round_half_up(clip(predicted, scale)) == float(truth) else 0.0


def group_mean_rewards(predicted: Sequence[float | None], truth: float,
                       scale: tuple[float, float]) -> list[float]:
    """(y - m) * (y_hat_i - m) / (max - min)^2 per rollout of ONE prompt, m the mean of the
    other rollouts' clipped ratings; 0 for a rollout without a rating or without another to
    compare with.

    Why: the `expected` readout scores the mean of the model's rating distribution, and any
    reward of one sampled answer (`squared` included) is maximised by putting all the mass on one
    star, which sharpens the distribution instead of moving its mean. This reward pays a rollout
    for pulling its group's mean toward the truth: with m from the others (independent of this
    rollout), its policy gradient is -1/2 the gradient of (y - E[y_hat])^2 / (max - min)^2,
    the squared error of the readout itself, and it has no first-order pull toward one star.
    The range is -1 to 1.

    >>> s = (1.0, 5.0)
    >>> [round(r, 4) for r in group_mean_rewards([3.0, 3.0, 5.0, 4.0], 5.0, s)]  # low: up pays
    [-0.0625, -0.0625, 0.1736, 0.0278]
    >>> group_mean_rewards([4.0, 4.0, 4.0, 4.0], 5.0, s)  # one star everywhere: nothing to pull
    [0.0, 0.0, 0.0, 0.0]
    >>> group_mean_rewards([9.0, None, 1.0], 1.0, s)  # 9 is clipped to 5; no rating pays 0
    [0.0, 0.0, 1.0]
    >>> group_mean_rewards([4.0], 4.0, s)  # no other rollout to compare with
    [0.0]
    """
    clipped = [None if y_hat is None else clip(y_hat, scale) for y_hat in predicted]
    rated = [y_hat for y_hat in clipped if y_hat is not None]
    span = float(scale[1]) - float(scale[0])
    rewards = []
    for y_hat in clipped:
        if y_hat is None or len(rated) < 2:
            rewards.append(0.0)
            continue
        mean = (sum(rated) - y_hat) / (len(rated) - 1)
        rewards.append((float(truth) - mean) * (y_hat - mean) / span**2)
    return rewards


def _truths(rating: Sequence[float] | None, completions: Sequence[Any]) -> list[float]:
    if rating is None:
        raise ValueError("the reward needs the true rating: the dataset has no 'rating' column")
    if len(rating) != len(completions):
        raise ValueError(f"{len(rating)} ratings for {len(completions)} completions")
    return [float(r) for r in rating]


def _scored(score: Callable[[float | None, float, tuple[float, float]], float],
            completions: Sequence[Any], rating: Sequence[float] | None,
            scale: tuple[float, float]) -> list[float]:
    """`score(parsed rating, truth, scale)` per completion (the answer rewards' common body)."""
    truths = _truths(rating, completions)
    return [score(parse_rating(completion_text(c), scale), y, scale)
            for c, y in zip(completions, truths, strict=True)]


def reward_format(
    prompts: Any,
    completions: Sequence[Any],
    template: str = "reczero",
    scale: tuple[float, float] = (1.0, 5.0),
    **columns: Any,
) -> list[float]:
    """+0.5 per well-formed completion (see `format_ok`), -0.5 otherwise.

    >>> chat = [{"role": "assistant", "content": "<rate>5</rate>"}]
    >>> reward_format(None, ["<rate>4</rate>", "4", chat], template="none")
    [0.5, -0.5, 0.5]
    """
    return [
        FORMAT_REWARD if format_ok(completion_text(c), template, scale) else -FORMAT_REWARD
        for c in completions
    ]


def reward_answer(
    prompts: Any,
    completions: Sequence[Any],
    rating: Sequence[float] | None = None,
    scale: tuple[float, float] = (1.0, 5.0),
    **columns: Any,
) -> list[float]:
    """1 - |y - clip(y_hat)| / max_error per completion, 0 where no rating parses. Ignores format.

    >>> reward_answer(None, ["<rate>4</rate>", "<rate>3</rate>", "<rate>5</rate>", "no idea"],
    ...               rating=[4, 4, 1, 4])
    [1.0, 0.75, 0.0, 0.0]
    """
    return _scored(answer_reward, completions, rating, scale)


def reward_squared(
    prompts: Any,
    completions: Sequence[Any],
    rating: Sequence[float] | None = None,
    scale: tuple[float, float] = (1.0, 5.0),
    **columns: Any,
) -> list[float]:
    """1 - (y - clip(y_hat))^2 / max_error^2 per completion, 0 where no rating parses.

    >>> reward_squared(None, ["<rate>4</rate>", "<rate>2</rate>", "no idea"], rating=[4, 4, 4])
    [1.0, 0.75, 0.0]
    """
    return _scored(squared_reward, completions, rating, scale)


def reward_correct(
    prompts: Any,
    completions: Sequence[Any],
    rating: Sequence[float] | None = None,
    scale: tuple[float, float] = (1.0, 5.0),
    **columns: Any,
) -> list[float]:
    """2 where the rounded, clipped rating equals the truth, else 0 (correctness-only ablation).

    >>> reward_correct(None, ["<rate>3.6</rate>", "<rate>3</rate>", "<rate>"], rating=[4] * 3)
    [2.0, 0.0, 0.0]
    """
    return _scored(correct_reward, completions, rating, scale)


def reward_group_mean(
    prompts: Any,
    completions: Sequence[Any],
    rating: Sequence[float] | None = None,
    scale: tuple[float, float] = (1.0, 5.0),
    id: Sequence[Any] | None = None,  # noqa: A002 (the dataset's column name)
    **columns: Any,
) -> list[float]:
    """`group_mean_rewards` over each prompt's rollouts, grouped by the `id` column (by the
    prompt where there is none), so it needs a prompt's rollouts in one call: true of TRL's
    GRPO on one process, where a step's generations are scored together.

    >>> rollouts = ["<rate>5</rate>", "<rate>2</rate>", "<rate>3</rate>", "<rate>4</rate>", "5"]
    >>> reward_group_mean(["p", "q", "p", "q", "p"], rollouts, rating=[2, 3, 2, 3, 2])
    [-0.125, 0.125, 0.375, 0.125, 0.0]
    """
    truths = _truths(rating, completions)
    keys = [repr(key) for key in (id if id is not None else prompts)]
    if len(keys) != len(completions):
        raise ValueError(f"{len(keys)} ids for {len(completions)} completions")
    groups: dict[str, list[int]] = {}
    for i, key in enumerate(keys):
        groups.setdefault(key, []).append(i)
    rewards = [0.0] * len(completions)
    for rows in groups.values():
        predicted = [parse_rating(completion_text(completions[i]), scale) for i in rows]
        for i, reward in zip(rows, group_mean_rewards(predicted, truths[rows[0]], scale),
                             strict=True):
            rewards[i] = reward
    return rewards


_FUNCTIONS: dict[str, Callable[..., list[float]]] = {
    "format": reward_format,
    "answer": reward_answer,
    "squared": reward_squared,
    "correct": reward_correct,
    "group_mean": reward_group_mean,
}
assert tuple(_FUNCTIONS) == REWARDS


def reward_functions(
    names: Sequence[str], template: str = "reczero", scale: tuple[float, float] = (1.0, 5.0)
) -> list[Callable[..., list[float]]]:
    """TRL reward functions for `names`, bound to a template and scale, each `__name__`d after
    its reward (TRL logs `rewards/<name>/mean`). The paper's reward is `["format", "answer"]`.

    >>> fns = reward_functions(["format", "answer"], "none", (1.0, 5.0))
    >>> [f.__name__ for f in fns]
    ['format', 'answer']
    >>> [f(["p"], ["<rate>3</rate>"], rating=[4.0])[0] for f in fns]
    [0.5, 0.75]
    >>> reward_functions(["accuracy"])
    Traceback (most recent call last):
    ...
    recone_lite.errors.InputError: rewards: unknown reward 'accuracy'; choose from format, answer...
    """
    if template not in TEMPLATE_BLOCKS:
        raise InputError(f"unknown template {template!r}", field="template")
    functions = []
    for name in names:
        if name not in _FUNCTIONS:
            raise InputError(
                f"unknown reward {name!r}; choose from {', '.join(REWARDS)}", field="rewards"
            )
        function = _FUNCTIONS[name]

        def bound(
            prompts: Any, completions: Sequence[Any], _f=function, **columns: Any
        ) -> list[float]:
            for bound_here in ("template", "scale"):  # a dataset column must not override them
                columns.pop(bound_here, None)
            return _f(prompts, completions, template=template, scale=scale, **columns)

        bound.__name__ = bound.__qualname__ = name
        bound.__doc__ = function.__doc__
        functions.append(bound)
    return functions
