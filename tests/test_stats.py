"""Time-bucketed counters shared through Redis, and the contract's numbers derived from them."""

from __future__ import annotations

from typing import Any

import pytest

from respcache import stats

T0 = 1_800_000_000.0  # a fixed "now": counters are read with an injected clock


def test_windows_sum_their_buckets_and_forget_older_ones() -> None:
    stats.count("w", T0 - 2 * 3600, miss=5)  # 2 h ago: in 24h and 7d, not in 1h
    stats.count("w", T0 - 30 * 60, hit=3, miss=1)  # 30 min ago
    stats.count("w", T0 - 60, hit=2, wait=1)  # a minute ago
    assert stats.totals("w", "5m", now=T0)["hit"] == 2
    one_hour = stats.totals("w", "1h", now=T0)
    assert (one_hour["hit"], one_hour["miss"], one_hour["wait"]) == (5, 1, 1)
    assert stats.totals("w", "24h", now=T0)["miss"] == 6
    assert stats.totals("w", "7d", now=T0)["miss"] == 6
    assert stats.totals("other", "7d", now=T0).requests == 0


def test_the_contracts_numbers() -> None:
    stats.count("w", T0, hit=6, wait=2, miss=4, fallthrough=0, bypass=10, refresh=3)
    t = stats.totals("w", "5m", now=T0)
    assert t.hit_rate == pytest.approx(8 / 12)  # bypass and refresh counted apart
    assert t.stampede_rate == pytest.approx(2 / 4)
    assert t.requests == 25
    empty = stats.totals("nobody", "5m", now=T0)
    assert empty.hit_rate is None and empty.stampede_rate is None and empty.dead_write_rate is None


def test_dead_write_rate_counts_entries_that_expired_unread() -> None:
    # Four entries whose expiry falls in the last hour; one was read.
    keys, ttls = stats.expiry_bucket_keys("w", T0 - 7200, 3600)
    pipe = __import__("respcache.store", fromlist=["client"]).client().pipeline()
    for key in keys:
        pipe.hincrby(key, "exp_written", 4)
        pipe.hincrby(key, "exp_read", 1)
    pipe.execute()
    assert stats.totals("w", "24h", now=T0).dead_write_rate == pytest.approx(3 / 4)


def test_unknown_window_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown window"):
        stats.totals("w", "2h")


def test_buckets_expire_after_their_retention(redis_db: Any) -> None:
    stats.count("w", T0, hit=1)
    keys, ttls = stats.bucket_keys("w", T0)
    assert 0 < ttls[0] <= 60 + 26 * 3600 and 0 < ttls[1] <= 3600 + 8 * 86400


def test_series_slices_a_window_for_charts() -> None:
    stats.count("w", T0 - 600, miss=1)
    stats.count("w", T0 - 60, hit=2)
    points = stats.series("w", "1h", points=12, now=T0)
    assert len(points) == 12
    assert sum(p[1].get("hit", 0) for p in points) == 2
    assert sum(p[1].get("miss", 0) for p in points) == 1
    assert points == sorted(points, key=lambda p: p[0])


def test_wake_histogram_fields_and_percentiles() -> None:
    assert stats.wake_fields(0.4) == {"wakes": 1, "wake_us_sum": 400, "wake_le_1": 1}
    assert stats.wake_fields(7)["wake_le_10"] == 1
    assert stats.wake_fields(-3)["wake_le_1"] == 1  # another machine's clock a little ahead
    assert stats.wake_fields(9999)["wake_le_inf"] == 1
    for ms in [0.5] * 90 + [4] * 9 + [40]:
        stats.count("w", T0, **stats.wake_fields(ms))
    counts = stats.totals("w", "5m", now=T0).counts
    assert counts["wakes"] == 100
    assert stats.wake_percentile(counts, 50) == 1.0
    assert stats.wake_percentile(counts, 99) == 5.0
    assert stats.wake_percentile(counts, 100) == 50.0
    assert stats.wake_percentile({}, 99) is None
