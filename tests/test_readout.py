"""The expected readout on the real SmolLM2 model: distributions, forced rows, and that the text
readout's output is unchanged by it."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from recone_lite.predict import predict
from recone_lite.readout import forward_distributions, normalise, rating_token_ids

CLI = [sys.executable, "-m", "recone_lite"]


def requests(n: int) -> list[dict[str, Any]]:
    return [
        {
            "id": f"q{i}",
            "rating": 1 + i % 5,
            "history": [{"item_id": "a", "item": {"title": "Fargo", "genres": ["Crime"]},
                         "rating": 5, "review": "Sharp."}],
            "target": {"title": f"Heat {i}", "genres": ["Crime", "Drama"]},
            "item_history": [{"user_id": "u9", "timestamp": 1, "rating": 4.0, "review": ""}],
            "stats": {"user_mean": 4.2, "user_count": 12, "item_mean": 3.9, "item_count": 40,
                      "global_mean": 3.5},
        }
        for i in range(n)
    ]


def run_predict(model_dir: Path, tmp_path: Path, readout: str) -> tuple[list[dict], Any]:
    path = tmp_path / "requests.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in requests(4)), encoding="utf-8")
    sink = io.StringIO()
    counts = predict(str(path), model=str(model_dir), max_new_tokens=12, batch_size=4,
                     readout=readout, stdout=sink)
    return [json.loads(line) for line in sink.getvalue().splitlines()], counts


@pytest.mark.slow
def test_expected_readout_forced_rows_and_text_unchanged(smollm2_dir: Path, tmp_path: Path):
    expected, counts = run_predict(smollm2_dir, tmp_path, "expected")
    text, _ = run_predict(smollm2_dir, tmp_path, "text")
    assert len(expected) == len(text) == 4
    for row, plain in zip(expected, text, strict=True):
        assert len(row["probs"]) == 5
        assert sum(row["probs"]) == pytest.approx(1.0, abs=1e-3)
        # greedy decoding: both readouts read the same completion
        assert row["completion"] == plain["completion"] and row["ok"] == plain["ok"]
        assert row["text_rating"] == plain["rating"]
        assert set(plain) == {"id", "rating", "ok", "completion", "tokens", "truth"}
        if row["ok"]:
            assert 1.0 <= row["rating"] <= 5.0 and "forced" not in row
        else:  # the untrained model rarely writes <rate>: read after an appended one, a failure
            assert row["rating"] is None and row["forced"] is True
            assert 1.0 <= row["forced_rating"] <= 5.0
    assert counts.forced == sum(not row["ok"] for row in expected)
    assert counts.parsed == sum(row["ok"] for row in expected)


@pytest.mark.slow
def test_forward_pass_matches_the_logits_generate_computed(smollm2_dir: Path):
    """The fallback forward pass (left-padded batch) reads the same distribution that
    `generate` computes for the next token."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    tokenizer.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32).eval()
    ids = rating_token_ids(tokenizer, (1.0, 5.0))
    assert len(set(ids)) == 5
    texts = ["<|im_start|>user\nRate Heat.<|im_end|>\n<|im_start|>assistant\n<rate>",
             "<|im_start|>user\nA much longer question about a film, Fargo, and how a user with "
             "sharp tastes would rate it.<|im_end|>\n<|im_start|>assistant\n<match>ok</match>"
             "\n<rate>"]
    read = forward_distributions(model, tokenizer, texts, ids)
    for text, (probs, mass) in zip(texts, read, strict=True):
        inputs = tokenizer([text], return_tensors="pt", add_special_tokens=False)
        with torch.inference_mode():
            out = model.generate(**inputs, max_new_tokens=1, do_sample=False,
                                 return_dict_in_generate=True, output_logits=True,
                                 pad_token_id=tokenizer.pad_token_id)
        reference, reference_mass = normalise(out.logits[0][0], ids)
        assert probs == pytest.approx(reference, abs=1e-4)
        assert mass == pytest.approx(reference_mass, abs=1e-4)
        assert sum(probs) == pytest.approx(1.0, abs=1e-6)


def test_expected_readout_needs_the_hf_backend(tmp_path: Path):
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps(requests(1)[0]) + "\n", encoding="utf-8")
    result = subprocess.run(
        [*CLI, "predict", str(path), "--backend", "openai", "--base-url", "http://127.0.0.1:9/v1",
         "--model", "m", "--readout", "expected"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "--readout expected needs --backend hf" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert result.stdout == ""


def test_expected_readout_refuses_a_half_star_scale(tmp_path: Path):
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps(requests(1)[0]) + "\n", encoding="utf-8")
    result = subprocess.run(
        [*CLI, "predict", str(path), "--model", str(tmp_path / "no-model"), "--scale", "0.5,5",
         "--readout", "expected"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "whole numbers" in result.stderr
