"""One cached call: decide, look up, ask the upstream, write, count.

A call goes: decide whether it is cacheable → look the entry up (one Redis round trip, counted)
→ on a miss, stampede.fill(): take the key's lock and ask the upstream once, or wait for the
holder's answer, or after ``wait_max`` fall through and ask the upstream → store → count.
``cached_count_tokens()`` serves ``count_tokens`` the same way, in its own key space;
streaming.py answers ``"stream": true`` with the same steps.

Shadow mode (the workload's ``shadow``): every cacheable call asks the upstream, whatever is
stored, and stores the fresh answer (overwriting); the entry it found first says whether the call
would have hit, what it would have saved, and whether the fresh answer agrees with the stored one
(``Counts.shadowed``). No lock is taken: every caller gets an answer of its own.

Redis failing is decided by the guard (guard.py): the call is served from the upstream
(fail-open), a cache error is counted (kept in the process until Redis answers again) and
logged; the caller never sees a Redis error. Upstream errors are never stored; the lock
holder's error is handed to the callers waiting on it, who stop waiting at once.

A call reads and writes the key space of the configured upstream kind (``store.key_space``:
anthropic or simulated), so a simulated answer is never served as a real one, nor the reverse;
an ``upstream`` object passed in (a test's seam) is taken to be of the configured kind.

Budgets (budgets.py): a call about to go upstream first spends the workload's budget
(``Call.spend_budget``), or is refused with BudgetExceeded (429); hits and waits never do.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson

from respcache import keys, stats, store
from respcache.conf import app_settings
from respcache.exceptions import InvalidRequest, UpstreamError
from respcache.selectors import Policy
from respcache.services import budgets, guard, stampede
from respcache.services import explain as explain_
from respcache.services.counting import (
    BYPASS,
    FALLTHROUGH,
    HIT,
    MISS,
    NO_COUNTS,
    REFRESH,
    SHADOW,
    WAIT,
    Counts,
)
from respcache.services.stampede import Names
from respcache.singleflight import SingleFlight
from respcache.upstream import Upstream, UpstreamResponse, get_upstream

__all__ = [
    "BYPASS",
    "FALLTHROUGH",
    "HIT",
    "MISS",
    "REFRESH",
    "SHADOW",
    "WAIT",
    "CachedResult",
    "Call",
    "CountTokensCall",
    "cached_count_tokens",
    "cached_message_create",
    "is_cacheable",
    "new_call",
    "run_call",
]


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
    #: Why a miss missed (``X-Respcache-Miss``), when the caller asked (``Respcache-Explain: 1``).
    miss: str | None = None


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


#: Calls answered from the upstream while Redis fails, shared per key within this process.
_without_cache: SingleFlight[CachedResult] = SingleFlight()


def failed_call(outcome: str, started: float) -> Counts:
    """The counts of an upstream call that failed after ``started``: its time counts in the
    upstream latency like any call's (upstream_ms / upstream_calls is the mean)."""
    elapsed_ms = (time.perf_counter() - started) * 1000
    return Counts.outcome(outcome) + Counts.upstream_error() + Counts.upstream_call(elapsed_ms)


class Call:
    """One request's state and the steps of its call; a kind of call overrides a few of them."""

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
        upstream: Upstream | None,
        clock: Callable[[], float],
        monotonic: Callable[[], float],
        beta: str | Iterable[str] | None = None,
        endpoint: str = keys.MESSAGES,
        explain: bool = False,
    ) -> None:
        self.policy = policy
        self.beta = beta
        self.endpoint = endpoint
        #: Whether the caller asked why a miss missed (the answer's ``miss``).
        self.explain = explain
        self.explanation: explain_.Explanation | None = None
        #: The key version the lookup resolved (set by ``lookup``).
        self.version = policy.key_version
        self.slug = policy.slug
        #: Whose key space the call reads and writes (the configured upstream kind).
        self.upstream_kind = store.key_space()
        self.body = body
        self.raw_body = raw_body
        self.fingerprint = fingerprint
        self.headers = headers
        self._upstream = upstream
        self.clock = clock
        self.monotonic = monotonic
        self.now = clock()
        self.upstream_ms: float | None = None
        #: Shadow mode: the entry stored for the key before this call asked the upstream.
        self.shadowed: store.Entry | None = None

    @property
    def upstream(self) -> Upstream:
        # Resolved on first use: a hit never needs it.
        if self._upstream is None:
            self._upstream = get_upstream()
        return self._upstream

    def run(self, *, no_cache: bool, no_store: bool) -> CachedResult:
        """The whole call: bypass, or through the cache; if Redis fails, from the upstream."""
        if not self.cacheable():
            return self.answer_from_upstream(BYPASS, BYPASS)
        if self.policy.shadow:  # every caller gets its own fresh answer: no single flight
            return guard.fail_open(
                guard.CALL,
                lambda: self.shadow(no_cache=no_cache, no_store=no_store),
                lambda errors: self.answer_from_upstream(SHADOW, SHADOW, counts=errors),
                workload=self.slug,
            )
        # Counted as what the call was: refresh for a caller that skipped the lookup, else miss.
        outcome = REFRESH if no_cache else MISS
        return guard.fail_open(
            guard.CALL,
            lambda: self.through_cache(no_cache=no_cache, no_store=no_store),
            lambda errors: self.without_cache(outcome, errors),
            workload=self.slug,
        )

    def without_cache(self, outcome: str, errors: Counts) -> CachedResult:
        """Redis failed: answer from the upstream. Identical calls in this process share one
        upstream call meanwhile (there is no Redis lock to share it across processes)."""
        key = (type(self).__name__, self.slug, self.upstream_kind, self.fingerprint, outcome)
        result, shared = _without_cache.do(key, lambda: self.answer_from_upstream(outcome, outcome, counts=errors))
        if shared:
            self.count(Counts.outcome(outcome) + errors)
        return result

    def through_cache(self, *, no_cache: bool, no_store: bool) -> CachedResult:
        """Refresh, hit, or a miss filled once under the key's lock. Raises CacheUnavailable."""
        if no_cache:
            version = self.lookup("").version
            names = None if no_store else Names.build(self.slug, version, self.fingerprint, self.upstream_kind)
            return self.answer_from_upstream(REFRESH, REFRESH, names)
        found = self.lookup(HIT)
        if found.entry is not None:
            return self.answer(HIT, found)
        if no_store:
            return self.answer_from_upstream(MISS, MISS)
        return stampede.fill(self, Names.build(self.slug, found.version, self.fingerprint, self.upstream_kind))

    def shadow(self, *, no_cache: bool, no_store: bool) -> CachedResult:
        """Shadow mode: read the entry without counting a read, ask the upstream, store the
        fresh answer (unless ``no_store``) and count what the entry would have done. A caller
        that skipped the lookup (``no_cache``) would not have hit. Raises CacheUnavailable."""
        found = self.lookup("")
        self.shadowed = None if no_cache else found.entry
        names = None if no_store else Names.build(self.slug, found.version, self.fingerprint, self.upstream_kind)
        return self.answer_from_upstream(SHADOW, SHADOW, names)

    def shadow_counts(self, response: UpstreamResponse) -> Counts:
        """What a shadow call that would have hit counts, once its fresh answer is here."""
        stored = self.shadowed
        if stored is None:
            return NO_COUNTS
        try:
            before = orjson.loads(stored.message)
        except orjson.JSONDecodeError:
            before = None
        if not isinstance(before, dict):
            return Counts.shadowed(saved_in=0, saved_out=0, agree=False)
        usage = UpstreamResponse(body=stored.message, message=before, latency_ms=0.0)
        return Counts.shadowed(
            saved_in=usage.input_tokens, saved_out=usage.output_tokens, agree=self.same_answer(before, response.message)
        )

    @staticmethod
    def same_answer(stored: dict[str, Any], fresh: dict[str, Any]) -> bool:
        """A Message's answer: its content blocks and stop reason (ids and usage differ)."""
        return stored.get("content") == fresh.get("content") and stored.get("stop_reason") == fresh.get("stop_reason")

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
        explained = self.explanation if self.explain and status == MISS else None
        return CachedResult(
            status=status,
            body=body,
            fingerprint=self.fingerprint,
            outcome=outcome,
            age=age,
            stream=stream,
            upstream_ms=self.upstream_ms,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            miss=explained.header if explained is not None else None,
        )

    # The steps a kind of call changes: what is cacheable, what the upstream is asked, how a
    # stored entry is served, how an upstream answer is obtained and stored.

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

    def answer_from_upstream(
        self, status: str, outcome: str, names: Names | None = None, token: str = "", counts: Counts = NO_COUNTS
    ) -> CachedResult:
        """Ask the upstream and answer; store under ``names`` (releasing ``token``'s lock and
        waking the waiters) unless ``names`` is None. A failure releases the lock at once.
        ``counts`` are counted with the call (a cache error)."""
        counts = counts + self.explain_miss(outcome)
        with stampede.holding(names, token, lock_ttl=self.policy.lock_ttl, workload=self.slug):
            self.spend_budget(outcome, counts)
            # Stored: the call's counters ride in the write's round trip instead of their own.
            response = self.ask_upstream(outcome, counted_now=names is None, counts=counts)
        if names is not None:
            self.write(names, response, token, counts=self.call_counts(outcome, response) + counts)
        return self.result(status, response.body, outcome, tokens=(response.input_tokens, response.output_tokens))

    # The Redis and upstream touches.

    def spend_budget(self, outcome: str, counts: Counts = NO_COUNTS) -> None:
        """Before going upstream: spend the workload's budget, or, over it, count the call as
        ``outcome`` refused (with ``counts``) and raise BudgetExceeded."""
        refused = budgets.refusal(self.policy, now=self.clock())
        if refused is not None:
            self.count(Counts.outcome(outcome) + Counts.budget_refused() + counts)
            raise refused

    def spend_tokens(self, input_tokens: int | None, output_tokens: int | None) -> None:
        """Add an upstream answer's tokens to the workload's day (if it has a token budget)."""
        budgets.spend_tokens(self.policy, (input_tokens or 0) + (output_tokens or 0), now=self.clock())

    @functools.cached_property
    def request_fields(self) -> dict[str, str]:
        """The request's per-field fingerprint (computed on a miss only, never on a hit)."""
        return keys.field_fingerprints(self.body, beta=self.beta, max_depth=int(app_settings.MAX_JSON_DEPTH))

    @functools.cached_property
    def shape(self) -> str:
        return keys.request_shape(self.body, endpoint=self.endpoint)

    def explain_miss(self, outcome: str) -> Counts:
        """Find why a miss (or fallthrough) missed (``self.explanation``) and return its reason's
        count; nothing for other outcomes, or when Redis does not answer (guard.EXPLAIN)."""
        if outcome not in (MISS, FALLTHROUGH) or self.explanation is not None:
            return NO_COUNTS

        def read() -> list[store.IndexItem]:
            return store.recent_requests(
                self.slug, self.version, self.shape, upstream=self.upstream_kind, count=explain_.INDEX_KEEP
            )

        candidates = guard.fail_open(guard.EXPLAIN, read, lambda _errors: None, workload=self.slug)
        if candidates is None:
            return NO_COUNTS
        live_after = self.clock() - self.policy.ttl_seconds
        self.explanation = explain_.explain(
            self.request_fields, candidates, fingerprint=self.fingerprint, live_after=live_after
        )
        return Counts.miss_reason(self.explanation.reason)

    def indexing(self, stored_at: float, names: Names) -> store.Indexing:
        """Where the write records this request for later misses of its shape."""
        item = store.IndexItem(fingerprint=self.fingerprint[:16], stored_at=stored_at, fields=self.request_fields)
        return store.Indexing(
            key=store.shape_index(self.slug, self.version, self.shape, self.upstream_kind),
            item=store.encode_index_item(item),
            keep=explain_.INDEX_KEEP,
        )

    def lookup(self, outcome: str, *, read_entry: bool = True, counts: Counts = NO_COUNTS) -> store.Lookup:
        """Resolve the key version and read the entry, counting ``outcome`` (and ``counts``) if
        found; ``read_entry=False`` counts a read of an entry the caller already holds."""
        found = store.lookup(
            workload=self.slug,
            db_version=self.policy.key_version,
            fingerprint=self.fingerprint,
            upstream=self.upstream_kind,
            mark_read=bool(outcome),
            fetch=read_entry,
        )
        self.version = found.version
        if not outcome:
            return found
        if read_entry and found.entry is None:
            # Not there, or a damaged record (its read was marked, but it is a miss).
            return store.Lookup(version=found.version, entry=None) if found.raw_size else found
        read = Counts.outcome(outcome) + counts
        if found.input_tokens or found.output_tokens:
            read += Counts.saved(found.input_tokens or 0, found.output_tokens or 0)
        if not found.counted:  # Redis is full and refused to mark the read
            read += Counts.cache_error()
        self.count(read)
        if found.first_read_buckets:
            stats.count_first_read(self.slug, found.first_read_buckets, self.now)
        return found

    def ask_upstream(self, outcome: str, *, counted_now: bool = True, counts: Counts = NO_COUNTS) -> UpstreamResponse:
        """Call the upstream once and count ``outcome`` with its latency (unless ``counted_now``
        is False: the caller counts it with the write) or its error, plus ``counts``."""
        started = time.perf_counter()
        try:
            response = self.request_upstream()
        except UpstreamError:
            self.count(failed_call(outcome, started) + counts)
            raise
        self.upstream_ms = response.latency_ms
        if self.reports_usage:
            self.spend_tokens(response.input_tokens, response.output_tokens)
        if counted_now:
            self.count(self.call_counts(outcome, response) + counts)
        return response

    def call_counts(self, outcome: str, response: UpstreamResponse) -> Counts:
        return Counts.outcome(outcome) + Counts.upstream_call(response.latency_ms) + self.shadow_counts(response)

    def count(self, counts: Counts) -> None:
        """Add ``counts`` to the workload's counters (in this process: tally.py flushes them)."""
        stats.count(self.slug, self.now, **counts)

    def write(self, names: Names, response: UpstreamResponse, token: str = "", counts: Counts = NO_COUNTS) -> None:
        """Store the answer (and release ``token``'s lock, wake waiters) and count ``counts``
        with it; if Redis fails, with a cache error instead of the write's own counts."""
        stored_at = self.clock()
        expiry_buckets = stats.expiry_bucket_keys(self.slug, stored_at, self.policy.ttl_seconds)[0]

        def store_it() -> None:
            store.write(
                key=names.entry,
                meta=names.meta,
                notes=names.notes,
                lock=names.lock,
                channel=names.channel,
                token=token,
                record=store.encode_record(response.body, stored_at=stored_at, model=response.model),
                ttl_seconds=self.policy.ttl_seconds,
                input_tokens=response.input_tokens,
                output_tokens=response.output_tokens,
                stored_at=stored_at,
                model=response.model,
                expiry_buckets=expiry_buckets,
                request_fields=store.encode_fields(self.request_fields),
                summary=store.encode_summary(explain_.summarise(self.body, response.body)),
                index=self.indexing(stored_at, names),
            )
            self.count(counts + Counts.written())
            stats.count_written(self.slug, expiry_buckets, stored_at)

        def not_stored(errors: Counts) -> None:
            self.count(counts + errors)
            if token:  # the waiters still get the answer, from the message, or are released
                record = store.encode_record(response.body, stored_at=stored_at, model=response.model)
                stampede.release(names, token, store.ok_message(record), workload=self.slug)

        guard.fail_open(guard.WRITE, store_it, not_stored, workload=self.slug)


class CountTokensCall(Call):
    """``count_tokens``: deterministic for a body, so cached whenever the workload is on."""

    reports_usage = False

    def cacheable(self) -> bool:
        return self.policy.enabled

    def spend_budget(self, outcome: str, counts: Counts = NO_COUNTS) -> None:
        """A count spends no tokens: never budgeted."""

    def request_upstream(self) -> UpstreamResponse:
        return self.upstream.count_tokens(self.raw_body, self.body, headers=self.headers)

    @staticmethod
    def same_answer(stored: dict[str, Any], fresh: dict[str, Any]) -> bool:
        return stored == fresh


CallKind = TypeVar("CallKind", bound=Call)


def new_call(
    kind: type[CallKind],
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
    explain: bool = False,
) -> CallKind:
    """A call of ``kind`` for this request; raises InvalidRequest for a body nested deeper than
    ``MAX_JSON_DEPTH`` levels within a message or field."""
    max_depth = int(app_settings.MAX_JSON_DEPTH)
    try:
        fingerprint = keys.request_fingerprint(body, beta=beta, endpoint=endpoint, max_depth=max_depth)
    except keys.TooDeep as exc:
        raise InvalidRequest(f"Request body too deeply nested: {exc} (the MAX_JSON_DEPTH limit).") from exc
    return kind(
        policy=policy,
        body=body,
        raw_body=raw_body,
        fingerprint=fingerprint,
        headers=headers or {},
        upstream=upstream,
        clock=clock,
        monotonic=monotonic,
        beta=beta,
        endpoint=endpoint,
        explain=explain,
    )


def run_call(kind: type[Call], *, no_cache: bool, no_store: bool, **request: Any) -> CachedResult:
    """Build a call of ``kind`` for the request (``new_call``'s arguments) and run it: the one
    body behind ``cached_message_create``, ``cached_count_tokens`` and ``cached_message_stream``."""
    return new_call(kind, **request).run(no_cache=no_cache, no_store=no_store)


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
    explain: bool = False,
) -> CachedResult:
    """Answer a Messages API request (non-streaming) through the workload's cache.

    ``body`` is the parsed request and ``raw_body`` its bytes (forwarded as they are);
    ``headers`` are the request headers forwarded upstream (``anthropic-beta`` …).
    ``no_cache`` skips the lookup (``refresh``); ``no_store`` does not store the answer.
    Raises InvalidRequest for a body too deeply nested and UpstreamError for upstream errors.
    """
    return run_call(
        Call,
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
    explain: bool = False,
) -> CachedResult:
    """Answer a ``/v1/messages/count_tokens`` request through the workload's cache.

    Its entries live in their own key space (the endpoint is hashed into the key). A count is
    deterministic, so it is cached whenever the workload is enabled, whatever the temperature.
    """
    return run_call(
        CountTokensCall,
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
        endpoint=keys.COUNT_TOKENS,
        explain=explain,
    )
