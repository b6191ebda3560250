"""One structured log line per call (logger ``respcache.calls``), and the cache outcome on the trace.

The line is one JSON object: when, workload, endpoint (messages or count_tokens), outcome (hit,
miss, wait, bypass, refresh, or error), HTTP status, whether it streamed, the cache key's first 16
hex digits, the caller's key *name* and public prefix, the upstream latency when this call made
one, the Message's usage tokens (on hit and wait: the tokens saved), the stored answer's age, the
call's duration, and the error type on errors. Never message content, never an API key or a
secret. Route or silence it with the logger's level and handlers. Lines are written in batches,
off the call, by one ``logging.handlers.QueueListener`` per process (``CALL_LOG_BATCH_SECONDS``;
0 writes each during its call); ``flush()`` writes what is queued, and exits do.

When OpenTelemetry is configured (the ``anthropic`` SDK already depends on its API; add the SDK and
e.g. opentelemetry-instrumentation-django), the request's current span gets ``respcache.workload``,
``respcache.outcome`` and ``respcache.key`` (and the numbers above), so a hit-rate drop shows up in
traces. Without a configured tracer provider this costs one no-op call.
"""

from __future__ import annotations

import atexit
import logging
import os
import queue
import threading
import time
from dataclasses import dataclass
from logging.handlers import QueueListener
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


# Lines wait in a queue, with the time of their call, for the process's QueueListener (a thread;
# a greenlet under gevent, whose patched queue and event block that greenlet, never the hub),
# which writes them in batches: it takes a line, waits CALL_LOG_BATCH_SECONDS for the others of
# its batch, then writes them all. Written one per call, the line cost a hit about a sixth of its
# CPU in the full request (a tenth more than the same code in a tight loop: the logging machinery
# fell out of the CPU's caches between requests); written in batches it stays hot. A process that
# dies hard loses at most one batch; exits flush it.
#
# The call puts a (time, CallRecord) pair on the queue itself, not a LogRecord through a
# QueueHandler: building the LogRecord and passing it through the handler cost the call 4.7 us,
# the pair 0.3 us (same machine, same record), and the LogRecord is what batching keeps off the
# call. The listener's prepare() turns the pair into the line, stamped with the call's time.


class _BatchListener(QueueListener):
    """A QueueListener that writes the queued calls' lines to ``call_logger`` in batches.

    Its queue holds (time, CallRecord) pairs, and flush() markers: an Event the listener sets
    when it reaches it, every line queued before being written by then.
    """

    def __init__(self) -> None:
        # A SimpleQueue: a put costs the call ~0.1 us, a queue.Queue ~1 us (and ~1 us more to
        # take it out and mark it done). gevent's monkey-patching swaps both for cooperative ones.
        self.lines: queue.SimpleQueue[tuple[float, CallRecord] | threading.Event | None] = queue.SimpleQueue()
        super().__init__(self.lines)
        #: Set by flush() and at exit: the batch being gathered is written now.
        self.wake = threading.Event()

    def dequeue(self, block: bool) -> Any:
        try:
            return self.lines.get_nowait()  # the rest of the batch
        except queue.Empty:
            pass
        item = self.lines.get(block)  # idle: wait for a line, however long that takes ...
        if isinstance(item, tuple):
            # ... then for the others of its batch.
            self.wake.wait(max(0.001, float(app_settings.CALL_LOG_BATCH_SECONDS)))
            self.wake.clear()
        return item

    def prepare(self, record: Any) -> logging.LogRecord:
        at, call = record
        return _line(at, call)

    def handle(self, record: Any) -> None:
        if isinstance(record, threading.Event):  # a flush() waiting for the lines before it
            record.set()
            return
        try:
            call_logger.handle(self.prepare(record))
        except Exception:  # one bad line must not stop the others (nor the listener)
            logging.getLogger(__name__).exception("respcache: could not write a call's log line")


_listener: _BatchListener | None = None
_listener_lock = threading.Lock()
_flush_lock = threading.Lock()
_exiting = False


def log_call(record: CallRecord) -> None:
    """Write the call's log line: queued for the next batch, or at once when
    ``CALL_LOG_BATCH_SECONDS`` is 0."""
    if not call_logger.isEnabledFor(logging.INFO):
        return
    now = time.time()
    if app_settings.CALL_LOG_BATCH_SECONDS <= 0 or _exiting:
        call_logger.handle(_line(now, record))
        return
    _queue_line(now, record)


def _queue_line(at: float, record: CallRecord) -> None:
    listener = _listener or _start_listener()
    listener.lines.put_nowait((at, record))


def flush() -> None:
    """Write every queued line now (exits, the bench and tests call it): when it returns, every
    line queued before is out, written by the listener in the order they came."""
    listener = _listener
    if listener is None:
        return
    reached = threading.Event()
    listener.lines.put_nowait(reached)
    with _flush_lock:  # concurrent flushes: each wakes the listener, the last one lets it rest
        listener.wake.set()
        reached.wait()
        listener.wake.clear()  # else the next batch, queued after this flush, would not wait


def _line(at: float, record: CallRecord) -> logging.LogRecord:
    fields = {"ts": timestamp(at), "event": "respcache.call"}
    fields.update(record.log_fields())
    # makeRecord rather than .info(): .info() walks the stack on every call to find the caller's
    # file and line, which this line never shows.
    line = call_logger.makeRecord(
        call_logger.name,
        logging.INFO,
        __file__,
        0,
        orjson.dumps(fields).decode(),
        (),
        None,
        extra={"respcache": fields},
    )
    line.created, line.msecs = at, (at - int(at)) * 1000  # when the call ended, not the batch
    return line


def _start_listener() -> _BatchListener:
    """One listener per process, started with its first line (a forked worker starts its own)."""
    global _listener
    with _listener_lock:
        listener = _listener
        if listener is None:
            listener = _BatchListener()
            listener.start()
            _listener = listener
        return listener


def _forget_listener() -> None:
    """In a forked child: the parent's listener thread did not come along, nor may its queue."""
    global _listener, _listener_lock, _flush_lock
    _listener, _listener_lock, _flush_lock = None, threading.Lock(), threading.Lock()


def _stop_listener() -> None:
    """At exit: write what is queued, stop the listener; a line written later goes out inline."""
    global _exiting, _listener
    _exiting = True
    listener = _listener
    if listener is not None:
        listener.wake.set()
        listener.stop()
        _listener = None


os.register_at_fork(after_in_child=_forget_listener)
atexit.register(_stop_listener)
