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
from tests.conftest import ask, publish
from tests.fake_anthropic import make_message

pytestmark = pytest.mark.django_db(transaction=True)

MESSAGE = b'{"type":"message","usage":{"input_tokens":3,"output_tokens":4}}'

# The path of a waiter up to blocking on the channel, while another caller holds the lock.
PARKED = [State.START, State.READ, State.POLL, State.CHECK, State.PARK]


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
    publish(machine.names.channel, b"ok")
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
    taken_over = [State.HEARD, State.CHECK, State.HOLD]
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


def at_check(machine: Stampede[CachedResult], before: Callable[[], None], monkeypatch: Any) -> None:
    """Run ``before`` when the waiter looks at the key in CHECK (just before the script runs)."""
    real_take_over = locks.take_over

    def take_over(**kwargs: Any) -> tuple[str, bytes]:
        if machine.visited[-1] is State.CHECK:
            before()
        return real_take_over(**kwargs)

    monkeypatch.setattr(locks, "take_over", take_over)


def test_a_lock_freed_by_a_failure_before_the_check_gives_the_waiter_that_failure(
    fake: Any, workload: Workload, monkeypatch: Any
) -> None:
    """The lock is free at CHECK because its holder just failed: the failure record says so in
    the same atomic step, so the waiter raises the holder's error and asks nobody. No timing
    window: the waiter never heard the message (it arrives after the check)."""
    machine = miss(workload, ask("failed just now"))
    names = machine.names
    hold(names)
    failure = UpstreamError("rate limited", status_code=429, error_type="rate_limit_error", body=b"{}")

    def fail() -> None:
        locks.release(
            names.lock,
            token="stand-in",
            channel=names.channel,
            message=stampede.error_message(failure),
            failure=names.failure,
        )

    at_check(machine, fail, monkeypatch)
    with pytest.raises(UpstreamError) as raised:
        machine.run()
    assert raised.value.status_code == 429
    assert machine.visited == [State.START, State.READ, State.POLL, State.CHECK, State.HEARD]
    assert store.client().exists(names.lock) == 0  # nobody took it
    assert fake.message_calls() == []


def test_a_lock_freed_silently_is_taken_at_once(fake: Any, workload: Workload, monkeypatch: Any) -> None:
    """The holder's lock expired without a word: CHECK takes it in the same step, HOLD."""
    machine = miss(workload, ask("expired holder"))
    hold(machine.names)
    at_check(machine, lambda: store.client().delete(machine.names.lock), monkeypatch)
    fake.pause.clear()
    waiter = Running(machine)
    while not fake.message_calls():
        time.sleep(0.01)
    assert locks.waiting(machine.names.channel) == 0  # a holder now: it left the channel first
    fake.pause.set()
    result = waiter.join().result
    assert machine.visited == [State.START, State.READ, State.POLL, State.CHECK, State.HOLD]
    assert result is not None and (result.status, result.outcome) == ("miss", "miss")
    assert len(fake.message_calls()) == 1


def test_a_dead_holder_is_noticed_when_its_lock_expires_and_one_waiter_takes_over(
    fake: Any, make_workload: Any
) -> None:
    """A holder that died says nothing and stops renewing: its lock expires after lock_ttl and
    the waiter, looking every liveness interval, takes over."""
    workload = make_workload("dead", lock_ttl=0.4)
    machine = miss(workload, ask("dead holder"))
    assert locks.acquire(machine.names.lock, token="dead-holder", ttl_seconds=0.4)  # never renewed
    started = time.monotonic()
    result = Running(machine).join().result
    assert result is not None and (result.status, result.outcome) == ("miss", "miss")
    assert time.monotonic() - started < 0.4 + 5  # generous: within lock_ttl and a few looks
    assert machine.visited[:5] == PARKED
    assert machine.visited[-2:] == [State.CHECK, State.HOLD]
    assert len(fake.message_calls()) == 1


def test_a_live_holder_keeps_its_lock_however_long_the_upstream_takes(fake: Any, make_workload: Any) -> None:
    """lock_ttl is a liveness window: the holder renews it while the upstream is slow, so the
    waiters keep waiting for its answer instead of taking over (one upstream call)."""
    workload = make_workload("slow", lock_ttl=0.3)
    holder_machine, waiter_machine = miss(workload, ask("slow upstream")), miss(workload, ask("slow upstream"))
    fake.pause.clear()
    holder = Running(holder_machine)
    while not fake.message_calls():
        time.sleep(0.01)
    waiter = Running(waiter_machine)
    parked(waiter_machine.names)
    time.sleep(1.5)  # five lock TTLs: without renewal the lock would have expired long ago
    assert store.client().get(holder_machine.names.lock) == holder_machine.token.encode()
    fake.pause.set()
    assert holder.join().result is not None and waiter.join().result is not None
    assert (holder.result.status, waiter.result.status) == ("miss", "wait")  # type: ignore[union-attr]
    assert State.HOLD not in waiter_machine.visited
    assert len(fake.message_calls()) == 1
    assert store.client().exists(holder_machine.names.lock) == 0


def test_a_waiter_whose_pubsub_connection_is_killed_rechecks_instead_of_asking(
    fake: Any, workload: Workload, redis_db: Any
) -> None:
    """The answer was written while the waiter's connection was down (its ``ok`` lost): once
    the process re-subscribes, the waiter re-reads and answers it; nobody asks the upstream."""
    machine = miss(workload, ask("killed pubsub"))
    hold(machine.names)
    waiter = Running(machine)
    parked(machine.names)
    store.client().set(machine.names.entry, record(), px=60_000)  # written, its "ok" never sent
    assert int(redis_db.execute_command("CLIENT", "KILL", "TYPE", "pubsub")) >= 1
    result = waiter.join().result
    assert result is not None and (result.status, result.outcome) == ("wait", "wait")
    assert State.HEARD in machine.visited and machine.visited[-1] is State.READ
    assert fake.message_calls() == []


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
    machine: Stampede[Any] = Stampede(cast(Any, None), Names("e", "m", "l", "c", "f"))  # no call needed to build it
    assert set(machine._steps) == set(State)
