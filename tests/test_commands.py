"""The five management commands through call_command, with their exact output."""

from __future__ import annotations

import json
from io import StringIO
from typing import Any

import orjson
import pytest
from django.core.management import CommandError, call_command

from respcache import selectors, services, stats
from respcache.models import ApiKey, AuditEntry, Workload
from tests.conftest import ask

pytestmark = pytest.mark.django_db


def run(*args: str) -> str:
    out = StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


def test_workload_create_and_update_prints_it() -> None:
    assert run(
        "respcache_workload", "intents", "--ttl", "3600", "--strict", "--lock-ttl", "5", "--wait-max", "2.5"
    ) == (
        "created workload intents: enabled=True ttl=3600s key_version=1 strict=True lock_ttl=5s wait_max=2.5s "
        "max_upstream_per_minute=0 max_tokens_per_day=0 shadow=False drift_threshold=20\n"
    )
    assert run("respcache_workload", "intents", "--disable", "--no-strict") == (
        "updated workload intents: enabled=False ttl=3600s key_version=1 strict=False lock_ttl=5s wait_max=2.5s "
        "max_upstream_per_minute=0 max_tokens_per_day=0 shadow=False drift_threshold=20\n"
    )
    assert list(AuditEntry.objects.values_list("action", flat=True)) == ["edit", "create"]


def test_workload_bad_values_are_command_errors() -> None:
    with pytest.raises(CommandError, match="ttl_seconds"):
        run("respcache_workload", "intents", "--ttl", "0")
    with pytest.raises(CommandError):
        run("respcache_workload", "not a slug")


def test_apikey_prints_the_key_alone_on_the_last_line() -> None:
    Workload.objects.create(slug="a")
    Workload.objects.create(slug="b")
    out = run("respcache_apikey", "router", "--workload", "a", "--workload", "b")
    raw = out.splitlines()[-1]
    grant = selectors.api_key_grant(raw)
    assert grant is not None and grant.workloads == {"a", "b"}
    api_key = ApiKey.objects.get()
    assert raw not in (api_key.hashed_key, api_key.id)  # stored hashed only


def test_apikey_for_an_unknown_workload_is_an_error() -> None:
    with pytest.raises(CommandError, match="unknown workload"):
        run("respcache_apikey", "router", "--workload", "nope")


def test_bump_prints_the_new_version() -> None:
    Workload.objects.create(slug="intents")
    assert run("respcache_bump", "intents") == "2\n"
    assert run("respcache_bump", "intents") == "3\n"
    with pytest.raises(CommandError):
        run("respcache_bump", "nope")


def test_purge_prints_how_many(fake: Any) -> None:
    workload = Workload.objects.create(slug="intents")
    policy = selectors.workload_policy("intents")
    for text in ("a", "b", "c"):
        services.cached_message_create(policy=policy, body=ask(text), raw_body=orjson.dumps(ask(text)))
    assert run("respcache_purge", "intents") == "3\n"
    assert run("respcache_purge", "intents") == "0\n"
    assert AuditEntry.objects.filter(workload=workload, action="purge").first().entries_purged == 0


def test_stats_table_and_json() -> None:
    Workload.objects.create(slug="intents")
    Workload.objects.create(slug="moderation")
    import time

    stats.count("intents", time.time(), hit=3, miss=1, saved_in=30, saved_out=12)
    table = run("respcache_stats", "--window", "5m")
    lines = table.splitlines()
    assert lines[0].split()[:4] == ["workload", "window", "requests", "hit"]
    row = lines[1].split()
    assert row[:4] == ["intents", "5m", "4", "3"] and "75.0%" in row
    assert lines[2].split()[0] == "moderation"
    payload = json.loads(run("respcache_stats", "intents", "--json"))
    assert payload[0]["workload"] == "intents" and payload[0]["window"] == "1h"
    assert payload[0]["hit"] == 3 and payload[0]["hit_rate"] == 0.75 and payload[0]["saved_in"] == 30
    with pytest.raises(CommandError):
        run("respcache_stats", "nope")
