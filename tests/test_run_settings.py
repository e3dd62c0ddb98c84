"""run_settings.py: what a run folder or an export tells `predict` (template, the whole prompt
style, budget, readout, answer length, scale, quantization), read tolerantly; and `--backend
openai` fitting its messages to the run's budget with the base's tokenizer, against a local
chat server (tests/chat_server.py). Real files, the tiny tokenizer of test_export (trained here
in seconds), no model weights loaded."""

from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from chat_server import chat_server
from test_export import tiny_base
from training_helpers import write_prepared

from recone_lite.errors import InputError
from recone_lite.predict import predict
from recone_lite.prompts import STYLE_FIELDS, PromptStyle, render_prompt
from recone_lite.run_folder import RunFolder
from recone_lite.run_settings import (
    export_defaults,
    export_record,
    from_record,
    run_defaults,
)


def adapter_folder(folder: Path, recipe: dict[str, Any] | None = None,
                   recone: dict[str, Any] | None = None) -> Path:
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "base_model_name_or_path": "org/base", "r": 8}))
    if recipe is not None:
        (folder / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    if recone is not None:
        (folder / "recone.json").write_text(json.dumps(recone))
    return folder


def test_a_run_gives_answer_length_and_quantization_like_its_budget(tmp_path: Path) -> None:
    data = write_prepared(tmp_path / "data", {"train": 1, "dev": 1})
    run = adapter_folder(tmp_path / "run", {
        "model": {"name": "Qwen/Qwen2.5-7B-Instruct", "quantization": "4bit"},
        "data": {"dir": str(data), "template": "think", "max_prompt_tokens": 1664,
                 "system": "compact", "item_history": 0},
        "evaluation": {"max_new_tokens": 640, "readout": "expected"}})
    found = run_defaults(run)
    assert (found.model, found.quantization, found.max_new_tokens, found.max_prompt_tokens,
            found.readout, found.template) == ("Qwen/Qwen2.5-7B-Instruct", "4bit", 640, 1664,
                                               "expected", "think")
    assert found.prompt == {"system": "compact", "item_history": 0}
    assert found.scale == (1.0, 5.0) and found.source("max_new_tokens").endswith("recipe.yaml")


def test_a_run_folder_reads_each_file_when_asked_and_skips_what_its_schema_refuses(
        tmp_path: Path) -> None:
    """RunFolder reads a file when asked for it: predict's defaults come from recipe.yaml even
    beside a corrupt run.json (which only a reader of run.json trips over); a recorded value
    the recipe schema refuses (a prompt budget of 0) counts as not recorded."""
    run = adapter_folder(tmp_path / "run", {"model": {"name": "org/base"},
                                             "data": {"template": "none", "max_prompt_tokens": 0},
                                             "evaluation": {"max_new_tokens": 64}})
    (run / "run.json").write_text("{not json")
    found = run_defaults(run)
    assert (found.model, found.template, found.max_new_tokens) == ("org/base", "none", 64)
    assert found.max_prompt_tokens is None
    folder = RunFolder(run)
    assert folder.is_run and folder.base == "org/base" and folder.section("lora") == {}
    with pytest.raises(InputError, match="malformed JSON"):
        folder.run.get("status")


def test_a_checkpoint_or_warm_up_adapter_serves_the_prompt_of_its_run(tmp_path: Path) -> None:
    """`predict --adapter RUN/checkpoint-N` (or RUN/warmup-adapter) reads the run's recipe.yaml:
    without it a GGUF-based run's checkpoint pointed at the package folder (no tokenizer) and a
    hub-based one was served the default prompt, not the one it was trained on. A folder of
    the same name outside a run has only its adapter config to go by."""
    run = adapter_folder(tmp_path / "run", {
        "model": {"name": "org/trained"}, "data": {"template": "none", "item_history": 5},
        "evaluation": {"max_new_tokens": 10, "readout": "expected"}})
    (run / "run.json").write_text(json.dumps({"status": "finished", "kind": "grpo"}))
    for inner in ("checkpoint-8", "warmup-adapter"):
        found = run_defaults(adapter_folder(run / inner))
        assert (found.model, found.template, found.max_new_tokens, found.readout) == (
            "org/trained", "none", 10, "expected")
        assert found.prompt == {"item_history": 5}
        assert found.source("template") == str(run / "recipe.yaml")
        folder = RunFolder(run / inner)
        assert folder.run["kind"] == "grpo" and not folder.is_run
    alone = run_defaults(adapter_folder(tmp_path / "elsewhere" / "checkpoint-8"))
    assert (alone.model, alone.template) == ("org/base", None)


def test_the_record_holds_the_whole_style_and_reads_back_tolerantly(tmp_path: Path) -> None:
    record = export_record({"data": {"template": "none", "stats": False, "max_history": 3,
                                     "max_prompt_tokens": 300},
                            "evaluation": {"readout": "text", "max_new_tokens": 96}},
                           "none", (1.0, 10.0))
    assert record["prompt"] == dataclasses.asdict(PromptStyle(stats=False, max_history=3))
    assert set(record["prompt"]) == set(STYLE_FIELDS)  # every field, whatever PromptStyle holds
    found = from_record({"kind": "merged", "predict": record}, tmp_path)
    assert PromptStyle(**found.prompt) == PromptStyle(stats=False, max_history=3)
    assert (found.template, found.max_prompt_tokens, found.max_new_tokens, found.readout,
            found.scale) == ("none", 300, 96, "text", (1.0, 10.0))
    # a record from before a field existed lacks it (the default then applies); an unknown
    # field (from a newer recone-lite) is ignored instead of failing PromptStyle(**...)
    older = {**record, "prompt": {"stats": False, "from_the_future": 1}}
    found = from_record({"kind": "merged", "predict": older}, tmp_path)
    assert PromptStyle(**found.prompt) == PromptStyle(stats=False)


def test_an_older_export_takes_the_copied_recipe_and_its_own_template(tmp_path: Path) -> None:
    """A merged folder exported before recone.json held `predict`: template and scale from
    recone.json, the rest from the recipe.yaml that export copied beside the weights."""
    folder = tmp_path / "merged"
    folder.mkdir()
    (folder / "recone.json").write_text(json.dumps(
        {"kind": "merged", "template": "none", "rating_scale": [1, 5]}))
    (folder / "recipe.yaml").write_text(yaml.safe_dump({
        "model": {"name": "base", "quantization": "4bit"},
        "data": {"template": "reczero", "system": "compact", "max_prompt_tokens": 600},
        "evaluation": {"max_new_tokens": 96, "readout": "expected"}}))
    found = export_defaults(str(folder))
    assert (found.template, found.scale, found.max_prompt_tokens, found.max_new_tokens,
            found.readout, found.prompt) == ("none", (1.0, 5.0), 600, 96, "expected",
                                            {"system": "compact"})
    assert found.model is None and found.quantization is None  # the folder is the model


def test_an_adapter_only_export_gives_its_base_and_trained_quantization(tmp_path: Path) -> None:
    record = {"kind": "adapter", "base_model": "org/base", "trained_quantization": "4bit",
              "predict": export_record({"data": {"template": "none"}}, "none", None)}
    folder = adapter_folder(tmp_path / "adapter", recone=record)
    found = run_defaults(folder)
    assert (found.model, found.quantization, found.template) == ("org/base", "4bit", "none")


def test_a_gguf_export_is_read_beside_the_file(tmp_path: Path) -> None:
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    (tmp_path / "m.recone.json").write_text(json.dumps(
        {"kind": "gguf", "predict": export_record({}, "think", (1.0, 5.0))}))
    assert export_defaults(str(tmp_path / "m.gguf")).template == "think"
    assert export_defaults("org/some-hub-model") == export_defaults(None)  # nothing recorded


def test_openai_fits_the_messages_to_the_runs_budget_with_its_bases_tokenizer(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """`--backend openai --model SERVED --adapter RUN`: the run gives the settings and its base
    the tokenizer, so the server gets the messages local prediction renders: the history cut
    to the 120-token budget, the compact system prompt, the run's answer length."""
    base = tiny_base(tmp_path / "base")
    data = write_prepared(tmp_path / "data", {"train": 1, "dev": 1})
    run = adapter_folder(tmp_path / "run", {
        "model": {"name": str(base)},
        "data": {"dir": str(data), "template": "none", "max_prompt_tokens": 120,
                 "system": "compact"},
        "evaluation": {"max_new_tokens": 7}})
    request = {"id": "a", "target": {"title": "Target"}, "history": [
        {"item": {"title": f"Film {i}"}, "rating": 4, "review": "fine " * 20} for i in range(6)]}
    requests = tmp_path / "requests.jsonl"
    requests.write_text(json.dumps(request) + "\n")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base)
    fitted = render_prompt(request, tokenizer, "none", (1.0, 5.0), 120,
                           PromptStyle(system="compact"))
    assert fitted.dropped_items > 0  # the budget cuts: the comparison below can fail
    with chat_server(reply=lambda messages: "<rate>4</rate>") as server:
        predict(str(requests), model="served", adapter=str(run), backend="openai",
                base_url=server.url, stdout=io.StringIO())
        predict(str(requests), model="served", backend="openai", base_url=server.url,
                stdout=io.StringIO(), max_new_tokens=7)  # no run: no tokenizer, no budget
    with_run, without = server.requests
    assert with_run["messages"] == fitted.messages and with_run["max_tokens"] == 7
    assert with_run["messages"] != without["messages"]
    assert "Film 0" in without["messages"][-1]["content"]  # sent whole
    err = capsys.readouterr().err
    assert f"prompts fitted to 120 tokens with the tokenizer of {base}" in err
    assert "the messages go whole, without the prompt budget" in err


def test_openai_with_a_run_still_needs_the_served_name(tmp_path: Path) -> None:
    from recone_lite.errors import InputError

    run = adapter_folder(tmp_path / "run", {"model": {"name": "org/base"}})
    requests = tmp_path / "r.jsonl"
    requests.write_text(json.dumps({"id": 1, "target": {"title": "x"}}) + "\n")
    with pytest.raises(InputError, match="--model names the served model") as caught:
        predict(str(requests), adapter=str(run), backend="openai", base_url="http://127.0.0.1:9")
    assert caught.value.field == "model"
