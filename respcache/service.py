"""``cached_message_create()``: the one orchestrator of a cached call, and the governance services.

A call goes: decide whether it is cacheable → look the entry up (one Redis round trip, counted)
→ on a miss take the key's lock and call the upstream once, or wait for the holder's answer
(woken by Pub/Sub), or after ``wait_max`` fall through and call the upstream → store → count.

Redis failing is decided here, once: the call is served from the upstream (fail-open), a cache
error is counted (kept in the process until Redis answers again) and logged; the caller never
sees a Redis error. Upstream errors are never stored; the lock holder's error is handed to the
callers waiting on it, who stop waiting at once.
"""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import orjson
from django.db import transaction
from django.db.models import F

from respcache import keys, locks, stats, store
from respcache.conf import app_settings
from respcache.exceptions import CacheUnavailable, InvalidRequest, UpstreamError
from respcache.models import ApiKey, AuditEntry, Workload
from respcache.selectors import Policy, clear_local_caches
from respcache.upstream import Upstream, UpstreamResponse, get_upstream

logger = logging.getLogger(__name__)

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
        self.upstream = upstream
        self.clock = clock
        self.monotonic = monotonic
        self.now = clock()
        self.bucket_keys, self.bucket_ttls = stats.bucket_keys(self.slug, self.now)

    def result(self, status: str, body: bytes, outcome: str, stored_at: float | None = None) -> CachedResult:
        age = None if stored_at is None else max(0, int(self.clock() - stored_at))
        return CachedResult(status=status, body=body, fingerprint=self.fingerprint, outcome=outcome, age=age)

    def lookup(self, outcome: str) -> store.Lookup:
        return store.lookup(
            workload=self.slug,
            db_version=self.policy.key_version,
            fingerprint=self.fingerprint,
            outcome=outcome,
            bucket_keys=self.bucket_keys,
            bucket_ttls=self.bucket_ttls,
        )

    def call_upstream(self, outcome: str, **extra: int) -> UpstreamResponse:
        """Call the upstream once and count ``outcome`` with its latency or its error."""
        try:
            response = self.upstream.create(self.raw_body, self.body, headers=self.headers)
        except UpstreamError:
            _count(self.slug, self.now, **{outcome: 1, "upstream_error": 1, "upstream_calls": 1}, **extra)
            raise
        _count(
            self.slug,
            self.now,
            **{outcome: 1, "upstream_calls": 1, "upstream_ms": int(round(response.latency_ms))},
            **extra,
        )
        return response

    def write(self, names: _Names, response: UpstreamResponse, token: str = "") -> None:
        """Store the answer (and release ``token``'s lock, wake waiters); a Redis error is counted."""
        stored_at = self.clock()
        exp_keys, exp_ttls = stats.expiry_bucket_keys(self.slug, stored_at, self.policy.ttl_seconds)
        try:
            store.write(
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
            )
        except CacheUnavailable as exc:
            logger.warning("respcache: answer not stored for %s (%s)", self.slug, exc)
            _count(self.slug, self.now, cache_error=1)

    def fail_open(self, exc: CacheUnavailable) -> CachedResult:
        logger.warning("respcache: Redis unavailable for %s, serving from upstream (%s)", self.slug, exc)
        response = self.call_upstream(MISS, cache_error=1)
        return self.result(MISS, response.body, MISS)

    def hold(self, names: _Names, token: str) -> CachedResult:
        """We hold the lock: re-check, call the upstream once, store, wake the waiters."""
        again = self.lookup(WAIT)
        if again.entry is not None:  # written between our lookup and our lock
            _release(names, token, b"ok")
            return self.result(WAIT, again.entry.message, WAIT, again.entry.stored_at)
        try:
            response = self.call_upstream(MISS)
        except UpstreamError as exc:
            _release(names, token, _error_message(exc))
            raise
        except BaseException:
            _release(names, token, b"abandoned")
            raise
        self.write(names, response, token)
        return self.result(MISS, response.body, MISS)

    def fill(self, names: _Names) -> CachedResult:
        """A miss: become the one caller that asks the upstream, or wait for its answer."""
        token = locks.new_token()
        lock_ttl = self.policy.lock_ttl
        if locks.acquire(names.lock, token=token, ttl_seconds=lock_ttl):
            return self.hold(names, token)
        deadline = self.monotonic() + self.policy.wait_max
        with locks.Subscription(names.channel) as subscription:
            while True:
                # Subscribed first, then read: an answer written in between is never missed.
                found = self.lookup(WAIT)
                if found.entry is not None:
                    return self.result(WAIT, found.entry.message, WAIT, found.entry.stored_at)
                if locks.acquire(names.lock, token=token, ttl_seconds=lock_ttl):
                    subscription.close()
                    return self.hold(names, token)
                message = subscription.wait(deadline, clock=self.monotonic)
                if message is None:
                    break
                if message.startswith(b"error:"):
                    error = _error_from_message(message)
                    _count(self.slug, self.now, upstream_error=1)
                    raise error
                # "ok": read it; "abandoned": try for the lock again.
        # wait_max passed: call the upstream ourselves, and store what we get.
        response = self.call_upstream(FALLTHROUGH)
        self.write(names, response)
        return self.result(MISS, response.body, FALLTHROUGH)


def _release(names: _Names, token: str, message: bytes) -> None:
    try:
        locks.release(names.lock, token=token, channel=names.channel, message=message)
    except CacheUnavailable as exc:  # the lock expires by itself after lock_ttl
        logger.warning("respcache: lock not released (%s)", exc)


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
    try:
        fingerprint = keys.request_fingerprint(body, beta=beta, max_depth=app_settings.MAX_JSON_DEPTH)
    except keys.TooDeep as exc:
        raise InvalidRequest(str(exc)) from exc
    call = _Call(
        policy=policy,
        body=body,
        raw_body=raw_body,
        fingerprint=fingerprint,
        headers=headers or {},
        upstream=upstream or get_upstream(),
        clock=clock,
        monotonic=monotonic,
    )
    if not is_cacheable(policy, body):
        response = call.call_upstream(BYPASS)
        return call.result(BYPASS, response.body, BYPASS)
    try:
        if no_cache:
            version = call.lookup("").version
            response = call.call_upstream(REFRESH)
            if not no_store:
                call.write(_Names.build(call.slug, version, fingerprint), response)
            return call.result(REFRESH, response.body, REFRESH)
        found = call.lookup(HIT)
        if found.entry is not None:
            return call.result(HIT, found.entry.message, HIT, found.entry.stored_at)
        if no_store:
            response = call.call_upstream(MISS)
            return call.result(MISS, response.body, MISS)
        return call.fill(_Names.build(call.slug, found.version, fingerprint))
    except CacheUnavailable as exc:
        return call.fail_open(exc)


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
