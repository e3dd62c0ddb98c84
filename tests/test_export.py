"""`recone-lite export`: merged weights that answer like base + adapter, a clean adapter for vLLM,
GGUF through llama.cpp when present, and the bad inputs (mismatched base, existing output, no
disk, an interrupted export, no llama.cpp).

Most tests use a tiny random Llama with a tokenizer trained here in seconds (no download, no
GGUF load), so they run fast; the slow one merges a real LoRA into SmolLM2-135M and checks that
`predict` gives the merged folder's answers and base + adapter's answers alike.
"""

from __future__ import annotations

import io
import json
import shutil
import sys
from collections import namedtuple
from pathlib import Path
from typing import Any

import pytest
import yaml
from training_helpers import write_prepared

from recone_lite import export as export_module
from recone_lite.errors import InputError, ReconeError
from recone_lite.export import export
from recone_lite.models import read_recone_json
from recone_lite.verify import verify_merged

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def cli(capsys, monkeypatch, *args: Any) -> tuple[int, str, str]:
    """`recone-lite ARGS` in this process (the console entry point, its exit code and output)."""
    from recone_lite.cli import main

    monkeypatch.setattr(sys, "argv", ["recone-lite", *map(str, args)])
    capsys.readouterr()
    with pytest.raises(SystemExit) as caught:
        main()
    out, err = capsys.readouterr()
    return caught.value.code or 0, out, err


def tiny_tokenizer() -> Any:
    """A byte-level BPE tokenizer with a chat template, trained on the prompts' own words."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from recone_lite.prompts import _SYSTEM

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600, special_tokens=["<|im_start|>", "<|im_end|>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    corpus = [*_SYSTEM.values(), "user_purchase_history target_item title categories rating"]
    backend.train_from_iterator(corpus * 3, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<|im_start|>",
                                        eos_token="<|im_end|>", pad_token="<pad>")
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def tiny_base(folder: Path, hidden: int = 32) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = tiny_tokenizer()
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def make_run(folder: Path, base: Path, data: Path, template: str = "none",
             scale_b: float = 1.0) -> Path:
    """A run directory as `train` / `sft` leave it: a LoRA adapter with non-zero weights
    (init_lora_weights=False, so lora_B is random, then scaled), recipe.yaml, run.json."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    config = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj", "down_proj"],
                        init_lora_weights=False, task_type="CAUSAL_LM")
    model = get_peft_model(model, config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.mul_(scale_b)
    model.save_pretrained(folder)
    recipe = {"kind": "sft", "model": {"name": str(base)},
              "data": {"dir": str(data), "template": template, "eval_split": "dev"}}
    (folder / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    (folder / "run.json").write_text(json.dumps({"status": "finished", "kind": "sft",
                                                 "recipe": "tiny-sft"}))
    (folder / "checkpoint-2").mkdir()  # what a clean export must leave behind
    return folder


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny-export")
    data = write_prepared(root / "data", {"train": 4, "dev": 4, "test": 4})
    base = tiny_base(root / "base")
    return {"root": root, "data": data, "base": base, "run": make_run(root / "run", base, data)}


@pytest.fixture(scope="module")
def merged(tiny) -> tuple[Path, dict[str, Any]]:
    """The run exported in fp32: (folder, summary)."""
    out = tiny["root"] / "out" / "merged"
    return out, export(tiny["run"], merged=out, dtype="fp32")


# --- merged ---------------------------------------------------------------------------------------


def test_merged_folder_holds_what_servers_and_predict_need(merged, tiny):
    out, summary = merged
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
            "tokenizer_config.json", "recone.json", "recipe.yaml"} <= names
    assert "chat_template.jinja" in names or "chat_template" in (out / "tokenizer_config.json"
                                                                 ).read_text()
    assert not any("adapter" in n or "checkpoint" in n for n in names)
    assert json.loads((out / "config.json").read_text())["dtype"] == "float32"
    record = read_recone_json(out)
    assert record["kind"] == "merged" and record["base_model"] == str(tiny["base"])
    assert record["adapter"] == str(tiny["run"].resolve()) and record["recipe"] == "tiny-sft"
    assert record["template"] == "none" and record["rating_scale"] == [1.0, 5.0]
    assert record["lora"]["r"] == 8 and record["dtype"] == "float32"
    # verified on the run's dev prompts: fp32 logits agree, greedy completions identical
    check = summary["verification"]
    assert check["ok"] and check["greedy_identical"] and check["max_abs_diff"] < 1e-4
    assert record["verification"] == check
    assert summary["merged_bytes"] > 0 and summary["seconds"] > 0


def test_merged_weights_differ_from_the_base(merged, tiny):
    """The adapter's effect is in the weights (a zero adapter would verify trivially)."""
    from safetensors.torch import load_file

    before = load_file(str(tiny["base"] / "model.safetensors"))
    after = load_file(str(merged[0] / "model.safetensors"))
    key = "model.layers.0.self_attn.q_proj.weight"
    assert (after[key] - before[key]).abs().max() > 1e-3
    key = "model.layers.0.self_attn.k_proj.weight"  # not a LoRA target: unchanged
    assert (after[key] - before[key]).abs().max() == 0


def tamper(folder: Path, key: str) -> None:
    """Add noise to one tensor of a merged folder."""
    import torch
    from safetensors.torch import load_file, save_file

    weights = load_file(str(folder / "model.safetensors"))
    torch.manual_seed(2)
    weights[key] = weights[key] + 0.05 * torch.randn_like(weights[key])
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})


def test_a_tampered_merged_folder_fails_verification(merged, tmp_path, capsys, monkeypatch):
    folder = tmp_path / "tampered"
    shutil.copytree(merged[0], folder)
    tamper(folder, "model.layers.1.mlp.up_proj.weight")

    report = verify_merged(folder, prompts=2)
    assert not report.ok and "logits differ" in report.problem
    assert report.max_abs_diff > report.tolerance
    assert verify_merged(merged[0], prompts=2).ok  # the untouched folder still passes

    code, out, err = cli(capsys, monkeypatch, "export", "--merged", folder, "--verify-only")
    assert code == 1 and out == ""
    assert err.strip().splitlines()[-1].startswith(f"error: {folder} does not match")


def test_bf16_export_verifies_within_its_tolerance(tiny, tmp_path, capsys):
    out = tmp_path / "bf16"
    summary = export(tiny["run"], merged=out, prompts=2)
    err = " ".join(capsys.readouterr().err.split())  # rich wraps long lines
    assert "verify passed" in err and f"export: merged {out}: " in err and " after " in err
    check = summary["verification"]
    assert check["ok"] and check["dtype"] == "bfloat16" and check["compute_dtype"] == "float32"
    assert 0 < check["max_abs_diff"] <= check["tolerance"]
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    assert summary["merged_bytes"] < 0.6 * export_module.folder_size(tiny["base"])
    tamper(out, "model.layers.1.mlp.up_proj.weight")  # 16 bits still catch a changed tensor
    assert not verify_merged(out, prompts=2).ok


# --- bad input ------------------------------------------------------------------------------------


def test_existing_output_is_refused(merged, tiny, capsys, monkeypatch):
    out = merged[0]
    code, _, err = cli(capsys, monkeypatch, "export", "--adapter", tiny["run"], "--merged", out)
    assert code == 2
    assert err.strip() == (f"error: {out}: exists; pass --overwrite to replace it or choose "
                           "another name")
    with pytest.raises(InputError, match="would replace"):
        export(tiny["run"], merged=tiny["run"], overwrite=True)  # the adapter itself
    with pytest.raises(InputError, match="would replace"):
        export(tiny["run"], merged=tiny["root"], overwrite=True)  # a folder holding it


def test_overwrite_replaces_an_existing_export_only(tiny, tmp_path):
    out = tmp_path / "m"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(InputError, match="no recone.json"):  # someone else's folder (issue 25)
        export(tiny["run"], merged=out, overwrite=True, verify=False, dtype="fp32")
    assert [p.name for p in out.iterdir()] == ["old.txt"]
    (out / "recone.json").write_text("{}")  # an earlier export, but holding the user's file
    with pytest.raises(InputError, match="holds old.txt, which this command does not write"):
        export(tiny["run"], merged=out, overwrite=True, verify=False, dtype="fp32")
    assert sorted(p.name for p in out.iterdir()) == ["old.txt", "recone.json"]
    (out / "old.txt").unlink()  # an export's own files only: replaced whole
    (out / "model-00001-of-00002.safetensors").write_bytes(b"an older shard")
    export(tiny["run"], merged=out, overwrite=True, verify=False, dtype="fp32")
    assert (out / "model.safetensors").is_file()
    assert not (out / "model-00001-of-00002.safetensors").exists()
    written = sorted(p.name for p in out.iterdir())
    # a real export holds nothing outside LAYOUT: it is replaced again, merged or adapter-only
    export(tiny["run"], merged=out, overwrite=True, verify=False, dtype="fp32")
    assert sorted(p.name for p in out.iterdir()) == written
    export(tiny["run"], adapter_only=out, overwrite=True)
    export(tiny["run"], adapter_only=out, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == [
        "adapter_config.json", "adapter_model.safetensors", "recone.json"]


def test_adapter_for_another_base_is_refused(tiny, tmp_path):
    other = tiny_base(tmp_path / "wide-base", hidden=64)
    with pytest.raises(InputError) as caught:
        export(tiny["run"], merged=tmp_path / "m", base=str(other))
    message = str(caught.value)
    assert message.startswith("base: ") and "does not fit" in message and "\n" not in message
    assert "has 64 features where the adapter has 32" in message
    assert not (tmp_path / "m").exists()


def test_a_quantized_base_is_refused(tiny, tmp_path):
    base = tmp_path / "Model-bnb-4bit"
    shutil.copytree(tiny["base"], base)
    config = json.loads((base / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "bitsandbytes", "load_in_4bit": True}
    (base / "config.json").write_text(json.dumps(config))
    with pytest.raises(InputError, match="16-bit original"):
        export(tiny["run"], merged=tmp_path / "m", base=str(base))


def test_not_enough_disk_fails_before_writing(tiny, tmp_path, monkeypatch):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 10**6, 10**6))
    with pytest.raises(ReconeError, match="not enough disk space for --merged") as caught:
        export(tiny["run"], merged=tmp_path / "m")
    assert caught.value.exit_code == 1 and list(tmp_path.iterdir()) == []


def test_an_interrupted_export_leaves_no_folder(tiny, tmp_path, monkeypatch):
    real = export_module.save_merged

    def save_then_die(*args, **kwargs):
        real(*args, **kwargs)  # the shards are written...
        raise KeyboardInterrupt  # ...and then the user presses Ctrl-C

    monkeypatch.setattr(export_module, "save_merged", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        export(tiny["run"], merged=tmp_path / "m", verify=False)
    assert list(tmp_path.iterdir()) == []  # neither the final name nor the temporary one


def test_missing_or_incomplete_adapter_is_bad_input(tmp_path):
    with pytest.raises(InputError, match="no such adapter folder"):
        export(tmp_path / "nope", merged=tmp_path / "m")
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "adapter_config.json").write_text("{}")
    with pytest.raises(InputError, match="no adapter_model.safetensors"):
        export(tmp_path / "a", merged=tmp_path / "m")
    with pytest.raises(InputError, match="say what to write"):
        export(tmp_path / "a")


# --- adapter only ---------------------------------------------------------------------------------


def test_adapter_only_is_a_clean_peft_folder_with_the_base_recorded(tiny, tmp_path):
    import torch
    from safetensors.torch import load_file

    out = tmp_path / "music"
    summary = export(tiny["run"], adapter_only=out)
    assert sorted(p.name for p in out.iterdir()) == [
        "adapter_config.json", "adapter_model.safetensors", "recone.json"]
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(tiny["base"]) and config["r"] == 8
    source = load_file(str(tiny["run"] / "adapter_model.safetensors"))
    written = load_file(str(out / "adapter_model.safetensors"))
    assert source.keys() == written.keys()
    assert all(torch.equal(source[k], written[k]) for k in source)
    assert summary["vllm_max_lora_rank"] == 8 and read_recone_json(out)["kind"] == "adapter"
    # and peft loads it on the base
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny["base"]), str(out))


def test_adapter_only_checks_the_base_fits_and_records_it_absolute(tiny, tmp_path, capsys,
                                                                    monkeypatch):
    other = tiny_base(tmp_path / "wider", hidden=64)  # same architecture, other shapes
    code, out, err = cli(capsys, monkeypatch, "export", "--adapter", tiny["run"],
                         "--adapter-only", tmp_path / "music", "--base", other)
    assert code == 2 and out == "" and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("error: base: ")
    assert "does not fit" in err and "features where the adapter has" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["wider"]  # nothing written
    # a relative base is recorded as an absolute path: vLLM started elsewhere finds it
    monkeypatch.chdir(tiny["base"].parent)
    export(tiny["run"], adapter_only=tmp_path / "music", base="./base")
    config = json.loads((tmp_path / "music" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(tiny["base"].resolve())


# --- GGUF -----------------------------------------------------------------------------------------


def test_gguf_without_llama_cpp_says_how_to_get_it(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no converter on PATH
    with pytest.raises(ReconeError) as caught:
        export(tiny["run"], gguf=tmp_path / "m.gguf")
    message = str(caught.value)
    assert caught.value.exit_code == 1 and "convert_hf_to_gguf.py" in message
    assert "git clone" in message and "--llama-cpp" in message and "never downloads" in message
    with pytest.raises(InputError, match="no convert_hf_to_gguf.py here") as caught:
        export(tiny["run"], gguf=tmp_path / "m.gguf", llama_cpp=tmp_path)
    assert caught.value.exit_code == 2
    assert list(tmp_path.iterdir()) == []


STAND_IN_CONVERTER = """\
import argparse, pathlib
parser = argparse.ArgumentParser()
parser.add_argument("model")
parser.add_argument("--outfile")
parser.add_argument("--outtype")
args = parser.parse_args()
assert (pathlib.Path(args.model) / "config.json").is_file()
assert list(pathlib.Path(args.model).glob("*.safetensors"))
pathlib.Path(args.outfile).write_bytes(b"GGUF " + args.outtype.encode())
"""


def test_gguf_runs_llama_cpp_converter_then_quantize(tiny, tmp_path):
    """llama.cpp's tools replaced by stand-ins that check their inputs: the plumbing."""
    llama = tmp_path / "llama.cpp"
    (llama / "build" / "bin").mkdir(parents=True)
    (llama / "convert_hf_to_gguf.py").write_text(STAND_IN_CONVERTER)
    quantize = llama / "build" / "bin" / "llama-quantize"
    quantize.write_text('#!/bin/sh\ntest -s "$1" && printf "GGUF %s" "$3" > "$2"\n')
    quantize.chmod(0o755)
    out = tmp_path / "out"
    export(tiny["run"], gguf=out / "m.gguf", quant="q8_0", llama_cpp=llama, verify=False)
    assert (out / "m.gguf").read_bytes() == b"GGUF q8_0"
    summary = export(tiny["run"], gguf=out / "q4.gguf", merged=out / "merged", quant="q4_k_m",
                     llama_cpp=llama, verify=False)
    assert (out / "q4.gguf").read_bytes() == b"GGUF Q4_K_M" and summary["gguf_bytes"] == 11
    assert sorted(p.name for p in out.iterdir()) == ["m.gguf", "m.recone.json", "merged",
                                                     "q4.gguf", "q4.recone.json"]
    record = json.loads((out / "q4.recone.json").read_text())  # the run's settings, for predict
    assert record["kind"] == "gguf" and record["quant"] == "q4_k_m"
    assert record["predict"]["template"] == "none" and record["predict"]["rating_scale"] == [1, 5]
    quantize.unlink()
    with pytest.raises(ReconeError, match="needs llama.cpp's llama-quantize"):
        export(tiny["run"], gguf=out / "q5.gguf", quant="q5_k_m", llama_cpp=llama)


# --- the real model -------------------------------------------------------------------------------


@pytest.mark.slow
def test_smollm2_merged_predicts_like_base_plus_adapter(smollm2_dir, tmp_path):
    from recone_lite.predict import predict

    data = write_prepared(tmp_path / "data", {"train": 4, "dev": 4, "test": 5})
    run = make_run(tmp_path / "run", smollm2_dir, data, scale_b=0.05)
    out = tmp_path / "merged"
    summary = export(run, merged=out, dtype="fp32", prompts=1)
    check = summary["verification"]
    assert check["ok"] and check["greedy_identical"] and check["max_abs_diff"] < 1e-2

    def rows(**options: Any) -> list[dict[str, Any]]:
        sink = io.StringIO()
        predict(str(data / "test.jsonl"), max_new_tokens=16, batch_size=5, stdout=sink,
                **options)
        return [json.loads(line) for line in sink.getvalue().splitlines()]

    with_adapter = rows(model=str(smollm2_dir), adapter=str(run), template="none")
    from_merged = rows(model=str(out))  # template and scale from recone.json
    assert len(from_merged) == 5
    assert [(r["rating"], r["completion"]) for r in from_merged] == [
        (r["rating"], r["completion"]) for r in with_adapter]


@pytest.mark.slow
def test_an_export_predicts_with_its_runs_prompt_and_settings(tiny_dir, tmp_path, monkeypatch,
                                                             capsys):
    """A trained run (2 GRPO steps on conftest's tiny model) whose prompt differs from predict's
    defaults in every setting a run records: compact system prompt, one history item, a
    200-token budget, the expected readout, 10 new tokens, a 0-5 scale. `predict --model
    MERGED` (and `--adapter ADAPTER_ONLY`, `--backend openai --model MERGED`) must build the
    prompts `predict --adapter RUN` builds, byte for byte, and answer alike (greedy, fp32)."""
    from chat_server import chat_server
    from training_helpers import write_recipe

    from recone_lite import generate, grpo
    from recone_lite.config import load_recipe
    from recone_lite.predict import predict

    data = write_prepared(tmp_path / "data", {"train": 8, "dev": 4, "test": 4})
    (data / "manifest.json").write_text(json.dumps({"rating_scale": [0.0, 5.0]}))
    run = tmp_path / "run"
    recipe = write_recipe(tmp_path / "r.yaml", data, run, tiny_dir, evaluation={
        "readout": "expected", "max_new_tokens": 10, "at_start": False})
    written = yaml.safe_load(recipe.read_text())
    written["data"].update(system="compact", max_history=1, max_prompt_tokens=200)
    recipe.write_text(yaml.safe_dump(written))
    grpo.train(load_recipe(str(recipe)), recipe_name="test")
    merged, adapter_only = tmp_path / "merged", tmp_path / "adapter"
    summary = export(run, merged=merged, adapter_only=adapter_only, dtype="fp32", prompts=1)
    assert summary["verification"]["greedy_identical"]
    record = read_recone_json(merged)["predict"]
    assert record["prompt"]["system"] == "compact" and record["prompt"]["max_history"] == 1
    assert (record["max_prompt_tokens"], record["readout"], record["max_new_tokens"],
            record["rating_scale"]) == (200, "expected", 10, [0.0, 5.0])

    requests = tmp_path / "requests.jsonl"  # no manifest.json beside it: the scale is recorded
    shutil.copyfile(data / "test.jsonl", requests)
    rendered: list[Any] = []
    real_render = generate.render_prompt

    def recording(*args: Any, **kwargs: Any) -> Any:  # the real renderer, its results kept
        rendered.append(real_render(*args, **kwargs))
        return rendered[-1]

    monkeypatch.setattr(generate, "render_prompt", recording)

    def prompts_and_rows(**options: Any) -> tuple[list[str], list[dict[str, Any]]]:
        rendered.clear()
        sink = io.StringIO()
        predict(str(requests), stdout=sink, **options)
        return ([r.text for r in rendered],
                [json.loads(line) for line in sink.getvalue().splitlines()])

    capsys.readouterr()
    from_run = prompts_and_rows(adapter=str(run))
    assert "from the run" in capsys.readouterr().err
    from_merged = prompts_and_rows(model=str(merged))
    said = capsys.readouterr().err
    assert "from the export" in said and "system compact" in said, said
    from_adapter_export = prompts_and_rows(adapter=str(adapter_only))
    texts, rows = from_run
    assert len(texts) == len(rows) == 4
    assert "Answer only: <rate>one number</rate>" in texts[0]  # the compact system prompt
    assert "(1 older items omitted)" in texts[0]  # max_history 1
    assert from_merged[0] == texts and from_adapter_export[0] == texts  # byte-identical prompts
    for other in (from_merged[1], from_adapter_export[1]):
        assert [(r["id"], r["completion"], r["tokens"], r["text_rating"]) for r in other] == [
            (r["id"], r["completion"], r["tokens"], r["text_rating"]) for r in rows]
        for mine, theirs in zip(other, rows, strict=True):  # expected readout: probs
            assert mine["probs"] == pytest.approx(theirs["probs"], abs=1e-3)
    assert all(r["tokens"] <= 10 for r in rows) and "probs" in rows[0]
    # without the recorded settings the prompt differs: the comparison above can fail
    assert prompts_and_rows(model=str(tiny_dir), max_new_tokens=2)[0] != texts

    # a server behind --backend openai serving the export under its path gets the same messages
    with chat_server(reply=lambda messages: "<rate>7</rate>") as server:
        rendered.clear()
        predict(str(requests), model=str(merged), backend="openai", base_url=server.url,
                stdout=io.StringIO(), concurrency=1)
    local = [r.messages for r in rendered]
    assert [r["messages"] for r in server.requests] == local and len(local) == 4
    assert [real_render(json.loads(line), _tokenizer(merged), "none", (0.0, 5.0), 200,
                        _style(record)).text for line in requests.read_text().splitlines()
            ] == texts
    assert {r["max_tokens"] for r in server.requests} == {10}


def _tokenizer(folder: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder)


def _style(record: dict[str, Any]) -> Any:
    from recone_lite.prompts import PromptStyle

    return PromptStyle(**record["prompt"])
