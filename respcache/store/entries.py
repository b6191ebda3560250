"""Entries in Redis: the hit path's lookup, the write, key versions, purge and delete.

Beside each entry a small hash (``keys.meta_key``, same TTL) keeps its read count and
accounting (tokens, size, model, stored at) so the hit path counts tokens saved and first reads
without decoding the entry, and the admin lists entries without fetching them.

The hit path is one round trip: scripts/lookup.lua resolves the workload's current key version
(kept in Redis so a bump reaches every worker at once), GETs the entry and bumps its counters:
the minute and hour buckets, and the workload's all-time totals (``totals_key``: never expire,
so /metrics can export them as monotonic Prometheus counters). A write is one round trip too
(scripts/write.lua). Scripts touch keys they derive from their arguments, so this needs a
single Redis (or a Sentinel group), not Redis Cluster.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from redis.exceptions import OutOfMemoryError, ResponseError

from respcache import keys
from respcache.exceptions import CacheUnavailable
from respcache.store import fields
from respcache.store.connection import (
    cache,
    client,
    full_key,
    guarded,
    script,
    totals_key,
    version_key,
    workload_keys,
)
from respcache.store.records import (
    HEADER,
    Entry,
    IndexItem,
    decode_index_item,
    decode_record,
    encode_notes,
    ok_message,
)


@dataclass(frozen=True)
class Lookup:
    version: int
    entry: Entry | None
    raw_size: int = 0
    #: The entry's tokens from its accounting hash (what this read saved), when it was counted:
    #: the call's log line takes them from here instead of parsing the Message.
    input_tokens: int | None = None
    output_tokens: int | None = None
    #: False when Redis refused the counting (it is full): the caller counts the read itself.
    counted: bool = True


def refused_for_memory(exc: CacheUnavailable) -> bool:
    """Whether Redis refused a write because it is at ``maxmemory`` (it still serves reads)."""
    cause = exc.__cause__
    # redis-py raises OutOfMemoryError (its "OOM" prefix stripped) for a refused command; an
    # error inside a script may reach it as a plain ResponseError that still says "OOM".
    return isinstance(cause, OutOfMemoryError) or (isinstance(cause, ResponseError) and "OOM" in str(cause))


def lookup(
    *,
    workload: str,
    db_version: int,
    fingerprint: str,
    outcome: str,
    bucket_keys: Sequence[str],
    bucket_ttls: Sequence[int],
    upstream: str = keys.ANTHROPIC,
    fetch: bool = True,
    extra: dict[str, int] | None = None,
) -> Lookup:
    """Resolve the current key version and read the entry of ``upstream``'s key space; count
    ``outcome`` if found.

    An empty ``outcome`` only resolves the version: nothing is counted, no read is marked.
    ``fetch=False`` counts a read of an entry the caller already holds (a waiter handed it by
    the writer's message) without reading it again; ``extra`` counter fields are added with
    the outcome, in the same round trip.
    """
    version_, totals, entries, metas = workload_keys(workload, upstream)
    args: list[Any] = [
        db_version,
        entries,
        metas,
        fingerprint,
        outcome,
        *bucket_ttls,
        "0" if fetch else "1",
        *fields.LOOKUP_FIELDS,
        HEADER,
    ]
    for name, value in (extra or {}).items():
        args += (name, value)
    try:
        with guarded():
            version, raw, *accounting = script("lookup")(keys=[version_, *bucket_keys, totals], args=args)
    except CacheUnavailable as exc:
        if not refused_for_memory(exc):
            raise
        return _read_only_lookup(version_, entries, db_version, fingerprint, read_entry=fetch)
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


def _read_only_lookup(version_key: str, entries: str, db_version: int, fingerprint: str, *, read_entry: bool) -> Lookup:
    """Redis is full and refused the lookup's counting: read without writing (one more round
    trip, only while it is full). Nothing was counted; the caller counts it."""
    with guarded():
        version, raw = script("lookup_ro")(keys=[version_key], args=[db_version, entries, fingerprint, HEADER])
    if not read_entry:
        raw = None
    return Lookup(version=int(version), entry=decode_record(raw), raw_size=len(raw or b""), counted=False)


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
    notes: str = "",
    request_fields: bytes = b"",
    summary: bytes = b"",
    index: Indexing | None = None,
) -> bool:
    """Store a record with its accounting, release ``token``'s lock, wake the waiters, and add
    ``counts`` (non-zero values) to the current buckets and the totals.

    ``request_fields`` and ``summary`` (records.encode_fields / encode_summary) are kept under
    ``notes`` (the entry's keys.notes_key; '' = none), read by the admin and the explainer
    only; ``index`` pushes the request onto its shape index. Returns whether the lock was still
    ours. All keys are full (prefixed) keys.
    """
    extra: list[Any] = []
    for name, value in (counts or {}).items():
        if value:
            extra += (name, value)
    with guarded():
        released = script("write")(
            keys=[key, meta, lock, *bucket_keys, totals_key(workload), index.key if index else "", notes],
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
                *fields.WRITE_FIELDS,
                encode_notes(request_fields, summary) if request_fields or summary else b"",
                index.item if index else b"",
                index.keep if index else 0,
                *extra,
            ],
        )
    return bool(released)


@dataclass(frozen=True)
class Indexing:
    """Where a write records its request for the miss explainer: the shape index (a full key),
    the item (records.encode_index_item) and how many recent items the index keeps."""

    key: str
    item: bytes
    keep: int


def recent_requests(
    workload: str, version: int, shape: str, *, upstream: str = keys.ANTHROPIC, count: int = 64
) -> list[IndexItem]:
    """The latest ``count`` requests stored under ``shape`` at ``version`` (newest first), as the
    write indexed them; unreadable items are left out. One round trip, never on the hit path."""
    index = full_key(keys.shape_index_key(workload=workload, version=version, shape=shape, upstream=upstream))
    with guarded():
        raw = client().lrange(index, 0, count - 1)
    return [item for item in map(decode_index_item, raw) if item is not None]


def shape_index(workload: str, version: int, shape: str, upstream: str = keys.ANTHROPIC) -> str:
    """The full key of a shape index (see keys.shape_index_key)."""
    return full_key(keys.shape_index_key(workload=workload, version=version, shape=shape, upstream=upstream))


def set_version(workload: str, version: int) -> None:
    """Raise the workload's key version in Redis to ``version`` (never lower it)."""
    with guarded():
        script("set_version")(keys=[version_key(workload)], args=[version])


def current_version(workload: str, db_version: int) -> int:
    """The key version calls use now: the larger of Redis's and the database's, as the lookup
    script decides (a bump writes the database first, then raises Redis's)."""
    with guarded():
        found = client().get(version_key(workload))
    try:
        return max(db_version, int(found)) if found is not None else db_version
    except ValueError:
        return db_version


def purge(workload: str) -> int:
    """Delete every entry (all key versions, every upstream's key space) of ``workload`` with
    their meta; return how many."""
    redis_cache = cache()
    with guarded():
        deleted = redis_cache.delete_pattern(keys.entry_pattern(workload=workload), itersize=1000)
        redis_cache.delete_pattern(keys.meta_pattern(workload=workload), itersize=1000)
        redis_cache.delete_pattern(keys.notes_pattern(workload=workload), itersize=1000)
        redis_cache.delete_pattern(keys.shape_index_pattern(workload=workload), itersize=1000)
    return int(deleted or 0)


def entry_delete(workload: str, version: int, fingerprint: str, upstream: str = keys.ANTHROPIC) -> int:
    """Delete one entry of ``upstream``'s key space and its meta hash; returns 1 if the entry
    existed, else 0."""
    raw = keys.entry_key(workload=workload, version=version, fingerprint=fingerprint, upstream=upstream)
    with guarded():
        pipe = client().pipeline(transaction=True)
        pipe.delete(full_key(raw))
        pipe.delete(full_key(keys.meta_key(raw)), full_key(keys.notes_key(raw)))
        deleted, _ = pipe.execute()
    return int(deleted)


def ping() -> None:
    with guarded():
        client().ping()


#: What a process hears on the policies channel (any message means "drop your local copies").
POLICIES_CHANGED = b"changed"


def announce_policies_changed() -> None:
    """Tell every process that a policy, a key version or an API key changed (they drop their
    local copies at once: selectors.listen_for_changes)."""
    with guarded():
        client().publish(full_key(keys.policies_channel()), POLICIES_CHANGED)
