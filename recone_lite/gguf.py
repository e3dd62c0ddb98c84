"""`export --gguf`: the merged model converted to GGUF by llama.cpp, when it is on this machine.

`convert_hf_to_gguf.py` writes f32 / f16 / bf16 / q8_0 itself; the k-quants go through
`llama-quantize` too. Nothing is downloaded: `find_llama_cpp` names what is missing and how to
get it. The merged folder comes from export.py (`write_merged`).
"""

from __future__ import annotations

import collections
import dataclasses
import shutil
import subprocess
import sys
from pathlib import Path

from recone_lite import log
from recone_lite.errors import InputError, ReconeError
from recone_lite.files import atomic_path

GGUF_OUTTYPES = ("f32", "f16", "bf16", "q8_0")  # convert_hf_to_gguf.py writes these itself


GGUF_QUANTS = (*GGUF_OUTTYPES, "q6_k", "q5_k_m", "q4_k_m", "q4_0")  # the rest: llama-quantize


GGUF_BYTES_PER_PARAM = {"f32": 4, "f16": 2, "bf16": 2, "q8_0": 1.07, "q6_k": 0.82,
                        "q5_k_m": 0.71, "q4_k_m": 0.61, "q4_0": 0.57}


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
