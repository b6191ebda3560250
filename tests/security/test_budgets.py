"""Budgets per workload: upstream calls per minute and tokens per day, refused with 429
``rate_limit_error`` and ``retry-after`` for calls that would go upstream; hits and waits served.

Real Redis, real database, the official SDK against the fake Messages API; the last test runs
two gunicorn workers against one Redis.
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import anthropic
import orjson
import pytest
from django.core.management import CommandError, call_command
from django.test import Client
from django.urls import reverse

from respcache import selectors, services, stats, store
from respcache.exceptions import BudgetExceeded
from respcache.models import AuditEntry, Workload
from respcache.services import stampede
from tests.conftest import ask, redis_down
from tests.test_counting import in_process_sdk, redis_round_trips, status
from tests.test_gunicorn import Server, gunicorn
from tests.waiting import eventually

__all__ = ["gunicorn", "in_process_sdk"]

pytestmark = pytest.mark.django_db(transaction=True)


def fresh_minute(margin: float = 8.0) -> None:
    """Start a test's calls at least ``margin`` seconds before the UTC minute ends, so that they
    all fall in one budget window (windows are fixed; this is no timing assertion)."""
    into = time.time() % 60
    if into > 60 - margin:
        time.sleep(60 - into + 0.05)


def budgeted(workload: Workload, **limits: int) -> Workload:
    for name, value in limits.items():
        setattr(workload, name, value)
    workload.save()
    return workload


def policy_of(slug: str = "intents") -> selectors.Policy:
    found = selectors.workload_policy(slug)
    assert found is not None
    return found


def create(client: anthropic.Anthropic, text: str, **extra: Any) -> str:
    return str(client.messages.with_raw_response.create(**ask(text, **extra)).headers["x-respcache"])


def refused(client: anthropic.Anthropic, text: str, **extra: Any) -> anthropic.RateLimitError:
    with pytest.raises(anthropic.RateLimitError) as caught:
        client.messages.create(**ask(text, **extra))
    return caught.value


def assert_refusal(error: anthropic.RateLimitError, *, window_seconds: int) -> None:
    assert error.status_code == 429
    body = error.response.json()
    assert body["type"] == "error" and body["error"]["type"] == "rate_limit_error"
    assert "over its budget" in body["error"]["message"]
    assert 1 <= int(error.response.headers["retry-after"]) <= window_seconds


# --- the per-minute budget ---------------------------------------------------------------------


def test_the_call_past_the_minute_budget_gets_429_and_hits_are_still_served(
    sdk: Any, fake: Any, workload: Workload
) -> None:
    budgeted(workload, max_upstream_per_minute=3)
    client = sdk()
    fresh_minute()
    assert [create(client, f"question {i}") for i in range(3)] == ["miss"] * 3
    assert_refusal(refused(client, "question 3"), window_seconds=60)
    assert len(fake.message_calls()) == 3
    # Over budget, the cache keeps answering what it holds.
    assert [create(client, f"question {i}") for i in range(3)] == ["hit"] * 3
    assert_refusal(refused(client, "question 4"), window_seconds=60)
    assert len(fake.message_calls()) == 3
    minute = stats.totals("intents", "5m")
    assert (minute["miss"], minute["hit"], minute["budget_refused"], minute["upstream_calls"]) == (5, 3, 2, 3)


def test_a_refresh_and_a_bypass_spend_the_budget_too(sdk: Any, fake: Any, workload: Workload) -> None:
    budgeted(workload, max_upstream_per_minute=2)
    client = sdk()
    fresh_minute()
    assert create(client, "q") == "miss"
    raw = client.messages.with_raw_response.create(**ask("q"), extra_headers={"cache-control": "no-cache"})
    assert raw.headers["x-respcache"] == "refresh"
    assert_refusal(refused(client, "hot", extra_body={"temperature": 0.7}), window_seconds=60)
    assert create(client, "q") == "hit"
    assert len(fake.message_calls()) == 2
    assert stats.totals("intents", "5m")["bypass"] == 1


def test_zero_means_no_limit_and_costs_no_budget_key(sdk: Any, fake: Any, workload: Workload, redis_db: Any) -> None:
    assert (workload.max_upstream_per_minute, workload.max_tokens_per_day) == (0, 0)
    client = sdk()
    assert [create(client, f"question {i}") for i in range(8)] == ["miss"] * 8
    assert len(fake.message_calls()) == 8
    assert list(redis_db.scan_iter(match="*respcache:b:*")) == []
    assert stats.totals("intents", "5m")["budget_refused"] == 0


# --- the token budget --------------------------------------------------------------------------


def test_once_the_days_tokens_are_spent_misses_are_refused(sdk: Any, fake: Any, workload: Workload) -> None:
    budgeted(workload, max_tokens_per_day=35)
    client = sdk()
    first = client.messages.create(**ask("first"))
    windows = store.budgets.Windows.at("intents", time.time())
    spent = first.usage.input_tokens + first.usage.output_tokens
    assert 0 < spent < 35
    assert store.budgets.tokens_spent(windows) == spent
    second = client.messages.create(**ask("second"))
    assert store.budgets.tokens_spent(windows) == spent + second.usage.input_tokens + second.usage.output_tokens >= 35
    error = refused(client, "third")
    assert_refusal(error, window_seconds=86400)
    assert "upstream tokens per day" in error.response.json()["error"]["message"]
    assert create(client, "first") == "hit"
    assert len(fake.message_calls()) == 2


def test_a_stream_spends_its_tokens_and_is_refused_over_budget(sdk: Any, fake: Any, workload: Workload) -> None:
    budgeted(workload, max_tokens_per_day=1)
    client = sdk()
    with client.messages.stream(**ask("streamed")) as stream:
        message = stream.get_final_message()
    windows = store.budgets.Windows.at("intents", time.time())
    assert store.budgets.tokens_spent(windows) == message.usage.input_tokens + message.usage.output_tokens
    with pytest.raises(anthropic.RateLimitError) as caught:
        with client.messages.stream(**ask("another stream")) as stream:
            stream.get_final_message()
    assert_refusal(caught.value, window_seconds=86400)
    with client.messages.stream(**ask("streamed")) as stream:  # a hit, replayed
        assert stream.get_final_message().content[0].text == message.content[0].text
    assert len(fake.message_calls()) == 1


def test_count_tokens_is_not_budgeted(sdk: Any, fake: Any, workload: Workload) -> None:
    budgeted(workload, max_upstream_per_minute=1, max_tokens_per_day=1)
    client = sdk()
    fresh_minute()
    assert create(client, "spends the minute") == "miss"
    for i in range(3):
        assert client.messages.count_tokens(model="claude-test-1", messages=[ask(f"count {i}")["messages"][0]])
    refused(client, "another")


# --- stampedes: waits are served, fall-throughs are budgeted -----------------------------------


def run_together(callers: int, work: Any) -> tuple[list[Any], list[BaseException]]:
    results: list[Any] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    start = threading.Barrier(callers)

    def one() -> None:
        start.wait()
        try:
            result = work()
        except BaseException as exc:  # noqa: BLE001 - collected and asserted by the test
            with lock:
                errors.append(exc)
            return
        with lock:
            results.append(result)

    threads = [threading.Thread(target=one) for _ in range(callers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return results, errors


def test_waiters_on_a_holder_within_budget_are_served(fake: Any, workload: Workload) -> None:
    budgeted(workload, max_upstream_per_minute=1)
    fresh_minute()
    body = ask("a trending question")
    raw = orjson.dumps(body)
    policy = policy_of()
    results, errors = run_together(12, lambda: services.cached_message_create(policy=policy, body=body, raw_body=raw))
    assert errors == []
    assert sorted(r.status for r in results) == ["miss"] + ["wait"] * 11
    assert len(fake.message_calls()) == 1


def test_waiters_on_a_refused_holder_are_refused_with_it(fake: Any, workload: Workload) -> None:
    budgeted(workload, max_upstream_per_minute=1)
    fresh_minute()
    policy = policy_of()
    services.cached_message_create(policy=policy, body=ask("spends it"), raw_body=orjson.dumps(ask("spends it")))
    body = ask("a trending question")
    raw = orjson.dumps(body)
    results, errors = run_together(12, lambda: services.cached_message_create(policy=policy, body=body, raw_body=raw))
    assert results == []
    assert len(errors) == 12 and all(isinstance(e, BudgetExceeded) for e in errors), errors
    assert {e.headers()["retry-after"] for e in errors if isinstance(e, BudgetExceeded)} <= {
        str(s) for s in range(1, 61)
    }
    assert len(fake.message_calls()) == 1
    assert stats.totals("intents", "5m")["budget_refused"] == 12


def test_a_holders_refusal_reaches_its_waiters_as_a_refusal() -> None:
    """What a refused holder tells its waiters (its failure record too): a budget refusal with
    its retry-after, not an upstream error."""
    again = stampede.error_from_message(stampede.error_message(BudgetExceeded("over", retry_after=42)))
    assert isinstance(again, BudgetExceeded)
    assert (again.status_code, again.error_type, again.headers()) == (429, "rate_limit_error", {"retry-after": "42"})


def test_a_waiter_that_would_fall_through_is_held_to_the_budget(fake: Any, workload: Workload) -> None:
    budgeted(workload, max_upstream_per_minute=1, wait_max=0.2, lock_ttl=30)
    fresh_minute()
    policy = policy_of()
    body = ask("slow answer")
    raw = orjson.dumps(body)
    fake.pause.clear()  # the holder's upstream call hangs until released
    holder: list[Any] = []
    thread = threading.Thread(
        target=lambda: holder.append(services.cached_message_create(policy=policy, body=body, raw_body=raw))
    )
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not fake.message_calls() and time.monotonic() < deadline:
            time.sleep(0.01)
        with pytest.raises(BudgetExceeded):
            services.cached_message_create(policy=policy, body=body, raw_body=raw)
    finally:
        fake.pause.set()
        thread.join(30)
    assert [r.status for r in holder] == ["miss"]
    minute = stats.totals("intents", "5m")
    assert (minute["fallthrough"], minute["budget_refused"], minute["upstream_calls"]) == (1, 1, 1)


# --- fail-open, round trips ----------------------------------------------------------------------


def test_with_redis_down_the_budget_is_not_enforced(fake: Any, workload: Workload, settings: Any) -> None:
    budgeted(workload, max_upstream_per_minute=1, max_tokens_per_day=1)
    policy = policy_of()
    settings.CACHES = redis_down(settings.CACHES)
    answered = [
        services.cached_message_create(policy=policy, body=ask(f"q{i}"), raw_body=orjson.dumps(ask(f"q{i}")))
        for i in range(3)
    ]
    assert [r.status for r in answered] == ["miss"] * 3
    assert len(fake.message_calls()) == 3


def test_a_hit_on_a_budgeted_workload_is_still_one_round_trip(
    in_process_sdk: Any, fake: Any, workload: Workload, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    budgeted(workload, max_upstream_per_minute=100, max_tokens_per_day=1_000_000)
    settings.RESPCACHE = {**settings.RESPCACHE, "LOCAL_CACHE_SECONDS": 60}
    client = in_process_sdk()
    fresh_minute()
    assert status(client, ask()) == "miss"
    assert status(client, ask()) == "hit"
    with redis_round_trips(monkeypatch) as miss:
        assert status(client, ask("another question")) == "miss"
    with redis_round_trips(monkeypatch) as hits:
        assert [status(client, ask()) for _ in range(3)] == ["hit"] * 3
    assert hits.commands() == ["EVALSHA"] * 3
    # The miss: lookup, lock, re-read, the explainer's read of its shape index, the budget's
    # check, its tokens, and the write.
    assert miss.commands() == [
        "EVALSHA",
        "SET",
        "EVALSHA",
        "LRANGE",
        "EVALSHA",
        "INCRBY",
        "EVALSHA",
        "LPUSH",
    ], miss.commands()


# --- setting budgets: the command, the admin, and what is exported --------------------------------


def test_the_command_sets_budgets_with_audit(workload: Workload) -> None:
    out = io.StringIO()
    call_command(
        "respcache_workload", "intents", "--max-upstream-per-minute", "60", "--max-tokens-per-day", "100000", stdout=out
    )
    assert "max_upstream_per_minute=60 max_tokens_per_day=100000 " in out.getvalue()
    workload.refresh_from_db()
    assert (workload.max_upstream_per_minute, workload.max_tokens_per_day) == (60, 100000)
    entry = AuditEntry.objects.get()
    assert (entry.action, entry.before, entry.after) == (
        "edit",
        {"max_tokens_per_day": 0, "max_upstream_per_minute": 0},
        {"max_tokens_per_day": 100000, "max_upstream_per_minute": 60},
    )
    assert policy_of().max_upstream_per_minute == 60
    with pytest.raises(CommandError, match="max_tokens_per_day"):
        call_command("respcache_workload", "intents", "--max-tokens-per-day", "-1", stdout=io.StringIO())


def test_the_admin_edits_budgets_with_audit(admin_client: Client, workload: Workload) -> None:
    change = reverse("admin:respcache_workload_change", args=[workload.pk])
    page = admin_client.get(change).content.decode()
    assert 'name="max_upstream_per_minute"' in page and 'name="max_tokens_per_day"' in page
    form = {
        "enabled": "on",
        "ttl_seconds": workload.ttl_seconds,
        "lock_ttl": workload.lock_ttl,
        "wait_max": workload.wait_max,
        "max_upstream_per_minute": 5,
        "max_tokens_per_day": 777,
        "drift_threshold_points": workload.drift_threshold_points,
    }
    response = admin_client.post(change, form)
    assert response.status_code == 302, response.content
    workload.refresh_from_db()
    assert (workload.max_upstream_per_minute, workload.max_tokens_per_day) == (5, 777)
    entry = AuditEntry.objects.get()
    assert (entry.action, entry.after) == ("edit", {"max_tokens_per_day": 777, "max_upstream_per_minute": 5})


def test_refusals_are_counted_exported_and_charted(
    sdk: Any, fake: Any, workload: Workload, admin_client: Client
) -> None:
    budgeted(workload, max_upstream_per_minute=1)
    client = sdk()
    fresh_minute()
    create(client, "one")
    refused(client, "two")
    refused(client, "three")
    metrics = Client().get("/metrics").content.decode()
    assert 'respcache_budget_refused_total{workload="intents"} 2.0' in metrics
    out = io.StringIO()
    call_command("respcache_stats", "intents", "--window", "5m", "--json", stdout=out)
    assert '"budget_refused": 2' in out.getvalue().replace('":2', '": 2')
    page = admin_client.get(reverse("admin:respcache_workload_stats", args=[workload.pk])).content.decode()
    assert "refused by the budget" in page
    assert "#f9a825" in page  # the series' bars are drawn


# --- two workers, one Redis ----------------------------------------------------------------------


@pytest.fixture
def upstream_for_servers(fake: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Servers started after this call the fake Messages API (the env is read at their start)."""
    monkeypatch.setenv("RESPCACHE_TEST_UPSTREAM", "anthropic")
    yield fake


def test_budgets_hold_across_two_workers(
    upstream_for_servers: Any, gunicorn: Server, make_workload: Any, make_key: Any
) -> None:
    fake = upstream_for_servers
    key = make_key(make_workload("intents", max_upstream_per_minute=5))
    fresh_minute(margin=20)
    minute = int(time.time()) // 60

    def post(i: int) -> int:
        response = gunicorn.post(
            "/w/intents/v1/messages", content=orjson.dumps(ask(f"burst {i}")), headers={"x-api-key": key}
        )
        assert response.status_code in (200, 429), response.text
        return response.status_code

    with ThreadPoolExecutor(max_workers=12) as pool:
        codes = list(pool.map(post, range(40)))
    assert int(time.time()) // 60 == minute, "the burst straddled a minute: rerun"
    workers = {e["pid"] for e in gunicorn.entries() if e["path"].startswith("/w/")}
    assert len(workers) == 2, "the burst should have reached both workers"
    assert codes.count(200) == 5 and codes.count(429) == 35
    assert len(fake.message_calls()) == 5
    eventually(lambda: stats.totals("intents", "5m")["budget_refused"], 35)  # flushed within a second
