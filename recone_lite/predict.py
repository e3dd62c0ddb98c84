"""`recone-lite predict`: JSONL requests in, one JSON line per request out, in input order.

A request is a prepared example or a bare `{"id", "history", "target"}`. An output line is
`{"id", "rating", "ok", "completion", "tokens"}`, plus `"truth"` when the request has a rating,
`"ratings"` and `"spread"` with `--samples k > 1`, and `"error"` when a server request failed.
`rating` is `parse_rating` of the completion (the mean of the parsable ones over k samples), null
when none parses; `ok` is false exactly then. `tokens` counts generated tokens (all samples).

Three backends map a stream of requests to a stream of completions, in order:
- `hf`: local batched `model.generate` with left padding (transformers / Unsloth, see models.py);
- `openai`: any OpenAI-compatible server, concurrent requests (see openai_client.py);
- `vllm`: in-process vLLM on CUDA, with the adapter as a LoRARequest.

Output is flushed line by line, so `| head -n 3` sees lines as soon as a batch is done, and a
reader that closes the pipe early ends the run quietly. `--out FILE --resume` skips the ids
already in FILE (a trailing partial line from a kill is dropped) and appends the rest.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
import statistics
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any, Literal, NamedTuple

from recone_lite import log
from recone_lite.errors import InputError, ReconeError
from recone_lite.jsonl import dumps, read_jsonl
from recone_lite.models import ModelSpec
from recone_lite.prepared import is_number
from recone_lite.rewards import parse_rating

BackendName = Literal["hf", "openai", "vllm"]
DEFAULT_BATCH = {"hf": 8, "openai": 8, "vllm": 256}


class Sample(NamedTuple):
    """One generated completion: its text, its generated tokens, and a request error if any."""

    text: str
    tokens: int
    error: str | None = None


# A backend turns a stream of requests into a stream of sample lists (k per request), in order.
Backend = Callable[[Iterable[dict[str, Any]]], Iterator[list[Sample]]]


def parse_scale(text: str) -> tuple[float, float]:
    """`"1,5"` -> (1.0, 5.0).

    >>> parse_scale("1,5"), parse_scale("0.5, 10")
    ((1.0, 5.0), (0.5, 10.0))
    >>> parse_scale("5,1")
    Traceback (most recent call last):
    ...
    recone_lite.errors.InputError: scale: expected MIN,MAX with MIN < MAX, got '5,1'
    """
    try:
        low, high = (float(part) for part in text.split(","))
    except ValueError:
        low = high = math.nan
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise InputError(f"expected MIN,MAX with MIN < MAX, got {text!r}", field="scale")
    return low, high


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


def read_requests(
    path: str, stream: IO[str] | None, *, skip_bad: bool, done: set[Any], counts: Counts
) -> Iterator[dict[str, Any]]:
    """Valid requests, in order, without those whose ids are in `done` (already predicted).

    A malformed line, a bad field or a repeated id raises InputError naming the line; with
    `skip_bad` it is counted, warned about (the first ten) and skipped.
    """
    seen: set[Any] = set()
    lines = stream if stream is not None else open(path, encoding="utf-8")  # noqa: SIM115
    try:
        for number, text in enumerate(lines, start=1):
            if not text.strip():
                continue
            try:
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
    return {row.get("id") for _, row in read_jsonl(out)}


# --- results out ------------------------------------------------------------------------------


def result_row(
    request: dict[str, Any],
    samples: list[Sample],
    scale: tuple[float, float],
    completion: bool = True,
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
    """
    ratings = [parse_rating(s.text, scale) for s in samples]
    parsed = [r for r in ratings if r is not None]
    row: dict[str, Any] = {
        "id": request["id"],
        "rating": statistics.fmean(parsed) if parsed else None,
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
    errors = [s.error for s in samples if s.error]
    if errors:
        row["error"] = errors[0]
    return row


def batched(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    """Lists of up to `size` items.

    >>> list(batched(range(5), 2))
    [[0, 1], [2, 3], [4]]
    """
    iterator = iter(items)
    while batch := list(itertools.islice(iterator, size)):
        yield batch


# --- backends ---------------------------------------------------------------------------------


def hf_backend(
    model: Any,
    tokenizer: Any,
    *,
    template: str = "reczero",
    scale: tuple[float, float] = (1.0, 5.0),
    max_prompt_tokens: int | None = None,
    max_new_tokens: int = 512,
    temperature: float = 0.0,
    samples: int = 1,
    batch_size: int = 8,
) -> Backend:
    """Batched local generation: render each request with the tokenizer's chat template (fitted
    to `max_prompt_tokens`), pad on the left, `model.generate`, cut each completion at its eos."""
    import torch

    from recone_lite.prompts import render_prompt

    eos = model.generation_config.eos_token_id
    eos_ids = sorted({*(eos if isinstance(eos, list) else [eos]), tokenizer.eos_token_id} - {None})
    sampling = (
        {"do_sample": True, "temperature": temperature}
        if temperature > 0
        else {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
    )

    def run(requests: Iterable[dict[str, Any]]) -> Iterator[list[Sample]]:
        for batch in batched(requests, batch_size):
            texts = [
                render_prompt(r, tokenizer, template, scale, max_prompt_tokens).text for r in batch
            ]
            yield from _generate(texts)

    def _generate(texts: list[str]) -> list[list[Sample]]:
        inputs = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        inputs = inputs.to(model.device)
        with torch.inference_mode():
            output = model.generate(
                **inputs,
                max_new_tokens=max_new_tokens,
                num_return_sequences=samples,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=eos_ids,
                **sampling,
            )
        generated = output[:, inputs["input_ids"].shape[1] :]
        lengths = completion_lengths(generated, eos_ids)
        texts_out = tokenizer.batch_decode(
            [row[:n] for row, n in zip(generated, lengths, strict=True)],
            skip_special_tokens=True,
            clean_up_tokenization_spaces=False,  # the BPE text as generated
        )
        flat = [Sample(t, n) for t, n in zip(texts_out, lengths, strict=True)]
        return [flat[i : i + samples] for i in range(0, len(flat), samples)]

    return run


def completion_lengths(generated: Any, eos_ids: list[int]) -> list[int]:
    """Generated tokens per row, up to and including the first eos (padding after it excluded).

    >>> import torch
    >>> completion_lengths(torch.tensor([[5, 6, 2, 2], [5, 6, 7, 8], [2, 0, 0, 0]]), [2])
    [3, 4, 1]
    """
    import torch

    is_eos = torch.isin(generated, torch.tensor(eos_ids, device=generated.device))
    first = is_eos.int().argmax(dim=1)
    lengths = torch.where(is_eos.any(dim=1), first + 1, generated.shape[1])
    return lengths.tolist()


def openai_backend(
    *,
    base_url: str,
    model: str,
    template: str = "reczero",
    scale: tuple[float, float] = (1.0, 5.0),
    max_new_tokens: int = 512,
    temperature: float = 0.0,
    samples: int = 1,
    concurrency: int = 8,
    api_key_env: str | None = "OPENAI_API_KEY",
    seed: int | None = None,
    max_retries: int = 4,
) -> Backend:
    """Chat messages to an OpenAI-compatible server, which applies the model's chat template;
    k samples are k requests. No token budget here: the server rejects a prompt too long for it,
    and that request's line gets `"error"`."""
    from recone_lite.openai_client import stream_chat_completions
    from recone_lite.prompts import build_messages

    def run(requests: Iterable[dict[str, Any]]) -> Iterator[list[Sample]]:
        messages = (build_messages(r, template, scale) for r in requests for _ in range(samples))
        results = stream_chat_completions(
            messages,
            base_url=base_url,
            model=model,
            api_key_env=api_key_env,
            concurrency=concurrency,
            max_retries=max_retries,
            temperature=temperature,
            max_tokens=max_new_tokens,
            seed=seed,
        )
        for group in batched(results, samples):
            yield [Sample(r.content or "", r.completion_tokens, r.error) for r in group]

    return run


def vllm_backend(
    spec: ModelSpec,
    *,
    template: str = "reczero",
    scale: tuple[float, float] = (1.0, 5.0),
    max_prompt_tokens: int | None = None,
    max_new_tokens: int = 512,
    temperature: float = 0.0,
    samples: int = 1,
    batch_size: int = 256,
    seed: int | None = None,
) -> Backend:
    """In-process vLLM (CUDA): prompts rendered here with the model's chat template and sent as
    token ids (so no second BOS is added), the adapter as a LoRARequest."""
    from recone_lite.models import adapter_config, check_spec
    from recone_lite.versions import cuda_available

    try:
        from vllm import LLM, SamplingParams
        from vllm.lora.request import LoRARequest
    except ImportError:
        raise ReconeError("vllm is not installed: pip install 'recone-lite[vllm]'") from None
    if not cuda_available():
        raise ReconeError("--backend vllm needs a CUDA GPU; use --backend hf")
    check_spec(spec)
    if spec.quantization == "8bit":
        raise InputError("vLLM quantizes in flight to 4-bit only", field="quantization")
    folder, gguf = spec.source()
    kwargs: dict[str, Any] = {}
    lora = None
    if spec.adapter is not None:
        rank = int(adapter_config(spec.adapter).get("r", 16))
        kwargs.update(
            enable_lora=True,
            max_lora_rank=next((r for r in (8, 16, 32, 64, 128, 256, 320, 512) if r >= rank), rank),
        )
        lora = LoRARequest("adapter", 1, str(Path(spec.adapter).expanduser().resolve()))
    if spec.quantization == "4bit":
        kwargs["quantization"] = "bitsandbytes"
    llm = LLM(
        model=str(Path(folder) / gguf) if gguf else spec.name,
        dtype=spec.dtype,
        max_model_len=spec.max_seq_length,
        trust_remote_code=spec.trust_remote_code,
        seed=seed if seed is not None else 0,
        **kwargs,
    )
    tokenizer = llm.get_tokenizer()
    params = SamplingParams(
        n=samples, temperature=temperature, max_tokens=max_new_tokens, seed=seed
    )
    log.info(f"model: {spec.name} via vllm{' + adapter ' + spec.adapter if lora else ''}")

    def run(requests: Iterable[dict[str, Any]]) -> Iterator[list[Sample]]:
        from recone_lite.prompts import render_prompt

        for batch in batched(requests, batch_size):
            prompts = [
                {
                    "prompt_token_ids": tokenizer.encode(
                        render_prompt(r, tokenizer, template, scale, max_prompt_tokens).text,
                        add_special_tokens=False,
                    )
                }
                for r in batch
            ]
            outputs = llm.generate(prompts, params, lora_request=lora, use_tqdm=False)
            for output in outputs:
                yield [Sample(c.text, len(c.token_ids)) for c in output.outputs]

    return run


# --- the command ------------------------------------------------------------------------------


def _progress(total: int | None) -> Any:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    columns = [TextColumn("predict")]
    columns += [BarColumn(), MofNCompleteColumn()] if total else [TextColumn("{task.completed}")]
    columns += [
        TextColumn("{task.fields[rps]:.2f} req/s  {task.fields[tps]:.0f} tok/s"),
        TimeElapsedColumn(),
    ]
    # few refreshes: the refresh thread takes the GIL from a Python-bound generate loop
    return Progress(*columns, console=log.console, transient=False, refresh_per_second=2)


def _count_lines(path: str) -> int:
    with open(path, encoding="utf-8") as handle:
        return sum(1 for line in handle if line.strip())


def predict(
    input: str = "-",
    *,
    model: str,
    gguf_file: str | None = None,
    adapter: str | None = None,
    template: str | None = None,
    scale: str | None = None,
    max_prompt_tokens: int | None = None,
    batch_size: int | None = None,
    max_new_tokens: int = 512,
    temperature: float = 0.0,
    samples: int = 1,
    seed: int | None = None,
    out: str | None = None,
    resume: bool = False,
    completion: bool = True,
    skip_bad: bool = False,
    backend: BackendName = "hf",
    base_url: str | None = None,
    api_key_env: str = "OPENAI_API_KEY",
    concurrency: int = 8,
    trust_remote_code: bool = False,
    dtype: str = "auto",
    quantization: str = "none",
    stdout: IO[str] | None = None,
    stdin: IO[str] | None = None,
) -> Counts:
    """The `predict` command: check the options and files, load the backend, stream the rows."""
    from recone_lite.export import read_recone_json
    from recone_lite.prompts import TEMPLATES

    # 1. Everything that can be checked without a model, before loading one.
    # A folder from `recone-lite export --merged` records its template and scale (recone.json).
    recorded = read_recone_json(model) if backend != "openai" else {}
    if template is None:
        template = recorded.get("template") or "reczero"
    elif recorded.get("template") not in (None, template):
        log.warn(f"{model} was trained with the {recorded['template']} template; predicting "
                 f"with {template}")
    if template not in TEMPLATES:
        raise InputError(
            f"unknown template {template!r}; choose {', '.join(TEMPLATES)}", field="template"
        )
    if samples < 1 or max_new_tokens < 1 or (batch_size is not None and batch_size < 1):
        raise InputError("--samples, --max-new-tokens and --batch-size must be at least 1")
    if samples > 1 and temperature <= 0:
        raise InputError(
            f"--samples {samples} needs --temperature > 0 (greedy decoding repeats itself)",
            field="samples",
        )
    if input != "-" and not Path(input).is_file():
        raise InputError("no such file", path=input)
    if backend not in DEFAULT_BATCH:
        raise InputError(f"unknown backend {backend!r}; choose hf, openai or vllm", field="backend")
    if backend == "openai" and not base_url:
        raise InputError("--backend openai needs --base-url URL", field="base_url")
    if backend == "openai" and (adapter or gguf_file):
        raise InputError(
            "with --backend openai, --model names the served model or adapter", field="adapter"
        )
    if resume and out is None:
        raise InputError("--resume needs --out FILE", field="resume")
    if out is not None and Path(out).exists() and not resume:
        raise InputError("exists; pass --resume to continue it, or remove it", path=out)
    rating_scale = _scale(scale, input, recorded.get("rating_scale"))
    spec = (
        None
        if backend == "openai"
        else _spec(model, gguf_file, adapter, dtype, quantization, trust_remote_code)
    )
    done = done_ids(Path(out)) if out is not None and Path(out).exists() else set()

    # 2. The backend (this loads the model).
    batch = batch_size or DEFAULT_BATCH[backend]
    generation: dict[str, Any] = {
        "template": template,
        "scale": rating_scale,
        "max_new_tokens": max_new_tokens,
        "temperature": temperature,
        "samples": samples,
    }
    if backend == "openai":
        run = openai_backend(
            base_url=base_url,
            model=model,
            concurrency=concurrency,
            api_key_env=api_key_env,
            seed=seed,
            **generation,
        )
    else:
        budget = max_prompt_tokens or max(spec.max_seq_length - max_new_tokens, 1)
        if backend == "vllm":
            run = vllm_backend(
                spec, max_prompt_tokens=budget, batch_size=batch, seed=seed, **generation
            )
        else:
            import transformers

            from recone_lite.models import load_model

            if seed is not None:
                transformers.set_seed(seed)
            hf_model, tokenizer = load_model(spec)
            run = hf_backend(
                hf_model, tokenizer, max_prompt_tokens=budget, batch_size=batch, **generation
            )

    # 3. Stream: requests -> backend -> one line each, flushed as it comes.
    counts = Counts()
    requests = read_requests(
        input,
        (stdin or sys.stdin) if input == "-" else None,
        skip_bad=skip_bad,
        done=done,
        counts=counts,
    )
    total = None if input == "-" else max(_count_lines(input) - len(done), 0)
    started = time.perf_counter()
    if out:
        with open(out, "a", encoding="utf-8") as sink:
            closed = write_rows(requests, run, sink, rating_scale, completion, counts, total)
    else:
        sink = stdout or sys.stdout
        closed = write_rows(requests, run, sink, rating_scale, completion, counts, total)
    if closed:  # the reader went away (`| head`): stop quietly
        if sink is sys.__stdout__:  # and keep Python's exit quiet too (its flush would fail)
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.__stdout__.fileno())
        log.info(f"predict: the output pipe closed after {counts.rows} rows; stopping")
    else:
        log.info(summary(counts, time.perf_counter() - started, out))
    return counts


def write_rows(
    requests: Iterable[dict[str, Any]],
    run: Backend,
    sink: IO[str],
    scale: tuple[float, float],
    completion: bool,
    counts: Counts,
    total: int | None,
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
        with _progress(total) as progress:
            task = progress.add_task("predict", total=total, rps=0.0, tps=0.0)
            for samples in results:
                row = result_row(pending.popleft(), samples, scale, completion)
                counts.rows += 1
                counts.parsed += row["ok"]
                counts.tokens += row["tokens"]
                counts.errors += "error" in row
                try:
                    sink.write(dumps(row) + "\n")
                    sink.flush()
                except BrokenPipeError:
                    return True
                elapsed = max(time.perf_counter() - started, 1e-9)
                progress.update(
                    task, advance=1, rps=counts.rows / elapsed, tps=counts.tokens / elapsed
                )
    finally:
        close = getattr(results, "close", None)
        if close is not None:
            close()  # stops the backend's workers (openai) when we stop early
    return False


def _spec(
    model: str,
    gguf_file: str | None,
    adapter: str | None,
    dtype: str,
    quantization: str,
    trust_remote_code: bool,
) -> ModelSpec:
    """A ModelSpec from the command's options; a bad value is an InputError naming the option."""
    from pydantic import ValidationError

    try:
        return ModelSpec(
            name=model,
            gguf_file=gguf_file,
            adapter=adapter,
            dtype=dtype,
            quantization=quantization,
            trust_remote_code=trust_remote_code,
        )
    except ValidationError as err:
        first = err.errors()[0]
        field = ".".join(str(part) for part in first["loc"])
        raise InputError(first["msg"], field=field) from None


def _scale(
    scale: str | None, input: str, recorded: list[float] | None = None
) -> tuple[float, float]:
    """`--scale`, else the manifest.json of a prepared folder holding the input, else the
    model's recone.json (`recorded`), else 1-5."""
    if scale is not None:
        return parse_scale(scale)
    if input != "-" and (Path(input).parent / "manifest.json").is_file():
        from recone_lite.prepared import read_scale

        return read_scale(Path(input).parent)
    if recorded:
        return float(recorded[0]), float(recorded[1])
    return (1.0, 5.0)


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
    ]
    return "; ".join([line, *(e for e in extras if e)])
