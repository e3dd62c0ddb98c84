"""`recone-lite traces make`: ask the teacher, rationalize the misses, cache every answer, count
the cost.

For each example of a prepared split: ask the teacher with the RecOne prompt; keep the answer
(`align`) when it is well formed and its rating matches the truth; otherwise ask again with the
true rating as a hint and keep that answer (`rationalized`) only if it matches and passes the leak
filter. Every successful reply is cached on disk under a key of the model, the messages and the
sampling parameters, as soon as it arrives, so a rerun after a crash or a kill sends no request
twice. The output files are written whole at the end (temporary name, then rename): a killed run
leaves the cache, never a half-written trace file.

Files: `OUT` (kept traces, in split order), `OUT` with `.dropped.jsonl` (one line per example not
kept: id, reason, the rejected answer or the teacher's error), `OUT.cache/` (one JSON per reply).
An existing `OUT` or dropped file is replaced only with `--overwrite`, so a rerun during a partial
outage never swaps a full trace file for a shorter one unasked.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

from recone_lite import log
from recone_lite.errors import InputError, ReconeError
from recone_lite.files import check_target
from recone_lite.jsonl import dumps, write_jsonl
from recone_lite.openai_client import redact, stream_chat_completions  # openai: when called
from recone_lite.prepared import MANIFEST, SPLITS, read_scale, read_split
from recone_lite.prompts import build_messages
from recone_lite.traces import (
    TEACHERS,
    TEMPLATE,
    answer_text,
    hint_messages,
    judge,
    template_trace,
    trace_record,
)

SHOWN_ERRORS = 5  # teacher errors listed in the summary (all of them are in the dropped file)


def dropped_path(out: Path) -> Path:
    """Where the examples that were not kept are listed, beside `out`.

    >>> dropped_path(Path("runs/traces.jsonl")).as_posix(), dropped_path(Path("t")).as_posix()
    ('runs/traces.dropped.jsonl', 't.dropped.jsonl')
    """
    stem = out.name[: -len(".jsonl")] if out.name.endswith(".jsonl") else out.name
    return out.with_name(f"{stem}.dropped.jsonl")


# --- the cache ----------------------------------------------------------------------------------


def cache_key(model: str, messages: list[dict[str, Any]], params: dict[str, Any]) -> str:
    """sha256 of the model, the request messages and the sampling parameters.

    >>> key = cache_key("m", [{"role": "user", "content": "hi"}], {"temperature": 0.6})
    >>> len(key), key == cache_key("m", [{"role": "user", "content": "hi"}], {"temperature": 0.6})
    (64, True)
    >>> key == cache_key("other", [{"role": "user", "content": "hi"}], {"temperature": 0.6})
    False
    """
    blob = json.dumps({"model": model, "messages": messages, "params": params}, sort_keys=True,
                      ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def cache_get(folder: Path, key: str) -> dict[str, Any] | None:
    """The cached reply for `key`, or None (an unreadable entry counts as absent)."""
    path = folder / f"{key}.json"
    try:
        entry = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return entry if isinstance(entry, dict) and isinstance(entry.get("content"), str) else None


def cache_put(folder: Path, key: str, entry: dict[str, Any]) -> None:
    """Store one reply atomically (a kill mid-write leaves no partial entry)."""
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{key}.{os.getpid()}.tmp"
    tmp.write_text(dumps(entry) + "\n", encoding="utf-8")
    os.replace(tmp, folder / f"{key}.json")


# --- teacher calls ------------------------------------------------------------------------------


def ask(
    requests: list[list[dict[str, str]]],
    *,
    client: dict[str, Any],
    cache: Path,
    counts: Counter[str],
    stage: str,
) -> list[dict[str, Any]]:
    """Replies to `requests` (in order): from the cache where present, else from the teacher.

    Each reply is `{"content", "reasoning_content", "finish_reason", "prompt_tokens",
    "completion_tokens"}` or `{"error"}`. Only successful replies are cached, so a rerun retries
    the errors. `counts` gains `requests`, `cached`, `prompt_tokens`, `completion_tokens`.
    """
    params = {"temperature": client["temperature"], "max_tokens": client["max_tokens"]}
    keys = [cache_key(client["model"], messages, params) for messages in requests]
    replies: list[dict[str, Any] | None] = [cache_get(cache, key) for key in keys]
    missing = [i for i, reply in enumerate(replies) if reply is None]
    counts["cached"] += len(requests) - len(missing)
    if not missing:
        return replies  # type: ignore[return-value]
    log.info(f"{stage}: {len(missing)} requests to {client['model']} "
             f"({len(requests) - len(missing)} from the cache)")
    stream = stream_chat_completions((requests[i] for i in missing), **client)
    done = 0
    with log.progress(stage, len(missing), unit="replies") as step:
        for i, result in zip(missing, stream, strict=True):
            counts["requests"] += 1
            counts["prompt_tokens"] += result.prompt_tokens
            counts["completion_tokens"] += result.completion_tokens
            step(note=f"{counts['prompt_tokens']:,} prompt + {counts['completion_tokens']:,} "
                 "completion tokens so far")
            if result.error is not None:
                replies[i] = {"error": result.error}
                continue
            entry = {
                "model": client["model"],
                "content": result.content or "",
                "reasoning_content": result.reasoning_content,
                "finish_reason": result.finish_reason,
                "prompt_tokens": result.prompt_tokens,
                "completion_tokens": result.completion_tokens,
            }
            cache_put(cache, keys[i], entry)
            replies[i] = entry
            done += 1
            if done % 100 == 0:
                log.info(f"{stage}: {done}/{len(missing)} answered")
    return replies  # type: ignore[return-value]


def make_traces(
    data: Path,
    out: Path,
    *,
    split: str = "coldstart",
    teacher: str = "openai",
    base_url: str | None = None,
    model: str | None = None,
    api_key_env: str = "OPENAI_API_KEY",
    limit: int | None = None,
    concurrency: int = 8,
    tolerance: float = 0.0,
    cache: Path | None = None,
    max_tokens: int = 4096,
    temperature: float = 0.6,
    max_retries: int = 4,
    timeout: float = 600.0,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write the traces of `data/<split>.jsonl` to `out`; return the summary (also logged).
    An existing `out` or dropped file is replaced only with `overwrite` (checked before any
    request; the reply cache makes the re-run cheap).

    Long on purpose: the two passes (ask every example, then ask again with the hint for the
    misses) share the bookkeeping of drops, leaks and counts that the summary reports, and read
    best top to bottom in one place."""
    if teacher not in TEACHERS:
        raise InputError(f"unknown teacher {teacher!r}; choose {' or '.join(TEACHERS)}",
                         field="teacher")
    out = Path(out)
    check_target(out, overwrite=True, flag="--out")  # files, never a folder: before any call
    check_target(dropped_path(out), overwrite=True, flag="--out")
    inputs = {(Path(data) / name).resolve() for name in
              (MANIFEST, *(f"{s}.jsonl" for s in SPLITS))}
    for target in (out, dropped_path(out)):
        if target.resolve() in inputs:
            raise InputError("is a file of the prepared folder that --data names; choose "
                             "another --out", path=target, field="--out")
    for target in (out, dropped_path(out)):  # a dangling symlink exists too
        if not overwrite and (target.exists() or target.is_symlink()):
            raise InputError("exists; pass --overwrite to replace it (the reply cache makes "
                             "the re-run cheap) or choose another --out", path=target,
                             field="--out")
    scale = read_scale(data)
    examples = read_split(data, split)[:limit]
    if not examples:
        raise InputError("no examples", path=Path(data) / f"{split}.jsonl")
    counts: Counter[str] = Counter()
    kept: list[tuple[int, dict[str, Any]]] = []
    dropped: list[dict[str, Any]] = []
    dropped_by: Counter[str] = Counter()
    first_pass: Counter[str] = Counter()
    leaks: Counter[str] = Counter()

    if teacher == "template":
        kept = [(i, template_trace(example, scale)) for i, example in enumerate(examples)]
    else:
        if not base_url or not model:
            raise InputError("--teacher openai needs --base-url and --model (or use --teacher "
                             "template for the offline format warm-up)", field="base_url")
        client = {"base_url": base_url, "model": model, "api_key_env": api_key_env,
                  "concurrency": concurrency, "max_retries": max_retries,
                  "temperature": temperature, "max_tokens": max_tokens, "timeout": timeout}
        cache = Path(cache) if cache is not None else Path(f"{out}.cache")
        if cache.exists() and not cache.is_dir():
            raise InputError("exists and is not a folder (the reply cache is one)", path=cache,
                             field="--cache")
        asks = [build_messages(example, TEMPLATE, scale) for example in examples]

        def drop(i: int, reason: str, stage: str, reply: dict[str, Any], rating=None) -> None:
            dropped_by[reason] += 1
            row = {"id": examples[i]["id"], "reason": reason, "stage": stage,
                   "rating": examples[i]["rating"], "teacher_rating": rating}
            if "error" in reply:
                row["error"] = redact(reply["error"])
            else:
                row["completion"] = answer_text(reply["content"])
            dropped.append(row)

        misses = []
        replies = ask(asks, client=client, cache=cache, counts=counts, stage="ask")
        for i, reply in enumerate(replies):
            if "error" in reply:
                drop(i, "teacher_error", "ask", reply)
                continue
            answer = answer_text(reply["content"])
            rating, reason = judge(answer, examples[i]["rating"], scale, tolerance,
                                   truncated=reply.get("finish_reason") == "length")
            first_pass[reason or "match"] += 1
            if reason is None:
                kept.append((i, trace_record(examples[i], asks[i], answer, "align", rating)))
            else:
                misses.append(i)

        hinted = [hint_messages(asks[i], examples[i]["rating"]) for i in misses]
        replies = ask(hinted, client=client, cache=cache, counts=counts, stage="rationalize")
        for i, reply in zip(misses, replies, strict=True):
            if "error" in reply:
                drop(i, "teacher_error", "rationalize", reply)
                continue
            answer = answer_text(reply["content"])
            rating, reason = judge(answer, examples[i]["rating"], scale, tolerance, hinted=True,
                                   truncated=reply.get("finish_reason") == "length")
            if reason is None:
                kept.append((i, trace_record(examples[i], asks[i], answer, "rationalized",
                                             rating)))
            elif reason.startswith("leaked_hint: "):
                leaks[reason.removeprefix("leaked_hint: ")] += 1
                drop(i, "leaked_hint", "rationalize", reply, rating)
            else:
                drop(i, f"rationalized_{reason}", "rationalize", reply, rating)

    kept.sort(key=lambda pair: pair[0])
    order = {example["id"]: i for i, example in enumerate(examples)}
    dropped.sort(key=lambda row: order[row["id"]])
    errors = [row for row in dropped if row["reason"] == "teacher_error"]
    failed = teacher == "openai" and len(errors) == len(examples)  # no reply at all: an outage
    if not failed:  # the source's data folder, so `sft --traces` can find its recipe
        write_jsonl(out, ({**record, "data": str(data)} for _, record in kept))
    write_jsonl(dropped_path(out), dropped)

    kinds = Counter(record["kind"] for _, record in kept)
    summary = {
        "out": str(out),
        "dropped_file": str(dropped_path(out)),
        "teacher": teacher,
        "model": model if teacher == "openai" else None,
        "examples": len(examples),
        "kept": {kind: kinds[kind] for kind in
                 (("template",) if teacher == "template" else ("align", "rationalized"))},
        "dropped": dict(dropped_by.most_common()),
        "leaks": dict(leaks.most_common()),
        "first_pass": dict(first_pass.most_common()),
        "errors": len(errors),
        "error_examples": [{"id": row["id"], "stage": row["stage"], "error": row["error"]}
                           for row in errors[:SHOWN_ERRORS]],
        "requests": counts["requests"],
        "cached": counts["cached"],
        "prompt_tokens": counts["prompt_tokens"],
        "completion_tokens": counts["completion_tokens"],
    }
    log.info(cost_line(summary))
    if failed:
        raise ReconeError(
            f"traces: all {len(examples)} teacher requests failed (first: {errors[0]['error']});"
            f" nothing written to {out}; every error is in {dropped_path(out)}")
    return summary


def cost_line(summary: dict[str, Any]) -> str:
    """The one-line account printed at the end of a run.

    >>> print(cost_line({"examples": 10, "kept": {"align": 6, "rationalized": 2},
    ...     "dropped": {"leaked_hint": 1, "teacher_error": 1}, "errors": 1, "requests": 13,
    ...     "cached": 1, "prompt_tokens": 12000, "completion_tokens": 4100}))
    traces: 10 examples -> kept 6 align, 2 rationalized; dropped 2 (leaked_hint 1, \
teacher_error 1) | 13 requests (+1 cached), 12,000 prompt + 4,100 completion tokens
    """
    kept = ", ".join(f"{n} {kind}" for kind, n in summary["kept"].items())
    dropped = summary["dropped"]
    line = f"traces: {summary['examples']} examples -> kept {kept}"
    if dropped:
        reasons = ", ".join(f"{reason} {n}" for reason, n in dropped.items())
        line += f"; dropped {sum(dropped.values())} ({reasons})"
    if summary.get("teacher") == "template":
        return line + " | offline template teacher: no requests"
    return (
        f"{line} | {summary['requests']} requests (+{summary['cached']} cached), "
        f"{summary['prompt_tokens']:,} prompt + {summary['completion_tokens']:,} completion tokens"
    )
