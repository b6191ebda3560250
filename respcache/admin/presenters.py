"""What the admin pages show, made from numbers: durations, rates, the stats page's tables, its
advice and its charts' data, an entry's rows. Plain strings and :mod:`respcache.charts` values
only: the templates under ``admin/respcache/workload/`` turn them into markup (autoescaped).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import orjson
from django.template.defaultfilters import filesizeformat
from django.utils import timezone
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy

from respcache import charts
from respcache.stats import Totals

if TYPE_CHECKING:  # what the selectors return; the admin reads Redis only through them
    from respcache.store import EntryInfo, ServerInfo

#: Chart windows and their number of slices: 1-minute, 15-minute and 2-hour bars.
CHART_POINTS = {"1h": 61, "24h": 97, "7d": 85}

#: The windows of the stats page's numbers table, in its column order.
NUMBER_WINDOWS = ("5m", "1h", "24h", "7d")

OUTCOME_SERIES = [
    charts.Series("hit", gettext_lazy("hit"), "#2e7d32"),
    charts.Series("wait", gettext_lazy("wait"), "#26a69a"),
    charts.Series("miss", gettext_lazy("miss"), "#ef6c00"),
    charts.Series("fallthrough", gettext_lazy("fallthrough"), "#8d6e63"),
    charts.Series("refresh", gettext_lazy("refresh"), "#1e88e5"),
    charts.Series("bypass", gettext_lazy("bypass"), "#90a4ae"),
]
ERROR_SERIES = [
    charts.Series("upstream_error", gettext_lazy("upstream errors"), "#c62828"),
    charts.Series("cache_error", gettext_lazy("cache errors (Redis)"), "#6a1b9a"),
    charts.Series("budget_refused", gettext_lazy("refused by the budget"), "#f9a825"),
]
MISS_REASON_SERIES = [
    charts.Series("miss_new", gettext_lazy("new"), "#90a4ae"),
    charts.Series("miss_model", gettext_lazy("model"), "#6a1b9a"),
    charts.Series("miss_system", gettext_lazy("system"), "#c62828"),
    charts.Series("miss_tools", gettext_lazy("tools"), "#ef6c00"),
    charts.Series("miss_max_tokens", gettext_lazy("max_tokens"), "#f9a825"),
    charts.Series("miss_other", gettext_lazy("other"), "#8d6e63"),
    charts.Series("miss_messages", gettext_lazy("messages"), "#1e88e5"),
]
TOKEN_SERIES = [
    charts.Series("saved_in", gettext_lazy("input tokens saved"), "#3949ab"),
    charts.Series("saved_out", gettext_lazy("output tokens saved"), "#8e24aa"),
]


def duration(seconds: float | None) -> str:
    """A short human duration: 45 s, 12 min, 3 h 20 min, 2 d 4 h."""
    if seconds is None:
        return "–"
    s = int(seconds)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min" + (f" {s % 60} s" if s % 60 and s < 600 else "")
    if s < 86400:
        return f"{s // 3600} h" + (f" {s % 3600 // 60} min" if s % 3600 // 60 else "")
    return f"{s // 86400} d" + (f" {s % 86400 // 3600} h" if s % 86400 // 3600 else "")


def percent(value: float | None) -> str:
    return "–" if value is None else f"{value * 100:.1f}%"


def local_time(ts: float | None) -> datetime | None:
    """A Unix time as an aware datetime in the site's time zone (templates format it)."""
    return None if ts is None else timezone.localtime(datetime.fromtimestamp(ts, tz=UTC))


def tokens_saved(totals: Totals) -> str:
    """Input / output tokens saved, short: ``1.2k / 350``."""
    return f"{charts.format_number(totals['saved_in'])} / {charts.format_number(totals['saved_out'])}"


# --- the stats page ---------------------------------------------------------------------------


def number_rows(totals: dict[str, Totals]) -> list[tuple[str, list[str]]]:
    """The stats page's table: one row per number, one column per window of NUMBER_WINDOWS."""
    cols = [totals[w] for w in NUMBER_WINDOWS]

    def row(label: str, fn: Callable[[Totals], str]) -> tuple[str, list[str]]:
        return label, [fn(t) for t in cols]

    def latency(t: Totals) -> str:
        ms = t.upstream_latency_ms
        return "–" if ms is None else f"{ms:,.0f} ms"

    return [
        row(_("requests"), lambda t: f"{t.requests:,}"),
        row(_("hit rate"), lambda t: percent(t.hit_rate)),
        row(_("hit + wait"), lambda t: f"{t['hit']:,} + {t['wait']:,}"),
        row(_("miss + fallthrough"), lambda t: f"{t['miss']:,} + {t['fallthrough']:,}"),
        row(_("bypass / refresh"), lambda t: f"{t['bypass']:,} / {t['refresh']:,}"),
        row(_("stampede rate (wait / miss)"), lambda t: percent(t.stampede_rate)),
        row(_("entries written"), lambda t: f"{t['written']:,}"),
        row(_("dead-write rate"), lambda t: percent(t.dead_write_rate)),
        row(
            _("entries expired in window / of them read"),
            lambda t: f"{t['exp_written']:,} / {t['exp_read']:,}",
        ),
        row(_("tokens saved (in / out)"), lambda t: f"{t['saved_in']:,} / {t['saved_out']:,}"),
        row(_("upstream calls"), lambda t: f"{t['upstream_calls']:,}"),
        row(_("upstream latency (mean)"), latency),
        row(_("upstream errors"), lambda t: f"{t['upstream_error']:,}"),
        row(_("cache errors (Redis)"), lambda t: f"{t['cache_error']:,}"),
        row(_("refused by the budget"), lambda t: f"{t['budget_refused']:,}"),
    ]


def shadow_rows(totals: dict[str, Totals]) -> list[tuple[str, list[str]]]:
    """The stats page's shadow-mode table, columns as ``number_rows``; empty when no window saw a
    shadow call."""
    cols = [totals[w] for w in NUMBER_WINDOWS]
    if not any(t["shadow"] for t in cols):
        return []
    return [
        (_("shadow calls (fresh answers)"), [f"{t['shadow']:,}" for t in cols]),
        (_("would have hit"), [f"{t['would_hit']:,}" for t in cols]),
        (_("agreement (same answer)"), [percent(t.agreement) for t in cols]),
        (
            _("tokens it would have saved (in / out)"),
            [f"{t['would_save_in']:,} / {t['would_save_out']:,}" for t in cols],
        ),
    ]


def shadow_cell(shadow: bool, day: Totals) -> str:
    """The changelist's shadow column: agreement of the day's would-be hits, and how many."""
    if not day["shadow"]:
        return _("on, no calls yet") if shadow else "–"
    return _("%(agreement)s of %(would_hit)s") % {
        "agreement": percent(day.agreement),
        "would_hit": charts.format_number(day["would_hit"]),
    }


def drift_line(slug: str, recent: Totals, baseline: Totals, drop: float, threshold: int) -> str:
    """One workload's line of the changelist's drift banner."""
    return _(
        "%(slug)s: hit rate %(recent)s in the last hour, %(baseline)s over the 24 hours before "
        "(down %(drop)s points; threshold %(threshold)s)."
    ) % {
        "slug": slug,
        "recent": percent(recent.hit_rate),
        "baseline": percent(baseline.hit_rate),
        "drop": f"{drop:.1f}",
        "threshold": threshold,
    }


def server_rows(server: ServerInfo) -> list[tuple[str, str]]:
    """The Redis server panel: what a server that refused INFO or CONFIG did not report says so."""

    def known(value: Any, fmt: Callable[[Any], str] = str) -> str:
        return _("not reported") if value is None or value == "" else fmt(value)

    maxmemory = server.maxmemory
    return [
        (_("used memory"), known(server.used_memory, filesizeformat)),
        (_("maxmemory"), _("no limit") if maxmemory == 0 else known(maxmemory, filesizeformat)),
        (_("maxmemory-policy"), known(server.maxmemory_policy)),
        (_("evicted keys (since start)"), known(server.evicted_keys, lambda v: f"{v:,}")),
        (_("expired keys (since start)"), known(server.expired_keys, lambda v: f"{v:,}")),
    ]


def advice(day: Totals, server: ServerInfo) -> str:
    """One sentence that reads the dead-write rate against the server's memory."""
    rate = day.dead_write_rate
    if rate is None:
        return _("No entry reached its expiry in the last 24 h yet: no dead-write rate to read.")
    if rate < 0.5:
        return _("Most entries are read before they expire: the TTL fits this workload.")
    evicting = bool(server.evicted_keys) and bool(server.maxmemory)
    if evicting:
        return _(
            "Most entries go unread and this Redis evicts keys at its memory limit: the TTL is "
            "too long for this Redis (entries are pushed out before anyone asks again). Shorten "
            "the TTL or give Redis more memory."
        )
    return _(
        "Most entries expire unread, with no evictions: requests rarely repeat within the TTL. "
        "The cache stores more than it serves; check that this workload is repetitive."
    )


def stats_charts(series: list[tuple[int, dict[str, int]]], window: str) -> list[tuple[str, charts.Chart]]:
    """The stats page's charts, each with its heading, from the window's slices (start, counts)."""
    fmt = "%a %H:%M" if window == "7d" else "%H:%M"
    labels = [timezone.localtime(datetime.fromtimestamp(start, tz=UTC)).strftime(fmt) for start, _c in series]
    values = [counts for _start, counts in series]
    hit_rates = [{"hit_rate": Totals(window=window, counts=c).hit_rate} for c in values]
    latencies = [{"latency": Totals(window=window, counts=c).upstream_latency_ms} for c in values]
    return [
        (_("Outcomes"), charts.stacked_bars(labels, values, OUTCOME_SERIES, title=_("Calls by outcome"))),
        (
            _("Hit rate"),
            charts.lines(
                labels,
                hit_rates,
                [charts.Series("hit_rate", _("hit rate"), "#2e7d32")],
                title=_("Hit rate: (hit + wait) / (hit + wait + miss + fallthrough)"),
                y_max=1.0,
                y_format=charts.format_percent,
                empty=_("No cacheable lookups in this window"),
            ),
        ),
        (
            _("Tokens saved"),
            charts.stacked_bars(labels, values, TOKEN_SERIES, title=_("Tokens saved by hits and waits")),
        ),
        (
            _("Upstream latency"),
            charts.lines(
                labels,
                latencies,
                [charts.Series("latency", _("mean upstream latency"), "#ef6c00")],
                title=_("Mean upstream latency (ms)"),
                y_format=lambda v: f"{charts.format_number(v)} ms",
                empty=_("No upstream calls in this window"),
            ),
        ),
        (
            _("Miss reasons"),
            charts.stacked_bars(
                labels,
                values,
                MISS_REASON_SERIES,
                title=_("Misses by why they missed: new input, or what the closest stored request differs in"),
                empty=_("No explained misses in this window"),
                width=charts.WIDTH + 60,  # room for seven legend items on one line
            ),
        ),
        (
            _("Errors"),
            charts.stacked_bars(labels, values, ERROR_SERIES, title=_("Errors"), empty=_("No errors in this window")),
        ),
    ]


# --- the entry browser ------------------------------------------------------------------------


def entry_row(info: EntryInfo, *, url: str, now: float) -> dict[str, Any]:
    """One line of the entry browser: when stored, how old, how long it has left, its size."""
    return {
        "info": info,
        "url": url,
        "stored_at": local_time(info.stored_at),
        "age": duration(now - info.stored_at) if info.stored_at else "–",
        "ttl": duration(info.ttl_ms / 1000) if info.ttl_ms is not None else "–",
        "size": filesizeformat(info.size) if info.size is not None else "–",
    }


def entry_content(summary: dict[str, str] | None, message: bytes | None) -> dict[str, Any]:
    """What an entry says, for the page that shows it: its request summary and, when given, the
    whole answer (indented JSON and its text blocks). The one place entry content is made
    viewable: a permission check on content belongs around its callers."""
    content: dict[str, Any] = {"summary": summary or {}}
    if message is not None:
        content["message_json"], content["texts"] = message_texts(message)
    return content


def message_texts(raw: bytes) -> tuple[str, list[str]]:
    """A stored message as indented JSON and its text blocks; bytes that are not JSON as text."""
    try:
        message = orjson.loads(raw)
        pretty = orjson.dumps(message, option=orjson.OPT_INDENT_2).decode()
        texts = [
            b.get("text", "") for b in message.get("content") or [] if isinstance(b, dict) and b.get("type") == "text"
        ]
    except (orjson.JSONDecodeError, AttributeError):
        return raw.decode(errors="replace"), []
    return pretty, texts
