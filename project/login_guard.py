"""Password checks that cannot stall a gevent worker, and the client address the login guard counts.

PBKDF2 (Django's default, a million iterations: about 0.6 s of one core here) is pure CPU. Run
inline in a gevent worker it stops the event loop, and so every other call that worker serves:
200 made-up sign-ins, 16 at a time, took a caller's cache hits from a p50 of 3 ms to 250 ms.

``BoundedPBKDF2PasswordHasher`` (first in ``PASSWORD_HASHERS``, same algorithm name, so every
stored hash stays valid) changes where and how many hashes run, not what they compute:

- Off the event loop. ``hashlib.pbkdf2_hmac`` releases the GIL for its whole loop (measured: a
  greenlet ticking every 1 ms while a hash runs saw gaps of at most 3.5 ms with the hash in a
  thread, 573 ms with it inline), so the hash runs in one OS thread of the worker's own pool and
  the loop keeps answering hits meanwhile.
- One at a time per worker, at the lowest CPU priority. A flood would otherwise take every core
  (the threads compete with the loop for them); the hashing thread is ``nice 19`` so the
  kernel gives the event loop the core first, and hashing gets the idle time.
- A bounded wait. A sign-in waits at most ``max_wait`` seconds for the worker's hashing thread;
  past that it gets 503 with ``Retry-After`` (``PasswordHashingBusy``, turned into the answer by
  ``HashingBusyMiddleware``), without hashing. Waiting greenlets cost nothing.

Outside a gevent worker (``manage.py``, tests, a thread-based server) the hash runs inline,
still one at a time per process.

Cheap refusals flood too: 8 connections of ``Authorization: Basic`` to ``/api/`` (about 3 ms of
CPU each, refused unread) took a caller's hit p50 to 19x in ``make bench``, because every one in
flight is a greenlet the loop runs between a hit's steps. ``ManagementBulkheadMiddleware`` admits
one request at a time per worker outside the call path (the others park), which brought the
mixed flood's ratio back under the 1.5x target.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import orjson
from axes.handlers.cache import AxesCacheHandler
from django.contrib.auth.hashers import PBKDF2PasswordHasher
from django.http import HttpRequest, HttpResponse
from django_redis.exceptions import ConnectionInterrupted
from redis.exceptions import RedisError
from rest_framework.throttling import BaseThrottle

T = TypeVar("T")


class PasswordHashingBusy(Exception):
    """Every hashing slot of this worker stayed taken for ``max_wait`` seconds."""


def client_ip(request: HttpRequest) -> str:
    """The client address as the management API's throttles see it (``REMOTE_ADDR``, or with
    ``DJANGO_NUM_PROXIES`` the address that many proxies back in ``X-Forwarded-For``)."""
    return str(BaseThrottle().get_ident(request))  # type: ignore[arg-type]


def _under_gevent() -> bool:
    try:
        from gevent import monkey
    except ImportError:
        return False
    return bool(monkey.is_module_patched("threading"))


class _Gate:
    """At most ``slots`` hashes at once in this process; the hash itself in a real OS thread."""

    def __init__(self, slots: int) -> None:
        self.slots = slots
        self.pid = -1
        self.semaphore: Any = None
        self.pool: Any = None

    def _ready(self) -> None:
        if self.pid == os.getpid():
            return
        # Created in the worker (after gunicorn's fork), with the worker's own primitives.
        if _under_gevent():
            from gevent.lock import BoundedSemaphore
            from gevent.threadpool import ThreadPool

            self.semaphore, self.pool = BoundedSemaphore(self.slots), ThreadPool(self.slots)
        else:
            self.semaphore, self.pool = threading.BoundedSemaphore(self.slots), None
        self.pid = os.getpid()

    def run(self, work: Callable[[], T], max_wait: float) -> T:
        self._ready()
        if not self.semaphore.acquire(timeout=max_wait):
            raise PasswordHashingBusy
        try:
            if self.pool is None:
                return work()
            return self.pool.apply(_low_priority, (work,))  # type: ignore[no-any-return]
        finally:
            self.semaphore.release()


def _low_priority(work: Callable[[], T]) -> T:
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)  # Linux: per thread
    except (OSError, AttributeError):
        pass
    return work()


_gate = _Gate(slots=1)
_bulkhead = _Gate(slots=1)


class BoundedPBKDF2PasswordHasher(PBKDF2PasswordHasher):
    """Django's PBKDF2 hasher, run off the event loop, one hash at a time per worker."""

    max_wait = 3.0  # seconds a sign-in waits for the hashing thread before its 503

    # Every hash goes through encode: make_password, verify (re-encodes with the stored salt) and
    # the dummy hash Django runs for an unknown user, so that it answers as slowly as for a known one.
    def encode(self, password: str, salt: str, iterations: int | None = None) -> str:
        parent = super().encode
        return _gate.run(lambda: parent(password, salt, iterations), self.max_wait)


def busy(message: str) -> HttpResponse:
    """503 ``api_error`` in the Anthropic error format, with ``Retry-After`` and a length (this
    can answer before CommonMiddleware would set one)."""
    body = orjson.dumps({"type": "error", "error": {"type": "api_error", "message": message}})
    response = HttpResponse(body, status=503, content_type="application/json")
    response["Retry-After"] = "5"
    response["Content-Length"] = str(len(response.content))
    return response


class HashingBusyMiddleware:
    """A sign-in refused by the hashing gate gets 503 and ``Retry-After``, never a 500."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if not isinstance(exception, PasswordHashingBusy):
            return None
        return busy("Too many sign-ins are being checked at once; try again in a moment.")


class ManagementBulkheadMiddleware:
    """At most ``slots`` requests per worker at once outside the call path; the others wait.

    A flood of cheap refusals (Basic auth on ``/api/``, sign-ins) is still CPU in the worker that
    serves the calls: in a gevent worker every flooding request in flight is a greenlet that the
    event loop runs between the steps of a hit, so a hit waits behind all of them. Admitting one
    at a time bounds that to one; the waiting ones are parked greenlets and cost nothing. Calls
    (``/w/``), ``/healthz``, ``/metrics`` and static files never wait here. A request that waited
    ``max_wait`` seconds gets 503 with ``Retry-After``.
    """

    max_wait = 10.0
    exempt = ("/w/", "/healthz", "/metrics", "/static/")

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response
        self.gate = _bulkhead  # one per process, whichever handler instance uses it

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if request.path.startswith(self.exempt):
            return self.get_response(request)
        self.gate._ready()
        if not self.gate.semaphore.acquire(timeout=self.max_wait):
            return busy("Too many management requests at once; try again in a moment.")
        try:
            return self.get_response(request)
        finally:
            self.gate.semaphore.release()


logger = logging.getLogger(__name__)
#: What a Redis that is down, frozen or full raises through django-redis.
_REDIS_DOWN = (ConnectionInterrupted, RedisError, OSError)


class FailOpenAxesCacheHandler(AxesCacheHandler):  # type: ignore[misc]  # axes is untyped
    """django-axes' cache handler (the counts in respcache's Redis), failing open like the cache:
    while Redis cannot be reached, a sign-in is checked by its password alone and nothing is
    counted, instead of every sign-in answering 500. Guessing stays bounded meanwhile by the
    one-at-a-time hashing per worker."""

    def get_failures(self, request: Any, credentials: dict[str, Any] | None = None) -> int:
        try:
            return int(super().get_failures(request, credentials))
        except _REDIS_DOWN:
            logger.warning("respcache: sign-in guard: Redis unreachable, failures not checked")
            return 0

    def user_login_failed(self, sender: Any, credentials: dict[str, Any], request: Any = None, **kwargs: Any) -> None:
        try:
            super().user_login_failed(sender, credentials, request, **kwargs)
        except _REDIS_DOWN:
            logger.warning("respcache: sign-in guard: Redis unreachable, a failed sign-in not counted")

    def user_logged_in(self, sender: Any, request: Any, user: Any, **kwargs: Any) -> None:
        try:
            super().user_logged_in(sender, request, user, **kwargs)
        except _REDIS_DOWN:
            logger.warning("respcache: sign-in guard: Redis unreachable, the count not reset")
