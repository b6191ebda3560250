"""Drift alerts from real counters: calls counted through ``stats.count`` (the counting code every
call uses) at chosen times, then the admin changelist's banner and the ``/metrics`` gauges; and
the shipped Prometheus rules and Grafana dashboard name only metrics a real scrape exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from django.test import Client
from prometheus_client.parser import text_string_to_metric_families

from respcache import services, stats
from respcache.drift import MIN_LOOKUPS, Drift
from respcache.models import Workload
from tests.api.test_views import create
from tests.conftest import ask

DOCS = Path(__file__).resolve().parent.parent / "docs"
CHANGELIST = "/admin/respcache/workload/"


def day_then_hour(slug: str, *, before: tuple[int, int], last_hour: tuple[int, int], now: float) -> None:
    """``before`` (hits, misses) spread over the 24 hours before the last hour, ``last_hour``
    (hits, misses) within it, counted as calls count them (in 20 batches each)."""
    for (hits, misses), start, step in ((before, now - 3700, 4000), (last_hour, now - 60, 150)):
        for n in range(20):
            share = {"hit": hits // 20 + (n < hits % 20), "miss": misses // 20 + (n < misses % 20)}
            stats.count(slug, start - n * step, **share)


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def gauge(text: str, name: str, slug: str) -> float | None:
    return samples(text).get((name, (("workload", slug),)))


@pytest.mark.django_db
def test_a_falling_hit_rate_raises_the_banner_and_the_gauges(make_workload: Any, admin_client: Client) -> None:
    make_workload("intents")
    make_workload("steady")
    now = time.time()
    day_then_hour("intents", before=(90, 10), last_hour=(10, 30), now=now)  # 90 % -> 25 %
    day_then_hour("steady", before=(80, 20), last_hour=(32, 8), now=now)  # 80 % -> 80 %

    recent = stats.window_totals(["intents"], ("1h", stats.BASELINE))["intents"]
    assert (recent["1h"].lookups, recent[stats.BASELINE].lookups) == (40, 100)  # no overlap, none lost
    text = Client().get("/metrics").content.decode()
    assert gauge(text, "respcache_hit_rate_drop_points", "intents") == pytest.approx(65.0)
    assert gauge(text, "respcache_drift_alert", "intents") == 1
    assert gauge(text, "respcache_hit_rate_drop_points", "steady") == pytest.approx(0.0)
    assert gauge(text, "respcache_drift_alert", "steady") == 0
    assert gauge(text, "respcache_drift_threshold_points", "intents") == 20

    page = admin_client.get(CHANGELIST).content.decode()
    banner = re.search(r'<div class="rc-drift".*?</div>', page, re.S)
    assert banner is not None
    assert "intents: hit rate 25.0% in the last hour, 90.0% over the 24 hours before" in banner.group(0)
    assert "down 65.0 points; threshold 20" in banner.group(0)
    assert "steady" not in banner.group(0)


@pytest.mark.django_db
def test_the_workloads_threshold_decides(make_workload: Any, admin_client: Client) -> None:
    make_workload("intents", drift_threshold_points=70)
    day_then_hour("intents", before=(90, 10), last_hour=(10, 30), now=time.time())  # down 65 points
    text = Client().get("/metrics").content.decode()
    assert gauge(text, "respcache_drift_alert", "intents") == 0
    assert 'class="rc-drift"' not in admin_client.get(CHANGELIST).content.decode()
    services.workload_upsert(slug="intents", drift_threshold_points=60, actor="test")
    text = Client().get("/metrics").content.decode()
    assert gauge(text, "respcache_drift_alert", "intents") == 1
    assert 'class="rc-drift"' in admin_client.get(CHANGELIST).content.decode()


@pytest.mark.django_db
def test_too_few_lookups_are_no_drift(make_workload: Any) -> None:
    make_workload("intents")
    day_then_hour("intents", before=(90, 10), last_hour=(0, MIN_LOOKUPS - 1), now=time.time())
    text = Client().get("/metrics").content.decode()
    assert gauge(text, "respcache_hit_rate_drop_points", "intents") == pytest.approx(90.0)
    assert gauge(text, "respcache_drift_alert", "intents") == 0


def test_drift_arithmetic() -> None:
    def totals(hit: int, miss: int) -> stats.Totals:
        return stats.Totals(window="x", counts={"hit": hit, "miss": miss})

    assert Drift(totals(20, 20), totals(80, 20), 20).drop_points == pytest.approx(30.0)
    assert Drift(totals(20, 20), totals(80, 20), 20).alert
    assert not Drift(totals(20, 20), totals(80, 20), 30).alert  # exactly at the threshold: no
    assert not Drift(totals(30, 10), totals(50, 50), 20).alert  # a rise
    assert Drift(totals(0, 0), totals(80, 20), 20).drop_points is None


# --- the shipped rules and dashboard --------------------------------------------------------


def names_in(text: str) -> set[str]:
    return set(re.findall(r"\b(respcache_[a-z_]+)\b", text))


def rule_texts() -> list[str]:
    groups = yaml.safe_load((DOCS / "prometheus-rules.yml").read_text())["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    assert {r["alert"] for r in rules} == {"RespcacheHitRateDrift", "RespcacheShadowDisagrees"}
    return [rule["expr"] + json.dumps(rule.get("annotations", {})) for rule in rules]


def dashboard_texts() -> list[str]:
    dashboard = json.loads((DOCS / "grafana-dashboard.json").read_text())
    found: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("expr", "query", "definition") and isinstance(value, str):
                    found.append(value)
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(dashboard)
    assert len(dashboard["panels"]) >= 8
    return found


@pytest.mark.django_db(transaction=True)
def test_rules_and_dashboard_name_only_metrics_a_real_scrape_exports(
    workload: Workload, sdk: Any, fake: Any, live_server: Any, redis_db: Any
) -> None:
    client = sdk()
    for text in ("reset", "reset", "refund"):
        create(client, ask(text))
    services.workload_upsert(slug="intents", shadow=True, actor="test")
    create(client, ask("reset"))
    day_then_hour("intents", before=(30, 0), last_hour=(0, 0), now=time.time())
    # Entries that expired a minute ago, one of two read (the current minute's expiries are not
    # final yet), so the dead-write gauge has a value too.
    for key in stats.bucket_keys("intents", time.time() - 60)[0]:
        redis_db.hset(key, mapping={"exp_written": 2, "exp_read": 1})
    scrape = Client().get("/metrics").content.decode()
    exported = {name for key in samples(scrape) for name in [key[0]]}
    assert {"respcache_drift_alert", "respcache_shadow_agreement", "respcache_hit_rate_drop_points"} <= exported

    used_by_rules = set().union(*(names_in(t) for t in rule_texts()))
    used_by_dashboard = set().union(*(names_in(t) for t in dashboard_texts()))
    assert {"respcache_drift_alert", "respcache_shadow_agreement"} <= used_by_rules
    assert {"respcache_hit_rate_drop_points", "respcache_shadow_would_hit_total"} <= used_by_dashboard
    assert used_by_rules <= exported, used_by_rules - exported
    assert used_by_dashboard <= exported, used_by_dashboard - exported


@pytest.mark.skipif(not shutil.which("promtool"), reason="promtool (Debian package prometheus) is not installed")
def test_the_rules_pass_promtool() -> None:
    done = subprocess.run(
        ["promtool", "check", "rules", "prometheus-rules.yml"], cwd=DOCS, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
