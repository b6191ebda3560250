"""What a scenario found (``Result``) and the table ``make faults`` prints."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from faults.callers import Outcome


@dataclass
class Result:
    """One fault scenario: what was done, what the contract expects, and what happened."""

    id: str
    scenario: str
    expects: str
    outcomes: list[Outcome] = field(default_factory=list)
    upstream: int = 0
    worst: float | None = None  # the latency the verdict judges (default: the slowest call)
    ok: bool = False
    observed: str = ""
    #: Named measurements and checks, for the tests (tests/test_faults.py) to assert on.
    facts: dict[str, Any] = field(default_factory=dict)

    @property
    def calls(self) -> int:
        return len(self.outcomes)

    @property
    def failed(self) -> int:
        """Calls answered with a non-2xx status, or not answered at all (connection lost)."""
        return sum(not o.ok for o in self.outcomes)

    @property
    def statuses(self) -> Counter[str]:
        """``200 hit``, ``429 miss``, ``lost`` …: how the calls ended."""
        return Counter(f"{o.status} {o.cache or '-'}" if o.status is not None else "lost" for o in self.outcomes)

    @property
    def slowest(self) -> float:
        return max((o.seconds for o in self.outcomes), default=0.0)


def describe(statuses: Counter[str]) -> str:
    return ", ".join(f"{n}× {what}" for what, n in sorted(statuses.items(), key=lambda kv: -kv[1]))


def n_upstream(count: int) -> str:
    return f"{count} upstream call" + ("" if count == 1 else "s")


def failures(outcomes: Iterable[Outcome]) -> str:
    """The distinct errors of the calls that failed, for the notes: "" when none did."""
    errors = Counter(f"{o.status or 'lost'}: {o.error[:120]}" for o in outcomes if not o.ok)
    return "; ".join(f"{n}× {error}" for error, n in errors.most_common(3))


def render(results: Iterable[Result], header: list[str]) -> str:
    results = sorted(results, key=lambda r: r.id)
    rows = [("", "scenario", "calls", "non-2xx", "upstream", "worst", "what must hold", "verdict")]
    for r in results:
        worst = r.slowest if r.worst is None else r.worst
        rows.append(
            (
                r.id,
                r.scenario,
                str(r.calls),
                str(r.failed),
                str(r.upstream),
                f"{worst:.2f} s",
                r.expects,
                "pass" if r.ok else "FAIL",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    numeric = {2, 3, 4, 5}
    lines = list(header)
    for n, row in enumerate(rows):
        cells = [
            cell.rjust(w) if i in numeric else cell.ljust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    lines.append("")
    lines.append("what happened:")
    for r in results:
        lines.append(f"  {r.id}. {r.observed}")
        if r.failed:
            lines.append(f"  {' ' * len(r.id)}  non-2xx: {failures(r.outcomes)}")
    passed = sum(r.ok for r in results)
    lines.append("")
    lines.append(f"promises kept: {passed}/{len(results)}")
    return "\n".join(lines)
