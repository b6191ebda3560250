"""Chart geometry for the admin's stats page: stacked bars and lines over time, numbers in and
numbers out. No markup here.

``stacked_bars`` and ``lines`` take plain values and labels and return a :class:`Chart`: every
bar, point, grid line and label already placed in SVG user units. The template
``admin/respcache/workload/_chart.svg.html`` draws a Chart as one ``<svg>`` element, with Django's
autoescaping on every text (titles, labels, tooltips). The drawing scales to its container
(``viewBox``), carries a ``<title>`` for screen readers and one per bar or point for hover
tooltips, and names its series in ``data-series`` attributes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import count

WIDTH, HEIGHT = 480, 210
LEFT, RIGHT, TOP, BOTTOM = 50, 10, 30, 26
X_LABELS = 6
#: Each chart's ``<title>`` needs an id unique in the page (``aria-labelledby`` points at it).
_ids = count(1)


@dataclass(frozen=True)
class Series:
    """One named series: ``name`` keys the values, ``label`` is shown, ``color`` any CSS color."""

    name: str
    label: object  # a str, or a lazy translation: rendered with str()
    color: str


@dataclass(frozen=True)
class Text:
    """A label placed at ``x``, ``y`` (its baseline)."""

    x: float
    y: float
    text: str


@dataclass(frozen=True)
class GridLine:
    """A horizontal line at ``y`` across the plot, labelled with its value on the left."""

    y: float
    label: str

    @property
    def label_y(self) -> float:
        return self.y + 4  # the baseline that centres the digits on the line


@dataclass(frozen=True)
class Mark:
    """A bar (``x``, ``y`` its top left, ``width`` × ``height``) or a point (``x``, ``y`` its
    centre, ``r`` its radius), with its value and its hover text."""

    x: float
    y: float
    value: float
    tip: str
    width: float = 0.0
    height: float = 0.0
    r: float = 0.0


@dataclass(frozen=True)
class Segment:
    """A run of points of one line with no gap; a run of one point is a dot only."""

    points: list[Mark]

    @property
    def drawn(self) -> bool:
        return len(self.points) > 1


@dataclass(frozen=True)
class SeriesMarks:
    """One series as drawn: its bars (bar charts) or its line segments (line charts)."""

    name: str
    label: str
    color: str
    bars: list[Mark] = field(default_factory=list)
    segments: list[Segment] = field(default_factory=list)


@dataclass(frozen=True)
class LegendItem:
    x: int  # the swatch; its label starts 14 units right of it
    label: str
    color: str

    @property
    def text_x(self) -> int:
        return self.x + 14


@dataclass(frozen=True)
class Chart:
    """One chart, fully placed. ``kind`` is ``bars`` or ``lines``."""

    kind: str
    id: str
    title: str
    width: int
    height: int
    plot_left: int
    plot_right: int
    plot_bottom: int  # the x axis
    grid: list[GridLine]
    x_labels: list[Text]  # one tick mark on the axis per label
    series: list[SeriesMarks]
    legend: list[LegendItem]
    empty: Text | None  # the "no data" note, when nothing is drawn

    @property
    def grid_label_x(self) -> int:
        return self.plot_left - 6


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
    """The plot area of one chart and its coordinates; builds the parts every chart has."""

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

    def chart(
        self,
        kind: str,
        *,
        title: str,
        labels: Sequence[str],
        ticks: Sequence[float],
        y_format: Callable[[float], str],
        series: Sequence[Series],
        marks: list[SeriesMarks],
        empty: str | None,
    ) -> Chart:
        """The whole chart around the series' marks; ``empty`` is the note shown, if any."""
        grid = [GridLine(self.y(tick), y_format(tick)) for tick in ticks]
        step = max(1, math.ceil(len(labels) / X_LABELS))  # at most about X_LABELS time labels
        x_labels = [Text(self.x(i + 0.5), self.height - 8, labels[i]) for i in range(0, len(labels), step)]
        return Chart(
            kind=kind,
            id=f"rc-chart-{next(_ids)}",
            title=title,
            width=self.width,
            height=self.height,
            plot_left=LEFT,
            plot_right=LEFT + self.plot_w,
            plot_bottom=TOP + self.plot_h,
            grid=grid,
            x_labels=x_labels,
            series=marks,
            legend=_legend(series),
            empty=None if empty is None else Text(LEFT + self.plot_w / 2, TOP + self.plot_h / 2, empty),
        )


def _legend(series: Sequence[Series]) -> list[LegendItem]:
    items, x = [], LEFT
    for s in series:
        label = str(s.label)
        items.append(LegendItem(x, label, s.color))
        x += 22 + 7 * len(label)  # about 7 units per character of an 11-unit font
    return items


def _tip(label: str, series: Series, value: str) -> str:
    """The hover text of one bar or point."""
    return f"{label}: {series.label} {value}"


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
) -> Chart:
    """One bar per slot (``labels[i]``, ``values[i]``), each series stacked in order."""
    totals = [sum(max(0.0, float(v.get(s.name, 0) or 0)) for s in series) for v in values]
    ticks = nice_ticks(max(totals, default=0))
    frame = _Frame(len(values), ticks[-1], width, height)
    gap = min(2.0, frame.slot * 0.2)
    below = [0.0] * len(values)  # the stack's height so far, per slot
    marks = []
    for s in series:
        bars = []
        for i, v in enumerate(values):
            amount = max(0.0, float(v.get(s.name, 0) or 0))
            if not amount:
                continue
            y0, y1 = frame.y(below[i]), frame.y(below[i] + amount)
            below[i] += amount
            bars.append(
                Mark(
                    x=frame.x(i) + gap / 2,
                    y=y1,
                    width=frame.slot - gap,
                    height=y0 - y1,
                    value=amount,
                    tip=_tip(labels[i], s, y_format(amount)),
                )
            )
        marks.append(SeriesMarks(s.name, str(s.label), s.color, bars=bars))
    return frame.chart(
        "bars",
        title=title,
        labels=labels,
        ticks=ticks,
        y_format=y_format,
        series=series,
        marks=marks,
        empty=None if any(totals) else empty,
    )


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
) -> Chart:
    """One line per series through the slots' centres; a None value is a gap in the line.

    ``y_max`` fixes the scale (1.0 for rates); otherwise it fits the data.
    """
    present = [float(x) for v in values for s in series if (x := v.get(s.name)) is not None]
    ticks = nice_ticks(y_max if y_max is not None else max(present, default=0))
    frame = _Frame(len(values), ticks[-1], width, height)
    marks = []
    for s in series:
        runs: list[list[tuple[int, float]]] = [[]]  # (slot, value) with no gap between them
        for i, v in enumerate(values):
            value = v.get(s.name)
            if value is None:
                if runs[-1]:
                    runs.append([])
                continue
            runs[-1].append((i, float(value)))
        segments = [
            Segment(
                [
                    Mark(
                        x=frame.x(i + 0.5),
                        y=frame.y(value),
                        r=2.5 if len(run) > 1 else 3.5,  # a lone dot is drawn larger
                        value=value,
                        tip=_tip(labels[i], s, y_format(value)),
                    )
                    for i, value in run
                ]
            )
            for run in runs
            if run
        ]
        marks.append(SeriesMarks(s.name, str(s.label), s.color, segments=segments))
    return frame.chart(
        "lines",
        title=title,
        labels=labels,
        ticks=ticks,
        y_format=y_format,
        series=series,
        marks=marks,
        empty=None if present else empty,
    )
