"""`recone-lite predict`: JSONL requests in, one JSON line per request out, in input order.

A request is a prepared example or a bare `{"id", "history", "target"}`. An output line is
`{"id", "rating", "ok", "completion", "tokens"}`, plus `"truth"` when the request has a rating,
`"ratings"` and `"spread"` with `--samples k > 1`, and `"error"` when a server request failed.
`rating` is `parse_rating` of the completion (the mean of the parsable ones over k samples), null
when none parses; `ok` is false exactly then. `tokens` counts generated tokens (all samples).

Three backends (generate.py, shared with the dev evaluation of `train` / `sft`) map a stream of
requests to a stream of completions, in order:
- `hf`: local batched `model.generate` with left padding (transformers / Unsloth, see models.py);
- `openai`: any OpenAI-compatible server, concurrent requests (see openai_client.py);
- `vllm`: in-process vLLM on CUDA, with the adapter as a LoRARequest.

Output is flushed line by line, so `| head -n 3` sees lines as soon as a batch is done, and a
reader that closes the pipe early ends the run quietly. `--out FILE --resume` skips the ids
already in FILE (a trailing partial line from a kill is dropped) and appends the rest.

`predict()` is three steps: `resolve` the settings (`PredictSettings`, predict_settings.py:
each from the option, else the `--adapter` run, else the exported `--model`, which
run_settings.py reads, else the default), `load_backend`, and stream the rows (`write_rows`).

Over 600 lines and one unit: the command's checks before a model loads, which setting comes
from where, the request reader, the rows and the resume rules all decide what one output line
holds.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import statistics
import sys
import time
from collections import deque
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from recone_lite import log
from recone_lite.errors import InputError, ReconeError, no_file, validation_problem
from recone_lite.generate import (
    Backend,
    Sample,
    hf_backend,
    openai_backend,
    vllm_backend,
)
from recone_lite.jsonl import dumps, read_jsonl
from recone_lite.models import ModelSpec, check_spec, load_model
from recone_lite.predict_settings import PredictSettings, recipe_options  # noqa: F401 (benches)
from recone_lite.prepared import is_number, is_prepared, parse_scale, read_scale
from recone_lite.prompts import CF_LABELS, TEMPLATES, PromptStyle, load_tokenizer
from recone_lite.readout import READOUTS, expected_value, scale_values
from recone_lite.rewards import parse_rating
from recone_lite.run_settings import RunDefaults, export_defaults, run_defaults

DEFAULT_BATCH = {"hf": 8, "openai": 8, "vllm": 256}
DEFAULT_MAX_NEW_TOKENS = 512  # without a run or an export that records its own


# --- requests in ------------------------------------------------------------------------------


def check_request(request: dict[str, Any]) -> tuple[str, str] | None:
    """`(field, problem)` when a request cannot be predicted, else None.

    >>> check_request({"id": 1, "history": [], "target": {"title": "x"}}) is None
    True
    >>> check_request({"history": [], "target": {}}), check_request({"id": "a", "target": 3})
    (('id', 'missing (a string or an integer)'), ('target', 'expected an object of item meta'))
    >>> check_request({"id": "a", "target": {}, "history": [1]})
    ('history', 'expected a list of objects')
    """
    rid = request.get("id")
    if not isinstance(rid, (str, int)) or isinstance(rid, bool):
        return "id", "missing (a string or an integer)"
    if not isinstance(request.get("target"), dict):
        return "target", "expected an object of item meta"
    history = request.get("history", [])
    if history is not None and (
        not isinstance(history, list) or not all(isinstance(h, dict) for h in history)
    ):
        return "history", "expected a list of objects"
    if request.get("rating") is not None and not is_number(request["rating"]):
        return "rating", "expected a number or null"
    return None


@dataclasses.dataclass
class Counts:
    """What the run saw, for the progress bar and the summary line."""

    rows: int = 0  # lines written
    parsed: int = 0  # of which ok
    tokens: int = 0  # generated tokens
    errors: int = 0  # server requests that failed after their retries
    bad: int = 0  # malformed lines skipped (--skip-bad)
    resumed: int = 0  # ids already in --out
    first_error: str = ""  # the first server error, for the line of an all-failed run
    forced: int = 0  # expected readout: rows whose distribution was read after an appended <rate>


def read_requests(
    path: str, stream: IO[str] | IO[bytes] | None, *, skip_bad: bool, done: set[Any],
    counts: Counts
) -> Iterator[dict[str, Any]]:
    """Valid requests, in order, without those whose ids are in `done` (already predicted).

    `stream` (text or bytes lines) is read instead of the file `path` when given. A line that is
    not UTF-8, malformed JSON, a bad field or a repeated id raises InputError naming the line;
    with `skip_bad` it is counted, warned about (the first ten) and skipped.
    """
    seen: set[Any] = set()
    lines = stream if stream is not None else open(path, "rb")  # noqa: SIM115
    try:
        for number, raw in enumerate(lines, start=1):
            if not raw.strip():
                continue
            try:
                text = decode_line(raw, first=number == 1)
                _, request = next(read_jsonl(path, [text]))  # the shared parser and its messages
                problem = check_request(request)
                if problem is not None:
                    raise InputError(problem[1], path=path, line=number, field=problem[0])
                if request["id"] in seen:
                    raise InputError("repeated id", path=path, line=number, field="id")
            except InputError as err:
                if not skip_bad:
                    raise InputError(err.message, path=path, line=number, field=err.field) from None
                counts.bad += 1
                if counts.bad <= 10:
                    log.warn(f"skipped {path}:{number}: {err.message}")
                continue
            seen.add(request["id"])
            if request["id"] in done:
                counts.resumed += 1
                continue
            yield request
    finally:
        if stream is None:
            lines.close()


def decode_line(raw: str | bytes, first: bool = False) -> str:
    """One input line as text: bytes decoded as UTF-8 (a BOM dropped from the first line).

    >>> decode_line(b'{"id": 1}\\n'), decode_line("\\ufeff{}", first=True)
    ('{"id": 1}\\n', '{}')
    >>> decode_line(b'{"title": "caf\\xe9"}')
    Traceback (most recent call last):
    ...
    recone_lite.errors.InputError: not UTF-8 (byte 0xe9 at column 15)
    """
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            raise InputError(f"not UTF-8 (byte 0x{raw[err.start]:02x} at column "
                             f"{err.start + 1})") from None
    return raw.removeprefix("\ufeff") if first else raw


def done_ids(out: Path) -> set[Any]:
    """Ids already written to `out`; a trailing partial line (the process was killed while
    writing it) is cut off the file first, so appending continues on a line boundary."""
    with open(out, "rb+") as handle:
        size = end = handle.seek(0, os.SEEK_END)
        while end > 0:  # back from the end, a block at a time, to the last newline
            start = max(end - 65536, 0)
            handle.seek(start)
            found = handle.read(end - start).rfind(b"\n")
            if found >= 0:
                end = start + found + 1
                break
            end = start
        if end < size:
            handle.truncate(end)
            log.info(f"{out}: dropped a partial last line ({size - end} bytes)")
    ids = set()
    for number, row in read_jsonl(out):
        if "id" not in row or "ok" not in row:  # not a line predict writes
            raise InputError("not a row of `predict` (no id and ok); --resume continues only "
                             "predict's own --out: choose another --out", path=out, line=number)
        ids.add(row["id"])
    return ids


def check_resumable(out: Path, done: set[Any], input: str) -> None:
    """--resume continues `out` only when its rows are of this request set: an id in `out` that
    `input` does not hold means another run's file. Reads the ids alone (lines that are not
    JSON objects are left to the request reader)."""
    wanted = set()
    with open(input, "rb") as handle:
        for raw in handle:
            try:
                row = json.loads(raw)
            except ValueError:
                continue
            if isinstance(row, dict) and isinstance(row.get("id"), str | int):
                wanted.add(row["id"])
    stray = [i for i in done if i not in wanted]
    if stray:
        raise InputError(f"holds {len(stray)} rows whose ids are not in {input} (first: "
                         f"{stray[0]!r}): the output of other requests; --resume continues only "
                         "this input's own --out", path=out, field="--resume")


# --- results out ------------------------------------------------------------------------------


def result_row(
    request: dict[str, Any],
    samples: list[Sample],
    scale: tuple[float, float],
    completion: bool = True,
    readout: str = "text",
) -> dict[str, Any]:
    """The output line for one request and its k samples.

    >>> row = result_row({"id": 7, "rating": 4}, [Sample("<rate>3.5</rate>", 9)], (1.0, 5.0))
    >>> row
    {'id': 7, 'rating': 3.5, 'ok': True, 'completion': '<rate>3.5</rate>', 'tokens': 9, 'truth': 4}
    >>> texts = ["<rate>4</rate>", "no idea", "<rate>5</rate>"]
    >>> row = result_row({"id": "a"}, [Sample(t, 5) for t in texts], (1.0, 5.0), completion=False)
    >>> row
    {'id': 'a', 'rating': 4.5, 'ok': True, 'tokens': 15, 'ratings': [4.0, None, 5.0], 'spread': 0.5}
    >>> result_row({"id": "b"}, [Sample("", 0, "500: boom")], (1.0, 5.0), completion=False)
    {'id': 'b', 'rating': None, 'ok': False, 'tokens': 0, 'error': '500: boom'}

    With the expected readout (samples carry `probs`), `rating` is the distribution's mean where
    the text parses, `text_rating` the written number; a forced row stays a failure:

    >>> probs = [0.0, 0.0, 0.2, 0.6, 0.2]
    >>> row = result_row({"id": "c"}, [Sample("<rate>4</rate>", 5, probs=probs)], (1.0, 5.0))
    >>> row["rating"], row["ok"], row["text_rating"], row["probs"]
    (4.0, True, 4.0, [0.0, 0.0, 0.2, 0.6, 0.2])
    >>> row = result_row({"id": "d"}, [Sample("hm", 2, probs=probs, forced=True)], (1.0, 5.0),
    ...                  completion=False)
    >>> row["rating"], row["ok"], row["forced"], row["forced_rating"]
    (None, False, True, 4.0)

    A sample without a distribution (openai/vllm: no `<rate>`, or none readable in the
    logprobs) gives no rating; `ok` stays what the text says:

    >>> row = result_row({"id": "e"}, [Sample("no idea", 2)], (1.0, 5.0), False, "expected")
    >>> row["rating"], row["ok"], row["probs"], "forced" in row
    (None, False, None, False)
    >>> row = result_row({"id": "f"}, [Sample("<rate>4</rate>", 5)], (1.0, 5.0), False, "expected")
    >>> row["rating"], row["ok"], row["text_rating"], row["probs"]
    (None, True, 4.0, None)
    """
    ratings = [parse_rating(s.text, scale) for s in samples]
    parsed = [r for r in ratings if r is not None]
    expected = readout == "expected" or any(s.probs is not None for s in samples)
    if expected:
        values = scale_values(scale)
        kept = [m for s, r in zip(samples, ratings, strict=True)
                if (m := s.expected(values, r)) is not None]
    row: dict[str, Any] = {
        "id": request["id"],
        "rating": (round(statistics.fmean(kept), 4) if kept else None) if expected else
        (statistics.fmean(parsed) if parsed else None),
        "ok": bool(parsed),
    }
    if completion:
        row["completion"] = samples[0].text if len(samples) == 1 else [s.text for s in samples]
    row["tokens"] = sum(s.tokens for s in samples)
    if request.get("rating") is not None:
        row["truth"] = request["rating"]
    if len(samples) > 1:
        row["ratings"] = ratings
        row["spread"] = statistics.pstdev(parsed) if parsed else None
    if expected:
        row["text_rating"] = statistics.fmean(parsed) if parsed else None
        # the distributions of the parsed samples; of the forced ones when none parsed
        shown = [s.probs for s, r in zip(samples, ratings, strict=True)
                 if s.probs is not None and (r is not None or not parsed)]
        row["probs"] = [round(statistics.fmean(column), 4)
                        for column in zip(*shown, strict=True)] if shown else None
        if not parsed and shown:
            row["forced"] = True
            row["forced_rating"] = round(expected_value(values, row["probs"]), 4)
    errors = [s.error for s in samples if s.error]
    if errors:
        row["error"] = errors[0]
    return row


# --- the command ------------------------------------------------------------------------------


def _progress(total: int | None) -> Any:
    """The bar on a terminal's stderr: requests done (of `total` when known), rates, ETA."""
    return log.progress("predict", total, unit="requests")


def _count_lines(path: str) -> int:
    with open(path, "rb") as handle:  # bytes: a line that is not UTF-8 is reported when read
        return sum(1 for line in handle if line.strip())


@dataclasses.dataclass
class Resolved:
    """`predict`'s settings once every layer has spoken (`resolve`): the settings with each
    recorded value filled in, and what they decide before a model loads."""

    settings: PredictSettings  # model, template, budgets, readout, quantization filled in
    style: PromptStyle
    scale: tuple[float, float]
    max_seq_length: int | None  # the --adapter run's, when its base is the model
    run: RunDefaults  # what the --adapter run folder records
    exported: RunDefaults  # what an exported --model's recone.json records


def predict(input: str | None = None, settings: PredictSettings | None = None, *,
            stdout: IO[str] | None = None, stdin: IO[str] | None = None,
            **options: Any) -> Counts:
    """The `predict` command: resolve the settings and check the files, load the backend,
    stream the rows. `input` and `options` (PredictSettings' fields) go over `settings`; with
    neither, requests come from stdin.

    Without `model`, the base comes from the `--adapter` run folder. The prompt and decoding
    settings (template, prompt style and budget, readout, answer length, scale, quantization)
    default to what the `--adapter` run's recipe says, else to what an exported `--model`'s
    recone.json records (run_settings.py), so a prediction builds the prompt training built;
    an explicit option always wins; stderr says which setting came from where.
    """
    # 1. Everything that can be checked without a model, before loading one.
    if input is not None:
        options["input"] = input
    resolved = resolve(dataclasses.replace(settings or PredictSettings(), **options))
    s = resolved.settings
    spec = None if s.backend == "openai" else _spec(s, resolved.max_seq_length)
    if spec is not None:
        check_spec(spec)  # missing files, a folder without a tokenizer: before the slow load
    out = Path(s.out) if s.out is not None else None
    start_size = out.stat().st_size if out is not None and out.exists() else None
    done = done_ids(out) if start_size else set()
    if done and s.input != "-":
        check_resumable(out, done, s.input)
    # The first request is read (and checked) before the model loads, too.
    counts = Counts()
    requests: Iterator[dict[str, Any]] = read_requests(
        s.input, stdin if stdin is not None else getattr(sys.stdin, "buffer", sys.stdin)
        if s.input == "-" else None, skip_bad=s.skip_bad, done=done, counts=counts)
    first = next(requests, None)
    requests = itertools.chain([first], requests) if first is not None else iter(())

    # 2. The backend (this loads the model; nothing to predict: nothing loaded).
    run_backend = load_backend(resolved, spec) if first is not None else lambda reqs: iter(())

    # 3. Stream: requests -> backend -> one line each, flushed as it comes.
    total = None if s.input == "-" else max(_count_lines(s.input) - len(done), 0)
    started = time.perf_counter()
    sink: Any = _LazyFile(out) if out else stdout or sys.stdout  # a failed start writes nothing
    try:
        closed = write_rows(requests, run_backend, sink, resolved.scale, s.completion, counts,
                            total, s.readout)
    finally:
        if out:
            sink.close()
    if closed:  # the reader went away (`| head`): stop quietly
        if sink is sys.__stdout__:  # and keep Python's exit quiet too (its flush would fail)
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.__stdout__.fileno())
        log.info(f"predict: the output pipe closed after {counts.rows} rows; stopping")
        return counts
    log.info(summary(counts, time.perf_counter() - started, s.out))
    if counts.rows and counts.errors == counts.rows:  # every request failed: a server outage
        raise ReconeError(f"predict: all {counts.rows} requests failed (first: "
                          f"{counts.first_error}){_take_back(out, start_size)}")
    return counts


def _take_back(out: Path | None, start_size: int | None) -> str:
    """Take this run's rows back out of `out` (a rerun starts clean); what the error adds. A
    file this run created is removed; a symlink is never removed (its target is cut back)."""
    if out is None:
        return ""
    if start_size is None and not out.is_symlink():
        out.unlink(missing_ok=True)
    elif out.exists():
        os.truncate(out, start_size or 0)
    return f"; nothing added to {out}"


def _check_backend(s: PredictSettings) -> None:
    """The options a backend needs or refuses."""
    if s.backend not in DEFAULT_BATCH:
        raise InputError(f"unknown backend {s.backend!r}; choose hf, openai or vllm",
                         field="backend")
    if s.backend == "openai" and not s.base_url:
        raise InputError("--backend openai needs --base-url URL", field="base_url")
    if s.backend == "openai" and s.gguf_file:
        raise InputError(
            "with --backend openai, --model names the served model or adapter", field="gguf_file"
        )
    if s.backend == "openai" and s.adapter and not s.model:
        raise InputError("with --backend openai, --model names the served model or adapter "
                         "(--adapter RUN only gives the run's settings)", field="model")


def _check_counts_and_files(s: PredictSettings) -> None:
    """The numbers, the input and `--out`."""
    if s.samples < 1 or s.max_new_tokens < 1 or (s.batch_size is not None and s.batch_size < 1):
        raise InputError("--samples, --max-new-tokens and --batch-size must be at least 1")
    if s.samples > 1 and s.temperature <= 0:
        raise InputError(
            f"--samples {s.samples} needs --temperature > 0 (greedy decoding repeats itself)",
            field="samples",
        )
    if s.input != "-" and not Path(s.input).is_file():
        raise no_file(path=s.input)
    if s.resume and s.out is None:
        raise InputError("--resume needs --out FILE", field="resume")
    if s.out is not None:
        check_out(Path(s.out), s.resume)
        if s.input != "-" and Path(s.out).resolve() == Path(s.input).resolve():
            raise InputError("is the input file; choose another --out", path=s.out,
                             field="--out")


def resolve(given: PredictSettings) -> Resolved:
    """Each setting from its first layer that has it: the option, the `--adapter` run folder,
    the exported `--model`'s recone.json, the default; each checked, and stderr told which
    came from where. InputError for a bad value or file, before any model loads."""
    _check_backend(given)
    # A `train` / `sft` run folder (or an adapter-only export) records the base and settings.
    run = run_defaults(given.adapter) if given.adapter is not None else RunDefaults()
    taken: list[str] = []  # "setting value (where from)", for the lines on stderr
    s = dataclasses.replace(given)
    max_seq_length = None
    if s.model is None:
        if run.model is None:
            raise InputError(
                "--model is required (or --adapter RUN: a run folder records its base model)",
                field="model")
        s.model, max_seq_length = run.model, run.max_seq_length
        s.gguf_file = s.gguf_file or run.gguf_file
        taken.append(f"model {s.model} ({run.source('model')})")
    # An export (merged folder, GGUF, or adapter-only folder) records its run's settings.
    exported = export_defaults(s.model, s.gguf_file)
    from_export: list[str] = []

    def recorded(name: str, default: Any) -> Any:
        """The option when given, else the run's setting, else the export's, else `default`."""
        if getattr(s, name) is not None:
            return getattr(s, name)
        for found, said in ((run, taken), (exported, from_export)):
            value = getattr(found, name)
            if value is not None:
                said.append(f"{name} {value} ({found.source(name)})")
                return value
        return default

    trained = run.template or exported.template
    s.template = recorded("template", "reczero")
    if trained not in (None, s.template):
        log.warn(f"{s.adapter if run.template else s.model} was trained with the "
                 f"{trained} template; predicting with {s.template}")
    if s.template not in TEMPLATES:
        raise InputError(
            f"unknown template {s.template!r}; choose {', '.join(TEMPLATES)}", field="template"
        )
    s.max_prompt_tokens = recorded("max_prompt_tokens", None)
    s.max_new_tokens = recorded("max_new_tokens", DEFAULT_MAX_NEW_TOKENS)
    s.readout = recorded("readout", "text")
    if s.readout not in READOUTS:
        raise InputError(f"unknown readout {s.readout!r}; choose text or expected",
                         field="readout")
    if s.backend != "openai":
        s.quantization = recorded("quantization", "none")
    style = _style(s, run if run.prompt else exported, taken if run.prompt else from_export)
    _check_counts_and_files(s)
    rating_scale, scale_from = _scale(s.scale, s.input, run, exported)
    if s.readout == "expected":
        scale_values(rating_scale)  # a scale the readout cannot read fails before the model loads
    if scale_from in ("run", "model"):
        found, said = (run, taken) if scale_from == "run" else (exported, from_export)
        said.append(f"scale {rating_scale[0]:g},{rating_scale[1]:g} ({found.source('scale')})")
    if taken:
        log.info(f"predict: from the run {s.adapter}: {', '.join(taken)}")
    if from_export:
        log.info(f"predict: from the export {s.model}: {', '.join(from_export)}")
    return Resolved(s, style, rating_scale, max_seq_length, run, exported)


def _style(s: PredictSettings, style_from: RunDefaults, said: list[str]) -> PromptStyle:
    """The prompt style: the options given, the rest from the run or the export (`style_from`,
    which `said` records); InputError for an unknown system prompt or cf prediction."""
    given = s.prompt()
    from_run = {k: v for k, v in style_from.prompt.items() if k not in given}
    if from_run:
        said.append(", ".join(f"{k} {v}" for k, v in from_run.items())
                    + f" ({style_from.source('prompt')})")
    style = PromptStyle(**{**from_run, **given})
    if style.system not in ("full", "compact"):
        raise InputError(f"unknown system prompt {style.system!r}; choose full or compact",
                         field="system")
    if unknown := [name for name in style.cf if name not in CF_LABELS]:
        raise InputError(f"unknown cf prediction {unknown[0]!r}; choose from "
                         f"{', '.join(CF_LABELS)}", field="cf")
    return style


def load_backend(resolved: Resolved, spec: ModelSpec | None) -> Backend:
    """The backend the settings name, ready to map requests to samples (hf: the model loaded)."""
    s = resolved.settings
    generation: dict[str, Any] = {
        "template": s.template, "scale": resolved.scale, "max_new_tokens": s.max_new_tokens,
        "temperature": s.temperature, "samples": s.samples, "style": resolved.style,
        "readout": s.readout,
    }
    if s.backend == "openai":
        found = served_tokenizer(s.model, resolved.run, resolved.exported)
        max_prompt_tokens = None
        if found is not None:
            limit = resolved.max_seq_length or ModelSpec(name=s.model).max_seq_length
            max_prompt_tokens = s.max_prompt_tokens or max(limit - s.max_new_tokens, 1)
            log.info(f"predict: prompts fitted to {max_prompt_tokens} tokens with the tokenizer "
                     f"of {found[1]}, as local prediction fits them")
        else:
            log.info(f"predict: no tokenizer for {s.model} at hand (--adapter RUN gives its "
                     "base's; a model served under its local path gives its own): the messages "
                     "go whole, without the prompt budget")
        return openai_backend(
            base_url=s.base_url, model=s.model, concurrency=s.concurrency,
            api_key_env=s.api_key_env, seed=s.seed, tokenizer=found[0] if found else None,
            max_prompt_tokens=max_prompt_tokens, **generation)
    max_prompt_tokens = s.max_prompt_tokens or max(spec.max_seq_length - s.max_new_tokens, 1)
    batch = s.batch_size or DEFAULT_BATCH[s.backend]
    if s.backend == "vllm":
        return vllm_backend(spec, max_prompt_tokens=max_prompt_tokens, batch_size=batch,
                            seed=s.seed, **generation)
    hf_model, tokenizer = load_model(spec)  # first: on CUDA it imports Unsloth first
    if s.seed is not None:
        import transformers

        transformers.set_seed(s.seed)
    return hf_backend(hf_model, tokenizer, max_prompt_tokens=max_prompt_tokens,
                      batch_size=batch, **generation)


class _LazyFile:
    """A file opened for appending at its first write, so a run that fails before its first row
    leaves no empty --out behind (which would block the rerun)."""

    def __init__(self, path: Path) -> None:
        self.path, self.handle = path, None

    def write(self, text: str) -> int:
        if self.handle is None:
            self.handle = open(self.path, "a", encoding="utf-8")  # noqa: SIM115
        return self.handle.write(text)

    def flush(self) -> None:
        if self.handle is not None:
            self.handle.flush()

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()


def check_out(out: Path, resume: bool) -> None:
    """`--out FILE` checked before a model loads: its folder exists and is writable, it is not a
    folder, and it holds no earlier rows unless --resume (an empty file counts as none)."""
    if out.is_dir():
        raise InputError("is a folder; --out takes a file name", path=out)
    if out.is_symlink() and not out.exists():  # exists() follows the link: lstat says it is there
        raise InputError(f"is a symlink to a missing file ({os.readlink(out)}); give the file "
                         "itself or another name", path=out, field="--out")
    parent = out.parent
    if not parent.is_dir():
        raise InputError(f"no such folder: {parent}", path=out)
    if out.exists():
        if out.stat().st_size > 0 and not resume:
            raise InputError("exists; pass --resume to continue it, or remove it", path=out)
        if not os.access(out, os.W_OK):
            raise InputError("not writable", path=out)
    elif not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"cannot write in {parent}", path=out)


def write_rows(
    requests: Iterable[dict[str, Any]],
    run: Backend,
    sink: IO[str],
    scale: tuple[float, float],
    completion: bool,
    counts: Counts,
    total: int | None,
    readout: str = "text",
) -> bool:
    """Write one line per request as its samples arrive, with a progress bar on stderr.
    Returns True when the reader closed the pipe (the run stops there)."""
    pending: deque[dict[str, Any]] = deque()  # read by the backend, not yet written

    def feed() -> Iterator[dict[str, Any]]:
        for request in requests:
            pending.append(request)
            yield request

    started = time.perf_counter()
    results = run(feed())
    try:
        with _progress(total) as step:
            for samples in results:
                row = result_row(pending.popleft(), samples, scale, completion, readout)
                counts.rows += 1
                counts.parsed += row["ok"]
                counts.tokens += row["tokens"]
                counts.errors += "error" in row
                if "error" in row and not counts.first_error:
                    counts.first_error = row["error"]
                counts.forced += "forced" in row
                try:
                    sink.write(dumps(row) + "\n")
                    sink.flush()
                except BrokenPipeError:
                    return True
                elapsed = max(time.perf_counter() - started, 1e-9)
                step(note=f"{counts.rows / elapsed:.2f} req/s  {counts.tokens / elapsed:.0f} tok/s")
    finally:
        close = getattr(results, "close", None)
        if close is not None:
            close()  # stops the backend's workers (openai) when we stop early
    return False


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")


def served_tokenizer(model: str, run: RunDefaults,
                     exported: RunDefaults) -> tuple[Any, str] | None:
    """`(tokenizer, its model)` for `--backend openai`'s prompt budget: `--model` when it is a
    local model folder or GGUF (an export served under its path), else the base recorded by
    the `--adapter` run or the adapter-only export; None when none of them is at hand."""
    candidates: list[tuple[str, str | None]] = []
    local = Path(model).expanduser()
    if (local.is_file() and local.suffix == ".gguf") or any(
            (local / name).is_file() for name in TOKENIZER_FILES):
        candidates.append((model, None))
    candidates += [(found.model, found.gguf_file) for found in (run, exported) if found.model]
    for name, gguf in candidates:
        try:
            folder, gguf = ModelSpec(name=name, gguf_file=gguf).source()
            return load_tokenizer(folder, gguf), name
        except InputError as err:
            log.warn(f"no tokenizer from {name} for the prompt budget: {err.message}")
    return None


def _spec(s: PredictSettings, max_seq_length: int | None = None) -> ModelSpec:
    """A ModelSpec from the resolved settings; a bad value is an InputError naming the option."""
    from pydantic import ValidationError

    try:
        return ModelSpec(
            name=s.model,
            gguf_file=s.gguf_file,
            adapter=s.adapter,
            dtype=s.dtype,
            quantization=s.quantization,
            trust_remote_code=s.trust_remote_code,
            **({"max_seq_length": max_seq_length} if max_seq_length else {}),
        )
    except ValidationError as err:
        key, message, _ = validation_problem(err)
        raise InputError(message, field=key) from None


def _scale(
    scale: str | None, input: str, run: RunDefaults | None = None,
    exported: RunDefaults | None = None,
) -> tuple[tuple[float, float], str]:
    """`(scale, where from)`: `--scale`, else the manifest.json of a prepared folder holding the
    input, else the adapter run's data, else the exported model's recone.json, else 1-5."""
    if scale is not None:
        return parse_scale(scale), "option"
    if input != "-" and is_prepared(Path(input).parent):
        return read_scale(Path(input).parent), "input"
    if run is not None and run.scale is not None:
        return run.scale, "run"
    if exported is not None and exported.scale is not None:
        return exported.scale, "model"
    return (1.0, 5.0), "default"


def summary(counts: Counts, wall: float, out: str | None = None) -> str:
    """The closing line on stderr.

    >>> c = Counts(); c.rows, c.parsed, c.tokens = 4, 3, 100
    >>> summary(c, 2.0)
    'predict: 4 rows, 3 parsed (coverage 75.0%), mean 25.0 tokens, 2.0 s (2.00 req/s, 50 tok/s)'
    """
    n = counts.rows
    line = (
        f"predict: {n} rows, {counts.parsed} parsed (coverage {counts.parsed / max(n, 1):.1%}), "
        f"mean {counts.tokens / max(n, 1):.1f} tokens, {wall:.1f} s "
        f"({n / max(wall, 1e-9):.2f} req/s, {counts.tokens / max(wall, 1e-9):.0f} tok/s)"
    )
    extras = [
        f"{counts.resumed} already in {out}" if counts.resumed else "",
        f"{counts.bad} bad lines skipped" if counts.bad else "",
        f"{counts.errors} request errors" if counts.errors else "",
        f"{counts.forced} forced (no <rate>; not counted as parsed)" if counts.forced else "",
    ]
    return "; ".join([line, *(e for e in extras if e)])
