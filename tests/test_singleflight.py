"""In-process single flight: concurrent callers of one key share one execution."""

from __future__ import annotations

import threading
import time

import pytest

from respcache.singleflight import SingleFlight


def test_concurrent_callers_of_one_key_share_one_call_and_its_result() -> None:
    flights: SingleFlight[str] = SingleFlight()
    calls: list[int] = []
    gate = threading.Event()

    def work() -> str:
        calls.append(1)
        gate.wait(5)
        return "answer"

    results: list[tuple[str, bool]] = []
    threads = [threading.Thread(target=lambda: results.append(flights.do("k", work))) for _ in range(20)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 5
    while flights.in_flight("k") < 20 and time.monotonic() < deadline:
        time.sleep(0.005)
    assert flights.in_flight("k") == 20
    gate.set()
    for t in threads:
        t.join(5)
    assert calls == [1]
    assert sorted(results) == [("answer", False)] + [("answer", True)] * 19
    assert flights.in_flight("k") == 0


def test_the_leaders_exception_reaches_every_follower_and_the_key_is_freed() -> None:
    flights: SingleFlight[str] = SingleFlight()
    gate = threading.Event()
    errors: list[BaseException] = []

    def fail() -> str:
        gate.wait(5)
        raise RuntimeError("upstream said 429")

    def call() -> None:
        try:
            flights.do("k", fail)
        except RuntimeError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=call) for _ in range(5)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 5
    while flights.in_flight("k") < 5 and time.monotonic() < deadline:
        time.sleep(0.005)
    gate.set()
    for t in threads:
        t.join(5)
    assert len(errors) == 5 and len({id(e) for e in errors}) == 1
    assert flights.do("k", lambda: "again") == ("again", False)


def test_different_keys_do_not_wait_for_each_other() -> None:
    flights: SingleFlight[int] = SingleFlight()
    with pytest.raises(ZeroDivisionError):
        flights.do("a", lambda: 1 // 0)
    assert flights.do("b", lambda: 2) == (2, False)
