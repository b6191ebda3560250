"""/metrics: Prometheus text read from the shared Redis totals, monotonic, the same from any process."""

from __future__ import annotations

import time
from typing import Any

import orjson
import pytest
from django.conf import settings
from django.test import Client, override_settings
from prometheus_client.parser import text_string_to_metric_families

from respcache import selectors, services, stats, store, tally
from respcache.models import Workload
from tests.conftest import ask, redis_down

pytestmark = pytest.mark.django_db


def call(slug: str, text: str = "password reset", **extra: Any) -> services.CachedResult:
    body = ask(text, **extra)
    policy = selectors.workload_policy(slug)
    assert policy is not None
    return services.cached_message_create(policy=policy, body=body, raw_body=orjson.dumps(body))


def scrape(client: Client | None = None, **headers: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    response = (client or Client()).get("/metrics", headers=headers)
    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("text/plain")
    return parse(response.content.decode())


def parse(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: dict[Any, float], name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def test_counters_per_workload_and_outcome(make_workload: Any) -> None:
    make_workload("intents")
    make_workload("extract", enabled=False)
    miss = call("intents")
    call("intents")
    call("intents")
    call("intents", "creative", temperature=0.9)
    call("extract")
    samples = scrape()
    assert value(samples, "respcache_redis_up") == 1
    requests = {o: value(samples, "respcache_requests_total", workload="intents", outcome=o) for o in stats.OUTCOMES}
    assert requests == {"hit": 2, "wait": 0, "miss": 1, "fallthrough": 0, "bypass": 1, "refresh": 0, "shadow": 0}
    assert value(samples, "respcache_requests_total", workload="extract", outcome="bypass") == 1
    usage = orjson.loads(miss.body)["usage"]
    for kind in ("input", "output"):
        saved = value(samples, "respcache_tokens_saved_total", workload="intents", kind=kind)
        assert saved == 2 * usage[f"{kind}_tokens"]
    assert value(samples, "respcache_entries_written_total", workload="intents") == 1
    assert value(samples, "respcache_entries_first_read_total", workload="intents") == 1
    assert value(samples, "respcache_upstream_latency_seconds_count", workload="intents") == 2  # miss + bypass
    assert value(samples, "respcache_upstream_latency_seconds_sum", workload="intents") >= 0
    assert value(samples, "respcache_upstream_errors_total", workload="intents") == 0
    assert value(samples, "respcache_cache_errors_total", workload="intents") == 0
    assert value(samples, "respcache_hit_rate", workload="intents", window="1h") == pytest.approx(2 / 3)
    assert value(samples, "respcache_stampede_rate", workload="intents", window="1h") == 0
    assert value(samples, "respcache_hit_rate", workload="extract", window="1h") is None  # nothing looked up
    assert value(samples, "respcache_workload_enabled", workload="extract") == 0
    assert value(samples, "respcache_workload_key_version", workload="intents") == 1


def test_counters_outlive_the_expiring_buckets(make_workload: Any, redis_db: Any) -> None:
    make_workload("intents")
    call("intents")
    call("intents")
    before = scrape()
    for key in redis_db.scan_iter(match="*respcache:s:intents:[mh]:*"):
        redis_db.delete(key)  # what retention does to the minute and hour buckets
    assert stats.totals("intents", "7d").requests == 0
    after = scrape()
    name = "respcache_requests_total"
    for outcome in ("hit", "miss"):
        assert value(after, name, workload="intents", outcome=outcome) == 1
        assert value(before, name, workload="intents", outcome=outcome) == 1


def test_numbers_come_from_redis_not_this_process(make_workload: Any, redis_db: Any) -> None:
    """What another worker or machine counted shows up here: the only state is in Redis."""
    make_workload("intents")
    call("intents")
    redis_db.hincrby(store.totals_key("intents"), "hit", 40)
    redis_db.hincrby(store.totals_key("intents"), "fallthrough", 3)
    samples = scrape()
    assert value(samples, "respcache_requests_total", workload="intents", outcome="hit") == 40
    assert value(samples, "respcache_requests_total", workload="intents", outcome="fallthrough") == 3
    assert value(samples, "respcache_requests_total", workload="intents", outcome="miss") == 1


def test_first_reads_are_marked_once_and_waits_counted(make_workload: Any) -> None:
    make_workload("intents")
    first = call("intents")
    policy = selectors.workload_policy("intents")
    found = [
        store.lookup(
            workload="intents",
            db_version=policy.key_version,
            fingerprint=first.fingerprint,
            upstream=store.key_space(),  # the simulated upstream answered the call
            mark_read=True,
        )
        for _ in range(2)
    ]
    assert all(f.entry is not None for f in found)
    # The first read returns the entry's expiry buckets (minute, hour) for exp_read; no other does.
    assert [len(f.first_read_buckets) for f in found] == [2, 0]
    assert all(":m:" in k or ":h:" in k for k in found[0].first_read_buckets)
    stats.count_first_read("intents", found[0].first_read_buckets, time.time())
    stats.count("intents", time.time(), wait=2)
    totals = stats.all_time(["intents"])["intents"]
    assert (totals["wait"], totals["miss"], totals["first_read"], totals["written"]) == (2, 1, 1, 1)
    assert scrape()[("respcache_stampede_rate", frozenset({("workload", "intents"), ("window", "1h")}))] == 2


def test_counts_redis_did_not_take_reach_the_totals_later(make_workload: Any) -> None:
    make_workload("intents")
    with override_settings(CACHES=redis_down(settings.CACHES)):
        stats.count("intents", time.time(), cache_error=2)
        assert tally.flush() is False
    assert any(counts.get("cache_error") == 2 for _, counts in tally.pending().values())
    stats.count("intents", time.time(), miss=1)
    samples = scrape()
    assert value(samples, "respcache_cache_errors_total", workload="intents") == 2
    assert value(samples, "respcache_requests_total", workload="intents", outcome="miss") == 1
    assert tally.pending() == {}


def test_redis_down_says_so_and_still_answers(make_workload: Any) -> None:
    make_workload("intents")
    with override_settings(CACHES=redis_down(settings.CACHES)):
        samples = scrape()
    assert value(samples, "respcache_redis_up") == 0
    assert value(samples, "respcache_workload_key_version", workload="intents") == 1
    assert not any(name == "respcache_requests_total" for name, _ in samples)


def test_token_protects_the_endpoint_when_set(make_workload: Any) -> None:
    make_workload("intents")
    with override_settings(RESPCACHE={**settings.RESPCACHE, "METRICS_TOKEN": "scrape-me"}):
        assert Client().get("/metrics").status_code == 401
        assert Client().get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert value(scrape(Authorization="Bearer scrape-me"), "respcache_redis_up") == 1
    assert Client().get("/metrics").status_code == 200


def test_openmetrics_when_the_scraper_asks(make_workload: Any) -> None:
    make_workload("intents")
    call("intents")
    response = Client().get("/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert response["Content-Type"].startswith("application/openmetrics-text")
    assert response.content.rstrip().endswith(b"# EOF")


def test_no_process_metrics_that_would_differ_between_workers(make_workload: Any) -> None:
    make_workload("intents")
    names = {name for name, _ in scrape()}
    assert names and all(name.startswith("respcache_") for name in names)


def test_metrics_does_not_need_a_login_but_only_get(db: Any) -> None:
    assert Client().post("/metrics").status_code == 405
    Workload.objects.create(slug="x")
    assert Client().get("/metrics").status_code == 200


def test_a_rate_with_nothing_to_divide_by_is_left_out(make_workload: Any, fake: Any) -> None:
    """No calls: no hit rate; no entry expired yet: no dead-write rate (not a made-up 0)."""
    make_workload("intents")
    samples = scrape()
    for name in ("respcache_hit_rate", "respcache_stampede_rate", "respcache_dead_write_rate"):
        assert value(samples, name, workload="intents", window="1h") is None
    call("intents")
    call("intents")
    samples = scrape()
    assert value(samples, "respcache_hit_rate", workload="intents", window="1h") == 0.5
    assert value(samples, "respcache_stampede_rate", workload="intents", window="1h") == 0
    assert value(samples, "respcache_dead_write_rate", workload="intents", window="1h") is None
