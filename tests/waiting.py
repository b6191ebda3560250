"""Waiting for what other processes do: counters reach Redis within a flush interval."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

#: Longer than a server's COUNTER_FLUSH_SECONDS (1 s) with room for a loaded machine.
FLUSH_WAIT_SECONDS = 10.0


def eventually(read: Callable[[], T], expected: T, *, timeout: float = FLUSH_WAIT_SECONDS) -> T:
    """``read()`` until it returns ``expected`` (within ``timeout``); fails with the last value.
    For numbers that servers flush every second (tally.py)."""
    deadline = time.monotonic() + timeout
    while True:
        found = read()
        if found == expected or time.monotonic() > deadline:
            assert found == expected, f"still {found!r} after {timeout} s, expected {expected!r}"
            return found
        time.sleep(0.1)
