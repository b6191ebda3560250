"""A per-process circuit breaker for Redis: closed, open, half-open.

Why: when Redis is down or frozen (``SIGSTOP``), every command pays the client's socket timeouts
(0.5 s to connect, 2 s to read by default). Without a breaker each call of a worker pays them
again; with it, the first failure opens the breaker and the calls that follow skip Redis at once
(fail-open to the upstream) until a back-off has passed; then exactly one call probes Redis
(half-open) and its success closes the breaker again. So the cache works again within a back-off
of Redis answering, with nothing restarted, and no call waits on a Redis known to be down.

States and transitions::

    closed    --failure------------------------------------>  open (back-off starts)
    open      --back-off passed, one call allowed (probe)--->  half-open
    half-open --probe succeeds------------------------------>  closed (back-off reset)
    half-open --probe fails---------------------------------->  open (back-off doubled, capped)
    half-open --probe silent for probe_timeout--------------->  another call may probe

Only failures that say the server is unreachable (connection refused, timeouts) open it: a Redis
that answers with an error (a script refused when the memory is full, say) is up. Written by hand
because the kept Python breakers (pybreaker, circuitbreaker) count failures per decorated
function and have no half-open lease; this is the few lines a breaker around one resource needs.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half-open"


class Breaker:
    """Whether to try Redis now. ``clock`` is injectable (tests drive it by hand)."""

    def __init__(
        self,
        *,
        backoff_seconds: float = 0.5,
        max_backoff_seconds: float = 5.0,
        probe_timeout_seconds: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.backoff_seconds = backoff_seconds
        self.max_backoff_seconds = max_backoff_seconds
        self.probe_timeout_seconds = probe_timeout_seconds
        self.clock = clock
        self._lock = threading.Lock()
        self._state = CLOSED
        self._backoff = backoff_seconds
        self._retry_at = 0.0  # open: when a probe may go; half-open: when the probe's lease ends
        self.opened = 0  # how many times it opened (for tests and the log)

    @property
    def state(self) -> str:
        return self._state

    def allow(self) -> bool:
        """True if this call may use Redis now (closed, or this call is the probe)."""
        if self._state == CLOSED:  # the hot path: no lock
            return True
        with self._lock:
            if self._state == CLOSED:
                return True
            now = self.clock()
            if now < self._retry_at:
                return False
            # Open and the back-off has passed, or a half-open probe went silent: this call probes.
            self._state = HALF_OPEN
            self._retry_at = now + self.probe_timeout_seconds
            return True

    def retry_in(self) -> float:
        """Seconds until the next probe may go (0 when closed)."""
        if self._state == CLOSED:
            return 0.0
        return max(0.0, self._retry_at - self.clock())

    def success(self) -> None:
        if self._state == CLOSED:
            return
        with self._lock:
            self._state = CLOSED
            self._backoff = self.backoff_seconds

    def failure(self) -> None:
        with self._lock:
            if self._state == HALF_OPEN:
                self._backoff = min(self._backoff * 2, self.max_backoff_seconds)
            elif self._state == OPEN:
                return  # calls already in flight when it opened: one back-off is enough
            self._state = OPEN
            self._retry_at = self.clock() + self._backoff
            self.opened += 1

    def reset(self) -> None:
        with self._lock:
            self._state = CLOSED
            self._backoff = self.backoff_seconds
            self._retry_at = 0.0
