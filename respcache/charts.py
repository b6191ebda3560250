"""Server-side SVG charts for the admin: stacked bars and lines over time. Pure; no JS, no network.

Each function takes plain numbers and labels and returns one ``<svg>`` element as a string, ready
to put in a template (the caller marks it safe; every text in it is escaped here). The charts
scale to their container (``viewBox``), carry a ``<title>`` for screen readers and a ``<title>``
per bar or point for hover tooltips, and name their series in ``data-series`` attributes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from html import escape
from itertools import count

WIDTH, HEIGHT = 480, 210
LEFT, RIGHT, TOP, BOTTOM = 50, 10, 30, 26
X_LABELS = 6
_ids = count(1)


@dataclass(frozen=True)
class Series:
    """One named series: ``name`` keys the values, ``label`` is shown, ``color`` any CSS color."""

    name: str
    label: object  # a str, or a lazy translation: rendered with str()
    color: str


def nice_ticks(top: float, n: int = 4) -> list[float]:
    """0 and up to ``n`` round steps (1, 2, 2.5 or 5 × 10^k) that reach at least ``top``."""
    if top <= 0 or not math.isfinite(top):
        return [0.0, 1.0]
    raw = top / n
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    ticks = [0.0]
    while ticks[-1] < top:
        ticks.append(round(ticks[-1] + step, 10))
    return ticks


def format_number(value: float) -> str:
    """Short axis labels: 950, 1.2k, 3.4M."""
    size = abs(value)
    for factor, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if size >= factor:
            return f"{value / factor:.3g}{suffix}"
    return f"{value:.3g}" if value != int(value) else str(int(value))


def format_percent(value: float) -> str:
    return f"{value * 100:.0f}%"


class _Frame:
    """The plot area of one chart, its coordinates and the common parts (grid, axes, legend)."""

    def __init__(self, n: int, y_top: float, width: int, height: int) -> None:
        self.n = max(n, 1)
        self.y_top = y_top or 1.0
        self.width, self.height = width, height
        self.plot_w = width - LEFT - RIGHT
        self.plot_h = height - TOP - BOTTOM
        self.slot = self.plot_w / self.n

    def x(self, i: float) -> float:
        return LEFT + i * self.slot

    def y(self, value: float) -> float:
        return TOP + self.plot_h * (1 - min(value, self.y_top) / self.y_top)

    def grid(self, ticks: Sequence[float], fmt: Callable[[float], str]) -> list[str]:
        parts = ['<g class="rc-grid">']
        for tick in ticks:
            y = self.y(tick)
            parts.append(
                f'<line x1="{LEFT}" x2="{LEFT + self.plot_w}" y1="{y:.1f}" y2="{y:.1f}" '
                'stroke="#ddd" stroke-width="1"/>'
                f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{escape(fmt(tick))}</text>'
            )
        parts.append("</g>")
        return parts

    def x_labels(self, labels: Sequence[str], centered: bool) -> list[str]:
        parts = ['<g class="rc-x">']
        if labels:
            step = max(1, math.ceil(len(labels) / X_LABELS))
            for i in range(0, len(labels), step):
                x = self.x(i + (0.5 if centered else 0))
                parts.append(
                    f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{TOP + self.plot_h}" '
                    f'y2="{TOP + self.plot_h + 4}" stroke="#999"/>'
                    f'<text x="{x:.1f}" y="{self.height - 8}" text-anchor="middle">'
                    f"{escape(labels[i])}</text>"
                )
        parts.append(
            f'<line x1="{LEFT}" x2="{LEFT + self.plot_w}" y1="{TOP + self.plot_h}" '
            f'y2="{TOP + self.plot_h}" stroke="#999"/></g>'
        )
        return parts


def _legend(series: Sequence[Series]) -> list[str]:
    parts = ['<g class="rc-legend">']
    x = LEFT
    for s in series:
        parts.append(
            f'<rect x="{x}" y="8" width="10" height="10" fill="{escape(s.color)}"/>'
            f'<text x="{x + 14}" y="17">{escape(str(s.label))}</text>'
        )
        x += 22 + 7 * len(str(s.label))
    parts.append("</g>")
    return parts


def _open(title: str, width: int, height: int, kind: str) -> tuple[list[str], str]:
    title_id = f"rc-chart-{next(_ids)}"
    return [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="rc-chart rc-chart-{kind}" '
        f'viewBox="0 0 {width} {height}" width="100%" role="img" aria-labelledby="{title_id}" '
        'font-family="system-ui, sans-serif" font-size="11" fill="#333">'
        f'<title id="{title_id}">{escape(title)}</title>'
    ], title_id


def _tip(label: str, series: Series, value: str) -> str:
    """The hover tooltip of one bar or point."""
    return f"<title>{escape(label)}: {escape(str(series.label))} {escape(value)}</title>"


def _empty_note(frame: _Frame, message: str) -> str:
    return (
        f'<text class="rc-empty" x="{LEFT + frame.plot_w / 2:.1f}" '
        f'y="{TOP + frame.plot_h / 2:.1f}" '
        f'text-anchor="middle" fill="#888">{escape(message)}</text>'
    )


def stacked_bars(
    labels: Sequence[str],
    values: Sequence[Mapping[str, float]],
    series: Sequence[Series],
    *,
    title: str,
    y_format: Callable[[float], str] = format_number,
    empty: str = "No data in this window",
    width: int = WIDTH,
    height: int = HEIGHT,
) -> str:
    """One bar per slot (``labels[i]``, ``values[i]``), each series stacked in order."""
    totals = [sum(max(0.0, float(v.get(s.name, 0) or 0)) for s in series) for v in values]
    ticks = nice_ticks(max(totals, default=0))
    frame = _Frame(len(values), ticks[-1], width, height)
    parts, _ = _open(title, width, height, "bars")
    parts += frame.grid(ticks, y_format)
    gap = min(2.0, frame.slot * 0.2)
    below = [0.0] * len(values)  # the stack's height so far, per slot
    for s in series:
        parts.append(f'<g class="rc-series" data-series="{escape(s.name)}" fill="{escape(s.color)}">')
        for i, v in enumerate(values):
            amount = max(0.0, float(v.get(s.name, 0) or 0))
            if not amount:
                continue
            y0, y1 = frame.y(below[i]), frame.y(below[i] + amount)
            below[i] += amount
            parts.append(
                f'<rect x="{frame.x(i) + gap / 2:.1f}" y="{y1:.1f}" width="{frame.slot - gap:.1f}" '
                f'height="{y0 - y1:.2f}" data-value="{amount:g}">'
                f"{_tip(labels[i], s, y_format(amount))}</rect>"
            )
        parts.append("</g>")
    if not any(totals):
        parts.append(_empty_note(frame, empty))
    parts += frame.x_labels(labels, centered=True)
    parts += _legend(series)
    parts.append("</svg>")
    return "".join(parts)


def lines(
    labels: Sequence[str],
    values: Sequence[Mapping[str, float | None]],
    series: Sequence[Series],
    *,
    title: str,
    y_max: float | None = None,
    y_format: Callable[[float], str] = format_number,
    empty: str = "No data in this window",
    width: int = WIDTH,
    height: int = HEIGHT,
) -> str:
    """One line per series through the slots' centres; a None value is a gap in the line.

    ``y_max`` fixes the scale (1.0 for rates); otherwise it fits the data.
    """
    present = [float(x) for v in values for s in series if (x := v.get(s.name)) is not None]
    ticks = nice_ticks(y_max if y_max is not None else max(present, default=0))
    frame = _Frame(len(values), ticks[-1], width, height)
    parts, _ = _open(title, width, height, "lines")
    parts += frame.grid(ticks, y_format)
    for s in series:
        parts.append(f'<g class="rc-series" data-series="{escape(s.name)}">')
        segments: list[list[tuple[float, float, int]]] = [[]]
        for i, v in enumerate(values):
            value = v.get(s.name)
            if value is None:
                if segments[-1]:
                    segments.append([])
                continue
            segments[-1].append((frame.x(i + 0.5), frame.y(float(value)), i))
        for segment in segments:
            if len(segment) > 1:
                path = " ".join(f"{'M' if j == 0 else 'L'}{x:.1f},{y:.1f}" for j, (x, y, _) in enumerate(segment))
                parts.append(f'<path d="{path}" fill="none" stroke="{escape(s.color)}" stroke-width="2"/>')
            for x, y, i in segment:
                value = float(values[i][s.name])  # type: ignore[arg-type]
                parts.append(
                    f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{2.5 if len(segment) > 1 else 3.5}" '
                    f'fill="{escape(s.color)}" data-value="{value:g}">'
                    f"{_tip(labels[i], s, y_format(value))}</circle>"
                )
        parts.append("</g>")
    if not present:
        parts.append(_empty_note(frame, empty))
    parts += frame.x_labels(labels, centered=True)
    parts += _legend(series)
    parts.append("</svg>")
    return "".join(parts)
