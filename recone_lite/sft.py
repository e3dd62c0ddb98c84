"""`recone-lite sft`: supervised fine-tuning of a LoRA adapter on reasoning traces (RecOne's
cold start), over TRL's `SFTTrainer`.

Each kept trace becomes a conversational prompt/completion row: the prompt is the example's
system + user messages rendered by `prompts.render_prompt` exactly as GRPO and `predict` render
them (same chat template, same token budget), the completion is the trace's tagged answer, and
the loss is on the completion only. Trace lines whose answer lacks the template's blocks, whose
rating disagrees with the truth, that leak the hint, or whose id is not a train/cold-start example
are rejected and counted (`--strict`: any such line is an error).

The run directory is the same as GRPO's (runs.py); the SFT adapter then starts GRPO with
`recone-lite train --recipe music-grpo --init-adapter runs/music-sft` (RecOne).
The same `fit` serves GRPO's warm-up (`warmup:` in a recipe: SFT on offline traces, warmup.py).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from recone_lite import log
from recone_lite.config import Recipe, dump_recipe, packaged_recipes, read_raw_recipe
from recone_lite.dev_eval import dev_metrics
from recone_lite.dry_run import print_run_plan, recipe_tokenizer, run_dir_state
from recone_lite.errors import InputError
from recone_lite.gpu import cuda_available
from recone_lite.jsonl import read_jsonl
from recone_lite.monitor import make_monitor
from recone_lite.prepared import iter_split
from recone_lite.prompts import count_tokens
from recone_lite.rewards import completion_text, format_ok, parse_rating
from recone_lite.runs import RunRecord, check_run_out, is_main_process, open_run_dir
from recone_lite.traces import leaks_hint, rating_matches
from recone_lite.train_loop import run_trainer
from recone_lite.training import (
    Data,
    check_gpu_path,
    check_trainable,
    load_data,
    load_trainable,
    render_rows,
    run_inputs,
    sft_config,
    sft_row,
    sft_trainer,
)

REJECTIONS = ("no_answer", "bad_format", "wrong_rating", "leaked_hint", "unknown_id", "held_out_id")
DEFAULT_RECIPE = "music-sft"  # `sft --traces F` without --recipe, when no SFT recipe matches F


def pick_recipe(traces: Path) -> tuple[str, list[str], str]:
    """The recipe for `sft --traces F` without `--recipe`: `(name, overrides, why)`.

    `traces make` records the prepared folder the traces come from (`"data"` on each line). The
    packaged SFT recipe whose `data.dir` is that folder is picked; when none is, DEFAULT_RECIPE
    with `data.dir` set to it (the trace ids are looked up there); when the traces record no
    folder (older files, hand-made ones), DEFAULT_RECIPE as it is.
    """
    if not traces.is_file():
        raise InputError("is a folder, not a trace file" if Path(traces).is_dir() else
                         "no such trace file", path=traces)
    first = next(read_jsonl(traces), None)
    if first is None:
        raise InputError("no trace lines", path=traces)
    data = first[1].get("data")
    if not isinstance(data, str) or not data:
        return DEFAULT_RECIPE, [], (f"{traces} records no data folder; the default SFT recipe "
                                    "(pass --recipe to choose another)")
    matches = []
    for name, path in packaged_recipes().items():
        try:
            raw = read_raw_recipe(path)
        except InputError:  # a broken packaged recipe cannot be the match
            continue
        section = raw.get("data") if isinstance(raw.get("data"), dict) else {}
        if raw.get("kind") == "sft" and section.get("dir") and _same_dir(section["dir"], data):
            matches.append(name)
    if matches:
        name = DEFAULT_RECIPE if DEFAULT_RECIPE in matches else matches[0]
        return name, [], f"its data.dir is {data}, where {traces} comes from"
    return DEFAULT_RECIPE, [f"data.dir={data}"], (
        f"no SFT recipe reads {data}, where {traces} comes from: the default SFT recipe with "
        f"data.dir={data}")


def _same_dir(a: str, b: str) -> bool:
    """
    >>> _same_dir("data/music", "./data/music/"), _same_dir("data/music", "data/book")
    (True, False)
    """
    return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()


def trace_answer(record: dict[str, Any]) -> str | None:
    """The assistant's answer of a trace line: `messages[-1]`, or a `completion`.

    >>> trace_answer({"messages": [{"role": "user", "content": "u"},
    ...                            {"role": "assistant", "content": "<rate>4</rate>"}]})
    '<rate>4</rate>'
    >>> trace_answer({"prompt": [], "completion": [{"role": "assistant", "content": "a"}]})
    'a'
    >>> trace_answer({"messages": [{"role": "user", "content": "u"}]}) is None
    True
    """
    messages = record.get("messages")
    if isinstance(messages, list) and messages and isinstance(messages[-1], dict):
        last = messages[-1]
        return last.get("content") if last.get("role") == "assistant" else None
    completion = record.get("completion")
    if completion is None:
        return None
    try:
        return completion_text(completion) or None
    except TypeError:
        return None


def judge_trace(
    record: dict[str, Any],
    example: dict[str, Any] | None,
    template: str,
    scale: tuple[float, float],
) -> str | None:
    """Why a trace line cannot be trained on (one of REJECTIONS), or None to keep it.

    >>> good = "<analyze user>[pos] x</analyze user><analyze item>y</analyze item>"
    >>> good += "<match>z</match><rate>4</rate>"
    >>> example = {"id": "e", "rating": 4.0}
    >>> line = {"id": "e", "rating": 4.0, "messages": [{"role": "assistant", "content": good}]}
    >>> judge_trace(line, example, "reczero", (1, 5)) is None
    True
    >>> judge_trace(line, {"id": "e", "rating": 2.0}, "reczero", (1, 5))
    'wrong_rating'
    >>> leaky = {**line, "messages": [{"role": "assistant",
    ...          "content": good.replace("z<", "we are told it is a 4<")}]}
    >>> judge_trace(leaky, example, "reczero", (1, 5))
    'leaked_hint'
    >>> judge_trace(line, None, "reczero", (1, 5)), judge_trace(line, example, "none", (1, 5))
    ('unknown_id', 'bad_format')
    """
    if example is None:
        return "unknown_id"
    answer = trace_answer(record)
    if not answer:
        return "no_answer"
    if not format_ok(answer, template, scale):
        return "bad_format"
    truth = float(example["rating"])
    stated = record.get("rating", truth)
    if not isinstance(stated, (int, float)) or float(stated) != truth:
        return "wrong_rating"
    if not rating_matches(parse_rating(answer, scale), truth):
        return "wrong_rating"
    if leaks_hint(answer, truth):
        return "leaked_hint"
    return None


def read_traces(
    path: Path, recipe: Recipe, data: Data, *, strict: bool
) -> tuple[list[tuple[dict[str, Any], str]], Counter[str]]:
    """`(example, answer)` for each kept trace line, and the counts (`kept:<kind>`, rejections).

    The example is looked up by id in the cold-start split, then train; an id from the dev or
    test split is rejected (training on it would leak the evaluation)."""
    records = list(read_jsonl(path))
    if not records:
        raise InputError("no trace lines", path=path)
    folder = data.dir
    held_out = {str(e["id"]) for split in ("dev", "test") for e in _split_if_any(folder, split)}
    wanted = {str(r.get("id")) for _, r in records} - held_out
    index: dict[str, dict[str, Any]] = {}
    for split in ("coldstart", recipe.data.train_split):
        if wanted - set(index):  # streamed: only the traced examples are kept
            index.update({str(e["id"]): e for e in _split_if_any(folder, split)
                          if str(e["id"]) in wanted})
    kept, counts = [], Counter()
    for line, record in records:
        key = str(record.get("id"))
        reason = "held_out_id" if key in held_out else judge_trace(
            record, index.get(key), recipe.data.template, data.scale)
        if reason is not None:
            if strict:
                raise InputError(f"rejected trace ({reason}); --strict makes any rejected line an "
                                 "error", path=path, line=line)
            counts[reason] += 1
            continue
        counts[f"kept:{record.get('kind', '?')}"] += 1
        kept.append((index[key], trace_answer(record)))
    summary = ", ".join(f"{k.removeprefix('kept:')} {v}" for k, v in counts.items()
                        if k.startswith("kept:"))
    rejected = ", ".join(f"{k} {counts[k]}" for k in REJECTIONS if counts[k])
    log.info(f"traces: {len(records)} read, {len(kept)} kept ({summary or 'none'})"
             f"{'; rejected: ' + rejected if rejected else ''}")
    if not kept:
        raise InputError("no usable trace: every line was rejected", path=path)
    return kept, counts


def _split_if_any(folder: Path, split: str) -> Iterator[dict[str, Any]]:
    return iter_split(folder, split) if (folder / f"{split}.jsonl").is_file() else iter(())


def build_rows(
    pairs: list[tuple[dict[str, Any], str]], tokenizer: Any, recipe: Recipe, data: Data,
    max_length: int,
) -> list[dict[str, Any]]:
    """SFT rows with the prompts rendered as GRPO renders them; rows longer than `max_length`
    tokens are dropped and counted (truncating them would teach a cut-off answer)."""
    rendered = render_rows([e for e, _ in pairs], tokenizer, recipe.data, data.scale)
    rows, too_long = [], 0
    for (_, answer), (_, prompt) in zip(pairs, rendered, strict=True):
        if prompt.n_tokens + count_tokens(answer, tokenizer) + 8 > max_length:
            too_long += 1
            continue
        rows.append(sft_row(prompt.messages, answer))
    if too_long:
        log.warn(f"{too_long} rows longer than sft.max_length={max_length} tokens were dropped")
    if not rows:
        raise InputError(f"every row is longer than sft.max_length={max_length}", field="sft")
    return rows


def train(
    recipe: Recipe, traces: Path, *, strict: bool = False, resume: bool = False,
    overwrite: bool = False, dry_run: bool = False, recipe_name: str = "",
) -> dict[str, Any]:
    """The `sft` command: traces -> rows -> SFTTrainer -> adapter in the run directory."""
    if recipe.kind != "sft":
        raise InputError(f"this is a {recipe.kind} recipe; `sft` needs one with kind: sft",
                         field="kind")
    if not traces.is_file():
        raise InputError("is a folder, not a trace file" if Path(traces).is_dir() else
                         "no such trace file", path=traces)
    out = Path(recipe.output_dir)
    inputs = run_inputs(recipe, recipe_name, traces)
    if not dry_run and is_main_process():  # before any data or model loads (again under the lock)
        check_run_out(out, resume=resume, overwrite=overwrite, inputs=inputs)
    data = load_data(recipe.data, {recipe.data.eval_split: recipe.data.eval_limit}, recipe.seed)
    check_gpu_path(recipe)
    args = sft_config(recipe.sft, recipe, out)
    dev = data.splits[recipe.data.eval_split]
    pairs, counts = read_traces(traces, recipe, data, strict=strict)
    if dry_run:
        tokenizer = recipe_tokenizer(recipe)
        prompt = render_rows([pairs[0][0]], tokenizer, recipe.data, data.scale)[0][1]
        plan = print_run_plan("sft", recipe, args, n_train=len(pairs),
                              n_pool=sum(counts.values()), n_dev=len(dev), prompt=prompt,
                              out_state=run_dir_state(out))
        return {**plan, "counts": dict(counts)}
    # the folder is locked while the run lasts; a run that --overwrite replaces is removed only
    # once this one has started (model loaded, trainer built, run.json written), else put back
    with open_run_dir(out, dump_recipe(recipe), resume=resume, overwrite=overwrite,
                      inputs=inputs) as start:
        checkpoint = start.checkpoint
        record = RunRecord(out, "sft", recipe_name, recipe.seed, start.previous)
        model, tokenizer = load_trainable(recipe)
        trainable, total = check_trainable(model)
        rows = build_rows(pairs, tokenizer, recipe, data, args.max_length)
        monitor = make_monitor(
            record, lambda: dev_metrics(model, tokenizer, dev, recipe, data), args.eval_steps
        )
        trainer = sft_trainer(model, tokenizer, rows, args, [monitor])
        start.started(record)
        result = run_trainer(
            trainer, monitor, record, checkpoint=checkpoint, section="sft", eval_at_start=True,
            extra={"traces": str(traces), "trace_counts": dict(counts), "train_rows": len(rows),
                   "trainable_parameters": trainable, "total_parameters": total,
                   "init_adapter": recipe.init_adapter, "cuda": cuda_available()},
        )
    before, after = result.get("dev_before") or {}, result["dev_metrics"]
    if before:
        log.info(f"format rate on dev: {before.get('format_rate')} before SFT -> "
                 f"{after.get('format_rate')} after; MAE {before.get('mae')} -> {after.get('mae')}")
    return result
