"""`recone-lite export`: a trained LoRA adapter -> files that a server loads unchanged.

- `--merged OUT`: the adapter merged into its base (peft `merge_and_unload`; Unsloth's merged
  save on CUDA when Unsloth loaded the base), cast to bf16 / fp16 / fp32 and saved as
  safetensors shards + config + generation config + tokenizer with its chat template, and a
  `recone.json` (base model, adapter, recipe, prompt template, rating scale, verification) from
  which `recone-lite predict --model OUT` takes its defaults. An adapter trained on a 4-bit
  (QLoRA) base is merged into a 16-bit reload of that base, never into 4-bit weights.
- `--adapter-only OUT`: a clean peft adapter folder (adapter_config.json with the base model
  recorded, adapter_model.safetensors, recone.json) for vLLM `--lora-modules NAME=OUT`.
- `--gguf OUT.gguf`: the merged model converted by llama.cpp's `convert_hf_to_gguf.py` (and
  `llama-quantize` for k-quants) when llama.cpp is on this machine. Nothing is downloaded.

Verification (on by default): base + adapter, unmerged, and the merged model as saved on disk
run on a few rendered prompts. Their logits must agree within a tolerance for the saved dtype,
the saved tokenizer must render the same prompt tokens, and in fp32 the greedy completions
must be identical. `verify_merged` does the same for an existing merged folder.

Each output is written under a temporary name beside it and renamed into place at the end: an
interrupted or failed export (a failed verification included) leaves nothing under the final
name. Importing this module is cheap: torch, transformers and peft load inside the functions.
"""

from __future__ import annotations

import collections
import dataclasses
import gc
import itertools
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from recone_lite import log
from recone_lite.errors import InputError, ReconeError
from recone_lite.jsonl import atomic_path, read_jsonl
from recone_lite.models import ModelSpec, adapter_config, adapter_mismatch, load_model

DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
BYTES_PER_PARAM = {"bfloat16": 2, "float16": 2, "float32": 4}
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
GGUF_OUTTYPES = ("f32", "f16", "bf16", "q8_0")  # convert_hf_to_gguf.py writes these itself
GGUF_QUANTS = (*GGUF_OUTTYPES, "q6_k", "q5_k_m", "q4_k_m", "q4_0")  # the rest: llama-quantize
GGUF_BYTES_PER_PARAM = {"f32": 4, "f16": 2, "bf16": 2, "q8_0": 1.07, "q6_k": 0.82,
                        "q5_k_m": 0.71, "q4_k_m": 0.61, "q4_0": 0.57}
VLLM_LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)  # vLLM's allowed --max-lora-rank values
RECONE_JSON = "recone.json"
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
MAX_SHARD_SIZE = "5GB"
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


# --- what is exported: adapter, base model, template, scale -------------------------------------


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
) -> Source:
    """Read an adapter folder and find its base: `base`, else the run's recipe.yaml `model`,
    else adapter_config.json's `base_model_name_or_path`. InputError for what is missing."""
    from pydantic import ValidationError

    from recone_lite.predict import parse_scale
    from recone_lite.prepared import read_scale
    from recone_lite.prompts import TEMPLATES
    from recone_lite.runs import RECIPE_YAML, read_run_json

    folder = Path(adapter).expanduser()
    config = adapter_config(folder)
    if not any((folder / name).is_file() for name in ADAPTER_WEIGHTS):
        raise InputError("no adapter_model.safetensors (or .bin) in the adapter folder",
                         path=folder)
    if config.get("peft_type", "LORA") != "LORA":
        raise InputError(f"a {config.get('peft_type')} adapter: only LoRA adapters are exported",
                         path=folder / "adapter_config.json")
    recipe = _read_yaml(folder / RECIPE_YAML)
    section = recipe.get("model") if isinstance(recipe.get("model"), dict) else {}
    data_section = recipe.get("data") if isinstance(recipe.get("data"), dict) else {}
    name = base or section.get("name") or config.get("base_model_name_or_path")
    if not name:
        raise InputError("the adapter records no base model; pass --base MODEL", field="base")
    keep = ("trust_remote_code", "max_seq_length") if base else ("gguf_file", "trust_remote_code",
                                                                  "max_seq_length")
    try:
        spec = ModelSpec(name=str(name), **{k: section[k] for k in keep if k in section})
    except ValidationError as err:
        raise InputError(err.errors()[0]["msg"], field="base") from None
    template = template or data_section.get("template")
    if template is not None and template not in TEMPLATES:
        raise InputError(f"unknown template {template!r}; choose {', '.join(TEMPLATES)}",
                         field="template")
    if data is None and data_section.get("dir") and Path(data_section["dir"]).is_dir():
        data = data_section["dir"]
    if isinstance(scale, str):
        scale = parse_scale(scale)
    elif scale is None and data is not None and (Path(data) / "manifest.json").is_file():
        scale = read_scale(data)
    source = Source(folder, spec, config, recipe, read_run_json(folder), template,
                    tuple(scale) if scale else None, Path(data) if data is not None else None)
    recorded = source.recorded_base
    if recorded and not _same_name(recorded, source):  # a local copy of the same model is fine
        log.warn(f"the adapter records base {recorded}; using {source.base_name} (its shapes "
                 "are checked before merging)")
    return source


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise InputError(f"malformed YAML ({err})", path=path) from None
    return loaded if isinstance(loaded, dict) else {}


def read_recone_json(folder: str | Path) -> dict[str, Any]:
    """A merged (or adapter-only) folder's recone.json, or {} when there is none: what
    `predict --model FOLDER` takes its template and rating scale from."""
    path = Path(folder).expanduser() / RECONE_JSON
    if not path.is_file():
        return {}
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise InputError(f"malformed JSON ({err.msg})", path=path) from None
    return record if isinstance(record, dict) else {}


# --- checks before anything is written ----------------------------------------------------------


def check_output(path: Path, *, overwrite: bool, is_file: bool, keep: list[Path]) -> None:
    """Refuse an existing output without --overwrite, one of the wrong kind, and one whose
    replacement would delete the adapter or the base (`keep`)."""
    resolved = path.expanduser().resolve()
    for precious in keep:
        if resolved == precious or resolved in precious.parents:
            raise InputError(f"would replace {precious}, which the export reads", path=path)
    if not path.exists():
        return
    if not overwrite:
        raise InputError("exists; pass --overwrite to replace it or choose another name",
                         path=path)
    if path.is_dir() == is_file:
        raise InputError(f"exists and is not a {'file' if is_file else 'folder'}", path=path)


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
        raise InputError(f"cannot read the config of {spec.name}: {_first_line(err)}",
                         field="base") from None
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


def check_disk(where: Path, need: int, what: str) -> None:
    """ReconeError when the file system holding `where` has less than `need` bytes (+5%) free."""
    probe = where.expanduser().resolve()
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if free < need * 1.05 + 64 * 2**20:
        raise ReconeError(f"not enough disk space for {what}: it needs about {human(need)}, "
                          f"{probe} has {human(free)} free")


def human(size: float) -> str:
    """
    >>> human(540_000_000), human(2048), human(15.2e9)
    ('540.0 MB', '2.0 kB', '15.2 GB')
    """
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} GB"


def folder_size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


# --- llama.cpp ----------------------------------------------------------------------------------


@dataclasses.dataclass
class LlamaCpp:
    convert: Path  # convert_hf_to_gguf.py
    quantize: Path | None  # llama-quantize, for the quants the converter does not write itself


LLAMA_CPP_HOWTO = (
    "export never downloads it. Get it once: `git clone https://github.com/ggml-org/llama.cpp` "
    "and `pip install -r llama.cpp/requirements/requirements-convert_hf_to_gguf.txt`, then pass "
    "--llama-cpp llama.cpp (k-quants such as q4_k_m also need `cmake -B build && cmake --build "
    "build --target llama-quantize` in it); or export --merged DIR now and convert it later")


def find_llama_cpp(folder: Path | None, quant: str) -> LlamaCpp:
    """llama.cpp's converter (and llama-quantize when `quant` needs it) in `folder` or on PATH."""
    if quant not in GGUF_QUANTS:
        raise InputError(f"unknown GGUF type {quant!r}; choose {', '.join(GGUF_QUANTS)}",
                         field="quant")
    quantize_names = ("llama-quantize", "build/bin/llama-quantize", "bin/llama-quantize")
    if folder is not None:
        folder = folder.expanduser()
        convert = folder / "convert_hf_to_gguf.py"
        if not convert.is_file():
            raise InputError("no convert_hf_to_gguf.py here: pass the root folder of a llama.cpp "
                             "checkout", path=folder)
        found = [folder / name for name in quantize_names if (folder / name).is_file()]
        quantize = found[0] if found else None
    else:
        on_path = shutil.which("convert_hf_to_gguf.py")
        if on_path is None:
            raise ReconeError("--gguf needs llama.cpp's convert_hf_to_gguf.py: none was found "
                              f"(no --llama-cpp DIR given, none on PATH); {LLAMA_CPP_HOWTO}")
        convert = Path(on_path)
        quantize = None
    if quantize is None and shutil.which("llama-quantize"):
        quantize = Path(shutil.which("llama-quantize"))
    if quant not in GGUF_OUTTYPES and quantize is None:
        raise ReconeError(f"--quant {quant} needs llama.cpp's llama-quantize (in --llama-cpp "
                          "DIR/build/bin or on PATH); build it with `cmake -B build && cmake "
                          f"--build build --target llama-quantize`, or choose --quant "
                          f"{'/'.join(GGUF_OUTTYPES)}")
    return LlamaCpp(convert, quantize)


def convert_to_gguf(merged: Path, out: Path, quant: str, tools: LlamaCpp) -> None:
    """Merged folder -> GGUF file at `out` (written under a temporary name, then renamed)."""
    with atomic_path(out) as tmp:
        direct = quant in GGUF_OUTTYPES
        first = tmp if direct else tmp.with_name(tmp.name + ".f16")
        _run_tool([sys.executable, str(tools.convert), str(merged), "--outfile", str(first),
                   "--outtype", quant if direct else "f16"], "convert_hf_to_gguf.py")
        if not direct:
            _run_tool([str(tools.quantize), str(first), str(tmp), quant.upper()],
                      "llama-quantize")
        if not tmp.is_file():
            raise ReconeError(f"llama.cpp wrote no {tmp.name}")


def _run_tool(command: list[str], name: str) -> None:
    log.info(f"export: running {name} (minutes for a 7B model)")
    tail: collections.deque[str] = collections.deque(maxlen=15)
    try:
        with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, errors="replace") as process, \
                log.progress(f"export: {name}") as step:  # its newest output line as the note
            for line in process.stdout or []:
                tail.append(line.rstrip())
                step(0, note=line.strip()[:60])
    except OSError as err:  # not executable, a missing interpreter
        raise ReconeError(f"cannot run {name}: {err}") from None
    if process.returncode != 0:
        for line in tail:
            log.console.print(f"  {line}", highlight=False, markup=False)
        last = next((line for line in reversed(tail) if line.strip()), "no output")
        raise ReconeError(f"{name} failed (exit {process.returncode}): {last}")


# --- loading, probing, comparing ------------------------------------------------------------------


def work_dtype(dtype: str, spec: ModelSpec, params: int | None = None) -> str:
    """The dtype to merge and compare in: fp32 on the CPU (as models.load_model loads) and on a
    GPU with room for the model in fp32, so each weight is rounded once, when saved, and the
    comparison sees only that rounding; else the saved dtype (a 7B in fp32 needs ~28 GB)."""
    import torch

    if dtype == "float32" or not torch.cuda.is_available():
        return "float32"
    params = params if params is not None else params_estimate(spec)
    free = torch.cuda.mem_get_info()[0]
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
        raise InputError(f"{source.adapter} does not fit {source.base_name}: {_first_line(err)}",
                         field="base") from None


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
    #              completion token but the last (row i + keep - 1 chose completion token i)


def _render_ids(example: dict[str, Any], tokenizer: Any, source: Source) -> list[int]:
    from recone_lite.prompts import render_prompt

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


def _free() -> None:
    """Give memory back after the caller dropped its last reference to a model."""
    gc.collect()
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


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
        _free()


def verify_merged(
    merged: str | Path,
    *,
    adapter: str | Path | None = None,
    base: str | None = None,
    data: str | Path | None = None,
    prompts: int = 3,
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
                            data=data)
    dtype = record.get("dtype") or _config_dtype(folder)
    started = time.perf_counter()
    compute = work_dtype(dtype, source.base)
    model, tokenizer = load_base(source.base, compute)
    probes = probe(attach_adapter(model, source), tokenizer, source, prompts)
    del model
    _free()
    report = check_merged(folder, probes, dtype, compute, source)
    log.info(f"{report.line()} ({time.perf_counter() - started:.1f} s)")
    return report


def _config_dtype(folder: Path) -> str:
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    dtype = config.get("dtype") or config.get("torch_dtype") or "float32"
    return dtype if dtype in BYTES_PER_PARAM else "float32"


# --- writing ------------------------------------------------------------------------------------


def _is_unsloth(model: Any) -> bool:
    base = getattr(model, "get_base_model", lambda: model)()
    return bool(getattr(getattr(base, "config", None), "unsloth_version", None))


def save_merged(peft_model: Any, tokenizer: Any, out: Path, dtype: str) -> str:
    """Merge and save to `out`; returns which engine merged. Unsloth's merged 16-bit save when
    Unsloth loaded the base (CUDA; it merges layer by layer with less memory), else peft."""
    import torch

    if _is_unsloth(peft_model) and dtype != "float32":  # loaded so only when fp32 did not fit
        try:
            from unsloth.save import unsloth_save_model

            unsloth_save_model(peft_model, tokenizer, str(out), save_method="merged_16bit",
                               max_shard_size=MAX_SHARD_SIZE)
            if any(out.glob("*.safetensors")):
                return "unsloth"
        except Exception as err:  # a version clash or an unsupported model: peft merges instead
            log.warn(f"Unsloth's merged save failed ({_first_line(err)}); merging with peft")
        shutil.rmtree(out, ignore_errors=True)
    merged = peft_model.merge_and_unload()
    merged.to(getattr(torch, dtype))
    out.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(str(out), max_shard_size=MAX_SHARD_SIZE)
    tokenizer.save_pretrained(str(out))
    return "peft"


def _record(source: Source, kind: str, **fields: Any) -> dict[str, Any]:
    from recone_lite.versions import stack_versions

    lora = {"r": source.config.get("r"), "alpha": source.config.get("lora_alpha"),
            "target_modules": source.config.get("target_modules")}
    section = source.recipe.get("model") if isinstance(source.recipe.get("model"), dict) else {}
    return {
        "kind": kind,  # "merged" or "adapter"
        "base_model": source.base_name,
        "adapter": str(source.adapter.resolve()),
        "adapter_base_model": source.recorded_base,
        "lora": lora,
        "trained_quantization": section.get("quantization", "none"),
        "recipe": source.run.get("recipe") or None,
        "run_kind": source.run.get("kind"),
        "template": source.template,
        "rating_scale": list(source.scale) if source.scale else None,
        **fields,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "versions": stack_versions(),
    }


def _write_json(path: Path, record: dict[str, Any]) -> None:
    path.write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def write_merged(source: Source, out: Path, dtype: str, verify: bool, prompts: int = 3,
                 params: int | None = None) -> dict[str, Any]:
    """Merge, save under a temporary name, verify the saved files, rename into place."""
    with log.progress("export", 4 if verify else 2, unit="stages",
                      note="loading the base") as step:
        compute = work_dtype(dtype, source.base, params)
        model, tokenizer = load_base(source.base, compute)
        if source.base.source()[1] is not None:
            log.info("export: the base is a GGUF, dequantized on load; the adapter is merged "
                     "into those weights, the ones it was trained on")
        check_disk(out, param_count(model) * BYTES_PER_PARAM[dtype], str(out))
        peft_model = attach_adapter(model, source)
        if verify:
            step(note="probing base + adapter")
        probes = probe(peft_model, tokenizer, source, prompts) if verify else []
        step(note="merging and saving")
        with atomic_path(out) as tmp:
            engine = save_merged(peft_model, tokenizer, tmp, dtype)
            del model, peft_model
            _free()
            if verify:
                step(note="verifying the saved model")
            report = check_merged(tmp, probes, dtype, compute, source) if verify else None
            step(note="writing recone.json")
            if report is not None:
                log.info(report.line())
                if not report.ok:
                    raise ReconeError(f"verification failed, nothing written to {out}: "
                                      f"{report.problem} (--no-verify writes it anyway)")
            recipe_file = source.adapter / "recipe.yaml"
            if recipe_file.is_file():
                shutil.copyfile(recipe_file, tmp / "recipe.yaml")
            _write_json(tmp / RECONE_JSON, _record(
                source, "merged", dtype=dtype, merged_by=engine,
                verification=dataclasses.asdict(report) if report else None))
    return {"verification": dataclasses.asdict(report) if report else None, "merged_by": engine}


def write_adapter_only(source: Source, out: Path, verify: bool) -> dict[str, Any]:
    """A clean peft adapter folder: adapter_config.json with the base recorded, the weights as
    safetensors, recone.json. No checkpoints, optimizer state or logs."""
    import torch
    from safetensors.torch import load_file, save_file

    weights = source.adapter / "adapter_model.safetensors"
    state = (load_file(str(weights)) if weights.is_file() else
             torch.load(source.adapter / "adapter_model.bin", map_location="cpu",
                        weights_only=True))
    extra = sorted(k for k in state if ".lora_" not in k)
    if extra or source.config.get("modules_to_save"):
        log.warn(f"the adapter holds non-LoRA weights ({(extra or ['modules_to_save'])[0]}, "
                 "...): vLLM may refuse it; a merged export serves it anywhere")
    if source.base.source()[1] is not None:
        log.warn(f"the recorded base {source.base_name} is a GGUF file: vLLM needs the same "
                 "model as a Hugging Face folder or hub id (--base names it)")
    check_disk(out, sum(t.numel() * t.element_size() for t in state.values()), str(out))
    config = {**source.config, "base_model_name_or_path": source.base_path,
              "inference_mode": True}
    with atomic_path(out) as tmp:
        tmp.mkdir()
        _write_json(tmp / "adapter_config.json", config)
        save_file({k: v.contiguous() for k, v in state.items()},
                  str(tmp / "adapter_model.safetensors"), metadata={"format": "pt"})
        if verify:
            again = load_file(str(tmp / "adapter_model.safetensors"))
            if again.keys() != state.keys() or any(not torch.equal(again[k], state[k])
                                                    for k in state):
                raise ReconeError("the written adapter weights differ from the source's")
        _write_json(tmp / RECONE_JSON, _record(source, "adapter"))
    rank = int(source.config.get("r") or 16)
    max_rank = next((r for r in VLLM_LORA_RANKS if r >= rank), rank)
    log.info(f"export: serve with `vllm serve {source.base_name} --enable-lora "
             f"--max-lora-rank {max_rank} --lora-modules NAME={out}`")
    return {"lora_rank": rank, "vllm_max_lora_rank": max_rank}


# --- the command --------------------------------------------------------------------------------


def export(
    adapter: str | Path | None = None,
    *,
    merged: str | Path | None = None,
    adapter_only: str | Path | None = None,
    gguf: str | Path | None = None,
    base: str | None = None,
    dtype: str = "bf16",
    quant: str = "f16",
    llama_cpp: str | Path | None = None,
    verify: bool = True,
    verify_only: bool = False,
    overwrite: bool = False,
    template: str | None = None,
    scale: str | None = None,
    data: str | Path | None = None,
    prompts: int = 3,
) -> dict[str, Any]:
    """The `export` command: every check first, then each output under a temporary name.
    Returns the summary printed as JSON (paths, sizes, seconds, the verification report)."""
    started = time.perf_counter()
    if verify_only:
        if merged is None:
            raise InputError("--verify-only checks an existing --merged DIR", field="merged")
        report = verify_merged(merged, adapter=adapter, base=base, data=data, prompts=prompts)
        if not report.ok:
            raise ReconeError(f"{merged} does not match base + adapter: {report.problem}")
        return {"merged": str(merged), "verification": dataclasses.asdict(report),
                "seconds": round(time.perf_counter() - started, 1)}
    if dtype not in DTYPES:
        raise InputError(f"unknown dtype {dtype!r}; choose {', '.join(DTYPES)}", field="dtype")
    if adapter is None:
        raise InputError("--adapter DIR is required", field="adapter")
    if merged is None and adapter_only is None and gguf is None:
        raise InputError("say what to write: --merged DIR, --adapter-only DIR or --gguf FILE")
    outputs = {k: Path(v) for k, v in (("merged", merged), ("adapter_only", adapter_only),
                                        ("gguf", gguf)) if v is not None}
    if len({p.expanduser().resolve() for p in outputs.values()}) < len(outputs):
        raise InputError("--merged, --adapter-only and --gguf must be different paths")
    tools = find_llama_cpp(Path(llama_cpp) if llama_cpp else None, quant) if gguf else None
    source = resolve_source(adapter, base, template=template, scale=scale, data=data)
    keep = [source.adapter.resolve()]
    if Path(source.base.source()[0]).expanduser().exists():
        keep.append(Path(source.base.source()[0]).expanduser().resolve())
    for name, path in outputs.items():
        check_output(path, overwrite=overwrite, is_file=name == "gguf", keep=keep)
    torch_dtype = DTYPES[dtype]
    params = None
    # cheap early checks: fit and disk, before the long load (and the only fit check of an
    # adapter-only export, which loads no base)
    meta = skeleton(source.base, read_gguf="adapter_only" in outputs)
    if meta is None and "adapter_only" in outputs:
        raise InputError(f"cannot build {source.base_name} from its config to check that the "
                         "adapter fits it; pass --base with a model folder or hub id whose "
                         "architecture transformers knows", field="base")
    if meta is not None:
        check_fit(source, meta)
        if "merged" in outputs or "gguf" in outputs:
            n = params = param_count(meta)
            if "merged" in outputs:
                check_disk(outputs["merged"], n * BYTES_PER_PARAM[torch_dtype], "--merged")
            if "gguf" in outputs:
                staged = 0 if "merged" in outputs else n * BYTES_PER_PARAM[torch_dtype]
                check_disk(outputs["gguf"], staged + n * (GGUF_BYTES_PER_PARAM[quant] + 2),
                           "--gguf")
    summary: dict[str, Any] = {"adapter": str(source.adapter), "base_model": source.base_name}
    if "adapter_only" in outputs:
        summary.update(write_adapter_only(source, outputs["adapter_only"], verify))
        _report(summary, "adapter_only", outputs["adapter_only"], started)
    if "merged" in outputs:
        summary.update(write_merged(source, outputs["merged"], torch_dtype, verify, prompts,
                                    params))
        summary["dtype"] = torch_dtype
        _report(summary, "merged", outputs["merged"], started)
    if "gguf" in outputs:
        assert tools is not None
        if "merged" in outputs:
            convert_to_gguf(outputs["merged"], outputs["gguf"], quant, tools)
        else:
            gguf_path = outputs["gguf"].expanduser()
            gguf_path.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(prefix=f".{gguf_path.name}.", dir=gguf_path.parent,
                                             suffix=".merged") as staging:
                staged = Path(staging) / "merged"
                summary.update(write_merged(source, staged, torch_dtype, verify, prompts, params))
                convert_to_gguf(staged, gguf_path, quant, tools)
        summary["quant"] = quant
        _report(summary, "gguf", outputs["gguf"], started)
    summary["seconds"] = round(time.perf_counter() - started, 1)
    return summary


def _report(summary: dict[str, Any], name: str, path: Path, started: float) -> None:
    size = folder_size(path.expanduser())
    seconds = time.perf_counter() - started
    summary[name] = str(path)
    summary[f"{name}_bytes"] = size
    log.info(f"export: {name.replace('_', '-')} {path}: {human(size)} after {seconds:.1f} s")


def _first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__

