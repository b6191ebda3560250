"""admin/respcache/workload/_chart.svg.html: a respcache.charts.Chart drawn as SVG, every text
autoescaped, every number written the way SVG reads it whatever the operator's language."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

from django.template.loader import render_to_string
from django.utils import translation

from respcache import charts

NS = "{http://www.w3.org/2000/svg}"
EVIL = '<script>alert("x")</script>'
NUMERIC = ("x", "y", "x1", "x2", "y1", "y2", "cx", "cy", "r", "width", "height", "data-value")


def render(chart: charts.Chart) -> str:
    return render_to_string("admin/respcache/workload/_chart.svg.html", {"chart": chart})


def test_every_text_of_a_chart_is_escaped() -> None:
    series = [charts.Series("hit", EVIL, "#000")]
    bars = charts.stacked_bars([EVIL], [{"hit": 1}], series, title=EVIL, y_format=lambda v: f"{EVIL}{v:g}")
    lines = charts.lines([EVIL], [{"hit": None}], series, title=EVIL, empty=EVIL)
    for chart in (bars, lines):
        svg = render(chart)
        assert "<script" not in svg and "&lt;script&gt;" in svg
        root = ET.fromstring(svg)
        texts = [e.text for e in root.iter() if e.tag in (f"{NS}title", f"{NS}text")]
        assert texts and all(EVIL in (t or "") for t in texts if not re.fullmatch(r"[\d.]+", t or "")), texts
    tips = [t.text for t in ET.fromstring(render(bars)).iter(f"{NS}title")]
    assert tips == [EVIL, f"{EVIL}: {EVIL} {EVIL}1"]  # the chart's title, then the bar's tooltip
    empty_note = ET.fromstring(render(lines)).find(f".//{NS}text[@class='rc-empty']")
    assert empty_note is not None and empty_note.text == EVIL


def test_a_color_cannot_add_an_attribute() -> None:
    chart = charts.stacked_bars(["a"], [{"hit": 1}], [charts.Series("hit", "hit", 'red" onload="alert(1)')], title="t")
    root = ET.fromstring(render(chart))
    assert all("onload" not in e.attrib for e in root.iter())
    group = next(g for g in root.iter(f"{NS}g") if g.get("data-series") == "hit")
    assert group.get("fill") == 'red" onload="alert(1)'


def test_numbers_are_not_localized() -> None:
    """A German operator's decimal comma would break every coordinate: the template writes dots."""
    values: list[dict[str, float | None]] = [{"r": 0.5}, {"r": None}, {"r": 0.25}, {"r": 0.75}]
    chart = charts.lines(["a", "b", "c", "d"], values, [charts.Series("r", "rate", "#000")], title="t", y_max=1.0)
    with translation.override("de"):
        root = ET.fromstring(render(chart))
    for element in list(root.iter())[1:]:  # the <svg> itself is width="100%"
        for name in NUMERIC:
            if name in element.attrib:
                float(element.attrib[name])  # raises on "2,5"
    assert {c.get("r") for c in root.iter(f"{NS}circle")} == {"3.5", "2.5"}  # a lone dot, a line's dots
    assert root.get("viewBox") == f"0 0 {charts.WIDTH} {charts.HEIGHT}"


def test_the_chart_is_one_svg_element_with_its_title_id() -> None:
    svg = render(charts.stacked_bars(["a"], [{"hit": 2}], [charts.Series("hit", "hit", "#0a0")], title="t"))
    assert svg.startswith('<svg xmlns="http://www.w3.org/2000/svg" class="rc-chart rc-chart-bars"')
    assert svg.endswith("</svg>") and "\n" not in svg
    root = ET.fromstring(svg)
    title = root.find(f"{NS}title")
    assert title is not None and root.get("aria-labelledby") == title.get("id")
