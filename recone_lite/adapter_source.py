"""What `export` exports and `export --verify-only` checks: an adapter and everything recorded
beside it (`Source`: its base model, recipe, run, template, rating scale, prepared data), the
checks that it fits its base, and loading base + adapter. Used by export.py and verify.py.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from recone_lite import log
from recone_lite.errors import InputError, first_line, remote_code_hint, validation_problem
from recone_lite.gpu import cuda_available, free_memory_bytes
from recone_lite.models import ModelSpec, adapter_mismatch, load_model
from recone_lite.prepared import is_prepared, parse_scale, read_scale
from recone_lite.prompts import TEMPLATES
from recone_lite.run_folder import RunFolder

BYTES_PER_PARAM = {"bfloat16": 2, "float16": 2, "float32": 4}


ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")


@dataclasses.dataclass
class Source:
    """An adapter and everything recorded beside it (a `train` / `sft` run directory)."""

    adapter: Path
    base: ModelSpec
    config: dict[str, Any]  # adapter_config.json
    recipe: dict[str, Any]  # recipe.yaml beside the adapter ({} when absent)
    run: dict[str, Any]  # run.json beside the adapter ({} when absent)
    template: str | None
    scale: tuple[float, float] | None
    data: Path | None  # a prepared folder for verification prompts

    @property
    def recorded_base(self) -> str | None:
        return self.config.get("base_model_name_or_path")

    @property
    def base_name(self) -> str:
        """The base as one string that `ModelSpec(name=...)` loads again (a GGUF: its path)."""
        folder, gguf = self.base.source()
        return str(Path(folder) / gguf) if gguf else self.base.name

    @property
    def base_path(self) -> str:
        """`base_name` as an adapter records it: a local folder or file as an absolute path (a
        server started elsewhere finds it), a hub id as it is."""
        local = Path(self.base_name).expanduser()
        return str(local.resolve()) if local.exists() else self.base_name


def resolve_source(
    adapter: str | Path,
    base: str | None = None,
    *,
    template: str | None = None,
    scale: str | tuple[float, float] | None = None,
    data: str | Path | None = None,
    trust_remote_code: bool = False,
) -> Source:
    """Read an adapter folder and find its base: `base`, else the run's recipe.yaml `model`,
    else adapter_config.json's `base_model_name_or_path`. InputError for what is missing.
    The base runs its repository's own code only when `trust_remote_code` (the command line's
    --trust-remote-code) says so: a recipe.yaml asking for it without that is refused."""
    from pydantic import ValidationError

    folder = RunFolder(adapter)
    config = folder.adapter_config
    if not any((folder.path / name).is_file() for name in ADAPTER_WEIGHTS):
        raise InputError("no adapter_model.safetensors (or .bin) in the adapter folder",
                         path=folder.path)
    if config.get("peft_type", "LORA") != "LORA":
        raise InputError(f"a {config.get('peft_type')} adapter: only LoRA adapters are exported",
                         path=folder.path / "adapter_config.json")
    section, data_section = folder.section("model"), folder.section("data")
    name = base or folder.base
    if not name:
        raise InputError("the adapter records no base model; pass --base MODEL", field="base")
    if section.get("trust_remote_code") and not base and not trust_remote_code:
        raise InputError("asks for model.trust_remote_code: true, which runs the model "
                         "repository's own Python code; pass --trust-remote-code to allow it",
                         path=folder.recipe_path)
    keep = ("max_seq_length",) if base else ("gguf_file", "max_seq_length")
    try:
        spec = ModelSpec(name=str(name), trust_remote_code=trust_remote_code,
                         **{k: section[k] for k in keep if k in section})
    except ValidationError as err:
        raise InputError(validation_problem(err)[1], field="base") from None
    template = template or data_section.get("template")
    if template is not None and template not in TEMPLATES:
        raise InputError(f"unknown template {template!r}; choose {', '.join(TEMPLATES)}",
                         field="template")
    if data is None:
        data = folder.data_dir
    if isinstance(scale, str):
        scale = parse_scale(scale)
    elif scale is None and data is not None and is_prepared(data):
        scale = read_scale(data)
    source = Source(folder.path, spec, config, folder.recipe, folder.run, template,
                    tuple(scale) if scale else None, Path(data) if data is not None else None)
    recorded = source.recorded_base
    if recorded and not _same_name(recorded, source):  # a local copy of the same model is fine
        log.warn(f"the adapter records base {recorded}; using {source.base_name} (its shapes "
                 "are checked before merging)")
    return source


def skeleton(spec: ModelSpec, read_gguf: bool = False) -> Any | None:
    """The base's modules on the meta device, from its config alone (cheap: no weights), for
    the checks before loading. None for a GGUF base, whose config costs a full read of the file
    (unless `read_gguf`: `--adapter-only` loads no base, so this is its only check), and for an
    architecture that cannot be built here (the checks then run after loading)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    folder, gguf = spec.source()
    if gguf is not None and not read_gguf:
        return None
    options = {"gguf_file": gguf} if gguf is not None else {}
    try:
        config = AutoConfig.from_pretrained(folder, trust_remote_code=spec.trust_remote_code,
                                            **options)
    except (OSError, ValueError) as err:
        raise InputError(f"cannot read the config of {spec.name}: {first_line(err)}"
                         f"{remote_code_hint(err)}", field="base") from None
    refuse_quantized_base(config, spec.name)
    try:
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(config,
                                                    trust_remote_code=spec.trust_remote_code)
    except Exception:  # an architecture that needs its own code: checked after loading instead
        return None


def refuse_quantized_base(config: Any, name: str) -> None:
    """A pre-quantized checkpoint (bitsandbytes, GPTQ, AWQ...) is not a base to merge into.

    >>> from types import SimpleNamespace as NS
    >>> refuse_quantized_base(NS(quantization_config={"quant_method": "bitsandbytes"}),
    ...                       "unsloth/Qwen2.5-7B-Instruct-bnb-4bit")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    recone_lite.errors.InputError: base: ... (perhaps unsloth/Qwen2.5-7B-Instruct)
    >>> refuse_quantized_base(NS(), "Qwen/Qwen2.5-7B-Instruct")  # no quantization_config: fine
    """
    quant = getattr(config, "quantization_config", None)
    if not quant:
        return
    method = quant.get("quant_method") if isinstance(quant, dict) else getattr(
        quant, "quant_method", "quantized")
    guess = name
    for suffix in ("-unsloth-bnb-4bit", "-bnb-4bit", "-4bit", "-GPTQ", "-AWQ", "-gptq", "-awq"):
        guess = guess.removesuffix(suffix)
    hint = f" (perhaps {guess})" if guess != name else ""
    raise InputError(
        f"{name} is a {getattr(method, 'value', method)}-quantized checkpoint; merging into "
        f"quantized weights loses the adapter's precision: pass --base with its 16-bit "
        f"original{hint}", field="base")


def check_fit(source: Source, model: Any) -> None:
    """InputError when the adapter's modules or shapes do not fit the base."""
    problem = adapter_mismatch(source.adapter, model)
    if problem is not None:
        raise InputError(
            f"{source.adapter} was trained on {source.recorded_base or 'another model'} and does "
            f"not fit {source.base_name}: {problem}", field="base")


def _same_name(recorded: str, source: Source) -> bool:
    def norm(name: str) -> str:
        path = Path(name).expanduser()
        return str(path.resolve()) if path.exists() else name.rstrip("/")

    folder, gguf = source.base.source()
    names = {source.base.name, folder, source.base_name}
    section = source.recipe.get("model") if isinstance(source.recipe.get("model"), dict) else {}
    if section.get("name"):
        names.add(str(section["name"]))
    return norm(recorded) in {norm(n) for n in names}


def param_count(model: Any) -> int:
    return sum(p.numel() for p in model.parameters())  # shared (tied) weights counted once


def work_dtype(dtype: str, spec: ModelSpec, params: int | None = None) -> str:
    """The dtype to merge and compare in: fp32 on the CPU (as models.load_model loads) and on a
    GPU with room for the model in fp32, so each weight is rounded once, when saved, and the
    comparison sees only that rounding; else the saved dtype (a 7B in fp32 needs ~28 GB)."""
    if dtype == "float32" or not cuda_available():
        return "float32"
    params = params if params is not None else params_estimate(spec)
    free = free_memory_bytes()
    return "float32" if params is not None and params * 4 * 1.3 < free else dtype


def params_estimate(spec: ModelSpec) -> int | None:
    """Parameters of the base from its config (a GGUF: from its file size, generously)."""
    folder, gguf = spec.source()
    if gguf is not None:
        return int((Path(folder).expanduser() / gguf).stat().st_size * 2.5)
    meta = skeleton(spec)
    return param_count(meta) if meta is not None else None


def load_base(spec: ModelSpec, dtype: str) -> tuple[Any, Any]:
    """The base in `dtype` on CUDA (fp32 on CPU, as models.load_model does), never quantized.
    Unsloth (CUDA, when installed) only loads it in 16 bits: its merged save is 16-bit."""
    return load_model(spec.model_copy(update={"adapter": None, "quantization": "none",
                                              "dtype": dtype}),
                      engine="transformers" if dtype == "float32" else "auto")


def attach_adapter(model: Any, source: Source) -> Any:
    from peft import PeftModel

    check_fit(source, model)
    try:
        return PeftModel.from_pretrained(model, str(source.adapter), is_trainable=False)
    except (RuntimeError, ValueError, KeyError) as err:
        raise InputError(f"{source.adapter} does not fit {source.base_name}: {first_line(err)}",
                         field="base") from None
