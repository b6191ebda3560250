"""In-process single flight: identical concurrent calls in one worker share one execution.

The Redis lock gives single flight across workers and machines; when Redis is down there is no
lock, and a hot key would send every concurrent caller to the upstream at once. Within one
process a stampede still makes one upstream call: the first caller of a key runs the function,
the others block on an Event (a greenlet switch under gevent) and get the same result or the same
exception. Not a cache: the moment the call returns, the key is forgotten.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar, cast

T = TypeVar("T")


class _Flight(Generic[T]):
    def __init__(self) -> None:
        self.done = threading.Event()
        self.result: T | None = None
        self.error: BaseException | None = None
        self.followers = 0


class SingleFlight(Generic[T]):
    """``do(key, fn)`` runs ``fn`` once per key at a time; concurrent callers share its outcome."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._flights: dict[Hashable, _Flight[T]] = {}

    def do(self, key: Hashable, fn: Callable[[], T]) -> tuple[T, bool]:
        """``fn()``'s result, and whether this caller shared another's call (True) or made it."""
        with self._lock:
            flight = self._flights.get(key)
            leader = flight is None
            if flight is None:
                flight = self._flights[key] = _Flight()
            else:
                flight.followers += 1
        if not leader:
            flight.done.wait()
            if flight.error is not None:
                raise flight.error
            return cast(T, flight.result), True  # set before ``done`` is
        try:
            result = flight.result = fn()
        except BaseException as exc:
            flight.error = exc
            raise
        finally:
            with self._lock:
                del self._flights[key]
            flight.done.set()
        return result, False

    def in_flight(self, key: Hashable) -> int:
        """How many callers share the call running for ``key`` now (0: none runs)."""
        with self._lock:
            flight = self._flights.get(key)
            return 0 if flight is None else 1 + flight.followers
