"""The stampede lock on a real Redis: owner tokens, compare-and-delete, expiry, Pub/Sub wake-up."""

from __future__ import annotations

import threading
import time
from typing import Any

from respcache import locks
from tests.conftest import connected_clients, kill_pubsub_connections, publish, subscribers

# Named as respcache names a key's lock and channel (the tests' prefix "rctest:1:", one hash tag):
# on a cluster the release script's SPUBLISH must land in the lock's slot, and the hub shards
# the channel as an entry's.
LOCK = "rctest:1:respcache:l:lock-under-test:{t}"
CHANNEL = "rctest:1:respcache:c:lock-under-test:{t}"


def test_only_one_caller_gets_the_lock() -> None:
    a, b = locks.new_token(), locks.new_token()
    assert a != b
    assert locks.acquire(LOCK, token=a, ttl_seconds=10)
    assert not locks.acquire(LOCK, token=b, ttl_seconds=10)


def test_only_the_holder_releases(redis_db: Any) -> None:
    holder, other = locks.new_token(), locks.new_token()
    locks.acquire(LOCK, token=holder, ttl_seconds=10)
    assert not locks.release(LOCK, token=other, channel=CHANNEL, message=b"ok")
    assert redis_db.get(LOCK) == holder.encode()
    assert locks.release(LOCK, token=holder, channel=CHANNEL, message=b"ok")
    assert redis_db.get(LOCK) is None


def test_the_lock_expires_after_lock_ttl(redis_db: Any) -> None:
    locks.acquire(LOCK, token=locks.new_token(), ttl_seconds=1.5)
    assert 0 < redis_db.pttl(LOCK) <= 1500
    redis_db.pexpire(LOCK, 1)  # let it expire now instead of sleeping
    time.sleep(0.01)
    assert locks.acquire(LOCK, token=locks.new_token(), ttl_seconds=1)


def test_waiter_wakes_on_publish_and_times_out_without() -> None:
    got: list[bytes | None] = []
    ready = threading.Event()

    def waiter() -> None:
        with locks.Subscription(CHANNEL) as sub:
            ready.set()
            got.append(sub.wait(time.monotonic() + 10))

    thread = threading.Thread(target=waiter)
    thread.start()
    ready.wait(5)
    publish(CHANNEL, b"ok")
    thread.join(10)
    assert got == [b"ok"]

    with locks.Subscription(CHANNEL) as sub:
        assert sub.wait(time.monotonic() + 0.05) is None


def test_wait_uses_the_injected_clock() -> None:
    with locks.Subscription(CHANNEL) as sub:
        assert sub.wait(100.0, clock=lambda: 200.0) is None


def test_release_tells_waiters_the_message() -> None:
    token = locks.new_token()
    locks.acquire(LOCK, token=token, ttl_seconds=10)
    with locks.Subscription(CHANNEL) as sub:
        locks.release(LOCK, token=token, channel=CHANNEL, message=b"abandoned")
        assert sub.wait(time.monotonic() + 5) == b"abandoned"


def test_many_waiters_share_one_pubsub_connection(redis_db: Any) -> None:
    """200 waiters in one process hold one Redis connection between them, not 200."""
    n = 200
    got: list[bytes | None] = []
    lock = threading.Lock()

    def waiter() -> None:
        with locks.Subscription(CHANNEL) as sub:
            message = sub.wait(time.monotonic() + 20)
        with lock:
            got.append(message)

    before = connected_clients()
    threads = [threading.Thread(target=waiter) for _ in range(n)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 20
    while locks.parked(CHANNEL) < n and time.monotonic() < deadline:
        time.sleep(0.01)
    assert locks.waiting(CHANNEL) == locks.parked(CHANNEL) == n
    assert connected_clients() - before <= 2
    assert subscribers(CHANNEL) == 1
    publish(CHANNEL, b"ok")
    for t in threads:
        t.join(20)
    assert got == [b"ok"] * n
    assert locks.waiting(CHANNEL) == locks.parked(CHANNEL) == 0


def test_a_killed_pubsub_connection_is_reopened_and_waiters_told_to_recheck(redis_db: Any) -> None:
    """``CLIENT KILL TYPE pubsub``: the process's owner reconnects and resubscribes; the waiter
    gets RESUBSCRIBED (re-check the entry and the lock), not an error, and keeps hearing."""
    import pytest

    from respcache import pubsub

    got: list[bytes | None] = []
    ready = threading.Event()

    def waiter() -> None:
        with locks.Subscription(CHANNEL) as sub:
            ready.set()
            got.append(sub.wait(time.monotonic() + 20))
            got.append(sub.wait(time.monotonic() + 20))

    thread = threading.Thread(target=waiter)
    thread.start()
    ready.wait(5)
    assert kill_pubsub_connections() >= 1
    deadline = time.monotonic() + 10
    while not got and time.monotonic() < deadline:
        time.sleep(0.01)
    assert got == [pubsub.RESUBSCRIBED]
    publish(CHANNEL, b"ok")
    thread.join(10)
    assert not thread.is_alive() and got == [pubsub.RESUBSCRIBED, b"ok"]
    with pytest.raises(AssertionError):
        locks.Subscription(CHANNEL).wait(0)


def test_delivered_at_is_when_the_listener_handed_the_message_over() -> None:
    channel = "respcache:audit:delivered"
    with locks.Subscription(channel) as sub:
        deadline = time.monotonic() + 5
        while locks.waiting(channel) < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        publish(channel, b"ok")
        published = time.time()
        time.sleep(0.3)
        assert sub.wait(time.monotonic() + 5) == b"ok"
        assert sub.delivered_at is not None and sub.delivered_at < published + 0.2
