"""respcache.admin.presenters: what the admin pages show, made from numbers (no Redis, no HTML)."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
import pytest
from django.test import override_settings

from respcache.admin import presenters
from respcache.stats import Totals
from respcache.store import EntryInfo, ServerInfo


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [
        (None, "–"),
        (0, "0 s"),
        (45.9, "45 s"),
        (60, "1 min"),
        (125, "2 min 5 s"),
        (605, "10 min"),  # seconds are dropped from 10 minutes on
        (3600, "1 h"),
        (3 * 3600 + 20 * 60 + 7, "3 h 20 min"),
        (86400, "1 d"),
        (2 * 86400 + 4 * 3600 + 59, "2 d 4 h"),
    ],
)
def test_duration_reads_as_a_person_says_it(seconds: float | None, shown: str) -> None:
    assert presenters.duration(seconds) == shown


def test_percent_and_tokens_saved() -> None:
    assert [presenters.percent(v) for v in (None, 0.0, 0.5, 2 / 3)] == ["–", "0.0%", "50.0%", "66.7%"]
    assert presenters.tokens_saved(Totals("24h", {"saved_in": 1200, "saved_out": 350})) == "1.2k / 350"


def test_number_rows_put_each_window_in_its_column() -> None:
    totals = {
        "5m": Totals("5m", {}),
        "1h": Totals("1h", {"hit": 1000, "wait": 234, "miss": 1234, "upstream_calls": 4, "upstream_ms": 1000}),
        "24h": Totals("24h", {"exp_written": 4, "exp_read": 1, "saved_in": 12345, "saved_out": 6}),
        "7d": Totals("7d", {"bypass": 2, "refresh": 3, "cache_error": 7, "budget_refused": 4}),
    }
    rows = dict(presenters.number_rows(totals))
    assert list(rows) == [
        "requests",
        "hit rate",
        "hit + wait",
        "miss + fallthrough",
        "bypass / refresh",
        "stampede rate (wait / miss)",
        "entries written",
        "dead-write rate",
        "entries expired in window / of them read",
        "tokens saved (in / out)",
        "upstream calls",
        "upstream latency (mean)",
        "upstream errors",
        "cache errors (Redis)",
        "refused by the budget",
    ]
    assert rows["requests"] == ["0", "2,468", "0", "5"]
    assert rows["hit rate"] == ["–", "50.0%", "–", "–"]  # no lookup, no rate
    assert rows["hit + wait"][1] == "1,000 + 234"
    assert rows["stampede rate (wait / miss)"][1] == "19.0%"
    assert rows["dead-write rate"] == ["–", "–", "75.0%", "–"]
    assert rows["tokens saved (in / out)"][2] == "12,345 / 6"
    assert rows["upstream latency (mean)"] == ["–", "250 ms", "–", "–"]
    assert rows["bypass / refresh"][3] == "2 / 3" and rows["cache errors (Redis)"][3] == "7"
    assert rows["refused by the budget"] == ["0", "0", "0", "4"]


def test_server_rows_say_what_the_server_did_not_report() -> None:
    refused = dict(presenters.server_rows(ServerInfo(refused=("INFO memory", "CONFIG GET"))))
    assert set(refused.values()) == {"not reported"}
    full = dict(
        presenters.server_rows(
            ServerInfo(
                used_memory=1536,
                maxmemory=0,
                maxmemory_policy="allkeys-lru",
                evicted_keys=12345,
                expired_keys=0,
            )
        )
    )
    assert full == {
        "used memory": "1.5\xa0KB",
        "maxmemory": "no limit",
        "maxmemory-policy": "allkeys-lru",
        "evicted keys (since start)": "12,345",
        "expired keys (since start)": "0",
    }


def test_advice_reads_the_dead_write_rate_against_the_servers_memory() -> None:
    evicting = ServerInfo(maxmemory=1 << 20, evicted_keys=5)
    roomy = ServerInfo(maxmemory=0, evicted_keys=0)
    unread = Totals("24h", {"exp_written": 10, "exp_read": 2})
    read = Totals("24h", {"exp_written": 10, "exp_read": 9})
    assert "no dead-write rate" in presenters.advice(Totals("24h", {}), roomy)
    assert "the TTL fits" in presenters.advice(read, evicting)
    assert "evicts keys" in presenters.advice(unread, evicting)
    assert "Most entries expire unread, with no evictions" in presenters.advice(unread, roomy)


@override_settings(TIME_ZONE="Europe/Paris")
def test_stats_charts_are_labelled_in_local_time_with_gaps_where_nothing_was_looked_up() -> None:
    start = int(datetime(2024, 1, 1, 9, 0, tzinfo=UTC).timestamp())
    series = [
        (start, {"hit": 3, "miss": 1, "upstream_calls": 1, "upstream_ms": 900, "saved_in": 30}),
        (start + 60, {"bypass": 2}),
        (start + 120, {"upstream_error": 1}),
    ]
    cards = presenters.stats_charts(series, "1h")
    assert [heading for heading, _chart in cards] == [
        "Outcomes",
        "Hit rate",
        "Tokens saved",
        "Upstream latency",
        "Miss reasons",
        "Errors",
    ]
    outcomes, hit_rate, tokens, latency, _misses, errors = (chart for _heading, chart in cards)
    assert [label.text for label in outcomes.x_labels] == ["10:00", "10:01", "10:02"]  # Paris is UTC+1
    assert {s.name: [b.value for b in s.bars] for s in outcomes.series}["bypass"] == [2.0]
    (line,) = hit_rate.series
    assert [[p.value for p in seg.points] for seg in line.segments] == [[0.75]]  # then no lookups
    assert latency.series[0].segments[0].points[0].tip == "10:00: mean upstream latency 900 ms"
    assert [b.value for b in tokens.series[0].bars] == [30.0] and tokens.empty is None
    assert errors.empty is None and outcomes.kind == "bars" and hit_rate.kind == "lines"
    week = presenters.stats_charts(series, "7d")[0][1]
    assert week.x_labels[0].text == "Mon 10:00"


def test_entry_row_and_message_texts() -> None:
    now = 1_700_000_000.0
    info = EntryInfo(fingerprint="f" * 64, version=2, ttl_ms=90_000, stored_at=now - 3600, size=2048)
    row = presenters.entry_row(info, url="/x/", now=now)
    assert (row["url"], row["age"], row["ttl"], row["size"]) == ("/x/", "1 h", "1 min 30 s", "2.0\xa0KB")
    assert row["stored_at"] == datetime.fromtimestamp(now - 3600, tz=UTC)
    gone = presenters.entry_row(EntryInfo(fingerprint="0" * 64, version=1, ttl_ms=None), url="/y/", now=now)
    assert (gone["stored_at"], gone["age"], gone["ttl"], gone["size"]) == (None, "–", "–", "–")

    message = {"content": [{"type": "text", "text": "Hi"}, {"type": "tool_use"}, {"type": "text", "text": "!"}]}
    pretty, texts = presenters.message_texts(orjson.dumps(message))
    assert texts == ["Hi", "!"] and orjson.loads(pretty) == message and "\n  " in pretty
    assert presenters.message_texts(b"\xff not json") == ("\ufffd not json", [])
    assert presenters.message_texts(b"[1, 2]") == ("[1, 2]", [])  # JSON, but not a message
