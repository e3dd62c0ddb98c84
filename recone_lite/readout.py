"""Rating readouts: how a completion becomes a number.

- `text`: the number written in the last `<rate>` block (`rewards.parse_rating`), as the paper
  reads it.
- `expected`: the mean of the model's own distribution over the scale's rating tokens ("1" ..
  "5") at the position right after the last `<rate>`, renormalised over those tokens. Sampling or
  greedily picking one digit throws away what a small model knows ("4 or 5, rather 4"); the
  expected value keeps it, and it is what minimises squared error when the distribution is right.

Coverage keeps its meaning under both: a row is parsed when the model wrote a readable `<rate>`
block. Where it did not, the distribution can still be read after appending `<rate>` to the
completion; such a row is `forced`: its value is reported beside it, never counted as parsed.

On the hf backend the distribution is taken from the logits `generate` already computed when the
`<rate>` boundary falls on a generated token. Forced rows continue from `generate`'s key/value
cache: only the appended `<rate>` is run (`cached_distributions`; the tokens after a row's end of
sequence are masked), so reading them costs a few tokens, not a second pass over the prompt.
Otherwise (a tokenisation that does not line up) one extra forward pass runs over prompt +
completion up to `<rate>`. The openai and
vllm backends read it from the top-`TOP_LOGPROBS` logprobs the server returns for each generated
token (`logprob_distribution`); a completion without `<rate>` cannot be forced there without a
second request, so such a row stays a plain failure, without a distribution.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from recone_lite.errors import InputError

READOUTS = ("text", "expected")
RATE_OPEN = "<rate>"
TOP_LOGPROBS = 20  # alternatives asked per generated token: the OpenAI maximum; vLLM serves it too


def scale_values(scale: tuple[float, float]) -> list[float]:
    """The whole-number ratings of a scale, the values the expected readout weighs.

    >>> scale_values((1.0, 5.0))
    [1.0, 2.0, 3.0, 4.0, 5.0]
    >>> scale_values((0.5, 5.0))
    Traceback (most recent call last):
    ...
    recone_lite.errors.InputError: readout: --readout expected needs a scale of whole numbers \
with at most 10 values (this one is 0.5-5)
    """
    lo, hi = scale
    if lo != int(lo) or hi != int(hi) or not 0 <= lo < hi <= 10 or hi - lo > 9:
        raise InputError(f"--readout expected needs a scale of whole numbers with at most 10 "
                         f"values (this one is {lo:g}-{hi:g})", field="readout")
    return [float(v) for v in range(int(lo), int(hi) + 1)]


def rating_token_ids(tokenizer: Any, scale: tuple[float, float]) -> list[int]:
    """The token id of each rating value as the model writes it right after `<rate>`.

    Each value must be one token that does not merge with `<rate>` (true for the digits of
    SmolLM2, Llama and Qwen tokenizers); otherwise the readout is refused with one line.
    """
    base = tokenizer.encode(RATE_OPEN, add_special_tokens=False)
    ids = []
    for value in scale_values(scale):
        full = tokenizer.encode(f"{RATE_OPEN}{value:g}", add_special_tokens=False)
        if len(full) != len(base) + 1 or full[: len(base)] != base:
            raise InputError(f"--readout expected: the rating {value:g} is not one token after "
                             f"{RATE_OPEN} for this tokenizer; use --readout text", field="readout")
        ids.append(full[-1])
    return ids


def expected_value(values: Sequence[float], probs: Sequence[float]) -> float:
    """The probability-weighted mean rating.

    >>> expected_value([1, 2, 3, 4, 5], [0, 0, 0.25, 0.5, 0.25])
    4.0
    """
    return float(sum(v * p for v, p in zip(values, probs, strict=True)))


def rate_end(completion: str) -> int | None:
    """The character index just after the last `<rate>` of a completion, or None.

    >>> rate_end("<match>ok</match>\\n<rate>4</rate>")
    24
    >>> rate_end("no tags") is None
    True
    """
    at = completion.rfind(RATE_OPEN)
    return None if at < 0 else at + len(RATE_OPEN)


def logprob_distribution(
    tokens: Sequence[tuple[str, Iterable[tuple[str, float]]]],
    completion: str,
    scale: tuple[float, float],
) -> list[float] | None:
    """The rating distribution after the last `<rate>` of a completion, read from the logprobs a
    server returned: `tokens` holds each generated token's text and its (text, logprob)
    alternatives (the top-k, the chosen token among them or not). The token that starts right
    after `<rate>` gives the probabilities of the scale's values ("1" .. "5"; one missing from
    the alternatives counts 0), renormalised over them. None when the completion has no `<rate>`,
    no token starts right after it, or none of the values is among that token's alternatives.

    >>> steps = [("<rate>", [("<rate>", 0.0)]),
    ...          ("4", [("4", math.log(0.6)), ("5", math.log(0.2)), ("3", math.log(0.1)),
    ...                 ("x", math.log(0.1))]),
    ...          ("</rate>", [("</rate>", 0.0)])]
    >>> [round(p, 4) for p in logprob_distribution(steps, "<rate>4</rate>", (1.0, 5.0))]
    [0.0, 0.0, 0.1111, 0.6667, 0.2222]
    >>> logprob_distribution(steps[:1], "<rate>", (1.0, 5.0)) is None  # nothing generated after
    True
    >>> logprob_distribution([("<rate>4", [("<rate>4", 0.0)])], "<rate>4", (1.0, 5.0)) is None
    True
    >>> logprob_distribution([("no", [("no", 0.0)])], "no", (1.0, 5.0)) is None
    True
    >>> sampled = [("<rate>", []), ("2", [("2", math.log(0.01)), ("4", math.log(0.03))])]
    >>> [round(p, 2) for p in logprob_distribution(sampled, "<rate>2", (1.0, 5.0))]
    [0.0, 0.25, 0.0, 0.75, 0.0]
    >>> logprob_distribution([("<rate>", []), (" ", [(" ", 0.0)])], "<rate> ", (1.0, 5.0)) is None
    True
    """
    values = [f"{v:g}" for v in scale_values(scale)]
    texts = [text for text, _ in tokens]
    joined = "".join(texts)
    end = rate_end(completion)
    if end is not None and joined[:end] != completion[:end]:
        end = rate_end(joined)  # token texts that do not add up to the completion (partial bytes)
    if end is None:
        return None
    start = 0
    for text, alternatives in tokens:
        if start == end:
            best: dict[str, float] = {}
            for alt, logprob in alternatives:
                if alt in values and logprob > best.get(alt, -math.inf):
                    best[alt] = logprob
            if not best:
                return None
            top = max(best.values())
            weights = [math.exp(best[v] - top) if v in best else 0.0 for v in values]
            total = sum(weights)
            return [w / total for w in weights]
        start += len(text)
        if start > end:
            return None
    return None


def forced_prefix(completion: str) -> str:
    """The completion with `<rate>` appended on a line of its own, to read a forced rating.

    >>> forced_prefix("<match>fine</match>  ")
    '<match>fine</match>\\n<rate>'
    >>> forced_prefix("")
    '<rate>'
    """
    text = completion.rstrip()
    return f"{text}\n{RATE_OPEN}" if text else RATE_OPEN


def rate_prefix(completion: str) -> str:
    """The completion up to the end of its last `<rate>`, or with `<rate>` appended (forced): the
    text after which the rating distribution is read.

    >>> rate_prefix("<match>ok</match><rate>4</rate>"), rate_prefix("no tags")
    ('<match>ok</match><rate>', 'no tags\\n<rate>')
    """
    end = rate_end(completion)
    return completion[:end] if end is not None else forced_prefix(completion)


def token_boundary(decode: Callable[[int], str], n: int, end: int) -> int | None:
    """The number of tokens whose decoded text is `end` characters long (binary search; decoded
    length grows with the number of tokens), or None when no prefix ends exactly there.

    >>> text = "ab<rate>4"
    >>> token_boundary(lambda j: text[: [0, 2, 3, 7, 8, 9][j]], 5, 8)
    4
    >>> token_boundary(lambda j: text[: [0, 2, 3, 7, 9][j]], 4, 8) is None
    True
    """
    lo, hi = 0, n
    while lo < hi:
        mid = (lo + hi) // 2
        if len(decode(mid)) < end:
            lo = mid + 1
        else:
            hi = mid
    return lo if len(decode(lo)) == end else None


def normalise(logits_row: Any, token_ids: Sequence[int]) -> tuple[list[float], float]:
    """Probabilities of the rating tokens renormalised over them, and the mass they held
    under the full softmax (how sure the model was that a rating comes next).

    >>> import math, torch
    >>> probs, mass = normalise(torch.tensor([0.0, 0.0, math.log(3.0), 0.0]), [1, 2])
    >>> [round(p, 3) for p in probs], round(mass, 3)
    ([0.25, 0.75], 0.667)
    """
    import torch

    row = logits_row.float()
    picked = row[list(token_ids)]
    mass = torch.exp(torch.logsumexp(picked, 0) - torch.logsumexp(row, 0)).item()
    probs = torch.softmax(picked, 0).tolist()
    return probs, mass


def forward_distributions(model: Any, tokenizer: Any, texts: list[str],
                          token_ids: Sequence[int]) -> list[tuple[list[float], float]]:
    """One forward pass over full texts (left-padded); the rating distribution after each."""
    import torch

    inputs = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    inputs = inputs.to(model.device)
    mask = inputs["attention_mask"]
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # as generate() numbers left-padded rows
    with torch.inference_mode():
        logits = model(input_ids=inputs["input_ids"], attention_mask=mask,
                       position_ids=positions, logits_to_keep=1).logits[:, -1]
    return [normalise(row, token_ids) for row in logits]


def cached_distributions(model: Any, tokenizer: Any, output: Any, prompt_mask: Any,
                         kept: Sequence[int], rows: Sequence[int],
                         token_ids: Sequence[int]) -> list[tuple[list[float], float]]:
    """The rating distribution after `<rate>` appended to each of `rows`' completions (forced
    rows), continuing from the key/value cache `generate` returned instead of a second pass over
    prompt + completion.

    `output` is `generate`'s dict output (sequences and past_key_values); `prompt_mask` the
    attention mask of its (left-padded) inputs, one row per returned sequence; `kept[i]` how many
    generated tokens of row i are its completion (its end-of-sequence token and the padding
    after it are masked out). Every row of the batch is run (the cache is batched); only `rows`
    are read. `generate` never feeds its last token, so that token goes first, masked where it
    is not part of the completion. The positions continue the completion's, as in a forward pass
    over the completion's tokens followed by those of "\\n<rate>".
    """
    import torch

    sequences = output.sequences
    generated = sequences.shape[1] - prompt_mask.shape[1]
    suffix = tokenizer("\n" + RATE_OPEN, add_special_tokens=False,
                       return_tensors="pt")["input_ids"].to(sequences.device)
    batch = sequences.shape[0]
    steps = torch.arange(generated, device=sequences.device)
    gen_mask = (steps[None, :] < torch.tensor(list(kept), device=sequences.device)[:, None])
    mask = torch.cat([prompt_mask, gen_mask.to(prompt_mask.dtype),
                      torch.ones(batch, suffix.shape[1], dtype=prompt_mask.dtype,
                                 device=prompt_mask.device)], dim=1)
    input_ids = torch.cat([sequences[:, -1:], suffix.expand(batch, -1)], dim=1)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, -input_ids.shape[1]:]
    with torch.inference_mode():
        logits = model(input_ids=input_ids, attention_mask=mask, position_ids=positions,
                       past_key_values=output.past_key_values, use_cache=True,
                       logits_to_keep=1).logits[:, -1]
    return [normalise(logits[i], token_ids) for i in rows]
