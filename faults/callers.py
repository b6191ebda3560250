"""Callers as a service's clients are: the official anthropic SDK, no retries, one connection each.

Every call is tagged (``x-faults-call``, which gunicorn's access log prints next to the worker's
pid, see faults/rig.py) and becomes an ``Outcome``: status, X-Respcache, when and how long. A
lost connection is an outcome too (status None), never an exception.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType

import anthropic

MODEL = "claude-faults-1"
_tags = itertools.count(1)


@dataclass(frozen=True)
class Outcome:
    tag: str
    status: int | None  # None: the connection was lost or timed out
    cache: str  # X-Respcache ("" when absent)
    started: float  # time.time() when sent
    seconds: float
    text: str = ""  # the answer's first text block
    retry_after: str = ""
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    @property
    def ended(self) -> float:
        return self.started + self.seconds


def new_tag() -> str:
    return f"c{next(_tags)}"


class Caller:
    """One SDK client (one keep-alive connection) for ``/w/<slug>`` with ``key``."""

    def __init__(self, base_url: str, key: str, *, timeout: float = 60.0) -> None:
        self.client = anthropic.Anthropic(base_url=base_url, api_key=key, max_retries=0, timeout=timeout)

    def ask(self, prompt: str, tag: str = "") -> Outcome:
        tag = tag or new_tag()
        started, clock = time.time(), time.monotonic()
        try:
            raw = self.client.messages.with_raw_response.create(
                model=MODEL,
                max_tokens=64,
                messages=[{"role": "user", "content": prompt}],
                extra_headers={"x-faults-call": tag},
            )
        except anthropic.APIStatusError as exc:
            headers = exc.response.headers
            return Outcome(
                tag,
                exc.status_code,
                headers.get("x-respcache", ""),
                started,
                time.monotonic() - clock,
                retry_after=headers.get("retry-after", ""),
                error=str(exc)[:200],
            )
        except anthropic.APIConnectionError as exc:
            return Outcome(tag, None, "", started, time.monotonic() - clock, error=f"{type(exc).__name__}: {exc}")
        message = raw.parse()
        text = next((b.text for b in message.content if b.type == "text"), "")
        return Outcome(
            tag, raw.status_code, raw.headers.get("x-respcache", ""), started, time.monotonic() - clock, text
        )

    def close(self) -> None:
        self.client.close()


class Crowd:
    """Callers sent in the background, each on its own connection; ``join()`` collects them."""

    def __init__(self, make: Callable[[], Caller]) -> None:
        self.make = make
        self.outcomes: list[Outcome] = []
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    def send(self, prompt: str, count: int) -> None:
        """Send ``count`` identical calls at once (their clients are made first, so that they
        leave together)."""
        callers = [self.make() for _ in range(count)]
        gate = threading.Barrier(count + 1)
        for caller in callers:
            thread = threading.Thread(target=self._run, args=(caller, prompt, gate), daemon=True)
            thread.start()
            self._threads.append(thread)
        gate.wait()

    def _run(self, caller: Caller, prompt: str, gate: threading.Barrier) -> None:
        gate.wait()
        try:
            outcome = caller.ask(prompt)
        finally:
            caller.close()
        with self._lock:
            self.outcomes.append(outcome)

    def join(self, timeout: float) -> list[Outcome]:
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        with self._lock:
            return list(self.outcomes)


def stampede(make: Callable[[], Caller], prompt: str, count: int, timeout: float = 60.0) -> list[Outcome]:
    crowd = Crowd(make)
    crowd.send(prompt, count)
    return crowd.join(timeout)


@dataclass
class Load:
    """``threads`` callers asking ``prompts`` in turn, back to back, until the block ends."""

    make: Callable[[], Caller]
    prompts: list[str]
    threads: int = 6
    outcomes: list[Outcome] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._workers: list[threading.Thread] = []

    def __enter__(self) -> Load:
        for n in range(self.threads):
            thread = threading.Thread(target=self._loop, args=(n,), daemon=True)
            thread.start()
            self._workers.append(thread)
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._stop.set()
        for thread in self._workers:
            thread.join(30)

    def _loop(self, n: int) -> None:
        prompts = list(self.prompts)
        caller = self.make()
        try:
            for i in itertools.count(n):
                if self._stop.is_set():
                    return
                outcome = caller.ask(prompts[i % len(prompts)])
                with self._lock:
                    self.outcomes.append(outcome)
                if not outcome.ok:  # a lost connection: start a fresh one
                    caller.close()
                    caller = self.make()
        finally:
            caller.close()

    def snapshot(self) -> list[Outcome]:
        with self._lock:
            return list(self.outcomes)

    def wait_for(self, wanted: Callable[[Outcome], bool], timeout: float) -> float | None:
        """Block until an outcome ``wanted`` arrives; when it ended (time.time()), or None."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [o.ended for o in self.snapshot() if wanted(o)]
            if found:
                return min(found)
            time.sleep(0.05)
        return None
