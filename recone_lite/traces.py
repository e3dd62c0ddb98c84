"""`recone-lite traces inspect`, and the pure parts of RecOne's cold-start traces that `traces make`
(teacher.py), `sft` and the warm-up share: the hint, the leak filter, acceptance, the template.

RecOne (arXiv 2510.23077) asks a teacher to reason on held-out examples with the same
think-before-recommendation prompt the student will see. A trace whose rating equals the truth is
kept as is (`kind: "align"`); otherwise the teacher is asked again with the true rating as a hint
and told to reason towards it (`kind: "rationalized"`), and that answer is kept only if it reaches
the truth and never lets on that it was told (`leaks_hint`). The run loop with the HTTP calls and
the cache is `recone_lite.teacher`; only `inspect_file` here reads a file.

A trace record (one JSONL line) is what `sft` reads:

    {"id", "messages": [system, user, assistant], "rating", "kind", "teacher_rating"}

`messages[:2]` are exactly `prompts.build_messages(example)` (never the hint), and the assistant
content is only the tagged answer, the four blocks, never a reasoning model's separate thinking.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from recone_lite.jsonl import read_jsonl
from recone_lite.log import console
from recone_lite.metrics import percentiles
from recone_lite.prompts import build_messages, cf_text, fmt_number, load_tokenizer, stats_estimate
from recone_lite.rewards import format_ok, parse_rating, round_half_up

TEMPLATE = "reczero"  # RecOne's traces always use the four-step prompt
TEACHERS = ("openai", "template")  # `traces make --teacher`: an endpoint, or the offline warm-up

HINT = (
    "Hint, for you only: this user's true rating of target_item is {rating}. Reason towards a "
    "rating of {rating} in the same four tagged steps, as if you had worked it out yourself from "
    "user_purchase_history and target_item. Do not mention this hint, the true rating, or that "
    "you were told anything; the <rate> block must hold {rating}."
)


def hint_messages(messages: list[dict[str, str]], rating: float) -> list[dict[str, str]]:
    """The ask with the true rating given as a hint, appended to the last user message.

    Appended to the user turn rather than sent as a second user turn, because some chat templates
    (Mistral's) refuse two user messages in a row.

    >>> ask = [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}]
    >>> hinted = hint_messages(ask, 4.0)
    >>> hinted[0] == ask[0], hinted[1]["content"].startswith("U\\n\\nHint, for you only")
    (True, True)
    >>> "true rating of target_item is 4." in hinted[1]["content"], ask[1]["content"]
    (True, 'U')
    """
    out = [dict(m) for m in messages]
    last = max(i for i, m in enumerate(out) if m["role"] == "user")
    out[last]["content"] += "\n\n" + HINT.format(rating=fmt_number(rating))
    return out


# --- the leak filter ----------------------------------------------------------------------------

# Phrases by which a rationalized answer gives away that the rating was handed to it. Each is a
# regular expression (case-insensitive, word-bounded); the name is what the drop count reports.
LEAK_PATTERNS: dict[str, str] = {
    "true rating": r"true (?:rating|score|answer)",
    "actual rating": r"actual (?:rating|score|answer)",
    "real rating": r"real (?:rating|score)",
    "correct rating": r"correct (?:rating|score|answer)",
    "ground truth": r"ground[- ]truth",
    "given rating": r"(?:given|provided|stated|known|revealed|required) (?:rating|score|answer)",
    "rating was given": r"(?:rating|score|answer) (?:is|was|has been|had been) "
    r"(?:provided|revealed|told|given to (?:me|us))",
    "given that the answer": r"given that the (?:answer|rating|score)",
    "we are told": r"(?:we|i|you)(?:['’](?:re|m|ve been)| am| are| was| were| have been"
    r"| had been) (?:told|informed|hinted)",
    "told that": r"told (?:that|us|me)",
    "the hint": r"(?:the|this|a|given) hint(?!s? of)|as hinted|hint (?:says|said|given|states)",
    "the user actually rated": r"(?:user|they|he|she) (?:actually|really) (?:rated|gave|scored)",
    "reason towards": r"reason(?:ing|ed)? (?:towards?|backwards?)|work(?:ing|ed)? backwards?",
    "justify the rating": r"(?:justify|rationali[sz]e) (?:the|a|this) (?:given |target )?"
    r"(?:rating|score)",
    "without mentioning": r"without mentioning",
}
_LEAKS = [(name, re.compile(rf"\b(?:{rx})\b", re.IGNORECASE)) for name, rx in LEAK_PATTERNS.items()]
_HINT_NGRAM = 6  # this many consecutive words copied from the hint text count as a leak


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9_]+(?:\.\d+)?", text.lower())


def leaks_hint(text: str, rating: float) -> str | None:
    """Why `text` (a rationalized answer) gives away that it was told the rating, or None.

    Checks the phrases of `LEAK_PATTERNS` and any run of six words copied from the hint itself.

    >>> ok = "<match>[like] the jazz she loves; [dislike] a weak mix.</match><rate>4</rate>"
    >>> leaks_hint(ok, 4.0) is None
    True
    >>> leaks_hint("Since the true rating is 4, the match is good.", 4.0)
    'true rating'
    >>> leaks_hint("We are told the user liked it.", 4.0), leaks_hint("I’m told it's a 4", 4.0)
    ('we are told', 'we are told')
    >>> leaks_hint("Given that the answer should be 4, ...", 4.0)
    'given that the answer'
    >>> leaks_hint("As hinted, a four.", 4.0), leaks_hint("Following THE HINT: 4", 4.0)
    ('the hint', 'the hint')
    >>> leaks_hint("The user's actual rating is 2.", 2.0)
    'actual rating'
    >>> leaks_hint("I must reason towards a 2 here.", 2.0)
    'reason towards'
    >>> leaks_hint("so the rating of target_item is 4. reason", 4.0)  # copied from the hint
    'copies the hint'
    >>> leaks_hint("A hint of country twang and hints of blues, which she likes.", 4.0) is None
    True
    >>> leaks_hint("From the given ratings, the top rating was given to Kind of Blue.", 4.0) is None
    True
    """
    for name, pattern in _LEAKS:
        if pattern.search(text):
            return name
    hint, words = _words(HINT.format(rating=fmt_number(rating))), _words(text)
    grams = {tuple(hint[i : i + _HINT_NGRAM]) for i in range(len(hint) - _HINT_NGRAM + 1)}
    if any(tuple(words[i : i + _HINT_NGRAM]) in grams for i in range(len(words))):
        return "copies the hint"
    return None


# --- acceptance ---------------------------------------------------------------------------------


def rating_matches(predicted: float | None, truth: float, tolerance: float = 0.0) -> bool:
    """True when the rating equals the truth after rounding half up, or within `tolerance`.

    With the default tolerance 0, 4.4 matches 4 (it rounds to 4) and 3.5 matches 3.5 (a half-star
    scale) but 4.5 does not match 4. A tolerance of 1 accepts one star off either way.

    >>> rating_matches(4.4, 4), rating_matches(4.5, 4), rating_matches(4.5, 5)
    (True, False, True)
    >>> rating_matches(3.5, 3.5), rating_matches(3.0, 3.5)
    (True, False)
    >>> rating_matches(3.0, 4), rating_matches(3.0, 4, tolerance=1), rating_matches(None, 4)
    (False, True, False)
    """
    if predicted is None:
        return False
    truth = float(truth)
    return abs(predicted - truth) <= tolerance or abs(round_half_up(predicted) - truth) <= tolerance


def answer_text(content: str | None) -> str:
    """The tagged answer of a teacher's reply: everything up to the last `</think>` cut off.

    Reasoning models served without a reasoning parser put their thinking inline (sometimes only
    the closing tag, when the chat template opened it). Only the answer becomes an SFT target.

    >>> answer_text("<think>hmm, jazz</think>\\n\\n<rate>4</rate>")
    '<rate>4</rate>'
    >>> answer_text("long musing...</think><rate>4</rate> "), answer_text(None)
    ('<rate>4</rate>', '')
    """
    return (content or "").rsplit("</think>", 1)[-1].strip()


def judge(
    answer: str,
    truth: float,
    scale: tuple[float, float],
    tolerance: float = 0.0,
    *,
    hinted: bool = False,
    truncated: bool = False,
) -> tuple[float | None, str | None]:
    """`(teacher_rating, reason)`: reason is None when the answer is kept, else why not.

    Reasons: `truncated` (cut off at max_tokens), `bad_format` (not exactly the four blocks with a
    readable rating), `wrong_rating`, and for hinted answers `leaked_hint: <phrase>`.

    >>> good = "<analyze user>[pos] jazz</analyze user><analyze item>[like] sax</analyze item>"
    >>> good += "<match>fits</match><rate>4</rate>"
    >>> judge(good, 4.0, (1, 5)), judge(good, 2.0, (1, 5))
    ((4.0, None), (4.0, 'wrong_rating'))
    >>> judge("<rate>4</rate>", 4.0, (1, 5)), judge("<rate>4", 4.0, (1, 5), truncated=True)
    ((4.0, 'bad_format'), (None, 'truncated'))
    >>> judge(good.replace("fits", "fits, as the hint says"), 4.0, (1, 5), hinted=True)
    (4.0, 'leaked_hint: the hint')
    """
    rating = parse_rating(answer, scale)
    if not format_ok(answer, TEMPLATE, scale):
        return rating, "truncated" if truncated else "bad_format"
    if not rating_matches(rating, truth, tolerance):
        return rating, "wrong_rating"
    if hinted and (leak := leaks_hint(answer, truth)):
        return rating, f"leaked_hint: {leak}"
    return rating, None


def trace_record(
    example: dict[str, Any],
    messages: list[dict[str, str]],
    answer: str,
    kind: str,
    teacher_rating: float | None,
) -> dict[str, Any]:
    """One trace line: the un-hinted prompt, the answer as the assistant turn, the true rating."""
    return {
        "id": example["id"],
        "messages": [*messages, {"role": "assistant", "content": answer}],
        "rating": example["rating"],
        "kind": kind,
        "teacher_rating": teacher_rating,
    }


# --- the template teacher (offline format warm-up, not RecOne) ---------------------------------


def _clean(text: Any, limit: int = 80) -> str:
    """Meta text safe inside a block: no angle brackets (no stray tags), one line, short."""
    text = " ".join(str(text).replace("<", "(").replace(">", ")").split())
    return text if len(text) <= limit else text[: limit - 3].rstrip() + "..."


def _aspects(meta: dict[str, Any] | None) -> list[str]:
    """An item's categories (flattened), falling back on its store/brand/author."""
    meta = meta or {}
    found: list[str] = []
    stack = [meta.get("categories") or meta.get("category") or meta.get("genres") or []]
    while stack:
        part = stack.pop(0)
        if isinstance(part, (list, tuple)):
            stack[:0] = list(part)
        elif part and (text := _clean(part, 40)) and text not in found:
            found.append(text)
    for key in ("store", "brand", "author", "artist"):
        if not found and meta.get(key):
            found.append(_clean(meta[key], 40))
    return found[:3]


def _title(meta: dict[str, Any] | None, item_id: Any) -> str:
    return _clean((meta or {}).get("title") or f"item {item_id}")


def _level(rating: Any, scale: tuple[float, float]) -> int:
    """+1 for the top quarter of the scale, -1 for the bottom quarter, 0 between."""
    try:
        value = float(rating)
    except (TypeError, ValueError):
        return 0
    low, high = float(scale[0]), float(scale[1])
    quarter = (high - low) / 4
    return 1 if value >= high - quarter else -1 if value <= low + quarter else 0


def template_answer(example: dict[str, Any], scale: tuple[float, float] = (1.0, 5.0)) -> str:
    """A minimal well-formed four-block answer built from the example, ending in the TRUE rating.

    Not reasoning: a format warm-up (`--teacher template`) that teaches the tags, the [like] /
    [dislike] / [pos] / [neg] marks and the `<rate>` block before GRPO, with no teacher model.

    >>> past = [{"item_id": "a", "item": {"title": "Kind of Blue", "categories": ["Jazz"]},
    ...          "rating": 5}, {"item_id": "b", "item": {"title": "Noise"}, "rating": 1}]
    >>> example = {"id": "e1", "rating": 4.0, "history": past,
    ...            "target": {"title": "Blue <Train>", "categories": [["Music", "Jazz"]]}}
    >>> text = template_answer(example)
    >>> print(text)
    <analyze user>
    [1] Kind of Blue (rated 5): [like] Jazz
    [2] Noise (rated 1): [dislike] Noise
    [pos] Jazz
    [neg] Noise
    </analyze user>
    <analyze item>
    Blue (Train): Music, Jazz
    [like] Jazz
    [dislike] nothing the user disliked before
    </analyze item>
    <match>
    Blue (Train) fits what this user liked (Jazz): a good match.
    </match>
    <rate>4</rate>
    >>> format_ok(text), parse_rating(text)
    (True, 4.0)
    """
    liked: Counter[str] = Counter()
    disliked: Counter[str] = Counter()
    lines = []
    for number, entry in enumerate(example.get("history") or [], start=1):
        meta = entry.get("item")
        aspects = _aspects(meta) or [_title(meta, entry.get("item_id"))]
        level = _level(entry.get("rating"), scale)
        if level > 0:
            mark, kept = "[like]", liked
        elif level < 0:
            mark, kept = "[dislike]", disliked
        else:
            mark, kept = "[like] some, [dislike] some of", None
        if kept is not None:
            kept.update(aspects)
        rating = fmt_number(entry.get("rating"))
        title = _title(meta, entry.get("item_id"))
        lines.append(f"[{number}] {title} (rated {rating}): {mark} {', '.join(aspects)}")
    if not lines:
        lines.append("(no history)")
    pos = [a for a, _ in liked.most_common(3)]
    neg = [a for a, _ in disliked.most_common(3) if a not in pos]
    lines.append(f"[pos] {', '.join(pos) or 'nothing clear'}")
    lines.append(f"[neg] {', '.join(neg) or 'nothing clear'}")

    target = example.get("target") or {}
    title = _title(target, example.get("item_id"))
    aspects = _aspects(target)
    likes = [a for a in aspects if a in pos]
    dislikes = [a for a in aspects if a in neg]
    item = [
        f"{title}: {', '.join(aspects) or 'no categories given'}",
        f"[like] {', '.join(likes) or 'nothing the user liked before'}",
        f"[dislike] {', '.join(dislikes) or 'nothing the user disliked before'}",
    ]
    level = _level(example["rating"], scale)
    why = f" ({', '.join(likes)})" if likes else ""
    match = {
        1: f"{title} fits what this user liked{why}: a good match.",
        0: f"{title} fits this user only in part: a middling match.",
        -1: f"{title} does not fit what this user likes: a poor match.",
    }[level]
    return (
        "<analyze user>\n" + "\n".join(lines) + "\n</analyze user>\n"
        "<analyze item>\n" + "\n".join(item) + "\n</analyze item>\n"
        f"<match>\n{match}\n</match>\n"
        f"<rate>{fmt_number(example['rating'])}</rate>"
    )


def evidence_answer(example: dict[str, Any], scale: tuple[float, float] = (1.0, 5.0),
                    rate: str = "truth", cf: tuple[str, ...] = ()) -> str:
    """A short four-block answer that reasons from the evidence in the prompt (the user's likes,
    the rating statistics, other users' earlier ratings of the item) and ends in the TRUE rating.

    An offline rationalized trace: every line before `<rate>` is read off the prompt, so the
    model learns to gather the evidence next to `<rate>` and how ratings spread around it; the
    rating is the truth (a train or cold-start example's, never dev or test).

    >>> past = [{"item_id": "a", "item": {"title": "Fargo", "categories": ["Crime"]}, "rating": 5},
    ...         {"item_id": "b", "item": {"title": "Jaws", "categories": ["Horror"]}, "rating": 1}]
    >>> example = {"id": "e1", "rating": 2.0, "history": past,
    ...            "target": {"title": "Heat", "categories": ["Crime", "Drama"]},
    ...            "item_history": [{"rating": 4.0}, {"rating": 3.0}],
    ...            "stats": {"user_mean": 3.6167, "user_count": 45, "item_mean": 3.5,
    ...                      "item_count": 2, "global_mean": 3.53}}
    >>> text = evidence_answer(example)
    >>> print(text)
    <analyze user>[pos] Crime [neg] Horror</analyze user>
    <analyze item>others 4 3; [like] Crime</analyze item>
    <match>estimate 3.60</match>
    <rate>2</rate>
    >>> format_ok(text), parse_rating(text)
    (True, 2.0)

    `rate="estimate"` rates what the evidence adds up to instead (the estimate in the prompt, a
    statistical teacher, not the truth): the answer a model that copies its evidence writes.

    >>> parse_rating(evidence_answer(example, rate="estimate"))
    3.6

    `rate="rounded"` writes that estimate rounded (halves up) to a whole star, the answer the
    median of whole-star ratings near it favours (the `mixed` warm-up teacher's other half).

    >>> evidence_answer(example, rate="rounded").endswith("<rate>4</rate>")
    True

    `cf` names the collaborative predictions the prompt shows (`data.cf`): the match step
    gathers them instead of the estimate, right before the rating.

    >>> example["cf"] = {"biases": 3.71, "mf": 3.84, "knn": 3.9}
    >>> evidence_answer(example, cf=("mf", "knn")).splitlines()[-2:]
    ['<match>MF 3.84, item-kNN 3.90</match>', '<rate>2</rate>']
    """
    liked: Counter[str] = Counter()
    disliked: Counter[str] = Counter()
    for entry in example.get("history") or []:
        level = _level(entry.get("rating"), scale)
        aspects = _aspects(entry.get("item")) or [_title(entry.get("item"), entry.get("item_id"))]
        (liked if level > 0 else disliked if level < 0 else Counter()).update(aspects)
    pos = [a for a, _ in liked.most_common(2)]
    neg = [a for a, _ in disliked.most_common(2) if a not in pos]
    stats = example.get("stats") or {}

    def mean(key: str, count: str | None = None) -> str:
        value = stats.get(key)
        if value is None or (count and not stats.get(count)):
            return "none"
        return f"{float(value):.2f}"

    aspects = _aspects(example.get("target")) or [_title(example.get("target"),
                                                         example.get("item_id"))]
    likes = [a for a in aspects if a in pos]
    dislikes = [a for a in aspects if a in neg]
    earlier = " ".join(fmt_number(e.get("rating")) for e in example.get("item_history") or [])
    user = f"[pos] {', '.join(pos) or 'none'} [neg] {', '.join(neg) or 'none'}"
    item = f"others {earlier or 'none'}"
    item += f"; [like] {', '.join(likes)}" if likes else ""
    item += f"; [dislike] {', '.join(dislikes)}" if dislikes else ""
    estimate = stats_estimate(stats, scale) if stats else None
    shown_cf = cf_text(example["cf"], cf) if cf and isinstance(example.get("cf"), dict) else None
    match = shown_cf.replace(" |", ",") if shown_cf else f"estimate {estimate:.2f}" \
        if estimate is not None else \
        f"user {mean('user_mean', 'user_count')}, item {mean('item_mean', 'item_count')}"
    rating = fmt_number(example["rating"]) if rate == "truth" or estimate is None else \
        f"{estimate:.2f}" if rate == "estimate" else str(round_half_up(estimate))
    return (f"<analyze user>{user}</analyze user>\n<analyze item>{item}</analyze item>\n"
            f"<match>{match}</match>\n<rate>{rating}</rate>")


def template_trace(example: dict[str, Any], scale: tuple[float, float]) -> dict[str, Any]:
    """A `kind: "template"` trace record for one example (no teacher, no network)."""
    messages = build_messages(example, TEMPLATE, scale)
    return trace_record(example, messages, template_answer(example, scale), "template",
                        float(example["rating"]))


# --- inspect ------------------------------------------------------------------------------------


def _assistant(record: dict[str, Any]) -> str | None:
    messages = record.get("messages")
    if isinstance(messages, list) and messages and isinstance(messages[-1], dict):
        if messages[-1].get("role") == "assistant" and isinstance(messages[-1].get("content"), str):
            return messages[-1]["content"]
    if isinstance(record.get("completion"), str):  # the prompt + completion form
        return record["completion"]
    return None


def inspect_traces(
    records: Iterable[dict[str, Any]],
    scale: tuple[float, float] = (1.0, 5.0),
    *,
    samples: int = 2,
    count_tokens: Any = None,
) -> dict[str, Any]:
    """Counts by kind, format validity, rating agreement, leaks, lengths, `samples` per kind.

    `count_tokens(text) -> int`, when given, adds completion lengths in tokens.

    >>> good = "<analyze user>[pos] x</analyze user><analyze item>y</analyze item>"
    >>> good += "<match>z</match><rate>4</rate>"
    >>> rows = [{"id": 1, "kind": "align", "rating": 4, "messages": [
    ...     {"role": "user", "content": "u"}, {"role": "assistant", "content": good}]},
    ...     {"id": 2, "kind": "rationalized", "rating": 2, "messages": [
    ...     {"role": "assistant", "content": good.replace("z<", "the true rating<")}]},
    ...     {"id": 3, "kind": "align", "rating": 4}]
    >>> report = inspect_traces(rows, samples=0)
    >>> report["n"], report["kinds"], report["format_ok"], report["no_answer"]
    (3, {'align': 2, 'rationalized': 1}, 2, 1)
    >>> report["rating_agrees"], report["leaked_hint"], report["completion_chars"]["n"]
    (1, 1, 2)
    """
    kinds: Counter[str] = Counter()
    report: dict[str, Any] = {"n": 0, "format_ok": 0, "rating_agrees": 0, "no_answer": 0,
                              "unparsable_rating": 0, "leaked_hint": 0, "leaks": Counter()}
    chars, tokens, shown = [], [], []
    shown_per_kind: Counter[str] = Counter()
    for record in records:
        report["n"] += 1
        kind = str(record.get("kind", "?"))
        kinds[kind] += 1
        answer = _assistant(record)
        if answer is None:
            report["no_answer"] += 1
            continue
        chars.append(len(answer))
        if count_tokens is not None:
            tokens.append(count_tokens(answer))
        report["format_ok"] += format_ok(answer, TEMPLATE, scale)
        rating = parse_rating(answer, scale)
        report["unparsable_rating"] += rating is None
        truth = record.get("rating")
        if isinstance(truth, (int, float)) and rating_matches(rating, truth):
            report["rating_agrees"] += 1
        if kind == "rationalized" and isinstance(truth, (int, float)):
            if leak := leaks_hint(answer, truth):
                report["leaked_hint"] += 1
                report["leaks"][leak] += 1
        if shown_per_kind[kind] < samples:
            shown_per_kind[kind] += 1
            shown.append({"id": record.get("id"), "kind": kind, "rating": truth,
                          "completion": answer})
    report["kinds"] = dict(kinds.most_common())
    report["leaks"] = dict(report["leaks"])
    report["completion_chars"] = percentiles(sorted(chars))
    if count_tokens is not None:
        report["completion_tokens"] = percentiles(sorted(tokens))
    report["samples"] = shown
    return report


def inspect_file(
    path: str | Path,
    scale: tuple[float, float] = (1.0, 5.0),
    *,
    samples: int = 1,
    tokenizer: str | None = None,
) -> dict[str, Any]:
    """`inspect_traces` over a trace file; `tokenizer` (a name or folder) adds token lengths."""
    count_tokens = None
    if tokenizer is not None:
        loaded = load_tokenizer(tokenizer)  # one-line errors; never runs or asks about code

        def count_tokens(text: str) -> int:
            return len(loaded.encode(text, add_special_tokens=False))

    records = (record for _, record in read_jsonl(path))
    report = inspect_traces(records, scale, samples=samples, count_tokens=count_tokens)
    return {"file": str(path), **report}


def render_report(report: dict[str, Any], sample_chars: int = 600) -> None:
    """Print an `inspect_file` report as a table and the samples, on stderr."""
    from rich.markup import escape
    from rich.table import Table

    n = report["n"] or 1
    table = Table(title=f"{report['file']}: {report['n']:,} traces")
    table.add_column("")
    table.add_column("count", justify="right")
    table.add_column("share", justify="right")
    rows = [(f"kind {kind}", count) for kind, count in report["kinds"].items()]
    rows += [
        ("format ok", report["format_ok"]),
        ("rating agrees with truth", report["rating_agrees"]),
        ("no rating", report["unparsable_rating"]),
        ("no assistant turn", report["no_answer"]),
        ("rationalized with a leaked hint", report["leaked_hint"]),
    ]
    for name, count in rows:
        table.add_row(name, f"{count:,}", f"{count / n:.1%}")
    for unit in ("chars", "tokens"):
        if lengths := report.get(f"completion_{unit}"):
            table.add_row(f"completion {unit} p50/p90/p99/max",
                          f"{lengths['p50']:,} / {lengths['p90']:,} / {lengths['p99']:,} / "
                          f"{lengths['max']:,}", "")
    console.print(table)
    for sample in report["samples"]:
        text = sample["completion"]
        if len(text) > sample_chars:
            text = text[:sample_chars] + f" [... {len(text) - sample_chars:,} more chars]"
        title = f"{sample['kind']} id={sample['id']} rating={sample['rating']}"
        console.print(f"\n[bold]{escape(title)}[/bold]", highlight=False)
        console.print(text, markup=False, highlight=False)
