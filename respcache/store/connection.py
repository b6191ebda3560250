"""The store's Redis: the client, the Lua scripts, and the cache alias's prefix on every key.

Raw key names come from ``keys``; here they go under the alias's own "prefix:version:" (Django's
default key function), memoised for the hit path. Scripts are the ``scripts/*.lua`` files,
read at first use and registered once per process.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources
from typing import Any

from django.conf import settings
from django.core.cache import caches
from django.core.signals import setting_changed
from django_redis import get_redis_connection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from respcache import keys
from respcache.breaker import Breaker
from respcache.conf import app_settings
from respcache.exceptions import CacheUnavailable

logger = logging.getLogger(__name__)

#: This process's view of whether Redis answers (see respcache.breaker): after a connection
#: failure or a timeout, calls skip Redis for a back-off instead of each paying the timeouts.
breaker = Breaker(lambda: client().ping())


@contextmanager
def guarded() -> Iterator[None]:
    """Every Redis touch runs inside this: a Redis error becomes ``CacheUnavailable`` (callers
    fail open), and the breaker learns whether Redis answers. While the breaker is open the
    touch is refused at once, without a connection attempt."""
    if not breaker.allow():
        raise CacheUnavailable(f"Redis is marked down; next try in {breaker.retry_in():.1f} s")
    try:
        yield
    except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
        if breaker.state == "closed":
            logger.warning("respcache: Redis unreachable (%s); skipping it for a back-off", exc)
        breaker.failure()
        raise CacheUnavailable(str(exc) or type(exc).__name__) from exc
    except RedisError as exc:  # Redis answered, with an error (full, a script refused …): it is up
        breaker.success()
        raise CacheUnavailable(str(exc)) from exc
    breaker.success()


def client() -> Any:
    return get_redis_connection(app_settings.CACHE_ALIAS)


def cache() -> Any:
    """The cache alias's django-redis ``RedisCache`` (iter_keys, delete_pattern, its client's
    make_pattern): typed Any, as Django's ``caches`` only knows it as a BaseCache."""
    return caches[app_settings.CACHE_ALIAS]


def location() -> str:
    """Where the cache alias's Redis is (its LOCATION setting)."""
    return str(settings.CACHES[app_settings.CACHE_ALIAS]["LOCATION"])


# What the hit path would otherwise recompute on every call (the bench counted 70 calls a hit
# in make_key and get_redis_connection): dropped when CACHES or RESPCACHE change.
_prefix: list[str] = []  # the alias's "prefix:version:", once known
_workload_keys: dict[tuple[str, str], tuple[str, str, str]] = {}
#: Whether the alias is a Redis Cluster, and the command that wakes waiters there (memoised).
_topology: dict[str, Any] = {}
#: Script name -> registered Script (a Script keeps its client, hence dropped with the rest).
_scripts: dict[str, Any] = {}


def _reset_memo(*, setting: str, **kwargs: Any) -> None:
    if setting in ("CACHES", "RESPCACHE"):
        breaker.reset()  # another Redis: what we knew of the old one says nothing
        _prefix.clear()
        _workload_keys.clear()
        _scripts.clear()
        _topology.clear()


setting_changed.connect(_reset_memo)


def script(name: str) -> Any:
    """The registered Script of ``scripts/<name>.lua`` (EVALSHA, falling back to EVAL after a
    Redis restart), made once per process: it keeps the client, whose connection pool is
    shared by all threads."""
    found = _scripts.get(name)
    if found is None:
        source = (resources.files("respcache.store") / "scripts" / f"{name}.lua").read_text(encoding="utf-8")
        found = _scripts[name] = client().register_script(source)
    return found


def _key_prefix() -> str:
    """The alias's "prefix:version:". Keys are built by appending to it, here and inside the Lua
    scripts, so the alias must use Django's default key function (system check respcache.E005)."""
    if not _prefix:
        _prefix.append(str(cache().make_key("")))
    return _prefix[0]


def full_key(raw: str) -> str:
    """``raw`` under the cache alias's own KEY_PREFIX and VERSION (Django's prefix:version:key)."""
    return _key_prefix() + raw


def version_key(workload: str) -> str:
    """The workload's key version in Redis (``keys.version_key``, full)."""
    return full_key(keys.version_key(workload))


def clustered() -> bool:
    """Whether the cache alias's Redis is a Redis Cluster (its client a redis-py RedisCluster)."""
    found = _topology.get("clustered")
    if found is None:
        from redis.cluster import RedisCluster  # noqa: PLC0415 - only its type is needed

        found = _topology["clustered"] = isinstance(client(), RedisCluster)
    return bool(found)


def publish_command() -> str:
    """How the scripts wake an entry's waiters: ``SPUBLISH`` (sharded Pub/Sub: the message stays
    on the shard of the entry's slot) on a cluster whose servers have it (Redis 7), else
    ``PUBLISH`` (on a cluster, broadcast to every node)."""
    found = _topology.get("publish")
    if found is None:
        found = "PUBLISH"
        if clustered():
            try:
                with guarded():
                    info = client().info("server")
            except CacheUnavailable:
                return found  # not memoised: asked again once Redis answers
            if "redis_version" not in info:  # a cluster may answer per node: {node: info}
                info = next(iter(info.values()), {})
            if int(str(info.get("redis_version", "0")).split(".")[0] or 0) >= 7:
                found = "SPUBLISH"
        _topology["publish"] = found
    return str(found)


#: On a cluster, a scan cursor holds the primary's index in its low part: node cursor * this + index.
_CURSOR_NODES = 1024


def scan_page(cursor: int, *, match: str, count: int) -> tuple[int, list[bytes]]:
    """One SCAN call from ``cursor`` (0 to start): the next cursor (0 when the scan is complete)
    and the keys matching ``match`` it returned. On a cluster the primaries are scanned one after
    the other, in name order; the cursor says which one and where in it."""
    redis_client = client()
    if not clustered():
        found, batch = redis_client.scan(cursor=cursor, match=match, count=count)
        return int(found), list(batch)
    primaries = sorted(redis_client.get_primaries(), key=lambda node: node.name)
    index, node_cursor = cursor % _CURSOR_NODES, cursor // _CURSOR_NODES
    if index >= len(primaries):
        return 0, []
    cursors, batch = redis_client.scan(cursor=node_cursor, match=match, count=count, target_nodes=primaries[index])
    node_next = int(next(iter(cursors.values()), 0))
    if node_next:
        return node_next * _CURSOR_NODES + index, list(batch)
    index += 1
    return (index if index < len(primaries) else 0), list(batch)


def lookup_version_key(workload: str, fingerprint: str) -> str:
    """The key version the lookup reads for an entry: the workload's one key on one Redis, its
    group's copy (in the entry's slot) on a cluster."""
    if clustered():
        return full_key(keys.version_key(workload, keys.group(fingerprint)))
    return workload_keys(workload)[0]


def version_copies(workload: str) -> list[str]:
    """Every key that holds the workload's key version: one on one Redis, one per group on a
    cluster (a bump raises them all)."""
    if clustered():
        return [full_key(keys.version_key(workload, g)) for g in keys.groups()]
    return [version_key(workload)]


def totals_key(workload: str) -> str:
    """The workload's all-time counters (the bucket fields, plus ``first_read``); never expire."""
    return full_key(keys.totals_key(workload))


def key_space() -> str:
    """The upstream kind whose key space calls read and write: the configured one
    (``RESPCACHE["UPSTREAM"]``, else anthropic when ANTHROPIC_API_KEY is set), the kind
    ``upstream.get_upstream()`` answers with. The store's functions take the kind as an
    argument (anthropic's by default); callers that serve calls pass this."""
    return app_settings.upstream_kind


def workload_keys(workload: str, upstream: str = keys.ANTHROPIC) -> tuple[str, str, str]:
    """A workload's version key (on one Redis), and entry and meta key prefixes in
    ``upstream``'s key space (all full), built once: the lookup script appends
    "<version>:" and the entry's tail (keys.entry_tail) to the prefixes."""
    found = _workload_keys.get((workload, upstream))
    if found is None:
        found = _workload_keys[workload, upstream] = (
            version_key(workload),
            full_key(keys.entry_prefix(workload, upstream)),
            full_key(keys.meta_prefix(workload, upstream)),
        )
    return found
