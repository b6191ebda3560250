"""The stampede lock: owner-token lock, compare-and-delete release, waiters woken by Pub/Sub.

One caller per key holds ``respcache:l:…`` (a fresh random token, ``SET NX PX lock_ttl``), calls
the upstream and writes the entry; the write (store/scripts/write.lua) and a failed call (``release``) both
PUBLISH on the key's channel, so waiters wake the moment there is something to read instead of
polling. Only the holder's token deletes the lock; a dead holder's lock expires after
``lock_ttl``. Every wait is bounded by its deadline (the workload's ``wait_max``).

Messages on a channel: ``ok`` (the entry is written: read it), ``ok<record>`` (the entry is
written, and here it is: store.ok_message), ``error:<json>`` (the holder's upstream call failed
with this error: the waiters return it too, instead of calling an upstream that just failed),
``abandoned`` (the holder stopped without an answer: try to take the lock).
"""

from __future__ import annotations

import os
import queue
import secrets
import threading
import time
from collections.abc import Callable
from typing import Any

from redis.exceptions import RedisError

from respcache import store
from respcache.exceptions import CacheUnavailable


def new_token() -> str:
    return secrets.token_hex(16)


def acquire(lock: str, *, token: str, ttl_seconds: float) -> bool:
    """Take the lock for ``ttl_seconds`` if nobody holds it."""
    try:
        return bool(store.client().set(lock, token, nx=True, px=max(1, int(ttl_seconds * 1000))))
    except RedisError as exc:
        raise CacheUnavailable(str(exc)) from exc


def release(lock: str, *, token: str, channel: str, message: bytes) -> bool:
    """Delete the lock if ``token`` still holds it, and tell the waiters ``message``."""
    try:
        return bool(store.script("release")(keys=[lock], args=[token, channel, message]))
    except RedisError as exc:
        raise CacheUnavailable(str(exc)) from exc


class _Dispatcher:
    """One Pub/Sub connection per process, shared by every waiter in it.

    A connection per waiter would hold one pooled Redis connection for each caller waiting on a
    lock: a stampede of a few hundred callers would exhaust the pool (and Redis's patience)
    exactly when the cache matters most. Here a listener thread (a greenlet under gevent) reads
    the one connection and hands each message to the queues of the waiters on that channel.
    A channel is subscribed while at least one waiter waits on it. If the connection fails,
    every waiter is told (``BROKEN``) and the next waiter opens a new one.
    """

    BROKEN = b"\x00broken"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pubsub: Any = None
        # (pid, Redis location): a new connection after a fork or a settings change. Not the
        # client object: Django hands each thread its own cache (and client) instance.
        self._owner: tuple[int, str] | None = None
        self._waiters: dict[str, list[_Waiter]] = {}
        self._confirmed: set[str] = set()

    def register(self, channel: str) -> _Waiter:
        waiter = _Waiter(channel)
        with self._lock:
            self._ensure_listener()
            waiting = self._waiters.setdefault(channel, [])
            waiting.append(waiter)
            if channel in self._confirmed:
                waiter.ready.set()
            elif len(waiting) == 1:
                try:
                    self._pubsub.subscribe(channel)
                except RedisError as exc:
                    waiting.remove(waiter)
                    del self._waiters[channel]
                    self._reset()
                    raise CacheUnavailable(str(exc)) from exc
        return waiter

    def waiting(self, channel: str) -> int:
        """How many waiters in this process wait on ``channel`` with a confirmed subscription."""
        with self._lock:
            return sum(1 for w in self._waiters.get(channel, ()) if w.ready.is_set())

    def parked(self, channel: str) -> int:
        """How many of them are blocked in ``Subscription.wait`` right now."""
        with self._lock:
            return sum(1 for w in self._waiters.get(channel, ()) if w.blocked)

    def unregister(self, waiter: _Waiter) -> None:
        with self._lock:
            waiting = self._waiters.get(waiter.channel)
            if not waiting or waiter not in waiting:
                return
            waiting.remove(waiter)
            if waiting:
                return
            del self._waiters[waiter.channel]
            self._confirmed.discard(waiter.channel)
            if self._pubsub is not None:
                try:
                    self._pubsub.unsubscribe(waiter.channel)
                except RedisError:
                    self._reset()

    def _ensure_listener(self) -> None:
        owner = (os.getpid(), store.location())
        if self._pubsub is not None and self._owner == owner:
            return
        if self._pubsub is not None:
            self._reset()
        self._pubsub = store.client().pubsub()
        self._owner = owner
        self._confirmed.clear()
        thread = threading.Thread(target=self._listen, args=(self._pubsub,), daemon=True, name="respcache-pubsub")
        thread.start()

    def _reset(self) -> None:
        """Forget the connection (under the lock); its listener stops on its own."""
        pubsub, self._pubsub, self._owner = self._pubsub, None, None
        self._confirmed.clear()
        if pubsub is not None:
            try:
                pubsub.close()
            except RedisError:
                pass

    def _listen(self, pubsub: Any) -> None:
        while True:
            with self._lock:
                if self._pubsub is not pubsub:
                    return
                idle = not self._waiters
            try:
                if idle and not pubsub.subscribed:
                    time.sleep(0.05)  # nothing to listen to yet; subscribe() is on its way
                    continue
                message = pubsub.get_message(timeout=1.0)
            except (RedisError, OSError, ValueError, AttributeError):
                # The connection failed (or was closed under us by _reset): wake everyone.
                with self._lock:
                    if self._pubsub is pubsub:
                        self._reset()
                    waiters = [w for ws in self._waiters.values() for w in ws]
                for waiter in waiters:
                    waiter.deliver(self.BROKEN)
                return
            if not message:
                continue
            kind = message.get("type")
            channel = message.get("channel")
            channel = channel.decode() if isinstance(channel, bytes) else str(channel)
            with self._lock:
                waiters = list(self._waiters.get(channel, ()))
                if kind == "subscribe" and waiters:
                    self._confirmed.add(channel)
            if kind == "subscribe":
                for waiter in waiters:
                    waiter.ready.set()
            elif kind == "message":
                data = message["data"]
                data = data if isinstance(data, bytes) else str(data).encode()
                for waiter in waiters:
                    waiter.deliver(data)


class _Waiter:
    def __init__(self, channel: str) -> None:
        self.channel = channel
        self.ready = threading.Event()
        self.blocked = False  # in Subscription.wait (for introspection and tests)
        # Each message with the wall-clock time the listener handed it over (the wake-up).
        self.messages: queue.Queue[tuple[bytes, float]] = queue.Queue()

    def deliver(self, data: bytes) -> None:
        self.ready.set()
        self.messages.put((data, time.time()))


_dispatcher = _Dispatcher()


def waiting(channel: str) -> int:
    """How many callers in this process wait on ``channel`` (for tests and introspection)."""
    return _dispatcher.waiting(channel)


def parked(channel: str) -> int:
    """How many callers in this process are blocked waiting for a message on ``channel``
    (not busy between messages: reading the entry, trying the lock)."""
    return _dispatcher.parked(channel)


class Subscription:
    """A waiter's subscription to one key's channel, through the process's shared connection.

    Entering returns once Redis has confirmed the subscription, so a caller that subscribes and
    then re-reads the entry never misses a write that lands in between.
    """

    def __init__(self, channel: str, *, confirm_timeout: float = 5.0) -> None:
        self.channel = channel
        self.confirm_timeout = confirm_timeout
        self._waiter: _Waiter | None = None
        #: When (wall clock) the last message poll() or wait() returned was handed to this
        #: waiter by the process's listener: the moment it was woken.
        self.delivered_at: float | None = None

    def __enter__(self) -> Subscription:
        self._waiter = _dispatcher.register(self.channel)
        if not self._waiter.ready.wait(self.confirm_timeout):
            self.close()
            raise CacheUnavailable("Redis did not confirm the subscription")
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        if self._waiter is not None:
            _dispatcher.unregister(self._waiter)
            self._waiter = None

    def poll(self) -> bytes | None:
        """A message that has already arrived, without waiting."""
        assert self._waiter is not None, "poll() outside the subscription"
        try:
            data, self.delivered_at = self._waiter.messages.get_nowait()
        except queue.Empty:
            return None
        if data == _Dispatcher.BROKEN:
            raise CacheUnavailable("the Pub/Sub connection to Redis failed")
        return data

    def wait(self, deadline: float, *, clock: Callable[[], float] = time.monotonic) -> bytes | None:
        """Block until a message arrives on the channel (returned) or ``deadline`` passes (None)."""
        assert self._waiter is not None, "wait() outside the subscription"
        remaining = deadline - clock()
        if remaining <= 0:
            return None
        waiter = self._waiter
        waiter.blocked = True
        try:
            data, self.delivered_at = waiter.messages.get(timeout=remaining)
        except queue.Empty:
            return None
        finally:
            waiter.blocked = False
        if data == _Dispatcher.BROKEN:
            raise CacheUnavailable("the Pub/Sub connection to Redis failed")
        return data
