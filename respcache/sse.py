"""The Messages API's server-sent events: a Message replayed as a stream, a stream assembled into
its Message. Pure: no Django, no Redis, no I/O.

- ``replay(message)``: the SSE bytes of a stored Message, as the API streams it:
  ``message_start`` (the usage) → per block ``content_block_start``, its deltas (``text_delta``
  and ``citations_delta``, ``input_json_delta`` for tool input, ``thinking_delta`` then
  ``signature_delta``), ``content_block_stop`` → ``message_delta`` (stop reason, stop sequence,
  the final usage) → ``message_stop``. Blocks without deltas (``redacted_thinking``, server tool
  results …) arrive whole in their ``content_block_start``, as the API sends them.
- ``EventParser``: bytes as they arrive → ``(event, data)`` pairs (the SSE wire format).
- ``MessageAssembler``: events → the final Message, as a non-streaming call returns it. It keeps
  fields it does not know; a delta it does not know makes the stream not ``storable`` (a Message
  we cannot rebuild exactly is never stored).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import orjson

#: Message fields the API sends in ``message_delta``, not in ``message_start``.
DELTA_FIELDS = ("stop_reason", "stop_sequence", "stop_details", "container")
#: Usage fields that ``message_delta`` repeats as cumulative totals.
DELTA_USAGE_FIELDS = (
    "input_tokens",
    "cache_creation_input_tokens",
    "cache_read_input_tokens",
    "server_tool_use",
    "output_tokens_details",
)
#: HTTP status of an ``error`` event's type, for callers who were not streaming.
ERROR_STATUS = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}


_LINE_END = re.compile(rb"\r\n|\r|\n")


def encode(event: str, data: dict[str, Any]) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def error_event(error_type: str, message: str) -> bytes:
    """An ``error`` event: how the API reports a failure once the stream has begun."""
    return encode("error", {"type": "error", "error": {"type": error_type, "message": message}})


def _streams_input(block: dict[str, Any]) -> bool:
    # tool_use, server_tool_use, mcp_tool_use …: input arrives as input_json_delta.
    return str(block.get("type", "")).endswith("tool_use") and isinstance(block.get("input"), dict)


def _block_events(index: int, block: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    kind = block.get("type")
    deltas: list[dict[str, Any]] = []
    if kind == "text" and isinstance(block.get("text"), str):
        start = dict(block, text="")
        if block["text"]:
            deltas.append({"type": "text_delta", "text": block["text"]})
        if isinstance(block.get("citations"), list):
            start["citations"] = []
            deltas.extend({"type": "citations_delta", "citation": c} for c in block["citations"])
    elif _streams_input(block):
        start = dict(block, input={})
        if block["input"]:
            deltas.append({"type": "input_json_delta", "partial_json": orjson.dumps(block["input"]).decode()})
    elif kind == "thinking" and isinstance(block.get("thinking"), str):
        start = dict(block, thinking="", signature="")
        if block["thinking"]:
            deltas.append({"type": "thinking_delta", "thinking": block["thinking"]})
        deltas.append({"type": "signature_delta", "signature": block.get("signature", "")})
    else:
        start = block
    yield "content_block_start", {"type": "content_block_start", "index": index, "content_block": start}
    for delta in deltas:
        yield "content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta}
    yield "content_block_stop", {"type": "content_block_stop", "index": index}


def message_events(message: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """The events that stream ``message`` (a Message as a non-streaming call returns it)."""
    found = message.get("usage")
    usage: dict[str, Any] = found if isinstance(found, dict) else {}
    start = {k: v for k, v in message.items() if k not in DELTA_FIELDS}
    start.update(content=[], stop_reason=None, stop_sequence=None)
    if usage:
        # As the API does: the input usage up front, the output counted at the end.
        start["usage"] = dict(usage, output_tokens=min(1, int(usage.get("output_tokens") or 0)))
    yield "message_start", {"type": "message_start", "message": start}
    for index, block in enumerate(message.get("content") or []):
        yield from _block_events(index, block)
    delta = {k: message.get(k) for k in DELTA_FIELDS if k in message or k in ("stop_reason", "stop_sequence")}
    final_usage = {k: usage[k] for k in DELTA_USAGE_FIELDS if usage.get(k) is not None}
    final_usage["output_tokens"] = usage.get("output_tokens", 0)
    yield "message_delta", {"type": "message_delta", "delta": delta, "usage": final_usage}
    yield "message_stop", {"type": "message_stop"}


def replay(message: bytes) -> bytes:
    """The SSE bytes of a stored Message (its JSON), all events in one piece."""
    return b"".join(encode(name, data) for name, data in message_events(orjson.loads(message)))


class EventParser:
    """Incremental SSE parser: ``feed`` bytes as they arrive, get the events they complete."""

    def __init__(self) -> None:
        self._buffer = b""
        self._event = ""
        self._data: list[bytes] = []

    def feed(self, chunk: bytes) -> list[tuple[str, bytes]]:
        buffer = self._buffer + chunk
        events: list[tuple[str, bytes]] = []
        pos = 0
        while (end := _LINE_END.search(buffer, pos)) is not None:
            if end.group() == b"\r" and end.end() == len(buffer):
                break  # may be the first half of a \r\n
            found = self._line(buffer[pos : end.start()])
            pos = end.end()
            if found is not None:
                events.append(found)
        self._buffer = buffer[pos:]
        return events

    def close(self) -> list[tuple[str, bytes]]:
        """The stream ended: a held-back \r was a line end. (An event not ended by a blank line
        is dropped, as the SSE standard says.)"""
        return self.feed(b"\n") if self._buffer.endswith(b"\r") else []

    def _line(self, line: bytes) -> tuple[str, bytes] | None:
        if not line:  # a blank line dispatches the event
            if not self._event and not self._data:
                return None
            found = (self._event or "message", b"\n".join(self._data))
            self._event, self._data = "", []
            return found
        if line.startswith(b":"):  # a comment
            return None
        name, _, value = line.partition(b":")
        if value.startswith(b" "):
            value = value[1:]
        if name == b"event":
            self._event = value.decode("utf-8", "replace")
        elif name == b"data":
            self._data.append(value)
        return None


class MessageAssembler:
    """Builds the final Message from a stream's events, keeping every field it carries."""

    def __init__(self) -> None:
        self.message: dict[str, Any] | None = None
        self.blocks: dict[int, dict[str, Any]] = {}
        self._json: dict[int, str] = {}
        self.stopped = False
        self.error: dict[str, Any] | None = None
        #: False once an event could not be understood: the Message may not be rebuilt exactly.
        self.storable = True

    @property
    def complete(self) -> bool:
        """``message_stop`` arrived after a ``message_start``, with no error on the way."""
        return self.stopped and self.message is not None and self.error is None

    def feed(self, event: str, data: bytes) -> None:
        try:
            payload = orjson.loads(data)
        except orjson.JSONDecodeError:
            self.storable = False
            return
        if not isinstance(payload, dict):
            self.storable = False
            return
        try:
            self.add(str(payload.get("type") or event), payload)
        except (KeyError, TypeError, ValueError, AttributeError):  # an event not shaped as documented
            self.storable = False

    def add(self, kind: str, data: dict[str, Any]) -> None:
        if kind == "error":
            error = data.get("error")
            self.error = error if isinstance(error, dict) else {"type": "api_error", "message": str(data)}
        elif kind == "message_start":
            message = data.get("message")
            if isinstance(message, dict):
                self.message = dict(message, usage=dict(message.get("usage") or {}))
            else:
                self.storable = False
        elif self.message is None:
            if kind != "ping":
                self.storable = False
        elif kind == "content_block_start":
            self.blocks[int(data["index"])] = dict(data["content_block"])
        elif kind == "content_block_delta":
            self._delta(int(data["index"]), data["delta"])
        elif kind == "content_block_stop":
            self._finish_block(int(data["index"]))
        elif kind == "message_delta":
            self._message_delta(data)
        elif kind == "message_stop":
            self.stopped = True
        # ping and events added to the API later change nothing in the Message.

    def _delta(self, index: int, delta: dict[str, Any]) -> None:
        block = self.blocks.get(index)
        kind = delta.get("type")
        if block is None:
            self.storable = False
        elif kind == "text_delta":
            block["text"] = block.get("text", "") + delta["text"]
        elif kind == "input_json_delta":
            self._json[index] = self._json.get(index, "") + delta["partial_json"]
        elif kind == "thinking_delta":
            block["thinking"] = block.get("thinking", "") + delta["thinking"]
        elif kind == "signature_delta":
            block["signature"] = delta["signature"]
        elif kind == "citations_delta":
            block["citations"] = [*(block.get("citations") or []), delta["citation"]]
        else:
            self.storable = False

    def _finish_block(self, index: int) -> None:
        raw = self._json.pop(index, "")
        if raw and index in self.blocks:
            try:
                self.blocks[index]["input"] = orjson.loads(raw)
            except orjson.JSONDecodeError:
                self.storable = False

    def _message_delta(self, data: dict[str, Any]) -> None:
        assert self.message is not None
        for name, value in (data.get("delta") or {}).items():
            # Like the SDK: a null container keeps the one message_start gave.
            if value is not None or name != "container":
                self.message[name] = value
        for name, value in (data.get("usage") or {}).items():
            # Cumulative totals; a null keeps the message_start value.
            if value is not None:
                self.message["usage"][name] = value

    def result(self) -> dict[str, Any]:
        """The final Message (call when ``complete``)."""
        assert self.message is not None
        content = [self.blocks[i] for i in sorted(self.blocks)]
        return dict(self.message, content=content)
