"""The upstream Messages API: one small contract, an Anthropic and a simulated implementation.

The contract: ``create`` (a Message), ``stream`` (an open SSE stream, raw bytes as they arrive)
and ``count_tokens``.

``get_upstream()`` returns the configured one (``RESPCACHE["UPSTREAM"]`` /
``RESPCACHE_UPSTREAM``: ``anthropic`` or ``simulated``; unset: anthropic when
``ANTHROPIC_API_KEY`` is set, else simulated, which a production service refuses to start on:
``refuse_silent_simulation``). Each kind's answers live in a key space of their own (keys.py).
Calls return plain data, never SDK objects, and raise only respcache's own errors: this module
owns the ``anthropic`` library's.
The caller's body is forwarded byte for byte (unknown fields untouched) with the caller's
``anthropic-beta`` and ``anthropic-version`` headers; the upstream is called with the server's
``ANTHROPIC_API_KEY`` (honouring ``ANTHROPIC_BASE_URL``), never with the caller's key.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import anthropic
import orjson
from django.core.exceptions import ImproperlyConfigured

if TYPE_CHECKING:  # checked against httpx2, which the anthropic 2.x releases installed here require
    import httpx2 as httpx
else:
    try:  # anthropic 2.x releases built on the httpx2 fork, and the older ones on httpx
        import httpx2 as httpx
    except ImportError:  # pragma: no cover
        import httpx

from respcache import sse
from respcache.conf import app_settings
from respcache.exceptions import UpstreamError, UpstreamUnavailable
from respcache.keys import ANTHROPIC, UPSTREAM_KINDS

logger = logging.getLogger(__name__)

#: Request headers passed to the upstream as the caller sent them.
FORWARDED_HEADERS = ("anthropic-beta", "anthropic-version")
#: Upstream response headers passed back with an error (what SDKs read to back off).
ERROR_HEADERS = ("retry-after", "retry-after-ms", "x-should-retry", "request-id")


@dataclass(frozen=True)
class UpstreamResponse:
    """A successful upstream answer: the Message bytes as sent, and what we read from them."""

    body: bytes
    message: dict[str, Any]
    latency_ms: float
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def input_tokens(self) -> int:
        usage = self.message.get("usage") or {}
        return (
            int(usage.get("input_tokens") or 0)
            + int(usage.get("cache_read_input_tokens") or 0)
            + int(usage.get("cache_creation_input_tokens") or 0)
        )

    @property
    def output_tokens(self) -> int:
        return int((self.message.get("usage") or {}).get("output_tokens") or 0)

    @property
    def model(self) -> str:
        return str(self.message.get("model") or "")


class UpstreamStream:
    """An open streaming answer: iterate it for the SSE bytes as they arrive, then ``close()``.

    Iterating raises UpstreamUnavailable if the connection breaks mid-stream.
    """

    def __init__(
        self, chunks: Iterator[bytes], *, close: Callable[[], None] | None = None, started: float | None = None
    ) -> None:
        #: When the call began (time.perf_counter), for its latency.
        self.started = time.perf_counter() if started is None else started
        self._chunks = chunks
        self._close = close

    def __iter__(self) -> Iterator[bytes]:
        return self._chunks

    def close(self) -> None:
        if self._close is not None:
            self._close()


class Upstream(Protocol):
    def create(self, raw_body: bytes, body: dict[str, Any], *, headers: dict[str, str]) -> UpstreamResponse:
        """Call the Messages API once (non-streaming); raise UpstreamError on failure."""
        ...

    def stream(self, raw_body: bytes, body: dict[str, Any], *, headers: dict[str, str]) -> UpstreamStream:
        """Open a streaming call (``raw_body`` asks for ``"stream": true``); raise UpstreamError
        when it fails before its first byte (its status and body kept)."""
        ...

    def count_tokens(self, raw_body: bytes, body: dict[str, Any], *, headers: dict[str, str]) -> UpstreamResponse:
        """Call ``/v1/messages/count_tokens`` once; raise UpstreamError on failure."""
        ...


def _parse_json(content: bytes) -> Any:
    try:
        return orjson.loads(content)
    except orjson.JSONDecodeError as exc:
        raise UpstreamUnavailable(f"upstream answered with invalid JSON: {exc}") from exc


def _parse_message(content: bytes) -> dict[str, Any]:
    message = _parse_json(content)
    if not isinstance(message, dict) or message.get("type") != "message":
        raise UpstreamUnavailable("upstream answered with something that is not a Message")
    return message


def _parse_token_count(content: bytes) -> dict[str, Any]:
    count = _parse_json(content)
    if not isinstance(count, dict) or not isinstance(count.get("input_tokens"), int):
        raise UpstreamUnavailable("upstream answered with something that is not a token count")
    return count


class AnthropicUpstream:
    """The real Messages API through the official SDK."""

    def __init__(self, *, http_client: Any = None, api_key: str | None = None, base_url: str | None = None):
        self.client = anthropic.Anthropic(
            api_key=api_key or os.environ.get("ANTHROPIC_API_KEY") or "missing",
            base_url=base_url or os.environ.get("ANTHROPIC_BASE_URL") or None,
            max_retries=int(app_settings.UPSTREAM_MAX_RETRIES),
            timeout=float(app_settings.UPSTREAM_TIMEOUT),
            http_client=http_client,
        )

    def _post(self, path: str, raw_body: bytes, headers: dict[str, str], *, stream: bool = False) -> Any:
        try:
            return self.client.post(
                path,
                cast_to=httpx.Response,
                content=raw_body,
                options={"headers": {"content-type": "application/json", **headers}},
                stream=stream,
            )
        except anthropic.APIStatusError as exc:
            raise _status_error(exc) from exc
        except anthropic.APIConnectionError as exc:
            raise UpstreamUnavailable(f"upstream unreachable: {exc}") from exc

    def _answer(
        self, path: str, raw_body: bytes, headers: dict[str, str], parse: Callable[[bytes], dict[str, Any]]
    ) -> UpstreamResponse:
        started = time.perf_counter()
        content = self._post(path, raw_body, headers).content
        latency_ms = (time.perf_counter() - started) * 1000
        return UpstreamResponse(body=content, message=parse(content), latency_ms=latency_ms)

    def create(self, raw_body: bytes, body: dict[str, Any], *, headers: dict[str, str]) -> UpstreamResponse:
        return self._answer("/v1/messages", raw_body, headers, _parse_message)

    def stream(self, raw_body: bytes, body: dict[str, Any], *, headers: dict[str, str]) -> UpstreamStream:
        # The SDK hands back the unread httpx response: its status is checked (an error status
        # raised with its body read), the events are ours to read as they come.
        started = time.perf_counter()
        response = self._post("/v1/messages", raw_body, headers, stream=True)
        return UpstreamStream(_iter_body(response), close=response.close, started=started)

    def count_tokens(self, raw_body: bytes, body: dict[str, Any], *, headers: dict[str, str]) -> UpstreamResponse:
        return self._answer("/v1/messages/count_tokens", raw_body, headers, _parse_token_count)


def _iter_body(response: Any) -> Iterator[bytes]:
    try:
        yield from response.iter_bytes()
    except httpx.HTTPError as exc:
        raise UpstreamUnavailable(f"upstream stream broke: {exc}") from exc


def _status_error(exc: anthropic.APIStatusError) -> UpstreamError:
    response = exc.response
    error_type = "api_error"
    if isinstance(exc.body, dict):
        error = exc.body.get("error")
        if isinstance(error, dict) and isinstance(error.get("type"), str):
            error_type = error["type"]
    headers = {h: response.headers[h] for h in ERROR_HEADERS if h in response.headers}
    return UpstreamError(
        exc.message,
        status_code=response.status_code,
        body=response.content,
        error_type=error_type,
        headers=headers,
    )


class SimulatedUpstream:
    """A deterministic local Messages API for demos and tests: the same body, the same answer."""

    def stream(self, raw_body: bytes, body: dict[str, Any], *, headers: dict[str, str]) -> UpstreamStream:
        message = self.create(raw_body, body, headers=headers).message
        return UpstreamStream(iter([sse.replay(orjson.dumps(message))]))

    def count_tokens(self, raw_body: bytes, body: dict[str, Any], *, headers: dict[str, str]) -> UpstreamResponse:
        messages = body.get("messages") or []
        # The length of the messages' JSON, message by message: a message may nest as deep as
        # orjson serialises, so the list around it may not be serialisable in one piece.
        size = sum(len(orjson.dumps(m)) for m in messages) + max(1, len(messages)) + 1
        count = {"input_tokens": max(1, size // 4)}
        return UpstreamResponse(body=orjson.dumps(count), message=count, latency_ms=0.0)

    def create(self, raw_body: bytes, body: dict[str, Any], *, headers: dict[str, str]) -> UpstreamResponse:
        started = time.perf_counter()
        digest = hashlib.sha256(raw_body).hexdigest()
        prompt = _last_user_text(body)
        text = f"Simulated answer ({digest[:12]}) to: {prompt[:200]}"
        message = {
            "id": f"msg_sim_{digest[:24]}",
            "type": "message",
            "role": "assistant",
            "model": str(body.get("model", "")),
            "content": [{"type": "text", "text": text}],
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": {"input_tokens": max(1, len(raw_body) // 4), "output_tokens": max(1, len(text) // 4)},
        }
        content = orjson.dumps(message)
        return UpstreamResponse(body=content, message=message, latency_ms=(time.perf_counter() - started) * 1000)


def _last_user_text(body: dict[str, Any]) -> str:
    for message in reversed(body.get("messages") or []):
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, str):
                return content
            if isinstance(content, list):
                return " ".join(b.get("text", "") for b in content if isinstance(b, dict) and b.get("type") == "text")
    return ""


_upstream_lock = threading.Lock()
_upstreams: dict[tuple[str, str, str], Upstream] = {}


def get_upstream() -> Upstream:
    """The configured upstream, one per (kind, base URL, key) per process (clients pool connections)."""
    kind = app_settings.upstream_kind
    if kind not in UPSTREAM_KINDS:  # never a silent stand-in for a typo (system check E003)
        raise ImproperlyConfigured(f"RESPCACHE_UPSTREAM is {kind!r}: use 'anthropic' or 'simulated'.")
    handle = (kind, os.environ.get("ANTHROPIC_BASE_URL", ""), os.environ.get("ANTHROPIC_API_KEY", ""))
    with _upstream_lock:
        found = _upstreams.get(handle)
        if found is None:
            found = _upstreams[handle] = AnthropicUpstream() if kind == ANTHROPIC else SimulatedUpstream()
        return found


def reset_upstreams() -> None:
    with _upstream_lock:
        _upstreams.clear()


def refuse_silent_simulation(*, production: bool) -> None:
    """Raise ImproperlyConfigured when a ``production`` service would answer from the simulated
    upstream without having been told to by name (system check respcache.E007 says the same)."""
    if production and app_settings.silently_simulated:
        raise ImproperlyConfigured(
            "respcache refuses to start: with the production settings on, the simulated upstream "
            "would answer every call (ANTHROPIC_API_KEY and RESPCACHE_UPSTREAM are unset). Set "
            "ANTHROPIC_API_KEY, or RESPCACHE_UPSTREAM=simulated to serve simulated answers on purpose."
        )
