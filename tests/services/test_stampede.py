"""The stampede state machine on a real Redis, with the fake Messages API as the upstream.

Each test drives one miss (or a holder and a waiter) through ``stampede.Stampede`` and checks
the states it went through (``visited``), what it answered, what reached the upstream and what
is left in Redis. A stand-in holder (a lock taken by the test) and messages published by the
test play the other side of the key's channel.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, cast

import orjson
import pytest

from respcache import locks, selectors, stats, store
from respcache.exceptions import CacheUnavailable, UpstreamError
from respcache.models import Workload
from respcache.services import calls, stampede
from respcache.services.calls import CachedResult
from respcache.services.stampede import Names, Stampede, State
from tests.conftest import ask
from tests.fake_anthropic import make_message

pytestmark = pytest.mark.django_db(transaction=True)

MESSAGE = b'{"type":"message","usage":{"input_tokens":3,"output_tokens":4}}'

# The path of a waiter up to blocking on the channel, while another caller holds the lock.
PARKED = [State.START, State.READ, State.POLL, State.TAKE_OVER, State.PARK]


def miss(workload: Workload, body: dict[str, Any]) -> Stampede[CachedResult]:
    """The machine for a miss of ``body`` (the lookup before it found nothing)."""
    selectors.clear_local_caches()
    policy = selectors.workload_policy(workload.slug)
    assert policy is not None
    call = calls.new_call(
        calls.Call,
        policy=policy,
        body=body,
        raw_body=orjson.dumps(body),
        beta=None,
        headers=None,
        upstream=None,
        clock=time.time,
        monotonic=time.monotonic,
    )
    return Stampede(call, Names.build(workload.slug, workload.key_version, call.fingerprint))


class Running:
    """A machine run in a thread: its answer, or what it raised."""

    def __init__(self, machine: Stampede[CachedResult]) -> None:
        self.machine = machine
        self.result: CachedResult | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.result = self.machine.run()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            self.error = exc

    def join(self) -> Running:
        self.thread.join(20)
        assert not self.thread.is_alive()
        return self


def parked(names: Names, n: int = 1) -> None:
    """Until ``n`` waiters are blocked on the key's channel."""
    deadline = time.monotonic() + 10
    while locks.parked(names.channel) < n:
        assert time.monotonic() < deadline, "the waiter never parked"
        time.sleep(0.01)


def hold(names: Names, token: str = "stand-in") -> None:
    assert locks.acquire(names.lock, token=token, ttl_seconds=30)


def record(message: bytes = MESSAGE) -> bytes:
    return store.encode_record(message, stored_at=time.time(), model="m")


def test_the_first_caller_holds_asks_once_stores_and_releases(fake: Any, workload: Workload) -> None:
    machine = miss(workload, ask("cold"))
    result = machine.run()
    assert machine.visited == [State.START, State.HOLD]
    assert (result.status, result.outcome) == ("miss", "miss")
    assert len(fake.message_calls()) == 1
    assert store.client().exists(machine.names.entry) == 1
    assert store.client().exists(machine.names.lock) == 0


def test_a_holder_that_finds_the_entry_on_its_recheck_answers_it_and_says_ok(fake: Any, workload: Workload) -> None:
    """Written between the caller's lookup and its lock: no upstream call; waiters told ``ok``."""
    machine = miss(workload, ask("raced"))
    store.client().set(machine.names.entry, record(), px=60_000)
    with locks.Subscription(machine.names.channel) as listener:
        result = machine.run()
        assert listener.wait(time.monotonic() + 5) == b"ok"
    assert machine.visited == [State.START, State.HOLD]
    assert (result.status, result.body) == ("wait", MESSAGE)
    assert fake.message_calls() == []
    assert store.client().exists(machine.names.lock) == 0


def test_a_real_holder_and_a_waiter(fake: Any, make_workload: Any) -> None:
    """The holder's upstream call held by the fake; the waiter parks, then answers from the
    record the holder's write publishes."""
    workload = make_workload("pair", wait_max=30)
    body = ask("held by the fake")
    fake.pause.clear()
    holder = Running(miss(workload, body))
    while not fake.message_calls():
        time.sleep(0.01)
    waiter = Running(miss(workload, body))
    parked(waiter.machine.names)
    fake.pause.set()
    holder.join(), waiter.join()
    assert holder.machine.visited == [State.START, State.HOLD]
    assert waiter.machine.visited == [*PARKED, State.HEARD]
    assert holder.result is not None and waiter.result is not None
    assert (holder.result.status, waiter.result.status) == ("miss", "wait")
    assert waiter.result.body == holder.result.body
    assert orjson.loads(waiter.result.body) == make_message(body)
    assert len(fake.message_calls()) == 1
    totals = stats.totals("pair", "5m")
    assert (totals["miss"], totals["wait"], totals["wakes"]) == (1, 1, 1)


def test_a_bare_ok_sends_the_waiter_back_to_read(fake: Any, workload: Workload) -> None:
    machine = miss(workload, ask("bare"))
    hold(machine.names)
    waiter = Running(machine)
    parked(machine.names)
    store.client().set(machine.names.entry, record(), px=60_000)
    store.client().publish(machine.names.channel, b"ok")
    waiter.join()
    assert machine.visited == [*PARKED, State.HEARD, State.READ]
    assert waiter.result is not None and (waiter.result.status, waiter.result.body) == ("wait", MESSAGE)
    assert stats.totals("intents", "5m")["wakes"] == 1  # woken by the ok: its wake is counted


def test_the_holders_error_is_raised_at_once_and_counted(fake: Any, workload: Workload) -> None:
    machine = miss(workload, ask("failing"))
    hold(machine.names)
    waiter = Running(machine)
    parked(machine.names)
    failure = UpstreamError("overloaded", status_code=529, error_type="overloaded_error", body=b"{}")
    locks.release(
        machine.names.lock, token="stand-in", channel=machine.names.channel, message=stampede.error_message(failure)
    )
    waiter.join()
    assert machine.visited == [*PARKED, State.HEARD]
    assert isinstance(waiter.error, UpstreamError)
    assert (waiter.error.status_code, waiter.error.error_type, waiter.error.message) == (
        529,
        "overloaded_error",
        "overloaded",
    )
    assert fake.message_calls() == []
    assert stats.totals("intents", "5m")["upstream_error"] == 1


def test_an_abandoned_lock_is_taken_over(fake: Any, workload: Workload) -> None:
    machine = miss(workload, ask("abandoned"))
    hold(machine.names)
    waiter = Running(machine)
    parked(machine.names)
    locks.release(machine.names.lock, token="stand-in", channel=machine.names.channel, message=b"abandoned")
    waiter.join()
    taken_over = [State.HEARD, State.READ, State.POLL, State.TAKE_OVER, State.HOLD]
    assert machine.visited == [*PARKED, *taken_over]
    assert waiter.result is not None and (waiter.result.status, waiter.result.outcome) == ("miss", "miss")
    assert len(fake.message_calls()) == 1
    assert store.client().exists(machine.names.lock) == 0


def test_after_wait_max_the_waiter_falls_through_and_stores(fake: Any, make_workload: Any) -> None:
    workload = make_workload("late", wait_max=0.2)
    machine = miss(workload, ask("dead holder"))
    hold(machine.names, "dead-holder")
    fake.pause.clear()
    waiter = Running(machine)
    while not fake.message_calls():
        time.sleep(0.01)
    assert locks.waiting(machine.names.channel) == 0  # it left the channel before asking the upstream
    fake.pause.set()
    result = waiter.join().result
    assert machine.visited == [*PARKED, State.FALL_THROUGH]
    assert result is not None and (result.status, result.outcome) == ("miss", "fallthrough")
    assert len(fake.message_calls()) == 1
    assert store.client().exists(machine.names.entry) == 1  # stored, though without the lock
    assert store.client().get(machine.names.lock) == b"dead-holder"


def at_takeover(machine: Stampede[CachedResult], before: Callable[[], None], monkeypatch: Any) -> None:
    """Run ``before`` when the waiter tries for the lock in TAKE_OVER (its second try)."""
    real_acquire = locks.acquire

    def acquire(lock: str, **kwargs: Any) -> bool:
        if machine.visited[-1] is State.TAKE_OVER:
            before()
        return real_acquire(lock, **kwargs)

    monkeypatch.setattr(locks, "acquire", acquire)


def test_a_lock_freed_by_a_failure_just_before_the_takeover_hears_it(
    fake: Any, workload: Workload, monkeypatch: Any
) -> None:
    """The lock is free at TAKE_OVER because its holder just failed: the waiter hears the error
    in the drain window, gives its own lock back (``abandoned``) and raises, asking nobody."""
    machine = miss(workload, ask("failed just now"))
    names = machine.names
    hold(names)
    failure = UpstreamError("rate limited", status_code=429, error_type="rate_limit_error", body=b"{}")

    def fail() -> None:
        locks.release(names.lock, token="stand-in", channel=names.channel, message=stampede.error_message(failure))
        time.sleep(0.2)  # the process's listener hands it to the waiter before it takes the lock

    at_takeover(machine, fail, monkeypatch)
    with locks.Subscription(names.channel) as listener:
        with pytest.raises(UpstreamError) as raised:
            machine.run()
        heard = [listener.wait(time.monotonic() + 5), listener.wait(time.monotonic() + 5)]
    assert raised.value.status_code == 429
    assert machine.visited == [State.START, State.READ, State.POLL, State.TAKE_OVER, State.HEARD]
    assert store.client().exists(names.lock) == 0  # the lock it took, given back
    assert heard[0] is not None and heard[0].startswith(b"error:") and heard[1] == b"abandoned"
    assert fake.message_calls() == []


def test_a_lock_freed_silently_is_taken_over_after_the_drain(fake: Any, workload: Workload, monkeypatch: Any) -> None:
    """The holder's lock expired without a word: nothing arrives in the drain window, HOLD."""
    machine = miss(workload, ask("expired holder"))
    hold(machine.names)
    at_takeover(machine, lambda: store.client().delete(machine.names.lock), monkeypatch)
    fake.pause.clear()
    waiter = Running(machine)
    while not fake.message_calls():
        time.sleep(0.01)
    assert locks.waiting(machine.names.channel) == 0  # a holder now: it left the channel first
    fake.pause.set()
    result = waiter.join().result
    assert machine.visited == [State.START, State.READ, State.POLL, State.TAKE_OVER, State.HOLD]
    assert result is not None and (result.status, result.outcome) == ("miss", "miss")
    assert len(fake.message_calls()) == 1


def test_a_redis_error_leaves_the_machine_and_its_channel(fake: Any, workload: Workload, monkeypatch: Any) -> None:
    machine = miss(workload, ask("redis fails while waiting"))
    hold(machine.names)

    def unavailable(**kwargs: Any) -> store.Lookup:
        raise CacheUnavailable("Redis went away")

    monkeypatch.setattr(store, "lookup", unavailable)
    with pytest.raises(CacheUnavailable):
        machine.run()
    assert machine.visited == [State.START, State.READ]
    assert locks.waiting(machine.names.channel) == 0
    assert fake.message_calls() == []


def test_every_state_has_a_step() -> None:
    """A state added without its method would stop the machine with a KeyError at run time."""
    machine: Stampede[Any] = Stampede(cast(Any, None), Names("e", "m", "l", "c"))  # no call needed to build it
    assert set(machine._steps) == set(State)
