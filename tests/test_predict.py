"""`recone-lite predict`: the row format, bad input, resume, streaming into `head`, and a kill.

The openai backend runs against a local chat-completions server (tests/chat_server.py), which
controls the answers exactly; the hf backend runs the SmolLM2 GGUF (slow) or a tiny random Llama
with SmolLM2's tokenizer (fast to load, for the plumbing: resume and kill).
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from chat_server import chat_server

from recone_lite.errors import InputError
from recone_lite.predict import predict
from recone_lite.rewards import parse_rating

CLI = [sys.executable, "-m", "recone_lite"]


def request(i: int, rating: float | None = 4.0, history: int = 2) -> dict[str, Any]:
    past = [
        {
            "item_id": f"h{j}",
            "timestamp": 1000 + j,
            "item": {"title": f"Album {j}", "genre": ["jazz", "rock"][j % 2]},
            "rating": 1 + (i + j) % 5,
            "review": ["Loved it.", "Too loud.", "Fine."][j % 3],
        }
        for j in range(history)
    ]
    row: dict[str, Any] = {"id": f"r{i}", "history": past, "target": {"title": f"Target {i}"}}
    if rating is not None:
        row["rating"] = rating
    return row


def write_requests(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def by_target(messages) -> str:
    """Answer with the target's number mod 5 + 1 as the rating, except for numbers ending in 3."""
    number = int(messages[-1]["content"].split("Target ")[1].split()[0])
    return (
        "no idea"
        if number % 10 == 3
        else f"<analyze user>x</analyze user><rate>{number % 5 + 1}</rate>"
    )


def run_openai(tmp_path: Path, rows: list[dict[str, Any]], server, **options) -> list[dict]:
    path = write_requests(tmp_path / "requests.jsonl", rows)
    out = io.StringIO()
    predict(str(path), model="served", backend="openai", base_url=server.url, stdout=out, **options)
    return lines(out.getvalue())


# --- the row format (openai backend, exact answers) --------------------------------------------


def test_rows_in_input_order_with_parsed_ratings_and_retries(tmp_path):
    rows = [request(i, rating=None if i == 5 else 3.0) for i in range(12)]
    with chat_server(reply=by_target, failures=[429, 500]) as server:
        out = run_openai(tmp_path, rows, server, concurrency=4, max_new_tokens=32)
    assert server.statuses[:2] == [429, 500] and len(server.statuses) == 14  # 12 + 2 retries
    assert [row["id"] for row in out] == [f"r{i}" for i in range(12)]
    for i, row in enumerate(out):
        assert list(row)[:5] == ["id", "rating", "ok", "completion", "tokens"]
        assert row["rating"] == parse_rating(row["completion"])  # the one parser, exactly
        assert row["ok"] is (row["rating"] is not None)
        assert ("truth" in row) is (i != 5)
    assert out[3] == {
        "id": "r3",
        "rating": None,
        "ok": False,
        "completion": "no idea",
        "tokens": 2,
        "truth": 3.0,
    }
    assert out[4]["rating"] == 5.0 and out[4]["ok"] is True
    assert server.requests[0]["max_tokens"] == 32 and server.requests[0]["temperature"] == 0.0
    system = server.requests[0]["messages"][0]
    assert system["role"] == "system" and "<analyze user>" in system["content"]


def test_samples_give_mean_ratings_and_spread(tmp_path):
    answers = iter(["<rate>4</rate>", "<rate>5</rate>", "hmm"] * 2)
    with chat_server(reply=lambda messages: next(answers)) as server:
        out = run_openai(
            tmp_path,
            [request(0), request(1)],
            server,
            samples=3,
            temperature=1.0,
            completion=False,
            concurrency=1,
        )
    assert out[0] == {
        "id": "r0",
        "rating": 4.5,
        "ok": True,
        "tokens": 3,
        "truth": 4.0,
        "ratings": [4.0, 5.0, None],
        "spread": 0.5,
    }
    assert len(server.requests) == 6 and server.requests[0]["temperature"] == 1.0


def test_samples_need_a_temperature(tmp_path):
    with pytest.raises(InputError, match="needs --temperature > 0"):
        predict(
            str(write_requests(tmp_path / "r.jsonl", [request(0)])),
            model="m",
            backend="openai",
            base_url="http://127.0.0.1:9/v1",
            samples=3,
        )


def test_a_failed_request_is_a_row_with_its_error(tmp_path):
    with chat_server(failures=[500, 500, 500]) as server:
        out = run_openai(tmp_path, [request(0), request(1)], server, concurrency=1)
    # max_retries is 4: 3 failures then success for r0; r1 answered
    assert [row["ok"] for row in out] == [True, True]
    with chat_server(failures=[500] * 5) as server:
        out = run_openai(tmp_path, [request(0), request(1)], server, concurrency=1)
    assert out[0]["ok"] is False and out[0]["error"].startswith("500")
    assert out[0]["rating"] is None and out[1]["ok"] is True


def test_scale_comes_from_a_prepared_folder(tmp_path):
    (tmp_path / "manifest.json").write_text('{"rating_scale": [1, 10]}')
    with chat_server(reply=lambda m: "<rate>8/10</rate>") as server:
        out = run_openai(tmp_path, [request(0)], server)
    assert out[0]["rating"] == 8.0
    assert "from 1 to 10" in server.requests[0]["messages"][1]["content"]


# --- bad input ----------------------------------------------------------------------------------


def test_malformed_line_names_the_line_or_is_skipped(tmp_path):
    path = tmp_path / "requests.jsonl"
    good = [json.dumps(request(i)) for i in range(3)]
    path.write_text("\n".join([good[0], "{oops", good[1], '{"id": "x"}', good[1], good[2]]) + "\n")
    with chat_server() as server:
        with pytest.raises(InputError, match=r"requests.jsonl:2: malformed JSON"):
            predict(
                str(path), model="m", backend="openai", base_url=server.url, stdout=io.StringIO()
            )
        out = io.StringIO()
        counts = predict(
            str(path), model="m", backend="openai", base_url=server.url, stdout=out, skip_bad=True
        )
    assert [row["id"] for row in lines(out.getvalue())] == ["r0", "r1", "r2"]
    assert counts.bad == 3  # malformed JSON, no target, a repeated id


def test_bad_lines_exit_2_with_one_line(tmp_path):
    path = tmp_path / "requests.jsonl"
    path.write_text(json.dumps(request(0)) + "\n" + '{"id": 1, "target": "nope"}\n')
    with chat_server() as server:
        result = subprocess.run(
            [
                *CLI,
                "predict",
                str(path),
                "--backend",
                "openai",
                "--base-url",
                server.url,
                "--model",
                "m",
            ],
            capture_output=True,
            text=True,
        )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: {path}:2: target: expected an object of item meta"
    )


def test_existing_out_needs_resume_and_resume_needs_out(tmp_path):
    path = write_requests(tmp_path / "r.jsonl", [request(0)])
    out = tmp_path / "out.jsonl"
    out.write_text('{"id": "r0", "rating": 4.0, "ok": true}\n')
    options = {"model": "m", "backend": "openai", "base_url": "http://127.0.0.1:9/v1"}
    with pytest.raises(InputError, match="exists; pass --resume"):
        predict(str(path), out=str(out), **options)
    with pytest.raises(InputError, match="--resume needs --out"):
        predict(str(path), resume=True, **options)
    with pytest.raises(InputError, match="needs --base-url"):
        predict(str(path), model="m", backend="openai")
    with pytest.raises(InputError, match="no such adapter folder"):
        predict(str(path), model="m", adapter=str(tmp_path / "nope"))
    with pytest.raises(InputError, match="quantization: Input should be"):
        predict(str(path), model="m", quantization="3bit")


def test_resume_drops_a_partial_line_and_appends_the_rest(tmp_path):
    rows = [request(i) for i in range(8)]
    path = write_requests(tmp_path / "requests.jsonl", rows)
    out = tmp_path / "out.jsonl"
    with chat_server(reply=by_target) as server:
        predict(str(path), model="m", backend="openai", base_url=server.url, out=str(out))
        full = out.read_text()
        kept = full.splitlines(keepends=True)[:3]
        out.write_text("".join(kept) + full.splitlines(keepends=True)[3][:20])  # a kill mid-line
        counts = predict(
            str(path), model="m", backend="openai", base_url=server.url, out=str(out), resume=True
        )
    assert counts.resumed == 3 and counts.rows == 5
    assert out.read_text() == full
    assert len(server.requests) == 8 + 5


def test_stdin_and_a_closed_pipe(tmp_path):
    rows = [request(i) for i in range(30)]
    long = "word " * 1000 + "<rate>3</rate>"  # 30 such rows overflow the pipe's buffer
    with chat_server(reply=lambda messages: long) as server:
        shell = (
            f"cat {write_requests(tmp_path / 'r.jsonl', rows)} | "
            f"{sys.executable} -m recone_lite predict --backend openai --base-url {server.url} "
            "--model m --concurrency 2 | head -n 3; echo rc=${PIPESTATUS[1]}"
        )
        result = subprocess.run(["bash", "-c", shell], capture_output=True, text=True, timeout=120)
    printed = result.stdout.splitlines()
    assert [json.loads(line)["id"] for line in printed[:3]] == ["r0", "r1", "r2"]
    assert printed[3] == "rc=0", result.stderr
    assert "Traceback" not in result.stderr and "Error" not in result.stderr
    assert len(server.requests) < 30  # it stopped once the reader was gone


# --- the hf backend (real model: slow) ----------------------------------------------------------


@pytest.mark.slow
def test_pipeline_into_head_with_the_smollm2_gguf(tmp_path, smollm2_spec):
    """The issue's acceptance: `cat test.jsonl | recone-lite predict --model <gguf>
    --max-new-tokens 64 | head -n 3` works on CPU and exits 0."""
    path = write_requests(tmp_path / "test.jsonl", [request(i, history=1) for i in range(3)])
    shell = (
        f"set -o pipefail; cat {path} | {sys.executable} -m recone_lite predict "
        f"--model {smollm2_spec.name} --max-new-tokens 64 | head -n 3"
    )
    result = subprocess.run(["bash", "-c", shell], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr
    rows = lines(result.stdout)
    assert [row["id"] for row in rows] == ["r0", "r1", "r2"]
    for row in rows:
        assert row["rating"] == parse_rating(row["completion"])
        assert row["ok"] is (row["rating"] is not None)
        assert 0 < row["tokens"] <= 64 and row["truth"] == 4.0
    assert "via transformers on cpu (float32)" in " ".join(result.stderr.split())


@pytest.mark.slow
def test_kill_then_resume_every_id_exactly_once(tmp_path, tiny_dir):
    """SIGKILL mid-run, then --resume: every id once, in input order. The first run reads stdin
    from a pipe that gets only half of the requests, so it cannot finish before the kill."""
    rows = [request(i) for i in range(40)]
    out = tmp_path / "out.jsonl"
    options = [
        "--model",
        str(tiny_dir),
        "--out",
        str(out),
        "--batch-size",
        "2",
        "--max-new-tokens",
        "16",
        "--template",
        "none",
    ]
    process = subprocess.Popen(
        [*CLI, "predict", "-", *options],
        stdin=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    process.stdin.write("".join(json.dumps(r) + "\n" for r in rows[:20]))
    process.stdin.flush()
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
        if out.exists() and out.read_text().count("\n") >= 6:
            break
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    written = out.read_text().count("\n")
    assert process.returncode == -signal.SIGKILL and 6 <= written <= 20, written
    path = write_requests(tmp_path / "requests.jsonl", rows)
    result = subprocess.run(
        [*CLI, "predict", str(path), *options, "--resume"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    ids = [row["id"] for row in lines(out.read_text())]
    assert ids == [f"r{i}" for i in range(40)]  # every id once, in input order
    assert f"{written} already in" in " ".join(result.stderr.split())


@pytest.mark.slow
def test_left_padding_changes_no_completion(smollm2_dir):
    from recone_lite.generate import hf_backend
    from recone_lite.models import ModelSpec, load_model

    model, tokenizer = load_model(ModelSpec(name=str(smollm2_dir)))
    assert tokenizer.padding_side == "left"
    rows = [request(0, history=0), request(1, history=2)]
    greedy = hf_backend(model, tokenizer, template="none", max_new_tokens=8, batch_size=2)
    together = [samples[0] for samples in greedy(rows)]
    alone = [next(greedy([row]))[0] for row in rows]
    assert [s.text for s in together] == [s.text for s in alone]
    assert all(0 < s.tokens <= 8 for s in together)


@pytest.mark.slow
def test_hf_predict_with_samples_in_process(tmp_path, tiny_dir):
    path = write_requests(tmp_path / "r.jsonl", [request(i) for i in range(3)])
    out = io.StringIO()
    counts = predict(
        str(path),
        model=str(tiny_dir),
        max_new_tokens=8,
        temperature=1.0,
        samples=3,
        seed=1,
        batch_size=2,
        stdout=out,
    )
    rows = lines(out.getvalue())
    assert counts.rows == 3 and [row["id"] for row in rows] == ["r0", "r1", "r2"]
    for row in rows:
        assert len(row["completion"]) == 3 and len(set(row["completion"])) > 1  # sampled
        assert row["ratings"] == [parse_rating(text) for text in row["completion"]]
        assert row["ok"] is (row["rating"] is not None) and row["tokens"] <= 3 * 8
