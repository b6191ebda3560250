"""Read-only queries: workload policies and API-key grants, behind a short per-process copy.

The hit path must not touch the database, so each worker keeps what it read for
``LOCAL_CACHE_SECONDS`` (5 s by default): a policy edit or a revoked key takes effect on every
worker within that time. Key versions do not wait for it: the current version lives in Redis
too (store._LOOKUP), so a bump is seen by every worker on its next call.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.utils import timezone

from respcache import stats, store
from respcache.conf import app_settings
from respcache.models import ApiKey, Workload
from respcache.stats import Totals


@dataclass(frozen=True)
class Policy:
    """A workload's policy as the call path needs it: a plain, immutable snapshot."""

    id: int
    slug: str
    enabled: bool
    ttl_seconds: int
    key_version: int
    strict: bool
    lock_ttl: float
    wait_max: float

    @classmethod
    def from_model(cls, workload: Workload) -> Policy:
        return cls(
            id=workload.pk,
            slug=workload.slug,
            enabled=workload.enabled,
            ttl_seconds=workload.ttl_seconds,
            key_version=workload.key_version,
            strict=workload.strict,
            lock_ttl=workload.lock_ttl,
            wait_max=workload.wait_max,
        )


@dataclass(frozen=True)
class Grant:
    """What a valid API key may do."""

    key_id: str
    name: str
    prefix: str
    workloads: frozenset[str]
    managed_workloads: frozenset[str]


class LocalTTLCache:
    """A small thread-safe map whose values live ``ttl`` seconds by ``clock``."""

    def __init__(self, ttl: Callable[[], float], clock: Callable[[], float] = time.monotonic) -> None:
        self._ttl = ttl
        self._clock = clock
        self._data: dict[Any, tuple[float, Any]] = {}
        self._lock = threading.Lock()

    def get_or_load(self, key: Any, load: Callable[[], Any]) -> Any:
        now = self._clock()
        found = self._data.get(key)
        if found is not None and found[0] > now:
            return found[1]
        value = load()
        ttl = self._ttl()
        if ttl > 0:
            with self._lock:
                if len(self._data) > 10_000:  # bound memory against random keys
                    self._data.clear()
                self._data[key] = (now + ttl, value)
        return value

    def clear(self) -> None:
        with self._lock:
            self._data.clear()


_policies = LocalTTLCache(lambda: float(app_settings.LOCAL_CACHE_SECONDS))
_grants = LocalTTLCache(lambda: float(app_settings.LOCAL_CACHE_SECONDS))


def clear_local_caches() -> None:
    _policies.clear()
    _grants.clear()


def workload_policy(slug: str) -> Policy | None:
    """The workload's policy, or None when there is no such workload."""

    def load() -> Policy | None:
        workload = Workload.objects.filter(slug=slug).first()
        return Policy.from_model(workload) if workload else None

    return _policies.get_or_load(slug, load)


def _load_grant(raw_key: str) -> Grant | None:
    try:
        api_key = ApiKey.objects.get_from_key(raw_key)
    except ApiKey.DoesNotExist:
        return None
    if api_key.has_expired:
        return None
    ApiKey.objects.filter(pk=api_key.pk).update(last_used_at=timezone.now())
    return Grant(
        key_id=api_key.pk,
        name=api_key.name,
        prefix=api_key.prefix,
        workloads=frozenset(api_key.workloads.values_list("slug", flat=True)),
        managed_workloads=frozenset(api_key.managed_workloads.values_list("slug", flat=True)),
    )


def api_key_grant(raw_key: str) -> Grant | None:
    """The grant of a presented key, or None when it is unknown, revoked or expired."""
    # Index the local copy by a digest, so raw keys are not kept in memory.
    digest = hashlib.sha256(raw_key.encode()).digest()
    return _grants.get_or_load(digest, lambda: _load_grant(raw_key))


def workloads_list() -> list[Workload]:
    return list(Workload.objects.all())


def workload_get(slug: str) -> Workload | None:
    return Workload.objects.filter(slug=slug).first()


# --- numbers and entries, for the admin -------------------------------------------------------
# Each of these raises CacheUnavailable when Redis does not answer.


def workloads_numbers(
    slugs: list[str], windows: tuple[str, ...] = ("1h", "24h")
) -> dict[str, dict[str, Totals]]:
    """Counter totals of several workloads over several windows, in one Redis round trip."""
    return stats.window_totals(slugs, windows)


def workload_series(slug: str, window: str, *, points: int) -> list[tuple[int, dict[str, int]]]:
    return stats.series(slug, window, points=points)


def redis_server_info() -> store.ServerInfo:
    return store.server_info()


def workload_current_version(workload: Workload) -> int:
    return store.current_version(workload.slug, workload.key_version)


def workload_entries_page(
    workload: Workload, *, version: int, cursor: int = 0, page_size: int = 100
) -> store.EntryPage:
    return store.scan_entries(workload.slug, version, cursor=cursor, page_size=page_size)


def workload_entry(
    workload: Workload, *, version: int, fingerprint: str
) -> tuple[store.EntryInfo, store.Entry | None] | None:
    return store.entry_get(workload.slug, version, fingerprint)


def workload_entries_count(workload: Workload) -> int:
    """How many entries (all key versions) the workload has in Redis now; one SCAN walk."""
    return store.count_entries(workload.slug)
