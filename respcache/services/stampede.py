"""A miss under the key's lock: hold, wait, take over or fall through, as a small state machine.

The first caller to miss a key takes its lock and asks the upstream once; the others subscribe
to the key's channel and wait for the holder's word (locks.py lists the messages: ``ok``,
``ok<record>``, ``error:<json>``, ``abandoned``), for at most the workload's ``wait_max``.

States and transitions (each state is one method of ``Stampede``, named after it)::

    START        lock taken ...................................... HOLD
                 lock held by another: subscribe ................. READ
    READ         the entry is there .............................. answer ``wait``
                 (subscribed first, then read: no write is missed)
                 no entry ........................................ POLL
    POLL         a message already arrived ....................... HEARD
                 none ............................................ TAKE_OVER
    TAKE_OVER    lock still held ................................. PARK
                 lock free; within TAKEOVER_DRAIN_SECONDS we hear
                 the holder's error: release ours (abandoned) .... HEARD
                 an ``ok``: release ours (ok) .................... HEARD
                 nothing, or ``abandoned`` ....................... HOLD
    PARK         a message ....................................... HEARD
                 wait_max passed ................................. FALL_THROUGH
    HEARD        ``error:<json>`` ................................ raise the holder's error
                 ``ok<record>`` .................................. answer ``wait`` from it
                 ``ok`` (no record), ``abandoned`` ............... READ
    HOLD         (leaves the channel first)
                 the entry is there now: release (ok) ............ answer ``wait``
                 otherwise: ask the upstream once, store, release
                 and wake the waiters ............................ answer ``miss``
    FALL_THROUGH (leaves the channel first)
                 ask the upstream, store without the lock ........ answer ``miss``, counted
                                                                   ``fallthrough``

A waiter woken by an ``ok`` counts how long after the write it woke (the wake-up histogram).
A Redis error (``CacheUnavailable``) in any state leaves the machine: the call's guard answers
from the upstream (guard.CALL). To add a state: a ``State`` member, a method returning the next
state (or ``_Done``), its line in ``Stampede.__init__``'s table, and its lines above.
"""

from __future__ import annotations

import base64
import enum
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from typing import Generic, Protocol, TypeVar

import orjson

from respcache import keys, locks, store
from respcache.exceptions import UpstreamError
from respcache.selectors import Policy
from respcache.services import guard
from respcache.services.counting import FALLTHROUGH, MISS, NO_COUNTS, WAIT, Counts

#: How long a waiter that takes over a free lock listens for the failure its holder may have
#: just published, before calling the upstream itself.
TAKEOVER_DRAIN_SECONDS = 0.05

#: The holder's words on the key's channel (``ok<record>`` is store.ok_message's).
OK, ABANDONED, ERROR = b"ok", b"abandoned", b"error:"


@dataclass(frozen=True)
class Names:
    """One key's Redis names: its entry, its meta (accounting) hash, its lock, its channel."""

    entry: str
    meta: str
    lock: str
    channel: str

    @classmethod
    def build(cls, slug: str, version: int, fingerprint: str) -> Names:
        raw = keys.entry_key(workload=slug, version=version, fingerprint=fingerprint)
        return cls(
            entry=store.full_key(raw),
            meta=store.full_key(keys.meta_key(raw)),
            lock=store.full_key(keys.lock_key(raw)),
            channel=store.full_key(keys.channel_name(raw)),
        )


def error_message(exc: UpstreamError) -> bytes:
    """The holder's upstream error as its waiters receive it (``error:<json>``)."""
    return ERROR + orjson.dumps(
        {
            "status": exc.status_code,
            "type": exc.error_type,
            "message": exc.message,
            "body": base64.b64encode(exc.body()).decode(),
            "headers": exc.headers(),
        }
    )


def error_from_message(message: bytes) -> UpstreamError:
    data = orjson.loads(message[len(ERROR) :])
    return UpstreamError(
        data["message"],
        status_code=int(data["status"]),
        error_type=data["type"],
        body=base64.b64decode(data["body"]),
        headers=data.get("headers") or {},
    )


def release(names: Names, token: str, message: bytes, *, workload: str) -> None:
    """Release ``token``'s lock and tell the waiters ``message``."""
    guard.fail_open(
        guard.RELEASE,
        lambda: locks.release(names.lock, token=token, channel=names.channel, message=message),
        guard.nothing,
        workload=workload,
    )


@contextmanager
def released_on_failure(names: Names | None, token: str, *, workload: str) -> Iterator[None]:
    """If the body fails while ``token`` holds the lock, release it and tell the waiters why."""
    try:
        yield
    except UpstreamError as exc:
        if token and names is not None:
            release(names, token, error_message(exc), workload=workload)
        raise
    except BaseException:
        if token and names is not None:
            release(names, token, ABANDONED, workload=workload)
        raise


R_co = TypeVar("R_co", covariant=True)
R = TypeVar("R")


class Caller(Protocol[R_co]):
    """What the machine asks of the call it serves (calls.Call provides it)."""

    @property
    def slug(self) -> str: ...

    @property
    def policy(self) -> Policy: ...

    def monotonic(self) -> float: ...

    def lookup(self, outcome: str, *, read_entry: bool = True, counts: Counts = NO_COUNTS) -> store.Lookup:
        """Read the entry, counting ``outcome`` if found (``read_entry=False``: count only)."""
        ...

    def count(self, counts: Counts) -> None: ...

    def answer(self, status: str, found: store.Lookup) -> R_co:
        """Serve a stored entry."""
        ...

    def answer_from_upstream(
        self, status: str, outcome: str, names: Names | None = None, token: str = "", counts: Counts = NO_COUNTS
    ) -> R_co:
        """Ask the upstream and answer; store under ``names`` (releasing ``token``'s lock)."""
        ...


class State(enum.Enum):
    START = "start"
    READ = "read"
    POLL = "poll"
    TAKE_OVER = "take over"
    PARK = "park"
    HEARD = "heard"
    HOLD = "hold"
    FALL_THROUGH = "fall through"


@dataclass(frozen=True)
class _Done(Generic[R]):
    """The machine's answer: it stops here."""

    result: R


class Stampede(Generic[R]):
    """One miss of one key, driven from START until a state answers (or raises)."""

    def __init__(self, call: Caller[R], names: Names) -> None:
        self.call = call
        self.names = names
        self.token = locks.new_token()
        self.deadline = 0.0  # monotonic; set when we start waiting
        self.subscription: locks.Subscription | None = None
        self.message: bytes | None = None  # what HEARD acts on
        self.woke_at: float | None = None  # when an "ok" woke us, for the READ after it
        #: The states this miss went through, in order (for tests and introspection).
        self.visited: list[State] = []
        self._exits = ExitStack()
        self._steps: dict[State, Callable[[], State | _Done[R]]] = {
            State.START: self.start,
            State.READ: self.read,
            State.POLL: self.poll,
            State.TAKE_OVER: self.take_over,
            State.PARK: self.park,
            State.HEARD: self.heard,
            State.HOLD: self.hold,
            State.FALL_THROUGH: self.fall_through,
        }

    def run(self) -> R:
        state = State.START
        with self._exits:  # leaves the subscription, whatever ends the machine
            while True:
                self.visited.append(state)
                step = self._steps[state]()
                if isinstance(step, _Done):
                    return step.result
                state = step

    # The states.

    def start(self) -> State:
        """Try for the lock: the first caller holds it, the others wait for its answer."""
        if self._acquire():
            return State.HOLD
        self.deadline = self.call.monotonic() + self.call.policy.wait_max
        self.subscription = self._exits.enter_context(locks.Subscription(self.names.channel))
        return State.READ

    def read(self) -> State | _Done[R]:
        """Read the entry (subscribed first, so a write landing now is heard, not missed)."""
        woke_at, self.woke_at = self.woke_at, None
        found = self.call.lookup(WAIT)
        if found.entry is None:
            return State.POLL
        if woke_at is not None:  # an "ok" woke us: how long after the write
            self.call.count(Counts.wake((woke_at - found.entry.stored_at) * 1000))
        return _Done(self.call.answer(WAIT, found))

    def poll(self) -> State:
        """A message that arrived while we read, without waiting."""
        message = self._subscribed().poll()
        return State.TAKE_OVER if message is None else self._hear(message)

    def take_over(self) -> State:
        """Try for the lock; if it was free, first listen for the holder's last word."""
        if not self._acquire():
            return State.PARK
        # The lock was free: its holder may have just failed. Redis sent us its message before
        # our lock reply, so it is (nearly) here: take it first.
        monotonic = self.call.monotonic
        message = self._subscribed().wait(monotonic() + TAKEOVER_DRAIN_SECONDS, clock=monotonic)
        if message is not None and message.startswith(ERROR):
            self._release(ABANDONED)
            return self._hear(message)
        if message is not None and message.startswith(OK):
            self._release(OK)  # free because the answer was just written: we were woken, not left
            return self._hear(message)
        return State.HOLD

    def park(self) -> State:
        """Block until a message arrives or wait_max passes."""
        message = self._subscribed().wait(self.deadline, clock=self.call.monotonic)
        return State.FALL_THROUGH if message is None else self._hear(message)

    def heard(self) -> State | _Done[R]:
        """Act on the message heard: the holder's error, its answer, or a reason to read."""
        message = self.message
        assert message is not None
        if message.startswith(ERROR):
            self.call.count(Counts.upstream_error())
            raise error_from_message(message)
        if not message.startswith(OK):
            return State.READ  # "abandoned": read, then try for the lock
        woke_at = self.woke_at = self._subscribed().delivered_at
        delivered = store.record_of(message) if woke_at is not None else None
        if woke_at is None or delivered is None:
            return State.READ  # a bare "ok": the entry is written, read it
        # The writer sent the answer itself: count this read with the wake-up (one round trip)
        # and answer, without reading the entry back.
        wake = Counts.wake((woke_at - delivered.stored_at) * 1000)
        counted = self.call.lookup(WAIT, read_entry=False, counts=wake)
        return _Done(self.call.answer(WAIT, replace(counted, entry=delivered)))

    def hold(self) -> _Done[R]:
        """We hold the lock: re-check, ask the upstream once, store, wake the waiters."""
        self._unsubscribe()
        again = self.call.lookup(WAIT)
        if again.entry is not None:  # written between our lookup and our lock
            self._release(OK)
            return _Done(self.call.answer(WAIT, again))
        return _Done(self.call.answer_from_upstream(MISS, MISS, self.names, self.token))

    def fall_through(self) -> _Done[R]:
        """wait_max passed: ask the upstream ourselves, and store what we get."""
        self._unsubscribe()
        return _Done(self.call.answer_from_upstream(MISS, FALLTHROUGH, self.names))

    # Helpers of the states.

    def _acquire(self) -> bool:
        return locks.acquire(self.names.lock, token=self.token, ttl_seconds=self.call.policy.lock_ttl)

    def _release(self, message: bytes) -> None:
        release(self.names, self.token, message, workload=self.call.slug)

    def _hear(self, message: bytes) -> State:
        self.message = message
        return State.HEARD

    def _subscribed(self) -> locks.Subscription:
        assert self.subscription is not None, "a waiting state outside the subscription"
        return self.subscription

    def _unsubscribe(self) -> None:
        if self.subscription is not None:
            self.subscription.close()
            self.subscription = None


def fill(call: Caller[R], names: Names) -> R:
    """A miss: become the one caller that asks the upstream, or wait for its answer."""
    return Stampede(call, names).run()
