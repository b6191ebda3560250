"""Versioned entry records in Redis through django-redis: lookup, write, scan, purge.

An entry is the upstream's Message JSON, byte for byte, behind a small header::

    b"RC" | schema (1 byte) | flags (1 byte) | payload
    payload = meta JSON | b"\\n" | Message JSON       (zlib-compressed when FLAG_ZLIB)

A record with an unknown schema or a damaged payload is a miss, never a crash: an older or
newer release may have written it. Beside each entry a small hash (``respcache:m:…``, same TTL)
keeps its read count and accounting (tokens, size, model, stored at) so the hit path counts
tokens saved and first reads without decoding the entry, and the admin lists entries without
fetching them.

The hit path is one round trip: ``_LOOKUP`` resolves the workload's current key version (kept in
Redis so a bump reaches every worker at once), GETs the entry and bumps its counters in one Lua
script. Scripts touch keys they derive from their arguments, so this needs a single Redis (or a
Sentinel group), not Redis Cluster.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from django.core.cache import caches
from django_redis import get_redis_connection
from redis.exceptions import RedisError

from respcache.conf import app_settings
from respcache.exceptions import CacheUnavailable

logger = logging.getLogger(__name__)

MAGIC = b"RC"
SCHEMA_VERSION = 1
FLAG_ZLIB = 0x01


@dataclass(frozen=True)
class Entry:
    """A stored answer: the Message bytes as the upstream sent them, and when they were stored."""

    message: bytes
    stored_at: float
    model: str = ""


def encode_record(message: bytes, *, stored_at: float, model: str) -> bytes:
    payload = orjson.dumps({"stored_at": stored_at, "model": model}) + b"\n" + message
    flags = 0
    if len(payload) >= app_settings.COMPRESS_MIN_BYTES:
        compressed = zlib.compress(payload, app_settings.COMPRESS_LEVEL)
        if len(compressed) < len(payload):
            payload, flags = compressed, FLAG_ZLIB
    return MAGIC + bytes((SCHEMA_VERSION, flags)) + payload


def decode_record(raw: bytes | None) -> Entry | None:
    """The Entry in ``raw``; None for a missing, foreign, older/newer or damaged record."""
    if not raw or raw[:2] != MAGIC or len(raw) < 4 or raw[2] != SCHEMA_VERSION:
        return None
    payload = raw[4:]
    try:
        if raw[3] & FLAG_ZLIB:
            payload = zlib.decompress(payload)
        head, sep, message = payload.partition(b"\n")
        if not sep:
            return None
        meta = orjson.loads(head)
        return Entry(message=message, stored_at=float(meta["stored_at"]), model=str(meta.get("model", "")))
    except (zlib.error, orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        logger.warning("respcache: unreadable cache record treated as a miss")
        return None


def client() -> Any:
    return get_redis_connection(app_settings.CACHE_ALIAS)


def full_key(raw: str) -> str:
    """``raw`` under the cache alias's own KEY_PREFIX and VERSION (Django's prefix:version:key)."""
    return str(caches[app_settings.CACHE_ALIAS].make_key(raw))


def version_key(workload: str) -> str:
    return full_key(f"respcache:v:{workload}")


# KEYS: version key, minute stats bucket, hour stats bucket
# ARGV: database key version, entry key prefix, meta key prefix, fingerprint, outcome,
#       minute bucket ttl, hour bucket ttl
_LOOKUP = """
local dbv = tonumber(ARGV[1])
local ver = tonumber(redis.call('GET', KEYS[1]))
if (not ver) or ver < dbv then
  redis.call('SET', KEYS[1], dbv)
  ver = dbv
end
local suffix = ver .. ':' .. ARGV[4]
local value = redis.call('GET', ARGV[2] .. suffix)
if (not value) or ARGV[5] == '' then return {ver, value} end
local mkey = ARGV[3] .. suffix
local saved_in, saved_out = 0, 0
if redis.call('EXISTS', mkey) == 1 then
  local reads = redis.call('HINCRBY', mkey, 'reads', 1)
  local m = redis.call('HMGET', mkey, 'in', 'out', 'xm', 'xh')
  saved_in = tonumber(m[1]) or 0
  saved_out = tonumber(m[2]) or 0
  if reads == 1 then
    if m[3] then redis.call('HINCRBY', m[3], 'exp_read', 1) end
    if m[4] then redis.call('HINCRBY', m[4], 'exp_read', 1) end
  end
end
for i = 2, 3 do
  redis.call('HINCRBY', KEYS[i], ARGV[5], 1)
  redis.call('HINCRBY', KEYS[i], 'saved_in', saved_in)
  redis.call('HINCRBY', KEYS[i], 'saved_out', saved_out)
  redis.call('EXPIRE', KEYS[i], ARGV[4 + i])
end
return {ver, value}
"""

# KEYS: entry, meta, lock, minute bucket, hour bucket, expiry minute bucket, expiry hour bucket
# ARGV: record, ttl ms, lock token ('' = none), input tokens, output tokens, stored at, size,
#       model, channel, minute ttl, hour ttl, expiry minute ttl, expiry hour ttl
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
local released = 0
if ARGV[3] ~= '' and redis.call('GET', KEYS[3]) == ARGV[3] then
  redis.call('DEL', KEYS[3])
  released = 1
end
redis.call('PUBLISH', ARGV[9], 'ok')
return released
"""

_scripts: dict[tuple[int, str], Any] = {}


def script(source: str) -> Any:
    """A registered Script (EVALSHA, falling back to EVAL after a Redis restart) per client."""
    redis_client = client()
    handle = (id(redis_client), source)
    found = _scripts.get(handle)
    if found is None:
        found = _scripts[handle] = redis_client.register_script(source)
    return found


@dataclass(frozen=True)
class Lookup:
    version: int
    entry: Entry | None
    raw_size: int = 0


def lookup(
    *,
    workload: str,
    db_version: int,
    fingerprint: str,
    outcome: str,
    bucket_keys: Sequence[str],
    bucket_ttls: Sequence[int],
) -> Lookup:
    """Resolve the current key version and read the entry; count ``outcome`` if found.

    An empty ``outcome`` only resolves the version: nothing is counted, no read is marked.
    """
    try:
        version, raw = script(_LOOKUP)(
            keys=[version_key(workload), *bucket_keys],
            args=[
                db_version,
                full_key(f"respcache:e:{workload}:"),
                full_key(f"respcache:m:{workload}:"),
                fingerprint,
                outcome,
                *bucket_ttls,
            ],
        )
    except RedisError as exc:
        raise CacheUnavailable(str(exc)) from exc
    return Lookup(version=int(version), entry=decode_record(raw), raw_size=len(raw or b""))


def write(
    *,
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
) -> bool:
    """Store a record with its accounting, release ``token``'s lock, wake the waiters.

    Returns whether the lock was still ours. All keys are full (prefixed) keys.
    """
    try:
        released = script(_WRITE)(
            keys=[key, meta, lock, *bucket_keys],
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
