"""Counts: what each named constructor counts, and that stats takes a Counts as it is."""

from __future__ import annotations

import pytest

from respcache import stats
from respcache.services import counting
from respcache.services.counting import NO_COUNTS, Counts


def test_the_outcome_words_are_the_counted_outcomes() -> None:
    words = {
        counting.HIT,
        counting.MISS,
        counting.WAIT,
        counting.BYPASS,
        counting.REFRESH,
        counting.FALLTHROUGH,
        counting.SHADOW,
    }
    assert words == set(stats.OUTCOMES)


def test_each_constructor_names_its_fields() -> None:
    assert Counts.outcome("wait") == {"wait": 1}
    assert Counts.upstream_call(12.6) == {"upstream_calls": 1, "upstream_ms": 13}
    assert Counts.upstream_call() == {"upstream_calls": 1}  # a stream: its time when it ends
    assert Counts.upstream_time(7.4) == {"upstream_ms": 7}
    assert Counts.upstream_error() == {"upstream_error": 1}
    assert Counts.cache_error() == {"cache_error": 1}
    assert Counts.wake(3.0) == stats.wake_fields(3.0) == {"wakes": 1, "wake_us_sum": 3000, "wake_le_5": 1}
    assert NO_COUNTS == {} and len(NO_COUNTS) == 0


def test_an_unknown_outcome_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown outcome"):
        Counts.outcome("hits")


def test_adding_sums_fields_and_changes_neither_side() -> None:
    a = Counts.outcome("miss") + Counts.cache_error()
    b = a + Counts.cache_error() + {"upstream_calls": 2}
    assert dict(a) == {"miss": 1, "cache_error": 1}
    assert dict(b) == {"miss": 1, "cache_error": 2, "upstream_calls": 2}
    assert list(b) == ["miss", "cache_error", "upstream_calls"]  # the order they were added in


def test_stats_counts_a_counts_as_keyword_fields(redis_db: object) -> None:
    stats.count("counted", 1_700_000_000.0, **(Counts.outcome("hit") + Counts.upstream_call(5)))
    totals = stats.totals("counted", "5m", now=1_700_000_000.0)
    assert (totals["hit"], totals["upstream_calls"], totals["upstream_ms"]) == (1, 1, 5)
