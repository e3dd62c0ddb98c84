"""Versions of the stack and what accelerators are usable, for `version` and every run.json."""

from __future__ import annotations

import importlib.metadata as metadata
import platform

from recone_lite import __version__
from recone_lite.gpu import cuda_available

PACKAGES = ("torch", "transformers", "trl", "peft", "datasets", "accelerate", "bitsandbytes")


def package_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def unsloth_status() -> str:
    """'usable', or why not. Importing unsloth without a GPU raises, so only try on CUDA."""
    if package_version("unsloth") == "not installed":
        return "not installed (pip install 'recone-lite[gpu]')"
    if not cuda_available():
        return "installed, not usable without CUDA"
    return "usable"


def stack_versions() -> dict[str, str]:
    versions = {"recone-lite": __version__, "python": platform.python_version()}
    versions.update({name: package_version(name) for name in PACKAGES})
    versions["cuda"] = "available" if cuda_available() else "not available"
    versions["unsloth"] = unsloth_status()
    return versions
