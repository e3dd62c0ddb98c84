"""Generation backends: a stream of requests in, a stream of completions out, in order.

Used by `predict` (the command) and by the dev evaluation of `train` / `sft` (dev_eval.py) alike:
- `hf_backend`: local batched `model.generate` with left padding (transformers / Unsloth, see
  models.py), with the expected readout read from the logits (readout.py);
- `openai_backend`: any OpenAI-compatible server, concurrent requests (see openai_client.py);
- `vllm_backend`: in-process vLLM on CUDA, with the adapter as a LoRARequest.

Each renders a request as `prompts.render_prompt` does (same chat template, same token budget)
and returns `Sample`s: text, generated tokens, a request error, the rating distribution.
torch, vllm and the OpenAI client are imported inside the backends, when one is built.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

from recone_lite import log
from recone_lite import readout as readouts
from recone_lite.errors import InputError, ReconeError
from recone_lite.gpu import VLLM_LORA_RANKS, cuda_available, vllm_install_problem
from recone_lite.models import ModelSpec, adapter_config, check_spec
from recone_lite.openai_client import redact, stream_chat_completions
from recone_lite.prompts import DEFAULT_STYLE, PromptStyle, build_messages, render_prompt
from recone_lite.versions import package_version


class Sample(NamedTuple):
    """One generated completion: its text, its generated tokens, and a request error if any.
    With the expected readout also the rating distribution after its `<rate>` (`probs`, over
    the scale's whole numbers) and whether `<rate>` had to be appended to read it (`forced`)."""

    text: str
    tokens: int
    error: str | None = None
    probs: list[float] | None = None
    forced: bool = False

    def expected(self, values: list[float], text_rating: float | None) -> float | None:
        """The expected readout of this sample (the mean of its distribution over the scale's
        `values`), where its text parsed (`text_rating`): a forced sample gives no rating, and
        neither does one without a distribution. `predict` and the dev evaluation read it so.

        >>> sample = Sample("<rate>4</rate>", 5, probs=[0.0, 0.0, 0.2, 0.6, 0.2])
        >>> sample.expected([1, 2, 3, 4, 5], 4.0), sample.expected([1, 2, 3, 4, 5], None)
        (4.0, None)
        """
        if text_rating is None or self.probs is None:
            return None
        return readouts.expected_value(values, self.probs)


# A backend turns a stream of requests into a stream of sample lists (k per request), in order.
Backend = Callable[[Iterable[dict[str, Any]]], Iterator[list[Sample]]]


def batched(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    """Lists of up to `size` items.

    >>> list(batched(range(5), 2))
    [[0, 1], [2, 3], [4]]
    """
    iterator = iter(items)
    while batch := list(itertools.islice(iterator, size)):
        yield batch




# --- backends ---------------------------------------------------------------------------------


DECODING_KEYS = ("top_p", "top_k", "min_p")  # the model's sampling settings, applied when sampling


def decoding(generation_config: dict[str, Any], temperature: float) -> dict[str, Any]:
    """The decoding settings every backend uses (hf, vLLM, dev evaluation): the run's temperature
    (greedy at 0) over the model's own generation config, its repetition penalty always and its
    top-p / top-k / min-p when sampling. One definition, so one adapter decodes alike on every
    backend (vLLM's SamplingParams would otherwise drop what transformers' generate keeps).

    >>> config = {"repetition_penalty": 1.1, "top_p": 0.9, "top_k": 50, "temperature": 0.7}
    >>> decoding(config, 0.0)
    {'temperature': 0.0, 'repetition_penalty': 1.1}
    >>> decoding(config, 1.0)
    {'temperature': 1.0, 'repetition_penalty': 1.1, 'top_p': 0.9, 'top_k': 50}
    >>> decoding({"top_p": 1.0, "top_k": 0, "min_p": None}, 0.5)  # neutral values are left out
    {'temperature': 0.5, 'repetition_penalty': 1.0}
    """
    settings = {"temperature": max(float(temperature), 0.0),
                "repetition_penalty": float(generation_config.get("repetition_penalty") or 1.0)}
    if temperature > 0:
        neutral = {"top_p": 1.0, "top_k": 0, "min_p": 0.0}
        settings.update({key: generation_config[key] for key in DECODING_KEYS
                         if generation_config.get(key) not in (None, neutral[key], -1)})
    return settings


def hf_decoding(settings: dict[str, Any]) -> dict[str, Any]:
    """`decoding`'s settings as `model.generate` keywords: greedy unsets the sampling knobs the
    model's generation config may carry, so transformers does not warn about them.

    >>> hf_decoding({"temperature": 0.0, "repetition_penalty": 1.1})
    {'do_sample': False, 'temperature': None, 'top_p': None, 'top_k': None, 'min_p': None, \
'repetition_penalty': 1.1}
    >>> hf_decoding({"temperature": 1.0, "repetition_penalty": 1.0, "top_p": 0.9})
    {'do_sample': True, 'temperature': 1.0, 'repetition_penalty': 1.0, 'top_p': 0.9}
    """
    if settings["temperature"] > 0:
        return {"do_sample": True, **settings}
    return {"do_sample": False, "temperature": None, **dict.fromkeys(DECODING_KEYS),
            "repetition_penalty": settings["repetition_penalty"]}


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
    style: PromptStyle = DEFAULT_STYLE,
    readout: str = "text",
) -> Backend:
    """Batched local generation: render each request with the tokenizer's chat template (fitted
    to `max_prompt_tokens`), pad on the left, `model.generate`, cut each completion at its eos.
    With `readout="expected"` each sample also carries its rating distribution (readout.py).

    Long on purpose: the backend is a closure over the loaded model and its tokenizer's token
    ids, and its inner loop (batch, generate, cut, read the distribution) reads as one."""
    import torch

    token_ids = readouts.rating_token_ids(tokenizer, scale) if readout == "expected" else None

    eos = model.generation_config.eos_token_id
    eos_ids = sorted({*(eos if isinstance(eos, list) else [eos]), tokenizer.eos_token_id} - {None})
    sampling = hf_decoding(decoding(model.generation_config.to_dict(), temperature))

    def run(requests: Iterable[dict[str, Any]]) -> Iterator[list[Sample]]:
        for batch in batched(requests, batch_size):
            texts = [
                render_prompt(r, tokenizer, template, scale, max_prompt_tokens, style).text
                for r in batch
            ]
            yield from _generate(texts)

    def _generate(texts: list[str]) -> list[list[Sample]]:
        inputs = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        inputs = inputs.to(model.device)
        expected = token_ids is not None
        with torch.inference_mode():
            output = model.generate(
                **inputs,
                max_new_tokens=max_new_tokens,
                num_return_sequences=samples,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=eos_ids,
                return_dict_in_generate=expected,
                output_logits=expected,
                **sampling,
            )
        sequences = output.sequences if expected else output
        generated = sequences[:, inputs["input_ids"].shape[1] :]
        lengths = completion_lengths(generated, eos_ids)
        rows = [row[:n] for row, n in zip(generated, lengths, strict=True)]
        texts_out = tokenizer.batch_decode(
            rows,
            skip_special_tokens=True,
            clean_up_tokenization_spaces=False,  # the BPE text as generated
        )
        flat = [Sample(t, n) for t, n in zip(texts_out, lengths, strict=True)]
        if expected:
            prompts = [t for t in texts for _ in range(samples)]
            mask = inputs["attention_mask"].repeat_interleave(samples, dim=0)
            flat = _with_distributions(flat, rows, output, mask, prompts)
        return [flat[i : i + samples] for i in range(0, len(flat), samples)]

    def _with_distributions(flat: list[Sample], rows: list[Any], output: Any, mask: Any,
                            prompts: list[str]) -> list[Sample]:
        """Each sample's rating distribution right after its last `<rate>`: from the logits
        generate already computed where `<rate>` ends on a token boundary; for forced rows (no
        `<rate>`) from generate's cache, with `<rate>` appended after the completion's last
        non-space token; else from one forward pass over prompt + completion up to `<rate>`."""
        found: dict[int, tuple[list[float], float]] = {}
        redo: list[int] = []
        kept = [0] * len(flat)
        forced: list[int] = []
        for i, (sample, row) in enumerate(zip(flat, rows, strict=True)):
            decode = functools.partial(_decode_prefix, tokenizer, row.tolist())
            end = readouts.rate_end(sample.text)
            if end is not None:
                j = readouts.token_boundary(decode, len(row), end)
                if j is not None and j < len(output.logits) and decode(j) == sample.text[:end]:
                    found[i] = readouts.normalise(output.logits[j][i], token_ids)
                    continue
            else:
                stripped = sample.text.rstrip()  # empty: forced_prefix adds no newline, redo
                j = readouts.token_boundary(decode, len(row), len(stripped)) if stripped else None
                if j is not None and decode(j) == stripped:
                    kept[i] = j
                    forced.append(i)
                    continue
            redo.append(i)
        if forced:
            for i, dist in zip(forced, readouts.cached_distributions(
                    model, tokenizer, output, mask, kept, forced, token_ids), strict=True):
                found[i] = dist
        if redo:
            texts = [prompts[i] + readouts.rate_prefix(flat[i].text) for i in redo]
            for i, dist in zip(redo, readouts.forward_distributions(model, tokenizer, texts,
                                                                     token_ids), strict=True):
                found[i] = dist
        return [s._replace(probs=found[i][0], forced=readouts.rate_end(s.text) is None)
                for i, s in enumerate(flat)]

    return run


def _decode_prefix(tokenizer: Any, ids: list[int], n: int) -> str:
    """The text of the first `n` generated tokens, decoded as completions are."""
    return tokenizer.decode(ids[:n], skip_special_tokens=True, clean_up_tokenization_spaces=False)


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
    style: PromptStyle = DEFAULT_STYLE,
    readout: str = "text",
    tokenizer: Any = None,
    max_prompt_tokens: int | None = None,
) -> Backend:
    """Chat messages to an OpenAI-compatible server, which applies the model's chat template;
    k samples are k requests. With a `tokenizer` (the served model's own), the messages are
    fitted to `max_prompt_tokens` as local prediction fits them (`render_prompt`'s messages:
    the same history cut, the system prompt folded into the user turn where the template has
    no system role), so the server renders the prompt training saw. Without one the messages
    go whole: a prompt too long for the server is rejected, and that request's line gets
    `"error"`. With `readout="expected"` the server is asked for
    logprobs and each sample whose completion has a `<rate>` carries its rating distribution
    there (`readout.logprob_distribution`); one without `<rate>` has none (no forcing here)."""
    expected = readout == "expected"
    if expected:
        readouts.scale_values(scale)
    warned: list[bool] = []

    def sample(result: Any) -> Sample:
        text = result.content or ""
        if expected and text and result.error is None and not result.logprobs and not warned:
            warned.append(True)
            log.warn(f"--readout expected: {redact(base_url)} returned no logprobs; its rows "
                     "get no rating")
        probs = (readouts.logprob_distribution(result.logprobs, text, scale)
                 if expected and result.logprobs else None)
        return Sample(text, result.completion_tokens, result.error, probs=probs)

    def run(requests: Iterable[dict[str, Any]]) -> Iterator[list[Sample]]:
        def fitted(request: dict[str, Any]) -> list[dict[str, str]]:
            if tokenizer is None:
                return build_messages(request, template, scale, style=style)
            return render_prompt(request, tokenizer, template, scale, max_prompt_tokens,
                                 style).messages

        messages = (message for r in requests for message in [fitted(r)] * samples)
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
            top_logprobs=readouts.TOP_LOGPROBS if expected else None,
        )
        for group in batched(results, samples):
            yield [sample(r) for r in group]

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
    style: PromptStyle = DEFAULT_STYLE,
    readout: str = "text",
) -> Backend:
    """In-process vLLM (CUDA): prompts rendered here with the model's chat template and sent as
    token ids (so no second BOS is added), the adapter as a LoRARequest. With
    `readout="expected"` the rating distribution is read from vLLM's per-token logprobs, as on
    the openai backend (no forcing)."""
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
    problem = vllm_install_problem(package_version("vllm"), package_version("vllm-bnb-plugin"),
                                   spec.quantization)
    if problem:  # names the missing piece (the plugin for 4-bit on vLLM >= 0.28), not Unsloth
        raise ReconeError(problem)
    folder, gguf = spec.source()
    kwargs: dict[str, Any] = {}
    lora = None
    if spec.adapter is not None:
        rank = int(adapter_config(spec.adapter).get("r", 16))
        kwargs.update(
            enable_lora=True,
            max_lora_rank=next((r for r in VLLM_LORA_RANKS if r >= rank), rank),
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
        generation_config="auto",  # the model's decoding defaults, as transformers reads them
        **kwargs,
    )
    tokenizer = llm.get_tokenizer()
    expected = readout == "expected"
    defaults = llm.get_default_sampling_params()  # the model's generation_config (vLLM's "auto")
    params = SamplingParams(
        n=samples, max_tokens=max_new_tokens, seed=seed,
        logprobs=readouts.TOP_LOGPROBS if expected else None,
        **decoding({key: getattr(defaults, key, None)
                    for key in ("repetition_penalty", *DECODING_KEYS)}, temperature),
    )

    def sample(c: Any) -> Sample:
        """One completion; with the expected readout its distribution after `<rate>`. Untested
        here (no CUDA): vLLM gives, per generated token, a dict token id -> Logprob(logprob,
        decoded_token) holding the chosen token and the top alternatives."""
        probs = None
        if expected and c.logprobs:
            steps = [((step[tid].decoded_token or "") if tid in step else "",
                      [(lp.decoded_token or "", lp.logprob) for lp in step.values()])
                     for tid, step in zip(c.token_ids, c.logprobs, strict=False)]
            probs = readouts.logprob_distribution(steps, c.text, scale)
        return Sample(c.text, len(c.token_ids), probs=probs)

    log.info(f"model: {spec.name} via vllm{' + adapter ' + spec.adapter if lora else ''}")

    def run(requests: Iterable[dict[str, Any]]) -> Iterator[list[Sample]]:
        for batch in batched(requests, batch_size):
            prompts = [
                {
                    "prompt_token_ids": tokenizer.encode(
                        render_prompt(r, tokenizer, template, scale, max_prompt_tokens,
                                      style).text,
                        add_special_tokens=False,
                    )
                }
                for r in batch
            ]
            outputs = llm.generate(prompts, params, lora_request=lora, use_tqdm=False)
            for output in outputs:
                yield [sample(c) for c in output.outputs]

    return run
