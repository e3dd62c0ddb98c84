"""Progress bars (log.progress) of long jobs: drawn on stderr when it is a terminal (here a
pseudo-terminal), absent when stderr is a pipe. `data prepare` (bytes read) and `traces make`
(replies and tokens so far, against the scripted local server of chat_server.py) run as a shell
user runs them: a new process, stdout a pipe (the JSON summary), stderr the terminal."""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

from chat_server import chat_server
from data_helpers import amazon_2023
from training_helpers import write_prepared

from recone_lite.traces import template_answer

BAR = "━"  # rich's bar character


def with_terminal(*args: str | Path, timeout: float = 120) -> tuple[int, str, str]:
    """`python -m recone_lite ARGS` with a pseudo-terminal as stderr: (exit code, stdout, what
    the terminal received)."""
    master, slave = pty.openpty()
    env = {**os.environ, "TERM": "xterm", "COLUMNS": "120"}
    process = subprocess.Popen([sys.executable, "-m", "recone_lite", *map(str, args)],
                               stdout=subprocess.PIPE, stderr=slave, env=env)
    os.close(slave)
    received, deadline = b"", time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            received += chunk
        elif process.poll() is not None:
            break
    os.close(master)
    stdout = process.communicate(timeout=timeout)[0].decode()
    return process.returncode, stdout, received.decode("utf-8", errors="replace")


def without_terminal(*args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "recone_lite", *map(str, args)],
                          capture_output=True, text=True, timeout=120)


TINY = [(u, i, float(1 + (ord(u) + ord(i)) % 5), t)
        for t, (u, i) in enumerate((u, i) for u in "abcd" for i in "wxyz")]


def test_data_prepare_shows_the_bytes_read_only_on_a_terminal(tmp_path: Path) -> None:
    reviews = amazon_2023(tmp_path / "reviews.jsonl", TINY)
    args = ["data", "prepare", "--source", "amazon-2023", "--reviews", reviews, "--k-core", "2",
            "--coldstart", "1"]
    code, stdout, terminal = with_terminal(*args, "--out", tmp_path / "tty")
    assert code == 0, terminal
    assert json.loads(stdout)["out"] == str(tmp_path / "tty")
    assert BAR in terminal and "reading reviews.jsonl" in terminal and "ETA" in terminal
    assert "kB" in terminal or " bytes" in terminal  # rich's size column: bytes read of total

    piped = without_terminal(*args, "--out", tmp_path / "pipe")
    assert piped.returncode == 0, piped.stderr
    assert BAR not in piped.stderr and "ETA" not in piped.stderr
    assert "\x1b[?25l" not in piped.stderr  # not even a hidden cursor


def test_traces_make_shows_replies_and_tokens_only_on_a_terminal(tmp_path: Path) -> None:
    data = write_prepared(tmp_path / "data")
    truths = {json.loads(line)["target"]["title"]: json.loads(line)
              for line in (data / "coldstart.jsonl").read_text().splitlines()}

    def reply(messages: list[dict[str, str]]) -> str:  # the right answer: every trace is kept
        title = next(t for t in truths if t in messages[-1]["content"])
        return template_answer(truths[title], (1.0, 5.0))

    with chat_server(reply=reply) as server:
        args = ["traces", "make", "--data", data, "--limit", "4", "--base-url", server.url,
                "--model", "teacher"]
        code, stdout, terminal = with_terminal(*args, "--out", tmp_path / "tty.jsonl")
        assert code == 0, terminal
        assert json.loads(stdout)["requests"] == 4
        assert BAR in terminal and "replies" in terminal and "tokens so far" in terminal
        assert "ETA" in terminal

        piped = without_terminal(*args, "--out", tmp_path / "pipe.jsonl")
        assert piped.returncode == 0, piped.stderr
        assert BAR not in piped.stderr and "tokens so far" not in piped.stderr
        assert "traces: 4 examples" in piped.stderr  # the jobs' own log lines stay
