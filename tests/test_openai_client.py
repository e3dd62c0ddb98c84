"""The OpenAI-compatible client against a local chat-completions server (127.0.0.1 only)."""

from __future__ import annotations

import socket
from typing import Any

import pytest
from chat_server import chat_server

from recone_lite.errors import ReconeError
from recone_lite.openai_client import ChatResult, stream_chat_completions


def chat_completions(requests: list[list[dict[str, Any]]], **options: Any) -> list[ChatResult]:
    """All results of `stream_chat_completions` (same keyword options) as a list, in order."""
    return list(stream_chat_completions(requests, **options))


def ask(n: int) -> list[list[dict[str, str]]]:
    return [[{"role": "user", "content": f"say {i}"}] for i in range(n)]


def echo(messages):
    return f"<rate>{messages[-1]['content'].split()[-1]}</rate>"


def test_results_in_request_order_with_usage_and_reasoning():
    with chat_server(reply=echo, reasoning="thinking...") as server:
        results = chat_completions(ask(12), base_url=server.url, model="m", concurrency=4)
    assert [r.content for r in results] == [f"<rate>{i}</rate>" for i in range(12)]
    assert all(r.ok and r.reasoning_content == "thinking..." for r in results)
    assert results[0].prompt_tokens == 10 and results[0].completion_tokens == 1
    assert results[0].finish_reason == "stop"
    body = server.requests[0]
    assert body["model"] == "m" and body["temperature"] == 0.0 and body["max_tokens"] == 512


def test_retries_429_then_500_then_success():
    with chat_server(failures=[429, 500]) as server:
        (result,) = chat_completions(ask(1), base_url=server.url, model="m", max_retries=4)
    assert result.ok and result.content == "<rate>4</rate>"
    assert server.statuses == [429, 500, 200]  # two retries, then the answer


def test_a_request_that_keeps_failing_gets_an_error_the_others_answers():
    with chat_server(failures=[500, 503, 500]) as server:
        results = chat_completions(
            ask(2), base_url=server.url, model="m", max_retries=2, concurrency=1
        )
    assert results[0].error is not None and results[0].error.startswith("500")
    assert results[1].ok
    assert server.statuses == [500, 503, 500, 200]  # 1 try + 2 retries, then the next request


def test_unreachable_server_is_one_clear_error():
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1"
    with pytest.raises(ReconeError, match=f"cannot reach {url} after 1 retries"):
        chat_completions(ask(3), base_url=url, model="m", max_retries=1, timeout=5)


def test_api_key_from_env_is_sent_and_never_shown(monkeypatch):
    monkeypatch.setenv("RECONE_TEST_KEY", "sk-secret-123")
    with chat_server(failures=[401]) as server:
        with pytest.raises(ReconeError) as caught:
            list(
                stream_chat_completions(
                    ask(1), base_url=server.url, model="m", api_key_env="RECONE_TEST_KEY"
                )
            )
    assert server.headers[0]["authorization"] == "Bearer sk-secret-123"
    assert "sk-secret" not in str(caught.value) and "RECONE_TEST_KEY" in str(caught.value)


def test_no_key_set_sends_a_placeholder(monkeypatch):
    monkeypatch.delenv("RECONE_TEST_KEY", raising=False)
    with chat_server() as server:
        chat_completions(ask(1), base_url=server.url, model="m", api_key_env="RECONE_TEST_KEY")
    assert server.headers[0]["authorization"] == "Bearer EMPTY"


def test_streaming_reads_requests_lazily():
    read = []

    def requests():
        for i, messages in enumerate(ask(40)):
            read.append(i)
            yield messages

    with chat_server(reply=echo) as server:
        stream = stream_chat_completions(requests(), base_url=server.url, model="m", concurrency=2)
        first = next(stream)
        assert first.content == "<rate>0</rate>"
        assert len(read) < 40  # only a window ahead of what was consumed
        stream.close()


CHOICE = b'{"choices": [{"index": 0, "message": {"role": "assistant", "content": %s}}]}'
MALFORMED = [  # status 200 (a proxy, a broken server): each one request's failure, not a crash
    ("text/html", b"<html><body>502 Bad Gateway (proxy)</body></html>", "not JSON"),
    ("application/json", b"<html><body>proxy</body></html>", "not JSON (Expecting value"),
    ("application/json", b'{"id": "x", "choices": [{"index": 0, "mess', "not JSON (Unterminated"),
    ("application/json", b'{"choices": "nope"}', "no choices"),
    ("application/json", b'{"choices": []}', "no choices"),
    ("application/json", b"[1, 2]", "no choices"),
    ("application/json", b'{"choices": [{"index": 0, "message": null}]}', "no message text"),
    ("application/json", CHOICE % b"5", "no message text"),
    ("application/json", CHOICE % b'["a"]', "no message text"),
]


@pytest.mark.parametrize(("kind", "body", "words"), MALFORMED,
                         ids=[w.split()[0] + str(i) for i, (_, _, w) in enumerate(MALFORMED)])
def test_a_malformed_reply_fails_its_request_only(kind, body, words):
    with chat_server(raw=[(200, kind, body)]) as server:
        results = chat_completions(ask(2), base_url=server.url, model="m", concurrency=1)
    assert not results[0].ok and results[0].content is None
    assert results[0].error.startswith("bad response: ") and words in results[0].error
    assert "\n" not in results[0].error
    assert results[1].ok and results[1].content == "<rate>4</rate>"


def test_odd_usage_numbers_are_not_a_failure():
    body = (b'{"choices": [{"index": 0, "message": {"role": "assistant", "content": "<rate>3'
            b'</rate>"}, "finish_reason": 7}], "usage": {"prompt_tokens": "x"}}')
    with chat_server(raw=[(200, "application/json", body)]) as server:
        (result,) = chat_completions(ask(1), base_url=server.url, model="m")
    assert result.ok and result.content == "<rate>3</rate>"
    assert (result.prompt_tokens, result.finish_reason) == (0, None)
