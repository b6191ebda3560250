"""``cached_message_create()``: the one orchestrator of a cached call, and the governance services.

A call goes: decide whether it is cacheable → look the entry up (one Redis round trip, counted)
→ on a miss take the key's lock and call the upstream once, or wait for the holder's answer
(woken by Pub/Sub), or after ``wait_max`` fall through and call the upstream → store → count.
``cached_message_stream()`` takes the same steps for ``"stream": true`` and answers SSE: a
stored Message is replayed as events; an upstream stream is passed to the caller as it arrives
and stored once it is complete. ``cached_count_tokens()`` serves ``count_tokens`` the same way,
in its own key space.

Redis failing is decided here, once: the call is served from the upstream (fail-open), a cache
error is counted (kept in the process until Redis answers again) and logged; the caller never
sees a Redis error. Upstream errors are never stored; the lock holder's error is handed to the
callers waiting on it, who stop waiting at once.
"""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import orjson
from django.db import transaction
from django.db.models import F

from respcache import keys, locks, sse, stats, store
from respcache.conf import app_settings
from respcache.exceptions import (
    CacheUnavailable,
    InvalidRequest,
    UpstreamError,
    UpstreamUnavailable,
)
from respcache.models import ApiKey, AuditEntry, Workload
from respcache.selectors import Policy, clear_local_caches
from respcache.upstream import Upstream, UpstreamResponse, UpstreamStream, get_upstream

logger = logging.getLogger(__name__)

#: How long a waiter that takes over a free lock listens for the failure its holder may have
#: just published, before calling the upstream itself.
_TAKEOVER_DRAIN_SECONDS = 0.05

#: What ``X-Respcache`` says.
HIT, MISS, WAIT, BYPASS, REFRESH = "hit", "miss", "wait", "bypass", "refresh"
#: Counted outcome of a waiter that gave up after wait_max and called the upstream itself.
FALLTHROUGH = "fallthrough"


@dataclass(frozen=True)
class CachedResult:
    """What a cached call answered. ``status`` is X-Respcache; ``outcome`` what was counted."""

    status: str
    body: bytes
    fingerprint: str | None
    outcome: str
    age: int | None = None
    #: A streamed answer's SSE bytes, to send in order (``cached_message_stream``); ``body`` is
    #: then the stored Message on hit and wait, else empty.
    stream: Iterator[bytes] | None = None
    #: Latency of this call's own upstream call, when it made one (for logs and traces).
    upstream_ms: float | None = None
    #: The Message's usage tokens when already known (from the entry's accounting, or the
    #: upstream's answer), so the call's log line need not parse the body; None if unknown.
    input_tokens: int | None = None
    output_tokens: int | None = None


def is_cacheable(policy: Policy, body: dict[str, Any]) -> bool:
    """Temperature above 0 is never cached; without one, the workload's strictness decides."""
    if not policy.enabled:
        return False
    temperature = body.get("temperature")
    if temperature is None:
        return not policy.strict
    if isinstance(temperature, bool) or not isinstance(temperature, int | float):
        return False
    return temperature == 0


@dataclass(frozen=True)
class _Names:
    entry: str
    meta: str
    lock: str
    channel: str

    @classmethod
    def build(cls, slug: str, version: int, fingerprint: str) -> _Names:
        raw = keys.entry_key(workload=slug, version=version, fingerprint=fingerprint)
        return cls(
            entry=store.full_key(raw),
            meta=store.full_key(keys.meta_key(raw)),
            lock=store.full_key(keys.lock_key(raw)),
            channel=store.full_key(keys.channel_name(raw)),
        )


def _count(slug: str, now: float, **fields: int) -> None:
    try:
        stats.count(slug, now, **fields)
    except CacheUnavailable as exc:
        logger.warning("respcache: counters not written (%s); kept for the next batch", exc)


def _failed_call(outcome: str, started: float) -> dict[str, int]:
    """The counters of an upstream call that failed after ``started``: its time counts in the
    upstream latency like any call's (upstream_ms / upstream_calls is the mean)."""
    elapsed_ms = int(round((time.perf_counter() - started) * 1000))
    return {outcome: 1, "upstream_error": 1, "upstream_calls": 1, "upstream_ms": elapsed_ms}


def _error_message(exc: UpstreamError) -> bytes:
    return b"error:" + orjson.dumps(
        {
            "status": exc.status_code,
            "type": exc.error_type,
            "message": exc.message,
            "body": base64.b64encode(exc.body()).decode(),
            "headers": exc.headers(),
        }
    )


def _error_from_message(message: bytes) -> UpstreamError:
    data = orjson.loads(message[len(b"error:") :])
    return UpstreamError(
        data["message"],
        status_code=int(data["status"]),
        error_type=data["type"],
        body=base64.b64decode(data["body"]),
        headers=data.get("headers") or {},
    )


class _Call:
    """One request's state: what the orchestration steps below share."""

    #: Whether answers carry a Message's usage (token counts do not).
    reports_usage = True

    def __init__(
        self,
        *,
        policy: Policy,
        body: dict[str, Any],
        raw_body: bytes,
        fingerprint: str,
        headers: dict[str, str],
        upstream: Upstream,
        clock: Callable[[], float],
        monotonic: Callable[[], float],
    ) -> None:
        self.policy = policy
        self.slug = policy.slug
        self.body = body
        self.raw_body = raw_body
        self.fingerprint = fingerprint
        self.headers = headers
        self._upstream = upstream
        self.clock = clock
        self.monotonic = monotonic
        self.now = clock()
        self.bucket_keys, self.bucket_ttls = stats.bucket_keys(self.slug, self.now)
        self.upstream_ms: float | None = None


    @property
    def upstream(self) -> Upstream:
        # Resolved on first use: a hit never needs it.
        if self._upstream is None:
            self._upstream = get_upstream()
        return self._upstream
    def result(
        self,
        status: str,
        body: bytes,
        outcome: str,
        stored_at: float | None = None,
        stream: Iterator[bytes] | None = None,
        tokens: tuple[int | None, int | None] = (None, None),
    ) -> CachedResult:
        age = None if stored_at is None else max(0, int(self.clock() - stored_at))
        input_tokens, output_tokens = tokens if self.reports_usage else (None, None)
        return CachedResult(
            status=status, body=body, fingerprint=self.fingerprint, outcome=outcome, age=age, stream=stream,
            upstream_ms=self.upstream_ms, input_tokens=input_tokens, output_tokens=output_tokens,
        )

    # The steps a kind of call changes: what is cacheable, what the upstream is asked, how a
    # stored entry is served, how an upstream answer is fetched and stored.

    def cacheable(self) -> bool:
        return is_cacheable(self.policy, self.body)

    def request_upstream(self) -> UpstreamResponse:
        return self.upstream.create(self.raw_body, self.body, headers=self.headers)

    def answer(self, status: str, found: store.Lookup) -> CachedResult:
        """Serve a stored entry (``hit`` or ``wait``)."""
        entry = found.entry
        assert entry is not None
        return self.result(
            status, entry.message, status, entry.stored_at, tokens=(found.input_tokens, found.output_tokens)
        )

    def fetch(
        self, status: str, outcome: str, names: _Names | None = None, token: str = "", **extra: int
    ) -> CachedResult:
        """Ask the upstream and answer; store under ``names`` (releasing ``token``'s lock and
        waking the waiters) unless ``names`` is None. A failure releases the lock at once."""
        with _released_on_failure(names, token):
            # Stored: the call's counters ride in the write's round trip instead of their own.
            response = self.call_upstream(outcome, count=names is None, **extra)
        if names is not None:
            self.write(names, response, token, counts=self.call_counts(outcome, response, **extra))
        return self.result(status, response.body, outcome, tokens=(response.input_tokens, response.output_tokens))

    def lookup(self, outcome: str, *, fetch: bool = True, extra: dict[str, int] | None = None) -> store.Lookup:
        return store.lookup(
            workload=self.slug,
            db_version=self.policy.key_version,
            fingerprint=self.fingerprint,
            outcome=outcome,
            bucket_keys=self.bucket_keys,
            bucket_ttls=self.bucket_ttls,
            fetch=fetch,
            extra=extra,
        )

    def call_upstream(self, outcome: str, *, count: bool = True, **extra: int) -> UpstreamResponse:
        """Call the upstream once and count ``outcome`` with its latency (unless ``count`` is
        False: the caller counts it with the write) or its error."""
        started = time.perf_counter()
        try:
            response = self.request_upstream()
        except UpstreamError:
            _count(self.slug, self.now, **_failed_call(outcome, started), **extra)
            raise
        self.upstream_ms = response.latency_ms
        if count:
            _count(self.slug, self.now, **self.call_counts(outcome, response, **extra))
        return response

    @staticmethod
    def call_counts(outcome: str, response: UpstreamResponse, **extra: int) -> dict[str, int]:
        return {outcome: 1, "upstream_calls": 1, "upstream_ms": int(round(response.latency_ms)), **extra}

    def write(
        self, names: _Names, response: UpstreamResponse, token: str = "", counts: dict[str, int] | None = None
    ) -> None:
        """Store the answer (and release ``token``'s lock, wake waiters), adding ``counts`` to
        the counters in the same round trip; a Redis error is counted, with ``counts``."""
        stored_at = self.clock()
        exp_keys, exp_ttls = stats.expiry_bucket_keys(self.slug, stored_at, self.policy.ttl_seconds)
        counts = stats.with_pending(self.slug, counts or {})  # kept while Redis was down
        try:
            store.write(
                workload=self.slug,
                key=names.entry,
                meta=names.meta,
                lock=names.lock,
                channel=names.channel,
                token=token,
                record=store.encode_record(response.body, stored_at=stored_at, model=response.model),
                ttl_seconds=self.policy.ttl_seconds,
                input_tokens=response.input_tokens,
                output_tokens=response.output_tokens,
                stored_at=stored_at,
                model=response.model,
                bucket_keys=[*self.bucket_keys, *exp_keys],
                bucket_ttls=[*self.bucket_ttls, *exp_ttls],
                counts=counts,
            )
        except CacheUnavailable as exc:
            logger.warning("respcache: answer not stored for %s (%s)", self.slug, exc)
            _count(self.slug, self.now, **{**counts, "cache_error": counts.get("cache_error", 0) + 1})

    def fail_open(self, exc: CacheUnavailable, outcome: str = MISS) -> CachedResult:
        """Redis failed: answer from the upstream, counted as what the call was (``refresh`` for
        a caller that skipped the lookup, else ``miss``) with a cache error."""
        logger.warning("respcache: Redis unavailable for %s, serving from upstream (%s)", self.slug, exc)
        return self.fetch(outcome, outcome, cache_error=1)

    def hold(self, names: _Names, token: str) -> CachedResult:
        """We hold the lock: re-check, call the upstream once, store, wake the waiters."""
        again = self.lookup(WAIT)
        if again.entry is not None:  # written between our lookup and our lock
            _release(names, token, b"ok")
            return self.answer(WAIT, again)
        return self.fetch(MISS, MISS, names, token)

    def fill(self, names: _Names) -> CachedResult:
        """A miss: become the one caller that asks the upstream, or wait for its answer."""
        token = locks.new_token()
        lock_ttl = self.policy.lock_ttl
        if locks.acquire(names.lock, token=token, ttl_seconds=lock_ttl):
            return self.hold(names, token)
        deadline = self.monotonic() + self.policy.wait_max
        with locks.Subscription(names.channel) as subscription:
            message: bytes | None = None
            while True:
                if message is not None and message.startswith(b"error:"):
                    _count(self.slug, self.now, upstream_error=1)
                    raise _error_from_message(message)
                # An "ok" woke us: when it was handed over, for how long after the write this
                # waiter woke (the stampede number that says whether waiters wake at once).
                woke_at = subscription.delivered_at if message is not None and message.startswith(b"ok") else None
                if woke_at is not None:
                    delivered = store.record_of(message)
                    if delivered is not None:
                        # The writer sent the answer itself: count this read (one round
                        # trip) and answer, without reading the entry back.
                        wake = stats.wake_fields((woke_at - delivered.stored_at) * 1000)
                        counted = self.lookup(WAIT, fetch=False, extra=wake)
                        return self.answer(WAIT, replace(counted, entry=delivered))
                # Subscribed first, then read: an answer written in between is never missed.
                found = self.lookup(WAIT)
                if found.entry is not None:
                    if woke_at is not None:
                        _count(self.slug, self.now, **stats.wake_fields((woke_at - found.entry.stored_at) * 1000))
                    return self.answer(WAIT, found)
                message = subscription.poll()
                if message is not None:
                    continue  # "ok": read it; "abandoned": try for the lock; "error:": above
                if locks.acquire(names.lock, token=token, ttl_seconds=lock_ttl):
                    # The lock was free: its holder may have just failed. Redis sent us its
                    # message before our lock reply, so it is (nearly) here: take it first.
                    message = subscription.wait(self.monotonic() + _TAKEOVER_DRAIN_SECONDS, clock=self.monotonic)
                    if message is not None and message.startswith(b"error:"):
                        _release(names, token, b"abandoned")
                        continue
                    if message is not None and message.startswith(b"ok"):
                        # Free because the answer was just written: we were woken, not left.
                        _release(names, token, b"ok")
                        continue
                    subscription.close()
                    return self.hold(names, token)
                message = subscription.wait(deadline, clock=self.monotonic)
                if message is None:
                    break
        # wait_max passed: call the upstream ourselves, and store what we get.
        return self.fetch(MISS, FALLTHROUGH, names)

    def run(self, *, no_cache: bool, no_store: bool) -> CachedResult:
        """The whole call: bypass, refresh, hit, or a miss filled once under the key's lock."""
        if not self.cacheable():
            return self.fetch(BYPASS, BYPASS)
        try:
            if no_cache:
                version = self.lookup("").version
                names = None if no_store else _Names.build(self.slug, version, self.fingerprint)
                return self.fetch(REFRESH, REFRESH, names)
            found = self.lookup(HIT)
            if found.entry is not None:
                return self.answer(HIT, found)
            if no_store:
                return self.fetch(MISS, MISS)
            return self.fill(_Names.build(self.slug, found.version, self.fingerprint))
        except CacheUnavailable as exc:
            return self.fail_open(exc, REFRESH if no_cache else MISS)


class _StreamCall(_Call):
    """A call that asked for ``"stream": true``: the same steps, answered as SSE."""

    def answer(self, status: str, found: store.Lookup) -> CachedResult:
        # Encoded now, not lazily: the response has not begun, so a damaged entry is still a 500.
        entry = found.entry
        assert entry is not None
        replayed = sse.replay(entry.message)
        return self.result(
            status, entry.message, status, entry.stored_at, stream=iter((replayed,)),
            tokens=(found.input_tokens, found.output_tokens),
        )

    def fetch(
        self, status: str, outcome: str, names: _Names | None = None, token: str = "", **extra: int
    ) -> CachedResult:
        """Open the upstream stream (an error before its first byte is raised, so it keeps its
        status); its events reach the caller through a ``_Tee``."""
        started = time.perf_counter()
        with _released_on_failure(names, token):
            try:
                opened = self.upstream.stream(self.raw_body, self.body, headers=self.headers)
            except UpstreamError:
                _count(self.slug, self.now, **_failed_call(outcome, started), **extra)
                raise
        _count(self.slug, self.now, **{outcome: 1, "upstream_calls": 1}, **extra)  # its time: at its end
        return self.result(status, b"", outcome, stream=_Tee(self, opened, names, token))

    def store_stream(
        self, assembler: sse.MessageAssembler, opened: UpstreamStream, names: _Names, token: str
    ) -> None:
        """Store a complete stream's Message (releasing ``token``'s lock), if it can be rebuilt."""
        if not assembler.storable:  # a stream we could not rebuild exactly is never stored
            if token:
                _release(names, token, b"abandoned")
            return
        message = assembler.result()
        latency_ms = (time.perf_counter() - opened.started) * 1000
        response = UpstreamResponse(body=orjson.dumps(message), message=message, latency_ms=latency_ms)
        self.write(names, response, token)


class _Tee:
    """The upstream's SSE bytes, passed on as they arrive, with the Message assembled alongside.

    When ``message_stop`` arrives the Message is stored (releasing the lock, waking the waiters)
    before the caller gets that last event. Anything else stores nothing and releases the lock
    at once: an upstream error (handed to the waiters, who stop waiting) or the caller going away
    (the server ``close()``s us; the waiters are told ``abandoned`` and one of them takes over).
    A class rather than a generator, so that closing it before its first chunk still settles.
    """

    def __init__(self, call: _StreamCall, opened: UpstreamStream, names: _Names | None, token: str) -> None:
        self.call = call
        self.opened = opened
        self.names = names
        self.token = token
        self.chunks = iter(opened)
        self.parser = sse.EventParser()
        self.assembler = sse.MessageAssembler()
        self.settled = names is None  # the lock released, the answer stored, or nothing to store
        self.failure: UpstreamError | None = None
        self.closed = False

    def __iter__(self) -> _Tee:
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
            assert self.names is not None
            self.call.store_stream(self.assembler, self.opened, self.names, self.token)

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
        if not self.settled:
            self.settled = True
            if self.token and self.names is not None:
                reason = _error_message(self.failure) if self.failure is not None else b"abandoned"
                _release(self.names, self.token, reason)
        call = self.call
        latency_ms = int(round((time.perf_counter() - self.opened.started) * 1000))
        _count(call.slug, call.now, upstream_ms=latency_ms, upstream_error=int(self.failure is not None))
        if self.failure is not None:
            logger.warning("respcache: upstream stream failed for %s (%s)", call.slug, self.failure.message)


class _CountTokensCall(_Call):
    """``count_tokens``: deterministic for a body, so cached whenever the workload is on."""

    reports_usage = False

    def cacheable(self) -> bool:
        return self.policy.enabled

    def request_upstream(self) -> UpstreamResponse:
        return self.upstream.count_tokens(self.raw_body, self.body, headers=self.headers)


def _stream_error(error: dict[str, Any]) -> UpstreamError:
    error_type = str(error.get("type") or "api_error")
    message = str(error.get("message") or "upstream stream failed")
    return UpstreamError(
        message,
        status_code=sse.ERROR_STATUS.get(error_type, 500),
        error_type=error_type,
        body=orjson.dumps({"type": "error", "error": error}),
    )


@contextmanager
def _released_on_failure(names: _Names | None, token: str) -> Iterator[None]:
    """If the body fails while ``token`` holds the lock, release it and tell the waiters why."""
    try:
        yield
    except UpstreamError as exc:
        if token and names is not None:
            _release(names, token, _error_message(exc))
        raise
    except BaseException:
        if token and names is not None:
            _release(names, token, b"abandoned")
        raise


def _release(names: _Names, token: str, message: bytes) -> None:
    try:
        locks.release(names.lock, token=token, channel=names.channel, message=message)
    except CacheUnavailable as exc:  # the lock expires by itself after lock_ttl
        logger.warning("respcache: lock not released (%s)", exc)


def _new_call(
    kind: type[_Call],
    *,
    policy: Policy,
    body: dict[str, Any],
    raw_body: bytes,
    beta: str | Iterable[str] | None,
    headers: dict[str, str] | None,
    upstream: Upstream | None,
    clock: Callable[[], float],
    monotonic: Callable[[], float],
    endpoint: str = keys.MESSAGES,
) -> _Call:
    try:
        fingerprint = keys.request_fingerprint(
            body, beta=beta, endpoint=endpoint
        )
    except keys.TooDeep as exc:
        raise InvalidRequest(str(exc)) from exc
    return kind(
        policy=policy,
        body=body,
        raw_body=raw_body,
        fingerprint=fingerprint,
        headers=headers or {},
        upstream=upstream,
        clock=clock,
        monotonic=monotonic,
    )


def cached_message_create(
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
) -> CachedResult:
    """Answer a Messages API request (non-streaming) through the workload's cache.

    ``body`` is the parsed request and ``raw_body`` its bytes (forwarded as they are);
    ``headers`` are the request headers forwarded upstream (``anthropic-beta`` …).
    ``no_cache`` skips the lookup (``refresh``); ``no_store`` does not store the answer.
    Raises InvalidRequest for a body too deeply nested and UpstreamError for upstream errors.
    """
    call = _new_call(
        _Call, policy=policy, body=body, raw_body=raw_body, beta=beta, headers=headers,
        upstream=upstream, clock=clock, monotonic=monotonic,
    )
    return call.run(no_cache=no_cache, no_store=no_store)


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
) -> CachedResult:
    """Answer a ``"stream": true`` Messages API request through the workload's cache.

    Same arguments and errors as ``cached_message_create``; the result's ``stream`` yields the
    SSE bytes. Entries are shared with non-streaming calls (``stream`` is not in the key): a hit
    or a wait replays the stored Message as events; a miss passes the upstream's events on as
    they arrive and stores the assembled Message once ``message_stop`` has arrived. An upstream
    error before the first byte is raised (its status kept); after it, it ends the stream as an
    ``error`` event. Iterate the stream to its end or close it: that releases the key's lock.
    """
    call = _new_call(
        _StreamCall, policy=policy, body=body, raw_body=raw_body, beta=beta, headers=headers,
        upstream=upstream, clock=clock, monotonic=monotonic,
    )
    return call.run(no_cache=no_cache, no_store=no_store)


def cached_count_tokens(
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
) -> CachedResult:
    """Answer a ``/v1/messages/count_tokens`` request through the workload's cache.

    Its entries live in their own key space (the endpoint is hashed into the key). A count is
    deterministic, so it is cached whenever the workload is enabled, whatever the temperature.
    """
    call = _new_call(
        _CountTokensCall, policy=policy, body=body, raw_body=raw_body, beta=beta, headers=headers,
        upstream=upstream, clock=clock, monotonic=monotonic, endpoint=keys.COUNT_TOKENS,
    )
    return call.run(no_cache=no_cache, no_store=no_store)


# --- governance ------------------------------------------------------------------------------

POLICY_FIELDS = ("enabled", "ttl_seconds", "key_version", "strict", "lock_ttl", "wait_max", "description")


def _snapshot(workload: Workload) -> dict[str, Any]:
    return {name: getattr(workload, name) for name in POLICY_FIELDS}


def audit(
    *,
    actor: str,
    action: str,
    workload: Workload | None,
    slug: str = "",
    before: dict[str, Any] | None = None,
    after: dict[str, Any] | None = None,
    entries_purged: int | None = None,
    user: Any = None,
) -> AuditEntry:
    """Record a governance action in the audit trail and in the log."""
    entry = AuditEntry.objects.create(
        actor=actor,
        user=user if getattr(user, "is_authenticated", False) else None,
        action=action,
        workload=workload,
        workload_slug=slug or (workload.slug if workload else ""),
        before=before or {},
        after=after or {},
        entries_purged=entries_purged,
    )
    logger.info(
        "respcache audit: %s %s %s before=%s after=%s purged=%s",
        actor, action, entry.workload_slug, entry.before, entry.after, entries_purged,
    )
    return entry


def workload_upsert(*, slug: str, actor: str, user: Any = None, **fields: Any) -> tuple[Workload, bool]:
    """Create the workload or update the given policy fields; audited."""
    unknown = set(fields) - set(POLICY_FIELDS)
    if unknown:
        raise ValueError(f"unknown workload fields: {', '.join(sorted(unknown))}")
    with transaction.atomic():
        workload = Workload.objects.select_for_update().filter(slug=slug).first()
        created = workload is None
        if workload is None:
            workload = Workload(slug=slug)
        before = {} if created else _snapshot(workload)
        for name, value in fields.items():
            setattr(workload, name, value)
        workload.full_clean()
        workload.save()
        after = _snapshot(workload)
        if created:
            audit(actor=actor, user=user, action=AuditEntry.Action.CREATE, workload=workload, after=after)
        elif before != after:
            record_policy_change(workload, before, actor=actor, user=user)
    clear_local_caches()
    return workload, created


def record_policy_change(workload: Workload, before: dict[str, Any], *, actor: str, user: Any = None) -> None:
    """Audit a saved policy change: enable/disable get their own action, the rest is an edit."""
    after = _snapshot(workload)
    changed = {k for k in after if after[k] != before.get(k)}
    if not changed:
        return
    if changed == {"enabled"}:
        action = AuditEntry.Action.ENABLE if workload.enabled else AuditEntry.Action.DISABLE
    else:
        action = AuditEntry.Action.EDIT
    audit(
        actor=actor,
        user=user,
        action=action,
        workload=workload,
        before={k: before.get(k) for k in sorted(changed)},
        after={k: after[k] for k in sorted(changed)},
    )
    if "key_version" in changed:
        _publish_version(workload)


def _publish_version(workload: Workload) -> None:
    try:
        store.set_version(workload.slug, workload.key_version)
    except CacheUnavailable as exc:  # the next call raises it from the database's value
        logger.warning("respcache: key version not published to Redis (%s)", exc)


def workload_bump(workload: Workload, *, actor: str, user: Any = None) -> int:
    """Increment the key version atomically (two bumps at once give two increments)."""
    with transaction.atomic():
        before = workload.key_version
        Workload.objects.filter(pk=workload.pk).update(key_version=F("key_version") + 1)
        workload.refresh_from_db(fields=["key_version", "updated_at"])
        audit(
            actor=actor,
            user=user,
            action=AuditEntry.Action.BUMP,
            workload=workload,
            before={"key_version": before},
            after={"key_version": workload.key_version},
        )
    _publish_version(workload)
    clear_local_caches()
    return workload.key_version


def workload_purge(workload: Workload, *, actor: str, user: Any = None) -> int:
    """Delete every stored entry of the workload now; returns how many. Raises CacheUnavailable."""
    purged = store.purge(workload.slug)
    audit(
        actor=actor,
        user=user,
        action=AuditEntry.Action.PURGE,
        workload=workload,
        entries_purged=purged,
    )
    return purged


def workload_set_enabled(workload: Workload, enabled: bool, *, actor: str, user: Any = None) -> bool:
    """Turn caching on or off; returns whether anything changed."""
    if workload.enabled == enabled:
        return False
    before = _snapshot(workload)
    workload.enabled = enabled
    workload.save(update_fields=["enabled", "updated_at"])
    record_policy_change(workload, before, actor=actor, user=user)
    clear_local_caches()
    return True


def api_key_create(
    *, name: str, workloads: Iterable[Workload], managed_workloads: Iterable[Workload] = ()
) -> tuple[ApiKey, str]:
    """Create a caller key; the raw key is returned once and stored only hashed."""
    with transaction.atomic():
        api_key, raw = ApiKey.objects.create_key(name=name)
        api_key.workloads.set(list(workloads))
        api_key.managed_workloads.set(list(managed_workloads))
    return api_key, raw


def entry_delete(
    workload: Workload, *, version: int, fingerprint: str, actor: str, user: Any = None
) -> int:
    """Delete one stored entry (and its meta) now; audited. Returns 1, or 0 if it was gone."""
    deleted = store.entry_delete(workload.slug, version, fingerprint)
    audit(
        actor=actor,
        user=user,
        action=AuditEntry.Action.DELETE_ENTRY,
        workload=workload,
        before={"key_version": version, "fingerprint": fingerprint},
        entries_purged=deleted,
    )
    return deleted


def api_key_revoke(api_keys: Iterable[ApiKey]) -> int:
    """Revoke keys: refused on this worker at once, on the others within LOCAL_CACHE_SECONDS."""
    ids = [k.pk for k in api_keys]
    revoked = ApiKey.objects.filter(pk__in=ids, revoked=False).update(revoked=True)
    clear_local_caches()
    return revoked


# === API key use (issue 10: moved out of selectors._load_grant, so that selectors never write) ===
# One self-contained block for the lead to move into services/ at merge: its imports are here so
# that nothing above changes (hence the E402 waivers).
from django.utils import timezone  # noqa: E402

from respcache.selectors import LocalCopies  # noqa: E402

#: The keys whose use this process wrote, each kept LOCAL_CACHE_SECONDS like the grant copies
#: (bounded; a key pushed out is written again on its next use, which is harmless).
_key_use_written: LocalCopies[str, bool] = LocalCopies(missing_maxsize=1)


def api_key_mark_used(key_id: str) -> bool:
    """Record that the key was used now (``ApiKey.last_used_at``), at most once per
    ``LOCAL_CACHE_SECONDS`` per key in this process (every time when it is 0): as often as the
    grant is read from the database, so a hit costs no query in steady state. True if written."""
    wrote = False

    def write() -> bool:
        nonlocal wrote
        ApiKey.objects.filter(pk=key_id).update(last_used_at=timezone.now())
        wrote = True
        return True

    _key_use_written.get_or_load(key_id, write)
    return wrote


# === end of the API key use block ==============================================================
