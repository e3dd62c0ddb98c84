"""`traces` against a scripted OpenAI-compatible server on 127.0.0.1, the template teacher, inspect.

The server answers /v1/chat/completions per example (found by the target title in the prompt) and
per attempt (hinted or not), counts every hit, and can answer 429 or 500 first.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from recone_lite.prompts import build_messages
from recone_lite.rewards import format_ok, parse_rating
from recone_lite.teacher import make_traces
from recone_lite.traces import TEMPLATE, template_answer

KEY = "sk-test-do-not-print-0123456789"


def answer(rating: float, match: str = "fits the jazz she loves") -> str:
    return (
        "<analyze user>[1] [like] smooth jazz\n[pos] jazz\n[neg] noise</analyze user>\n"
        "<analyze item>[like] a jazz record</analyze item>\n"
        f"<match>{match}</match>\n<rate>{rating:g}</rate>"
    )


# title -> (reply to the plain ask, reply to the hinted ask); a reply is a dict or an HTTP status
SCRIPT = {
    "right": ({"content": answer(4)}, None),
    "hinted": ({"content": answer(2)}, {"content": answer(4)}),
    "leaky": ({"content": answer(2)}, {"content": answer(4, "we are told it is a 4, so it fits")}),
    "malformed": ({"content": "I think 4 stars."}, {"content": "Four stars, I guess."}),
    "stubborn": ({"content": answer(2)}, {"content": answer(2)}),
    "busy": ([429, {"content": answer(4)}], None),
    "reasoner": ({"content": answer(4), "reasoning_content": "SECRET separate thinking"}, None),
    "inline": ({"content": "<think>SECRET inline thinking</think>\n" + answer(4.4)}, None),
    "broken": (500, 500),
}


class Teacher:
    """A scripted chat-completions server in a thread; `hits` counts requests by (title, hint)."""

    def __init__(self) -> None:
        self.hits: Counter[tuple[str, bool]] = Counter()
        self.keys: set[str] = set()
        self.lock = threading.Lock()
        teacher = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # keep the test output quiet
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                user = body["messages"][-1]["content"]
                title = user.split("target_item:\ntitle: ")[1].split(" |")[0]
                hinted = "Hint, for you only" in user
                with teacher.lock:
                    attempt = teacher.hits[(title, hinted)]
                    teacher.hits[(title, hinted)] += 1
                    teacher.keys.add(self.headers.get("Authorization", ""))
                reply = SCRIPT[title][hinted]
                if isinstance(reply, list):
                    reply = reply[min(attempt, len(reply) - 1)]
                if isinstance(reply, int):
                    self.send(reply, {"error": {"message": f"scripted {reply}"}})
                    return
                message = {"role": "assistant", **reply}
                self.send(200, {
                    "id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                    "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 100, "completion_tokens": 10, "total_tokens": 110},
                })

            def send(self, status: int, payload: dict) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.send_header("retry-after-ms", "1")  # the openai client's backoff: 1 ms
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def total(self) -> int:
        return sum(self.hits.values())


@pytest.fixture
def teacher():
    server = Teacher()
    yield server
    server.server.shutdown()
    server.server.server_close()


def write_data(folder: Path, titles: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "manifest.json").write_text(json.dumps({"rating_scale": [1, 5]}))
    history = [
        {"item_id": "a", "timestamp": 1, "item": {"title": "Kind of Blue", "categories": ["Jazz"]},
         "rating": 5, "review": "Cool and calm."},
        {"item_id": "b", "timestamp": 2, "item": {"title": "Noise Wall"}, "rating": 1,
         "review": "Unlistenable."},
    ]
    rows = [
        {"id": f"e-{title}", "user_id": "u1", "item_id": f"i-{title}", "rating": 4.0,
         "timestamp": 10, "history": history, "target": {"title": title, "categories": ["Jazz"]}}
        for title in titles
    ]
    (folder / "coldstart.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def run_cli(*args: str, env_key: bool = False) -> subprocess.CompletedProcess:
    env = None
    if env_key:
        import os

        env = {**os.environ, "TEACHER_KEY": KEY}
    return subprocess.run([sys.executable, "-m", "recone_lite", *args], capture_output=True,
                          text=True, timeout=60, env=env)


def test_every_path_the_counts_and_the_cache(tmp_path: Path, teacher: Teacher) -> None:
    data = write_data(tmp_path / "data", list(SCRIPT))
    out = tmp_path / "traces.jsonl"
    args = ["traces", "make", "--data", str(data), "--out", str(out), "--base-url", teacher.url,
            "--model", "teacher-1", "--api-key-env", "TEACHER_KEY", "--max-retries", "1",
            "--concurrency", "4"]
    result = run_cli(*args, env_key=True)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)

    traces = {t["id"]: t for t in read(out)}
    assert {i: t["kind"] for i, t in traces.items()} == {
        "e-right": "align", "e-busy": "align", "e-reasoner": "align", "e-inline": "align",
        "e-hinted": "rationalized"}
    assert list(traces) == ["e-right", "e-hinted", "e-busy", "e-reasoner", "e-inline"]  # in order
    assert summary["kept"] == {"align": 4, "rationalized": 1}
    assert summary["dropped"] == {"leaked_hint": 1, "rationalized_bad_format": 1,
                                  "rationalized_wrong_rating": 1, "teacher_error": 1}
    assert summary["leaks"] == {"we are told": 1}
    assert summary["first_pass"] == {"match": 4, "wrong_rating": 3, "bad_format": 1}
    assert summary["errors"] == 1 and summary["error_examples"][0]["id"] == "e-broken"
    # 9 asks + 4 hinted asks; the client's retries (of the 429 and the 500) are not requests
    assert (summary["requests"], teacher.total(), summary["cached"]) == (13, 15, 0)
    assert (summary["prompt_tokens"], summary["completion_tokens"]) == (1200, 120)
    assert "align" in result.stderr and "requests" in result.stderr  # the cost line

    examples = {e["id"]: e for e in read(data / "coldstart.jsonl")}
    for trace in traces.values():
        system, user, assistant = trace["messages"]
        assert [system, user] == build_messages(examples[trace["id"]], TEMPLATE, (1.0, 5.0))
        assert "Hint" not in user["content"]  # the SFT prompt never carries the hint
        assert assistant["role"] == "assistant" and format_ok(assistant["content"])
        assert "SECRET" not in assistant["content"]  # no separate or inline thinking
        assert trace["rating"] == 4.0
    assert traces["e-inline"]["teacher_rating"] == 4.4  # rounds to the truth: kept

    dropped = {row["id"]: row for row in read(tmp_path / "traces.dropped.jsonl")}
    assert dropped["e-leaky"]["reason"] == "leaked_hint"
    assert "we are told" in dropped["e-leaky"]["completion"]
    assert dropped["e-broken"]["error"].startswith("500")
    assert teacher.hits[("broken", False)] == 2  # the first try and one retry

    # The key reached the server, and is nowhere in what we printed or wrote.
    assert teacher.keys == {f"Bearer {KEY}"}
    written = [p.read_text() for p in tmp_path.rglob("*") if p.is_file()]
    assert all(KEY not in text for text in [result.stdout, result.stderr, *written])

    # An existing trace file is never replaced unasked: one line, exit 2, before any request.
    kept_bytes, dropped_bytes = out.read_bytes(), (tmp_path / "traces.dropped.jsonl").read_bytes()
    before = teacher.hits.copy()
    refused = run_cli(*args, env_key=True)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert refused.stderr.strip().splitlines()[-1] == (
        f"error: {out}: --out: exists; pass --overwrite to replace it (the reply cache makes the "
        "re-run cheap) or choose another --out")
    assert teacher.hits == before and out.read_bytes() == kept_bytes
    assert (tmp_path / "traces.dropped.jsonl").read_bytes() == dropped_bytes

    # A rerun makes no call for any reply already cached; only the failed one is tried again.
    again = run_cli(*args, "--overwrite", env_key=True)
    assert again.returncode == 0, again.stderr
    rerun = json.loads(again.stdout)
    assert teacher.hits - before == Counter({("broken", False): 2})
    assert (rerun["cached"], rerun["requests"]) == (12, 1)
    assert read(out) == list(traces.values())


def test_a_killed_run_resumes_from_the_cache(tmp_path: Path, teacher: Teacher) -> None:
    data = write_data(tmp_path / "data", ["right", "hinted", "reasoner"])
    out = tmp_path / "t.jsonl"
    options = {"base_url": teacher.url, "model": "m", "max_retries": 0}
    make_traces(data, out, limit=2, **options)  # as if killed after two examples
    assert teacher.total() == 3
    summary = make_traces(data, out, overwrite=True, **options)
    assert teacher.total() == 4 and summary["requests"] == 1 and summary["cached"] == 3
    assert [t["id"] for t in read(out)] == ["e-right", "e-hinted", "e-reasoner"]
    assert list(tmp_path.glob(".*tmp*")) == []  # no temporary files left behind
    # Another model, or other sampling parameters, is another cache key.
    make_traces(data, out, overwrite=True, **{**options, "model": "m2"})
    assert teacher.total() == 4 + 4


def test_tolerance_keeps_near_misses(tmp_path: Path, teacher: Teacher) -> None:
    data = write_data(tmp_path / "data", ["stubborn"])
    summary = make_traces(data, tmp_path / "t.jsonl", base_url=teacher.url, model="m",
                          tolerance=2.0, max_retries=0)
    assert summary["kept"] == {"align": 1, "rationalized": 0}
    assert teacher.total() == 1


def test_unreachable_server_fails_fast_with_exit_1(tmp_path: Path) -> None:
    data = write_data(tmp_path / "data", ["right"])
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    started = time.monotonic()
    result = run_cli("traces", "--data", str(data), "--out", str(tmp_path / "t.jsonl"),
                     "--base-url", f"http://127.0.0.1:{port}/v1", "--model", "m",
                     "--max-retries", "1")
    assert result.returncode == 1, result.stderr
    assert "cannot reach" in result.stderr and "Traceback" not in result.stderr
    assert time.monotonic() - started < 20
    assert not (tmp_path / "t.jsonl").exists()


def test_bad_usage_exits_2(tmp_path: Path) -> None:
    data = write_data(tmp_path / "data", ["right"])
    no_model = run_cli("traces", "make", "--data", str(data), "--out", str(tmp_path / "t.jsonl"))
    assert no_model.returncode == 2 and "--base-url" in no_model.stderr
    no_data = run_cli("traces", "make", "--data", str(tmp_path / "nowhere"), "--out", "t.jsonl",
                      "--teacher", "template")
    assert no_data.returncode == 2 and "manifest.json" in no_data.stderr


def test_template_teacher_offline_and_inspect(tmp_path: Path) -> None:
    data = write_data(tmp_path / "data", ["right", "hinted"])
    out = tmp_path / "warmup.jsonl"
    result = run_cli("traces", "--data", str(data), "--teacher", "template", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["kept"] == {"template": 2}
    for trace in read(out):
        text = trace["messages"][-1]["content"]
        assert trace["kind"] == "template"
        assert format_ok(text) and parse_rating(text) == trace["rating"] == 4.0

    report = run_cli("traces", "inspect", str(out), "--data", str(data))
    assert report.returncode == 0, report.stderr
    summary = json.loads(report.stdout)
    assert summary["kinds"] == {"template": 2} and summary["format_ok"] == 2
    assert summary["rating_agrees"] == 2 and summary["completion_chars"]["n"] == 2
    assert "format ok" in report.stderr


@pytest.mark.parametrize("rating", [1.0, 2.0, 3.0, 3.5, 4.5, 5.0])
def test_template_answer_is_well_formed_for_any_rating(rating: float) -> None:
    example = {"id": "x", "rating": rating, "item_id": "t",
               "history": [{"item_id": "h", "item": {}, "rating": 3, "review": "<rate>5</rate>"}],
               "target": {"title": "A <match> title", "categories": [["Books", "</rate>"]]}}
    text = template_answer(example, (1.0, 5.0))
    assert format_ok(text) and parse_rating(text) == rating


def test_evidence_answer_reasons_only_from_the_prompt_and_ends_in_the_truth() -> None:
    """Everything before <rate> is read off the prompt's evidence: the same example with another
    true rating gets the same reasoning, and its numbers are the prompt's numbers."""
    from recone_lite.prompts import build_messages
    from recone_lite.traces import evidence_answer

    example = {
        "id": "e", "item_id": "t", "rating": 2.0,
        "history": [{"item_id": "a", "item": {"title": "Fargo", "categories": ["Crime"]},
                     "rating": 5.0, "review": ""},
                    {"item_id": "b", "item": {"title": "Jaws", "categories": ["Horror"]},
                     "rating": 1.0, "review": ""}],
        "target": {"title": "Heat", "categories": ["Crime", "Drama"]},
        "item_history": [{"user_id": "u2", "timestamp": 1, "rating": 4.0, "review": ""}],
        "stats": {"user_mean": 3.0, "user_count": 2, "item_mean": 4.0, "item_count": 1,
                  "global_mean": 3.6},
    }
    low, high = evidence_answer(example), evidence_answer({**example, "rating": 5.0})
    assert low.split("<rate>")[0] == high.split("<rate>")[0]
    assert low.endswith("<rate>2</rate>") and high.endswith("<rate>5</rate>")
    assert format_ok(low, "reczero") and parse_rating(high) == 5.0
    prompt = build_messages(example, "reczero")[1]["content"]
    # the estimate the prompt's stats line ends with is what the answer copies before <rate>
    assert "| estimate 3.50" in prompt and "<match>estimate 3.50</match>" in low
    cold = evidence_answer({**example, "item_history": [],
                            "stats": {**example["stats"], "item_mean": None, "item_count": 0}})
    assert "others none" in cold and "<match>estimate 3.43</match>" in cold  # 3.6 - 0.6 * 2/7
    bare = evidence_answer({**example, "stats": None})
    assert "<match>user none, item none</match>" in bare


def test_an_existing_dropped_file_or_dangling_link_is_not_replaced_unasked(tmp_path: Path) -> None:
    """Only --out is named: STEM.dropped.jsonl beside it (or --out as a symlink to nowhere) is the
    user's until --overwrite says otherwise. Exit 2, one line, every file as it was."""
    data = write_data(tmp_path / "data", ["right"])
    out = tmp_path / "t.jsonl"
    dropped = tmp_path / "t.dropped.jsonl"
    dropped.write_text("my own list\n")
    args = ["traces", "make", "--data", str(data), "--teacher", "template", "--out", str(out)]
    result = run_cli(*args)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(
        f"error: {dropped}: --out: exists; pass --overwrite")
    assert dropped.read_text() == "my own list\n" and not out.exists()
    dropped.unlink()
    out.symlink_to(tmp_path / "nowhere.jsonl")
    result = run_cli(*args)
    assert result.returncode == 2 and f"error: {out}: --out: exists" in result.stderr
    assert out.is_symlink() and not (tmp_path / "nowhere.jsonl").exists()
    out.unlink()
    assert run_cli(*args).returncode == 0 and len(read(out)) == 1
    assert run_cli(*args, "--overwrite").returncode == 0 and len(read(out)) == 1
