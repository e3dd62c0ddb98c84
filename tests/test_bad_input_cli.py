"""Issue 15's "one line where a traceback was": each case through the real command line, on real
files, with a real (tiny) model or a scripted local chat server. Each ends in one `error:` line
naming file, line and field where there is one, exits 2 (bad input) or 1 (runtime failure), and
leaves nothing half-written; and the mission's two shell lines work as written.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from chat_server import chat_server
from data_helpers import write_lines
from training_helpers import write_prepared

SECRETS = ("sk-proj-abcdefgh12345678", "hunter2", "tok_abcdef123456", "my-local-key-123")
LEAKY = (f"upstream refused key {SECRETS[0]} via https://bob:{SECRETS[1]}@proxy.local/v1 "
         f"(Authorization: Bearer {SECRETS[2]}; echo {SECRETS[3]})")


def run(*args: Any, stdin: bytes | None = None, env: dict[str, str] | None = None,
        cwd: Path | None = None) -> subprocess.CompletedProcess:
    """`python -m recone_lite ARGS` as a shell user runs it; output decoded as text."""
    result = subprocess.run([sys.executable, "-m", "recone_lite", *map(str, args)], input=stdin,
                            capture_output=True, timeout=300, cwd=cwd,
                            env={**os.environ, **(env or {})})
    return subprocess.CompletedProcess(result.args, result.returncode,
                                       result.stdout.decode("utf-8", "replace"),
                                       result.stderr.decode("utf-8", "replace"))


def error_line(result: subprocess.CompletedProcess, code: int, *parts: str) -> str:
    """The one `error:` line (the last on stderr); the exit code and no traceback checked."""
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: "), result.stderr
    for part in parts:
        assert part in last, (part, last)
    return last


def request(i: int) -> dict[str, Any]:
    return {"id": f"r{i}", "history": [], "target": {"title": f"Target {i}"}, "rating": 4.0}


def requests_file(path: Path, n: int = 2) -> Path:
    return write_lines(path, [json.dumps(request(i)) for i in range(n)])


def free_port() -> int:
    with socket.socket() as probe:  # a port nobody listens on once closed
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    """A 2-layer random Llama with a BPE tokenizer trained here (test_export's): quick to load."""
    from test_export import tiny_base

    return tiny_base(tmp_path_factory.mktemp("tiny") / "base")


# --- predict: --out checked before a model loads -----------------------------------------------


def test_out_in_a_missing_folder_or_onto_a_folder(tmp_path: Path) -> None:
    requests = requests_file(tmp_path / "r.jsonl")
    (tmp_path / "model").mkdir()  # not even a model: the --out check comes first
    missing = run("predict", requests, "--model", tmp_path / "model",
                  "--out", tmp_path / "nowhere" / "p.jsonl")
    error_line(missing, 2, "nowhere/p.jsonl: no such folder")
    folder = run("predict", requests, "--model", tmp_path / "model", "--out", tmp_path / "model")
    error_line(folder, 2, "model: is a folder; --out takes a file name")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "r.jsonl"]


def test_model_folder_without_a_tokenizer(tmp_path: Path, tiny_model: Path) -> None:
    weights = tmp_path / "weights-only"
    weights.mkdir()
    for name in ("config.json", "model.safetensors"):
        (weights / name).write_bytes((tiny_model / name).read_bytes())
    result = run("predict", requests_file(tmp_path / "r.jsonl"), "--model", weights,
                 "--out", tmp_path / "p.jsonl")
    error_line(result, 2, "model: no tokenizer in the model folder", "tokenizer.json")
    assert not (tmp_path / "p.jsonl").exists()


def test_non_utf8_input_names_its_line(tmp_path: Path) -> None:
    good = json.dumps(request(0)).encode()
    bad = json.dumps(request(1)).encode().replace(b"Target", b"Caf\xe9")
    with chat_server() as server:
        # the first line is read before the backend starts: nothing sent, nothing written
        first = run("predict", "--backend", "openai", "--base-url", server.url, "--model", "m",
                    "--out", tmp_path / "p.jsonl", stdin=bad + b"\n" + good + b"\n")
        error_line(first, 2, "-:1: not UTF-8 (byte 0xe9")
        assert not server.requests and not (tmp_path / "p.jsonl").exists()
        # a later line: any rows before it are whole lines (the backend reads ahead, so here
        # none), and --resume continues after a fix
        path = tmp_path / "r.jsonl"
        path.write_bytes(good + b"\n" + bad + b"\n")
        later = run("predict", path, "--backend", "openai", "--base-url", server.url,
                    "--model", "m", "--out", tmp_path / "p.jsonl", "--concurrency", "1")
        error_line(later, 2, "r.jsonl:2: not UTF-8 (byte 0xe9 at column")
        out = tmp_path / "p.jsonl"
        rows = out.read_text().splitlines() if out.exists() else []
        assert all(json.loads(row)["id"] == "r0" for row in rows)
        assert not out.exists() or out.read_text().endswith("\n")
        skipped = run("predict", path, "--backend", "openai", "--base-url", server.url,
                      "--model", "m", "--skip-bad")
        assert skipped.returncode == 0, skipped.stderr
        assert "1 bad lines skipped" in skipped.stderr and len(skipped.stdout.splitlines()) == 1


# --- predict and traces against a failing server -------------------------------------------------


def test_all_failed_predict_exits_1_and_writes_nothing(tmp_path: Path) -> None:
    requests = requests_file(tmp_path / "r.jsonl")
    out = tmp_path / "p.jsonl"
    with chat_server(failures=[500] * 20) as server:
        result = run("predict", requests, "--backend", "openai", "--base-url", server.url,
                     "--model", "m", "--out", out)
    error_line(result, 1, "predict: all 2 requests failed (first: 500: ", "injected 500)",
               f"nothing added to {out}")
    assert "predict: 2 rows, 0 parsed" in result.stderr  # the summary line still comes
    assert not out.exists()


def test_closed_port_leaves_no_out_and_the_rerun_works(tmp_path: Path) -> None:
    requests = requests_file(tmp_path / "r.jsonl", 1)
    out = tmp_path / "p.jsonl"
    closed = run("predict", requests, "--backend", "openai", "--model", "m", "--out", out,
                 "--base-url", f"http://127.0.0.1:{free_port()}/v1")
    error_line(closed, 1, "cannot reach http://127.0.0.1:")
    assert not out.exists()
    out.write_text("")  # an empty leftover (from an older version) does not block either
    with chat_server() as server:
        rerun = run("predict", requests, "--backend", "openai", "--base-url", server.url,
                    "--model", "m", "--out", out)
    assert rerun.returncode == 0, rerun.stderr
    assert [json.loads(line)["id"] for line in out.read_text().splitlines()] == ["r0"]


def test_error_bodies_are_redacted_in_rows_and_messages(tmp_path: Path) -> None:
    requests = requests_file(tmp_path / "r.jsonl")
    env = {"OPENAI_API_KEY": SECRETS[3]}
    with chat_server(failures=[500] * 5, error_message=LEAKY) as server:  # r0's 5 tries fail
        result = run("predict", requests, "--backend", "openai", "--base-url", server.url,
                     "--model", "m", "--concurrency", "1", env=env)
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert rows[0]["ok"] is False and rows[1]["ok"] is True
    assert "[redacted]" in rows[0]["error"] and "proxy.local" in rows[0]["error"]
    assert not any(secret in result.stdout + result.stderr for secret in SECRETS)
    with chat_server(failures=[401], error_message=LEAKY) as server:  # fatal: the message line
        refused = run("predict", requests, "--backend", "openai", "--model", "m", "--base-url",
                      server.url.replace("http://", f"http://u:{SECRETS[1]}@"), env=env)
    error_line(refused, 1, "http://[redacted]@127.0.0.1", "refused the API key (401)")
    assert not any(secret in refused.stdout + refused.stderr for secret in SECRETS)


def test_all_failed_teacher_exits_1_and_keeps_no_trace_file(tmp_path: Path) -> None:
    data = write_prepared(tmp_path / "data", {"train": 2, "dev": 2, "test": 2, "coldstart": 3})
    out = tmp_path / "traces.jsonl"
    with chat_server(failures=[503] * 50, error_message=LEAKY) as server:
        result = run("traces", "make", "--data", data, "--out", out, "--base-url", server.url,
                     "--model", "teacher", "--max-retries", "0", env={"OPENAI_API_KEY": SECRETS[3]})
    error_line(result, 1, "traces: all 3 teacher requests failed (first: 503:",
               f"nothing written to {out}")
    assert "traces: 3 examples -> kept 0 align" in result.stderr  # the cost line still comes
    assert not out.exists()
    dropped = (tmp_path / "traces.dropped.jsonl").read_text()
    assert dropped.count("teacher_error") == 3 and "[redacted]" in dropped
    assert not any(secret in dropped + result.stderr for secret in SECRETS)


# --- data prepare: timestamps and ratings ------------------------------------------------------


def review(user: str, item: str, rating: Any = 4.0, millis: Any = 1_000_000) -> str:
    return json.dumps({"rating": rating, "text": "t", "user_id": user, "parent_asin": item,
                       "timestamp": millis})


def prepare(tmp_path: Path, *extra: Any) -> subprocess.CompletedProcess:
    return run("data", "prepare", "--source", "amazon-2023", "--reviews",
               tmp_path / "reviews.jsonl", "--out", tmp_path / "out", "--k-core", "1",
               "--coldstart", "0", *extra)


@pytest.mark.parametrize("line, message", [
    (review("u", "b", millis=float("inf")),
     "reviews.jsonl:2: timestamp: timestamp inf is not a time in seconds"),
    (review("u", "b", millis=1e30), "reviews.jsonl:2: timestamp: timestamp 1e+30 is not a time"),
    (review("u", "b", rating=True), "reviews.jsonl:2: rating: rating True is not a number"),
])
def test_prepare_bad_timestamp_or_boolean_rating(tmp_path: Path, line: str, message: str) -> None:
    assert "Infinity" in line or "1e+30" in line or "true" in line  # as JSON writes them
    write_lines(tmp_path / "reviews.jsonl", [review("u", "a"), line, review("v", "a")])
    error_line(prepare(tmp_path), 2, message)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["reviews.jsonl"]


def test_prepare_skip_bad_counts_the_bad_timestamps(tmp_path: Path) -> None:
    write_lines(tmp_path / "reviews.jsonl", [
        review("u", "a", millis=1_000_000), review("u", "b", millis=float("inf")),
        review("u", "c", millis=1e30), review("u", "d", millis=float("nan")),
        review("u", "e", rating=True), review("u", "f", millis=2_000_000),
        review("u", "g", millis=3_000_000)])
    result = prepare(tmp_path, "--skip-bad")
    assert result.returncode == 0, result.stderr
    counts = json.loads(result.stdout)
    assert counts["skipped"] == {"bad_timestamp": 3, "bad_value": 1}
    assert counts["interactions"] == 3


@pytest.mark.parametrize("cutoff", ["inf,1e30", "0,1e30"])
def test_prepare_time_cutoff_beyond_any_date(tmp_path: Path, cutoff: str) -> None:
    write_lines(tmp_path / "reviews.jsonl", [review("u", "a"), review("v", "a")])
    error_line(prepare(tmp_path, "--time-cutoff", cutoff), 2,
               "--time-cutoff: ", "is not a time between the years 1 and 9999")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["reviews.jsonl"]


# --- prepared splits ---------------------------------------------------------------------------


@pytest.mark.parametrize("change, message", [
    (lambda row: row.pop("user_id"), "train.jsonl:2: user_id: missing (a string or an integer)"),
    (lambda row: row.update(rating=True), "train.jsonl:2: rating: expected a number"),
])
def test_prepared_split_missing_user_id_or_boolean_rating(tmp_path: Path, change,
                                                          message: str) -> None:
    data = write_prepared(tmp_path / "data", {"train": 3, "dev": 2, "test": 2})
    rows = [json.loads(line) for line in (data / "train.jsonl").read_text().splitlines()]
    change(rows[1])
    write_lines(data / "train.jsonl", [json.dumps(row) for row in rows])
    error_line(run("baselines", "--data", data), 2, message)


# --- the mission's shell lines -------------------------------------------------------------------


def make_run_folder(root: Path, base: Path) -> tuple[Path, Path]:
    """A `train` run folder (adapter + recipe.yaml) trained on `base`, and its data folder."""
    from test_export import make_run

    data = write_prepared(root / "data", {"train": 2, "dev": 2, "test": 2, "coldstart": 2})
    (data / "manifest.json").write_text(json.dumps({"rating_scale": [1.0, 10.0]}))
    folder = make_run(root / "runs" / "music-grpo", base, data)
    recipe = yaml.safe_load((folder / "recipe.yaml").read_text())
    recipe["data"]["max_prompt_tokens"] = 300
    recipe["evaluation"] = {"readout": "text"}
    (folder / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    return folder, data


def test_predict_with_only_an_adapter_run(tmp_path: Path, tiny_model: Path) -> None:
    """`cat requests.jsonl | recone-lite predict --adapter runs/music-grpo`: the base, template,
    prompt budget, scale and readout come from the run; an explicit flag still wins."""
    folder, data = make_run_folder(tmp_path, tiny_model)
    lines = b"".join(json.dumps(request(i)).encode() + b"\n" for i in range(2))
    result = run("predict", "--adapter", folder, "--max-new-tokens", "4", stdin=lines)
    assert result.returncode == 0, result.stderr
    assert [json.loads(row)["id"] for row in result.stdout.splitlines()] == ["r0", "r1"]
    said = next(line for line in result.stderr.splitlines() if "from the run" in line)
    recipe = folder / "recipe.yaml"
    assert f"model {tiny_model} ({recipe})" in said
    assert f"template none ({recipe})" in said and f"max_prompt_tokens 300 ({recipe})" in said
    assert f"scale 1,10 ({data / 'manifest.json'})" in said and f"readout text ({recipe})" in said
    explicit = run("predict", "--adapter", folder, "--max-new-tokens", "4", "--template",
                   "reczero", "--max-prompt-tokens", "200", "--scale", "1,5", stdin=lines)
    assert explicit.returncode == 0, explicit.stderr
    said = next(line for line in explicit.stderr.splitlines() if "from the run" in line)
    assert "model" in said and "template" not in said and "max_prompt_tokens" not in said
    assert "scale" not in said
    assert "was trained with the none template; predicting with reczero" in explicit.stderr


def test_predict_without_model_or_a_run_says_so(tmp_path: Path) -> None:
    result = run("predict", requests_file(tmp_path / "r.jsonl"))
    error_line(result, 2, "model: --model is required (or --adapter RUN")


def test_sft_without_recipe_picks_the_one_for_the_traces_data(tmp_path: Path, monkeypatch,
                                                               tiny_model: Path) -> None:
    """`recone-lite sft --traces traces.jsonl`: traces record their data folder; the packaged
    SFT recipe reading it is picked (music-sft reads data/music), stderr says which."""
    data = write_prepared(tmp_path / "data" / "music",
                          {"train": 4, "dev": 2, "test": 2, "coldstart": 4})
    made = run("traces", "make", "--data", "data/music", "--teacher", "template", "--out",
               "traces.jsonl", cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    assert json.loads((tmp_path / "traces.jsonl").read_text().splitlines()[0])["data"] == (
        "data/music")
    from recone_lite.sft import pick_recipe

    monkeypatch.chdir(tmp_path)
    assert pick_recipe(Path("traces.jsonl"))[:2] == ("music-sft", [])
    other = tmp_path / "other.jsonl"
    other.write_text((tmp_path / "traces.jsonl").read_text().replace(
        '"data":"data/music"', f'"data":"{data.parent / "book"}"'))
    assert pick_recipe(other)[:2] == ("music-sft", [f"data.dir={data.parent / 'book'}"])
    bare = tmp_path / "bare.jsonl"
    bare.write_text('{"id": "x", "messages": []}\n')
    assert pick_recipe(bare)[:2] == ("music-sft", [])
    # music-sft as it is, but with the tiny model on this CPU
    result = run("sft", "--traces", "traces.jsonl", "--dry-run", f"model.name={tiny_model}",
                 "model.quantization=none", "sft.bf16=false", "sft.report_to=none", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "sft: no --recipe given; using music-sft (its data.dir is data/music" in result.stderr
    assert json.loads(result.stdout)["counts"] == {"kept:template": 4}
