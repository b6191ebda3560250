"""What one call counts: the outcome words, and ``Counts``, built by named constructors.

A call site says what happened (``Counts.outcome(MISS) + Counts.upstream_call(ms)``) instead of
spelling counter field names in keyword arguments. The field names themselves are stats' (its
module docstring lists them); ``stats.count(slug, now, **counts)`` takes a Counts as it is, since
a Counts is a read-only mapping of field name to amount.

The outcome words are both what ``X-Respcache`` says (``hit``, ``miss``, ``wait``, ``bypass``,
``refresh``, ``shadow``) and what is counted; ``fallthrough`` is only counted (its header says ``miss``).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from respcache import stats

#: What ``X-Respcache`` says, and the outcome counted for it.
HIT, MISS, WAIT, BYPASS, REFRESH, SHADOW = "hit", "miss", "wait", "bypass", "refresh", "shadow"
#: Counted outcome of a waiter that gave up after wait_max and called the upstream itself.
FALLTHROUGH = "fallthrough"


class Counts(Mapping[str, int]):
    """Counter fields and the amounts to add to them; ``a + b`` adds two sets of counts.

    Immutable: a constructor or ``+`` makes a new one. A field given as 0 is kept (stats and the
    store scripts skip zeros where it matters), so a Counts says exactly what was built.
    """

    __slots__ = ("_fields",)

    def __init__(self, fields: Mapping[str, int] | None = None) -> None:
        self._fields: dict[str, int] = dict(fields or {})

    # The named constructors: one per thing a call counts.

    @classmethod
    def outcome(cls, word: str) -> Counts:
        """One call that ended as ``word`` (one of stats.OUTCOMES)."""
        if word not in stats.OUTCOMES:
            raise ValueError(f"unknown outcome {word!r}")
        return cls({word: 1})

    @classmethod
    def upstream_call(cls, latency_ms: float | None = None) -> Counts:
        """One upstream call and its time; None when its time is counted later (a stream's,
        when it ends: ``upstream_time``)."""
        if latency_ms is None:
            return cls({"upstream_calls": 1})
        return cls({"upstream_calls": 1, "upstream_ms": int(round(latency_ms))})

    @classmethod
    def upstream_time(cls, latency_ms: float) -> Counts:
        """The time of an upstream call already counted (a stream that has ended)."""
        return cls({"upstream_ms": int(round(latency_ms))})

    @classmethod
    def saved(cls, input_tokens: int, output_tokens: int) -> Counts:
        """Tokens a read (hit or wait) did not spend: the stored answer's usage."""
        return cls({"saved_in": input_tokens, "saved_out": output_tokens})

    @classmethod
    def written(cls) -> Counts:
        """An entry stored."""
        return cls({"written": 1})

    @classmethod
    def upstream_error(cls) -> Counts:
        """The upstream answered with an error (or the holder's error was handed to a waiter)."""
        return cls({"upstream_error": 1})

    @classmethod
    def budget_refused(cls) -> Counts:
        """The workload's budget refused a call that would have gone upstream."""
        return cls({"budget_refused": 1})

    @classmethod
    def cache_error(cls) -> Counts:
        """Redis failed the call: it was served without the cache, or its answer not stored."""
        return cls({"cache_error": 1})

    @classmethod
    def miss_reason(cls, reason: str) -> Counts:
        """One miss explained as ``reason`` (stats.MISS_REASONS)."""
        return cls({stats.miss_reason_field(reason): 1})

    @classmethod
    def wake(cls, milliseconds: float) -> Counts:
        """One waiter woken ``milliseconds`` after the answer was written (the wake-up histogram)."""
        return cls(stats.wake_fields(milliseconds))

    @classmethod
    def shadowed(cls, *, saved_in: int, saved_out: int, agree: bool) -> Counts:
        """A shadow call that would have hit: the tokens that hit would have saved, and whether
        the fresh answer equalled the stored one."""
        return cls({"would_hit": 1, "would_save_in": saved_in, "would_save_out": saved_out, "agree": int(agree)})

    # Mapping, so that ``**counts`` and ``dict(counts)`` just work.

    def __getitem__(self, name: str) -> int:
        return self._fields[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._fields)

    def __len__(self) -> int:
        return len(self._fields)

    def __add__(self, other: Mapping[str, int]) -> Counts:
        added = dict(self._fields)
        for name, value in other.items():
            added[name] = added.get(name, 0) + value
        return Counts(added)

    def __repr__(self) -> str:
        return f"Counts({self._fields!r})"


#: Nothing to count.
NO_COUNTS = Counts()
