"""The dev evaluation of `train` and `sft`: greedy generation on the dev split exactly as `predict`
generates (generate.py's `hf_backend`, same prompts and readout), scored by metrics.py.
"""

from __future__ import annotations

import contextlib
import statistics
from collections.abc import Iterator
from typing import Any

from recone_lite.config import Recipe
from recone_lite.generate import hf_backend
from recone_lite.gpu import is_unsloth
from recone_lite.metrics import summarize
from recone_lite.prompts import PromptStyle
from recone_lite.readout import scale_values
from recone_lite.rewards import format_ok, parse_rating
from recone_lite.training import Data


@contextlib.contextmanager
def generation_mode(model: Any, tokenizer: Any) -> Iterator[None]:
    """Eval mode, left padding and the KV cache for generation; training state restored after."""
    was_training, side = model.training, tokenizer.padding_side
    config = getattr(model, "config", None)
    use_cache = getattr(config, "use_cache", None)
    unsloth = is_unsloth(model)
    if unsloth:
        from unsloth import FastLanguageModel

        FastLanguageModel.for_inference(model)
    model.eval()
    tokenizer.padding_side = "left"
    if config is not None:
        config.use_cache = True
    try:
        yield
    finally:
        tokenizer.padding_side = side
        if config is not None and use_cache is not None:
            config.use_cache = use_cache
        if was_training:
            if unsloth:
                FastLanguageModel.for_training(model)
            model.train()


def dev_metrics(
    model: Any, tokenizer: Any, examples: list[dict[str, Any]], recipe: Recipe, data: Data
) -> dict[str, Any]:
    """Greedy generation on `examples` as `predict` does it; MAE, RMSE, coverage (metrics.py)
    under the recipe's readout, the format rate and the mean completion length. With the
    expected readout the text readout's MAE/RMSE come along (`text_mae`, `text_rmse`): both
    read the same completions."""
    template, readout = recipe.data.template, recipe.evaluation.readout
    run = hf_backend(
        model,
        tokenizer,
        template=template,
        scale=data.scale,
        max_prompt_tokens=recipe.data.max_prompt_tokens,
        max_new_tokens=recipe.evaluation.max_new_tokens,
        temperature=0.0,
        batch_size=recipe.evaluation.batch_size,
        style=PromptStyle.of(recipe.data),
        readout=readout,
    )
    with generation_mode(model, tokenizer):
        samples = [s[0] for s in run(iter(examples))]
    truths = [float(e["rating"]) for e in examples]
    texts = [parse_rating(s.text, data.scale) for s in samples]
    predictions = texts
    if readout == "expected":
        values = scale_values(data.scale)
        predictions = [s.expected(values, t) for t, s in zip(texts, samples, strict=True)]
    report = summarize(predictions, truths, data.scale, data.fallback)
    formatted = sum(format_ok(s.text, template, data.scale) for s in samples)
    clipped = sum(s.tokens >= recipe.evaluation.max_new_tokens for s in samples)
    result = {
        "n": report["n"],
        "readout": readout,
        "mae": report["mae"],
        "rmse": report["rmse"],
        "coverage": report["coverage"],
        "mae_with_failures": report["mae_with_failures"],
        "format_rate": round(formatted / len(samples), 4),
        "mean_tokens": round(statistics.fmean(s.tokens for s in samples), 1),
        "clipped_ratio": round(clipped / len(samples), 4),
        "histogram": report["histogram"],
        "example": samples[0].text,
        "predictions": [{"id": e.get("id"), "rating": p, "truth": y}  # per row, for dev-*.jsonl
                        for e, p, y in zip(examples, predictions, truths, strict=True)],
    }
    if readout == "expected":
        text_report = summarize(texts, truths, data.scale, data.fallback)
        result["text_mae"], result["text_rmse"] = text_report["mae"], text_report["rmse"]
    return result
