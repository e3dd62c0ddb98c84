"""Model loading: the spec, fast failures on bad paths, GGUF -> trainable and savable, adapters."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from recone_lite.errors import InputError
from recone_lite.models import ModelSpec, adapter_mismatch, check_spec, load_model
from recone_lite.runtime import gguf_bar_on_terminals_only


def test_spec_defaults_and_unknown_keys():
    spec = ModelSpec(name="org/model")
    assert (spec.dtype, spec.quantization, spec.trust_remote_code, spec.max_seq_length) == (
        "auto",
        "none",
        False,
        4096,
    )
    with pytest.raises(ValidationError, match="extra"):
        ModelSpec(name="org/model", quantisation="4bit")
    with pytest.raises(ValidationError):
        ModelSpec(name="org/model", dtype="fp8")


def test_missing_paths_fail_before_loading(tmp_path):
    with pytest.raises(InputError, match="no such GGUF file"):
        check_spec(ModelSpec(name=str(tmp_path / "m.Q4.gguf")))
    with pytest.raises(InputError, match="no such model folder"):
        check_spec(ModelSpec(name=str(tmp_path / "model")))
    with pytest.raises(InputError, match="^adapter: no such adapter folder"):
        load_model(ModelSpec(name="org/model", adapter=str(tmp_path / "adapter")))
    (tmp_path / "adapter").mkdir()
    with pytest.raises(InputError, match="not a LoRA adapter folder"):
        load_model(ModelSpec(name="org/model", adapter=str(tmp_path / "adapter")))


@pytest.mark.slow
def test_gguf_loads_as_plain_float32_weights_with_a_fixed_tokenizer(smollm2_gguf_model):
    import torch

    model, tokenizer = smollm2_gguf_model
    assert model.hf_quantizer is None and model.is_quantized is False
    assert not hasattr(model.config, "quantization_config")
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert tokenizer.eos_token == "<|im_end|>"  # the generation config's eos, not <|im_start|>
    assert tokenizer.pad_token is not None and tokenizer.chat_template


@pytest.mark.slow
def test_gguf_model_is_trainable_and_savable_with_lora(smollm2_gguf_model, smollm2_dir, tmp_path):
    import torch
    from peft import LoraConfig, get_peft_model

    model, tokenizer = smollm2_gguf_model
    assert (smollm2_dir / "model.safetensors").is_file()  # the base saved (fixture)
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    try:
        trainable = [p for p in peft_model.parameters() if p.requires_grad]
        assert trainable and all(p.dtype == torch.float32 for p in trainable)
        batch = tokenizer(["<rate>4</rate>"], return_tensors="pt")
        before = [p.detach().clone() for p in trainable]
        optimizer = torch.optim.SGD(trainable, lr=1.0)
        peft_model.train()
        loss = peft_model(**batch, labels=batch["input_ids"]).loss
        loss.backward()
        optimizer.step()
        assert torch.isfinite(loss)
        assert any(not torch.equal(a, b) for a, b in zip(before, trainable, strict=True))
        peft_model.save_pretrained(tmp_path / "adapter")
    finally:
        peft_model.unload()  # the session's GGUF model, unwrapped again
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"]

    # the adapter loads onto the saved base (another path: a warning, shapes fit) and generates
    loaded, loaded_tokenizer = load_model(
        ModelSpec(name=str(smollm2_dir), adapter=str(tmp_path / "adapter"))
    )
    assert not hasattr(loaded, "peft_config")  # merged for generation
    ids = loaded_tokenizer(["Hello"], return_tensors="pt")
    assert loaded.generate(**ids, max_new_tokens=2, do_sample=False).shape[1] >= 2


def tiny_adapter(folder: Path, hidden: int) -> Path:
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=128,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=4,
    )
    model = get_peft_model(LlamaForCausalLM(config), LoraConfig(r=2, target_modules=["q_proj"]))
    model.save_pretrained(folder)
    return folder


def test_adapter_shapes_are_checked_against_the_base(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    base = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=128,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=4,
        )
    )
    assert adapter_mismatch(tiny_adapter(tmp_path / "fits", 32), base) is None
    problem = adapter_mismatch(tiny_adapter(tmp_path / "wide", 64), base)
    assert problem == "model.layers.0.self_attn.q_proj has 32 features where the adapter has 64"


@pytest.mark.slow
def test_incompatible_adapter_is_one_line_error(tiny_dir, tmp_path):
    adapter = tiny_adapter(tmp_path / "adapter", 64)
    with pytest.raises(InputError) as caught:
        load_model(ModelSpec(name=str(tiny_dir), adapter=str(adapter)))
    message = str(caught.value)
    assert message.startswith(f"adapter: {adapter} was trained on ") and "\n" not in message
    assert "does not fit" in message and "q_proj has 32 features" in message


@pytest.mark.slow
def test_cpu_says_it_ignores_4bit(tiny_dir, capsys):
    model, tokenizer = load_model(ModelSpec(name=str(tiny_dir), quantization="4bit"))
    err = " ".join(capsys.readouterr().err.split())
    assert "4bit quantization needs CUDA" in err and "via transformers on cpu (float32)" in err
    assert tokenizer.padding_side == "left" and not model.training


def test_the_gguf_readers_bar_stays_out_of_logs() -> None:
    """While a GGUF loads, transformers' reader draws its tqdm bar on a terminal only: into a
    log (here a StringIO, not a terminal) it wrote the bar line after line."""
    from transformers import modeling_gguf_pytorch_utils as reader

    log = io.StringIO()
    with gguf_bar_on_terminals_only():
        for _ in reader.tqdm(range(3), file=log):
            pass
    assert log.getvalue() == ""
    for _ in reader.tqdm(range(3), file=log):  # outside: the reader's own bar, put back
        pass
    assert "3/3" in log.getvalue()

