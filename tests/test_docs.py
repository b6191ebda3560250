"""What the README and docs/prometheus tell operators to run works: the Prometheus rules use only
metrics /metrics exports (and pass promtool's own unit tests), the CI pipeline's curl bumps."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from django.test import Client

from respcache import stats, store
from respcache.models import AuditEntry, Workload

BASE_DIR = Path(__file__).resolve().parent.parent
PROMETHEUS = BASE_DIR / "docs" / "prometheus"
README = (BASE_DIR / "README.md").read_text()


def rule_expressions() -> list[str]:
    groups = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())["groups"]
    return [rule["expr"] for group in groups for rule in group["rules"]]


@pytest.mark.django_db
def test_alert_rules_use_only_exported_metrics(make_workload: Any, redis_db: Any) -> None:
    make_workload("intents")
    # A minute ago: entries that expired then (the current minute's expiries are not final yet).
    keys, _ = stats.bucket_keys("intents", time.time() - 60)
    redis_db.hset(keys[0], mapping={"hit": 3, "miss": 1, "wait": 1, "exp_written": 2, "exp_read": 1})
    redis_db.hset(store.totals_key("intents"), mapping={"hit": 3, "miss": 1})
    text = Client().get("/metrics").content.decode()
    exported = set(re.findall(r"^(respcache_[a-z_]+?)(?:_count|_sum)?[{ ]", text, re.M))
    used = {name for expr in rule_expressions() for name in re.findall(r"\b(respcache_[a-z_]+)", expr)}
    assert used, "the rules should use respcache's metrics"
    assert used <= exported, used - exported
    alerts = {r["alert"] for g in yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())["groups"]
              for r in g["rules"] if "alert" in r}
    assert {"RespcacheHitRateFalling", "RespcacheStampedeRateRising", "RespcacheDeadWritesHigh"} <= alerts
    assert "docs/prometheus/alerts.yml" in README and "docs/prometheus/scrape.yml" in README


@pytest.mark.skipif(not shutil.which("promtool"), reason="promtool (Debian package prometheus) is not installed")
def test_alert_rules_pass_promtool() -> None:
    for args in (["check", "rules", "alerts.yml"], ["test", "rules", "alerts_test.yml"]):
        done = subprocess.run(["promtool", *args], cwd=PROMETHEUS, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.skipif(not shutil.which("curl"), reason="curl is not installed")
@pytest.mark.django_db(transaction=True)
def test_the_readme_ci_bump_works(live_server: Any, make_workload: Any) -> None:
    """The README's one-line curl, run as a CI pipeline would, against a live server."""
    from respcache.services import api_key_create

    workload = make_workload("intents")
    _, key = api_key_create(name="ci-pipeline", workloads=(), managed_workloads=(workload,))
    (line,) = [line for line in README.splitlines() if line.startswith("curl ") and "/bump/" in line]
    host = re.search(r"https://[^/]+", line)
    assert host is not None
    command = line.replace(host.group(0), live_server.url)
    env = {**os.environ, "RESPCACHE_MANAGE_KEY": key}
    done = subprocess.run(["bash", "-c", command], env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert '"key_version":2' in done.stdout
    assert Workload.objects.get(slug="intents").key_version == 2
    assert AuditEntry.objects.get(action="bump").actor == "apikey:ci-pipeline"
