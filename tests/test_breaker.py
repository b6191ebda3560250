"""The Redis circuit breaker's states, driven by an injected clock and a probe run by hand."""

from __future__ import annotations

from collections.abc import Callable

from respcache.breaker import CLOSED, OPEN, PROBING, Breaker


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Probe:
    """The PING: answers or not as the test says; spawned probes wait until ``run()``."""

    def __init__(self) -> None:
        self.redis_up = False
        self.pinged = 0
        self.spawned: list[Callable[[], None]] = []

    def __call__(self) -> None:
        self.pinged += 1
        if not self.redis_up:
            raise ConnectionError("refused")

    def spawn(self, fn: Callable[[], None]) -> None:
        self.spawned.append(fn)

    def run(self) -> None:
        while self.spawned:
            self.spawned.pop(0)()


def breaker(clock: Clock, probe: Probe, **kwargs: float) -> Breaker:
    return Breaker(probe, clock=clock, spawn=probe.spawn, **kwargs)


def test_a_failure_opens_it_and_calls_skip_redis_until_a_probe_finds_it_back() -> None:
    clock, probe = Clock(), Probe()
    b = breaker(clock, probe, backoff_seconds=1.0)
    assert b.allow() and b.state == CLOSED
    b.failure()
    assert b.state == OPEN and b.opened == 1
    assert not b.allow()
    clock.now += 0.99
    assert not b.allow() and probe.spawned == []
    clock.now += 0.02
    assert not b.allow()  # the call that finds the back-off over still skips Redis...
    assert b.state == PROBING and len(probe.spawned) == 1  # ...and a probe goes in the background
    assert not b.allow() and len(probe.spawned) == 1  # one probe at a time
    probe.redis_up = True
    probe.run()
    assert b.state == CLOSED and b.allow() and probe.pinged == 1


def test_a_failed_probe_doubles_the_backoff_up_to_its_cap() -> None:
    clock, probe = Clock(), Probe()
    b = breaker(clock, probe, backoff_seconds=1.0, max_backoff_seconds=3.0)
    b.failure()
    waits = []
    for _ in range(4):
        waits.append(round(b.retry_in(), 3))
        clock.now += b.retry_in()
        assert not b.allow()
        probe.run()
        assert b.state == OPEN
    assert waits == [1.0, 2.0, 3.0, 3.0]
    clock.now += 3.0
    b.allow()
    probe.redis_up = True
    probe.run()
    b.failure()
    assert b.retry_in() == 1.0  # a success resets the back-off


def test_failures_of_calls_already_in_flight_do_not_extend_the_backoff() -> None:
    clock, probe = Clock(), Probe()
    b = breaker(clock, probe, backoff_seconds=1.0)
    b.failure()
    clock.now += 0.5
    b.failure()
    assert b.retry_in() == 0.5 and b.opened == 1


def test_a_call_that_reaches_redis_closes_it() -> None:
    clock, probe = Clock(), Probe()
    b = breaker(clock, probe)
    b.failure()
    b.success()  # a call started before it opened came back fine
    assert b.state == CLOSED and b.allow()


def test_a_probe_from_before_a_reset_does_not_reopen_it() -> None:
    """A probe still running against an old Redis (settings changed, breaker reset) reports
    nothing about the new one."""
    clock, probe = Clock(), Probe()
    b = breaker(clock, probe, backoff_seconds=1.0)
    b.failure()
    clock.now += 1.0
    assert not b.allow() and len(probe.spawned) == 1
    b.reset()
    probe.run()  # the old probe fails late
    assert b.state == CLOSED and b.allow()
