"""Read-only queries: workload policies and API-key grants behind a short per-process copy; the
workloads' numbers (one Redis round trip for all of them) and entries for every reader.

The hit path must not touch the database, so each worker keeps what it read for
``LOCAL_CACHE_SECONDS`` (5 s by default). A policy edit, a bump or a revoked key does not wait
for that: the change is announced on a Redis channel that every process listens on through its
one Pub/Sub connection (``listen_for_changes``), and each drops its local copies when it hears
it, or when that connection was re-opened (a message may have been missed meanwhile). The
expiry is the safety net for a process that cannot hear Redis at all. Key versions need neither:
the current version lives in Redis too (store/scripts/lookup.lua), so a bump is seen by every
worker on its next call. The copies are bounded
(``LocalCopies``): answers for unknown slugs and keys are kept apart, so a flood of random keys
cannot push out the valid ones.

Nothing here writes: a key's use is recorded by the caller (services.api_key_mark_used).

Stale if error: when the database fails, a workload or key this process has read before keeps
its last known policy or grant (``LocalCopies`` keeps the last value it loaded for each key,
apart from the expiring copy), so hits keep being served; one it has never read is refused with
``DatabaseUnavailable`` (503), never a 500.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, cast

from cachetools import LRUCache, TTLCache
from django.core.signals import setting_changed
from django.db import DatabaseError

from respcache import keys, locks, stats, store
from respcache.conf import app_settings
from respcache.exceptions import DatabaseUnavailable
from respcache.models import ApiKey, Workload
from respcache.stats import Totals

logger = logging.getLogger(__name__)

_K = TypeVar("_K")
_V = TypeVar("_V")


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
    #: Budgets (0: no limit): upstream calls per UTC minute, upstream tokens per UTC day.
    max_upstream_per_minute: int = 0
    max_tokens_per_day: int = 0
    shadow: bool = False

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
            max_upstream_per_minute=workload.max_upstream_per_minute,
            max_tokens_per_day=workload.max_tokens_per_day,
            shadow=workload.shadow,
        )


@dataclass(frozen=True)
class Grant:
    """What a valid API key may do."""

    key_id: str
    name: str
    prefix: str
    workloads: frozenset[str]
    managed_workloads: frozenset[str]


#: How many workloads and granted keys a process keeps: far more than a deployment has, so a
#: valid one is never pushed out by its peers; only memory is bounded.
LOCAL_COPY_MAXSIZE = 10_000
#: How many "no such thing" answers (an unknown slug, a wrong key) it keeps, apart and fewer: a
#: flood of random keys pushes out other unknown keys only, never a valid grant.
LOCAL_MISSING_MAXSIZE = 1_000


class LocalCopies(Generic[_K, _V]):
    """What the database answered for a key, kept ``LOCAL_CACHE_SECONDS`` in this process (0: not
    kept, every call reads). Values live in one bounded ``cachetools.TTLCache``, ``None`` answers
    in a smaller one beside it; both behind one lock (cachetools maps are not thread-safe).

    The setting is read once, and again after it changes (``setting_changed``): reading it costs
    more than a held answer. ``timer`` is the TTLCaches' clock: tests inject theirs.
    """

    def __init__(
        self,
        *,
        maxsize: int = LOCAL_COPY_MAXSIZE,
        missing_maxsize: int = LOCAL_MISSING_MAXSIZE,
        timer: Callable[[], float] = time.monotonic,
    ) -> None:
        self._maxsize, self._missing_maxsize, self._timer = maxsize, missing_maxsize, timer
        self._lock = threading.Lock()
        self._ttl = 0.0
        self._stale = True  # the setting is to be read on the next call
        self._found: TTLCache[_K, _V] = TTLCache(maxsize, 0.0, timer)
        self._missing: TTLCache[_K, bool] = TTLCache(missing_maxsize, 0.0, timer)
        #: The last value loaded for each key, whatever its age: served when the database fails
        #: (stale if error). Not emptied by clear(): a revoked key is dropped when a load says so.
        self._last_known: LRUCache[_K, _V] = LRUCache(maxsize)
        #: Bumped by clear() and setting changes: a load that started before may have read what
        #: the clear was for (a revoked key), so its answer is not kept.
        self._generation = 0
        setting_changed.connect(self._setting_changed)  # weakly: a dropped instance goes away

    def get_or_load(self, key: _K, load: Callable[[], _V | None]) -> _V | None:
        with self._lock:
            if self._stale:
                self._use_ttl(float(app_settings.LOCAL_CACHE_SECONDS))
            keep = self._ttl > 0
            if keep:
                try:
                    return self._found[key]
                except KeyError:
                    pass
                if key in self._missing:
                    return None
            generation = self._generation
        try:
            value = load()  # outside the lock: one slow read does not hold up every other hit
        except DatabaseError as exc:
            return self._last_known_or_raise(key, exc)
        with self._lock:
            if value is None:
                self._last_known.pop(key, None)
            else:
                self._last_known[key] = value
            if keep and generation == self._generation:
                if value is None:
                    self._missing[key] = True
                else:
                    self._found[key] = value
        return value

    def _last_known_or_raise(self, key: _K, exc: DatabaseError) -> _V:
        with self._lock:
            found = self._last_known.get(key)
        if found is None:
            raise DatabaseUnavailable("The database is unavailable; try again shortly.") from exc
        logger.warning("respcache: database unavailable (%s); serving the last known copy", exc)
        return found

    def _use_ttl(self, ttl: float) -> None:
        """Start both maps afresh when the lifetime changed (a TTLCache's TTL is fixed)."""
        if ttl != self._ttl:
            self._found = TTLCache(self._maxsize, max(ttl, 0.0), self._timer)
            self._missing = TTLCache(self._missing_maxsize, max(ttl, 0.0), self._timer)
            self._ttl = ttl
        self._stale = False

    def _setting_changed(self, *, setting: str, **kwargs: Any) -> None:
        if setting == "RESPCACHE":
            with self._lock:
                self._stale = True
                self._generation += 1

    def __len__(self) -> int:
        """How many answers are kept now, found and missing (expired ones may still count)."""
        with self._lock:
            return len(self._found) + len(self._missing)

    def clear(self) -> None:
        with self._lock:
            self._found.clear()
            self._missing.clear()
            self._generation += 1


_policies: LocalCopies[str, Policy] = LocalCopies()
_grants: LocalCopies[bytes, Grant] = LocalCopies()


def clear_local_caches() -> None:
    _policies.clear()
    _grants.clear()


_listening: list[object] = []  # the Pub/Sub owner that carries our handler, once it does


def listen_for_changes() -> None:
    """Make this process drop its local copies whenever a change is announced (idempotent;
    called when a policy or a key is read from the database, so every serving process listens
    before it keeps anything)."""
    try:
        hub = locks.hub()
    except Exception:  # noqa: BLE001 - no Redis configured or reachable: the expiry still holds
        return
    if _listening and _listening[0] is hub:
        return
    _listening[:] = [hub]
    hub.listen(store.full_key(keys.policies_channel()), lambda _message: clear_local_caches())


def listening_for_changes() -> bool:
    """Whether this process hears announced changes now (for /healthz-style checks and tests)."""
    return bool(_listening) and locks.hub().confirmed(store.full_key(keys.policies_channel()))


def workload_policy(slug: str) -> Policy | None:
    """The workload's policy, or None when there is no such workload."""

    def load() -> Policy | None:
        listen_for_changes()
        workload = Workload.objects.filter(slug=slug).first()
        return Policy.from_model(workload) if workload else None

    return _policies.get_or_load(slug, load)


def _load_grant(raw_key: str) -> Grant | None:
    listen_for_changes()
    try:
        # The manager is typed for the abstract base; ApiKey's manager returns ApiKeys.
        api_key = cast(ApiKey, ApiKey.objects.get_from_key(raw_key))
    except ApiKey.DoesNotExist:
        return None
    if api_key.has_expired:
        return None
    # No write here: the caller records the use (services.api_key_mark_used), throttled.
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


# --- numbers and entries, for the admin, /metrics, the management API and respcache_stats ------
# Each of these raises CacheUnavailable when Redis does not answer. The numbers of every workload
# come in one Redis round trip (one pipeline), however many workloads there are.


def workloads_numbers(slugs: list[str], windows: tuple[str, ...] = ("1h", "24h")) -> dict[str, dict[str, Totals]]:
    """Counter totals of several workloads over several windows, in one Redis round trip:
    ``{slug: {window: Totals}}``. An unknown window raises ValueError."""
    return stats.window_totals(slugs, windows)


def workload_totals(slug: str, window: str) -> Totals:
    """One workload's counter totals over ``window``, in one Redis round trip."""
    return stats.window_totals([slug], (window,))[slug][window]


@dataclass(frozen=True)
class MetricsNumbers:
    """What /metrics exports per workload: all-time totals and one window's Totals."""

    all_time: dict[str, dict[str, int]]
    window: dict[str, Totals]
    #: The drift baseline (``stats.BASELINE``): the 24 hours before ``window``'s hour.
    baseline: dict[str, Totals]


def workloads_metrics(slugs: list[str], window: str) -> MetricsNumbers:
    """Every workload's all-time totals and its Totals over ``window``, in one Redis round trip."""
    all_time, totals = stats.all_time_and_window_totals(slugs, (window, stats.BASELINE))
    return MetricsNumbers(
        all_time=all_time,
        window={slug: totals[slug][window] for slug in slugs},
        baseline={slug: totals[slug][stats.BASELINE] for slug in slugs},
    )


def workload_series(slug: str, window: str, *, points: int) -> list[tuple[int, dict[str, int]]]:
    return stats.series(slug, window, points=points)


def redis_server_info() -> store.ServerInfo:
    return store.server_info()


def workload_current_version(workload: Workload) -> int:
    return store.current_version(workload.slug, workload.key_version)


def workload_entries_page(
    workload: Workload, *, version: int, cursor: int = 0, page_size: int = 100
) -> store.EntryPage:
    """A page of the entries calls read now: of ``version``, in the configured upstream's key space."""
    return store.scan_entries(workload.slug, version, cursor=cursor, page_size=page_size, upstream=store.key_space())


def workload_hot_entries(
    workload: Workload, *, version: int, max_entries: int = 10_000, text: str = ""
) -> store.HotEntries:
    """The entries calls read now, most read first (see store.hot_entries)."""
    return store.hot_entries(workload.slug, version, upstream=store.key_space(), max_entries=max_entries, text=text)


def workload_entry(
    workload: Workload, *, version: int, fingerprint: str
) -> tuple[store.EntryInfo, store.Entry | None] | None:
    return store.entry_get(workload.slug, version, fingerprint, upstream=store.key_space())


def workload_entries_count(workload: Workload) -> int:
    """How many entries (all key versions, both upstreams' key spaces) the workload has in Redis
    now; one SCAN walk."""
    return store.count_entries(workload.slug)
