"""Chat completions against any OpenAI-compatible server (vLLM, llama.cpp server, a hosted API).

Shared by `predict --backend openai` and the teacher calls of `traces`. The `openai` package does
the HTTP, the retries (exponential backoff with jitter on connection errors, timeouts, 408, 409,
429 and 5xx, honouring `retry-after`) and the error types; this module adds bounded concurrency,
results in request order, per-request errors instead of exceptions, and one clear error when the
server cannot be reached at all.

The API key is read from an environment variable (`OPENAI_API_KEY` unless told otherwise) and is
never printed or logged. Local servers need none: a placeholder is sent when the variable is unset.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import threading
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from recone_lite.errors import InputError, ReconeError

NO_KEY = "EMPTY"  # what vLLM's and llama.cpp's docs send when the server checks no key
REDACTED = "[redacted]"
_SECRETS = [  # (pattern, replacement): what a server's error body or a URL may carry
    # credentials in a URL: scheme://user:pass@host, scheme://token@host
    (re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s@'\"]+@"), rf"\1{REDACTED}@"),
    # Authorization / Proxy-Authorization header values, with or without a scheme word
    (re.compile(r"(?i)\b((?:proxy-)?authorization[\"']?\s*[:=]\s*[\"']?)"
                r"(?:(?:bearer|basic|token)\s+)?[^\s\"',;}]+"), rf"\1{REDACTED}"),
    (re.compile(r"(?i)\b(bearer|basic)\s+[a-z0-9._~+/=-]{6,}"), rf"\1 {REDACTED}"),
    # key=value or "key": "value" for key-like names (api_key, x-api-key, access_token, ...)
    (re.compile(r"(?i)\b((?:x-)?(?:api[_-]?key|access[_-]?token|auth[_-]?token|token|secret|"
                r"password|passwd|client[_-]?secret)[\"']?\s*[:=]\s*[\"']?)"
                r"[^\s\"'&,;}]+"), rf"\1{REDACTED}"),
    # well-known key shapes: OpenAI / Anthropic / DeepSeek sk-..., Hugging Face hf_..., Google
    (re.compile(r"\b(?:sk|rk|pk)-[A-Za-z0-9_-]{8,}"), REDACTED),
    (re.compile(r"\bhf_[A-Za-z0-9]{8,}"), REDACTED),
    (re.compile(r"\bAIza[0-9A-Za-z_-]{20,}"), REDACTED),
]


@dataclasses.dataclass(frozen=True)
class ChatResult:
    """One chat completion, or the error left after the retries (`error` set, `content` None).

    `reasoning_content` is the separate reasoning text that reasoning servers send (vLLM's and
    DeepSeek's `reasoning_content`, or `reasoning`); None when the server sends none.
    `logprobs` (when asked with `top_logprobs`): per generated token, its text and the (text,
    logprob) of the chosen token and of its top alternatives; None when the server sent none.
    """

    content: str | None
    reasoning_content: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str | None = None
    error: str | None = None
    logprobs: list[tuple[str, list[tuple[str, float]]]] | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """`text` with credentials replaced by [redacted]: the given `secrets` (the API key itself),
    credentials in URLs, Authorization headers, bearer tokens, key=value pairs and well-known
    key shapes. Applied to every server error before it is logged or written anywhere.

    >>> redact("401: Incorrect API key provided: sk-proj-abcDEF123456789. See docs")
    '401: Incorrect API key provided: [redacted]. See docs'
    >>> redact("cannot reach https://alice:s3cret@example.com/v1: refused")
    'cannot reach https://[redacted]@example.com/v1: refused'
    >>> redact('{"headers": {"Authorization": "Bearer abc.def-123456"}}')
    '{"headers": {"Authorization": "[redacted]"}}'
    >>> redact("upstream said: authorization: Basic dXNlcjpwYXNz; bye")
    'upstream said: authorization: [redacted]; bye'
    >>> redact("token expired for Bearer eyJhbGciOi.J9x and https://h/v1?api_key=k123&x=1")
    'token expired for Bearer [redacted] and https://h/v1?api_key=[redacted]&x=1'
    >>> redact("echo of my key: local-key-42", secrets=["local-key-42", ""])
    'echo of my key: [redacted]'
    >>> redact("500: injected 500")  # nothing secret: unchanged
    '500: injected 500'
    """
    for secret in secrets:
        if secret and len(secret) >= 4 and secret != NO_KEY:
            text = text.replace(secret, REDACTED)
    for pattern, replacement in _SECRETS:
        text = pattern.sub(replacement, text)
    return text


def api_key(api_key_env: str | None) -> str:
    """The key from the environment variable, or a placeholder when it is unset or empty."""
    return (os.environ.get(api_key_env) if api_key_env else None) or NO_KEY


def make_client(
    base_url: str,
    *,
    api_key_env: str | None = "OPENAI_API_KEY",
    max_retries: int = 4,
    timeout: float = 600.0,
) -> Any:
    """An `openai.OpenAI` client for `base_url` with the key from `api_key_env` and retries."""
    try:
        import openai
    except ImportError:
        raise ReconeError("the openai package is not installed: pip install openai") from None
    if not base_url.startswith(("http://", "https://")):
        raise InputError(f"not an http(s) URL: {redact(base_url)!r}", field="base_url")
    return openai.OpenAI(
        base_url=base_url,
        api_key=api_key(api_key_env),
        max_retries=max_retries,
        timeout=timeout,
    )


class BadResponse(ValueError):
    """A reply with status 200 that is not a chat completion (a proxy's HTML page, truncated or
    misshapen JSON): a failure of that one request, counted like a 5xx."""


def _peek(text: str | bytes) -> str:
    """The start of a body, on one line, for an error message.

    >>> _peek("<html>\\n<body>Bad gateway</body></html>")
    "'<html> <body>Bad gateway</body></html>'"
    """
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return repr(" ".join(text.split())[:60])


def _count(value: Any) -> int:
    try:
        return max(int(value or 0), 0)
    except (TypeError, ValueError):  # a server's odd usage numbers are not worth a failure
        return 0


def _result(response: Any) -> ChatResult:
    """A ChatResult from the SDK's response; BadResponse when it is not a chat completion (the
    SDK builds its objects without validating them, and hands back a non-JSON body as text)."""
    if isinstance(response, (str, bytes)):
        raise BadResponse(f"not JSON: {_peek(response)}")
    choices = getattr(response, "choices", None)
    if not isinstance(choices, list) or not choices:
        raise BadResponse("no choices in the reply")
    choice = choices[0]
    message = getattr(choice, "message", None)
    content = getattr(message, "content", None)
    if message is None or not isinstance(content, str | None):
        raise BadResponse("the reply's first choice has no message text")
    reasoning = getattr(message, "reasoning_content", None) or getattr(message, "reasoning", None)
    usage = getattr(response, "usage", None)
    finish = getattr(choice, "finish_reason", None)
    try:
        logprobs = _logprobs(getattr(choice, "logprobs", None))
    except (TypeError, ValueError, AttributeError):
        raise BadResponse("malformed logprobs in the reply") from None
    return ChatResult(
        content=content or "",
        reasoning_content=reasoning if isinstance(reasoning, str) else None,
        prompt_tokens=_count(getattr(usage, "prompt_tokens", 0)),
        completion_tokens=_count(getattr(usage, "completion_tokens", 0)),
        finish_reason=finish if isinstance(finish, str) else None,
        logprobs=logprobs,
    )


def _logprobs(found: Any) -> list[tuple[str, list[tuple[str, float]]]] | None:
    """`choice.logprobs.content` (OpenAI's shape: tokens with `token`, `logprob` and
    `top_logprobs`) as (text, [(text, logprob), ...]) per token, the chosen token first."""
    content = getattr(found, "content", None)
    if not content:
        return None
    return [
        (step.token, [(step.token, float(step.logprob)),
                      *((alt.token, float(alt.logprob)) for alt in step.top_logprobs or ())])
        for step in content
    ]


def stream_chat_completions(
    requests: Iterable[list[dict[str, Any]]],
    *,
    base_url: str,
    model: str,
    api_key_env: str | None = "OPENAI_API_KEY",
    concurrency: int = 8,
    max_retries: int = 4,
    temperature: float = 0.0,
    max_tokens: int | None = 512,
    timeout: float = 600.0,
    seed: int | None = None,
    extra_body: dict[str, Any] | None = None,
    top_logprobs: int | None = None,
) -> Iterator[ChatResult]:
    """Yield one ChatResult per request (a list of chat messages), in request order.
    With `top_logprobs` the server is asked for each generated token's logprob and its
    `top_logprobs` likeliest alternatives (`ChatResult.logprobs`).

    At most `concurrency` requests are in flight; `requests` is read lazily, a little ahead of
    what has been yielded, so a stream of millions works in constant memory. A request that still
    fails after `max_retries` retries yields a result with `error` set. Raises ReconeError when the
    server cannot be reached (connection error or timeout after the retries) before any request
    succeeded, or when it refuses the key (401/403) or does not know the model (404): those would
    fail every request alike.
    """
    import openai

    if concurrency < 1:
        raise InputError("must be at least 1", field="concurrency")
    client = make_client(
        base_url, api_key_env=api_key_env, max_retries=max_retries, timeout=timeout
    )
    fatal: list[BaseException] = []
    succeeded = threading.Event()
    stop = threading.Event()
    secrets = [api_key(api_key_env)]
    where = redact(base_url, secrets)

    def failed(error: str) -> ChatResult:
        return ChatResult(content=None, error=redact(error, secrets))

    def fail_all(message: str) -> None:
        fatal.append(ReconeError(redact(message, secrets)))
        stop.set()

    def call(messages: list[dict[str, Any]]) -> ChatResult:
        if stop.is_set():
            return ChatResult(content=None, error="not sent: the server failed earlier")
        kwargs: dict[str, Any] = {"model": model, "messages": messages}
        kwargs["temperature"] = temperature
        if max_tokens is not None:
            kwargs["max_tokens"] = max_tokens
        if seed is not None:
            kwargs["seed"] = seed
        if extra_body:
            kwargs["extra_body"] = extra_body
        if top_logprobs is not None:
            kwargs.update(logprobs=True, top_logprobs=top_logprobs)
        try:
            result = _result(client.chat.completions.create(**kwargs))
        except (openai.AuthenticationError, openai.PermissionDeniedError) as err:
            fail_all(f"{where} refused the API key ({err.status_code}); set it in ${api_key_env}")
            return failed(f"{err.status_code}: {_message(err, secrets)}")
        except openai.NotFoundError as err:
            fail_all(f"{where}: not found (404) for model {model!r}: {_message(err, secrets)}")
            return failed(f"404: {_message(err, secrets)}")
        except openai.APIConnectionError as err:  # APITimeoutError is one too
            if not succeeded.is_set():
                fail_all(f"cannot reach {where} after {max_retries} retries: "
                         f"{_message(err, secrets)}")
            return failed(f"connection: {_message(err, secrets)}")
        except openai.APIStatusError as err:
            return failed(f"{err.status_code}: {_message(err, secrets)}")
        except json.JSONDecodeError as err:  # status 200, a body that is not JSON
            return failed(f"bad response: not JSON ({err.msg}, character {err.pos}): "
                          f"{_peek(err.doc)}")
        except (openai.APIError, BadResponse) as err:
            return failed(f"bad response: {_message(err, secrets)}")
        succeeded.set()
        return result

    pending: deque[Future[ChatResult]] = deque()
    window = 2 * concurrency
    pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="chat")
    try:
        for messages in requests:
            pending.append(pool.submit(call, messages))
            while len(pending) >= window:
                yield _checked(pending.popleft().result(), fatal)
        while pending:
            yield _checked(pending.popleft().result(), fatal)
    finally:
        stop.set()  # a consumer that stopped early: queued calls return without sending
        pool.shutdown(wait=True, cancel_futures=True)
        client.close()


def _checked(result: ChatResult, fatal: list[BaseException]) -> ChatResult:
    if fatal:
        raise fatal[0]
    return result


def _message(err: BaseException, secrets: Iterable[str] = ()) -> str:
    """The error's message on one line, credentials redacted, at most 300 characters."""
    text = redact(" ".join(str(getattr(err, "message", None) or err).split()), secrets)
    return text[:300]


