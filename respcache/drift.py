"""Drift: a workload's hit rate over the last hour against the 24 hours before it.

A deploy that changes a prompt template, a model name or a tool list quietly turns hits into
misses; the hit rate of the last hour then falls below what the day before saw. The drop is
measured in percentage points (85 % before, 40 % now: 45 points) and alerts when it exceeds the
workload's ``drift_threshold_points`` (default 20), provided both periods saw at least
``MIN_LOOKUPS`` cache lookups each (a quiet hour's two misses are no drift).

Both numbers come from the counters' buckets (``stats.window_totals`` with the windows ``1h``
and ``stats.BASELINE``), read with every other number of a page or a scrape, in its round trip.
"""

from __future__ import annotations

from dataclasses import dataclass

from respcache.stats import Totals

#: The fewest lookups (hit + wait + miss + fallthrough) each period needs for an alert.
MIN_LOOKUPS = 20


@dataclass(frozen=True)
class Drift:
    """The last hour's hit rate against the 24 hours before it, and whether that is an alert."""

    recent: Totals
    baseline: Totals
    threshold_points: int

    @property
    def drop_points(self) -> float | None:
        """How many percentage points the last hour's hit rate is below the baseline's
        (negative: above); None while either is undefined."""
        now, before = self.recent.hit_rate, self.baseline.hit_rate
        if now is None or before is None:
            return None
        return round((before - now) * 100, 2)

    @property
    def measured(self) -> bool:
        """Both periods saw enough lookups for their hit rates to mean something."""
        return self.recent.lookups >= MIN_LOOKUPS and self.baseline.lookups >= MIN_LOOKUPS

    @property
    def alert(self) -> bool:
        drop = self.drop_points
        return self.measured and drop is not None and drop > self.threshold_points
