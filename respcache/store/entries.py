"""Entries in Redis: the hit path's lookup, the write, key versions, purge and delete.

Beside each entry a small hash (``keys.meta_key``, same TTL) keeps its read count and
accounting (tokens, size, model, stored at) so the hit path counts tokens saved and first reads
without decoding the entry, and the admin lists entries without fetching them.

The hit path is one round trip: scripts/lookup.lua resolves the workload's current key version
(kept in Redis so a bump reaches every worker at once), GETs the entry and marks its read in
the meta hash; the call's counters are added up in the process (tally.py), not here. A write is
one round trip too (scripts/write.lua), plus one for the shape index. Every key a script
touches carries the entry's hash tag (keys.entry_tail), the key version included (on a cluster,
the group's copy: ``lookup_version_key``), so each script runs in one slot of a Redis Cluster.
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
    lookup_version_key,
    publish_command,
    script,
    version_copies,
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
    #: The entry's tokens from its accounting hash (what this read saved), when the read was
    #: marked: the call counts them as saved, and its log line takes them from here.
    input_tokens: int | None = None
    output_tokens: int | None = None
    #: False when Redis refused to mark the read (it is full): the caller counts a cache error.
    counted: bool = True
    #: The entry's first read: its expiry buckets (full keys) count exp_read, the totals first_read.
    first_read_buckets: tuple[str, ...] = ()


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
    mark_read: bool,
    upstream: str = keys.ANTHROPIC,
    fetch: bool = True,
) -> Lookup:
    """Resolve the current key version and read the entry of ``upstream``'s key space; with
    ``mark_read``, mark a read in its meta hash if found (the caller counts it).

    ``fetch=False`` marks a read of an entry the caller already holds (a waiter handed it by the
    writer's message) without reading it again. One round trip, in one slot on a cluster.
    """
    _version, entries, metas = workload_keys(workload, upstream)
    version_ = lookup_version_key(workload, fingerprint)
    tail = keys.entry_tail(fingerprint)
    args: list[Any] = [
        db_version,
        entries,
        metas,
        tail,
        "1" if mark_read else "",
        "0" if fetch else "1",
        *fields.LOOKUP_FIELDS,
        HEADER,
    ]
    try:
        with guarded():
            reply = script("lookup")(keys=[version_], args=args)
    except CacheUnavailable as exc:
        if not refused_for_memory(exc):
            raise
        return _read_only_lookup(version_, entries, db_version, tail, read_entry=fetch)
    version, raw = reply[0], reply[1]
    input_tokens = output_tokens = None
    first: tuple[str, ...] = ()
    if len(reply) > 2 and reply[2]:
        input_tokens, output_tokens = int(reply[3]), int(reply[4])
        if reply[5]:
            first = tuple(k.decode() if isinstance(k, bytes) else str(k) for k in reply[6:8] if k)
    return Lookup(
        version=int(version),
        entry=decode_record(raw),
        raw_size=len(raw or b""),
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        first_read_buckets=first,
    )


def _read_only_lookup(version_key: str, entries: str, db_version: int, tail: str, *, read_entry: bool) -> Lookup:
    """Redis is full and refused to mark the read: read without writing (one more round trip,
    only while it is full). Nothing was marked; the caller counts a cache error."""
    with guarded():
        version, raw = script("lookup_ro")(keys=[version_key], args=[db_version, entries, tail, HEADER])
    if not read_entry:
        raw = None
    return Lookup(version=int(version), entry=decode_record(raw), raw_size=len(raw or b""), counted=False)


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
    expiry_buckets: Sequence[str],
    notes: str = "",
    request_fields: bytes = b"",
    summary: bytes = b"",
    index: Indexing | None = None,
) -> bool:
    """Store a record with its accounting, release ``token``'s lock and wake the waiters (one
    round trip, in the entry's slot), then push the request onto its shape index (``index``,
    one more round trip, in the index's own slot). The caller counts the write.

    ``request_fields`` and ``summary`` (records.encode_fields / encode_summary) are kept under
    ``notes`` (the entry's keys.notes_key; '' = none), read by the admin and the explainer
    only; ``expiry_buckets`` (minute, hour) are kept in the meta hash for the first read to
    count exp_read in. Returns whether the lock was still ours. All keys are full keys.
    """
    with guarded():
        released = script("write")(
            keys=[key, meta, lock, notes] if notes else [key, meta, lock],
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
                ok_message(record),
                publish_command(),
                *fields.WRITE_FIELDS,
                encode_notes(request_fields, summary) if request_fields or summary else b"",
                *expiry_buckets,
            ],
        )
    if index is not None:
        with guarded():
            pipe = client().pipeline(transaction=False)
            pipe.lpush(index.key, index.item)
            pipe.ltrim(index.key, 0, index.keep - 1)
            pipe.pexpire(index.key, int(ttl_seconds * 1000))
            pipe.execute()
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
    """Raise the workload's key version in Redis to ``version`` (never lower it): its one key,
    or on a cluster every group's copy (one pipeline, which redis-py sends to each primary)."""
    source = script("set_version").script  # EVAL: a pipeline cannot recover from NOSCRIPT
    with guarded():
        pipe = client().pipeline(transaction=False)
        for key in version_copies(workload):
            pipe.eval(source, 1, key, version)
        pipe.execute()


def current_version(workload: str, db_version: int) -> int:
    """The key version calls use now: the larger of Redis's and the database's, as the lookup
    script decides (a bump writes the database first, then raises Redis's; on a cluster it
    raises every group's copy, so the first one says it)."""
    with guarded():
        found = client().get(version_copies(workload)[0])
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
        pipe = client().pipeline(transaction=False)  # one slot, but a cluster pipeline has no MULTI
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
