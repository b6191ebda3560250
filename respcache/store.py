"""Versioned entry records in Redis through django-redis: lookup, write, scan, purge.

An entry is the upstream's Message JSON, byte for byte, behind a small header::

    b"RC" | schema (1 byte) | flags (1 byte) | payload
    payload = meta JSON | b"\\n" | Message JSON
              (compressed: an LZ4 block with its size when FLAG_LZ4, zlib when FLAG_ZLIB)

A record with an unknown schema or a damaged payload is a miss, never a crash: an older or
newer release may have written it. Beside each entry a small hash (``respcache:m:…``, same TTL)
keeps its read count and accounting (tokens, size, model, stored at) so the hit path counts
tokens saved and first reads without decoding the entry, and the admin lists entries without
fetching them.

The hit path is one round trip: ``_LOOKUP`` resolves the workload's current key version (kept in
Redis so a bump reaches every worker at once), GETs the entry and bumps its counters in one Lua
script: the minute and hour buckets, and the workload's all-time totals (``totals_key``: never
expire, so /metrics can export them as monotonic Prometheus counters). Scripts touch keys they
derive from their arguments, so this needs a single Redis (or a Sentinel group), not Redis Cluster.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import lz4.block
import orjson
from django.conf import settings
from django.core.cache import caches
from django.core.signals import setting_changed
from django_redis import get_redis_connection
from redis.exceptions import RedisError, ResponseError

from respcache.conf import app_settings
from respcache.exceptions import CacheUnavailable

logger = logging.getLogger(__name__)

MAGIC = b"RC"
SCHEMA_VERSION = 1
FLAG_ZLIB = 0x01
FLAG_LZ4 = 0x02
#: A compressed payload declaring more than this is damaged, not decoded (an LZ4 block names its
#: own size: a flipped bit there must not become a huge allocation).
MAX_DECODED_BYTES = 1 << 30


@dataclass(frozen=True)
class Entry:
    """A stored answer: the Message bytes as the upstream sent them, and when they were stored."""

    message: bytes
    stored_at: float
    model: str = ""


def _compress(payload: bytes) -> tuple[bytes, int]:
    if app_settings.COMPRESSOR == "zlib":
        return zlib.compress(payload, app_settings.COMPRESS_LEVEL), FLAG_ZLIB
    return lz4.block.compress(payload, store_size=True), FLAG_LZ4


def encode_record(message: bytes, *, stored_at: float, model: str) -> bytes:
    payload = orjson.dumps({"stored_at": stored_at, "model": model}) + b"\n" + message
    flags = 0
    if len(payload) >= app_settings.COMPRESS_MIN_BYTES:
        compressed, flag = _compress(payload)
        if len(compressed) < len(payload):
            payload, flags = compressed, flag
    return MAGIC + bytes((SCHEMA_VERSION, flags)) + payload


def decode_record(raw: bytes | None) -> Entry | None:
    """The Entry in ``raw``; None for a missing, foreign, older/newer or damaged record."""
    if not raw or raw[:2] != MAGIC or len(raw) < 4 or raw[2] != SCHEMA_VERSION:
        return None
    payload = raw[4:]
    try:
        flags = raw[3]
        if flags & FLAG_LZ4:
            if len(payload) < 4 or int.from_bytes(payload[:4], "little") > MAX_DECODED_BYTES:
                raise ValueError("damaged LZ4 size")
            payload = lz4.block.decompress(payload)
        elif flags & FLAG_ZLIB:
            payload = zlib.decompress(payload)
        head, sep, message = payload.partition(b"\n")
        if not sep:
            return None
        meta = orjson.loads(head)
        return Entry(message=message, stored_at=float(meta["stored_at"]), model=str(meta.get("model", "")))
    except (zlib.error, lz4.block.LZ4BlockError, orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        logger.warning("respcache: unreadable cache record treated as a miss")
        return None


def client() -> Any:
    return get_redis_connection(app_settings.CACHE_ALIAS)


def location() -> str:
    """Where the cache alias's Redis is (its LOCATION setting)."""
    return str(settings.CACHES[app_settings.CACHE_ALIAS]["LOCATION"])


# What the hit path would otherwise recompute on every call (the bench counted 70 calls a hit
# in make_key and get_redis_connection): dropped when CACHES or RESPCACHE change.
_memo: dict[str, Any] = {}


def _reset_memo(*, setting: str, **kwargs: Any) -> None:
    if setting in ("CACHES", "RESPCACHE"):
        _memo.clear()
        _scripts.clear()


setting_changed.connect(_reset_memo)


def _key_prefix() -> str:
    """The alias's "prefix:version:". Keys are built by appending to it, here and inside the Lua
    scripts, so the alias must use Django's default key function (system check respcache.E005)."""
    try:
        return _memo["prefix"]  # type: ignore[no-any-return]
    except KeyError:
        prefix = _memo["prefix"] = str(caches[app_settings.CACHE_ALIAS].make_key(""))
        return prefix


def full_key(raw: str) -> str:
    """``raw`` under the cache alias's own KEY_PREFIX and VERSION (Django's prefix:version:key)."""
    return _key_prefix() + raw


def version_key(workload: str) -> str:
    return full_key(f"respcache:v:{workload}")


def totals_key(workload: str) -> str:
    """The workload's all-time counters (the bucket fields, plus ``first_read``); never expire."""
    return full_key(f"respcache:s:{workload}:total")


def _workload_keys(workload: str) -> tuple[str, str, str, str]:
    """A workload's version key, totals key, and entry and meta key prefixes, built once."""
    memo = _memo.setdefault("workload_keys", {})
    found = memo.get(workload)
    if found is None:
        found = memo[workload] = (
            version_key(workload),
            totals_key(workload),
            full_key(f"respcache:e:{workload}:"),
            full_key(f"respcache:m:{workload}:"),
        )
    return found  # type: ignore[no-any-return]


# KEYS: version key, minute stats bucket, hour stats bucket, all-time totals
# ARGV: database key version, entry key prefix, meta key prefix, fingerprint, outcome,
#       minute bucket ttl, hour bucket ttl, '1' to count only (the caller holds the entry
#       already: it is not read), then extra counter fields and values to add with the outcome
# A bucket's EXPIRE is set when a field is new in it: every script that creates a bucket does
# so, and the deadline is absolute (bucket end + retention), so one EXPIRE per field suffices.
_LOOKUP = """
local dbv = tonumber(ARGV[1])
local ver = tonumber(redis.call('GET', KEYS[1]))
if (not ver) or ver < dbv then
  redis.call('SET', KEYS[1], dbv)
  ver = dbv
end
local suffix = ver .. ':' .. ARGV[4]
local value = false
if ARGV[8] ~= '1' then
  value = redis.call('GET', ARGV[2] .. suffix)
  if (not value) or ARGV[5] == '' then return {ver, value} end
end
local mkey = ARGV[3] .. suffix
local saved_in, saved_out, known = 0, 0, 0
local m = redis.call('HMGET', mkey, 'in', 'out', 'xm', 'xh')
if m[1] then
  known = 1
  saved_in = tonumber(m[1]) or 0
  saved_out = tonumber(m[2]) or 0
  if redis.call('HINCRBY', mkey, 'reads', 1) == 1 then
    if m[3] then redis.call('HINCRBY', m[3], 'exp_read', 1) end
    if m[4] then redis.call('HINCRBY', m[4], 'exp_read', 1) end
    redis.call('HINCRBY', KEYS[4], 'first_read', 1)
  end
end
for i = 2, 4 do
  if redis.call('HINCRBY', KEYS[i], ARGV[5], 1) == 1 and i < 4 then
    redis.call('EXPIRE', KEYS[i], ARGV[4 + i])
  end
  if saved_in ~= 0 then redis.call('HINCRBY', KEYS[i], 'saved_in', saved_in) end
  if saved_out ~= 0 then redis.call('HINCRBY', KEYS[i], 'saved_out', saved_out) end
  for j = 9, #ARGV, 2 do
    redis.call('HINCRBY', KEYS[i], ARGV[j], ARGV[j + 1])
  end
end
return {ver, value, known, saved_in, saved_out}
"""

# KEYS: entry, meta, lock, minute bucket, hour bucket, expiry minute bucket, expiry hour bucket,
#       all-time totals
# ARGV: record, ttl ms, lock token ('' = none), input tokens, output tokens, stored at, size,
#       model, channel, minute ttl, hour ttl, expiry minute ttl, expiry hour ttl, the message
#       that wakes the waiters (``ok_message``), then counter fields and values to add to the
#       current buckets and the totals (the call that produced the answer)
_WRITE = """
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[2], 'reads', 0, 'in', ARGV[4], 'out', ARGV[5], 'stored_at', ARGV[6],
           'size', ARGV[7], 'model', ARGV[8], 'xm', KEYS[6], 'xh', KEYS[7])
redis.call('PEXPIRE', KEYS[2], ARGV[2])
redis.call('HINCRBY', KEYS[4], 'written', 1)
redis.call('EXPIRE', KEYS[4], ARGV[10])
redis.call('HINCRBY', KEYS[5], 'written', 1)
redis.call('EXPIRE', KEYS[5], ARGV[11])
redis.call('HINCRBY', KEYS[6], 'exp_written', 1)
redis.call('EXPIRE', KEYS[6], ARGV[12])
redis.call('HINCRBY', KEYS[7], 'exp_written', 1)
redis.call('EXPIRE', KEYS[7], ARGV[13])
redis.call('HINCRBY', KEYS[8], 'written', 1)
for j = 15, #ARGV, 2 do
  redis.call('HINCRBY', KEYS[4], ARGV[j], ARGV[j + 1])
  redis.call('HINCRBY', KEYS[5], ARGV[j], ARGV[j + 1])
  redis.call('HINCRBY', KEYS[8], ARGV[j], ARGV[j + 1])
end
local released = 0
if ARGV[3] ~= '' and redis.call('GET', KEYS[3]) == ARGV[3] then
  redis.call('DEL', KEYS[3])
  released = 1
end
redis.call('PUBLISH', ARGV[9], ARGV[14])
return released
"""

_scripts: dict[str, Any] = {}


def script(source: str) -> Any:
    """A registered Script (EVALSHA, falling back to EVAL after a Redis restart), made once per
    process: it keeps the client, whose connection pool is shared by all threads."""
    found = _scripts.get(source)
    if found is None:
        found = _scripts[source] = client().register_script(source)
    return found


@dataclass(frozen=True)
class Lookup:
    version: int
    entry: Entry | None
    raw_size: int = 0
    #: The entry's tokens from its accounting hash (what this read saved), when it was counted:
    #: the call's log line takes them from here instead of parsing the Message.
    input_tokens: int | None = None
    output_tokens: int | None = None


def lookup(
    *,
    workload: str,
    db_version: int,
    fingerprint: str,
    outcome: str,
    bucket_keys: Sequence[str],
    bucket_ttls: Sequence[int],
    fetch: bool = True,
    extra: dict[str, int] | None = None,
) -> Lookup:
    """Resolve the current key version and read the entry; count ``outcome`` if found.

    An empty ``outcome`` only resolves the version: nothing is counted, no read is marked.
    ``fetch=False`` counts a read of an entry the caller already holds (a waiter handed it by
    the writer's message) without reading it again; ``extra`` counter fields are added with
    the outcome, in the same round trip.
    """
    version_, totals, entries, metas = _workload_keys(workload)
    args: list[Any] = [db_version, entries, metas, fingerprint, outcome, *bucket_ttls, "0" if fetch else "1"]
    for name, value in (extra or {}).items():
        args += (name, value)
    try:
        version, raw, *accounting = script(_LOOKUP)(keys=[version_, *bucket_keys, totals], args=args)
    except RedisError as exc:
        raise CacheUnavailable(str(exc)) from exc
    input_tokens = output_tokens = None
    if accounting and accounting[0]:
        input_tokens, output_tokens = int(accounting[1]), int(accounting[2])
    return Lookup(
        version=int(version),
        entry=decode_record(raw),
        raw_size=len(raw or b""),
        input_tokens=input_tokens,
        output_tokens=output_tokens,
    )


#: Records up to this size ride in the message that wakes the waiters, so a waiter answers
#: without reading the entry back; a larger one is announced as a bare ``ok`` (read it).
PUBLISH_RECORD_MAX_BYTES = 256 * 1024


def ok_message(record: bytes) -> bytes:
    """What the write publishes: ``ok`` followed by the record when it is small enough."""
    return b"ok" + record if len(record) <= PUBLISH_RECORD_MAX_BYTES else b"ok"


def record_of(message: bytes) -> Entry | None:
    """The Entry an ``ok`` message carries; None for a bare ``ok`` (or anything else)."""
    if message[:2] != b"ok" or len(message) <= 2:
        return None
    return decode_record(message[2:])


def write(
    *,
    workload: str,
    key: str,
    meta: str,
    lock: str,
    channel: str,
    token: str,
    record: bytes,
    ttl_seconds: int,
    input_tokens: int,
    output_tokens: int,
    stored_at: float,
    model: str,
    bucket_keys: Sequence[str],
    bucket_ttls: Sequence[int],
    counts: dict[str, int] | None = None,
) -> bool:
    """Store a record with its accounting, release ``token``'s lock, wake the waiters, and add
    ``counts`` (non-zero values) to the current buckets and the totals.

    Returns whether the lock was still ours. All keys are full (prefixed) keys.
    """
    extra: list[Any] = []
    for name, value in (counts or {}).items():
        if value:
            extra += (name, value)
    try:
        released = script(_WRITE)(
            keys=[key, meta, lock, *bucket_keys, totals_key(workload)],
            args=[
                record,
                int(ttl_seconds * 1000),
                token,
                input_tokens,
                output_tokens,
                stored_at,
                len(record),
                model,
                channel,
                *bucket_ttls,
                ok_message(record),
                *extra,
            ],
        )
    except RedisError as exc:
        raise CacheUnavailable(str(exc)) from exc
    return bool(released)


def set_version(workload: str, version: int) -> None:
    """Raise the workload's key version in Redis to ``version`` (never lower it)."""
    try:
        client().eval(
            "local v = tonumber(redis.call('GET', KEYS[1])) "
            "if (not v) or v < tonumber(ARGV[1]) then redis.call('SET', KEYS[1], ARGV[1]) end",
            1,
            version_key(workload),
            version,
        )
    except RedisError as exc:
        raise CacheUnavailable(str(exc)) from exc


def iter_entry_keys(pattern: str, *, count: int = 1000) -> Iterator[str]:
    """Raw (unprefixed) keys matching the raw glob ``pattern``, by SCAN through django-redis."""
    cache = caches[app_settings.CACHE_ALIAS]
    try:
        yield from cache.iter_keys(pattern, itersize=count)  # type: ignore[attr-defined]
    except RedisError as exc:
        raise CacheUnavailable(str(exc)) from exc


def purge(workload: str) -> int:
    """Delete every entry (all key versions) of ``workload`` with their meta; return how many."""
    cache = caches[app_settings.CACHE_ALIAS]
    try:
        deleted = cache.delete_pattern(f"respcache:e:{workload}:*", itersize=1000)  # type: ignore[attr-defined]
        cache.delete_pattern(f"respcache:m:{workload}:*", itersize=1000)  # type: ignore[attr-defined]
    except RedisError as exc:
        raise CacheUnavailable(str(exc)) from exc
    return int(deleted or 0)


def ping() -> None:
    try:
        client().ping()
    except RedisError as exc:
        raise CacheUnavailable(str(exc)) from exc


# --- browsing, for the admin ------------------------------------------------------------------

#: The fields of an entry's meta hash the admin lists (written by ``_WRITE``).
META_FIELDS = ("reads", "in", "out", "stored_at", "size", "model")


@dataclass(frozen=True)
class EntryInfo:
    """One entry as the entry browser lists it: from its meta hash and PTTL, never its body."""

    fingerprint: str
    version: int
    ttl_ms: int | None  # None: the entry is gone (or has no expiry)
    reads: int | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    stored_at: float | None = None
    size: int | None = None
    model: str = ""


@dataclass(frozen=True)
class EntryPage:
    entries: list[EntryInfo]
    next_cursor: int  # 0: the scan is complete
    scan_calls: int


def _cache_client() -> Any:
    return caches[app_settings.CACHE_ALIAS].client  # type: ignore[attr-defined]  # django-redis


def current_version(workload: str, db_version: int) -> int:
    """The key version calls use now: the larger of Redis's and the database's, as ``_LOOKUP``
    decides (a bump writes the database first, then raises Redis's)."""
    try:
        found = client().get(version_key(workload))
    except RedisError as exc:
        raise CacheUnavailable(str(exc)) from exc
    try:
        return max(db_version, int(found)) if found is not None else db_version
    except ValueError:
        return db_version


def _to_int(value: Any) -> int | None:
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def _info(fingerprint: str, version: int, meta: Sequence[Any], pttl: Any) -> EntryInfo:
    reads, tokens_in, tokens_out, stored_at, size, model = meta
    ttl_ms = _to_int(pttl)
    try:
        stored = float(stored_at) if stored_at is not None else None
    except ValueError:
        stored = None
    return EntryInfo(
        fingerprint=fingerprint,
        version=version,
        ttl_ms=ttl_ms if ttl_ms is not None and ttl_ms >= 0 else None,
        reads=_to_int(reads),
        input_tokens=_to_int(tokens_in),
        output_tokens=_to_int(tokens_out),
        stored_at=stored,
        size=_to_int(size),
        model=model.decode(errors="replace") if isinstance(model, bytes) else (model or ""),
    )


def scan_entries(
    workload: str, version: int, *, cursor: int = 0, page_size: int = 100, max_calls: int = 10
) -> EntryPage:
    """One page of the entries of ``workload`` at ``version``, from SCAN cursor ``cursor``.

    SCAN (never KEYS) with COUNT ``page_size`` until a page is full, the scan completes or
    ``max_calls`` calls were made; a stretch of the keyspace with no match makes COUNT grow, so a
    workload that is a small part of a large database still pages quickly. Then one pipelined
    round trip reads each entry's meta hash and PTTL (no bodies). Redis work per page is thus
    bounded by ``max_calls`` SCANs and two commands per entry listed, whatever the entry count.
    A page holds what those SCAN calls returned: about ``page_size`` entries, possibly more.
    """
    redis_client = client()
    pattern = str(_cache_client().make_pattern(f"respcache:e:{workload}:{version}:*"))
    found: list[bytes] = []
    count, calls = page_size, 0
    try:
        while calls < max_calls:
            cursor, batch = redis_client.scan(cursor=cursor, match=pattern, count=count)
            calls += 1
            found.extend(batch)
            if cursor == 0 or len(found) >= page_size:
                break
            if not batch:
                count = min(count * 2, 10_000)
        fingerprints = sorted({k.decode().rsplit(":", 1)[1] for k in found})
        pipe = redis_client.pipeline(transaction=False)
        for fingerprint in fingerprints:
            suffix = f"{workload}:{version}:{fingerprint}"
            pipe.hmget(full_key(f"respcache:m:{suffix}"), META_FIELDS)
            pipe.pttl(full_key(f"respcache:e:{suffix}"))
        replies = pipe.execute() if fingerprints else []
    except RedisError as exc:
        raise CacheUnavailable(str(exc)) from exc
    entries = [
        _info(fp, version, replies[2 * i], replies[2 * i + 1]) for i, fp in enumerate(fingerprints)
    ]
    return EntryPage(entries=entries, next_cursor=int(cursor), scan_calls=calls)


def entry_get(
    workload: str, version: int, fingerprint: str
) -> tuple[EntryInfo, Entry | None] | None:
    """An entry's accounting and its decoded record (None if unreadable); None when it is gone."""
    suffix = f"{workload}:{version}:{fingerprint}"
    try:
        pipe = client().pipeline(transaction=False)
        pipe.get(full_key(f"respcache:e:{suffix}"))
        pipe.hmget(full_key(f"respcache:m:{suffix}"), META_FIELDS)
        pipe.pttl(full_key(f"respcache:e:{suffix}"))
        raw, meta, pttl = pipe.execute()
    except RedisError as exc:
        raise CacheUnavailable(str(exc)) from exc
    if raw is None:
        return None
    info = _info(fingerprint, version, meta, pttl)
    if info.size is None:
        info = replace(info, size=len(raw))
    return info, decode_record(raw)


def entry_delete(workload: str, version: int, fingerprint: str) -> int:
    """Delete one entry and its meta hash; returns 1 if the entry existed, else 0."""
    suffix = f"{workload}:{version}:{fingerprint}"
    try:
        pipe = client().pipeline(transaction=True)
        pipe.delete(full_key(f"respcache:e:{suffix}"))
        pipe.delete(full_key(f"respcache:m:{suffix}"))
        deleted, _ = pipe.execute()
    except RedisError as exc:
        raise CacheUnavailable(str(exc)) from exc
    return int(deleted)


def count_entries(workload: str) -> int:
    """How many entries (all key versions) ``purge`` would delete now: one SCAN walk."""
    return sum(1 for _ in iter_entry_keys(f"respcache:e:{workload}:*"))


@dataclass(frozen=True)
class ServerInfo:
    """The Redis server's memory and key-expiry numbers; None where the server would not say."""

    used_memory: int | None = None
    used_memory_human: str = ""
    maxmemory: int | None = None  # 0: no limit
    maxmemory_policy: str = ""
    evicted_keys: int | None = None
    expired_keys: int | None = None
    refused: tuple[str, ...] = ()  # commands the server refused (managed Redis often does)


def server_info(redis_client: Any = None) -> ServerInfo:
    """INFO memory and INFO stats; CONFIG GET for maxmemory settings INFO did not give.

    Managed Redis services may refuse INFO sections or CONFIG: what is refused is reported in
    ``refused`` and left None, never raised.
    """
    redis_client = redis_client or client()
    refused: list[str] = []
    memory: dict[str, Any] = {}
    counters: dict[str, Any] = {}
    try:
        try:
            memory = redis_client.info("memory")
        except ResponseError:
            refused.append("INFO memory")
        try:
            counters = redis_client.info("stats")
        except ResponseError:
            refused.append("INFO stats")
        if "maxmemory" not in memory or "maxmemory_policy" not in memory:
            try:
                config = redis_client.config_get("maxmemory*")
                memory.setdefault("maxmemory", config.get("maxmemory"))
                memory.setdefault("maxmemory_policy", config.get("maxmemory-policy"))
            except ResponseError:
                refused.append("CONFIG GET")
    except RedisError as exc:
        raise CacheUnavailable(str(exc)) from exc
    policy = memory.get("maxmemory_policy") or ""
    return ServerInfo(
        used_memory=_to_int(memory.get("used_memory")),
        used_memory_human=str(memory.get("used_memory_human") or ""),
        maxmemory=_to_int(memory.get("maxmemory")),
        maxmemory_policy=policy.decode() if isinstance(policy, bytes) else str(policy),
        evicted_keys=_to_int(counters.get("evicted_keys")),
        expired_keys=_to_int(counters.get("expired_keys")),
        refused=tuple(refused),
    )
