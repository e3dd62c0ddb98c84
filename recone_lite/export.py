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
  `llama-quantize` for k-quants) when llama.cpp is on this machine, with `OUT.recone.json`
  beside it. Nothing is downloaded.

Every recone.json records the run's prompt and decoding settings under `"predict"` (template,
prompt style, prompt budget, readout, answer length, scale: run_settings.py), so `predict` on
the export builds the prompt the run trained on.

Verification (on by default, verify.py): base + adapter, unmerged, and the merged model as saved
on disk run on a few rendered prompts; their logits must agree within a tolerance for the saved
dtype. `verify_merged` does the same for an existing merged folder. What is exported (`Source`)
and the fit checks: adapter_source.py; the GGUF conversion: gguf.py.

Each output is written under a temporary name beside it and renamed into place at the end: an
interrupted or failed export (a failed verification included) leaves nothing under the final
name. Importing this module is cheap: torch, transformers and peft load inside the functions.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from recone_lite import log
from recone_lite.adapter_source import (
    BYTES_PER_PARAM,
    Source,
    attach_adapter,
    check_fit,
    load_base,
    param_count,
    resolve_source,
    skeleton,
    work_dtype,
)
from recone_lite.errors import InputError, ReconeError, first_line
from recone_lite.files import atomic_path, check_target, lies_inside
from recone_lite.gguf import GGUF_BYTES_PER_PARAM, convert_to_gguf, find_llama_cpp
from recone_lite.gpu import VLLM_LORA_RANKS, is_unsloth
from recone_lite.models import RECONE_JSON
from recone_lite.run_folder import RunFolder
from recone_lite.run_settings import SETTINGS, export_record, recone_json_path
from recone_lite.runs import RECIPE_YAML
from recone_lite.verify import check_merged, free_memory, probe, verify_merged
from recone_lite.versions import stack_versions

DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
MAX_SHARD_SIZE = "5GB"
# what an export folder holds (a merged one: save_pretrained's weights, config and tokenizer
# files, recipe.yaml and recone.json; an adapter-only one: the adapter and recone.json).
# --overwrite replaces a folder holding nothing else; one holding anything else is refused
LAYOUT = ("*.safetensors", "*.safetensors.index.json", "pytorch_model*.bin",
          "pytorch_model.bin.index.json", "config.json", "generation_config.json", "tokenizer*",
          "special_tokens_map.json", "vocab.json", "vocab.txt", "merges.txt", "added_tokens.json",
          "chat_template.jinja", "chat_template.json", "spiece.model", "sentencepiece*.model",
          "adapter_config.json", "adapter_model.bin", RECIPE_YAML, RECONE_JSON)


# --- checks before anything is written ----------------------------------------------------------


def check_output(path: Path, *, overwrite: bool, is_file: bool, keep: list[Path],
                 flag: str = "--out") -> None:
    """Refuse an existing output without --overwrite, one of the wrong kind, one whose
    replacement would delete what the export reads (`keep`: the adapter, the base, --data) and
    a folder holding anything an export does not write (`LAYOUT`)."""
    for precious in keep:
        if lies_inside(precious, path):
            raise InputError(f"would replace {precious}, which the export reads; choose another "
                             f"{flag}", path=path, field=flag)
    if not path.exists() and not path.is_symlink():  # a dangling symlink exists too
        check_target(path, overwrite=overwrite, flag=flag)  # its parent must be a folder
        return
    if not overwrite:
        raise InputError("exists; pass --overwrite to replace it or choose another name",
                         path=path)
    if path.is_dir() == is_file:
        raise InputError(f"exists and is not a {'file' if is_file else 'folder'}", path=path,
                         field=flag)
    # a folder is replaced only when it is an export (recone.json inside), never `.`
    check_target(path, overwrite=overwrite, marker=None if is_file else RECONE_JSON,
                 what="recone-lite export", flag=flag, layout=None if is_file else LAYOUT)


def check_outputs(outputs: dict[str, Path], source: Source, overwrite: bool) -> None:
    """`check_output` for each output (and a GGUF's OUT.recone.json), keeping what the export
    reads: the adapter, a local base, the prepared data (--data, else the run's)."""
    keep = [source.adapter.resolve()]
    if Path(source.base.source()[0]).expanduser().exists():
        keep.append(Path(source.base.source()[0]).expanduser().resolve())
    if source.data is not None:  # --data, else the run's prepared folder (verification prompts)
        keep.append(Path(source.data).expanduser().resolve())
    for name, path in outputs.items():
        check_output(path, overwrite=overwrite, is_file=name == "gguf", keep=keep,
                     flag="--" + name.replace("_", "-"))
    if "gguf" in outputs:  # OUT.recone.json, written beside the GGUF: checked as it is
        check_output(recone_json_path(outputs["gguf"]), overwrite=overwrite, is_file=True,
                     keep=keep, flag="--gguf")


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


    #              completion token but the last (row i + keep - 1 chose completion token i)


# --- writing ------------------------------------------------------------------------------------


def save_merged(peft_model: Any, tokenizer: Any, out: Path, dtype: str) -> str:
    """Merge and save to `out`; returns which engine merged. Unsloth's merged 16-bit save when
    Unsloth loaded the base (CUDA; it merges layer by layer with less memory), else peft."""
    import torch

    if is_unsloth(peft_model) and dtype != "float32":  # loaded so only when fp32 did not fit
        try:
            from unsloth.save import unsloth_save_model

            unsloth_save_model(peft_model, tokenizer, str(out), save_method="merged_16bit",
                               max_shard_size=MAX_SHARD_SIZE)
            if any(out.glob("*.safetensors")):
                return "unsloth"
        except Exception as err:  # a version clash or an unsupported model: peft merges instead
            log.warn(f"Unsloth's merged save failed ({first_line(err)}); merging with peft")
        shutil.rmtree(out, ignore_errors=True)
    merged = peft_model.merge_and_unload()
    merged.to(getattr(torch, dtype))
    out.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(str(out), max_shard_size=MAX_SHARD_SIZE)
    tokenizer.save_pretrained(str(out))
    return "peft"


def _record(source: Source, kind: str, **fields: Any) -> dict[str, Any]:
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
        # every prompt and decoding setting of the run: `predict --model OUT` uses them
        SETTINGS: export_record(source.recipe, source.template, source.scale),
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
        with atomic_path(out, marker=RECONE_JSON, layout=LAYOUT) as tmp:
            engine = save_merged(peft_model, tokenizer, tmp, dtype)
            del model, peft_model
            free_memory()
            if verify:
                step(note="verifying the saved model")
            report = check_merged(tmp, probes, dtype, compute, source) if verify else None
            step(note="writing recone.json")
            if report is not None:
                log.info(report.line())
                if not report.ok:
                    raise ReconeError(f"verification failed, nothing written to {out}: "
                                      f"{report.problem} (--no-verify writes it anyway)")
            recipe_file = RunFolder(source.adapter).recipe_path  # a checkpoint's: its run's
            if recipe_file.is_file():
                shutil.copyfile(recipe_file, tmp / RECIPE_YAML)
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
    with atomic_path(out, marker=RECONE_JSON, layout=LAYOUT) as tmp:
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
    trust_remote_code: bool = False,
) -> dict[str, Any]:
    """The `export` command: every check first, then each output under a temporary name.
    Returns the summary printed as JSON (paths, sizes, seconds, the verification report)."""
    started = time.perf_counter()
    if verify_only:
        if merged is None:
            raise InputError("--verify-only checks an existing --merged DIR", field="merged")
        report = verify_merged(merged, adapter=adapter, base=base, data=data, prompts=prompts,
                               trust_remote_code=trust_remote_code)
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
    source = resolve_source(adapter, base, template=template, scale=scale, data=data,
                            trust_remote_code=trust_remote_code)
    check_outputs(outputs, source, overwrite)
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
        # a GGUF is one file: its run's settings go beside it, for `predict --model OUT.gguf`
        record = {**_record(source, "gguf", quant=quant), "dtype": torch_dtype}
        with atomic_path(recone_json_path(outputs["gguf"])) as tmp_json:
            _write_json(tmp_json, record)
        _report(summary, "gguf", outputs["gguf"], started)
    summary["seconds"] = round(time.perf_counter() - started, 1)
    return summary


def _report(summary: dict[str, Any], name: str, path: Path, started: float) -> None:
    size = folder_size(path.expanduser())
    seconds = time.perf_counter() - started
    summary[name] = str(path)
    summary[f"{name}_bytes"] = size
    log.info(f"export: {name.replace('_', '-')} {path}: {human(size)} after {seconds:.1f} s")


