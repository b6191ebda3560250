"""A miss under the key's lock: hold, wait, take over or fall through, as a small state machine.

The first caller to miss a key takes its lock and asks the upstream once, renewing the lock
while it asks (locks.Renewal); the others subscribe to the key's channel and wait for the
holder's word (locks.py lists the messages: ``ok``, ``ok<record>``, ``error:<json>``,
``abandoned``), looking at the key every ``locks.liveness_interval(lock_ttl)`` in case the holder
died, for at most the workload's ``wait_max``.

States and transitions (each state is one method of ``Stampede``, named after it)::

    START        lock taken ...................................... HOLD
                 lock held by another: subscribe ................. READ
    READ         the entry is there .............................. answer ``wait``
                 (subscribed first, then read: no write is missed)
                 no entry ........................................ POLL
    POLL         a message already arrived ....................... HEARD
                 none ............................................ CHECK
    CHECK        one atomic look at the key (locks.take_over):
                 the entry is there .............................. READ
                 the holder holds (it renews while it lives) ..... PARK
                 the holder failed (its failure record) .......... HEARD (its error)
                 the lock was free: now ours ..................... HOLD
    PARK         a message ....................................... HEARD
                 a liveness interval passed ...................... CHECK
                 wait_max passed ................................. FALL_THROUGH
    HEARD        ``error:<json>`` ................................ raise the holder's error (or
                                                                   its budget refusal)
                 ``ok<record>`` .................................. answer ``wait`` from it
                 ``ok`` (no record), RESUBSCRIBED (the Pub/Sub
                 connection was re-opened: re-check) ............. READ
                 ``abandoned`` ................................... CHECK
    HOLD         the holder's last word (its error, or an answer it
                 could not store) just arrived: pass it on ....... HEARD
                 (leaves the channel)
                 the entry is there now: release (ok) ............ answer ``wait``
                 otherwise (the budget allowing): ask the upstream once (renewing the
                 lock), store, release and wake the waiters ...... answer ``miss``
    FALL_THROUGH (leaves the channel first)
                 ask the upstream, store without the lock ........ answer ``miss``, counted
                                                                   ``fallthrough``

No state guesses at timing: a dead holder is noticed because its lock expired (it stopped
renewing), a failed one because it left its failure before letting the lock go. A waiter woken
by an ``ok`` counts how long after the write it woke (the wake-up histogram). A Redis error
(``CacheUnavailable``) in any state leaves the machine: the call's guard answers from the
upstream (guard.CALL). To add a state: a ``State`` member, a method returning the next state
(or ``_Done``), its line in ``Stampede.__init__``'s table, and its lines above.
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
from respcache.exceptions import BudgetExceeded, UpstreamError
from respcache.selectors import Policy
from respcache.services import guard
from respcache.services.counting import FALLTHROUGH, MISS, NO_COUNTS, WAIT, Counts

#: The holder's words on the key's channel (``ok<record>`` is store.ok_message's).
OK, ABANDONED, ERROR = b"ok", b"abandoned", b"error:"


@dataclass(frozen=True)
class Names:
    """One key's Redis names: its entry, its meta (accounting) hash, its lock, its channel, and
    where its holder's failure waits for waiters that missed the message."""

    entry: str
    meta: str
    lock: str
    channel: str
    failure: str
    #: The entry's notes (request fields and summary), written with it.
    notes: str = ""

    @classmethod
    def build(cls, slug: str, version: int, fingerprint: str, upstream: str | None = None) -> Names:
        """The names in ``upstream``'s key space (the configured upstream's by default)."""
        space = upstream or store.key_space()
        raw = keys.entry_key(workload=slug, version=version, fingerprint=fingerprint, upstream=space)
        return cls(
            entry=store.full_key(raw),
            meta=store.full_key(keys.meta_key(raw)),
            notes=store.full_key(keys.notes_key(raw)),
            lock=store.full_key(keys.lock_key(raw)),
            channel=store.full_key(keys.channel_name(raw)),
            failure=store.full_key(keys.failure_key(raw)),
        )


def error_message(exc: UpstreamError | BudgetExceeded) -> bytes:
    """The holder's upstream error, or its budget refusal, as its waiters receive it
    (``error:<json>``): a waiter would have gone upstream itself, so it is refused too."""
    data = {
        "status": exc.status_code,
        "type": exc.error_type,
        "message": exc.message,
        "body": base64.b64encode(exc.body()).decode(),
        "headers": exc.headers(),
    }
    if isinstance(exc, BudgetExceeded):
        data["budget_retry_after"] = exc.retry_after
    return ERROR + orjson.dumps(data)


def error_from_message(message: bytes) -> UpstreamError | BudgetExceeded:
    data = orjson.loads(message[len(ERROR) :])
    if "budget_retry_after" in data:
        return BudgetExceeded(data["message"], retry_after=int(data["budget_retry_after"]))
    return UpstreamError(
        data["message"],
        status_code=int(data["status"]),
        error_type=data["type"],
        body=base64.b64decode(data["body"]),
        headers=data.get("headers") or {},
    )


def release(names: Names, token: str, message: bytes, *, workload: str) -> None:
    """Release ``token``'s lock and tell the waiters ``message`` (an error is also left as the
    key's failure record, for waiters that were between messages)."""
    failure = names.failure if message.startswith(ERROR) else ""
    guard.fail_open(
        guard.RELEASE,
        lambda: locks.release(names.lock, token=token, channel=names.channel, message=message, failure=failure),
        guard.nothing,
        workload=workload,
    )


def renewal(names: Names | None, token: str, lock_ttl: float) -> locks.Renewal | None:
    """Keep ``token``'s lock alive while its holder works (None when there is no lock)."""
    if not token or names is None:
        return None
    return locks.Renewal(names.lock, token=token, ttl_seconds=lock_ttl)


@contextmanager
def holding(names: Names | None, token: str, *, lock_ttl: float, workload: str) -> Iterator[None]:
    """While the body runs, renew ``token``'s lock; if it fails, release the lock at once and
    tell the waiters why (the upstream's error, or ``abandoned``)."""
    renewing = renewal(names, token, lock_ttl)
    try:
        with released_on_failure(names, token, workload=workload):
            yield
    finally:
        if renewing is not None:
            renewing.stop()


@contextmanager
def released_on_failure(names: Names | None, token: str, *, workload: str) -> Iterator[None]:
    """If the body fails while ``token`` holds the lock, release it and tell the waiters why."""
    try:
        yield
    except (UpstreamError, BudgetExceeded) as exc:
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
    CHECK = "check"
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
            State.CHECK: self.check,
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
        return State.CHECK if message is None else self._hear(message)

    def check(self) -> State:
        """One atomic look at the key: answer there, holder alive, holder failed, or lock free
        (then ours)."""
        names, policy = self.names, self.call.policy
        found, failure = locks.take_over(
            entry=names.entry, lock=names.lock, failure=names.failure, token=self.token, ttl_seconds=policy.lock_ttl
        )
        if found == locks.ENTRY:
            return State.READ
        if found == locks.HELD:
            return State.PARK
        if found == locks.FAILED:
            return self._hear(failure)
        return State.HOLD

    def park(self) -> State:
        """Block until a message arrives, the next look at the lock is due, or wait_max passes."""
        monotonic = self.call.monotonic
        due = min(self.deadline, monotonic() + locks.liveness_interval(self.call.policy.lock_ttl))
        message = self._subscribed().wait(due, clock=monotonic)
        if message is not None:
            return self._hear(message)
        return State.FALL_THROUGH if monotonic() >= self.deadline else State.CHECK

    def heard(self) -> State | _Done[R]:
        """Act on the message heard: the holder's error, its answer, or a reason to look again."""
        message = self.message
        assert message is not None
        if message.startswith(ERROR):
            error = error_from_message(message)
            refused = isinstance(error, BudgetExceeded)
            self.call.count(Counts.budget_refused() if refused else Counts.upstream_error())
            raise error
        if message == ABANDONED:
            return State.CHECK  # the holder stopped without an answer: take over
        if not message.startswith(OK):
            return State.READ  # RESUBSCRIBED: what was published meanwhile is lost; re-check
        woke_at = self.woke_at = self._subscribed().delivered_at
        delivered = store.record_of(message) if woke_at is not None else None
        if woke_at is None or delivered is None:
            return State.READ  # a bare "ok": the entry is written, read it
        # The writer sent the answer itself: count this read with the wake-up (one round trip)
        # and answer, without reading the entry back. If Redis cannot count it (full, gone),
        # the answer in hand is still served; the count is kept for later.
        wake = Counts.wake((woke_at - delivered.stored_at) * 1000)
        counted = guard.fail_open(
            guard.COUNT,
            lambda: self.call.lookup(WAIT, read_entry=False, counts=wake),
            lambda _: self._count_later(wake),
            workload=self.call.slug,
        )
        return _Done(self.call.answer(WAIT, replace(counted, entry=delivered)))

    def hold(self) -> State | _Done[R]:
        """We hold the lock: re-check, ask the upstream once, store, wake the waiters."""
        heard = self.subscription.poll() if self.subscription is not None else None
        if heard is not None and (heard.startswith(ERROR) or store.record_of(heard) is not None):
            # The lock was free because its holder just ended, with its error or with an answer
            # it could not store: pass the word on to the other waiters, and act on it.
            self._release(heard)
            return self._hear(heard)
        self._unsubscribe()
        again = self.call.lookup(WAIT)
        if again.entry is not None:  # written between our lookup and our lock
            self._release(OK)
            return _Done(self.call.answer(WAIT, again))
        return _Done(self.call.answer_from_upstream(MISS, MISS, self.names, self.token))

    def _count_later(self, counts: Counts) -> store.Lookup:
        self.call.count(Counts.outcome(WAIT) + counts + Counts.cache_error())
        return store.Lookup(version=self.call.policy.key_version, entry=None)

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
