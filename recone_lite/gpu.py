"""The GPU path's rules, as small pure functions the CPU tests can check with the facts passed in.

- Precision by compute capability: bf16 only where the card has it natively (>= 8.0: Ampere,
  Ada, Hopper); Turing and older (T4, RTX 20xx, Quadro RTX) train and load in fp16.
  `torch.cuda.is_bf16_supported()` answers True on Turing (emulated, slow, and Unsloth then
  loads fp16 and refuses a bf16 trainer), so the capability decides, not that call.
- vLLM rollouts: a bounded context (`vllm_max_model_length`), and 4-bit bases only through
  Unsloth's engine (`fast_inference`), never TRL merging a LoRA into bitsandbytes layers.
- DeepSpeed ZeRO-3: no `device_map` (transformers refuses it) and no 4-bit base.

- What this process runs on: `cuda_available`, `cuda_capability`, `is_unsloth`, `zero_stage`
  (the one home of these facts; the rules above take them as arguments).

Importing this module is cheap: torch is imported only inside the functions that ask the device.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, Literal

from recone_lite import log
from recone_lite.errors import InputError

Precision = Literal["bf16", "fp16", "fp32"]
NATIVE_BF16 = (8, 0)  # Ampere: the first compute capability with bf16 tensor cores
VLLM_LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)  # vLLM's allowed --max-lora-rank values

# --- precision ----------------------------------------------------------------------------------


def cuda_available() -> bool:
    """Whether torch sees a CUDA device (False when torch is not importable)."""
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def cuda_capability() -> tuple[int, int] | None:
    """The first CUDA device's compute capability, or None without CUDA."""
    if not cuda_available():
        return None
    import torch

    return tuple(torch.cuda.get_device_capability())  # type: ignore[return-value]


def device_name() -> tuple[str, int]:
    """`(description, GPUs used)` of where this process computes (run.json's `device`)."""
    import torch

    if cuda_available():
        count = torch.cuda.device_count()
        return f"cuda: {torch.cuda.get_device_name(0)} x{count}", count
    return f"cpu ({torch.get_num_threads()} threads)", 0


def total_memory_gib() -> float:
    """The first CUDA device's memory, GiB (call only when `cuda_available()`)."""
    import torch

    return torch.cuda.get_device_properties(0).total_memory / 1024**3


def free_memory_bytes() -> int:
    """Free memory on the current CUDA device, bytes (call only when `cuda_available()`)."""
    import torch

    return int(torch.cuda.mem_get_info()[0])


def peak_memory_gib() -> float | None:
    """Peak memory torch allocated on the GPU in this process, GiB (None on CPU)."""
    if not cuda_available():
        return None
    import torch

    return round(torch.cuda.max_memory_allocated() / 1024**3, 2)


def empty_cache() -> None:
    """Give the memory torch caches on the GPU back to the device (nothing on CPU)."""
    if cuda_available():
        import torch

        torch.cuda.empty_cache()


def is_out_of_memory(err: BaseException) -> bool:
    """Whether an error is the GPU running out of memory (torch's OutOfMemoryError, or a
    RuntimeError that says so, as some kernels raise).

    >>> is_out_of_memory(RuntimeError("CUDA error: out of memory")), is_out_of_memory(
    ...     RuntimeError("shape mismatch"))
    (True, False)
    """
    import torch

    return isinstance(err, torch.cuda.OutOfMemoryError) or (
        isinstance(err, RuntimeError) and "out of memory" in str(err).lower())


def is_unsloth(model: Any) -> bool:
    """Whether Unsloth loaded this model (it records its version in the config)."""
    config = getattr(getattr(model, "get_base_model", lambda: model)(), "config", None)
    return bool(getattr(config, "unsloth_version", None)) or "unsloth" in type(model).__module__


def precision_for(capability: tuple[int, int] | None) -> Precision:
    """The 16-bit format a card computes in natively; fp32 without a GPU (None).

    >>> precision_for((9, 0)), precision_for((8, 0)), precision_for((7, 5)), precision_for(None)
    ('bf16', 'bf16', 'fp16', 'fp32')
    """
    if capability is None:
        return "fp32"
    return "bf16" if tuple(capability) >= NATIVE_BF16 else "fp16"


def describe_precision(capability: tuple[int, int] | None) -> str:
    """One phrase for logs and plans.

    >>> describe_precision((7, 5))
    'fp16 (compute capability 7.5 has no native bf16)'
    >>> describe_precision((8, 9)), describe_precision(None)
    ('bf16 (compute capability 8.9)', 'fp32 (CPU)')
    """
    precision = precision_for(capability)
    if capability is None:
        return "fp32 (CPU)"
    where = f"compute capability {capability[0]}.{capability[1]}"
    return f"{precision} ({where} has no native bf16)" if precision == "fp16" else \
        f"{precision} ({where})"


def load_dtype(asked: str, capability: tuple[int, int] | None) -> str:
    """The torch dtype name a model loads in: `model.dtype` (`auto`, `float32`, `bfloat16`,
    `float16`) on a card of `capability` (None: CPU, always float32). bfloat16 asked on a card
    without native bf16 loads float16.

    >>> load_dtype("auto", (8, 6)), load_dtype("auto", (7, 5)), load_dtype("bfloat16", (7, 5))
    ('bfloat16', 'float16', 'float16')
    >>> load_dtype("bfloat16", None), load_dtype("float32", (7, 5)), load_dtype("float16", (9, 0))
    ('float32', 'float32', 'float16')
    """
    precision = precision_for(capability)
    if precision == "fp32":
        return "float32"
    if asked == "auto" or (asked == "bfloat16" and precision == "fp16"):
        return {"bf16": "bfloat16", "fp16": "float16"}[precision]
    return asked


def precision_settings(values: Mapping[str, Any], capability: tuple[int, int] | None) -> dict:
    """TRL's `bf16` / `fp16` flags on a card of `capability`: a recipe's `bf16: true` (or TRL's
    own bf16 default) becomes fp16 where bf16 is not native; a recipe that turns both off
    (fp32 training) is left alone. CPU: see training.device_settings.

    >>> precision_settings({"bf16": True}, (7, 5))
    {'bf16': False, 'fp16': True}
    >>> precision_settings({"bf16": True}, (8, 0)), precision_settings({}, (9, 0))
    ({}, {})
    >>> precision_settings({"bf16": False, "fp16": False}, (7, 5))
    {}
    """
    if precision_for(capability) != "fp16":
        return {}
    if values.get("bf16") is False and not values.get("fp16"):
        return {}
    return {"bf16": False, "fp16": True}


_said: set[str] = set()


def log_once(message: str) -> None:
    """`log.info` a message the first time only (precision is decided at load and at config)."""
    if message not in _said:
        _said.add(message)
        log.info(message)


def world_size_from_env(env: Mapping[str, str] | None = None) -> int:
    """The process count a launcher (torchrun, `accelerate launch`) set, else 1.

    >>> world_size_from_env({"WORLD_SIZE": "3"}), world_size_from_env({})
    (3, 1)
    """
    env = os.environ if env is None else env
    try:
        return max(int(env.get("WORLD_SIZE", "1")), 1)
    except ValueError:
        return 1


# --- vLLM ---------------------------------------------------------------------------------------


def vllm_settings(values: Mapping[str, Any], max_seq_length: int) -> dict[str, Any]:
    """`vllm_max_model_length` from the model's `max_seq_length` when a recipe uses vLLM and sets
    none: otherwise vLLM sizes its KV cache for the model's whole context (Qwen2.5-7B-Instruct-1M:
    1,010,000 positions, ~58 GB for one sequence).

    >>> vllm_settings({"use_vllm": True}, 2304), vllm_settings({}, 2304)
    ({'vllm_max_model_length': 2304}, {})
    >>> vllm_settings({"use_vllm": True, "vllm_max_model_length": 4096}, 2304)
    {}
    """
    if not values.get("use_vllm") or values.get("vllm_max_model_length"):
        return {}
    return {"vllm_max_model_length": max_seq_length}


# TRL 1.14.2 accepts these vLLM versions (trl/import_utils.py `is_vllm_available` warns outside
# them); vLLM 0.28 moved bitsandbytes out of tree into `vllm-bnb-plugin` (unsloth_zoo
# vllm_utils.py imports `vllm.model_executor.layers.quantization.bitsandbytes` for <= 0.27.1 and
# `vllm_bnb_plugin.bitsandbytes` for >= 0.28). pyproject's `vllm` extra pins >=0.20.0,<0.28.
TRL_VLLM_RANGE = ("0.20.0", "0.30.0")
VLLM_BNB_PLUGIN_FROM = "0.28.0"


def vllm_install_problem(vllm: str, plugin: str, quantization: str) -> str | None:
    """What is wrong with the installed vLLM for TRL 1.14.2 and a `quantization` base, naming
    the missing piece; None when nothing is. `vllm` / `plugin`: installed versions of vllm and
    vllm-bnb-plugin, or "not installed".

    >>> vllm_install_problem("0.27.1", "not installed", "4bit") is None
    True
    >>> vllm_install_problem("not installed", "not installed", "none")
    "vllm is not installed: pip install 'recone-lite[vllm]' (vLLM 0.20.0-0.27.x)"
    >>> vllm_install_problem("0.33.0", "not installed", "none")[:60]
    "vllm 0.33.0 is outside TRL 1.14.2's supported 0.20.0-0.30.0:"
    >>> vllm_install_problem("0.29.0", "not installed", "4bit")[:72]
    'vllm 0.29.0 keeps bitsandbytes (4-bit bases) in the separate vllm-bnb-pl'
    >>> vllm_install_problem("0.29.0", "0.0.3", "4bit") is None
    True
    """
    from packaging.version import InvalidVersion, Version

    fix = "pip install 'recone-lite[vllm]' (vLLM 0.20.0-0.27.x)"
    if vllm == "not installed":
        return f"vllm is not installed: {fix}"
    try:
        version = Version(vllm)
    except InvalidVersion:
        return None
    low, high = TRL_VLLM_RANGE
    if not Version(low) <= Version(version.base_version) <= Version(high):
        return f"vllm {vllm} is outside TRL 1.14.2's supported {low}-{high}: {fix}"
    if quantization == "4bit" and version >= Version(VLLM_BNB_PLUGIN_FROM) \
            and plugin == "not installed":
        return (f"vllm {vllm} keeps bitsandbytes (4-bit bases) in the separate vllm-bnb-plugin "
                f"package, which is not installed: pip install vllm-bnb-plugin, or {fix}")
    return None


def check_vllm_quantization(values: Mapping[str, Any], quantization: str, unsloth: bool,
                            unsloth_installed: bool | None = None) -> None:
    """Refuse vLLM rollouts from a quantized base that cannot work. 4-bit without Unsloth: TRL
    would merge the LoRA into bitsandbytes layers at every weight sync (shape assertions or
    re-quantization drift; TRL #3654, #4973, #3466); Unsloth serves them from the same 4-bit
    weights (`fast_inference`). 8-bit never: vLLM quantizes bitsandbytes weights in flight to
    4-bit only, and Unsloth's fast_inference takes `load_in_8bit` as FP8 (unsloth_zoo
    vllm_utils.py, `load_in_8bit = is_fp8`). `unsloth`: the model is (or will be) Unsloth's;
    `unsloth_installed` (default: whether it imports from here) picks the message.

    >>> check_vllm_quantization({"use_vllm": True}, "4bit", unsloth=True)
    >>> check_vllm_quantization({"use_vllm": True}, "4bit", unsloth=False, unsloth_installed=False)
    Traceback (most recent call last):
    ...
    recone_lite.errors.InputError: grpo.use_vllm: vLLM rollouts from a 4bit base need Unsloth \
(pip install 'recone-lite[gpu]'); or set model.quantization=none, or grpo.use_vllm=false
    >>> check_vllm_quantization({"use_vllm": True}, "4bit", unsloth=False, unsloth_installed=True)
    Traceback (most recent call last):
    ...
    recone_lite.errors.InputError: grpo.use_vllm: vLLM rollouts from a 4bit base need the model \
loaded by Unsloth, which is installed but did not load it (its warning above says why); or set \
model.quantization=none, or grpo.use_vllm=false
    >>> check_vllm_quantization({"use_vllm": True}, "8bit", unsloth=True)
    Traceback (most recent call last):
    ...
    recone_lite.errors.InputError: model.quantization: vLLM rollouts cannot share an 8-bit base: \
vLLM quantizes bitsandbytes weights in flight to 4-bit only, and Unsloth's fast_inference reads \
8-bit as FP8; set model.quantization=4bit or none, or grpo.use_vllm=false
    """
    if not values.get("use_vllm") or quantization == "none":
        return
    if quantization == "8bit":
        raise InputError(
            "vLLM rollouts cannot share an 8-bit base: vLLM quantizes bitsandbytes weights in "
            "flight to 4-bit only, and Unsloth's fast_inference reads 8-bit as FP8; set "
            "model.quantization=4bit or none, or grpo.use_vllm=false", field="model.quantization")
    if unsloth:
        return
    if unsloth_installed is None:
        import importlib.util

        unsloth_installed = importlib.util.find_spec("unsloth") is not None
    need = ("the model loaded by Unsloth, which is installed but did not load it (its warning "
            "above says why)") if unsloth_installed else "Unsloth (pip install 'recone-lite[gpu]')"
    raise InputError(f"vLLM rollouts from a {quantization} base need {need}; or set "
                     "model.quantization=none, or grpo.use_vllm=false", field="grpo.use_vllm")


def check_vllm_mode(values: Mapping[str, Any], unsloth: bool) -> None:
    """Refuse `vllm_mode: server` when Unsloth trains: Unsloth's GRPO patch sets
    `vllm_mode='colocate'` and generates with its own engine in the training process
    (unsloth/models/rl.py), so the server would never be asked and `plan`, which counts no vLLM
    memory on the training GPU in server mode, would be wrong.

    >>> check_vllm_mode({"use_vllm": True, "vllm_mode": "server"}, unsloth=False)
    >>> check_vllm_mode({"use_vllm": True, "vllm_mode": "colocate"}, unsloth=True)
    >>> check_vllm_mode({"use_vllm": True, "vllm_mode": "server"}, unsloth=True)
    Traceback (most recent call last):
    ...
    recone_lite.errors.InputError: grpo.vllm_mode: Unsloth runs vLLM colocated in the training \
process (it sets vllm_mode='colocate' and ignores a server); set grpo.vllm_mode=colocate and size \
it with grpo.vllm_gpu_memory_utilization
    """
    if values.get("use_vllm") and values.get("vllm_mode") == "server" and unsloth:
        raise InputError(
            "Unsloth runs vLLM colocated in the training process (it sets "
            "vllm_mode='colocate' and ignores a server); set grpo.vllm_mode=colocate and size "
            "it with grpo.vllm_gpu_memory_utilization", field="grpo.vllm_mode")


def unsloth_kwargs(*, name: str, max_seq_length: int, dtype: Any, quantization: str,
                   trust_remote_code: bool = False, vllm_lora_rank: int | None = None,
                   vllm_memory: float | None = None) -> dict:
    """Keyword arguments of Unsloth's `FastLanguageModel.from_pretrained`. With vLLM rollouts
    (`vllm_lora_rank`: the adapter's rank), Unsloth starts its own vLLM engine on the same
    weights (`fast_inference`) sized for that LoRA rank, and TRL's trainer reuses it.
    `vllm_memory` is the recipe's `grpo.vllm_gpu_memory_utilization` (what `plan` counts):
    Unsloth sizes its engine with `gpu_memory_utilization`, its own default 0.5 when not passed.

    >>> kw = unsloth_kwargs(name="m", max_seq_length=2304, dtype=None, quantization="4bit",
    ...                     vllm_lora_rank=16, vllm_memory=0.3)
    >>> kw["load_in_4bit"], kw["fast_inference"], kw["max_lora_rank"], kw["gpu_memory_utilization"]
    (True, True, 16, 0.3)
    >>> "fast_inference" in unsloth_kwargs(name="m", max_seq_length=8, dtype=None,
    ...                                    quantization="none")
    False
    """
    kwargs: dict[str, Any] = {
        "model_name": name,
        "max_seq_length": max_seq_length,
        "dtype": dtype,
        "load_in_4bit": quantization == "4bit",
        "load_in_8bit": quantization == "8bit",
        "trust_remote_code": trust_remote_code,
    }
    if vllm_lora_rank is not None:
        kwargs.update(fast_inference=True, max_lora_rank=vllm_lora_rank)
        if vllm_memory is not None:
            kwargs["gpu_memory_utilization"] = vllm_memory
    return kwargs


# --- DeepSpeed ----------------------------------------------------------------------------------


def zero_stage_from_env(env: Mapping[str, str] | None = None) -> int | None:
    """The DeepSpeed ZeRO stage `accelerate launch` announced to this process, or None.

    >>> zero_stage_from_env({"ACCELERATE_USE_DEEPSPEED": "true",
    ...                      "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3"})
    3
    >>> zero_stage_from_env({"ACCELERATE_DEEPSPEED_ZERO_STAGE": "3"}) is None
    True
    """
    env = os.environ if env is None else env
    if env.get("ACCELERATE_USE_DEEPSPEED", "").lower() != "true":
        return None
    try:
        return int(env.get("ACCELERATE_DEEPSPEED_ZERO_STAGE", ""))
    except ValueError:
        return None


def zero_stage() -> int | None:
    """The DeepSpeed ZeRO stage of this process: announced by `accelerate launch`, or 3 when
    transformers' own DeepSpeed config (built by TrainingArguments) says so."""
    stage = zero_stage_from_env()
    if stage is None:
        try:
            from transformers.integrations import is_deepspeed_zero3_enabled

            stage = 3 if is_deepspeed_zero3_enabled() else None
        except ImportError:  # an older transformers layout
            stage = None
    return stage


def adapter_autocast(stage: int | None, quantized: bool) -> bool:
    """peft's `autocast_adapter_dtype` for a new or continued LoRA adapter: False under ZeRO-3
    with an unquantized base, so the LoRA weights take the base's dtype (bf16). peft's default
    (True) makes them fp32, and ZeRO-3 allocates its all-gather buffers in the dtype of the first
    persistent parameter, so a bf16 base with fp32 LoRA raises a TypeError on the first optimizer
    step (TRL #6089, DeepSpeed #8072). TRL passes False itself only when TRL builds the PEFT
    model (trl/trainer/grpo_trainer.py); recone-lite builds it, so it does the same. A quantized
    base keeps fp32 LoRA (QLoRA's reason for the upcast; ZeRO-3 refuses 4-bit bases anyway).

    >>> [adapter_autocast(stage, quantized=False) for stage in (3, 2, None)]
    [False, True, True]
    >>> adapter_autocast(3, quantized=True)
    True
    """
    return not (stage == 3 and not quantized)


def is_quantized(model: Any) -> bool:
    """Whether a loaded model's weights are bitsandbytes 4- or 8-bit."""
    return bool(getattr(model, "is_loaded_in_4bit", False)
                or getattr(model, "is_loaded_in_8bit", False))


def check_zero_quantization(stage: int | None, quantization: str, where: str = "") -> None:
    """Refuse a quantized (bitsandbytes) base under ZeRO-3, which shards the weights that
    bitsandbytes packs.

    >>> check_zero_quantization(2, "4bit"), check_zero_quantization(3, "none")
    (None, None)
    >>> check_zero_quantization(3, "4bit", "zero3.yaml")
    Traceback (most recent call last):
    ...
    recone_lite.errors.InputError: model.quantization: DeepSpeed ZeRO-3 (zero3.yaml) cannot \
shard a 4bit base: set model.quantization=none, or use ddp / zero2
    """
    if stage == 3 and quantization != "none":
        what = f" ({where})" if where else ""
        raise InputError(f"DeepSpeed ZeRO-3{what} cannot shard a {quantization} base: set "
                         "model.quantization=none, or use ddp / zero2",
                         field="model.quantization")


def device_map(on_cuda: bool, zero_stage: int | None, local_rank: int = 0) -> dict | None:
    """transformers' `device_map` for a model load: this process's GPU, none on CPU, and none
    under ZeRO-3 (DeepSpeed places the shards; transformers refuses a device_map there).

    >>> device_map(True, None, 1), device_map(True, 3, 1), device_map(False, None)
    ({'': 1}, None, None)
    """
    if not on_cuda or zero_stage == 3:
        return None
    return {"": local_rank}
