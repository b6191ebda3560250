"""/metrics in production: its token, or opened on purpose (RESPCACHE_METRICS_PUBLIC), else 403 and
``check --deploy`` says so (respcache.E009); and a scrape's cost does not grow with workloads."""

from __future__ import annotations

import time
from typing import Any

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from respcache import checks, stats, tally
from respcache.conf import app_settings
from respcache.models import Workload
from tests.test_counting import redis_round_trips
from tests.test_production import PRODUCTION_ENV, run_check

TOKEN = "scrape-token"


def scrape(**headers: str) -> Any:
    return Client().get("/metrics", headers=headers)


@pytest.fixture
def production(settings: Any) -> Any:
    """The production settings' switch on (project/settings.py: DEBUG off, a real secret key)."""
    settings.PRODUCTION = True
    return settings


def with_metrics(settings: Any, **values: Any) -> None:
    settings.RESPCACHE = {**settings.RESPCACHE, **values}


@pytest.mark.django_db
def test_production_without_a_token_refuses_every_scrape(production: Any, workload: Workload) -> None:
    with_metrics(production, METRICS_TOKEN="", METRICS_PUBLIC=False)
    for headers in ({}, {"Authorization": f"Bearer {TOKEN}"}, {"Authorization": "Bearer "}):
        response = scrape(**headers)
        assert response.status_code == 403
        assert response["Content-Type"].startswith("text/plain")
        body = response.content.decode()
        assert "RESPCACHE_METRICS_TOKEN" in body and "RESPCACHE_METRICS_PUBLIC=1" in body
        assert "respcache_requests_total" not in body and "intents" not in body


@pytest.mark.django_db
def test_production_with_a_token_serves_its_holders_only(production: Any, workload: Workload) -> None:
    with_metrics(production, METRICS_TOKEN=TOKEN, METRICS_PUBLIC=False)
    assert scrape().status_code == 401
    assert scrape(Authorization="Bearer wrong").status_code == 401
    served = scrape(Authorization=f"Bearer {TOKEN}")
    assert served.status_code == 200 and 'respcache_workload_enabled{workload="intents"} 1.0' in served.content.decode()


@pytest.mark.django_db
def test_production_opened_on_purpose_serves_anyone(production: Any, workload: Workload) -> None:
    with_metrics(production, METRICS_TOKEN="", METRICS_PUBLIC=True)
    assert scrape().status_code == 200
    # A token still wins: opening on purpose does not drop a token that is set.
    with_metrics(production, METRICS_TOKEN=TOKEN, METRICS_PUBLIC=True)
    assert scrape().status_code == 401


@pytest.mark.django_db
def test_outside_production_an_unset_token_leaves_it_open(settings: Any, workload: Workload) -> None:
    settings.PRODUCTION = False
    with_metrics(settings, METRICS_TOKEN="", METRICS_PUBLIC=False)
    assert scrape().status_code == 200


@pytest.mark.django_db
def test_a_project_without_a_production_setting_is_production_when_debug_is_off(settings: Any, db: Any) -> None:
    del settings.PRODUCTION
    with_metrics(settings, METRICS_TOKEN="", METRICS_PUBLIC=False)
    settings.DEBUG = False
    assert app_settings.production and scrape().status_code == 403
    settings.DEBUG = True
    assert not app_settings.production and scrape().status_code == 200


def test_the_deploy_check(settings: Any) -> None:
    with_metrics(settings, METRICS_TOKEN="", METRICS_PUBLIC=False)
    (error,) = checks.check_metrics_protected()
    assert error.id == "respcache.E009"
    assert "RESPCACHE_METRICS_TOKEN" in error.hint and "RESPCACHE_METRICS_PUBLIC=1" in error.hint
    with_metrics(settings, METRICS_TOKEN=TOKEN)
    assert checks.check_metrics_protected() == []
    with_metrics(settings, METRICS_TOKEN="", METRICS_PUBLIC=True)
    assert checks.check_metrics_protected() == []

    from django.core.checks import registry

    assert checks.check_metrics_protected in registry.registry.get_checks(include_deployment_checks=True)
    assert checks.check_metrics_protected not in registry.registry.get_checks(include_deployment_checks=False)


def test_check_deploy_with_the_production_environment() -> None:
    """``manage.py check --deploy`` with the production settings from the environment."""
    without = {k: v for k, v in PRODUCTION_ENV.items() if k != "RESPCACHE_METRICS_TOKEN"}
    done = run_check(without)
    assert done.returncode != 0 and "respcache.E009" in done.stderr, done.stdout + done.stderr
    assert "RESPCACHE_METRICS_PUBLIC=1" in done.stderr
    assert run_check({**without, "RESPCACHE_METRICS_PUBLIC": "1"}).returncode == 0
    assert run_check({**without, "RESPCACHE_METRICS_TOKEN": TOKEN}).returncode == 0
    assert run_check({**without, "RESPCACHE_METRICS_PUBLIC": "0"}).returncode != 0


# --- a scrape's cost whatever the number of workloads -------------------------------------------


def _workloads(how_many: int) -> None:
    now = time.time()
    for i in range(how_many):
        Workload.objects.create(slug=f"w{i:02d}")
        stats.count(f"w{i:02d}", now, hit=i + 1, miss=1)


@pytest.mark.django_db(transaction=True)
def test_a_scrape_costs_the_same_with_1_and_30_workloads(
    settings: Any, monkeypatch: pytest.MonkeyPatch, redis_db: Any
) -> None:
    with_metrics(settings, METRICS_TOKEN=TOKEN)
    cost = {}
    for how_many in (1, 30):
        Workload.objects.all().delete()
        redis_db.flushdb()
        _workloads(how_many)
        tally.flush()  # this process's own counts: a scrape would flush them first
        with CaptureQueriesContext(connection) as queries, redis_round_trips(monkeypatch) as trips:
            response = scrape(Authorization=f"Bearer {TOKEN}")
        assert response.status_code == 200
        body = response.content.decode()
        assert f'respcache_requests_total{{outcome="hit",workload="w{how_many - 1:02d}"}} {how_many}.0' in body
        cost[how_many] = (len(queries.captured_queries), trips.commands())
    # One query (the workloads), one Redis round trip (one pipeline) for 1 workload and for 30.
    assert cost[1] == cost[30] == (1, ["HGETALL"]), cost
