"""Workload budgets in Redis: upstream calls per UTC minute, upstream tokens per UTC day.

Fixed windows, aligned on the UTC minute and the UTC day, keyed by their start
(``keys.budget_key``) and shared by every worker and machine. ``spend_call`` checks both limits
and counts the call in one atomic script (scripts/budget.lua); ``spend_tokens`` adds an
answer's usage to the day once the upstream has answered. Redis errors are CacheUnavailable
(callers fail open: see services/guard.py, the BUDGET touch).
"""

from __future__ import annotations

from dataclasses import dataclass

from respcache import keys
from respcache.store.connection import client, full_key, guarded, script

MINUTE, DAY = 60, 86400
#: What spend_call answers: allowed, or which window's budget is spent.
OK, OVER_MINUTE, OVER_DAY = "ok", "minute", "day"


@dataclass(frozen=True)
class Windows:
    """The budget windows ``now`` falls in: their counters, and when each ends (Unix seconds)."""

    minute_key: str
    day_key: str
    minute_ends: int
    day_ends: int

    @classmethod
    def at(cls, workload: str, now: float) -> Windows:
        t = int(now)
        minute, day = t - t % MINUTE, t - t % DAY
        return cls(
            minute_key=full_key(keys.budget_key(workload=workload, width_seconds=MINUTE, start=minute)),
            day_key=full_key(keys.budget_key(workload=workload, width_seconds=DAY, start=day)),
            minute_ends=minute + MINUTE,
            day_ends=day + DAY,
        )


def spend_call(windows: Windows, *, now: float, per_minute: int, tokens_per_day: int) -> str:
    """Check the budget and, if it allows the call, count it in the minute: OK, OVER_MINUTE or
    OVER_DAY. One round trip."""
    # The minute's counter lives a little past its window: clocks of two machines may differ.
    ttl = max(1, windows.minute_ends - int(now)) + MINUTE
    with guarded():
        found = script("budget")(keys=[windows.minute_key, windows.day_key], args=[per_minute, tokens_per_day, ttl])
    return found.decode() if isinstance(found, bytes) else str(found)


def spend_tokens(windows: Windows, tokens: int, *, now: float) -> None:
    """Add ``tokens`` (an upstream answer's input plus output) to the day's. One round trip."""
    if tokens <= 0:
        return
    ttl = max(1, windows.day_ends - int(now)) + MINUTE
    with guarded():
        pipe = client().pipeline(transaction=False)
        pipe.incrby(windows.day_key, tokens)
        pipe.expire(windows.day_key, ttl)
        pipe.execute()


def tokens_spent(windows: Windows) -> int:
    """The day's upstream tokens so far (for the admin and tests)."""
    with guarded():
        found = client().get(windows.day_key)
    return int(found or 0)
