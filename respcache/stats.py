"""Per-workload counters in Redis time buckets, shared by every worker and machine.

Each event increments a field in a one-minute bucket (kept ``MINUTE_BUCKET_RETENTION_SECONDS``,
read for the 5m, 1h and 24h windows) and in a one-hour bucket (kept
``HOUR_BUCKET_RETENTION_SECONDS``, read for 7d). Fields:

- outcomes, one per call: hit, wait, miss, fallthrough, bypass, refresh, shadow;
- upstream_error, cache_error; budget_refused (calls the workload's budget refused: each is
  also counted under the outcome it would have had, and made no upstream call);
  upstream_calls and upstream_ms (summed latency of every call,
  failed ones included; a stream's counted when it ends);
- saved_in, saved_out: tokens a hit or wait did not spend (the stored usage);
- written: entries stored;
- miss_<reason>: misses by why they missed (``MISS_REASONS``, the miss explainer);
- would_hit, would_save_in, would_save_out, agree: shadow calls (shadow mode) whose key had an
  entry before (they would have hit), the tokens that entry's usage says a hit would have saved,
  and how many of them got a fresh answer equal to the stored one (``agreement`` = agree /
  would_hit);
- exp_written, exp_read: counted in the bucket of the entry's *expiry* time; an entry whose
  expiry is past and that was never read is a dead write, so over a window
  dead-write rate = (exp_written - exp_read) / exp_written of the buckets in it.

Every field but the two ``exp_`` ones is also added to the workload's all-time totals hash
(``store.totals_key``), which never expires: /metrics exports it as monotonic Prometheus counters,
with ``first_read`` (entries read at least once) beside ``written``.

Counts are added up in each process and flushed to Redis every ``COUNTER_FLUSH_SECONDS``
(respcache/tally.py): a call writes no counter itself, and every reader here flushes its own
process's counts first. Counts that Redis does not take (unreachable, full) wait in the process
for the next flush.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from django.core.signals import setting_changed

from respcache import store, tally
from respcache.conf import app_settings
from respcache.keys import bucket_key

OUTCOMES = ("hit", "wait", "miss", "fallthrough", "bypass", "refresh", "shadow")
#: Shadow mode's counters (``Counts.shadowed``).
SHADOW_FIELDS = ("would_hit", "would_save_in", "would_save_out", "agree")
FIELDS = OUTCOMES + (
    "upstream_error",
    "cache_error",
    "budget_refused",
    "upstream_calls",
    "upstream_ms",
    "saved_in",
    "saved_out",
    "written",
    "exp_written",
    "exp_read",
    *SHADOW_FIELDS,
)
#: Fields of the all-time totals hash.
TOTAL_FIELDS = tuple(f for f in FIELDS if not f.startswith("exp_")) + ("first_read",)
#: Why a miss missed (services/explain.py): new input, or the field kind in which the closest
#: stored request differs; counted as ``miss_<reason>`` in the buckets and totals.
MISS_REASONS = ("new", "model", "system", "tools", "max_tokens", "other", "messages")


def miss_reason_field(reason: str) -> str:
    """The counter field of a miss reason."""
    return f"miss_{reason}"


WINDOWS = {"5m": 300, "1h": 3600, "24h": 86400, "7d": 7 * 86400}
#: The drift baseline: the 24 hours of minute buckets just before the 1 h window's first one.
#: Readable like a window by ``window_totals`` (not a choice of the commands or the API).
BASELINE = "24h_before_1h"
MINUTE, HOUR = 60, 3600


def _bucket_key(workload: str, width: int, start: int) -> str:
    return store.full_key(bucket_key(workload=workload, width_seconds=width, start=start))


def bucket_keys(workload: str, now: float) -> tuple[list[str], list[int]]:
    """The minute and hour bucket keys for ``now``, and the TTLs that keep them their retention.

    Every call needs them: the last answer per workload is kept for the rest of its second.
    The lists are shared: callers read them, never change them.
    """
    t = int(now)
    cached = _buckets.get(workload)
    if cached is not None and cached[0] == t:
        return cached[1]
    found = _bucket_keys_at(workload, t)
    _buckets[workload] = (t, found)
    return found


#: workload -> (second, bucket_keys' answer); dropped when the key prefix or retention may change
_buckets: dict[str, tuple[int, tuple[list[str], list[int]]]] = {}


def _reset_buckets(*, setting: str, **kwargs: Any) -> None:
    if setting in ("CACHES", "RESPCACHE"):
        _buckets.clear()


setting_changed.connect(_reset_buckets)


def _bucket_keys_at(workload: str, t: int) -> tuple[list[str], list[int]]:
    minute, hour = t - t % MINUTE, t - t % HOUR
    return (
        [_bucket_key(workload, MINUTE, minute), _bucket_key(workload, HOUR, hour)],
        [
            minute + MINUTE + app_settings.MINUTE_BUCKET_RETENTION_SECONDS - t,
            hour + HOUR + app_settings.HOUR_BUCKET_RETENTION_SECONDS - t,
        ],
    )


#: Upper bounds (ms) of the wake-up histogram: how long after the answer was written a waiter
#: woke (``wake_le_<ms>`` fields, ``wake_le_inf`` above the last; ``wakes``, ``wake_us_sum``).
WAKE_BUCKETS_MS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 5000)


def wake_fields(milliseconds: float) -> dict[str, int]:
    """The counter fields for one waiter woken ``milliseconds`` after the write."""
    milliseconds = max(0.0, milliseconds)  # clocks of two machines may disagree slightly
    bucket = next((f"wake_le_{b}" for b in WAKE_BUCKETS_MS if milliseconds <= b), "wake_le_inf")
    return {"wakes": 1, "wake_us_sum": int(milliseconds * 1000), bucket: 1}


def wake_percentile(counts: dict[str, int], q: float) -> float | None:
    """The ``q``-th percentile (0-100) of the wake-up histogram in ``counts``, as the upper
    bound (ms) of the bucket it falls in; None without wakes, inf above the last bucket."""
    total = counts.get("wakes", 0)
    if not total:
        return None
    seen, rank = 0, q / 100 * total
    for bound in WAKE_BUCKETS_MS:
        seen += counts.get(f"wake_le_{bound}", 0)
        if seen >= rank:
            return float(bound)
    return float("inf")


def count(workload: str, now: float, **fields: int) -> None:
    """Add ``fields`` to the workload's buckets of ``now`` and its totals (in this process: they
    reach Redis with the next flush, tally.py)."""
    keys, ttls = bucket_keys(workload, now)
    wall = int(time.time())  # a bucket lives its TTL from now, whatever clock ``now`` is on
    for key, ttl in zip(keys, ttls, strict=True):
        tally.add(key, wall + ttl, fields)
    tally.add(store.totals_key(workload), 0, {k: v for k, v in fields.items() if not k.startswith("exp_")})


def count_written(workload: str, expiry_buckets: Sequence[str], now: float) -> None:
    """An entry was stored at ``now``: exp_written in the buckets of its expiry
    (``expiry_bucket_keys``; ``written`` itself is one of the call's counts)."""
    for key in expiry_buckets:
        count_in_bucket(key, "exp_written", now)


def count_first_read(workload: str, expiry_buckets: Sequence[str], now: float) -> None:
    """An entry's first read, at ``now``: exp_read in the buckets of its expiry (its meta hash
    keeps their keys), and first_read in the workload's totals."""
    for key in expiry_buckets:
        count_in_bucket(key, "exp_read", now)
    tally.add(store.totals_key(workload), 0, {"first_read": 1})


def count_in_bucket(key: str, name: str, now: float) -> None:
    """Add 1 to ``name`` in the bucket ``key`` (a full bucket key, as ``expiry_bucket_keys``
    names it), which lives until its retention ends (counted from ``now``)."""
    head, _, start = key.rpartition(":")
    width, retention = (
        (MINUTE, app_settings.MINUTE_BUCKET_RETENTION_SECONDS)
        if head.endswith(":m")
        else (HOUR, app_settings.HOUR_BUCKET_RETENTION_SECONDS)
    )
    ttl = int(start) + width + retention - int(now)
    tally.add(key, int(time.time()) + ttl, {name: 1})


def expiry_bucket_keys(workload: str, now: float, ttl_seconds: int) -> tuple[list[str], list[int]]:
    """Buckets of the moment an entry written ``now`` expires, kept their retention after it."""
    expires = int(now) + int(ttl_seconds)
    minute, hour = expires - expires % MINUTE, expires - expires % HOUR
    t = int(now)
    return (
        [_bucket_key(workload, MINUTE, minute), _bucket_key(workload, HOUR, hour)],
        [
            minute + MINUTE + app_settings.MINUTE_BUCKET_RETENTION_SECONDS - t,
            hour + HOUR + app_settings.HOUR_BUCKET_RETENTION_SECONDS - t,
        ],
    )


@dataclass(frozen=True)
class Totals:
    """Counter sums over one window, and the contract's numbers derived from them."""

    window: str
    counts: dict[str, int] = field(default_factory=dict)

    def __getitem__(self, name: str) -> int:
        return self.counts.get(name, 0)

    @property
    def requests(self) -> int:
        return sum(self[o] for o in OUTCOMES)

    @property
    def lookups(self) -> int:
        """Calls that looked the cache up: the hit rate's denominator."""
        return self["hit"] + self["wait"] + self["miss"] + self["fallthrough"]

    @property
    def hit_rate(self) -> float | None:
        looked_up = self.lookups
        return (self["hit"] + self["wait"]) / looked_up if looked_up else None

    @property
    def agreement(self) -> float | None:
        """Shadow mode: the share of would-be hits whose fresh answer equalled the stored one."""
        return self["agree"] / self["would_hit"] if self["would_hit"] else None

    @property
    def stampede_rate(self) -> float | None:
        return self["wait"] / self["miss"] if self["miss"] else None

    @property
    def dead_write_rate(self) -> float | None:
        written = self["exp_written"]
        return max(0, written - self["exp_read"]) / written if written else None

    @property
    def upstream_latency_ms(self) -> float | None:
        calls = self["upstream_calls"]
        return self["upstream_ms"] / calls if calls else None

    def miss_reasons(self) -> dict[str, int]:
        """The misses explained over the window, by reason (MISS_REASONS, zeros included)."""
        return {reason: self[miss_reason_field(reason)] for reason in MISS_REASONS}

    def as_dict(self) -> dict[str, Any]:
        return {
            "window": self.window,
            "requests": self.requests,
            **{name: self[name] for name in FIELDS},
            "hit_rate": self.hit_rate,
            "stampede_rate": self.stampede_rate,
            "dead_write_rate": self.dead_write_rate,
            "upstream_latency_ms": self.upstream_latency_ms,
            "agreement": self.agreement,
        }


def _window_buckets(workload: str, window: str, now: float) -> list[str]:
    try:
        seconds = WINDOWS[window]
    except KeyError:
        raise ValueError(f"unknown window {window!r}; choose one of {', '.join(WINDOWS)}") from None
    t = int(now)
    width = MINUTE if seconds <= 86400 else HOUR
    first = t - seconds + 1
    start = first - first % width
    return [_bucket_key(workload, width, s) for s in range(start, t + 1, width)]


def _sum(hashes: Iterable[dict[bytes, bytes]]) -> dict[str, int]:
    totals: dict[str, int] = {}
    for values in hashes:
        for name, value in values.items():
            key = name.decode()
            totals[key] = totals.get(key, 0) + int(value)
    return totals


def totals(workload: str, window: str = "1h", *, now: float | None = None) -> Totals:
    """Sum the workload's counters over ``window`` ("5m", "1h", "24h", "7d")."""
    return window_totals([workload], [window], now=now)[workload][window]


def all_time(workloads: Iterable[str]) -> dict[str, dict[str, int]]:
    """Each workload's all-time totals (``TOTAL_FIELDS``, zeros included), in one round trip."""
    slugs = list(workloads)
    tally.flush_quietly()
    with store.guarded():
        pipe = store.client().pipeline(transaction=False)
        for slug in slugs:
            pipe.hgetall(store.totals_key(slug))
        hashes = pipe.execute()
    out = {}
    for slug, values in zip(slugs, hashes, strict=True):
        counts = dict.fromkeys(TOTAL_FIELDS, 0)
        counts.update(_sum([values]))
        out[slug] = counts
    return out


def series(
    workload: str, window: str = "1h", *, points: int = 60, now: float | None = None
) -> list[tuple[int, dict[str, int]]]:
    """The window's counters in ``points`` consecutive slices (start time, counts), for charts."""
    t = int(time.time() if now is None else now)
    keys = _window_buckets(workload, window, t)
    tally.flush_quietly()
    with store.guarded():
        pipe = store.client().pipeline(transaction=False)
        for key in keys:
            pipe.hgetall(key)
        hashes = pipe.execute()
    starts = [int(k.rsplit(":", 1)[1]) for k in keys]
    slices = min(points, len(keys))
    bounds = [round(i * len(keys) / slices) for i in range(slices + 1)]
    out = [(starts[lo], _sum(hashes[lo:hi])) for lo, hi in zip(bounds, bounds[1:], strict=False)]
    return out


def _check_windows(windows: Sequence[str]) -> None:
    for window in windows:
        if window not in WINDOWS and window != BASELINE:
            raise ValueError(f"unknown window {window!r}; choose one of {', '.join(WINDOWS)}")


def _plan_buckets(workload: str, window: str, t: int) -> list[str]:
    """The buckets to sum for ``window`` at ``t``: ``_edge_buckets``, or the drift baseline's
    (the 24 h ending with the minute bucket before the 1 h window's first: no overlap)."""
    if window == BASELINE:
        first = t - WINDOWS["1h"] + 1
        return _edge_buckets(workload, "24h", first - first % MINUTE - 1)
    return _edge_buckets(workload, window, t)


def _edge_buckets(workload: str, window: str, t: int) -> list[str]:
    """The window's buckets for summing: minute buckets at its two ragged edges, hour buckets
    for the whole hours in between. Every event is counted in both its minute and its hour
    bucket, so the sum is the same as over minute buckets alone (``totals``), at a tenth of the
    reads for 24 h (at most 84 instead of 1,441).

    7 d starts at an hour boundary, as ``totals`` does (minute buckets are not kept that long),
    but reads the current hour by the minute: its hour bucket also holds the ``exp_written`` of
    entries that expire later this hour, still alive, which are no dead writes yet.
    """
    seconds = WINDOWS[window]
    if seconds > 86400:
        hour = t - t % HOUR
        return _window_buckets(workload, window, t)[:-1] + [
            _bucket_key(workload, MINUTE, s) for s in range(hour, t + 1, MINUTE)
        ]
    first = t - seconds + 1
    start = first - first % MINUTE
    inner_start = -(-start // HOUR) * HOUR  # first hour boundary at or after ``start``
    inner_end = t - t % HOUR  # start of the current (partial) hour
    if inner_end <= inner_start:
        return [_bucket_key(workload, MINUTE, s) for s in range(start, t + 1, MINUTE)]
    return (
        [_bucket_key(workload, MINUTE, s) for s in range(start, inner_start, MINUTE)]
        + [_bucket_key(workload, HOUR, s) for s in range(inner_start, inner_end, HOUR)]
        + [_bucket_key(workload, MINUTE, s) for s in range(inner_end, t + 1, MINUTE)]
    )


def window_totals(
    workloads: Sequence[str], windows: Sequence[str] = ("1h", "24h"), *, now: float | None = None
) -> dict[str, dict[str, Totals]]:
    """``totals`` for several workloads and windows in one pipelined round trip, reading hour
    buckets where whole hours fit (see ``_edge_buckets``): what a list of workloads shows.

    Returns ``{workload: {window: Totals}}``.
    """
    _check_windows(windows)
    t = int(time.time() if now is None else now)
    plan = [(w, win, _plan_buckets(w, win, t)) for w in workloads for win in windows]
    tally.flush_quietly()
    with store.guarded():
        pipe = store.client().pipeline(transaction=False)
        for _, _, keys in plan:
            for key in keys:
                pipe.hgetall(key)
        hashes = pipe.execute()
    return _plan_totals(workloads, plan, hashes)


# --- every workload's numbers in one round trip, for the readers (selectors.workloads_metrics) -
# all_time and window_totals each cost a round trip; /metrics needs both, so this queues both
# reads on one pipeline: one round trip whatever the number of workloads or windows.


def all_time_and_window_totals(
    workloads: Sequence[str], windows: Sequence[str] = ("1h",), *, now: float | None = None
) -> tuple[dict[str, dict[str, int]], dict[str, dict[str, Totals]]]:
    """``all_time(workloads)`` and ``window_totals(workloads, windows)`` in one pipelined round
    trip: ``({workload: all-time counts}, {workload: {window: Totals}})``."""
    _check_windows(windows)
    slugs = list(workloads)
    t = int(time.time() if now is None else now)
    plan = [(w, win, _plan_buckets(w, win, t)) for w in slugs for win in windows]
    tally.flush_quietly()
    with store.guarded():
        pipe = store.client().pipeline(transaction=False)
        for slug in slugs:
            pipe.hgetall(store.totals_key(slug))
        for _, _, keys in plan:
            for key in keys:
                pipe.hgetall(key)
        hashes = pipe.execute()
    all_time_counts = {}
    for slug, values in zip(slugs, hashes, strict=False):
        counts = dict.fromkeys(TOTAL_FIELDS, 0)
        counts.update(_sum([values]))
        all_time_counts[slug] = counts
    return all_time_counts, _plan_totals(slugs, plan, hashes[len(slugs) :])


def _plan_totals(
    workloads: Sequence[str], plan: list[tuple[str, str, list[str]]], hashes: list[dict[bytes, bytes]]
) -> dict[str, dict[str, Totals]]:
    """The Totals of each (workload, window) of ``plan`` from the hashes read for its buckets,
    in plan order, as ``window_totals`` sums them."""
    out: dict[str, dict[str, Totals]] = {w: {} for w in workloads}
    offset = 0
    for workload, window, keys in plan:
        window_hashes = hashes[offset : offset + len(keys)]
        # The current minute's bucket also holds the expiry accounting of entries that expire
        # later this minute, still alive: they are no dead writes yet.
        current = {k: v for k, v in window_hashes[-1].items() if k not in (b"exp_written", b"exp_read")}
        out[workload][window] = Totals(window=window, counts=_sum([*window_hashes[:-1], current]))
        offset += len(keys)
    return out
