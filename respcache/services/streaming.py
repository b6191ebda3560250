"""``cached_message_stream()``: a ``"stream": true`` call, answered as SSE, and its tee.

The same steps as calls.py: a stored Message is replayed as events; an upstream stream is
passed to the caller as it arrives (``Tee``) and stored once it is complete.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

import orjson

from respcache import locks, sse, store
from respcache.exceptions import UpstreamError, UpstreamUnavailable
from respcache.selectors import Policy
from respcache.services import stampede
from respcache.services.calls import CachedResult, Call, failed_call, run_call
from respcache.services.counting import NO_COUNTS, Counts
from respcache.services.stampede import ABANDONED, Names
from respcache.upstream import Upstream, UpstreamResponse, UpstreamStream

__all__ = ["StreamCall", "Tee", "cached_message_stream"]

logger = logging.getLogger(__name__)


class StreamCall(Call):
    """A call that asked for ``"stream": true``: the same steps, answered as SSE."""

    def answer(self, status: str, found: store.Lookup) -> CachedResult:
        # Encoded now, not lazily: the response has not begun, so a damaged entry is still a 500.
        entry = found.entry
        assert entry is not None
        replayed = sse.replay(entry.message)
        return self.result(
            status,
            entry.message,
            status,
            entry.stored_at,
            stream=iter((replayed,)),
            tokens=(found.input_tokens, found.output_tokens),
        )

    def answer_from_upstream(
        self, status: str, outcome: str, names: Names | None = None, token: str = "", counts: Counts = NO_COUNTS
    ) -> CachedResult:
        """Open the upstream stream (an error before its first byte is raised, so it keeps its
        status); its events reach the caller through a ``Tee``."""
        counts = counts + self.explain_miss(outcome)  # before the headers go out
        started = time.perf_counter()
        # The lock is renewed until the stream has settled (stored, failed, or left).
        renewing = stampede.renewal(names, token, self.policy.lock_ttl)
        try:
            with stampede.released_on_failure(names, token, workload=self.slug):
                self.spend_budget(outcome, counts)
                try:
                    opened = self.upstream.stream(self.raw_body, self.body, headers=self.headers)
                except UpstreamError:
                    self.count(failed_call(outcome, started) + counts)
                    raise
        except BaseException:
            if renewing is not None:
                renewing.stop()
            raise
        # Its time is counted when it ends (Tee.close).
        self.count(Counts.outcome(outcome) + Counts.upstream_call() + counts)
        return self.result(status, b"", outcome, stream=Tee(self, opened, names, token, renewing))

    def store_stream(self, assembler: sse.MessageAssembler, opened: UpstreamStream, names: Names, token: str) -> None:
        """Store a complete stream's Message (releasing ``token``'s lock), if it can be rebuilt."""
        if not assembler.storable:  # a stream we could not rebuild exactly is never stored
            if token:
                stampede.release(names, token, ABANDONED, workload=self.slug)
            return
        message = assembler.result()
        latency_ms = (time.perf_counter() - opened.started) * 1000
        response = UpstreamResponse(body=orjson.dumps(message), message=message, latency_ms=latency_ms)
        self.write(names, response, token, counts=self.shadow_counts(response))


class Tee:
    """The upstream's SSE bytes, passed on as they arrive, with the Message assembled alongside.

    When ``message_stop`` arrives the Message is stored (releasing the lock, waking the waiters)
    before the caller gets that last event. Anything else stores nothing and releases the lock
    at once: an upstream error (handed to the waiters, who stop waiting) or the caller going away
    (the server ``close()``s us; the waiters are told ``abandoned`` and one of them takes over).
    A class rather than a generator, so that closing it before its first chunk still settles.
    """

    def __init__(
        self,
        call: StreamCall,
        opened: UpstreamStream,
        names: Names | None,
        token: str,
        renewing: locks.Renewal | None = None,
    ) -> None:
        self.call = call
        self.renewing = renewing
        self.opened = opened
        self.names = names
        self.token = token
        self.chunks = iter(opened)
        self.parser = sse.EventParser()
        self.assembler = sse.MessageAssembler()
        self.settled = names is None  # the lock released, the answer stored, or nothing to store
        self.failure: UpstreamError | None = None
        self.closed = False

    def __iter__(self) -> Tee:
        return self

    def __next__(self) -> bytes:
        if self.closed:
            raise StopIteration
        try:
            chunk = next(self.chunks)
        except StopIteration:
            tail = self.ended()
        except UpstreamError as exc:  # the connection broke mid-stream
            self.failure = exc
            tail = sse.error_event(exc.error_type, exc.message)
        else:
            self.absorb(self.parser.feed(chunk))
            return chunk
        self.close()
        if tail is None:
            raise StopIteration
        return tail

    def absorb(self, events: list[tuple[str, bytes]]) -> None:
        """Assemble ``events``; store the Message the moment it is complete."""
        for event, data in events:
            self.assembler.feed(event, data)
        if self.assembler.complete and not self.settled:
            self.settled = True
            self.stop_renewing()
            assert self.names is not None
            self.call.store_stream(self.assembler, self.opened, self.names, self.token)

    def stop_renewing(self) -> None:
        if self.renewing is not None:
            self.renewing.stop()
            self.renewing = None

    def ended(self) -> bytes | None:
        """The upstream closed the stream: note a failure; the event that tells the caller, if
        the upstream did not."""
        self.absorb(self.parser.close())
        if self.assembler.error is not None:  # an error event, already passed on
            self.failure = _stream_error(self.assembler.error)
        elif not self.assembler.complete:
            self.failure = UpstreamUnavailable("upstream stream ended before message_stop")
            return sse.error_event(self.failure.error_type, self.failure.message)
        return None

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.opened.close()
        call = self.call
        self.stop_renewing()
        if not self.settled:
            self.settled = True
            if self.token and self.names is not None:
                reason = stampede.error_message(self.failure) if self.failure is not None else ABANDONED
                stampede.release(self.names, self.token, reason, workload=call.slug)
        message = self.assembler.message
        if message is not None:  # the usage the stream reported, even a broken one's
            usage = UpstreamResponse(body=b"", message=message, latency_ms=0)
            call.spend_tokens(usage.input_tokens, usage.output_tokens)
        latency_ms = (time.perf_counter() - self.opened.started) * 1000
        failed = Counts.upstream_error() if self.failure is not None else NO_COUNTS
        call.count(Counts.upstream_time(latency_ms) + failed)
        if self.failure is not None:
            logger.warning("respcache: upstream stream failed for %s (%s)", call.slug, self.failure.message)


def _stream_error(error: dict[str, Any]) -> UpstreamError:
    error_type = str(error.get("type") or "api_error")
    message = str(error.get("message") or "upstream stream failed")
    return UpstreamError(
        message,
        status_code=sse.ERROR_STATUS.get(error_type, 500),
        error_type=error_type,
        body=orjson.dumps({"type": "error", "error": error}),
    )


def cached_message_stream(
    *,
    policy: Policy,
    body: dict[str, Any],
    raw_body: bytes,
    beta: str | Iterable[str] | None = None,
    headers: dict[str, str] | None = None,
    no_cache: bool = False,
    no_store: bool = False,
    upstream: Upstream | None = None,
    clock: Callable[[], float] = time.time,
    monotonic: Callable[[], float] = time.monotonic,
    explain: bool = False,
) -> CachedResult:
    """Answer a ``"stream": true`` Messages API request through the workload's cache.

    Same arguments and errors as ``cached_message_create``; the result's ``stream`` yields the
    SSE bytes. Entries are shared with non-streaming calls (``stream`` is not in the key): a hit
    or a wait replays the stored Message as events; a miss passes the upstream's events on as
    they arrive and stores the assembled Message once ``message_stop`` has arrived. An upstream
    error before the first byte is raised (its status kept); after it, it ends the stream as an
    ``error`` event. Iterate the stream to its end or close it: that releases the key's lock.
    """
    return run_call(
        StreamCall,
        no_cache=no_cache,
        no_store=no_store,
        policy=policy,
        body=body,
        raw_body=raw_body,
        beta=beta,
        headers=headers,
        upstream=upstream,
        clock=clock,
        monotonic=monotonic,
        explain=explain,
    )
