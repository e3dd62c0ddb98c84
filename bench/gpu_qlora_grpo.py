"""GPU bench: 4-bit QLoRA + TRL GRPO steps, with Unsloth or with plain transformers + peft.

Measures recone-lite's CUDA training path on a model of a real Qwen2.5 shape: load in 4-bit
(bitsandbytes NF4), add a LoRA (r=16, all linear layers), run a few `trl.GRPOTrainer` steps of
8 prompts x 8 generations (the paper's batch) on prompts rendered from synthetic prepared examples
with recone-lite's own reward functions, then time one batched `generate`. Prints one JSON line
(`RESULT {...}`): versions, load time, seconds per GRPO step, generated tokens per step, peak
memory (torch allocated / reserved, and device-wide used as the driver sees it).

The weights are RANDOM, in the real architecture and shape (Qwen2, e.g. Qwen2.5-7B-Instruct:
hidden 3584, 28 layers, 28 heads, 4 kv heads, intermediate 18944), because the GPU machine has no
model hub. The vocabulary is the tokenizer's (by default SmolLM2's 49,152 tokens, not Qwen's
152,064), so the embedding and LM head are ~1.1B parameters smaller than the real 7B model.
Random weights never emit end-of-sequence: every completion runs to `--max-completion-length`,
the worst case for time and memory. Rewards are flat noise, which is fine: this measures the path.

On a GPU machine, from the repository root:

    pip install 'recone-lite[gpu]'              # or carried wheels: unsloth, unsloth_zoo, trl,
                                                #   bitsandbytes, datasets, ... (--no-deps)
    python bench/gpu_qlora_grpo.py --tokenizer .gpu/tok --shape 7b --steps 3
    python bench/gpu_qlora_grpo.py --tokenizer .gpu/tok --shape 7b --steps 3 --no-unsloth

`--tokenizer` is any saved Hugging Face tokenizer folder with a chat template (here one built from
the SmolLM2 GGUF: `AutoTokenizer.from_pretrained(folder, gguf_file=name).save_pretrained(...)`).
The random model is saved once to `--model-dir` (default /tmp/qwen-<shape>-shape) by a child
process and reused. Each run is one configuration: Unsloth patches transformers, peft and trl on
import, so compare configurations in separate processes. `--shape tiny` runs on CPU too (no
4-bit, no Unsloth): a quick check of the script itself.

Seen on one H100 80GB (2026-11-23; torch 2.11.0+cu130, transformers 5.17.0, trl 1.14.2, peft 0.21.0,
bitsandbytes 0.50.2, unsloth 2026.10.9, no xformers / flash-attn / vLLM), 7b shape, 8 prompts of
~990 tokens x 8 generations x 256 new tokens = 16,384 generated tokens per step, 2 steps:
Unsloth 94 s (first step, compiling) then 42.6 s/step, peak 16.9 GiB allocated / 17.6 reserved;
transformers + peft + bnb 62 s then 45.0 s/step, peak 18.4 GiB allocated / 31.7 reserved.
A step is mostly generation (HF generate, ~30 s for the 16,384 tokens in either configuration).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from recone_lite.plan import SHAPES as PLAN_SHAPES  # noqa: E402 (after the path)
from recone_lite.plan import Shape  # noqa: E402


def qwen_config(shape: Shape) -> dict[str, Any]:
    """transformers config fields of a planner shape (the vocabulary comes from the tokenizer)."""
    return dict(hidden_size=shape.hidden, num_hidden_layers=shape.layers,
                num_attention_heads=shape.heads, num_key_value_heads=shape.kv_heads,
                intermediate_size=shape.intermediate, tie_word_embeddings=shape.tied)


# Qwen2.5-*-Instruct shapes, from the planner's table (one source for both), and a tiny one.
SHAPES: dict[str, dict[str, Any]] = {
    size: qwen_config(PLAN_SHAPES[f"qwen2.5-{size}-instruct"]) for size in ("7b", "3b", "1.5b")
}
SHAPES["tiny"] = qwen_config(Shape(4, 256, 4, 2, 512, 0, tied=False))
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
GIB = 1024**3


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", choices=list(SHAPES), default="7b")
    p.add_argument("--tokenizer", default=str(ROOT / ".gpu" / "tok"), help="saved tokenizer folder")
    p.add_argument("--model-dir", default=None, help="where the random model is saved / reused")
    p.add_argument("--steps", type=int, default=3, help="GRPO optimizer steps")
    p.add_argument("--no-unsloth", action="store_true", help="plain transformers + peft + bnb")
    p.add_argument("--prompts-per-step", type=int, default=8)
    p.add_argument("--num-generations", type=int, default=8)
    p.add_argument("--per-device-train-batch-size", type=int, default=8)
    p.add_argument("--max-prompt-tokens", type=int, default=1024)
    p.add_argument("--max-completion-length", type=int, default=256)
    p.add_argument("--lora-r", type=int, default=16)
    p.add_argument("--no-generate-bench", action="store_true", help="skip the generate timing")
    p.add_argument("--json-out", default=None, help="also write the result JSON here")
    p.add_argument("--make-model", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.model_dir = args.model_dir or f"/tmp/qwen-{args.shape}-shape"
    return args


# --- the random model -------------------------------------------------------------------------


def make_model(args: argparse.Namespace) -> None:
    """Random bf16 Qwen2 of the chosen shape, created on the GPU, saved with its tokenizer."""
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    tok = AutoTokenizer.from_pretrained(args.tokenizer)
    config = Qwen2Config(
        vocab_size=len(tok),
        max_position_embeddings=32768,
        rms_norm_eps=1e-6,
        rope_theta=1_000_000.0,
        use_sliding_window=False,
        hidden_act="silu",
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        **SHAPES[args.shape],
    )
    config.dtype = torch.bfloat16
    t0 = time.perf_counter()
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device(dev):
        model = Qwen2ForCausalLM._from_config(config, dtype=torch.bfloat16)
    n_params = sum(p.numel() for p in model.parameters())
    t1 = time.perf_counter()
    out = Path(args.model_dir)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    size = sum(f.stat().st_size for f in out.glob("*.safetensors"))
    print(
        json.dumps(
            {
                "made": str(out),
                "params": n_params,
                "bytes": size,
                "init_s": round(t1 - t0, 1),
                "save_s": round(time.perf_counter() - t1, 1),
            }
        ),
        flush=True,
    )


# --- data -------------------------------------------------------------------------------------


def synthetic_examples(n: int, history: int = 30, seed: int = 0) -> list[dict[str, Any]]:
    """Prepared examples (recone-lite's record format) with long histories and reviews."""
    rng = random.Random(seed)
    genres = ["Jazz", "Rock", "Pop", "Classical", "Metal", "Folk", "Soul", "Electronic"]
    words = (
        "warm crisp muddy lively dull soaring gentle harsh catchy forgettable lush thin "
        "bold tired fresh clever slow upbeat moody bright"
    ).split()

    def meta(i: int) -> dict[str, Any]:
        return {
            "title": f"Album {i}",
            "categories": [genres[i % len(genres)]],
            "brand": f"Artist {i % 37}",
            "price": round(5 + (i % 20) * 0.75, 2),
            "description": " ".join(rng.choice(words) for _ in range(25)),
        }

    rows = []
    for u in range(n):
        items = rng.sample(range(1000, 9000), history + 1)
        past = [
            {
                "item_id": str(i),
                "timestamp": 1_400_000_000 + 86400 * k,
                "item": meta(i),
                "rating": float(rng.randint(1, 5)),
                "review": " ".join(rng.choice(words) for _ in range(40)),
            }
            for k, i in enumerate(items[:-1])
        ]
        rows.append(
            {
                "id": f"bench-{u}",
                "user_id": f"u{u}",
                "item_id": str(items[-1]),
                "rating": float(rng.randint(1, 5)),
                "timestamp": 1_500_000_000,
                "history": past,
                "target": meta(items[-1]),
            }
        )
    return rows


def prompt_dataset(tokenizer: Any, n: int, max_prompt_tokens: int) -> tuple[Any, list[int]]:
    from datasets import Dataset

    from recone_lite.prompts import render_prompt

    rows, lengths = [], []
    for ex in synthetic_examples(n):
        r = render_prompt(ex, tokenizer, "reczero", (1.0, 5.0), max_prompt_tokens)
        rows.append({"prompt": r.messages, "rating": ex["rating"]})
        lengths.append(r.n_tokens)
    return Dataset.from_list(rows), lengths


# --- measurement helpers ----------------------------------------------------------------------


class DevicePeak:
    """Samples device-wide used memory (total - free, as the driver reports it) in a thread."""

    def __init__(self, every_s: float = 0.25) -> None:
        import torch

        self.torch, self.every_s, self.peak, self._stop = torch, every_s, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            free, total = self.torch.cuda.mem_get_info()
            self.peak = max(self.peak, total - free)
            self._stop.wait(self.every_s)

    def __enter__(self) -> DevicePeak:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()


def nvidia_smi_used_mib() -> int | None:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=20,
        ).stdout
        return int(out.split()[0])
    except Exception:  # noqa: BLE001  (no nvidia-smi: not essential)
        return None


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in [
        "torch",
        "transformers",
        "trl",
        "peft",
        "accelerate",
        "bitsandbytes",
        "unsloth",
        "unsloth_zoo",
        "datasets",
        "triton",
        "xformers",
        "torchao",
    ]:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "-"
    return found


def memory(torch: Any, prefix: str) -> dict[str, float]:
    if not torch.cuda.is_available():
        return {}
    return {
        f"{prefix}_alloc_gib": round(torch.cuda.max_memory_allocated() / GIB, 2),
        f"{prefix}_reserved_gib": round(torch.cuda.max_memory_reserved() / GIB, 2),
    }


# --- the run ----------------------------------------------------------------------------------


def lora_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The one LoRA both loaders build: Unsloth's get_peft_model and peft's LoraConfig."""
    return {"r": args.lora_r, "lora_alpha": args.lora_r, "lora_dropout": 0.0,
            "target_modules": LORA_TARGETS, "bias": "none"}


def load(args: argparse.Namespace, use_unsloth: bool, max_seq: int) -> tuple[Any, Any, Any]:
    """(model, tokenizer, peft_config for the trainer or None when the model is already wrapped)."""
    import torch

    if use_unsloth:
        from unsloth import FastLanguageModel

        model, tok = FastLanguageModel.from_pretrained(
            model_name=args.model_dir,
            max_seq_length=max_seq,
            dtype=torch.bfloat16,
            load_in_4bit=True,
            fast_inference=False,
        )
        model = FastLanguageModel.get_peft_model(
            model, **lora_settings(args), use_gradient_checkpointing="unsloth", random_state=0)
        return model, tok, None
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    tok = AutoTokenizer.from_pretrained(args.model_dir)
    kwargs: dict[str, Any] = {"dtype": torch.bfloat16}
    if torch.cuda.is_available():
        kwargs["device_map"] = {"": 0}
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=torch.bfloat16,
            bnb_4bit_use_double_quant=True,
        )
    else:
        kwargs["dtype"] = torch.float32
    model = AutoModelForCausalLM.from_pretrained(args.model_dir, **kwargs)
    peft_config = LoraConfig(**lora_settings(args), task_type="CAUSAL_LM")
    return model, tok, peft_config


def run(args: argparse.Namespace) -> dict[str, Any]:
    use_unsloth = not args.no_unsloth
    if use_unsloth:
        import unsloth  # noqa: F401  (first: it patches transformers, peft and trl on import)
    import torch
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from recone_lite.rewards import reward_functions

    cuda = torch.cuda.is_available()
    result: dict[str, Any] = {
        "config": "unsloth" if use_unsloth else "transformers+peft+bnb",
        "shape": args.shape,
        "versions": versions(),
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
    }
    max_seq = args.max_prompt_tokens + args.max_completion_length
    t0 = time.perf_counter()
    model, tok, peft_config = load(args, use_unsloth, max_seq)
    result["load_s"] = round(time.perf_counter() - t0, 1)
    result.update(memory(torch, "after_load"))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token

    prompts_needed = args.prompts_per_step * (args.steps + 1)
    dataset, lengths = prompt_dataset(tok, prompts_needed, args.max_prompt_tokens)
    result["prompt_tokens"] = {"mean": round(statistics.mean(lengths)), "max": max(lengths)}

    grad_accum = args.prompts_per_step * args.num_generations // args.per_device_train_batch_size
    config = GRPOConfig(
        output_dir=f"/tmp/grpo-bench-{args.shape}",
        max_steps=args.steps,
        per_device_train_batch_size=args.per_device_train_batch_size,
        gradient_accumulation_steps=grad_accum,
        num_generations=args.num_generations,
        max_completion_length=args.max_completion_length,
        temperature=1.0,
        learning_rate=2e-6,
        beta=0.0,
        bf16=cuda,
        use_cpu=not cuda,
        gradient_checkpointing=cuda,
        gradient_checkpointing_kwargs={"use_reentrant": False} if cuda else None,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_vllm=False,
        seed=0,
    )
    result["grpo"] = {
        "completions_per_step": config.generation_batch_size,
        "per_device_train_batch_size": args.per_device_train_batch_size,
        "gradient_accumulation_steps": grad_accum,
        "num_generations": args.num_generations,
        "max_completion_length": args.max_completion_length,
    }

    times: list[float] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, *a: Any, **k: Any) -> None:
            if cuda:
                torch.cuda.synchronize()
            self.t = time.perf_counter()

        def on_step_end(self, *a: Any, **k: Any) -> None:
            if cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - self.t)

    trainer = GRPOTrainer(
        model=model,
        processing_class=tok,
        reward_funcs=reward_functions(["format", "answer"], "reczero", (1.0, 5.0)),
        args=config,
        train_dataset=dataset,
        peft_config=peft_config,
        callbacks=[Timer()],
    )
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    result["trainable_params"] = trainable
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    peak = DevicePeak() if cuda else None
    with peak or _null():
        trainer.train()
    result["step_s"] = [round(t, 1) for t in times]
    steady = times[1:] or times
    result["step_s_steady_mean"] = round(statistics.mean(steady), 1)
    result.update(memory(torch, "train_peak"))
    if peak:
        result["train_peak_device_used_gib"] = round(peak.peak / GIB, 2)
    result["nvidia_smi_used_mib_after_train"] = nvidia_smi_used_mib()
    logs = [h for h in trainer.state.log_history if "completions/mean_length" in h]
    per_step = config.generation_batch_size
    result["gen_tokens_per_step"] = [round(h["completions/mean_length"] * per_step) for h in logs]
    result["trl_step_time"] = [round(h["step_time"], 1) for h in logs if "step_time" in h]
    result["reward_mean"] = [round(h.get("reward", float("nan")), 3) for h in logs]
    result["clipped_ratio"] = [h.get("completions/clipped_ratio") for h in logs]

    if not args.no_generate_bench:
        result["generate"] = generate_bench(args, trainer.model, tok, dataset, use_unsloth, cuda)
    return result


def generate_bench(args, model, tok, dataset, use_unsloth: bool, cuda: bool) -> dict[str, Any]:
    """One batched sampling call: prompts_per_step prompts x num_generations, full length."""
    import torch

    if use_unsloth:
        from unsloth import FastLanguageModel

        FastLanguageModel.for_inference(model)
    model.eval()
    texts = [
        tok.apply_chat_template(dataset[i]["prompt"], tokenize=False, add_generation_prompt=True)
        for i in range(args.prompts_per_step)
    ]
    texts = [t for t in texts for _ in range(args.num_generations)]
    tok.padding_side = "left"
    batch = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    batch = batch.to(model.device)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    with torch.no_grad():
        out = model.generate(
            **batch,
            max_new_tokens=args.max_completion_length,
            do_sample=True,
            temperature=1.0,
            pad_token_id=tok.pad_token_id,
        )
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    new = out[:, batch["input_ids"].shape[1] :]
    n_tokens = int((new != tok.pad_token_id).sum())
    return {
        "sequences": len(texts),
        "new_tokens": n_tokens,
        "seconds": round(seconds, 1),
        "tokens_per_s": round(n_tokens / seconds),
        **memory(torch, "peak"),
    }


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> None:
        return None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("UNSLOTH_DISABLE_STATISTICS", "1")
    if args.make_model:
        make_model(args)
        return 0
    if not (Path(args.model_dir) / "config.json").is_file():
        # A child process, so that the bf16 copy's GPU memory is gone before the measured run.
        subprocess.run(
            [
                sys.executable,
                __file__,
                "--make-model",
                "--shape",
                args.shape,
                "--tokenizer",
                args.tokenizer,
                "--model-dir",
                args.model_dir,
            ],
            check=True,
        )
    result = run(args)
    line = json.dumps(result)
    print("RESULT " + line, flush=True)
    if args.json_out:
        Path(args.json_out).write_text(line + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
