"""`recone-lite plan`: will a recipe fit in GPU memory, and about how long does a step take?

Everything here is arithmetic on a model's shape and the recipe's settings, so it runs in
milliseconds, loads no weights and imports no torch. The only I/O is finding the shape
(`model_shape`): a local folder's `config.json`, a `.gguf` file's metadata (read with the `gguf`
package, memory-mapped), or the built-in table `SHAPES` of common hub ids, since a plan is often
made on a machine that has neither the weights nor hub access.

Peak memory on one device = runtime + weights + adapter (weights, gradients, AdamW moments, fp32)
+ the larger of two phases that do not overlap:
- training: activations kept for the backward pass of one micro-batch of completions
  (prompt + completion tokens) and the completion logits (with their copies and gradient);
- generation: the KV cache of one generation batch (`per_device_train_batch_size x
  steps_per_generation` completions, as TRL generates them) or of the dev evaluation batch,
  plus the prefill of its prompts (the MLP's intermediate tensors for all prompt tokens at once).
With TRL's vLLM in `colocate` mode, vLLM reserves `vllm_gpu_memory_utilization` of the card for
its own weights and KV cache instead; in `server` mode generation runs on other GPUs.

The activation term's coefficient was calibrated against a measured run (see
`ACTIVATION_COEFFICIENT` and docs/recipes.md); the rest are counts of bytes.

The package's one memory model: `train --dry-run` / `sft --dry-run` print this estimate too
(dry_run.py). Over 600 lines and one unit: shapes, settings, the estimate and its table belong
together so that the arithmetic reads in one place.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recone_lite import log
from recone_lite.config import trainer_defaults
from recone_lite.errors import InputError
from recone_lite.gpu import (
    check_vllm_quantization,
    describe_precision,
    precision_for,
    vllm_settings,
)
from recone_lite.prepared import manifest_path
from recone_lite.trl_batch import grpo_layout, prompts_per_step

GIB = 1024**3
LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

# Bytes per parameter of the quantized linear layers. bitsandbytes NF4 with double quantization:
# 4 bits + one 8-bit absmax per 64 weights + fp32 constants per 256 blocks ~ 0.52 B; 0.56 leaves
# room for the layout padding seen in practice. LLM.int8(): 1 byte + one fp32 scale per row.
# Embeddings, the LM head and the norms stay in 16 bits (bitsandbytes skips them).
QUANT_BYTES = {"4bit": 0.56, "8bit": 1.02}

# Activations saved for the backward pass, per token and layer, in elements of the compute dtype:
# a Llama/Qwen layer keeps ~9 hidden-sized tensors (norm inputs and outputs, q, k, v, attention
# output, o_proj input) and 4 intermediate-sized ones (gate, SiLU, up and their product).
# Measured: torch's saved-tensor hooks on a LoRA (r 16, all linear layers) forward of SmolLM2-135M,
# 8 x 560 tokens, count 13.9k elements per token and layer where this count gives 11.3k: hence
# the coefficient 1.25 (the LoRA inputs, masks and the small tensors the count leaves out).
ACTIVATION_COEFFICIENT = 1.25
LOGIT_COPIES = 3  # completion logits, their temperature-scaled copy, and their gradient
PREFILL_INTERMEDIATES = 3  # MLP tensors alive at once in a no-grad forward (see estimate)

# What a process holds besides the tensors: CUDA context and cuBLAS workspaces on a GPU; on a CPU,
# Python with torch, transformers, trl and datasets imported (0.5 GiB measured with ru_maxrss)
# plus the tokenizer, data and trainer objects.
RUNTIME_GIB = {"cuda": 0.75, "cpu": 0.95}
# Allocator slack over the tensors alive at the peak: PyTorch's CUDA caching allocator; on a CPU,
# glibc malloc keeping freed memory and the backward pass's transient buffers. The CPU figure is
# fitted to the peak RSS of three real runs of the cpu-demo recipe in different shapes (4.3 to
# 12.5 GiB: bench/plan_calibration.py, docs/recipes.md); the plan lands within 12% of each.
SLACK = {"cuda": 1.10, "cpu": 1.40}

@dataclass(frozen=True)
class Shape:
    """The sizes of a decoder-only transformer that memory and FLOPs depend on.

    >>> qwen7b = SHAPES["qwen2.5-7b-instruct"]
    >>> round(qwen7b.total_params() / 1e9, 2), qwen7b.kv_dim
    (7.62, 512)
    """

    layers: int
    hidden: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    head_dim: int = 0  # 0: hidden // heads
    tied: bool = True
    qkv_bias: bool = False
    params: int | None = None  # counted from the file when known; else from the shape

    @property
    def head_size(self) -> int:
        return self.head_dim or self.hidden // self.heads

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_size

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """`(in_features, out_features)` of each linear layer of one block."""
        q = self.heads * self.head_size
        h, i = self.hidden, self.intermediate
        return {"q_proj": (h, q), "k_proj": (h, self.kv_dim), "v_proj": (h, self.kv_dim),
                "o_proj": (q, h), "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}

    def linear_params(self) -> int:
        return self.layers * sum(a * b for a, b in self.linear_shapes().values())

    def other_params(self) -> int:
        """Embeddings, LM head (when untied), norms and biases: what quantization leaves alone."""
        bias = self.layers * (self.heads * self.head_size + 2 * self.kv_dim) * self.qkv_bias
        norms = self.hidden * (2 * self.layers + 1)
        return self.vocab * self.hidden * (1 if self.tied else 2) + norms + bias

    def total_params(self) -> int:
        return self.params or self.linear_params() + self.other_params()


# Shapes of common hub models (from their config.json), for plans made without the files.
# Keys are the model's name without its organisation, lower case.
SHAPES: dict[str, Shape] = {
    "qwen2.5-0.5b-instruct": Shape(24, 896, 14, 2, 4864, 151936, qkv_bias=True),
    "qwen2.5-1.5b-instruct": Shape(28, 1536, 12, 2, 8960, 151936, qkv_bias=True),
    "qwen2.5-3b-instruct": Shape(36, 2048, 16, 2, 11008, 151936, qkv_bias=True),
    "qwen2.5-7b-instruct": Shape(28, 3584, 28, 4, 18944, 152064, tied=False, qkv_bias=True),
    "qwen2.5-7b-instruct-1m": Shape(28, 3584, 28, 4, 18944, 152064, tied=False, qkv_bias=True),
    "llama-3.1-8b-instruct": Shape(32, 4096, 32, 8, 14336, 128256, tied=False),
    "smollm2-135m-instruct": Shape(30, 576, 9, 3, 1536, 49152),
    "smollm2-360m-instruct": Shape(32, 960, 15, 5, 2560, 49152),
    "smollm2-1.7b-instruct": Shape(24, 2048, 32, 32, 8192, 49152),
}
# Suffixes of re-packaged copies (Unsloth's pre-quantized uploads, GGUF names) that keep the shape.
_SUFFIXES = ("-bnb-4bit", "-unsloth", "-gguf")


def builtin_shape(name: str) -> Shape | None:
    """The table's shape for a hub id, ignoring the organisation and re-packaging suffixes.

    >>> builtin_shape("unsloth/Qwen2.5-3B-Instruct-bnb-4bit") == SHAPES["qwen2.5-3b-instruct"]
    True
    >>> builtin_shape("someone/unknown-model") is None
    True
    """
    key = name.rstrip("/").rsplit("/", 1)[-1].lower()
    for suffix in _SUFFIXES:
        key = key.removesuffix(suffix)
    return SHAPES.get(key)


def shape_from_config(config: dict[str, Any]) -> Shape:
    """A shape from a transformers `config.json` (nested `text_config` too).

    >>> shape_from_config({"num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 4,
    ...                    "intermediate_size": 128, "vocab_size": 1000}).kv_heads
    4
    """
    config = config.get("text_config") or config
    heads = config["num_attention_heads"]
    return Shape(
        layers=config["num_hidden_layers"],
        hidden=config["hidden_size"],
        heads=heads,
        kv_heads=config.get("num_key_value_heads") or heads,
        intermediate=config.get("intermediate_size") or 4 * config["hidden_size"],
        vocab=config["vocab_size"],
        head_dim=config.get("head_dim") or 0,
        tied=bool(config.get("tie_word_embeddings", True)),
        qkv_bias=bool(config.get("attention_bias", config.get("model_type") == "qwen2")),
    )


def shape_from_gguf(path: Path) -> Shape:
    """A shape from a GGUF file's metadata; the parameter count is summed over its tensors."""
    from gguf import GGUFReader

    reader = GGUFReader(str(path))

    def field(key: str) -> Any:
        found = reader.fields.get(key)
        if found is None:
            return None
        value = found.contents()
        return value

    arch = field("general.architecture")
    heads = int(field(f"{arch}.attention.head_count"))
    tokens = field("tokenizer.ggml.tokens")
    names = {t.name for t in reader.tensors}
    return Shape(
        layers=int(field(f"{arch}.block_count")),
        hidden=int(field(f"{arch}.embedding_length")),
        heads=heads,
        kv_heads=int(field(f"{arch}.attention.head_count_kv") or heads),
        intermediate=int(field(f"{arch}.feed_forward_length")),
        vocab=int(field(f"{arch}.vocab_size") or len(tokens)),
        tied="output.weight" not in names,
        qkv_bias="blk.0.attn_q.bias" in names,
        params=sum(int(t.n_elements) for t in reader.tensors),
    )


def model_shape(spec: Any) -> tuple[Shape, str]:
    """The shape of the recipe's `model:` and where it came from (a file, or the table)."""
    try:
        folder, gguf = spec.source()
    except InputError:  # the SmolLM2 alias without its package: the table still knows it
        folder, gguf = "HuggingFaceTB/SmolLM2-135M-Instruct", None
    if gguf is not None and (Path(folder) / gguf).is_file():
        return shape_from_gguf(Path(folder) / gguf), f"GGUF metadata of {gguf}"
    config = Path(folder).expanduser() / "config.json"
    if config.is_file():
        return shape_from_config(json.loads(config.read_text(encoding="utf-8"))), str(config)
    shape = builtin_shape(gguf or folder)
    if shape is None:
        known = ", ".join(sorted(SHAPES))
        raise InputError(
            f"no shape for {spec.name}: not a local folder with config.json or a .gguf file, and "
            f"not in the built-in table ({known}); there is no hub access to look it up",
            field="model.name",
        )
    return shape, "built-in table (no hub access: from the model's published config.json)"


@dataclass(frozen=True)
class Settings:
    """The recipe's settings that memory and time depend on, for one device."""

    kind: str = "grpo"  # grpo | sft
    device: str = "cuda"  # cuda | cpu
    quantization: str = "none"  # none | 4bit | 8bit (CUDA only; a CPU loads fp32)
    lora_r: int = 16
    lora_targets: tuple[str, ...] = LINEAR
    batch: int = 8  # completions (GRPO) or sequences (SFT) per micro-batch
    accumulation: int = 1
    generation_batch: int = 8  # completions generated at once (TRL: batch x steps_per_generation)
    num_generations: int = 8
    prompt_tokens: int = 2048
    completion_tokens: int = 512  # GRPO: max_completion_length; SFT: 0 (prompt_tokens = max_length)
    checkpointing: bool = True
    vllm: str = "no"  # no | colocate | server
    vllm_share: float = 0.3
    eval_batch: int = 8
    eval_tokens: int = 256
    warmup_batch: int = 0  # warm-up SFT steps before GRPO (`warmup:`), 0 when none
    readout: str = "text"  # evaluation.readout: `expected` keeps generate's fp32 logits
    engine: str = "transformers"  # transformers (+ peft) | unsloth: who loads a 4/8-bit base

    @property
    def compute_bytes(self) -> int:
        return 4 if self.device == "cpu" else 2


def settings_from_recipe(recipe: Any, device: str = "cuda",
                         engine: str = "transformers") -> Settings:
    """The `Settings` of a validated recipe, with TRL's defaults where the recipe is silent and
    the CPU's forced settings (fp32, no gradient checkpointing, no quantization) on `cpu`."""
    section = recipe.grpo if recipe.kind == "grpo" else recipe.sft
    get = {**trainer_defaults(recipe.kind), **section}.get
    batch = int(get("per_device_train_batch_size"))
    accumulation = int(get("gradient_accumulation_steps") or 1)
    targets = recipe.lora.target_modules
    common = {
        "kind": recipe.kind,
        "device": device,
        "quantization": recipe.model.quantization if device == "cuda" else "none",
        "lora_r": recipe.lora.r,
        "lora_targets": LINEAR if targets == "all-linear" else tuple(targets),
        "batch": batch,
        "accumulation": accumulation,
        "checkpointing": bool(get("gradient_checkpointing")) and device == "cuda",
        "eval_batch": recipe.evaluation.batch_size,
        "eval_tokens": recipe.evaluation.max_new_tokens,
        "warmup_batch": recipe.warmup.batch_size if recipe.warmup else 0,
        "readout": recipe.evaluation.readout,
        "engine": engine,
    }
    if recipe.kind == "sft":
        length = int(get("max_length") or recipe.model.max_seq_length)
        return Settings(**common, generation_batch=0, num_generations=1,
                        prompt_tokens=min(length, recipe.model.max_seq_length),
                        completion_tokens=0)
    steps = get("steps_per_generation") or accumulation
    generation = get("generation_batch_size") or batch * steps
    vllm = str(get("vllm_mode")) if get("use_vllm") else "no"
    return Settings(
        **common,
        generation_batch=int(generation),
        num_generations=int(get("num_generations")),
        prompt_tokens=recipe.data.max_prompt_tokens,
        completion_tokens=int(get("max_completion_length")),
        vllm=vllm,
        vllm_share=float(get("vllm_gpu_memory_utilization")),
    )


@dataclass(frozen=True)
class Estimate:
    """Peak memory of one device in GiB, by part, and a step's time in seconds."""

    runtime: float
    weights: float
    adapter: float
    activations: float
    logits: float
    kv_cache: float
    prefill: float
    vllm: float
    casts: float
    eval_logits: float
    total: float
    lora_params: int
    params: int
    step_seconds: float
    generation_seconds: float
    train_seconds: float

    def parts(self) -> dict[str, float]:
        keys = ("runtime", "weights", "casts", "adapter", "activations", "logits", "kv_cache",
                "prefill", "eval_logits", "vllm")
        return {k: getattr(self, k) for k in keys}


def weight_bytes(shape: Shape, quantization: str, device: str) -> float:
    """Bytes of the frozen base model.

    >>> round(weight_bytes(SHAPES["qwen2.5-7b-instruct"], "4bit", "cuda") / GIB, 2)
    5.43
    >>> round(weight_bytes(SHAPES["qwen2.5-7b-instruct"], "none", "cuda") / GIB, 2)
    14.19
    """
    if device == "cpu":
        return 4.0 * shape.total_params()
    if quantization in QUANT_BYTES:
        other = shape.total_params() - shape.linear_params()
        return QUANT_BYTES[quantization] * shape.linear_params() + 2.0 * other
    return 2.0 * shape.total_params()


def lora_params(shape: Shape, r: int, targets: tuple[str, ...]) -> int:
    """Trainable LoRA parameters: r x (in + out) per targeted linear layer.

    >>> lora_params(SHAPES["smollm2-135m-instruct"], 16, LINEAR)  # peft counts 4,884,480
    4884480
    """
    shapes = shape.linear_shapes()
    return shape.layers * sum(r * sum(shapes[t]) for t in targets if t in shapes)


def activation_elements(shape: Shape) -> int:
    """Elements saved per token and layer for the backward pass (see ACTIVATION_COEFFICIENT).

    >>> activation_elements(SHAPES["smollm2-135m-instruct"])
    11328
    """
    return 9 * shape.hidden + 4 * shape.intermediate


# Device throughput for the step-time order of magnitude: effective matmul FLOP/s in training
# (~35% of the dense bf16 peak; bitsandbytes 4-bit halves it) and the seconds per decoding step
# of a generation batch (transformers' `generate` is bound by kernel launches and weight reads).
DEVICES: dict[str, dict[str, float]] = {
    # name: memory GiB, effective FLOP/s, memory bandwidth B/s
    "cpu": {"memory": 24, "flops": 6e10, "bandwidth": 1e10},
    "t4": {"memory": 15, "flops": 1.5e13, "bandwidth": 2.6e11},  # 16 GB card, 15 GiB usable
    "rtx2080ti": {"memory": 11, "flops": 2.0e13, "bandwidth": 5.5e11},
    "rtx3090": {"memory": 24, "flops": 3.5e13, "bandwidth": 8.5e11},
    "rtx4060-laptop": {"memory": 8, "flops": 2.0e13, "bandwidth": 2.5e11},
    "rtx4080": {"memory": 16, "flops": 5.0e13, "bandwidth": 7.0e11},
    "rtx4090": {"memory": 24, "flops": 8.0e13, "bandwidth": 1.0e12},
    "a100-80g": {"memory": 80, "flops": 1.1e14, "bandwidth": 2.0e12},
    "h20": {"memory": 96, "flops": 5.0e13, "bandwidth": 4.0e12},
    "h100": {"memory": 80, "flops": 3.5e14, "bandwidth": 3.3e12},
}
# Compute capability of each profile: it decides the precision (gpu.precision_for: bf16 from
# 8.0, else fp16). Turing (7.5: T4, RTX 20xx, Quadro RTX) has no native bf16.
CAPABILITY: dict[str, tuple[int, int] | None] = {
    "cpu": None, "t4": (7, 5), "rtx2080ti": (7, 5), "rtx3090": (8, 6), "rtx4060-laptop": (8, 9),
    "rtx4080": (8, 9), "rtx4090": (8, 9), "a100-80g": (8, 0), "h20": (9, 0), "h100": (9, 0),
}
GENERATE_STEP_OVERHEAD = {"cuda": 0.025, "cpu": 0.02}  # seconds per token, transformers generate


def estimate(shape: Shape, s: Settings, *, device_name: str = "rtx4090",
             memory_gib: float | None = None) -> Estimate:
    """Peak memory (GiB) and step time (s) of one device. Pure arithmetic.

    >>> e = estimate(SHAPES["qwen2.5-7b-instruct"], Settings(quantization="4bit", batch=8,
    ...              prompt_tokens=1024, completion_tokens=512))
    >>> round(e.weights, 1), round(e.adapter, 2), e.total < 24
    (5.4, 0.6, True)
    """
    memory = DEVICES[device_name]["memory"] if memory_gib is None else memory_gib
    b = s.compute_bytes
    seq = s.prompt_tokens + s.completion_tokens
    lora = lora_params(shape, s.lora_r, s.lora_targets)
    per_token = ACTIVATION_COEFFICIENT * activation_elements(shape) * b
    if s.checkpointing:  # one hidden state per layer kept, one layer recomputed at a time
        act = s.batch * seq * (shape.layers * shape.hidden * b + per_token)
    else:
        act = s.batch * seq * shape.layers * per_token
    logit_tokens = s.completion_tokens if s.kind == "grpo" else seq
    logits = s.batch * logit_tokens * shape.vocab * b * LOGIT_COPIES
    if s.warmup_batch:  # warm-up SFT: logits over the whole sequence; the larger phase counts
        warm_act = act * s.warmup_batch / s.batch
        warm_logits = s.warmup_batch * seq * shape.vocab * b * LOGIT_COPIES
        if warm_act + warm_logits > act + logits:
            act, logits = warm_act, warm_logits
    kv_per_token = shape.layers * 2 * shape.kv_dim * b
    eval_kv = s.eval_batch * (s.prompt_tokens + s.eval_tokens) * kv_per_token
    gen_kv = s.generation_batch * seq * kv_per_token if s.vllm == "no" else 0
    # The prefill of a generation batch runs all its prompt tokens through each MLP at once: the
    # gate's activation, the up projection and their product (3 x intermediate per token) are
    # alive together. Small on the CPU demo; 7 GiB for 64 prompts of ~1K tokens on a 7B model.
    prefill_per_token = PREFILL_INTERMEDIATES * shape.intermediate * b
    gen_prefill = s.generation_batch * s.prompt_tokens * prefill_per_token if s.vllm == "no" else 0
    eval_prefill = s.eval_batch * s.prompt_tokens * prefill_per_token
    # The expected readout asks `generate` for its logits (generate.py `output_logits`), and
    # transformers keeps one fp32 copy of each step's (batch x vocab) logits until generation
    # ends (generation/utils.py `_sample`: `.to(dtype=torch.float32)`, `raw_logits += ...`):
    # batch x new tokens x vocab x 4 B, whatever the compute dtype. They grow while the prefill's
    # tensors are long gone, so the dev evaluation's peak is its KV cache plus the larger of the
    # two (Qwen2.5-7B, 16 x 640 new tokens: 5.8 GiB).
    eval_logits = (s.eval_batch * s.eval_tokens * shape.vocab * 4.0
                   if s.readout == "expected" else 0.0)
    gen_phase = gen_kv + gen_prefill
    eval_phase = eval_kv + max(eval_prefill, eval_logits)
    if gen_phase >= eval_phase:
        kv, prefill, eval_logits = gen_kv, gen_prefill, 0.0
    else:
        kv, prefill = eval_kv, eval_prefill
    vllm = s.vllm_share * memory * GIB if s.vllm == "colocate" else 0.0
    dynamic = max(act + logits, max(gen_phase, eval_phase))
    slack = SLACK[s.device]
    # transformers + peft with a 4/8-bit base: peft's prepare_model_for_kbit_training (called
    # by training.py) casts every fp16/bf16 parameter that is not a quantized weight to fp32,
    # i.e. the embeddings, an untied LM head, the norms and biases: +2 B each (Qwen2.5-7B:
    # 1.09 B such parameters, +2.2 GB). Unsloth builds its adapter without that call (not
    # counted; not measured here).
    casts = 0.0
    if s.device == "cuda" and s.quantization in QUANT_BYTES and s.engine == "transformers":
        casts = 2.0 * (shape.total_params() - shape.linear_params())
    parts = {
        "runtime": RUNTIME_GIB[s.device] * GIB,
        "weights": weight_bytes(shape, s.quantization, s.device),
        "casts": casts,
        "adapter": 16.0 * lora,  # fp32 weight + gradient + two AdamW moments
        "activations": act * slack,
        "logits": logits * slack,
        "kv_cache": kv * slack,
        "prefill": prefill * slack,
        "eval_logits": eval_logits * slack,
        "vllm": vllm,
    }
    # the two phases do not overlap: count only the larger one in the total
    dynamic_parts = ("activations", "logits", "kv_cache", "prefill", "eval_logits")
    total = sum(v for k, v in parts.items() if k not in dynamic_parts)
    total += dynamic * slack
    gen_s, train_s = step_time(shape, s, device_name, parts["weights"])
    return Estimate(**{k: v / GIB for k, v in parts.items()}, total=total / GIB,
                    lora_params=lora, params=shape.total_params(),
                    step_seconds=gen_s + train_s, generation_seconds=gen_s, train_seconds=train_s)


def step_time(shape: Shape, s: Settings, device_name: str, weights: float) -> tuple[float, float]:
    """Seconds of generation and of training in one optimizer step (an order of magnitude):
    training is ~4 forward passes' FLOPs per token with a frozen base (6 with checkpointing);
    generation is `completion_tokens` decoding steps, each bound by reading the weights or by
    per-token overhead, plus the prompt's prefill."""
    dev = DEVICES[device_name]
    flops = dev["flops"] * (0.5 if s.quantization == "4bit" else 1.0)
    n = shape.total_params()
    sequences = s.batch * s.accumulation
    seq = s.prompt_tokens + s.completion_tokens
    passes = 4 + (2 if s.checkpointing else 0)
    train = passes * n * sequences * seq / flops
    if s.kind != "grpo" or s.vllm == "server":
        return 0.0, train
    device = "cpu" if device_name == "cpu" else "cuda"
    batches = max(math.ceil(sequences / max(s.generation_batch, 1)), 1)
    decode = max(weights / dev["bandwidth"], GENERATE_STEP_OVERHEAD[device],
                 2 * n * s.generation_batch / flops)
    if s.vllm == "colocate":
        decode = max(weights / dev["bandwidth"], 2 * n * s.generation_batch / flops)
    prefill = 2 * n * s.generation_batch * s.prompt_tokens / flops
    return batches * (s.completion_tokens * decode + prefill), train


def knobs(shape: Shape, s: Settings, **kwargs: Any) -> list[tuple[str, float]]:
    """Recipe changes that lower peak memory, with the new peak in GiB, best first: each one is
    `estimate` rerun with one setting changed.

    >>> s = Settings(quantization="none", batch=8, prompt_tokens=1024, completion_tokens=1024,
    ...              engine="unsloth")  # (transformers + peft: its fp32 casts put 4-bit second)
    >>> [k for k, _ in knobs(SHAPES["qwen2.5-7b-instruct"], s)][0]
    'model.quantization=4bit'
    """
    now = estimate(shape, s, **kwargs).total
    prefix = "grpo" if s.kind == "grpo" else "sft"
    changes: list[tuple[str, Settings]] = []
    if s.device == "cuda" and s.quantization != "4bit":
        changes.append(("model.quantization=4bit", dataclasses.replace(s, quantization="4bit")))
    if s.device == "cuda" and not s.checkpointing:
        changes.append((f"{prefix}.gradient_checkpointing=true",
                        dataclasses.replace(s, checkpointing=True)))
    if s.batch > 1:
        half = max(s.batch // 2, 1)
        changes.append((f"{prefix}.per_device_train_batch_size={half} "
                        f"{prefix}.gradient_accumulation_steps={s.accumulation * 2}",
                        dataclasses.replace(s, batch=half, accumulation=s.accumulation * 2,
                                            generation_batch=s.generation_batch)))
    if s.kind == "grpo" and s.completion_tokens > 256:
        shorter = s.completion_tokens // 2
        changes.append((f"grpo.max_completion_length={shorter}",
                        dataclasses.replace(s, completion_tokens=shorter)))
    if s.kind == "grpo" and s.generation_batch > s.batch:
        changes.append((f"grpo.generation_batch_size={s.batch}",
                        dataclasses.replace(s, generation_batch=s.batch)))
    if s.prompt_tokens > 1024:
        changes.append(("data.max_prompt_tokens=1024",
                        dataclasses.replace(s, prompt_tokens=1024)))
    if s.vllm == "colocate" and s.vllm_share > 0.2:
        changes.append(("grpo.vllm_gpu_memory_utilization=0.2",
                        dataclasses.replace(s, vllm_share=0.2)))
    if s.lora_r > 16:
        changes.append(("lora.r=16", dataclasses.replace(s, lora_r=16)))
    found = [(text, estimate(shape, changed, **kwargs).total) for text, changed in changes]
    return sorted([(t, v) for t, v in found if v < now - 0.05], key=lambda kv: kv[1])


def verdict(total: float, memory: float) -> str:
    """Whether a peak fits in `memory` GiB; within 10% of it is tight.

    >>> verdict(20.0, 24), verdict(23.0, 24), verdict(30.0, 24)
    ('fits', 'tight', 'does not fit')
    """
    if total <= 0.9 * memory:
        return "fits"
    return "tight" if total <= memory else "does not fit"


def fmt_seconds(seconds: float) -> str:
    """A duration for people.

    >>> fmt_seconds(0.4), fmt_seconds(42), fmt_seconds(4000), fmt_seconds(9000)
    ('~0.4 s', '~42 s', '~67 min', '~2.5 h')
    """
    if seconds < 1:
        return f"~{seconds:.1f} s"
    if seconds < 120:
        return f"~{seconds:.0f} s"
    if seconds < 7200:
        return f"~{seconds / 60:.0f} min"
    return f"~{seconds / 3600:.1f} h"


ENGINES = ("unsloth", "transformers")


def default_engine() -> str:
    """Who will load a 4/8-bit base on CUDA: `unsloth` where it is installed (models.py prefers
    it), else `transformers` (+ peft). Looks for the package without importing it."""
    return "unsloth" if importlib.util.find_spec("unsloth") is not None else "transformers"


def plan_recipe(recipe: Any, *, device_name: str = "rtx4090", memory_gib: float | None = None,
                gpus: int = 1, steps: int | None = None,
                engine: str | None = None) -> dict[str, Any]:
    """The whole plan of a validated recipe as a JSON-able dict (what `recone-lite plan` prints).
    `steps` (the run's optimizer steps) turns the step time into a run time when given;
    `engine` (default: `default_engine()`) decides whether peft's fp32 casts are counted."""
    device = "cpu" if device_name == "cpu" else "cuda"
    memory = DEVICES[device_name]["memory"] if memory_gib is None else memory_gib
    shape, source = model_shape(recipe.model)
    s = settings_from_recipe(recipe, device, engine or default_engine())
    layout = batch_layout(recipe, gpus)
    if layout is not None and gpus > 1:  # each process generates its share of the global batch
        fixed = layout if layout.generation_batch else grpo_layout(
            {**recipe.grpo, **fix_values(layout.fix)}, gpus, trainer_defaults("grpo"))
        s = dataclasses.replace(s, generation_batch=max(fixed.generation_batch // gpus, 1))
    e = estimate(shape, s, device_name=device_name, memory_gib=memory)
    capability = CAPABILITY.get(device_name, (8, 0))
    result: dict[str, Any] = {
        "recipe": recipe.description,
        "model": recipe.model.name,
        "shape_from": source,
        "device": device_name,
        "memory_gib": memory,
        "gpus": gpus,
        "precision": precision_for(capability),
        "precision_why": describe_precision(capability),
        "parameters": e.params,
        "lora_parameters": e.lora_params,
        "peak_gib": round(e.total, 2),
        "parts_gib": {k: round(v, 2) for k, v in e.parts().items()},
        "verdict": verdict(e.total, memory),
        "step_seconds": round(e.step_seconds, 2),
        "generation_seconds": round(e.generation_seconds, 2),
        "train_seconds": round(e.train_seconds, 2),
        "prompts_per_step": prompts_per_step(s.batch, s.accumulation, gpus, s.num_generations),
        "settings": dataclasses.asdict(s),
        "knobs": [{"change": t, "peak_gib": round(v, 2)}
                  for t, v in knobs(shape, s, device_name=device_name, memory_gib=memory)],
    }
    if layout is not None:
        result["batch_layout"] = {
            "world_size": gpus, "valid": layout.problem is None,
            "generation_batch": layout.generation_batch,
            "steps_per_generation": layout.steps_per_generation,
            "problem": layout.problem, "fix": layout.fix}
    result["checks"] = gpu_checks(recipe, device)
    if device == "cuda" and s.quantization in QUANT_BYTES:
        other = 2.0 * (shape.total_params() - shape.linear_params()) / GIB
        result["checks"].append(
            f"engine: {s.engine}" + (f" (with transformers + peft instead: +{other:.2f} GiB of "
                                     "fp32 casts, --engine transformers)" if s.engine == "unsloth"
                                     else f" (its fp32 casts counted: {other:.2f} GiB)"))
    if steps is not None:
        result["steps"] = steps
        result["run_hours"] = round(steps * e.step_seconds / 3600, 2)
        result["gpu_hours"] = round(steps * e.step_seconds * gpus / 3600, 2)
    return result


def batch_layout(recipe: Any, gpus: int) -> Any:
    """TRL's GRPO batch layout of the recipe at `gpus` processes (trl_batch.grpo_layout); None
    for SFT, whose batch has no divisibility rule."""
    if recipe.kind != "grpo":
        return None
    return grpo_layout(recipe.grpo, gpus, trainer_defaults("grpo"))


def fix_values(fix: list[str]) -> dict[str, Any]:
    """`grpo.key=value` overrides as `{key: value}`.

    >>> fix_values(["grpo.generation_batch_size=null", "grpo.steps_per_generation=4"])
    {'generation_batch_size': None, 'steps_per_generation': 4}
    """
    import yaml

    pairs = (item.removeprefix("grpo.").partition("=") for item in fix)
    return {key: yaml.safe_load(value) for key, _, value in pairs}


def gpu_checks(recipe: Any, device: str) -> list[str]:
    """What the GPU path would refuse or change, as lines for the plan (not errors: a plan is
    made anywhere): vLLM from a 4-bit base without Unsloth, vLLM's context bound."""
    if recipe.kind != "grpo" or device != "cuda" or not recipe.grpo.get("use_vllm"):
        return []
    lines = []
    try:
        check_vllm_quantization(recipe.grpo, recipe.model.quantization, unsloth=False)
    except InputError as err:
        lines.append(f"without Unsloth: {err}")
    bound = vllm_settings(recipe.grpo, recipe.model.max_seq_length)
    if bound:
        lines.append(f"vLLM context: grpo.vllm_max_model_length={bound['vllm_max_model_length']} "
                     "(model.max_seq_length; set it in the recipe to choose)")
    return lines


def print_plan(plan: dict[str, Any]) -> None:
    """A rich table of the plan on stderr."""
    from rich.table import Table

    parts = plan["parts_gib"]
    table = Table(title=f"plan: {plan['model']} on {plan['gpus']} x {plan['device']} "
                  f"({plan['memory_gib']:g} GiB)", show_header=True, title_justify="left")
    table.add_column("part")
    table.add_column("GiB", justify="right")
    table.add_column("what")
    s = plan["settings"]
    seq = f"{s['prompt_tokens']} + {s['completion_tokens']} tokens"
    rows = [
        ("runtime", f"{'CUDA context' if s['device'] == 'cuda' else 'Python + libraries'}"),
        ("weights", f"{plan['parameters'] / 1e9:.2f} B parameters, "
                    f"{s['quantization'] if s['device'] == 'cuda' else 'fp32'}"),
        ("adapter", f"LoRA r={s['lora_r']}: {plan['lora_parameters'] / 1e6:.1f} M parameters "
                    "+ gradients + AdamW (fp32)"),
        ("activations", f"micro-batch {s['batch']} x ({seq}), checkpointing "
                        f"{'on' if s['checkpointing'] else 'off'}"
                        + (f" (or warm-up SFT {s['warmup_batch']} x ({seq}), the larger)"
                           if s["warmup_batch"] else "")),
        ("logits", f"{s['batch']} x {s['completion_tokens'] or s['prompt_tokens']} tokens x vocab"),
        ("kv_cache", f"generation batch {s['generation_batch']} x ({seq}) (or the dev "
                     "evaluation's, the larger); the training and generation phases do not "
                     "overlap"),
        ("prefill", f"the same batch's prompts through one MLP at once "
                    f"({PREFILL_INTERMEDIATES} x intermediate per token)"),
        ("vllm", f"vLLM {s['vllm']}" + (f" ({s['vllm_share']:g} of the card)"
                                        if s["vllm"] == "colocate" else "")),
    ]
    if parts["casts"]:
        rows.insert(2, ("casts", "embeddings, LM head and norms cast to fp32 by peft's "
                                 "prepare_model_for_kbit_training (transformers + peft path)"))
    if parts["eval_logits"]:
        rows.insert(-1, ("eval_logits", f"the dev evaluation's fp32 logits, kept by generate for "
                                        f"the expected readout: {s['eval_batch']} x "
                                        f"{s['eval_tokens']} new tokens x vocab x 4 B"))
    for name, what in rows:
        table.add_row(name, f"{parts[name]:.2f}", what)
    colour = {"fits": "green", "tight": "yellow"}.get(plan["verdict"], "red")
    table.add_row("[bold]peak[/bold]", f"[bold]{plan['peak_gib']:.2f}[/bold]",
                  f"[{colour}]{plan['verdict']}[/{colour}] in {plan['memory_gib']:g} GiB")
    log.console.print(table)
    line = (f"step: {fmt_seconds(plan['step_seconds'])} (generation "
            f"{fmt_seconds(plan['generation_seconds'])}, training "
            f"{fmt_seconds(plan['train_seconds'])}) for {plan['prompts_per_step']} prompts x "
            f"{s['num_generations']} generations; an order of magnitude")
    if "run_hours" in plan:
        line += f"; {plan['steps']} steps ~ {plan['run_hours']:g} h ({plan['gpu_hours']:g} GPU-h)"
    log.info(line)
    log.info(f"shape: {plan['shape_from']}")
    log.info(f"precision: {plan['precision_why']}")
    layout = plan.get("batch_layout")
    if layout and layout["valid"]:
        log.info(f"batch at {layout['world_size']} GPU(s): valid (generation batch "
                 f"{layout['generation_batch']} global, steps_per_generation "
                 f"{layout['steps_per_generation']})")
    elif layout:
        log.warn(f"batch at {layout['world_size']} GPU(s): TRL refuses it: {layout['problem']}; "
                 f"override: {' '.join(layout['fix'])}")
    for line in plan.get("checks", []):
        log.info(line)
    if plan["verdict"] != "fits" and plan["knobs"]:
        log.info("to lower the peak, override one of:")
        for knob in plan["knobs"][:5]:
            log.info(f"  {knob['change']}  -> ~{knob['peak_gib']:.1f} GiB")


def train_examples(recipe: Any) -> int | None:
    """Train examples the run will use, from the prepared folder's manifest when it is there."""
    path = manifest_path(recipe.data.dir)
    try:
        counts = json.loads(path.read_text(encoding="utf-8")).get("counts", {})
    except (OSError, json.JSONDecodeError):
        return None
    n = counts.get(recipe.data.train_split)
    if not isinstance(n, int):
        return None
    return min(n, recipe.data.train_limit) if recipe.data.train_limit else n


def run_steps(recipe: Any, gpus: int) -> int | None:
    """Optimizer steps of the run: max_steps, else epochs over the train examples (if known)."""
    section = recipe.grpo if recipe.kind == "grpo" else recipe.sft
    if (section.get("max_steps") or -1) > 0:
        return int(section["max_steps"])
    n = train_examples(recipe)
    if n is None:
        return None
    s = settings_from_recipe(recipe)
    per_step = prompts_per_step(s.batch, s.accumulation, gpus, s.num_generations)
    return max(math.ceil(n * float(section.get("num_train_epochs", 1.0)) / per_step), 1)


def plan_command(recipe: Any, device_name: str, memory_gib: float | None,
                 gpus: int, engine: str | None = None) -> dict[str, Any]:
    """What `recone-lite plan` prints: `plan_recipe` at the run's step count, with the command
    line's checks (a known device profile and engine)."""
    if device_name not in DEVICES:
        raise InputError(f"unknown device {device_name!r}; known: {', '.join(DEVICES)}",
                         field="--device")
    if engine not in (None, *ENGINES):
        raise InputError(f"unknown engine {engine!r}; choose {' or '.join(ENGINES)}",
                         field="--engine")
    return plan_recipe(recipe, device_name=device_name, memory_gib=memory_gib, gpus=gpus,
                       steps=run_steps(recipe, gpus), engine=engine)
