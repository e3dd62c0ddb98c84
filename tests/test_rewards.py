"""The reward and its parser, case by case: what counts as an answer is defined here."""

from __future__ import annotations

import math

import pytest

from recone_lite.errors import InputError
from recone_lite.rewards import (
    REWARDS,
    completion_text,
    format_ok,
    group_mean_rewards,
    parse_rating,
    reward_answer,
    reward_correct,
    reward_format,
    reward_functions,
    squared_reward,
)

GOOD = (
    "<analyze user>[like] jazz [dislike] noise [pos] calm [neg] loud</analyze user>\n"
    "<analyze item>a calm jazz record [like] calm</analyze item>\n"
    "<match>calm jazz suits this user</match>\n"
    "<rate>4</rate>"
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("<rate>4</rate>", 4.0),
        ("<rate>4.5</rate>", 4.5),
        ("<rate> 4.0 </rate>", 4.0),
        ("<rate>\n3\n</rate>", 3.0),
        ("<rate>4/5</rate>", 4.0),
        ("<rate>4 / 5</rate>", 4.0),
        ("<rate>4.5/5</rate>", 4.5),
        ("<rate>.5</rate>", 0.5),
        ("<rate>4.</rate>", 4.0),
        ("<rate>+3</rate>", 3.0),
        ("<rate>7</rate>", 7.0),  # out of scale: parsed, clipped downstream
        ("<rate>-1</rate>", -1.0),
        ("<rate>0</rate>", 0.0),
        ("thinking... <rate>2</rate>", 2.0),
        ("<rate>2</rate> no wait <rate>3</rate>", 3.0),  # the last block counts
        ("<rate>2</rate>\n", 2.0),
        ("<rate>2</rate> trailing words", 2.0),  # parse is lenient; format_ok is not
        ("<rate></rate>", None),
        ("<rate>   </rate>", None),
        ("<rate>four</rate>", None),
        ("<rate>4 stars</rate>", None),
        ("<rate>about 4</rate>", None),
        ("<rate>4 5</rate>", None),
        ("<rate>4 or 5</rate>", None),
        ("<rate>4-5</rate>", None),
        ("<rate>4,5</rate>", None),
        ("<rate>4/10</rate>", None),  # denominator is not the scale's top
        ("<rate>4/5/5</rate>", None),
        ("<rate>4e0</rate>", None),
        ("<rate>nan</rate>", None),
        ("<rate>inf</rate>", None),
        ("<rate>**4**</rate>", None),
        ("<rate>4", None),  # missing closing tag
        ("<rate>2</rate> then <rate>3", None),  # last block cut off
        ("4", None),
        ("rating: 4", None),
        ("", None),
        ("<RATE>4</RATE>", None),
        ("<rate >4</rate>", None),
        ("</rate>4<rate>", None),
    ],
)
def test_parse_rating(text: str, expected: float | None) -> None:
    assert parse_rating(text) == expected


def test_parse_rating_fraction_follows_the_scale() -> None:
    assert parse_rating("<rate>8/10</rate>", (1.0, 10.0)) == 8.0
    assert parse_rating("<rate>8/10</rate>", (1.0, 5.0)) is None


@pytest.mark.parametrize(
    ("text", "template", "expected"),
    [
        (GOOD, "reczero", True),
        ("\n  " + GOOD + "\n\n", "reczero", True),
        (GOOD.replace("\n", ""), "reczero", True),
        (GOOD.replace("<rate>4</rate>", "<rate>4.5</rate>"), "reczero", True),
        (GOOD.replace("<rate>4</rate>", "<rate>7</rate>"), "reczero", True),  # parsable: ok
        (GOOD + " I hope this helps.", "reczero", False),
        ("Sure! " + GOOD, "reczero", False),
        (GOOD.replace("<match>", "Now: <match>"), "reczero", False),  # text between blocks
        (GOOD.replace("<match>calm jazz suits this user</match>\n", ""), "reczero", False),
        (GOOD.replace("calm jazz suits this user", "  "), "reczero", False),  # empty block
        (GOOD.replace("</analyze item>", ""), "reczero", False),  # not closed
        (GOOD.replace("<rate>4</rate>", "<rate>four</rate>"), "reczero", False),
        (GOOD.replace("<rate>4</rate>", "<rate>4"), "reczero", False),
        (GOOD.replace("<rate>4</rate>", ""), "reczero", False),
        (GOOD + "\n<rate>5</rate>", "reczero", False),  # rate twice
        (GOOD.replace("<match>calm", "<match><match>calm"), "reczero", False),  # opened twice
        (GOOD, "think", False),
        (GOOD, "none", False),
        ("<think>calm jazz, likes it</think>\n<rate>4</rate>", "think", True),
        ("<rate>4</rate><think>too late</think>", "think", False),
        ("<think> </think><rate>4</rate>", "think", False),
        ("<rate>4</rate>", "think", False),
        ("<rate>4</rate>", "none", True),
        (" <rate> 3.5 </rate> ", "none", True),
        ("I think <rate>4</rate>", "none", False),
        ("<rate>4</rate>", "reczero", False),
    ],
)
def test_format_ok(text: str, template: str, expected: bool) -> None:
    assert format_ok(text, template) is expected


def test_format_ok_rejects_blocks_out_of_order() -> None:
    user = "<analyze user>[like] jazz</analyze user>"
    item = "<analyze item>jazz</analyze item>"
    assert format_ok(f"{user}{item}<match>ok</match><rate>4</rate>")
    assert not format_ok(f"{item}{user}<match>ok</match><rate>4</rate>")
    assert not format_ok(f"{user}<match>ok</match>{item}<rate>4</rate>")
    assert not format_ok(f"{user}{item}<rate>4</rate><match>ok</match>")


def test_format_ok_unknown_template() -> None:
    with pytest.raises(InputError):
        format_ok(GOOD, "cot")


def test_leaked_earlier_rate_last_block_counts_but_format_fails() -> None:
    leaked = GOOD.replace("<match>calm jazz", "<match>first guess <rate>1</rate>, but calm jazz")
    assert parse_rating(leaked) == 4.0
    assert not format_ok(leaked)
    assert reward_format(None, [leaked]) == [-0.5]
    assert reward_answer(None, [leaked], rating=[4.0]) == [1.0]


def test_answer_reward_values() -> None:
    completions = [
        GOOD,  # exact
        GOOD.replace("<rate>4</rate>", "<rate>3</rate>"),  # off by one
        GOOD.replace("<rate>4</rate>", "<rate>5</rate>"),  # off by four (truth 1)
        GOOD.replace("<rate>4</rate>", "<rate>4.5</rate>"),
        GOOD.replace("<rate>4</rate>", "<rate>9</rate>"),  # clipped to 5
        GOOD.replace("<rate>4</rate>", "<rate>no idea</rate>"),  # unparsable
        "",
    ]
    truths = [4.0, 4.0, 1.0, 4.0, 4.0, 4.0, 4.0]
    assert reward_answer(None, completions, rating=truths) == [1.0, 0.75, 0.0, 0.875, 0.75, 0, 0]
    assert reward_format(None, completions) == [0.5, 0.5, 0.5, 0.5, 0.5, -0.5, -0.5]
    assert reward_correct(None, completions, rating=truths) == [2.0, 0, 0, 0, 0, 0, 0]


def test_total_reward_badly_ordered_tags() -> None:
    swapped = (
        "<analyze item>jazz</analyze item><analyze user>[like] jazz</analyze user>"
        "<match>ok</match><rate>4</rate>"
    )
    total = [
        f + a
        for f, a in zip(
            reward_format(None, [swapped]), reward_answer(None, [swapped], rating=[4]), strict=True
        )
    ]
    assert total == [0.5]  # -0.5 format + 1.0 answer: the right number still earns its part


def test_correct_reward_rounds_half_up() -> None:
    texts = ["<rate>3.5</rate>", "<rate>4.49</rate>", "<rate>4.5</rate>", "<rate>0</rate>"]
    assert reward_correct(None, texts, rating=[4, 4, 4, 1]) == [2.0, 2.0, 0.0, 2.0]


def test_rewards_on_other_scale() -> None:
    assert reward_answer(None, ["<rate>6</rate>"], rating=[10], scale=(0.0, 10.0)) == [0.6]


def test_chat_list_completions() -> None:
    chat = [[{"role": "assistant", "content": GOOD}], [{"role": "assistant", "content": "hm"}]]
    assert reward_format(None, chat) == [0.5, -0.5]
    assert reward_answer(None, chat, rating=[5.0, 5.0]) == [0.75, 0.0]
    assert completion_text({"role": "assistant", "content": "x"}) == "x"
    assert (
        completion_text([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}])
        == "a"
    )
    with pytest.raises(TypeError):
        completion_text(4)


def test_trl_call_convention() -> None:
    """TRL calls reward functions with keywords, passing every dataset column and extras."""
    for function in reward_functions(list(REWARDS), "reczero", (1.0, 5.0)):
        scores = function(
            prompts=[[{"role": "user", "content": "p"}]] * 2,
            completions=[[{"role": "assistant", "content": GOOD}]] * 2,
            completion_ids=[[1, 2], [3]],
            rating=[4.0, 2.0],
            id=["a", "b"],
            history=[[], []],
            trainer_state=None,
        )
        assert len(scores) == 2 and all(isinstance(s, float) for s in scores)


def test_reward_functions_are_named_and_bound() -> None:
    functions = reward_functions(["format", "answer", "correct"], "none", (1.0, 5.0))
    assert [f.__name__ for f in functions] == ["format", "answer", "correct"]
    scores = [f(None, ["<rate>3</rate>"], rating=[3.0]) for f in functions]
    assert scores == [[0.5], [1.0], [2.0]]
    with pytest.raises(InputError, match="unknown reward"):
        reward_functions(["acc"])


def test_missing_rating_column_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="rating"):
        reward_answer(None, ["<rate>3</rate>"])
    with pytest.raises(ValueError, match="1 ratings for 2"):
        reward_answer(None, ["<rate>3</rate>"] * 2, rating=[3])


def test_docs_worked_example() -> None:
    """The table in docs/method.md, recomputed."""
    blocks = "<analyze user>[like] jazz</analyze user><analyze item>jazz</analyze item>"
    rollouts = [
        blocks + "<match>fits</match><rate>3.5</rate>",
        blocks + "<match>fits</match><rate>4</rate>",
        blocks + "<match>fits</match><rate>4</rate> Hope this helps!",
        blocks + "<match>maybe <rate>5</rate></match><rate>2</rate>",
        "I think the user would like it a lot.",
    ]
    fmt = reward_format(None, rollouts)
    ans = reward_answer(None, rollouts, rating=[4.0] * 5)
    assert [f + a for f, a in zip(fmt, ans, strict=True)] == [1.375, 1.5, 0.5, 0.0, -0.5]


def test_docs_show_the_reczero_system_prompt() -> None:
    from pathlib import Path

    from recone_lite.prompts import build_messages

    doc = Path(__file__).parents[1] / "docs" / "method.md"
    if not doc.is_file():
        pytest.skip("docs/method.md is not in this checkout")
    system = build_messages({"history": [], "target": {}}, "reczero", (1.0, 5.0))[0]["content"]
    assert system in doc.read_text(encoding="utf-8")


def _grpo_step(p: list[float], truth_probs: list[float], reward, group: int = 4):
    """Change in mean and variance of a distribution p over the stars 1..5 after one small GRPO
    step on its logits, in expectation over every group of `group` rollouts and every truth
    (advantages (r - mean) / (std + 1e-4) per group, as TRL computes them)."""
    import itertools

    gradient = [0.0] * 5
    for truth, p_truth in enumerate(truth_probs, start=1):
        for combo in itertools.product(range(5), repeat=group):
            weight = p_truth * math.prod(p[k] for k in combo)
            rewards = reward([float(k + 1) for k in combo], float(truth))
            mean = sum(rewards) / group
            std = math.sqrt(sum((r - mean) ** 2 for r in rewards) / (group - 1))
            for k, r in zip(combo, rewards, strict=True):  # d log p_k / d logits = e_k - p
                for j in range(5):
                    gradient[j] += weight * (r - mean) / (std + 1e-4) * ((j == k) - p[j])
    dot = sum(p[j] * gradient[j] for j in range(5))
    dp = [p[j] * (gradient[j] - dot) for j in range(5)]  # the softmax's Jacobian
    mu = sum((j + 1) * p[j] for j in range(5))
    d_mean = sum((j + 1) * dp[j] for j in range(5))
    return d_mean, sum((j + 1) ** 2 * dp[j] for j in range(5)) - 2 * mu * d_mean


def test_group_mean_moves_the_mean_where_squared_sharpens() -> None:
    scale = (1.0, 5.0)
    p = [0.1, 0.2, 0.3, 0.3, 0.1]  # mean 3.1

    def group_mean(predicted, truth):
        return group_mean_rewards(predicted, truth, scale)

    def squared(predicted, truth):
        return [squared_reward(y_hat, truth, scale) for y_hat in predicted]

    for reward in (group_mean, squared):  # a truth above the mean pulls it up, below down
        assert _grpo_step(p, [0, 0, 0, 0, 1], reward)[0] > 0.1
        assert _grpo_step(p, [1, 0, 0, 0, 0], reward)[0] < -0.1
    # Truths drawn from p itself: the expected readout is already right. The squared reward
    # still narrows the distribution; group_mean barely touches it.
    calibrated_gm = _grpo_step(p, p, group_mean)
    calibrated_sq = _grpo_step(p, p, squared)
    assert calibrated_sq[1] < -0.2
    assert abs(calibrated_gm[1]) < 0.05 * abs(calibrated_sq[1])
    assert abs(calibrated_gm[0]) < 0.5 * abs(calibrated_sq[0])


def test_group_mean_groups_rollouts_by_id_through_trl_convention() -> None:
    group_mean = reward_functions(["group_mean"], "none")[0]
    completions = ["<rate>5</rate>", "<rate>2</rate>", "<rate>3</rate>", "<rate>4</rate>"]
    by_id = group_mean(prompts=["same"] * 4, completions=completions, rating=[2, 3, 2, 3],
                       id=["a", "b", "a", "b"], trainer_state=None)
    by_prompt = group_mean(prompts=["p", "q", "p", "q"], completions=completions,
                           rating=[2, 3, 2, 3])
    # a (truth 2): 5 beside 3 scores (2 - 3)(5 - 3) / 16, 3 beside 5 scores (2 - 5)(3 - 5) / 16
    assert by_id == by_prompt == [-0.125, 0.125, 0.375, 0.125]
    assert group_mean(prompts=["p"], completions=["<rate>3</rate>"], rating=[3]) == [0.0]
