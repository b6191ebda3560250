"""A per-process circuit breaker for Redis: closed, open, probing.

Why: when Redis is down or frozen (``SIGSTOP``), every command pays the client's socket timeouts
(0.5 s to connect, 2 s to read by default). Without a breaker each call of a worker pays them
again; with it, the first failure opens the breaker and the calls that follow skip Redis at once
(fail-open to the upstream). When a back-off has passed, one probe (a PING in the background,
never a caller's request) asks whether Redis answers again: if it does, the breaker closes and
the cache works again, with nothing restarted; if not, the back-off doubles (up to a cap). So no
call waits on a Redis known to be down, not even the one that finds it back.

States and transitions::

    closed   --a call fails to reach Redis------------------->  open (back-off starts)
    open     --back-off passed; a call arrives--------------->  probing (it still skips Redis)
    probing  --the probe's PING answers---------------------->  closed (back-off reset)
    probing  --the probe fails------------------------------->  open (back-off doubled, capped)
    any      --a call reaches Redis--------------------------->  closed

Only failures that say the server is unreachable (connection refused, timeouts) open it: a Redis
that answers with an error (a script refused when the memory is full, say) is up. Written by
hand because the kept Python breakers (pybreaker, circuitbreaker) count failures per decorated
function and probe with a caller's own request; this is the few lines a breaker needs whose
probe must not make anybody wait.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

logger = logging.getLogger(__name__)

CLOSED, OPEN, PROBING = "closed", "open", "probing"


def _in_background(probe: Callable[[], None]) -> None:
    threading.Thread(target=probe, daemon=True, name="respcache-redis-probe").start()


class Breaker:
    """Whether to try Redis now. ``probe`` raises unless Redis answers; ``spawn`` runs it (a
    thread, a greenlet under gevent); ``clock`` is injectable (tests drive both by hand)."""

    def __init__(
        self,
        probe: Callable[[], None],
        *,
        backoff_seconds: float = 0.5,
        max_backoff_seconds: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        spawn: Callable[[Callable[[], None]], None] = _in_background,
    ) -> None:
        self.probe = probe
        self.backoff_seconds = backoff_seconds
        self.max_backoff_seconds = max_backoff_seconds
        self.clock = clock
        self.spawn = spawn
        self._lock = threading.Lock()
        self._state = CLOSED
        self._backoff = backoff_seconds
        self._retry_at = 0.0  # open: when the next probe may go
        #: Bumped by reset(): a probe started before it reports on a Redis that is gone.
        self._generation = 0
        self.opened = 0  # how many times it opened (for tests and the log)

    @property
    def state(self) -> str:
        return self._state

    def allow(self) -> bool:
        """True if this call may use Redis now; when it may not, a due probe is started."""
        if self._state == CLOSED:  # the hot path: no lock
            return True
        with self._lock:
            if self._state == CLOSED:
                return True
            if self._state == OPEN and self.clock() >= self._retry_at:
                self._state = PROBING
                generation = self._generation
                self.spawn(lambda: self._probe(generation))
        return False

    def retry_in(self) -> float:
        """Seconds until the next probe may go (0 when closed or probing)."""
        if self._state != OPEN:
            return 0.0
        return max(0.0, self._retry_at - self.clock())

    def _probe(self, generation: int) -> None:
        try:
            self.probe()
        except Exception as exc:  # noqa: BLE001 - whatever the client raised: still down
            with self._lock:
                if generation != self._generation:
                    return  # reset meanwhile (another Redis): this says nothing about it
                self._backoff = min(self._backoff * 2, self.max_backoff_seconds)
                self._state = OPEN
                self._retry_at = self.clock() + self._backoff
            logger.info("respcache: Redis still unreachable (%s); next try in %.1f s", exc, self._backoff)
            return
        if generation == self._generation:
            logger.warning("respcache: Redis answers again; using the cache")
            self.success()

    def success(self) -> None:
        if self._state == CLOSED:
            return
        with self._lock:
            self._state = CLOSED
            self._backoff = self.backoff_seconds

    def failure(self) -> None:
        with self._lock:
            if self._state != CLOSED:
                return  # calls already in flight when it opened: one back-off is enough
            self._state = OPEN
            self._retry_at = self.clock() + self._backoff
            self.opened += 1

    def reset(self) -> None:
        with self._lock:
            self._generation += 1
            self._state = CLOSED
            self._backoff = self.backoff_seconds
            self._retry_at = 0.0
