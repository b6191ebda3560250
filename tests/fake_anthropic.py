"""A local fake of the Anthropic Messages API over HTTP: the one stand-in the tests use.

It answers ``POST /v1/messages`` (JSON or SSE with ``"stream": true``) and
``POST /v1/messages/count_tokens`` deterministically from the request. Directives in the last
user text choose what it does, e.g. ``"[[shape:tool_use]] hello [[delay:0.3]]"``:

- ``[[shape:NAME]]``: text (default), multi, tool_use, thinking, stop_sequence, max_tokens, refusal
- ``[[delay:SECONDS]]``: sleep before answering (a slow model)
- ``[[status:CODE]]``: answer with that error status (429 adds ``retry-after: 7``)
- ``[[stream_fail_after:N]]``: with stream, break the connection after N events
- ``[[stream_error_after:N]]``: with stream, send an ``overloaded_error`` error event after N events
- ``[[stream_hold_after:N]]``: with stream, wait for ``stream_gate`` after N events
- ``[[stream_delay:SECONDS]]``: with stream, sleep between events (a slow generation)

The answer does not depend on ``stream``: a streamed answer is the non-streamed one, in events.
``salt`` (empty by default) is mixed into every answer: set it to make the fake answer the same
request differently (a model that changed its mind). Every call is recorded (path, headers,
body) in ``calls``; ``pause`` (a threading.Event, set by default) lets a test hold answers until
it clears the way, ``stream_gate`` (set by default) holds a stream in the middle.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

SHAPES = ("text", "multi", "tool_use", "thinking", "stop_sequence", "max_tokens", "refusal")
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}


def _last_user_text(body: dict[str, Any]) -> str:
    for message in reversed(body.get("messages") or []):
        if message.get("role") != "user":
            continue
        content = message.get("content")
        if isinstance(content, str):
            return content
        return " ".join(b.get("text", "") for b in content if isinstance(b, dict) and b.get("type") == "text")
    return ""


def directives(body: dict[str, Any]) -> dict[str, str]:
    return dict(re.findall(r"\[\[(\w+):([^\]]*)\]\]", _last_user_text(body)))


def make_message(body: dict[str, Any], shape: str = "text") -> dict[str, Any]:
    answered = {k: v for k, v in body.items() if k != "stream"}  # streamed or not, the same answer
    digest = hashlib.sha256(json.dumps(answered, sort_keys=True).encode()).hexdigest()
    prompt = _last_user_text(body)
    text = f"Answer {digest[:10]} to: {prompt}"
    usage = {
        "input_tokens": 10 + len(prompt) // 4,
        "output_tokens": 5 + len(text) // 8,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
        "service_tier": "standard",
    }
    stop_reason, stop_sequence = "end_turn", None
    content: list[dict[str, Any]] = [{"type": "text", "text": text, "citations": None}]
    if shape == "multi":
        content = [
            {"type": "text", "text": "First part. ", "citations": None},
            {"type": "text", "text": text, "citations": None},
        ]
    elif shape == "tool_use":
        content = [
            {"type": "text", "text": "Let me look that up.", "citations": None},
            {
                "type": "tool_use",
                "id": f"toolu_{digest[:20]}",
                "name": "get_weather",
                "input": {"city": "Paris", "units": "celsius", "days": [1, 2], "detail": {"hourly": False}},
            },
        ]
        stop_reason = "tool_use"
    elif shape == "thinking":
        content = [
            {
                "type": "thinking",
                "thinking": "The user wants an answer; think briefly.",
                "signature": "sig" + digest[:30],
            },
            {"type": "text", "text": text, "citations": None},
        ]
    elif shape == "stop_sequence":
        stop_reason, stop_sequence = "stop_sequence", "END"
    elif shape == "max_tokens":
        stop_reason = "max_tokens"
    elif shape == "refusal":
        content = [{"type": "text", "text": "I can't help with that.", "citations": None}]
        stop_reason = "refusal"
    return {
        "id": f"msg_{digest[:24]}",
        "type": "message",
        "role": "assistant",
        "model": body.get("model", "fake-model"),
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": stop_sequence,
        "usage": usage,
    }


def _chunks(text: str, size: int = 7) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]


def sse_events(message: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The Messages API's streaming events for ``message``, split into small deltas."""
    start = dict(message, content=[], stop_reason=None, stop_sequence=None)
    start["usage"] = dict(message["usage"], output_tokens=1)
    events: list[tuple[str, dict[str, Any]]] = [("message_start", {"type": "message_start", "message": start})]
    for index, block in enumerate(message["content"]):
        kind = block["type"]
        if kind == "text":
            empty = dict(block, text="")
            deltas = [{"type": "text_delta", "text": part} for part in _chunks(block["text"])]
        elif kind == "tool_use":
            empty = dict(block, input={})
            raw = json.dumps(block["input"])
            deltas = [{"type": "input_json_delta", "partial_json": part} for part in _chunks(raw, 5)]
        elif kind == "thinking":
            empty = dict(block, thinking="", signature="")
            deltas = [{"type": "thinking_delta", "thinking": part} for part in _chunks(block["thinking"])]
            deltas.append({"type": "signature_delta", "signature": block["signature"]})
        else:
            empty, deltas = block, []
        events.append(("content_block_start", {"type": "content_block_start", "index": index, "content_block": empty}))
        events.append(("ping", {"type": "ping"}))
        for delta in deltas:
            events.append(("content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta}))
        events.append(("content_block_stop", {"type": "content_block_stop", "index": index}))
    events.append(
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": message["stop_reason"], "stop_sequence": message["stop_sequence"]},
                "usage": {"output_tokens": message["usage"]["output_tokens"]},
            },
        )
    )
    events.append(("message_stop", {"type": "message_stop"}))
    return events


class FakeAnthropic:
    """Run with ``start()``; ``url`` is its base URL for ANTHROPIC_BASE_URL."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.pause = threading.Event()
        self.pause.set()
        self.stream_gate = threading.Event()
        self.stream_gate.set()
        self.salt = ""
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FakeAnthropic:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def reset(self) -> None:
        with self.lock:
            self.calls.clear()
        self.salt = ""
        self.pause.set()
        self.stream_gate.set()

    def message_calls(self) -> list[dict[str, Any]]:
        with self.lock:
            return [c for c in self.calls if c["path"] == "/v1/messages"]

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _send_json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.send_header("request-id", "req_fake")
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length)
                try:
                    body = json.loads(raw)
                except ValueError:
                    self._send_json(
                        400, {"type": "error", "error": {"type": "invalid_request_error", "message": "bad json"}}
                    )
                    return
                with fake.lock:
                    fake.calls.append(
                        {"path": self.path, "headers": dict(self.headers.items()), "body": body, "raw": raw}
                    )
                fake.pause.wait(30)
                found = directives(body)
                if "delay" in found:
                    time.sleep(float(found["delay"]))
                if "status" in found:
                    status = int(found["status"])
                    error_type = ERROR_TYPES.get(status, "api_error")
                    headers = {"retry-after": "7"} if status == 429 else {}
                    self._send_json(
                        status, {"type": "error", "error": {"type": error_type, "message": f"fake {status}"}}, headers
                    )
                    return
                if self.path == "/v1/messages/count_tokens":
                    self._send_json(200, {"input_tokens": 3 + len(json.dumps(body.get("messages"))) // 4})
                    return
                if self.path != "/v1/messages":
                    self._send_json(404, {"type": "error", "error": {"type": "not_found_error", "message": self.path}})
                    return
                # The salt changes the digest the answer's text is made from (tests may replace make_message).
                salted = {**body, "salt": fake.salt} if fake.salt else body
                message = make_message(salted, found.get("shape", "text"))
                if body.get("stream"):
                    self._stream(message, found)
                else:
                    self._send_json(200, message)

            def _stream(self, message: dict[str, Any], found: dict[str, str]) -> None:
                fail_after = int(found.get("stream_fail_after") or 0)
                error_after = int(found.get("stream_error_after") or 0)
                hold_after = int(found.get("stream_hold_after") or 0)
                delay = float(found.get("stream_delay") or 0)
                self.send_response(200)
                self.send_header("content-type", "text/event-stream")
                self.send_header("cache-control", "no-cache")
                self.send_header("connection", "close")
                self.end_headers()
                for n, (name, data) in enumerate(sse_events(message), start=1):
                    self.wfile.write(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode())
                    self.wfile.flush()
                    if fail_after and n >= fail_after:
                        break
                    if error_after and n >= error_after:
                        error = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
                        self.wfile.write(f"event: error\ndata: {json.dumps(error)}\n\n".encode())
                        break
                    if hold_after and n == hold_after:
                        fake.stream_gate.wait(30)
                    if delay:
                        time.sleep(delay)
                self.close_connection = True

        return Handler
