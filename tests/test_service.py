"""cached_message_create() on a real Redis with the fake Messages API as the upstream."""

from __future__ import annotations

import threading
import time
from typing import Any

import orjson
import pytest

from respcache import keys, locks, selectors, service, stats, store
from respcache.exceptions import InvalidRequest, UpstreamError
from respcache.models import Workload
from tests.conftest import ask

pytestmark = pytest.mark.django_db(transaction=True)


def policy(workload: Workload) -> selectors.Policy:
    selectors.clear_local_caches()
    found = selectors.workload_policy(workload.slug)
    assert found is not None
    return found


def call(workload: Workload, body: dict[str, Any], **kwargs: Any) -> service.CachedResult:
    return service.cached_message_create(policy=policy(workload), body=body, raw_body=orjson.dumps(body), **kwargs)


def names(workload: Workload, body: dict[str, Any]) -> service._Names:
    return service._Names.build(workload.slug, workload.key_version, keys.request_fingerprint(body))


def wait_for_subscribers(channel: str, n: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if locks.waiting(channel) >= n:
            return
        time.sleep(0.01)
    raise AssertionError(f"{n} waiters never subscribed")


def run_threads(n: int, target: Any) -> list[threading.Thread]:
    threads = [threading.Thread(target=target) for _ in range(n)]
    for t in threads:
        t.start()
    return threads


def test_miss_then_hit_with_age_from_the_clock(fake: Any, workload: Workload) -> None:
    first = call(workload, ask(), clock=lambda: 1000.0)
    later = call(workload, ask(), clock=lambda: 1042.9)
    assert (first.status, first.outcome, first.age) == ("miss", "miss", None)
    assert (later.status, later.age) == ("hit", 42)
    assert later.body == first.body
    assert later.fingerprint == first.fingerprint == keys.request_fingerprint(ask())


def test_too_deep_is_invalid_request(fake: Any, workload: Workload) -> None:
    deep: Any = 1
    for _ in range(300):
        deep = [deep]
    body = ask(x=deep)
    with pytest.raises(InvalidRequest):
        service.cached_message_create(policy=policy(workload), body=body, raw_body=b"(not read)")
    assert fake.message_calls() == []


def test_waiters_get_the_answer_when_it_is_written(fake: Any, make_workload: Any) -> None:
    workload = make_workload("w1", wait_max=30)
    body = ask("slow")
    fake.pause.clear()
    results: list[service.CachedResult] = []

    def go() -> None:
        results.append(call(workload, body))

    holder = run_threads(1, go)
    while not fake.message_calls():
        time.sleep(0.01)
    waiters = run_threads(5, go)
    wait_for_subscribers(names(workload, body).channel, 5)
    fake.pause.set()
    for t in holder + waiters:
        t.join(20)
    assert sorted(r.status for r in results) == ["miss"] + ["wait"] * 5
    assert len({r.body for r in results}) == 1
    assert len(fake.message_calls()) == 1
    totals = stats.totals("w1", "5m")
    assert totals["wait"] == 5
    # Every waiter that was woken counted how long after the write it woke.
    assert totals["wakes"] == 5
    assert sum(v for k, v in totals.counts.items() if k.startswith("wake_le_")) == 5
    assert stats.wake_percentile(totals.counts, 99) is not None


def test_waiters_are_released_at_once_with_the_holders_error(fake: Any, make_workload: Any) -> None:
    workload = make_workload("w2", wait_max=60)
    body = ask("[[status:529]] overloaded")
    fake.pause.clear()
    errors: list[UpstreamError] = []

    def go() -> None:
        try:
            call(workload, body)
        except UpstreamError as exc:
            errors.append(exc)

    holder = run_threads(1, go)
    while not fake.message_calls():
        time.sleep(0.01)
    waiters = run_threads(4, go)
    wait_for_subscribers(names(workload, body).channel, 4)
    fake.pause.set()
    for t in holder + waiters:
        t.join(15)  # far less than wait_max: they did not wait it out
    assert not any(t.is_alive() for t in holder + waiters)
    assert len(errors) == 5
    assert {e.status_code for e in errors} == {529}
    assert {orjson.loads(e.body())["error"]["type"] for e in errors} == {"overloaded_error"}
    assert len(fake.message_calls()) == 1
    assert store.client().exists(names(workload, body).lock) == 0
    assert store.client().exists(names(workload, body).entry) == 0  # errors are never stored


def test_waiter_falls_through_after_wait_max(fake: Any, make_workload: Any) -> None:
    workload = make_workload("w3", wait_max=0.2, lock_ttl=60)
    body = ask("held by a dead holder")
    locks.acquire(names(workload, body).lock, token="dead-holder", ttl_seconds=60)
    result = call(workload, body)
    assert (result.status, result.outcome) == ("miss", "fallthrough")
    assert len(fake.message_calls()) == 1
    assert call(workload, body).status == "hit"  # the fall-through answer was stored
    assert stats.totals("w3", "5m")["fallthrough"] == 1


def test_abandoned_lock_lets_a_waiter_take_over(fake: Any, make_workload: Any) -> None:
    workload = make_workload("w4", wait_max=30)
    body = ask("abandoned")
    n = names(workload, body)
    locks.acquire(n.lock, token="crashed", ttl_seconds=60)
    results: list[service.CachedResult] = []
    (waiter,) = run_threads(1, lambda: results.append(call(workload, body)))
    wait_for_subscribers(n.channel, 1)
    locks.release(n.lock, token="crashed", channel=n.channel, message=b"abandoned")
    waiter.join(15)
    assert [r.status for r in results] == ["miss"]
    assert len(fake.message_calls()) == 1


def test_refresh_skips_lookup_and_stores(fake: Any, workload: Workload) -> None:
    call(workload, ask())
    refreshed = call(workload, ask(), no_cache=True)
    assert (refreshed.status, refreshed.outcome) == ("refresh", "refresh")
    assert len(fake.message_calls()) == 2
    assert stats.totals("intents", "5m")["refresh"] == 1


def test_refresh_with_no_store_does_not_store(fake: Any, workload: Workload) -> None:
    call(workload, ask(), no_cache=True, no_store=True)
    assert call(workload, ask()).status == "miss"


def test_bump_makes_old_entries_unreachable_on_every_worker_at_once(fake: Any, workload: Workload) -> None:
    stale = policy(workload)  # another worker's local copy, taken before the bump
    call(workload, ask())
    service.workload_bump(workload, actor="test")
    result = service.cached_message_create(policy=stale, body=ask(), raw_body=orjson.dumps(ask()))
    assert result.status == "miss"  # the version in Redis wins over the stale copy


def test_redis_down_fails_open_and_counts_a_cache_error_later(fake: Any, workload: Workload, settings: Any) -> None:
    live_caches = settings.CACHES
    down = {**live_caches, "respcache": {**live_caches["respcache"], "LOCATION": "redis://127.0.0.1:1/0"}}
    settings.CACHES = down
    result = call(workload, ask())
    assert (result.status, result.outcome) == ("miss", "miss")
    assert orjson.loads(result.body)["type"] == "message"
    assert len(fake.message_calls()) == 1
    settings.CACHES = live_caches
    call(workload, ask("another"))  # Redis is back: the kept counts reach it with this batch
    totals = stats.totals("intents", "5m")
    assert totals["cache_error"] == 1
    assert totals["miss"] == 2


def test_upstream_errors_are_counted_and_not_stored(fake: Any, workload: Workload) -> None:
    for _ in range(2):
        with pytest.raises(UpstreamError):
            call(workload, ask("[[status:500]]"))
    totals = stats.totals("intents", "5m")
    assert totals["upstream_error"] == 2 and totals["miss"] == 2 and totals["written"] == 0


def test_is_cacheable_rules(workload: Workload) -> None:
    lax = policy(workload)
    strict = selectors.Policy(**{**lax.__dict__, "strict": True})
    off = selectors.Policy(**{**lax.__dict__, "enabled": False})
    assert service.is_cacheable(lax, {}) and service.is_cacheable(lax, {"temperature": 0})
    assert service.is_cacheable(lax, {"temperature": 0.0})
    assert not service.is_cacheable(lax, {"temperature": 0.2})
    assert not service.is_cacheable(lax, {"temperature": "0"})
    assert not service.is_cacheable(strict, {})
    assert service.is_cacheable(strict, {"temperature": 0})
    assert not service.is_cacheable(off, {"temperature": 0})


def test_bumps_at_once_give_two_increments(workload: Workload) -> None:
    barrier = threading.Barrier(2)
    versions: list[int] = []

    def bump() -> None:
        w = Workload.objects.get(pk=workload.pk)
        barrier.wait()
        versions.append(service.workload_bump(w, actor="test"))

    for t in run_threads(2, bump):
        t.join(10)
    workload.refresh_from_db()
    assert workload.key_version == 3
    assert sorted(versions) == [2, 3]
