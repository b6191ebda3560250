"""The stampede lock: owner-token lock, compare-and-delete release, waiters woken by Pub/Sub.

One caller per key holds ``respcache:l:…`` (a fresh random token, ``SET NX PX lock_ttl``), calls
the upstream and writes the entry; the write (store._WRITE) and a failed call (``release``) both
PUBLISH on the key's channel, so waiters wake the moment there is something to read instead of
polling. Only the holder's token deletes the lock; a dead holder's lock expires after
``lock_ttl``. Every wait is bounded by its deadline (the workload's ``wait_max``).

Messages on a channel: ``ok`` (the entry is written: read it), ``error:<json>`` (the holder's
upstream call failed with this error: the waiters return it too, instead of calling an upstream
that just failed), ``abandoned`` (the holder stopped without an answer: try to take the lock).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from typing import Any

from redis.exceptions import RedisError

from respcache import store
from respcache.exceptions import CacheUnavailable

_RELEASE = """
local released = 0
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  released = 1
end
redis.call('PUBLISH', ARGV[2], ARGV[3])
return released
"""


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
        return bool(store.script(_RELEASE)(keys=[lock], args=[token, channel, message]))
    except RedisError as exc:
        raise CacheUnavailable(str(exc)) from exc


class Subscription:
    """A waiter's subscription to one key's channel. Subscribe before re-reading, so that a
    write landing between the read and the wait is never missed."""

    def __init__(self, channel: str) -> None:
        self.channel = channel
        self._pubsub: Any = None

    def __enter__(self) -> Subscription:
        try:
            self._pubsub = store.client().pubsub(ignore_subscribe_messages=True)
            self._pubsub.subscribe(self.channel)
        except RedisError as exc:
            self.close()
            raise CacheUnavailable(str(exc)) from exc
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        if self._pubsub is not None:
            try:
                self._pubsub.close()
            except RedisError:
                pass
            self._pubsub = None

    def wait(self, deadline: float, *, clock: Callable[[], float] = time.monotonic) -> bytes | None:
        """Block until a message arrives on the channel (returned) or ``deadline`` passes (None)."""
        while True:
            remaining = deadline - clock()
            if remaining <= 0:
                return None
            try:
                message = self._pubsub.get_message(timeout=remaining)
            except RedisError as exc:
                raise CacheUnavailable(str(exc)) from exc
            if message and message.get("type") == "message":
                data = message["data"]
                return data if isinstance(data, bytes) else str(data).encode()
