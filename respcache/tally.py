"""Counts add up in the process and reach Redis in one pipeline a second.

Every call counts something (its outcome, tokens saved, upstream time…) in the workload's minute
and hour buckets and its all-time totals. Counting each call in Redis would make those few
hashes the busiest keys of all: on a Redis Cluster they live in one slot, so one busy workload
would pin one shard whatever the cluster's size, and on any Redis each hit would pay for the
increments. So each process adds its counts up here, in memory, and a background thread (a
greenlet under gevent) flushes them every ``RESPCACHE["COUNTER_FLUSH_SECONDS"]`` (1 s by
default) in one pipeline of HINCRBY and EXPIREAT: one round trip per second per process
however many calls it served, spread over the shards by redis-py's cluster pipeline.

Readers in the process (stats, /metrics, the admin) flush first, so a process always reads its
own counts; other processes' counts reach Redis within the interval, which is how far /metrics
and the admin on two workers can disagree. A process that exits normally flushes (atexit: a
gunicorn worker stopped by TERM, HUP or TTOU too); one that is killed loses at most its last
interval's counts.

When Redis does not take a flush (unreachable, frozen, full) the counts stay here and go with
the next flush; buckets whose retention has passed meanwhile are dropped, so a long outage
costs bounded memory.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
from typing import Any

from respcache import store
from respcache.conf import app_settings
from respcache.exceptions import CacheUnavailable

logger = logging.getLogger(__name__)

#: A counter hash's full key -> (the Unix time it expires at, or 0: never; field -> amount).
Batch = dict[str, tuple[int, dict[str, int]]]

_lock = threading.Lock()
_batch: Batch = {}
_flusher: dict[str, Any] = {}  # "pid" -> the process that started the thread, "thread"


def add(key: str, expire_at: int, fields: dict[str, int]) -> None:
    """Add ``fields`` (zeros are skipped) to the counter hash ``key`` (full), which expires at
    ``expire_at`` (0: never)."""
    with _lock:
        found = _batch.get(key)
        if found is None:
            found = _batch[key] = (expire_at, {})
        counts = found[1]
        for name, value in fields.items():
            if value:
                counts[name] = counts.get(name, 0) + value
    _ensure_flusher()


def pending() -> Batch:
    """A copy of what has not reached Redis yet (for tests and introspection)."""
    with _lock:
        return {key: (expire_at, dict(counts)) for key, (expire_at, counts) in _batch.items()}


def discard() -> None:
    """Drop what has not reached Redis (a test's clean slate)."""
    with _lock:
        _batch.clear()


def flush() -> bool:
    """Send everything added so far to Redis in one pipeline. Returns False (and keeps the
    counts for the next flush) when Redis does not take it."""
    with _lock:
        batch = dict(_batch)
        _batch.clear()
    if not batch:
        return True
    try:
        with store.guarded():
            pipe = store.client().pipeline(transaction=False)
            for key, (expire_at, counts) in batch.items():
                for name, value in counts.items():
                    pipe.hincrby(key, name, value)
                if expire_at:
                    pipe.expireat(key, expire_at)
            pipe.execute()
    except CacheUnavailable as exc:
        _restore(batch)
        logger.debug("respcache: counters kept for the next flush (%s)", exc)
        return False
    return True


def flush_quietly() -> None:
    """``flush``, for readers: they read what Redis has even when it did not take the flush."""
    try:
        flush()
    except Exception:  # never fail a reader over its own process's counts
        logger.exception("respcache: counter flush failed")


def _restore(batch: Batch) -> None:
    """Put a batch Redis did not take back in front of what was added meanwhile, dropping
    buckets already past their retention (they would expire at once)."""
    now = int(time.time())
    with _lock:
        for key, (expire_at, counts) in batch.items():
            if expire_at and expire_at <= now:
                continue
            found = _batch.get(key)
            if found is None:
                _batch[key] = (expire_at, counts)
                continue
            merged = found[1]
            for name, value in counts.items():
                merged[name] = merged.get(name, 0) + value


def _ensure_flusher() -> None:
    """Start this process's flush thread on first use (again in a forked child: threads do not
    survive a fork)."""
    pid = os.getpid()
    if _flusher.get("pid") == pid:
        return
    with _lock:
        if _flusher.get("pid") == pid:
            return
        thread = threading.Thread(target=_run, daemon=True, name="respcache-counter-flush")
        _flusher.update(pid=pid, thread=thread)
    thread.start()


def _run() -> None:
    while True:
        time.sleep(float(app_settings.COUNTER_FLUSH_SECONDS))
        flush_quietly()


atexit.register(flush_quietly)
