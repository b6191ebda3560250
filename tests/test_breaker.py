"""The Redis circuit breaker's states, driven by an injected clock."""

from __future__ import annotations

from respcache.breaker import CLOSED, HALF_OPEN, OPEN, Breaker


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_failure_opens_it_and_calls_skip_redis_until_the_backoff_passes() -> None:
    clock = Clock()
    breaker = Breaker(backoff_seconds=1.0, max_backoff_seconds=4.0, clock=clock)
    assert breaker.allow() and breaker.state == CLOSED
    breaker.failure()
    assert breaker.state == OPEN and breaker.opened == 1
    assert not breaker.allow()
    clock.now += 0.99
    assert not breaker.allow()
    clock.now += 0.02
    assert breaker.allow()  # the probe
    assert breaker.state == HALF_OPEN
    assert not breaker.allow()  # only one probe at a time
    breaker.success()
    assert breaker.state == CLOSED and breaker.allow()


def test_a_failed_probe_doubles_the_backoff_up_to_its_cap() -> None:
    clock = Clock()
    breaker = Breaker(backoff_seconds=1.0, max_backoff_seconds=3.0, clock=clock)
    breaker.failure()
    waits = []
    for _ in range(4):
        waits.append(round(breaker.retry_in(), 3))
        clock.now += breaker.retry_in()
        assert breaker.allow()
        breaker.failure()
    assert waits == [1.0, 2.0, 3.0, 3.0]
    clock.now += 3.0
    assert breaker.allow()
    breaker.success()
    breaker.failure()
    assert breaker.retry_in() == 1.0  # a success resets the back-off


def test_failures_of_calls_already_in_flight_do_not_extend_the_backoff() -> None:
    clock = Clock()
    breaker = Breaker(backoff_seconds=1.0, clock=clock)
    breaker.failure()
    clock.now += 0.5
    breaker.failure()
    assert breaker.retry_in() == 0.5 and breaker.opened == 1


def test_a_silent_probe_lets_another_call_probe_after_its_lease() -> None:
    clock = Clock()
    breaker = Breaker(backoff_seconds=1.0, probe_timeout_seconds=2.0, clock=clock)
    breaker.failure()
    clock.now += 1.0
    assert breaker.allow()
    clock.now += 1.9
    assert not breaker.allow()
    clock.now += 0.2
    assert breaker.allow()
