"""The in-process tally of counters (respcache/tally.py) against the real Redis: one pipeline per
flush, nothing lost when Redis does not take it, expired buckets dropped."""

from __future__ import annotations

import time
from typing import Any

import pytest

from respcache import stats, store, tally
from tests.conftest import redis_down
from tests.test_counting import redis_round_trips


def test_many_counts_reach_redis_in_one_round_trip(redis_db: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    now = time.time()
    for i in range(500):
        stats.count(f"w{i % 5}", now, hit=1, saved_in=3)
    store.ping()  # a connection in the pool: its handshake is not the flush's
    with redis_round_trips(monkeypatch) as trips:
        assert tally.flush() is True
        assert tally.flush() is True  # nothing left: no round trip at all
    assert trips.count == 1, trips.commands()
    minute = stats.bucket_keys("w0", now)[0][0]
    assert redis_db.hgetall(minute) == {b"hit": b"100", b"saved_in": b"300"}
    assert redis_db.hgetall(store.totals_key("w4")) == {b"hit": b"100", b"saved_in": b"300"}
    assert stats.totals("w3", "5m")["hit"] == 100


def test_a_flush_redis_does_not_take_is_kept_and_merged_with_later_counts(redis_db: Any, settings: Any) -> None:
    now = time.time()
    stats.count("w", now, cache_error=1, miss=1)
    live = settings.CACHES
    settings.CACHES = redis_down(live)
    try:
        assert tally.flush() is False
    finally:
        settings.CACHES = live
    stats.count("w", now, miss=1)
    assert stats.totals("w", "5m")["miss"] == 2  # the reader flushed both batches as one
    assert stats.all_time(["w"])["w"]["cache_error"] == 1


def test_buckets_past_their_retention_are_dropped_when_a_flush_fails(settings: Any) -> None:
    tally.add("rctest:gone", int(time.time()) - 1, {"hit": 1})
    tally.add("rctest:kept", int(time.time()) + 60, {"hit": 2})
    tally.add("rctest:forever", 0, {"hit": 3})
    settings.CACHES = redis_down(settings.CACHES)
    assert tally.flush() is False
    assert set(tally.pending()) == {"rctest:kept", "rctest:forever"}


def test_zero_counts_are_not_sent(redis_db: Any) -> None:
    stats.count("w", time.time(), hit=0, miss=1)
    assert all("hit" not in counts for _, counts in tally.pending().values())


def test_a_full_redis_refuses_the_flush_and_the_counts_wait_for_room(redis_db: Any) -> None:
    """maxmemory reached under noeviction: Redis refuses the HINCRBYs of a flush; the counts stay
    in the process and reach Redis with the first flush after room is made."""
    if store.clustered():
        pytest.skip("fills one Redis through CONFIG SET: not a cluster's nodes")
    now = time.time()
    stats.count("w", now, hit=2, cache_error=1)
    old = redis_db.config_get("maxmemory*")
    used = int(redis_db.info("memory")["used_memory"])
    redis_db.config_set("maxmemory-policy", "noeviction")
    redis_db.config_set("maxmemory", max(1, used - 1_000_000))
    try:
        assert tally.flush() is False
    finally:
        redis_db.config_set("maxmemory", old["maxmemory"])
        redis_db.config_set("maxmemory-policy", old["maxmemory-policy"])
    assert redis_db.exists(store.totals_key("w")) == 0
    assert tally.flush() is True
    assert stats.all_time(["w"])["w"]["hit"] == 2 and stats.totals("w", "5m")["cache_error"] == 1
