"""The bench's one table: each row a measurement, its same-run baseline, the ratio, the target."""

from __future__ import annotations

import math
import os
import platform
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile (``pct`` in 0..100) of ``values``; NaN when there are none."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


def ratio(value: float | None, baseline: float | None) -> float | None:
    if value is None or baseline is None or baseline == 0 or math.isnan(value) or math.isnan(baseline):
        return None
    return value / baseline


@dataclass
class Row:
    """One line of the table. ``ratio`` is value / baseline; ``ok`` is None without a target."""

    measure: str
    value: float
    unit: str
    baseline: float | None = None
    baseline_name: str = ""
    ratio: float | None = None
    redis_get: float | None = None
    redis_get_ratio: float | None = None
    target: str = ""
    ok: bool | None = None

    @classmethod
    def compare(
        cls,
        measure: str,
        value: float,
        unit: str,
        baseline: float | None,
        baseline_name: str,
        **extra: Any,
    ) -> Row:
        return cls(measure, value, unit, baseline, baseline_name, ratio(value, baseline), **extra)


def fmt_value(value: float | None, unit: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if unit == "s":
        ms = value * 1000
        return f"{ms:.3f} ms" if ms < 1 else f"{ms:.2f} ms" if ms < 100 else f"{ms:.0f} ms"
    if unit == "req/s":
        return f"{value:,.0f}/s"
    if unit == "MB/s":
        return f"{value:,.1f} MB/s"
    if unit == "bytes":
        return f"{value:,.0f} B"
    if unit == "us":
        return f"{value:.1f} µs" if value < 100 else f"{value:,.0f} µs"
    if unit == "share":
        return f"{value:.0%}"
    if unit == "count":
        return f"{value:g}" if float(value).is_integer() else f"{value:.2f}"
    return f"{value:g} {unit}".strip()


def fmt_ratio(value: float | None) -> str:
    if value is None:
        return ""
    return f"{value:.2f}×" if value < 100 else f"{value:.0f}×"


def mark(ok: bool | None) -> str:
    return "" if ok is None else ("pass" if ok else "MISS")


def render(rows: Sequence[Row], header: Sequence[str] = ()) -> str:
    """The table as fixed-width text (also valid inside a Markdown code block)."""
    columns = ["measure", "value", "baseline", "ratio", "bare Redis GET", "ratio", "target", ""]
    cells = [
        [
            row.measure,
            fmt_value(row.value, row.unit),
            f"{row.baseline_name} {fmt_value(row.baseline, row.unit)}".strip() if row.baseline_name else "",
            fmt_ratio(row.ratio),
            fmt_value(row.redis_get, row.unit) if row.redis_get is not None else "",
            fmt_ratio(row.redis_get_ratio),
            row.target,
            mark(row.ok),
        ]
        for row in rows
    ]
    widths = [max(len(c) for c in column) for column in zip(columns, *cells, strict=True)]
    aligns = ["<", ">", ">", ">", ">", ">", "<", "<"]

    def line(values: Sequence[str]) -> str:
        return "  ".join(f"{v:{a}{w}}" for v, a, w in zip(values, aligns, widths, strict=True)).rstrip()

    out = list(header)
    out.append(line(columns))
    out.append(line(["-" * w for w in widths]))
    out += [line(c) for c in cells]
    passed = sum(1 for r in rows if r.ok)
    targets = sum(1 for r in rows if r.ok is not None)
    out.append(f"targets met: {passed}/{targets}")
    return "\n".join(out)


def machine() -> dict[str, Any]:
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for text in cpuinfo:
                if text.startswith("model name"):
                    model = text.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    memory = ""
    try:
        with open("/proc/meminfo") as meminfo:
            memory = f"{int(meminfo.readline().split()[1]) / 1024 / 1024:.0f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "memory": memory,
        "os": f"{platform.system()} {platform.release()}",
        "python": sys.version.split()[0],
    }


def as_json(rows: Sequence[Row], **meta: Any) -> dict[str, Any]:
    return {**meta, "rows": [asdict(r) | {"mark": mark(r.ok)} for r in rows]}
