"""The stampede lock: owner-token lock kept alive by its holder, atomic takeover, Pub/Sub waiters.

One caller per key holds ``respcache:l:…`` (a fresh random token, ``SET NX PX lock_ttl``), asks
the upstream and writes the entry. While it asks, a ``Renewal`` extends the lock every third of
``lock_ttl`` (compare-and-extend with the token, store/scripts/extend.lua), so however long the
upstream takes the lock lives as long as its holder; a holder that dies (process killed, machine
lost) stops renewing and its lock expires within ``lock_ttl``. So ``lock_ttl`` is a liveness
window, not a bound on the upstream's time.

The write (store/scripts/write.lua) and a failed call (``release``) both PUBLISH on the key's
channel, so waiters wake the moment there is something to read instead of polling. Waiters also
look at the key every ``liveness_interval(lock_ttl)`` (``take_over``, one atomic script): the
answer is there, the holder still holds, the holder failed (its failure record), or the lock is
free and the waiter takes it. Only the holder's token deletes or extends the lock.

Messages on a channel: ``ok`` (the entry is written: read it), ``ok<record>`` (the entry is
written, and here it is: store.ok_message; also what a holder that could not store its answer
sends), ``error:<json>`` (the holder's upstream call failed with this error: the waiters return
it too, instead of calling an upstream that just failed), ``abandoned`` (the holder stopped
without an answer: take over). Besides these, a waiter may be handed ``pubsub.RESUBSCRIBED``
(the connection was lost and re-opened: re-check the entry and the lock) or ``pubsub.BROKEN``
(Redis cannot be reached: raised as CacheUnavailable, the call fails open).
"""

from __future__ import annotations

import logging
import queue
import secrets
import threading
import time
from collections.abc import Callable
from types import TracebackType

from respcache import pubsub, store
from respcache.exceptions import CacheUnavailable

logger = logging.getLogger(__name__)

#: How long a holder's failure stays for waiters that missed its message, in seconds.
FAILURE_RECORD_SECONDS = 5.0

#: What ``take_over`` found.
ENTRY, HELD, FAILED, ACQUIRED = "entry", "held", "failed", "acquired"


def new_token() -> str:
    return secrets.token_hex(16)


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


def liveness_interval(lock_ttl: float) -> float:
    """How often a waiter looks at the lock: a quarter of its TTL, between 50 ms and 2.5 s."""
    return min(max(lock_ttl / 4, 0.05), 2.5)


def acquire(lock: str, *, token: str, ttl_seconds: float) -> bool:
    """Take the lock for ``ttl_seconds`` if nobody holds it."""
    with store.guarded():
        return bool(store.client().set(lock, token, nx=True, px=_ms(ttl_seconds)))


def extend(lock: str, *, token: str, ttl_seconds: float) -> bool:
    """Give the lock ``ttl_seconds`` more if ``token`` still holds it."""
    with store.guarded():
        return bool(store.script("extend")(keys=[lock], args=[token, _ms(ttl_seconds)]))


def release(lock: str, *, token: str, channel: str, message: bytes, failure: str = "") -> bool:
    """Delete the lock if ``token`` still holds it, and tell the waiters ``message``. With a
    ``failure`` key, the message (the holder's error) also stays there a few seconds."""
    ttl = _ms(FAILURE_RECORD_SECONDS) if failure else 0
    with store.guarded():
        return bool(
            store.script("release")(
                keys=[lock, failure or lock], args=[token, channel, message, ttl, store.publish_command()]
            )
        )


def take_over(*, entry: str, lock: str, failure: str, token: str, ttl_seconds: float) -> tuple[str, bytes]:
    """One atomic look at a key for a waiter: (ENTRY | HELD | FAILED | ACQUIRED, the failure
    message when FAILED). ACQUIRED means ``token`` now holds the lock."""
    with store.guarded():
        reply = store.script("takeover")(keys=[entry, lock, failure], args=[token, _ms(ttl_seconds)])
    word = reply[0].decode() if isinstance(reply[0], bytes) else str(reply[0])
    return word, (reply[1] if len(reply) > 1 else b"")


class Renewal:
    """Keeps ``token``'s lock alive while its holder works: a thread (a greenlet under gevent)
    extends it every third of ``ttl_seconds`` until ``stop()``. If the lock was lost meanwhile
    (Redis restarted empty), it stops renewing; the holder's write still stores its answer."""

    def __init__(self, lock: str, *, token: str, ttl_seconds: float) -> None:
        self.lock, self.token, self.ttl_seconds = lock, token, ttl_seconds
        self.renewals = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="respcache-lock-renewal")
        self._thread.start()

    def _run(self) -> None:
        interval = max(self.ttl_seconds / 3, 0.01)
        while not self._stop.wait(interval):
            try:
                if not extend(self.lock, token=self.token, ttl_seconds=self.ttl_seconds):
                    logger.warning("respcache: lock %s lost while its holder worked", self.lock)
                    return
                self.renewals += 1
            except CacheUnavailable as exc:  # Redis down: nobody can take the lock either
                logger.warning("respcache: lock not renewed (%s)", exc)

    def stop(self) -> None:
        self._stop.set()

    def __enter__(self) -> Renewal:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


# --- waiting: the process's one Pub/Sub owner ----------------------------------------------

_hubs = pubsub.Hubs(lambda: store.client().pubsub(), store.location)


def hub() -> pubsub.Hub:
    """This process's Pub/Sub owner (a new one after a fork or a change of Redis)."""
    return _hubs.get()


def waiting(channel: str) -> int:
    """How many callers in this process wait on ``channel`` (for tests and introspection)."""
    return hub().waiting(channel)


def parked(channel: str) -> int:
    """How many callers in this process are blocked waiting for a message on ``channel``
    (not busy between messages: reading the entry, looking at the lock)."""
    return hub().parked(channel)


class Subscription:
    """A waiter's subscription to one key's channel, through the process's one connection.

    Entering returns once Redis has confirmed the subscription, so a caller that subscribes and
    then re-reads the entry never misses a write that lands in between.
    """

    def __init__(self, channel: str, *, confirm_timeout: float = 5.0) -> None:
        self.channel = channel
        self.confirm_timeout = confirm_timeout
        self._hub: pubsub.Hub | None = None
        self._waiter: pubsub.Waiter | None = None
        #: When (wall clock) the last message poll() or wait() returned was handed to this
        #: waiter by the process's owner: the moment it was woken.
        self.delivered_at: float | None = None

    def __enter__(self) -> Subscription:
        self._hub = hub()
        if self._hub.down:
            raise CacheUnavailable("the Pub/Sub connection to Redis is down")
        self._waiter = self._hub.register(self.channel)
        if not self._waiter.ready.wait(self.confirm_timeout):
            self.close()
            raise CacheUnavailable("Redis did not confirm the subscription")
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        if self._waiter is not None and self._hub is not None:
            self._hub.unregister(self._waiter)
            self._waiter = None

    def _take(self, data: bytes, delivered_at: float) -> bytes:
        self.delivered_at = delivered_at
        if data == pubsub.BROKEN:
            raise CacheUnavailable("the Pub/Sub connection to Redis failed")
        return data

    def poll(self) -> bytes | None:
        """A message that has already arrived, without waiting."""
        assert self._waiter is not None, "poll() outside the subscription"
        try:
            data, delivered_at = self._waiter.messages.get_nowait()
        except queue.Empty:
            return None
        return self._take(data, delivered_at)

    def wait(self, deadline: float, *, clock: Callable[[], float] = time.monotonic) -> bytes | None:
        """Block until a message arrives on the channel (returned) or ``deadline`` passes (None)."""
        assert self._waiter is not None, "wait() outside the subscription"
        remaining = deadline - clock()
        if remaining <= 0:
            return None
        waiter = self._waiter
        waiter.blocked = True
        try:
            data, delivered_at = waiter.messages.get(timeout=remaining)
        except queue.Empty:
            return None
        finally:
            waiter.blocked = False
        return self._take(data, delivered_at)
