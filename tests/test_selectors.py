"""selectors: the bounded local copies (expiry by an injected clock, a flood of unknown keys), no
writes in a selector, and the numbers readers equal to the stats they batch."""

from __future__ import annotations

import secrets
import time
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from respcache import selectors, services, stats
from respcache.models import ApiKey, Workload

pytestmark = pytest.mark.django_db


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Loads:
    """A load function that answers from ``answers`` and counts what it was asked."""

    def __init__(self, answers: dict[str, Any]) -> None:
        self.answers = answers
        self.asked: list[str] = []

    def __call__(self, key: str) -> Any:
        self.asked.append(key)
        return self.answers.get(key)


@pytest.fixture
def seconds(settings: Any) -> Any:
    def set_to(value: float) -> None:
        settings.RESPCACHE = {**settings.RESPCACHE, "LOCAL_CACHE_SECONDS": value}

    return set_to


# --- LocalCopies ------------------------------------------------------------------------------


def test_a_value_is_kept_for_local_cache_seconds_by_the_injected_clock(seconds: Any) -> None:
    seconds(5)
    clock, loads = Clock(), Loads({"a": "A"})
    copies: selectors.LocalCopies[str, str] = selectors.LocalCopies(timer=clock)
    assert copies.get_or_load("a", lambda: loads("a")) == "A"
    clock.now += 4.9
    assert copies.get_or_load("a", lambda: loads("a")) == "A"
    assert loads.asked == ["a"]
    clock.now += 0.1  # five seconds after it was read: gone
    assert copies.get_or_load("a", lambda: loads("a")) == "A"
    assert loads.asked == ["a", "a"]


def test_an_unknown_key_is_kept_too_and_expires_the_same_way(seconds: Any) -> None:
    seconds(5)
    clock, loads = Clock(), Loads({})
    copies: selectors.LocalCopies[str, str] = selectors.LocalCopies(timer=clock)
    assert copies.get_or_load("nope", lambda: loads("nope")) is None
    assert copies.get_or_load("nope", lambda: loads("nope")) is None
    assert loads.asked == ["nope"]
    clock.now += 5
    assert copies.get_or_load("nope", lambda: loads("nope")) is None
    assert loads.asked == ["nope", "nope"]


def test_zero_seconds_keeps_nothing(seconds: Any) -> None:
    seconds(0)
    loads = Loads({"a": "A"})
    copies: selectors.LocalCopies[str, str] = selectors.LocalCopies(timer=Clock())
    for _ in range(3):
        assert copies.get_or_load("a", lambda: loads("a")) == "A"
        assert copies.get_or_load("b", lambda: loads("b")) is None
    assert loads.asked == ["a", "b"] * 3
    assert len(copies) == 0


def test_a_flood_of_unknown_keys_does_not_push_out_the_known_ones(seconds: Any) -> None:
    seconds(60)
    answers = {f"valid-{i}": f"grant-{i}" for i in range(8)}
    loads = Loads(answers)
    copies: selectors.LocalCopies[str, str] = selectors.LocalCopies(maxsize=10, missing_maxsize=4, timer=Clock())
    for key in answers:
        copies.get_or_load(key, lambda key=key: loads(key))
    for i in range(1000):  # random keys, each read once
        key = f"random-{i}"
        assert copies.get_or_load(key, lambda key=key: loads(key)) is None
    loads.asked.clear()
    for key, grant in answers.items():
        assert copies.get_or_load(key, lambda key=key: loads(key)) == grant
    assert loads.asked == []  # every valid one still held
    assert len(copies) <= 10 + 4  # and memory stayed bounded


def test_known_keys_past_the_bound_push_out_the_least_recently_used(seconds: Any) -> None:
    seconds(60)
    loads = Loads({k: k.upper() for k in "abcd"})
    copies: selectors.LocalCopies[str, str] = selectors.LocalCopies(maxsize=3, timer=Clock())
    for key in "abc":
        copies.get_or_load(key, lambda key=key: loads(key))
    copies.get_or_load("a", lambda: loads("a"))  # "a" used again: "b" is now the oldest
    copies.get_or_load("d", lambda: loads("d"))
    loads.asked.clear()
    for key in "acd":
        copies.get_or_load(key, lambda key=key: loads(key))
    assert loads.asked == []
    copies.get_or_load("b", lambda: loads("b"))
    assert loads.asked == ["b"]


def test_a_load_that_overlaps_a_clear_is_not_kept(seconds: Any) -> None:
    """A key revoked while its grant was being read: the clear that follows the revocation
    must not be undone by the read that started before it."""
    seconds(60)
    copies: selectors.LocalCopies[str, str] = selectors.LocalCopies(timer=Clock())

    def load_then_revoke() -> str:
        copies.clear()  # the revocation lands while this read is in flight
        return "stale grant"

    assert copies.get_or_load("k", load_then_revoke) == "stale grant"
    assert copies.get_or_load("k", lambda: "fresh answer") == "fresh answer"


def test_a_changed_setting_applies_at_once(seconds: Any) -> None:
    seconds(60)
    clock, loads = Clock(), Loads({"a": "A"})
    copies: selectors.LocalCopies[str, str] = selectors.LocalCopies(timer=clock)
    copies.get_or_load("a", lambda: loads("a"))
    seconds(1)
    copies.get_or_load("a", lambda: loads("a"))  # a new lifetime: read again, kept 1 s
    clock.now += 1
    copies.get_or_load("a", lambda: loads("a"))
    assert loads.asked == ["a", "a", "a"]


# --- grants: bounded, and no writes ----------------------------------------------------------


def test_a_flood_of_random_keys_leaves_valid_grants_held(
    seconds: Any, make_key: Any, workload: Workload, monkeypatch: pytest.MonkeyPatch
) -> None:
    seconds(60)
    monkeypatch.setattr(selectors, "_grants", selectors.LocalCopies(maxsize=50, missing_maxsize=5))
    raw = make_key(workload)
    assert selectors.api_key_grant(raw) is not None
    for _ in range(40):
        assert selectors.api_key_grant(f"{secrets.token_hex(4)}.{secrets.token_hex(16)}") is None
    with CaptureQueriesContext(connection) as queries:
        grant = selectors.api_key_grant(raw)
    assert grant is not None and grant.workloads == frozenset({"intents"})
    assert queries.captured_queries == []


def test_reading_a_grant_writes_nothing(make_key: Any, workload: Workload) -> None:
    raw = make_key(workload)
    with CaptureQueriesContext(connection) as queries:
        assert selectors.api_key_grant(raw) is not None
    assert queries.captured_queries
    assert all(q["sql"].lstrip().upper().startswith("SELECT") for q in queries.captured_queries), [
        q["sql"] for q in queries.captured_queries
    ]
    assert ApiKey.objects.get().last_used_at is None


def test_a_key_use_is_written_at_most_once_per_local_cache_seconds(
    seconds: Any, make_key: Any, workload: Workload, monkeypatch: pytest.MonkeyPatch
) -> None:
    seconds(5)
    clock = Clock()
    monkeypatch.setattr(services.governance, "_key_use_written", selectors.LocalCopies(timer=clock))
    make_key(workload)
    key = ApiKey.objects.get()
    assert services.api_key_mark_used(key.pk) is True
    first = ApiKey.objects.get().last_used_at
    assert first is not None
    clock.now += 4.9
    with CaptureQueriesContext(connection) as queries:
        assert services.api_key_mark_used(key.pk) is False
    assert queries.captured_queries == []
    clock.now += 0.1
    assert services.api_key_mark_used(key.pk) is True
    assert ApiKey.objects.get().last_used_at >= first
    seconds(0)  # no local copy: every use is written, as every use reads the key
    assert services.api_key_mark_used(key.pk) is True
    assert services.api_key_mark_used(key.pk) is True


def test_a_call_with_a_key_records_its_use(api_key: str, workload: Workload) -> None:
    from rest_framework.test import APIClient

    response = APIClient().get("/api/workloads/", HTTP_X_API_KEY=api_key)
    assert response.status_code == 403  # not a managing key: refused, but it was used
    assert ApiKey.objects.get().last_used_at is not None


# --- numbers ---------------------------------------------------------------------------------


def test_metrics_numbers_are_the_stats_they_batch(make_workload: Any) -> None:
    now = time.time()
    for i, slug in enumerate(("a", "b", "c")):
        make_workload(slug)
        stats.count(slug, now, hit=i + 1, miss=2, upstream_calls=2, upstream_ms=30 * i)
        stats.count(slug, now - 7200, miss=1)  # outside the hour, inside all-time
    slugs = ["a", "b", "c"]
    numbers = selectors.workloads_metrics(slugs, "1h")
    assert numbers.all_time == stats.all_time(slugs)
    assert numbers.window == {slug: stats.totals(slug, "1h") for slug in slugs}
    assert [numbers.all_time[s]["miss"] for s in slugs] == [3, 3, 3]
    assert [numbers.window[s]["miss"] for s in slugs] == [2, 2, 2]
    assert selectors.workload_totals("b", "24h") == stats.totals("b", "24h")
    assert selectors.workload_totals("b", "24h")["miss"] == 3


def test_metrics_numbers_of_no_workload_and_of_a_bad_window(db: Any) -> None:
    assert selectors.workloads_metrics([], "1h") == selectors.MetricsNumbers(all_time={}, window={}, baseline={})
    with pytest.raises(ValueError, match="unknown window"):
        selectors.workloads_metrics(["a"], "2h")


def test_an_announced_change_reaches_a_processs_local_copy_at_once(workload: Any, settings: Any) -> None:
    """With a long local copy, a change made elsewhere (another process wrote the database and
    announced it) is read on the next call, not after LOCAL_CACHE_SECONDS."""
    import time as _time

    from respcache import locks, store
    from respcache.models import Workload

    settings.RESPCACHE = {**settings.RESPCACHE, "LOCAL_CACHE_SECONDS": 600}
    assert selectors.workload_policy("intents").enabled  # type: ignore[union-attr]
    hub = locks.hub()
    channel = store.full_key("respcache:policies")
    deadline = _time.monotonic() + 5
    while channel not in hub._confirmed and _time.monotonic() < deadline:
        _time.sleep(0.01)
    Workload.objects.filter(slug="intents").update(enabled=False)  # "another process"
    assert selectors.workload_policy("intents").enabled  # type: ignore[union-attr]  # still the copy
    store.announce_policies_changed()
    deadline = _time.monotonic() + 5
    while selectors.workload_policy("intents").enabled and _time.monotonic() < deadline:  # type: ignore[union-attr]
        _time.sleep(0.005)
    assert not selectors.workload_policy("intents").enabled  # type: ignore[union-attr]


def test_governance_announces_every_change(workload: Any, redis_db: Any) -> None:
    from respcache import services, store

    with locks_subscription(store.full_key("respcache:policies")) as heard:
        services.workload_set_enabled(workload, False, actor="test")
        services.workload_bump(workload, actor="test")
        services.api_key_revoke([])
        assert [heard.wait(_deadline()) for _ in range(3)] == [b"changed"] * 3


def locks_subscription(channel: str) -> Any:
    from respcache import locks

    return locks.Subscription(channel)


def _deadline() -> float:
    import time as _time

    return _time.monotonic() + 5
