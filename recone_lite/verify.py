"""`export` verification: base + adapter, unmerged, against the merged model as saved on disk.

Both run on a few rendered prompts (the prepared data's dev examples, else built-in ones) with
greedy decoding and the KV cache. Their logits must agree within a tolerance for the saved dtype,
the saved tokenizer must render the same prompt tokens, and in fp32 the greedy completions must be
identical. `verify_merged` checks an existing merged folder (`export --verify-only`);
export.py calls `probe` before merging and `check_merged` on the saved files.
"""

from __future__ import annotations

import dataclasses
import gc
import itertools
import json
import time
from pathlib import Path
from typing import Any

from recone_lite import log
from recone_lite.adapter_source import (
    BYTES_PER_PARAM,
    Source,
    attach_adapter,
    load_base,
    resolve_source,
    work_dtype,
)
from recone_lite.errors import InputError
from recone_lite.gpu import empty_cache
from recone_lite.jsonl import read_jsonl
from recone_lite.models import ModelSpec, load_model, read_recone_json
from recone_lite.prompts import render_prompt

# Allowed max |logit difference| between base + adapter and the merged model, as a share of the
# largest |logit|, by (saved dtype, dtype the comparison computes in). Merging and comparing run
# in fp32 whenever the model fits, so a 16-bit export differs only by the one rounding of each
# weight when saved; where fp32 does not fit on the GPU, the matmuls' own 16-bit noise adds to it.
# Seen on SmolLM2-135M, in shares of the largest logit: fp32 1.4e-6; bf16 weights 5e-3 (fp32
# compute, CPU), 2.3e-2 (bf16 compute, H100); fp16 weights 3e-3 (fp16 compute, H100).
TOLERANCE = {
    ("float32", "float32"): 1e-4,
    ("bfloat16", "float32"): 2e-2,
    ("float16", "float32"): 1e-2,
    ("bfloat16", "bfloat16"): 6e-2,
    ("float16", "float16"): 2e-2,
}


PROBE_EXAMPLES: list[dict[str, Any]] = [  # verification prompts when no prepared data is at hand
    {"id": "probe-1", "target": {"title": "A Love Supreme", "categories": ["Jazz"]}, "history": [
        {"item_id": "a1", "item": {"title": "Kind of Blue", "categories": ["Jazz"]}, "rating": 5,
         "review": "Timeless. I play it every week."},
        {"item_id": "a2", "item": {"title": "Nevermind", "categories": ["Rock"]}, "rating": 2,
         "review": "Too loud for me."}]},
    {"id": "probe-2", "target": {"title": "The Hobbit", "categories": ["Fantasy"]}, "history": [
        {"item_id": "b1", "item": {"title": "Dune", "categories": ["Science Fiction"]},
         "rating": 4, "review": "Slow start, great world."}]},
    {"id": "probe-3", "target": {"title": "Corner Pizza", "categories": ["Restaurants"]},
     "history": [{"item_id": "c1", "item": {"title": "Noodle Bar", "categories": ["Asian"]},
                  "rating": 3, "review": "Fine, a bit salty."}]},
]


def probe_examples(source: Source, count: int) -> list[dict[str, Any]]:
    """The first `count` examples of the prepared data's dev (else test, train) split, else
    built-in examples."""
    if source.data is not None:
        data_section = source.recipe.get("data") if isinstance(source.recipe.get("data"),
                                                                dict) else {}
        for split in (data_section.get("eval_split"), "dev", "test", "train"):
            path = source.data / f"{split}.jsonl"
            if split and path.is_file():
                rows = [row for _, row in itertools.islice(read_jsonl(path), count)]
                if rows:
                    return rows
    return PROBE_EXAMPLES[:count]


@dataclasses.dataclass
class Probe:
    """What base + adapter did on one prompt: its tokens, its greedy completion, its logits."""

    example: dict[str, Any]
    prompt_ids: list[int]
    completion: list[int]
    logits: Any  # float32 on CPU, one row per position: the prompt's last ones, then one per


def _render_ids(example: dict[str, Any], tokenizer: Any, source: Source) -> list[int]:
    text = render_prompt(example, tokenizer, source.template or "reczero",
                         source.scale or (1.0, 5.0), max_prompt_tokens=1024).text
    return tokenizer.encode(text, add_special_tokens=False)


def greedy_logits(model: Any, prompt_ids: list[int], new_tokens: int, keep: int, eos: set[int],
                  forced: list[int] | None = None) -> tuple[list[int], Any]:
    """Greedy decoding with the KV cache: `(tokens, logits)`, the logits of the last `keep`
    prompt positions and of every decoding step. With `forced`, those tokens are fed instead
    (teacher forcing) and `tokens` are the model's own greedy choices at each step, so two
    models' logits are compared on the same prefixes, and equal choices mean equal greedy
    completions."""
    import torch

    device = model.device
    with torch.inference_mode():
        out = model(torch.tensor([prompt_ids], device=device), use_cache=True)
        rows = [out.logits[0, -keep:].float().cpu()]
        chosen: list[int] = []
        steps = len(forced) if forced is not None else new_tokens
        for step in range(steps):
            chosen.append(int(out.logits[0, -1].argmax()))
            fed = forced[step] if forced is not None else chosen[-1]
            if step == steps - 1 or (forced is None and fed in eos):
                break
            out = model(torch.tensor([[fed]], device=device), past_key_values=out.past_key_values,
                        use_cache=True)
            rows.append(out.logits[0, -1:].float().cpu())
    return chosen, torch.cat(rows)


def _eos(model: Any, tokenizer: Any) -> set[int]:
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = set(eos if isinstance(eos, list) else [eos]) | {tokenizer.eos_token_id}
    return {i for i in ids if isinstance(i, int)}


def probe(model: Any, tokenizer: Any, source: Source, prompts: int = 3,
          new_tokens: int = 8, keep: int = 24) -> list[Probe]:
    """Render prompts and decode greedily with base + adapter, keeping the logits (not all
    positions: with a 150k vocabulary those are large)."""
    probes = []
    for example in probe_examples(source, prompts):
        prompt_ids = _render_ids(example, tokenizer, source)
        completion, logits = greedy_logits(model, prompt_ids, new_tokens,
                                           min(keep, len(prompt_ids)), _eos(model, tokenizer))
        probes.append(Probe(example, prompt_ids, completion, logits))
    return probes


@dataclasses.dataclass
class Verification:
    """Base + adapter against the merged model, on the same prompts."""

    ok: bool
    dtype: str  # of the saved weights
    compute_dtype: str  # both models ran in this one
    max_abs_diff: float
    tolerance: float
    max_abs_logit: float
    top1_agreement: float  # share of compared positions whose most likely token is the same
    greedy_identical: bool  # greedy completions equal (differences at exact ties excepted)
    prompts: int
    positions: int
    problem: str | None = None

    def line(self) -> str:
        verdict = "passed" if self.ok else f"FAILED: {self.problem}"
        return (f"verify {verdict}: {self.prompts} prompts, {self.positions} positions, max abs "
                f"logit diff {self.max_abs_diff:.2e} (tolerance {self.tolerance:.2e} for "
                f"{self.dtype} weights, {self.compute_dtype} compute), top-1 agreement "
                f"{self.top1_agreement:.1%}, greedy completions "
                f"{'identical' if self.greedy_identical else 'differ'}")


def compare(model: Any, tokenizer: Any, probes: list[Probe], dtype: str, compute: str,
            source: Source) -> Verification:
    """Run the merged `model` (with its own saved tokenizer) on the probes of base + adapter;
    `dtype` is the saved one, `compute` the one both models ran in."""
    diffs, scales, agree, positions, greedy_same = [], [], 0, 0, True
    retokenized = greedy_problem = None
    share = TOLERANCE[dtype, compute]
    for number, p in enumerate(probes, start=1):
        if _render_ids(p.example, tokenizer, source) != p.prompt_ids and retokenized is None:
            retokenized = (f"the saved tokenizer or chat template renders prompt {number} into "
                           "other tokens than the base's")
        keep = p.logits.shape[0] - max(len(p.completion) - 1, 0)
        chosen, logits = greedy_logits(model, p.prompt_ids, len(p.completion), keep, set(),
                                       forced=p.completion)
        diffs.append(float((logits - p.logits).abs().max()))
        scales.append(float(p.logits.abs().max()))
        agree += int((logits.argmax(-1) == p.logits.argmax(-1)).sum())
        positions += logits.shape[0]
        for step, (mine, theirs) in enumerate(zip(chosen, p.completion, strict=True)):
            row = p.logits[keep - 1 + step]  # a margin within the tolerance is a tie, not a fault
            if mine != theirs and float(row[theirs] - row[mine]) > share * max(scales[-1], 1.0):
                greedy_same = False
                greedy_problem = greedy_problem or (
                    f"greedy completion of prompt {number} differs at token {step + 1}")
                break
    tolerance = share * max(max(scales), 1.0)
    worst = max(diffs)
    problem = retokenized
    if problem is None and worst > tolerance:
        problem = (f"logits differ by up to {worst:.3g}, over the tolerance {tolerance:.3g} "
                   f"for {dtype}")
    if problem is None and dtype == "float32":  # 16 bits may flip a close call: reported only
        problem = greedy_problem
    return Verification(problem is None, dtype, compute, worst, tolerance, max(scales),
                        agree / max(positions, 1), greedy_same, len(probes), positions, problem)


def free_memory() -> None:
    """Give memory back after the caller dropped its last reference to a model."""
    gc.collect()
    empty_cache()


def check_merged(folder: Path, probes: list[Probe], dtype: str, compute: str,
                 source: Source) -> Verification:
    """Load the merged folder as `predict` would (in `compute`) and compare it with the probes."""
    model, tokenizer = load_model(ModelSpec(name=str(folder), dtype=compute,
                                            trust_remote_code=source.base.trust_remote_code),
                                  engine="transformers")
    try:
        return compare(model, tokenizer, probes, dtype, compute, source)
    finally:
        del model
        free_memory()


def verify_merged(
    merged: str | Path,
    *,
    adapter: str | Path | None = None,
    base: str | None = None,
    data: str | Path | None = None,
    prompts: int = 3,
    trust_remote_code: bool = False,
) -> Verification:
    """Check an existing merged folder against base + adapter (named by its recone.json unless
    given). Returns the report; `ok` is False when the merged weights do not match."""
    folder = Path(merged).expanduser()
    if not (folder / "config.json").is_file():
        raise InputError("not a model folder (no config.json)", path=folder)
    record = read_recone_json(folder)
    adapter = adapter or record.get("adapter")
    if adapter is None:
        raise InputError("no recone.json names the adapter here; pass --adapter DIR", path=folder)
    source = resolve_source(adapter, base or record.get("base_model"),
                            template=record.get("template"), scale=record.get("rating_scale"),
                            data=data, trust_remote_code=trust_remote_code)
    dtype = record.get("dtype") or _config_dtype(folder)
    started = time.perf_counter()
    compute = work_dtype(dtype, source.base)
    model, tokenizer = load_base(source.base, compute)
    probes = probe(attach_adapter(model, source), tokenizer, source, prompts)
    del model
    free_memory()
    report = check_merged(folder, probes, dtype, compute, source)
    log.info(f"{report.line()} ({time.perf_counter() - started:.1f} s)")
    return report


def _config_dtype(folder: Path) -> str:
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    dtype = config.get("dtype") or config.get("torch_dtype") or "float32"
    return dtype if dtype in BYTES_PER_PARAM else "float32"
