"""A tiny OpenAI-compatible chat-completions server on 127.0.0.1 for tests (stdlib only).

It answers every `POST .../chat/completions` with `reply(messages)` (default: a fixed rating),
counts the requests it got, and fails the first requests as told by `failures`, a list of HTTP
statuses (e.g. `[429, 500]`: the first request gets 429, the second 500, then success). Failures
carry `retry-after-ms: 1`, so the client's backoff stays short in tests, and `error_message` as
their message (default: "injected STATUS").

`raw` answers the first requests with bodies as they are, one (status, content type, bytes)
each, before any scripted failure or reply: a proxy's HTML page with status 200, truncated JSON,
a JSON object of the wrong shape.

`reply` may also return (content, tokens): the reply with its logprobs in OpenAI's shape, a list
of generated tokens `{"token", "logprob", "bytes", "top_logprobs": [{"token", "logprob",
"bytes"}, ...]}` (`logprob_tokens` builds one from token texts and probabilities). They are sent
as `choice.logprobs.content` when the request asks for `logprobs`, cut to its `top_logprobs`.
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class ChatServer:
    def __init__(
        self,
        reply: Callable[[list[dict[str, Any]]], str | tuple[str, list[dict[str, Any]]]]
        | None = None,
        failures: list[int] | None = None,
        reasoning: str | None = None,
        error_message: str | None = None,
        logprobs: bool = True,
        raw: list[tuple[int, str, bytes]] | None = None,
    ) -> None:
        self.raw = list(raw or [])
        self.reply = reply or (lambda messages: "<rate>4</rate>")
        self.failures = list(failures or [])
        self.reasoning = reasoning
        self.error_message = error_message
        self.logprobs = logprobs  # False: a server that ignores `logprobs` in the request
        self.requests: list[dict[str, Any]] = []  # every request body received, failures too
        self.statuses: list[int] = []
        self.headers: list[dict[str, str]] = []
        self.lock = threading.Lock()
        self.url = ""

    def handle(self, body: dict[str, Any], headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
        with self.lock:
            self.requests.append(body)
            self.headers.append(headers)
            status = self.failures.pop(0) if self.failures else 200
            self.statuses.append(status)
        if status != 200:
            message = self.error_message or f"injected {status}"
            return status, {"error": {"message": message, "type": "test"}}
        answer = self.reply(body["messages"])
        content, tokens = answer if isinstance(answer, tuple) else (answer, None)
        message: dict[str, Any] = {"role": "assistant", "content": content}
        if self.reasoning is not None:
            message["reasoning_content"] = self.reasoning
        choice: dict[str, Any] = {"index": 0, "message": message, "finish_reason": "stop"}
        if body.get("logprobs") and self.logprobs:
            if tokens is None:  # no script: each character a token the model was sure of
                tokens = logprob_tokens([(c, {c: 1.0}) for c in content])
            top = int(body.get("top_logprobs") or 0)
            choice["logprobs"] = {
                "content": [{**t, "top_logprobs": t["top_logprobs"][:top]} for t in tokens],
                "refusal": None,
            }
        return 200, {
            "id": "chatcmpl-test",
            "object": "chat.completion",
            "created": 0,
            "model": body.get("model", "test"),
            "choices": [choice],
            "usage": {
                "prompt_tokens": 10,
                "completion_tokens": len(content.split()),
                "total_tokens": 10 + len(content.split()),
            },
        }


def logprob_tokens(steps: list[tuple[str, dict[str, float]]]) -> list[dict[str, Any]]:
    """OpenAI's `logprobs.content` for generated tokens given as (text, {alternative:
    probability}): each token's logprob is its own probability's (1 when not listed), its
    `top_logprobs` the alternatives, likeliest first."""
    def entry(text: str, p: float) -> dict[str, Any]:
        return {"token": text, "logprob": math.log(p) if p > 0 else -9999.0,
                "bytes": list(text.encode())}

    return [
        {**entry(text, alternatives.get(text, 1.0)),
         "top_logprobs": [entry(t, p) for t, p in
                          sorted(alternatives.items(), key=lambda a: -a[1])]}
        for text, alternatives in steps
    ]


@contextmanager
def chat_server(**kwargs: Any) -> Iterator[ChatServer]:
    """Run a ChatServer on a free port of 127.0.0.1 for the duration of the block."""
    state = ChatServer(**kwargs)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (the http.server API)
            length = int(self.headers.get("content-length", 0))
            body = json.loads(self.rfile.read(length) or b"{}")
            raw = None
            if not self.path.endswith("/chat/completions"):
                status, payload = 404, {"error": {"message": "no such route"}}
            else:
                with state.lock:
                    if state.raw:
                        raw = state.raw.pop(0)
                        state.requests.append(body)
                        state.statuses.append(raw[0])
                if raw is None:
                    status, payload = state.handle(
                        body, {k.lower(): v for k, v in self.headers.items()}
                    )
            if raw is not None:
                status, kind, data = raw
            else:
                kind, data = "application/json", json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("content-type", kind)
            self.send_header("content-length", str(len(data)))
            if status in (429, 500, 502, 503):
                self.send_header("retry-after-ms", "1")
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:  # keep the test output clean
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    state.url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
