"""The expected readout on the real SmolLM2 model (hf backend: distributions, forced rows) and on
the openai backend (logprobs from a scripted server), and that the text readout's output is
unchanged by it."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from chat_server import chat_server, logprob_tokens

from recone_lite.predict import predict
from recone_lite.readout import (
    TOP_LOGPROBS,
    cached_distributions,
    forward_distributions,
    normalise,
    rating_token_ids,
)

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


@pytest.mark.slow
def test_forced_rows_from_the_cache_match_a_full_forward_pass(smollm2_dir: Path):
    """A forced row read from generate's cache (`<rate>` appended after the completion, the end
    of sequence and the padding after it masked) gives the distribution of a forward pass over
    prompt + completion + "\\n<rate>", for rows that ran to the limit and rows that ended early."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    tokenizer.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32).eval()
    ids = rating_token_ids(tokenizer, (1.0, 5.0))
    prompts = [tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                             add_generation_prompt=True)
               for text in ("Say yes.", "Reply with one word: is Fargo a good film?",
                            "Tell me a long story about a film critic who rates films.")]
    inputs = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    eos = tokenizer.eos_token_id
    with torch.inference_mode():
        output = model.generate(**inputs, max_new_tokens=24, do_sample=False,
                                return_dict_in_generate=True, pad_token_id=tokenizer.pad_token_id,
                                eos_token_id=eos)
    generated = output.sequences[:, inputs["input_ids"].shape[1]:]
    kept = [int((row == eos).int().argmax()) if (row == eos).any() else len(row)
            for row in generated]
    assert min(kept) < generated.shape[1] == max(kept)  # one row ended early, one ran to the end
    read = cached_distributions(model, tokenizer, output, inputs["attention_mask"], kept,
                                [0, 1, 2], ids)
    compared = 0
    for i, (probs, mass) in enumerate(read):
        completion = tokenizer.decode(generated[i][: kept[i]], skip_special_tokens=True)
        text = prompts[i] + completion + "\n<rate>"
        ours = tokenizer(prompts[i], add_special_tokens=False)["input_ids"] + \
            generated[i][: kept[i]].tolist() + tokenizer("\n<rate>", add_special_tokens=False)[
                "input_ids"]
        if tokenizer(text, add_special_tokens=False)["input_ids"] != ours:
            continue  # the text does not tokenize back to the same ids: not the same input
        compared += 1
        (reference, reference_mass), = forward_distributions(model, tokenizer, [text], ids)
        assert probs == pytest.approx(reference, abs=1e-3)
        assert mass == pytest.approx(reference_mass, abs=1e-3)
    assert compared >= 2


# --- the openai backend: logprobs from a scripted server (fast: no model) ----------------------

RATE_PROBS = {"4": 0.5, "5": 0.25, "3": 0.125, "four": 0.125}  # "four" is no rating token


def scripted(messages: list[dict[str, Any]]) -> str | tuple[str, list[dict[str, Any]]]:
    """Heat 0: a rating with scripted logprobs (tokens that do not line up with `<rate>`); Heat 1:
    two `<rate>` blocks, the last one read; Heat 2: no `<rate>`; Heat 3: a `<rate>` merged with
    its digit into one token, so that no token starts right after it."""
    number = int(messages[-1]["content"].split("Heat ")[1].split()[0])
    if number == 0:
        steps = [("<match>", {}), ("ok", {}), ("</match>\n<", {}), ("rate", {}), (">", {}),
                 ("4", RATE_PROBS), ("</rate>", {})]
    elif number == 1:
        steps = [("<rate>", {}), ("2", {"2": 0.9, "1": 0.1}), ("</rate>", {}), (" <rate>", {}),
                 ("5", {"5": 0.6, "4": 0.3, "2": 0.1}), ("</rate>", {})]
    elif number == 2:
        return "I cannot say."
    else:
        steps = [("<rate>4", {"<rate>4": 0.7, "<rate>5": 0.3}), ("</rate>", {})]
    return "".join(t for t, _ in steps), logprob_tokens(steps)


def run_openai(tmp_path: Path, server: Any, readout: str, **options: Any) -> tuple[list[dict], Any]:
    path = tmp_path / "requests.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in requests(4)), encoding="utf-8")
    sink = io.StringIO()
    counts = predict(str(path), model="served", backend="openai", base_url=server.url,
                     readout=readout, stdout=sink, **options)
    return [json.loads(line) for line in sink.getvalue().splitlines()], counts


def test_openai_expected_readout_reads_the_logprobs_after_rate(tmp_path: Path):
    with chat_server(reply=scripted) as server:
        rows, counts = run_openai(tmp_path, server, "expected")
    assert all(body["logprobs"] is True and body["top_logprobs"] == TOP_LOGPROBS
               for body in server.requests)
    read, last, missing, unread = rows
    # probabilities sum to 1 and follow the scripted logprobs, renormalised over 1..5
    assert sum(read["probs"]) == pytest.approx(1.0, abs=1e-3)
    assert read["probs"] == pytest.approx([0.0, 0.0, 1 / 7, 4 / 7, 2 / 7], abs=1e-4)
    assert read["rating"] == pytest.approx((3 + 16 + 10) / 7, abs=1e-4)
    assert 1.0 <= read["rating"] <= 5.0
    assert read["ok"] is True and read["text_rating"] == 4.0 and "forced" not in read
    # two <rate> blocks: the distribution after the last one, as parse_rating reads the last
    assert last["probs"] == pytest.approx([0.0, 0.1, 0.0, 0.3, 0.6], abs=1e-4)
    assert last["text_rating"] == 5.0 and last["rating"] == pytest.approx(4.4, abs=1e-4)
    # no <rate>: a failure with no distribution, not forced (that would need a second request)
    assert missing["rating"] is None and missing["ok"] is False and missing["probs"] is None
    assert "forced" not in missing and "forced_rating" not in missing
    # a <rate> the logprobs cannot read: no rating; ok is what the text says
    assert unread["rating"] is None and unread["probs"] is None
    assert unread["ok"] is True and unread["text_rating"] == 4.0
    assert counts.forced == 0 and counts.parsed == 3 and counts.rows == 4


def test_openai_expected_readout_with_samples(tmp_path: Path):
    """k samples: the rating is the mean of the readable parsed samples' expected values."""
    answers = iter([scripted([{"content": "Heat 0"}]), "no idea"] * 4)
    with chat_server(reply=lambda messages: next(answers)) as server:
        rows, counts = run_openai(tmp_path, server, "expected", samples=2, temperature=1.0,
                                  concurrency=1)
    for row in rows:
        assert row["ratings"] == [4.0, None] and row["ok"] is True
        assert row["probs"] == pytest.approx([0.0, 0.0, 1 / 7, 4 / 7, 2 / 7], abs=1e-4)
        assert row["rating"] == pytest.approx(29 / 7, abs=1e-4)
    assert counts.forced == 0


def test_openai_server_without_logprobs_warns_once(tmp_path: Path, capsys):
    with chat_server(reply=scripted, logprobs=False) as server:
        rows, counts = run_openai(tmp_path, server, "expected")
    assert all(row["rating"] is None and row["probs"] is None for row in rows)
    assert counts.parsed == 3 and counts.forced == 0
    assert capsys.readouterr().err.count("returned no logprobs") == 1


def test_openai_text_readout_unchanged(tmp_path: Path):
    with chat_server(reply=scripted) as server:
        text, _ = run_openai(tmp_path, server, "text")
    assert all("logprobs" not in body and "top_logprobs" not in body for body in server.requests)
    with chat_server(reply=scripted) as server:
        expected, _ = run_openai(tmp_path, server, "expected")
    for plain, row in zip(text, expected, strict=True):
        assert set(plain) == {"id", "rating", "ok", "completion", "tokens", "truth"}
        assert plain["completion"] == row["completion"] and plain["ok"] == row["ok"]
        assert plain["rating"] == row["text_rating"]


def test_expected_readout_on_the_openai_backend_from_the_cli(tmp_path: Path):
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps(requests(1)[0]) + "\n", encoding="utf-8")
    with chat_server(reply=scripted) as server:
        result = subprocess.run(
            [*CLI, "predict", str(path), "--backend", "openai", "--base-url", server.url,
             "--model", "m", "--readout", "expected"], capture_output=True, text=True,
            timeout=120)
    assert result.returncode == 0, result.stderr
    row = json.loads(result.stdout)
    assert row["probs"] == pytest.approx([0.0, 0.0, 1 / 7, 4 / 7, 2 / 7], abs=1e-4)
    # a scale the readout cannot read is still refused, before any request
    with chat_server(reply=scripted) as server:
        result = subprocess.run(
            [*CLI, "predict", str(path), "--backend", "openai", "--base-url", server.url,
             "--model", "m", "--scale", "0.5,5", "--readout", "expected"],
            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "whole numbers" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and result.stdout == ""
    assert server.requests == []


def test_expected_readout_refuses_a_half_star_scale(tmp_path: Path):
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps(requests(1)[0]) + "\n", encoding="utf-8")
    result = subprocess.run(
        [*CLI, "predict", str(path), "--model", str(tmp_path / "no-model"), "--scale", "0.5,5",
         "--readout", "expected"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "whole numbers" in result.stderr
