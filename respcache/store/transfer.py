"""A workload's entries read out whole and written back: what export and import move.

An entry travels as its record (the bytes ``records`` encodes), every field of its meta hash and
its TTL left. Reading is SCAN (through django-redis) plus one pipelined round trip per batch;
writing is one MULTI/EXEC per batch, so each batch lands whole or not at all.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from respcache import keys
from respcache.store import fields
from respcache.store.browse import iter_entry_keys
from respcache.store.connection import client, clustered, full_key, guarded

#: Meta fields that are bookkeeping of the Redis the entry lives in, not part of the entry:
#: its read counter and the keys of its expiry-time counter buckets. Never exported.
BOOKKEEPING_FIELDS = frozenset({fields.READS, fields.EXPIRY_MINUTE_BUCKET, fields.EXPIRY_HOUR_BUCKET})


@dataclass(frozen=True)
class StoredEntry:
    """One entry as Redis holds it: its record, its meta fields (bookkeeping left out) and the
    milliseconds it has left (None: no expiry)."""

    fingerprint: str
    record: bytes
    meta: dict[str, bytes] = field(default_factory=dict)
    ttl_ms: int | None = None


def _entry_key(workload: str, version: int, fingerprint: str, upstream: str) -> str:
    return keys.entry_key(workload=workload, version=version, fingerprint=fingerprint, upstream=upstream)


def _read_batch(workload: str, version: int, upstream: str, fingerprints: Sequence[str]) -> list[StoredEntry]:
    with guarded():
        pipe = client().pipeline(transaction=False)
        for fingerprint in fingerprints:
            raw = _entry_key(workload, version, fingerprint, upstream)
            pipe.get(full_key(raw))
            pipe.hgetall(full_key(keys.meta_key(raw)))
            pipe.pttl(full_key(raw))
        replies = pipe.execute()
    found = []
    for i, fingerprint in enumerate(fingerprints):
        record, meta, pttl = replies[3 * i : 3 * i + 3]
        if record is None:  # expired or deleted since the SCAN saw it
            continue
        kept = {k.decode(): v for k, v in meta.items() if k.decode() not in BOOKKEEPING_FIELDS}
        ttl_ms = int(pttl) if pttl is not None and int(pttl) > 0 else None
        found.append(StoredEntry(fingerprint=fingerprint, record=record, meta=kept, ttl_ms=ttl_ms))
    return found


def iter_stored_entries(workload: str, version: int, upstream: str, *, batch: int = 500) -> Iterator[StoredEntry]:
    """Every live entry of ``workload`` at ``version`` in ``upstream``'s key space, each once,
    read ``batch`` at a time."""
    pattern = keys.entry_pattern(workload=workload, version=version, upstream=upstream)
    seen: set[str] = set()  # SCAN may return a key twice
    pending: list[str] = []
    for raw_key in iter_entry_keys(pattern, count=batch):
        fingerprint = raw_key.rsplit(":", 1)[1]
        if fingerprint in seen:
            continue
        seen.add(fingerprint)
        pending.append(fingerprint)
        if len(pending) >= batch:
            yield from _read_batch(workload, version, upstream, pending)
            pending = []
    if pending:
        yield from _read_batch(workload, version, upstream, pending)


def existing(workload: str, version: int, upstream: str, fingerprints: Sequence[str]) -> set[str]:
    """Which of ``fingerprints`` have an entry now."""
    with guarded():
        pipe = client().pipeline(transaction=False)
        for fingerprint in fingerprints:
            pipe.exists(full_key(_entry_key(workload, version, fingerprint, upstream)))
        replies = pipe.execute() if fingerprints else []
    return {fp for fp, present in zip(fingerprints, replies, strict=True) if present}


def put_entries(workload: str, version: int, upstream: str, entries: Sequence[StoredEntry]) -> None:
    """Write ``entries`` (each with a TTL) in one MULTI/EXEC: the record, and its meta hash with
    a read count of 0, replacing what was there. Counts nothing. On a Redis Cluster, where a
    MULTI holds keys of one slot only, the batch is one pipeline per shard, without MULTI."""
    with guarded():
        pipe = client().pipeline(transaction=not clustered())
        for entry in entries:
            assert entry.ttl_ms is not None and entry.ttl_ms > 0
            raw = _entry_key(workload, version, entry.fingerprint, upstream)
            meta_key = full_key(keys.meta_key(raw))
            pipe.set(full_key(raw), entry.record, px=entry.ttl_ms)
            pipe.delete(meta_key)
            pipe.hset(meta_key, mapping={**entry.meta, fields.READS: 0})
            pipe.pexpire(meta_key, entry.ttl_ms)
        if entries:
            pipe.execute()
