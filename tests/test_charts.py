"""The admin's SVG charts: well-formed, to scale, gaps where there is no data, text escaped.

The geometry (``respcache.charts``) is drawn by its template, as the stats page includes it."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest
from django.template.loader import render_to_string

from respcache import charts

NS = "{http://www.w3.org/2000/svg}"
BARS = [charts.Series("hit", "hit", "#0a0"), charts.Series("miss", "miss", "#f80")]


def render(chart: charts.Chart) -> str:
    return render_to_string("admin/respcache/workload/_chart.svg.html", {"chart": chart})


def parse(chart: charts.Chart) -> ET.Element:
    return ET.fromstring(render(chart))


def rects(root: ET.Element, series: str) -> list[ET.Element]:
    group = next(g for g in root.iter(f"{NS}g") if g.get("data-series") == series)
    return list(group.iter(f"{NS}rect"))


@pytest.mark.parametrize(
    ("top", "expected"),
    [
        (0, [0.0, 1.0]),
        (1, [0, 0.25, 0.5, 0.75, 1]),
        (7, [0, 2, 4, 6, 8]),
        (950, [0, 250, 500, 750, 1000]),
    ],
)
def test_nice_ticks_reach_the_top_in_round_steps(top: float, expected: list[float]) -> None:
    assert charts.nice_ticks(top) == expected


def test_stacked_bars_are_to_scale_and_stacked() -> None:
    labels = ["10:00", "10:01", "10:02"]
    root = parse(charts.stacked_bars(labels, [{"hit": 2, "miss": 2}, {"hit": 8}, {}], BARS, title="Calls"))
    assert root.find(f"{NS}title").text == "Calls"  # type: ignore[union-attr]
    hits, misses = rects(root, "hit"), rects(root, "miss")
    assert [float(r.get("data-value", 0)) for r in hits] == [2, 8]
    assert [float(r.get("data-value", 0)) for r in misses] == [2]
    heights = [float(r.get("height", 0)) for r in hits]
    assert heights[1] == pytest.approx(4 * heights[0])  # 8 vs 2, on one scale
    # The miss sits on top of the hit in the same slot.
    hit0, miss0 = hits[0], misses[0]
    assert float(miss0.get("y", 0)) + float(miss0.get("height", 0)) == pytest.approx(float(hit0.get("y", 0)), abs=0.1)
    assert hit0.find(f"{NS}title").text == "10:00: hit 2"  # type: ignore[union-attr]
    assert root.find(f".//{NS}text[@class='rc-empty']") is None


def test_bars_with_no_data_say_so() -> None:
    root = parse(charts.stacked_bars(["a", "b"], [{}, {}], BARS, title="t", empty="Nothing here"))
    assert root.find(f".//{NS}text[@class='rc-empty']").text == "Nothing here"  # type: ignore[union-attr]
    assert rects(root, "hit") == []


def test_lines_break_where_there_is_no_value() -> None:
    values = [
        {"r": 0.5},
        {"r": 1.0},
        {"r": None},
        {"r": 0.25},
        {"r": 0.75},
        {"r": None},
        {"r": 0.1},
    ]
    root = parse(
        charts.lines(
            [str(i) for i in range(7)],
            values,
            [charts.Series("r", "rate", "#000")],
            title="rate",
            y_max=1.0,
            y_format=charts.format_percent,
        )
    )
    paths = list(root.iter(f"{NS}path"))
    assert len(paths) == 2  # two runs of two points; the lone last point is a dot only
    assert [p.get("d", "").count("L") for p in paths] == [1, 1]
    points = [float(c.get("data-value", 0)) for c in root.iter(f"{NS}circle")]
    assert points == [0.5, 1.0, 0.25, 0.75, 0.1]
    labels = [t.text for t in root.iter(f"{NS}text")]
    assert "100%" in labels and "0%" in labels


def test_line_scale_is_fixed_by_y_max() -> None:
    root = parse(charts.lines(["a"], [{"r": 0.5}], [charts.Series("r", "r", "#000")], title="t", y_max=1.0))
    (dot,) = root.iter(f"{NS}circle")
    top, bottom = charts.TOP, charts.HEIGHT - charts.BOTTOM
    assert float(dot.get("cy", 0)) == pytest.approx((top + bottom) / 2, abs=0.1)


def test_text_is_escaped() -> None:
    evil = '<script>alert("x")</script>'
    svg = render(charts.stacked_bars([evil], [{"hit": 1}], [charts.Series("hit", evil, "#000")], title=evil))
    assert "<script>" not in svg
    root = ET.fromstring(svg)
    assert root.find(f"{NS}title").text == evil  # type: ignore[union-attr]


def test_number_formats() -> None:
    assert [charts.format_number(v) for v in (0, 950, 1200, 3_400_000, 0.5)] == [
        "0",
        "950",
        "1.2k",
        "3.4M",
        "0.5",
    ]
    assert charts.format_percent(0.875) == "88%"
