"""The process's Pub/Sub owner against a real Redis: delivery, and surviving a killed connection.

Its connection is the one respcache opens (``store.connection.open_pubsub``): redis-py's PubSub
on one Redis; on a cluster (the cluster pass) the one that SSUBSCRIBEs entry channels (the
waiters' channels below are named so) on their shards; "ch:signal" is plain, as the policies' is."""

from __future__ import annotations

import time
from typing import Any

import pytest

from respcache import pubsub
from respcache.store import connection
from tests.conftest import kill_pubsub_connections, publish, pubsub_connections


def _hub(redis_db: Any) -> pubsub.Hub:
    return pubsub.Hub(connection.open_pubsub, retry_seconds=0.05)


def ch(name: str) -> str:
    """An entry channel's name (sharded on a cluster)."""
    return connection.full_key(f"{connection.CHANNEL_PREFIX}{name}")


def _next(waiter: pubsub.Waiter, timeout: float = 5.0) -> bytes:
    data, _ = waiter.messages.get(timeout=timeout)
    return data


def _kill_pubsub(redis_db: Any) -> int:
    return kill_pubsub_connections()


def test_a_waiter_gets_what_is_published_on_its_channel_only(redis_db: Any) -> None:
    hub = _hub(redis_db)
    try:
        a, b = hub.register(ch("a")), hub.register(ch("b"))
        assert a.ready.wait(5) and b.ready.wait(5)
        publish(ch("a"), b"ok-a")
        assert _next(a) == b"ok-a"
        assert b.messages.empty()
        hub.unregister(a)
        publish(ch("a"), b"late")
        publish(ch("b"), b"ok-b")
        assert _next(b) == b"ok-b"
        assert a.messages.empty()
    finally:
        hub.stop()


def test_a_killed_connection_is_reopened_and_waiters_are_told_to_recheck(redis_db: Any) -> None:
    hub = _hub(redis_db)
    seen: list[bytes] = []
    try:
        hub.listen("ch:signal", seen.append)
        waiter = hub.register(ch("key"))
        assert waiter.ready.wait(5)
        assert _kill_pubsub(redis_db) >= 1
        # The owner notices, reconnects and resubscribes; the waiter is told to re-check.
        assert _next(waiter) == pubsub.RESUBSCRIBED
        if connection.clustered():
            # The kill goes node after node: the connection the hub opened again on a node not
            # yet visited may be killed too, and opened once more.
            time.sleep(0.5)
            while not waiter.messages.empty() and waiter.messages.queue[0][0] == pubsub.RESUBSCRIBED:
                _next(waiter)
            assert hub.reconnections >= 1
        else:
            assert hub.reconnections == 1
        publish(ch("key"), b"ok")
        assert _next(waiter) == b"ok"
        deadline = time.monotonic() + 5
        while pubsub.RESUBSCRIBED not in seen and time.monotonic() < deadline:
            time.sleep(0.01)
        assert pubsub.RESUBSCRIBED in seen  # a permanent channel's handler hears it too
        publish("ch:signal", b"changed")
        deadline = time.monotonic() + 5
        while b"changed" not in seen and time.monotonic() < deadline:
            time.sleep(0.01)
        assert b"changed" in seen
    finally:
        hub.stop()


def test_waiters_are_told_broken_when_redis_cannot_be_reached_again(redis_db: Any) -> None:
    connects: list[int] = []

    def connect() -> Any:
        connects.append(1)
        if len(connects) > 1:  # Redis "went away" after the first connection
            raise OSError("connection refused")
        return connection.open_pubsub()

    hub = pubsub.Hub(connect, retry_seconds=0.05)
    try:
        waiter = hub.register(ch("key"))
        assert waiter.ready.wait(5)
        _kill_pubsub(redis_db)
        assert _next(waiter) == pubsub.BROKEN
        assert hub.down
    finally:
        hub.stop()


@pytest.mark.parametrize("waiters", [1, 50])
def test_many_waiters_share_one_connection(redis_db: Any, waiters: int) -> None:
    before = pubsub_connections()  # the process's own hub, listening
    hub = _hub(redis_db)
    try:
        registered = [hub.register(ch("many")) for _ in range(waiters)]
        assert all(w.ready.wait(5) for w in registered)
        assert pubsub_connections() == before + 1
        publish(ch("many"), b"ok")
        assert all(_next(w) == b"ok" for w in registered)
    finally:
        hub.stop()


def test_an_idle_owner_sleeps_and_a_new_channel_or_stop_wakes_it(redis_db: Any) -> None:
    """The owner blocks on its socket (no 10 ms polling): idle, it wakes about once per
    ``idle_seconds``; a new waiter's subscription and ``stop`` reach it at once."""
    hub = pubsub.Hub(connection.open_pubsub, idle_seconds=30.0)
    try:
        first = hub.register("ch:idle")
        assert first.ready.wait(5)
        time.sleep(0.1)  # let it settle into its sleep
        asleep = hub.sleeps
        time.sleep(0.5)
        assert hub.sleeps - asleep <= 1  # polling every 10 ms would be ~50
        started = time.monotonic()
        second = hub.register("ch:idle-2")
        assert second.ready.wait(5)
        assert time.monotonic() - started < 1.0  # not after idle_seconds
        redis_db.publish("ch:idle", b"ok")
        assert _next(first) == b"ok"
    finally:
        started = time.monotonic()
        hub.stop(timeout=5)
        assert time.monotonic() - started < 2.0
    assert hub._thread is not None and not hub._thread.is_alive()
