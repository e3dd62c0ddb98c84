"""Prompts: a prepared example -> chat messages, rendered with the tokenizer's own chat template.

Three templates share one user message (the inputs `user_purchase_history` and `target_item`)
and differ in the system prompt, i.e. in the answer format they ask for:

- `reczero`: think before recommending in four tagged steps, `<analyze user>`, `<analyze item>`,
  `<match>`, then `<rate>` (RecZero / RecOne, arXiv 2510.23077);
- `think`: one free `<think>` block, then `<rate>` (ablation);
- `none`: only `<rate>` (ablation: no reasoning).

`TEMPLATE_BLOCKS` is the one list of tags per template; `rewards.format_ok` checks answers
against it. SFT, GRPO and prediction all use `render_prompt` (or `build_messages` +
`messages_for_tokenizer`), so the model sees the same text in training and at prediction time.
Role markers always come from `tokenizer.apply_chat_template`, never from strings written here.

Nothing here imports torch or transformers: a tokenizer is passed in.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

from recone_lite.errors import InputError, first_line, remote_code_hint

TEMPLATE_BLOCKS: dict[str, tuple[str, ...]] = {
    "reczero": ("analyze user", "analyze item", "match", "rate"),
    "think": ("think", "rate"),
    "none": ("rate",),
}
TEMPLATES = tuple(TEMPLATE_BLOCKS)  # ("reczero", "think", "none")

META_FIELD_CHARS = 300  # one meta value is cut to this many characters (prepare keeps them short)
SHORTENED = "[...]"  # marks a review shortened to fit the token budget

_RATE_RULE = (
    "<rate>...</rate>: only the predicted rating, one number from {lo} to {hi} (decimals are "
    "allowed), nothing else."
)
_INPUTS = (
    "You predict how a user will rate an item. You are given user_purchase_history, the items "
    "the user rated before (oldest first), each with its information, the user's rating and, "
    "where there is one, the user's review; and target_item, the information about a new item. "
    "Ratings go from {lo} (worst) to {hi} (best)."
)
_EVIDENCE = {  # said in the system prompt only when the user message carries the block
    "reviews": " target_item_reviews are earlier ratings of target_item by other users.",
    "stats": " rating_stats are average ratings from before: this user's, target_item's and all "
    "users'.",
    "cf": " cf_predictions are what classical recommenders fitted on earlier ratings predict for "
    "this user and target_item.",
}
_SYSTEM = {
    "reczero": "\n\nThink before you recommend. Answer in exactly four tagged steps, in this "
    "order:\n1. <analyze user>...</analyze user>: for each item in the history, write what the "
    "user liked, marked [like], and disliked, marked [dislike], judging from the rating and the "
    "review. Then sum up the user's interests as positive aspects, marked [pos], and negative "
    "aspects, marked [neg].\n"
    "2. <analyze item>...</analyze item>: describe the features of target_item, and what this "
    "user might like about it, marked [like], or dislike, marked [dislike].\n"
    "3. <match>...</match>: connect steps 1 and 2 and reason whether target_item suits this "
    "user.\n"
    "4. " + _RATE_RULE + "\nWrite nothing after </rate>.",
    "think": "\n\nFirst think in <think>...</think> about what this user likes and dislikes and "
    "whether target_item suits them. Then give " + _RATE_RULE + "\nWrite nothing after </rate>.",
    "none": "\n\nDo not explain. Answer with " + _RATE_RULE,
}
# The compact system prompts ask for the same blocks in about a fifth of the tokens: a 135M
# model on a CPU budget otherwise spends a third of its prompt on instructions (the full reczero
# text is ~340 tokens). They leave the evidence blocks to explain themselves by their names.
_INPUTS_COMPACT = "Predict the rating ({lo} worst to {hi} best) this user gives target_item."
_COMPACT = {
    "reczero": " Answer: <analyze user>[pos]/[neg] interests</analyze user> <analyze item>"
    "[like]/[dislike] for this user</analyze item> <match>does it suit them?</match> "
    "<rate>one number</rate>",
    "think": " Answer: <think>what they like and whether it suits them</think> "
    "<rate>one number</rate>",
    "none": " Answer only: <rate>one number</rate>",
}
assert set(_SYSTEM) == set(TEMPLATE_BLOCKS) == set(_COMPACT)


@dataclasses.dataclass(frozen=True)
class PromptStyle:
    """What a prompt shows besides the history and the target: the recipe's `data:` keys
    `item_history`, `stats`, `system`, `max_history` and `cf` (see config.DataSection).

    The evidence blocks appear only where the example carries them (`data prepare` writes
    `item_history`, `stats` and `cf`); `PromptStyle(item_history=0, stats=False)` is the paper's
    prompt.
    """

    item_history: int = 5
    stats: bool = True
    system: str = "full"
    max_history: int | None = None
    cf: tuple[str, ...] = ()  # which `cf` predictions to show (data/cf.py CF_MODELS), in order

    def __post_init__(self) -> None:  # a recipe's YAML list, or a comma string from the CLI
        cf = self.cf.split(",") if isinstance(self.cf, str) else self.cf or ()
        object.__setattr__(self, "cf", tuple(name.strip() for name in cf if name.strip()))

    @classmethod
    def of(cls, section: Any) -> PromptStyle:
        """The style a recipe's `data:` section asks for."""
        return cls(section.item_history, section.stats, section.system, section.max_history,
                   tuple(getattr(section, "cf", ()) or ()))


DEFAULT_STYLE = PromptStyle()
# PromptStyle's fields by name: predict's prompt options and a recipe's `data:` keys alike
STYLE_FIELDS = tuple(field.name for field in dataclasses.fields(PromptStyle))


def system_prompt(template: str, style: PromptStyle, lo: str, hi: str, shown: set[str]) -> str:
    """The system text for a template, in the style's length, naming the evidence `shown`.

    >>> print(system_prompt("none", PromptStyle(system="compact"), "1", "5", {"stats"}))
    Predict the rating (1 worst to 5 best) this user gives target_item. Answer only: \
<rate>one number</rate>
    """
    if style.system == "compact":
        return _INPUTS_COMPACT.format(lo=lo, hi=hi) + _COMPACT[template]
    evidence = "".join(_EVIDENCE[key] for key in ("reviews", "stats", "cf") if key in shown)
    return (_INPUTS + evidence + _SYSTEM[template]).format(lo=lo, hi=hi)


def fmt_number(value: Any) -> str:
    """A rating or scale bound as a person writes it.

    >>> fmt_number(4.0), fmt_number(4.5), fmt_number(3), fmt_number("2"), fmt_number(None)
    ('4', '4.5', '3', '2', '?')
    """
    try:
        number = float(value)
    except (TypeError, ValueError):
        return "?"
    return f"{number:g}" if math.isfinite(number) else "?"


def _one_line(text: str, limit: int | None = None) -> str:
    text = " ".join(str(text).split())
    return text if limit is None or len(text) <= limit else text[: limit - 3].rstrip() + "..."


def _value_text(value: Any) -> str:
    """A meta value as short text: lists are flattened and joined, dicts become `k: v` pairs."""
    if value is None or value == "":
        return ""
    if isinstance(value, dict):
        parts = (f"{k}: {_value_text(v)}" for k, v in value.items())
        return _one_line(", ".join(p for p in parts if not p.endswith(": ")), META_FIELD_CHARS)
    if isinstance(value, (list, tuple)):
        seen: list[str] = []  # nested lists (Amazon's category paths) are flattened, deduplicated
        stack = list(reversed(value))
        while stack:
            part = stack.pop()
            if isinstance(part, (list, tuple)):
                stack.extend(reversed(part))
            elif (text := _value_text(part)) and text not in seen:
                seen.append(text)
        return _one_line(", ".join(seen), META_FIELD_CHARS)
    if isinstance(value, float):
        return fmt_number(value)
    return _one_line(value, META_FIELD_CHARS)


def item_text(meta: dict[str, Any] | None, item_id: Any = None) -> str:
    """One item's meta on one line, `key: value` fields joined by ` | `.

    >>> item_text({"title": "Abbey Road", "categories": [["Music", "Rock"], ["Rock"]], "y": 1969})
    'title: Abbey Road | categories: Music, Rock | y: 1969'
    >>> item_text({}, item_id="B0001")
    'item_id: B0001 (no other information)'
    """
    fields = [
        f"{key}: {text}" for key, value in (meta or {}).items() if (text := _value_text(value))
    ]
    if not fields:
        return f"item_id: {item_id} (no other information)" if item_id else "(no information)"
    return " | ".join(fields)


def _history_text(history: list[dict[str, Any]], omitted: int, review_chars: int | None) -> str:
    if not history:
        return "(empty)" if not omitted else f"({omitted} older items omitted)"
    lines = [f"({omitted} older items omitted)"] if omitted else []
    for number, entry in enumerate(history, start=1):
        lines.append(f"[{number}] {item_text(entry.get('item'), entry.get('item_id'))}")
        lines.append(f"    rating: {fmt_number(entry.get('rating'))}")
        review = _one_line(entry.get("review") or "")
        if review_chars is not None and len(review) > review_chars:
            cut = review[: review_chars + 1]  # cut at a word boundary within review_chars
            cut = cut.rsplit(" ", 1)[0] if " " in cut else cut[:review_chars]
            review = f"{cut.rstrip()} {SHORTENED}".lstrip()
        if review:
            lines.append(f"    review: {review}")
    return "\n".join(lines)


def item_reviews_text(entries: list[dict[str, Any]]) -> str:
    """The `target_item_reviews` block: other users' earlier ratings of the target, oldest first.
    One line when none has a review text, else a line each.

    >>> item_reviews_text([{"rating": 4.0}, {"rating": 5}])
    'ratings 4, 5 (oldest first)'
    >>> print(item_reviews_text([{"rating": 2, "review": "Too  long."}, {"rating": 5}]))
    - rating: 2 | review: Too long.
    - rating: 5
    >>> item_reviews_text([])
    '(none before this one)'
    """
    if not entries:
        return "(none before this one)"
    if not any(entry.get("review") for entry in entries):
        return "ratings " + ", ".join(fmt_number(e.get("rating")) for e in entries) + \
            " (oldest first)"
    lines = []
    for entry in entries:
        review = _one_line(entry.get("review") or "")
        lines.append(f"- rating: {fmt_number(entry.get('rating'))}"
                     + (f" | review: {review}" if review else ""))
    return "\n".join(lines)


SHRINK = 5  # ratings a mean needs before it counts fully in the estimate (see stats_estimate)


def stats_estimate(stats: dict[str, Any], scale: tuple[float, float] = (1.0, 5.0)) -> float | None:
    """The rating the means alone suggest: all users' mean, plus how far this user's mean and
    target_item's mean lie from it, each shrunk toward 0 by its count (n / (n + SHRINK): a mean
    of 2 ratings counts little), within the scale. The biases baseline (mu + b_u + b_i) computed
    from the prompt's own numbers, so from before the target only; None without a global mean.

    >>> stats_estimate({"user_mean": 4.5, "user_count": 45, "item_mean": 2.0, "item_count": 5,
    ...                 "global_mean": 3.5})
    3.65
    >>> stats_estimate({"user_mean": None, "user_count": 0, "item_mean": 5.0, "item_count": 95,
    ...                 "global_mean": 4.8})
    4.99
    >>> stats_estimate({"user_mean": 5.0, "user_count": 95, "item_mean": 5.0, "item_count": 95,
    ...                 "global_mean": 4.0})
    5.0
    """
    def finite(value: Any) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool) \
            and math.isfinite(value)

    mu = stats.get("global_mean")
    if not finite(mu):
        return None
    estimate = float(mu)
    for mean_key, count_key in (("user_mean", "user_count"), ("item_mean", "item_count")):
        mean, count = stats.get(mean_key), stats.get(count_key)
        if finite(mean) and finite(count) and count > 0:
            estimate += (float(mean) - mu) * count / (count + SHRINK)
    return round(min(max(estimate, scale[0]), scale[1]), 2)


def stats_text(stats: dict[str, Any], scale: tuple[float, float] = (1.0, 5.0)) -> str:
    """The `rating_stats` line: means (2 decimals) and counts from before the target's time, and
    the estimate they add up to (`stats_estimate`).

    >>> stats_text({"user_mean": 3.6167, "user_count": 45, "item_mean": 4.1, "item_count": 120,
    ...             "global_mean": 3.5291})
    'this user 3.62 (45 ratings) | target_item 4.10 (120 ratings) | all users 3.53 | estimate 4.16'
    >>> stats_text({"user_mean": None, "user_count": 0, "item_mean": None, "item_count": 0,
    ...             "global_mean": 3.5})
    'this user none yet | target_item none yet | all users 3.50 | estimate 3.50'
    """
    def mean(key: str, count_key: str | None) -> str:
        value = stats.get(key)
        if value is None or not isinstance(value, (int, float)) or not math.isfinite(value):
            return "none yet"
        count = stats.get(count_key) if count_key else None
        return f"{value:.2f}" + (f" ({count} ratings)" if count is not None else "")

    estimate = stats_estimate(stats, scale)
    return (f"this user {mean('user_mean', 'user_count')} | target_item "
            f"{mean('item_mean', 'item_count')} | all users {mean('global_mean', None)}"
            + (f" | estimate {estimate:.2f}" if estimate is not None else ""))


CF_LABELS = {"biases": "user+item bias", "mf": "MF", "knn": "item-kNN"}  # data/cf.py CF_MODELS


def cf_text(cf: dict[str, Any], names: tuple[str, ...]) -> str | None:
    """The `cf_predictions` line: the named predictions the example carries (2 decimals), in the
    order asked; None when it carries none of them.

    >>> cf_text({"biases": 3.7112, "mf": 3.84, "knn": 3.9}, ("mf", "knn", "biases"))
    'MF 3.84 | item-kNN 3.90 | user+item bias 3.71'
    >>> cf_text({"mf": None}, ("mf",)) is None
    True
    """
    parts = [f"{CF_LABELS.get(name, name)} {float(cf[name]):.2f}" for name in names
             if isinstance(cf.get(name), (int, float)) and math.isfinite(cf[name])]
    return " | ".join(parts) or None


def build_messages(
    example: dict[str, Any],
    template: str = "reczero",
    scale: tuple[float, float] = (1.0, 5.0),
    *,
    omitted: int = 0,
    review_chars: int | None = None,
    style: PromptStyle = DEFAULT_STYLE,
) -> list[dict[str, str]]:
    """System + user chat messages for a prepared example or a bare `{"history", "target"}` request.

    `omitted` says how many older history items were left out (shown to the model as a line);
    `review_chars` shortens every review to at most that many characters (see `render_prompt`).
    The evidence the example carries (`item_history`, `stats`) is shown as `style` says.

    >>> past = {"item_id": "i1", "item": {"title": "Kind of Blue"}, "rating": 5, "review": "Cool."}
    >>> example = {"item_id": "i9", "target": {"title": "Blue Train"}, "history": [past]}
    >>> system, user = build_messages(example, "none")
    >>> system["role"], "<rate>" in system["content"], user["role"]
    ('system', True, 'user')
    >>> print(user["content"])
    user_purchase_history:
    [1] title: Kind of Blue
        rating: 5
        review: Cool.
    <BLANKLINE>
    target_item:
    title: Blue Train
    <BLANKLINE>
    Predict the rating this user gives target_item, from 1 to 5.
    >>> example["item_history"] = [{"user_id": "u7", "rating": 4, "review": ""}]
    >>> example["stats"] = {"user_mean": 5.0, "user_count": 1, "item_mean": 4.0, "item_count": 1,
    ...                     "global_mean": 3.9}
    >>> print(build_messages(example, "none")[1]["content"].split("target_item:")[1])
    <BLANKLINE>
    title: Blue Train
    <BLANKLINE>
    target_item_reviews: ratings 4 (oldest first)
    <BLANKLINE>
    rating_stats: this user 5.00 (1 ratings) | target_item 4.00 (1 ratings) | all users 3.90 | \
estimate 4.10
    <BLANKLINE>
    Predict the rating this user gives target_item, from 1 to 5.
    """
    if template not in TEMPLATE_BLOCKS:
        raise InputError(
            f"unknown template {template!r}; choose one of {', '.join(TEMPLATES)}", field="template"
        )
    if not isinstance(example.get("target"), dict):
        raise InputError("the example has no target item (a dict of item meta)", field="target")
    lo, hi = fmt_number(scale[0]), fmt_number(scale[1])
    history = list(example.get("history") or [])
    blocks = [
        f"user_purchase_history:\n{_history_text(history, omitted, review_chars)}",
        f"target_item:\n{item_text(example['target'], example.get('item_id'))}",
    ]
    shown = set()
    item_history = example.get("item_history")
    if style.item_history and isinstance(item_history, list):
        reviews = item_reviews_text(item_history[len(item_history) - style.item_history:]
                                    if len(item_history) > style.item_history else item_history)
        sep = "\n" if "\n- " in f"\n{reviews}" else " "
        blocks.append(f"target_item_reviews:{sep}{reviews}")
        shown.add("reviews")
    if style.stats and isinstance(example.get("stats"), dict):
        blocks.append(f"rating_stats: {stats_text(example['stats'], scale)}")
        shown.add("stats")
    if style.cf and isinstance(example.get("cf"), dict) and \
            (line := cf_text(example["cf"], style.cf)):
        blocks.append(f"cf_predictions: {line}")
        shown.add("cf")
    blocks.append(f"Predict the rating this user gives target_item, from {lo} to {hi}.")
    return [
        {"role": "system", "content": system_prompt(template, style, lo, hi, shown)},
        {"role": "user", "content": "\n\n".join(blocks)},
    ]


# --- chat templates -------------------------------------------------------------------------

_PROBE = "recone-lite system probe 7d1f"


def supports_system_role(tokenizer: Any) -> bool:
    """True when the tokenizer's chat template renders a system message's text.

    Some templates (Gemma's) raise on a system role, others silently drop it: both count as no.
    """
    template = getattr(tokenizer, "chat_template", None)
    key = (id(tokenizer), template if isinstance(template, str) else repr(template))
    if key not in _SYSTEM_ROLE:  # one probe per tokenizer and template, not one per prompt
        probe = [{"role": "system", "content": _PROBE}, {"role": "user", "content": "hi"}]
        try:
            text = tokenizer.apply_chat_template(probe, tokenize=False, add_generation_prompt=True)
        except Exception:  # jinja's raise_exception, TemplateError, ValueError...: no system role
            text = ""
        _SYSTEM_ROLE[key] = _PROBE in str(text)
    return _SYSTEM_ROLE[key]


_SYSTEM_ROLE: dict[tuple[int, str], bool] = {}


def merge_system(messages: list[dict[str, str]]) -> list[dict[str, str]]:
    """Fold system messages into the first user turn (for chat templates without a system role).

    >>> merge_system([{"role": "system", "content": "S"}, {"role": "user", "content": "U"}])
    [{'role': 'user', 'content': 'S\\n\\nU'}]
    """
    system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
    rest = [dict(m) for m in messages if m["role"] != "system"]
    if not system:
        return rest
    for message in rest:
        if message["role"] == "user":
            message["content"] = f"{system}\n\n{message['content']}"
            return rest
    return [{"role": "user", "content": system}, *rest]


def messages_for_tokenizer(messages: list[dict[str, str]], tokenizer: Any) -> list[dict[str, str]]:
    """The messages as this tokenizer's chat template can take them (system merged if needed)."""
    return messages if supports_system_role(tokenizer) else merge_system(messages)


def chat_text(messages: list[dict[str, str]], tokenizer: Any) -> str:
    """The prompt text the model sees: the chat template applied, generation prompt added."""
    if not getattr(tokenizer, "chat_template", None):
        raise InputError(
            "the tokenizer has no chat template; use an instruct (chat) model", field="tokenizer"
        )
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def count_tokens(text: str, tokenizer: Any) -> int:
    """Tokens in rendered chat text (special tokens are already in the text, none are added)."""
    return len(tokenizer.encode(text, add_special_tokens=False))


def load_tokenizer(path: str | Path, gguf_file: str | None = None,
                   trust_remote_code: bool = False) -> Any:
    """A Hugging Face tokenizer from a folder or hub name, or from a GGUF file (a path to a
    `.gguf`, or its folder plus `gguf_file`). Imports transformers, so call it only when needed.
    `data show`, `data stats` and the dry runs of `train` / `sft` load theirs here.
    """
    from transformers import AutoTokenizer

    if gguf_file is None and str(path).endswith(".gguf"):
        path, gguf_file = Path(path).parent, Path(path).name
    local = Path(path).expanduser()
    if str(path).startswith(("/", ".", "~")) and not local.is_dir():
        raise InputError("no such tokenizer folder", path=path)
    if gguf_file and not (local / gguf_file).is_file():
        raise InputError(f"no GGUF file {gguf_file} in this folder", path=path)
    options: dict[str, Any] = {"gguf_file": gguf_file} if gguf_file else {}
    options["trust_remote_code"] = bool(trust_remote_code)  # False, not None: never a prompt
    try:
        return AutoTokenizer.from_pretrained(str(path), **options)
    except (OSError, ValueError) as err:  # not a tokenizer folder; unknown hub id, or no network
        raise InputError(f"cannot load a tokenizer ({first_line(err)}){remote_code_hint(err)}",
                         path=path) from None


# --- rendering under a token budget ---------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RenderedPrompt:
    """A prompt fitted to the budget.

    `messages` are the fitted chat messages (system merged where the template has no system role):
    what TRL's trainers take as a conversational prompt. `text` is the chat template applied to
    them with the generation prompt; `n_tokens` its length. `over_budget` is True when even an
    empty history does not fit (the prompt is returned anyway; the system prompt and the target
    are never cut).
    """

    messages: list[dict[str, str]]
    text: str
    n_tokens: int
    dropped_items: int = 0
    shortened_reviews: int = 0
    over_budget: bool = False


def render_prompt(
    example: dict[str, Any],
    tokenizer: Any,
    template: str = "reczero",
    scale: tuple[float, float] = (1.0, 5.0),
    max_prompt_tokens: int | None = None,
    style: PromptStyle = DEFAULT_STYLE,
) -> RenderedPrompt:
    """Render an example with the tokenizer's chat template, within `max_prompt_tokens`.

    `style.max_history` keeps only the newest N history items (counted as dropped, like the
    budget's cuts); the evidence blocks are short and never cut.

    Over budget, the oldest history items are dropped first (binary search for the longest recent
    tail that fits). If not even the newest item fits, its review is shortened to the longest
    prefix that fits; failing that, the history is emptied. The system prompt and target item are
    never cut: a prompt that does not fit with an empty history comes back with `over_budget`.
    """
    merge = not supports_system_role(tokenizer)
    history = list(example.get("history") or [])
    capped = 0
    if style.max_history is not None and len(history) > style.max_history:
        capped = len(history) - style.max_history
        history = history[capped:]

    def attempt(keep: int, review_chars: int | None = None) -> RenderedPrompt:
        kept = history[len(history) - keep :] if keep else []
        messages = build_messages(
            {**example, "history": kept},
            template,
            scale,
            omitted=capped + len(history) - keep,
            review_chars=review_chars,
            style=style,
        )
        if merge:
            messages = merge_system(messages)
        text = chat_text(messages, tokenizer)
        shortened = 0
        if review_chars is not None:
            shortened = sum(len(_one_line(e.get("review") or "")) > review_chars for e in kept)
        return RenderedPrompt(
            messages, text, count_tokens(text, tokenizer), capped + len(history) - keep, shortened
        )

    full = attempt(len(history))
    if max_prompt_tokens is None or full.n_tokens <= max_prompt_tokens:
        return full

    def largest_fitting(lo: int, hi: int, make) -> RenderedPrompt | None:
        """The fitting prompt for the largest x in [lo, hi] (token counts grow with x)."""
        best = None
        while lo <= hi:
            mid = (lo + hi) // 2
            candidate = make(mid)
            if candidate.n_tokens <= max_prompt_tokens:
                best, lo = candidate, mid + 1
            else:
                hi = mid - 1
        return best

    # 1. Drop the oldest items: the longest recent tail (of at least one item) that fits.
    fitted = largest_fitting(1, len(history) - 1, attempt)
    if fitted is None and history:
        # 2. Not even the newest item fits whole: keep it with its review shortened.
        review = _one_line(history[-1].get("review") or "")
        fitted = largest_fitting(0, len(review) - 1, lambda chars: attempt(1, chars))
    if fitted is not None:
        return fitted
    # 3. No history at all; the system prompt and the target are never cut.
    empty = attempt(0)
    return dataclasses.replace(empty, over_budget=empty.n_tokens > max_prompt_tokens)
