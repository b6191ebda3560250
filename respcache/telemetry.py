"""One structured log line per call (logger ``respcache.calls``), and the cache outcome on the trace.

The line is one JSON object: when, workload, endpoint (messages or count_tokens), outcome (hit,
miss, wait, bypass, refresh, or error), HTTP status, whether it streamed, the cache key's first 16
hex digits, the caller's key *name* and public prefix, the upstream latency when this call made
one, the Message's usage tokens (on hit and wait: the tokens saved), the stored answer's age, the
call's duration, and the error type on errors. Never message content, never an API key or a
secret. Route or silence it with the logger's level and handlers.

When OpenTelemetry is configured (the ``anthropic`` SDK already depends on its API; add the SDK and
e.g. opentelemetry-instrumentation-django), the request's current span gets ``respcache.workload``,
``respcache.outcome`` and ``respcache.key`` (and the numbers above), so a hit-rate drop shows up in
traces. Without a configured tracer provider this costs one no-op call.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import orjson

from respcache.conf import app_settings

try:
    from opentelemetry import trace
except ImportError:  # pragma: no cover - opentelemetry-api comes with the anthropic SDK
    trace = None  # type: ignore[assignment]

call_logger = logging.getLogger("respcache.calls")

#: How much of the cache key the log line keeps: enough to grep, match X-Respcache-Key, group by.
KEY_PREFIX_CHARS = 16


@dataclass(frozen=True)
class CallRecord:
    """What is known about one finished call. Only names, numbers and hashes: never content."""

    workload: str
    status: int
    outcome: str
    endpoint: str = "messages"
    key: str | None = None
    caller: str | None = None
    api_key_prefix: str | None = None
    upstream_ms: float | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    age: int | None = None
    duration_ms: float | None = None
    error_type: str | None = None
    stream: bool = False

    def log_fields(self) -> dict[str, Any]:
        # Field by field, not dataclasses.asdict: that deep-copies, and it ran on every hit.
        fields: dict[str, Any] = {
            "workload": self.workload,
            "status": self.status,
            "outcome": self.outcome,
            "endpoint": self.endpoint,
            "caller": self.caller,
            "api_key_prefix": self.api_key_prefix,
            "upstream_ms": None if self.upstream_ms is None else round(self.upstream_ms, 1),
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "age": self.age,
            "duration_ms": None if self.duration_ms is None else round(self.duration_ms, 1),
            "error_type": self.error_type,
            "stream": self.stream,
            "key_prefix": self.key[:KEY_PREFIX_CHARS] if self.key else None,
        }
        return {k: v for k, v in fields.items() if v is not None}

    def span_attributes(self) -> dict[str, Any]:
        attributes = {
            "respcache.workload": self.workload,
            "respcache.endpoint": self.endpoint,
            "respcache.outcome": self.outcome,
            "respcache.key": self.key,
            "respcache.caller": self.caller,
            "respcache.upstream_ms": self.upstream_ms,
            "respcache.input_tokens": self.input_tokens,
            "respcache.output_tokens": self.output_tokens,
            "respcache.age": self.age,
            "respcache.error_type": self.error_type,
        }
        return {k: v for k, v in attributes.items() if v is not None}


def usage_of(message: bytes) -> tuple[int | None, int | None]:
    """Input tokens (cache reads and writes included) and output tokens of a Message's usage;
    None for anything else (a token count, a stream whose Message is not at hand)."""
    try:
        usage = orjson.loads(message)["usage"]
        input_tokens = sum(
            int(usage.get(name) or 0)
            for name in ("input_tokens", "cache_read_input_tokens", "cache_creation_input_tokens")
        )
        return input_tokens, int(usage.get("output_tokens") or 0)
    except (orjson.JSONDecodeError, KeyError, AttributeError, TypeError, ValueError):
        return None, None


_second: tuple[int, str] = (-1, "")


def timestamp(now: float) -> str:
    """``now`` as ISO 8601 UTC with milliseconds (``2026-11-26T18:45:00.123+00:00``), the
    seconds formatted once per second: datetime.isoformat cost a tenth of the log line."""
    global _second
    second = int(now)
    cached = _second
    if cached[0] != second:
        cached = _second = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
    return f"{cached[1]}.{int((now - second) * 1000):03d}+00:00"


def wanted() -> bool:
    """Whether anyone reads a record now (log level or a recording span): else skip building it."""
    if call_logger.isEnabledFor(logging.INFO):
        return True
    return trace is not None and trace.get_current_span().is_recording()


def tag_span(record: CallRecord) -> None:
    """Put the call's numbers on the current span (while the request's span is current)."""
    if trace is not None:
        span = trace.get_current_span()
        if span.is_recording():
            span.set_attributes(record.span_attributes())


# Lines wait here, with the time of their call, for the process's writer thread (a greenlet
# under gevent), which writes them every CALL_LOG_BATCH_SECONDS. Written one per call, the line
# cost a hit about a sixth of its CPU in the full request (a tenth more than the same code in a
# tight loop: the logging machinery fell out of the CPU's caches between requests); written in
# batches it stays hot. A process that dies hard loses at most one batch; exits flush it.
_batch: deque[tuple[float, CallRecord]] = deque()
_writer_pid: int | None = None
_writer_lock = threading.Lock()
_flush_lock = threading.Lock()


def log_call(record: CallRecord) -> None:
    """Write the call's log line: queued for the next batch, or at once when
    ``CALL_LOG_BATCH_SECONDS`` is 0."""
    if not call_logger.isEnabledFor(logging.INFO):
        return
    now = time.time()
    if app_settings.CALL_LOG_BATCH_SECONDS <= 0:
        _write(now, record)
        return
    _batch.append((now, record))
    if _writer_pid != os.getpid():
        _start_writer()


def flush() -> None:
    """Write every queued line now (the writer thread, exits, and tests call it). A flush that
    finds another one writing waits for it: when it returns, every line queued before is out."""
    with _flush_lock:
        while True:
            try:
                at, record = _batch.popleft()
            except IndexError:
                return
            try:
                _write(at, record)
            except Exception:  # one bad line must not stop the others
                logging.getLogger(__name__).exception("respcache: could not write a call's log line")


def _write(at: float, record: CallRecord) -> None:
    fields = {"ts": timestamp(at), "event": "respcache.call"}
    fields.update(record.log_fields())
    # makeRecord + handle rather than .info(): .info() walks the stack on every call to find
    # the caller's file and line, which this line never shows.
    line = call_logger.makeRecord(
        call_logger.name, logging.INFO, __file__, 0, orjson.dumps(fields).decode(), (), None,
        extra={"respcache": fields},
    )
    line.created, line.msecs = at, (at - int(at)) * 1000  # when the call ended, not the batch
    call_logger.handle(line)


def _start_writer() -> None:
    """One writer per process (a forked worker starts its own on its first line)."""
    global _writer_pid
    with _writer_lock:
        if _writer_pid == os.getpid():
            return
        _writer_pid = os.getpid()
        threading.Thread(target=_write_batches, daemon=True, name="respcache-call-log").start()


def _write_batches() -> None:
    while True:
        time.sleep(max(0.001, float(app_settings.CALL_LOG_BATCH_SECONDS)))
        flush()


atexit.register(flush)


def record_call(record: CallRecord) -> None:
    """Tag the current span and write the call's log line."""
    tag_span(record)
    log_call(record)
