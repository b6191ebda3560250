"""The fail-open guard: what a Redis error means for each touch, on a real (or absent) Redis."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from respcache import locks, tally
from respcache.exceptions import CacheUnavailable, UpstreamError
from respcache.services import guard
from respcache.services.counting import NO_COUNTS, Counts
from respcache.services.stampede import Names, release
from tests.conftest import redis_down


def failing() -> str:
    raise CacheUnavailable("Redis went away")


def test_an_action_that_succeeds_is_returned_and_the_fallback_never_runs() -> None:
    def fallback(counts: Counts) -> str:
        raise AssertionError("not called")

    assert guard.fail_open(guard.CALL, lambda: "answer", fallback, workload="w") == "answer"


@pytest.mark.parametrize(
    ("touch", "cache_error"),
    [(guard.CALL, True), (guard.WRITE, True), (guard.COUNT, False), (guard.RELEASE, False), (guard.PUBLISH, False)],
)
def test_a_redis_error_is_logged_once_and_the_fallback_gets_the_contracts_counts(
    touch: guard.Touch, cache_error: bool, caplog: Any
) -> None:
    handed: list[Counts] = []

    def fallback(counts: Counts) -> str:
        handed.append(counts)
        return "fallback"

    with caplog.at_level(logging.WARNING, logger="respcache.services.guard"):
        assert guard.fail_open(touch, failing, fallback, workload="intents") == "fallback"
    assert handed == [Counts.cache_error() if cache_error else NO_COUNTS]
    (logged,) = caplog.records
    assert logged.getMessage() == f"respcache: {touch.lost} for intents (Redis went away); {touch.instead}"


def test_other_errors_pass_through() -> None:
    def upstream_failed() -> str:
        raise UpstreamError("overloaded", status_code=529, error_type="overloaded_error")

    with pytest.raises(UpstreamError):
        guard.fail_open(guard.CALL, upstream_failed, lambda counts: "not this", workload="w")


def test_with_redis_down_a_release_neither_raises_nor_counts(settings: Any, redis_db: Any) -> None:
    names = Names(entry="rctest:e", meta="rctest:m", lock="rctest:l", channel="rctest:c", failure="rctest:f")
    assert locks.acquire(names.lock, token="t", ttl_seconds=30)
    live = settings.CACHES
    settings.CACHES = redis_down(live)
    release(names, "t", b"abandoned", workload="intents")
    settings.CACHES = live
    assert redis_db.get(names.lock) == b"t"  # still held: it expires by itself after lock_ttl
    assert tally.pending() == {}  # not a cache error
