"""What the admin reads from Redis: SCAN pages of a workload's entries, one entry, counts, and
the server's memory and expiry numbers. Never the hit path."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

from redis.exceptions import ResponseError

from respcache import keys
from respcache.store.connection import cache, client, full_key, guarded, scan_page
from respcache.store.fields import META_FIELDS
from respcache.store.records import Entry, decode_notes, decode_record, decode_summary


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
    #: What the entry answers, in short (records.decode_summary): None for an entry stored
    #: before summaries were kept, or one whose summary cannot be read.
    summary: dict[str, str] | None = None


@dataclass(frozen=True)
class EntryPage:
    entries: list[EntryInfo]
    next_cursor: int  # 0: the scan is complete
    scan_calls: int


def iter_entry_keys(pattern: str, *, count: int = 1000) -> Iterator[str]:
    """Raw (unprefixed) keys matching the raw glob ``pattern``, by SCAN through django-redis."""
    with guarded():
        yield from cache().iter_keys(pattern, itersize=count)


def count_entries(workload: str) -> int:
    """How many entries (all key versions and key spaces) ``purge`` would delete now: one SCAN
    walk."""
    return sum(1 for _ in iter_entry_keys(keys.entry_pattern(workload=workload)))


def _to_int(value: Any) -> int | None:
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def _info(fingerprint: str, version: int, meta: Sequence[Any], pttl: Any, notes: bytes | None = None) -> EntryInfo:
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
        summary=decode_summary(decode_notes(notes)[1]),
    )


def _notes_key(workload: str, version: int, fingerprint: str, upstream: str) -> str:
    raw = keys.entry_key(workload=workload, version=version, fingerprint=fingerprint, upstream=upstream)
    return full_key(keys.notes_key(raw))


def _infos(redis_client: Any, workload: str, version: int, fingerprints: list[str], upstream: str) -> list[EntryInfo]:
    """Each entry's meta hash, PTTL and summary, in one pipeline whatever their number."""
    pipe = redis_client.pipeline(transaction=False)
    for fingerprint in fingerprints:
        raw = keys.entry_key(workload=workload, version=version, fingerprint=fingerprint, upstream=upstream)
        pipe.hmget(full_key(keys.meta_key(raw)), META_FIELDS)
        pipe.pttl(full_key(raw))
    if fingerprints:  # the summaries in one command, whatever the page's size
        pipe.mget([_notes_key(workload, version, fp, upstream) for fp in fingerprints])
    replies = pipe.execute() if fingerprints else [[]]
    notes = replies[-1]
    return [_info(fp, version, replies[2 * i], replies[2 * i + 1], notes[i]) for i, fp in enumerate(fingerprints)]


def scan_entries(
    workload: str,
    version: int,
    *,
    cursor: int = 0,
    page_size: int = 100,
    max_calls: int = 10,
    upstream: str = keys.ANTHROPIC,
) -> EntryPage:
    """One page of the entries of ``workload`` at ``version`` in ``upstream``'s key space, from
    SCAN cursor ``cursor``.

    SCAN (never KEYS) with COUNT ``page_size`` until a page is full, the scan completes or
    ``max_calls`` calls were made; a stretch of the keyspace with no match makes COUNT grow, so a
    workload that is a small part of a large database still pages quickly. Then one pipelined
    round trip reads each entry's meta hash and PTTL (no bodies). Redis work per page is thus
    bounded by ``max_calls`` SCANs and two commands per entry listed, whatever the entry count.
    A page holds what those SCAN calls returned: about ``page_size`` entries, possibly more.
    """
    redis_client = client()
    raw_pattern = keys.entry_pattern(workload=workload, version=version, upstream=upstream)
    pattern = str(cache().client.make_pattern(raw_pattern))
    found: list[bytes] = []
    count, calls = page_size, 0
    with guarded():
        while calls < max_calls:
            cursor, batch = scan_page(cursor, match=pattern, count=count)
            calls += 1
            found.extend(batch)
            if cursor == 0 or len(found) >= page_size:
                break
            if not batch:
                count = min(count * 2, 10_000)
        fingerprints = sorted({k.decode().rsplit(":", 1)[1] for k in found})
        entries = _infos(redis_client, workload, version, fingerprints, upstream)
    return EntryPage(entries=entries, next_cursor=int(cursor), scan_calls=calls)


@dataclass(frozen=True)
class HotEntries:
    """Entries of one key version, hottest first: ``entries`` (all the scan found, or those whose
    summary holds the text asked for); ``complete`` is False when the scan stopped at its bound."""

    entries: list[EntryInfo]
    scanned: int
    complete: bool


def hot_entries(
    workload: str, version: int, *, upstream: str = keys.ANTHROPIC, max_entries: int = 10_000, text: str = ""
) -> HotEntries:
    """The entries of ``workload`` at ``version``, most read first (then newest), with their
    summaries, optionally only those whose summary holds ``text`` (case-insensitive).

    Redis work is bounded whatever the entry count: SCAN until ``max_entries`` keys were found
    (COUNT 1000), then one pipeline reading each one's meta hash and PTTL. A workload with more
    entries is sorted among the first ``max_entries`` found (``complete`` is False).
    """
    redis_client = client()
    raw_pattern = keys.entry_pattern(workload=workload, version=version, upstream=upstream)
    pattern = str(cache().client.make_pattern(raw_pattern))
    found: set[str] = set()
    cursor, complete = 0, True
    with guarded():
        while True:
            cursor, batch = scan_page(cursor, match=pattern, count=1000)
            found.update(k.decode().rsplit(":", 1)[1] for k in batch)
            if cursor == 0:
                break
            if len(found) >= max_entries:
                complete = False
                break
        complete = complete and len(found) <= max_entries
        fingerprints = sorted(found)[:max_entries]
        entries = _infos(redis_client, workload, version, fingerprints, upstream)
    if text:
        needle = text.casefold()
        entries = [e for e in entries if e.summary and any(needle in v.casefold() for v in e.summary.values())]
    entries.sort(key=lambda e: (-(e.reads or 0), -(e.stored_at or 0.0), e.fingerprint))
    return HotEntries(entries=entries, scanned=len(fingerprints), complete=complete)


def entry_get(
    workload: str, version: int, fingerprint: str, upstream: str = keys.ANTHROPIC
) -> tuple[EntryInfo, Entry | None] | None:
    """An entry of ``upstream``'s key space: its accounting and its decoded record (None if
    unreadable); None when it is gone."""
    raw_key = keys.entry_key(workload=workload, version=version, fingerprint=fingerprint, upstream=upstream)
    key = full_key(raw_key)
    with guarded():
        pipe = client().pipeline(transaction=False)
        pipe.get(key)
        pipe.hmget(full_key(keys.meta_key(raw_key)), META_FIELDS)
        pipe.pttl(key)
        pipe.get(full_key(keys.notes_key(raw_key)))
        raw, meta, pttl, notes = pipe.execute()
    if raw is None:
        return None
    info = _info(fingerprint, version, meta, pttl, notes)
    if info.size is None:
        info = replace(info, size=len(raw))
    return info, decode_record(raw)


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
    with guarded():
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
