"""`recone-lite sft` on trace files: which lines are kept and why not, `--strict`, and (slow, the
real SmolLM2 GGUF) a few SFT steps that raise the dev format rate, then the RecOne chain into
GRPO via `--init-adapter`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from training_helpers import adapter_tensors, main, write_prepared, write_recipe

from recone_lite.config import load_recipe
from recone_lite.errors import InputError
from recone_lite.prompts import build_messages
from recone_lite.sft import read_traces
from recone_lite.training import load_data

RATE = "<rate>{}</rate>"


def trace(example: dict, answer: str, kind: str = "template") -> dict:
    messages = build_messages(example, "none", (1.0, 5.0))
    return {"id": example["id"], "rating": example["rating"], "kind": kind,
            "messages": [*messages, {"role": "assistant", "content": answer}]}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_prepared(tmp_path_factory.mktemp("data") / "tiny")


@pytest.fixture(scope="module")
def traces(prepared: Path) -> Path:
    """Good template traces for every cold-start example, then one bad line of each kind."""
    rows = [json.loads(line) for line in (prepared / "coldstart.jsonl").read_text().splitlines()]
    dev = json.loads((prepared / "dev.jsonl").read_text().splitlines()[0])
    lines = [trace(e, RATE.format(int(e["rating"]))) for e in rows]
    first = rows[0]
    lines += [
        trace(first, "I think a 4."),  # bad_format
        trace(first, RATE.format(1 if first["rating"] > 2 else 5)),  # wrong_rating
        {**trace(first, RATE.format(int(first["rating"]))), "rating": 1.0},  # wrong_rating
        trace(first, "<rate>4</rate>", "rationalized") | {"messages": [
            {"role": "assistant", "content": "As the hint says, <rate>4</rate>"}]},  # bad_format
        {"id": "nobody", "rating": 4.0, "messages": [{"role": "assistant",
                                                       "content": "<rate>4</rate>"}]},
        trace(dev, RATE.format(int(dev["rating"]))),  # held_out_id
        {"id": first["id"], "rating": first["rating"], "messages": [{"role": "user",
                                                                     "content": "u"}]},
    ]
    path = prepared / "traces.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def sft_recipe(tmp: Path, prepared: Path, out: Path, model: Path | str = "smollm2-135m-gguf",
               **sections) -> Path:
    return write_recipe(
        tmp / "sft.yaml", prepared, out, model, kind="sft", grpo={},
        sft={"max_steps": 8, "learning_rate": 2e-3, "per_device_train_batch_size": 4,
             "logging_steps": 2, "save_steps": 4, "report_to": "none"},
        **sections,
    )


def test_rejected_lines_are_counted_and_strict_refuses_them(
    prepared: Path, traces: Path, tmp_path: Path
) -> None:
    recipe = load_recipe(str(sft_recipe(tmp_path, prepared, tmp_path / "run")))
    data = load_data(recipe.data, {"dev": 4}, seed=0)
    kept, counts = read_traces(traces, recipe, data, strict=False)
    assert len(kept) == 24 and counts["kept:template"] == 24
    assert counts["bad_format"] == 2 and counts["wrong_rating"] == 2
    assert counts["unknown_id"] == 1 and counts["held_out_id"] == 1 and counts["no_answer"] == 1
    with pytest.raises(InputError, match=r"traces.jsonl:25: rejected trace \(bad_format\)"):
        read_traces(traces, recipe, data, strict=True)


def test_a_leaked_hint_is_rejected(prepared: Path, tmp_path: Path) -> None:
    example = json.loads((prepared / "coldstart.jsonl").read_text().splitlines()[0])
    recipe = load_recipe(str(sft_recipe(tmp_path, prepared, tmp_path / "run")))
    recipe = recipe.model_copy(update={"data": recipe.data.model_copy(
        update={"template": "think"})})
    leak = f"<think>We are told the answer.</think><rate>{int(example['rating'])}</rate>"
    path = tmp_path / "t.jsonl"
    path.write_text(json.dumps(trace(example, leak, "rationalized")) + "\n"
                    + json.dumps(trace(example, leak.replace("We are told", "Fits"))) + "\n")
    data = load_data(recipe.data, {"dev": 1}, seed=0)
    kept, counts = read_traces(path, recipe, data, strict=False)
    assert len(kept) == 1 and counts["leaked_hint"] == 1


@pytest.mark.slow
def test_sft_raises_the_format_rate_then_starts_grpo(
    prepared: Path, traces: Path, smollm2_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "sft"
    recipe = sft_recipe(tmp_path, prepared, out, smollm2_dir)
    code, _, err = main(capsys, "sft", "--traces", traces, "--recipe", recipe)
    assert code == 0, err
    run = json.loads((out / "run.json").read_text())
    before, after = run["dev_before"]["format_rate"], run["dev_metrics"]["format_rate"]
    with capsys.disabled():
        print(f"\ndev format rate: {before} before SFT, {after} after")
    assert after > before and after >= 0.5
    assert run["trace_counts"]["bad_format"] == 2 and run["global_step"] == 8
    assert (out / "adapter_config.json").is_file() and (out / "checkpoint-4").is_dir()

    grpo_out = tmp_path / "grpo"
    recipe = write_recipe(tmp_path / "g.yaml", prepared, grpo_out, smollm2_dir,
                          grpo={"max_steps": 1, "save_steps": 10}, evaluation={"at_start": False})
    code, _, err = main(capsys, "train", "--recipe", recipe, "--init-adapter", out)
    assert code == 0, err
    chained = json.loads((grpo_out / "run.json").read_text())
    assert chained["status"] == "finished" and chained["init_adapter"] == str(out)
    assert chained["dev_metrics"]["format_rate"] >= 0.5  # starts from the SFT adapter's format
    assert set(adapter_tensors(grpo_out)) == set(adapter_tensors(out))
