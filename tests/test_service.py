"""cached_message_create() on a real Redis with the fake Messages API as the upstream."""

from __future__ import annotations

import threading
import time
from typing import Any

import orjson
import pytest

from respcache import keys, locks, selectors, services, stats, store
from respcache.exceptions import InvalidRequest, UpstreamError
from respcache.models import Workload
from respcache.services import calls, stampede
from tests.conftest import ask, publish, redis_down

pytestmark = pytest.mark.django_db(transaction=True)


def policy(workload: Workload) -> selectors.Policy:
    selectors.clear_local_caches()
    found = selectors.workload_policy(workload.slug)
    assert found is not None
    return found


def call(workload: Workload, body: dict[str, Any], **kwargs: Any) -> services.CachedResult:
    return services.cached_message_create(policy=policy(workload), body=body, raw_body=orjson.dumps(body), **kwargs)


def names(workload: Workload, body: dict[str, Any]) -> stampede.Names:
    return stampede.Names.build(workload.slug, workload.key_version, keys.request_fingerprint(body))


def wait_for_subscribers(channel: str, n: int, timeout: float = 10) -> None:
    """Until ``n`` callers are blocked waiting on ``channel`` (subscribed, read the entry, found
    the lock taken): a write now wakes each of them, none can find it on its own first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if locks.parked(channel) >= n:
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
        services.cached_message_create(policy=policy(workload), body=body, raw_body=b"(not read)")
    assert fake.message_calls() == []


def test_waiters_get_the_answer_when_it_is_written(fake: Any, make_workload: Any) -> None:
    workload = make_workload("w1", wait_max=30)
    body = ask("slow")
    fake.pause.clear()
    results: list[services.CachedResult] = []

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


def _hold_and_wait(
    workload: Workload, body: dict[str, Any], n: int
) -> tuple[stampede.Names, list[Any], list[threading.Thread]]:
    """Hold the key's lock as a stand-in holder and start ``n`` callers that must wait on it."""
    n_ = names(workload, body)
    assert locks.acquire(n_.lock, token="stand-in", ttl_seconds=30)
    results: list[Any] = []
    threads = run_threads(n, lambda: results.append(call(workload, body)))
    wait_for_subscribers(n_.channel, n)
    return n_, results, threads


def test_waiters_answer_from_the_record_the_write_publishes(fake: Any, make_workload: Any, redis_db: Any) -> None:
    """The write's message carries the record: waiters answer from it, without reading the entry
    back (here there is no entry to read: only the message), and still count their read."""
    workload = make_workload("wmsg", wait_max=30)
    body = ask("delivered")
    n_, results, threads = _hold_and_wait(workload, body, 3)
    message = b'{"type":"message","usage":{"input_tokens":3,"output_tokens":4}}'
    record = store.encode_record(message, stored_at=time.time(), model="m")
    assert store.ok_message(record) == b"ok" + record
    assert publish(n_.channel, store.ok_message(record)) >= 1
    for t in threads:
        t.join(20)
    assert [r.status for r in results] == ["wait"] * 3
    assert {r.body for r in results} == {message}
    assert store.client().get(n_.entry) is None  # nothing was stored: the answer came in the message
    totals = stats.totals("wmsg", "5m")
    assert (totals["wait"], totals["wakes"]) == (3, 3)
    assert fake.message_calls() == []


def test_a_bare_ok_makes_waiters_read_the_entry(fake: Any, make_workload: Any, redis_db: Any) -> None:
    """``ok`` without a record (a record too large to publish, or an older writer): read it."""
    workload = make_workload("wbare", wait_max=30)
    body = ask("bare ok")
    n_, results, threads = _hold_and_wait(workload, body, 2)
    message = b'{"type":"message","usage":{"input_tokens":3,"output_tokens":4}}'
    store.client().set(n_.entry, store.encode_record(message, stored_at=time.time(), model="m"), px=60_000)
    publish(n_.channel, b"ok")
    for t in threads:
        t.join(20)
    assert [r.status for r in results] == ["wait"] * 2 and {r.body for r in results} == {message}
    totals = stats.totals("wbare", "5m")
    assert (totals["wait"], totals["wakes"]) == (2, 2)


def test_records_too_large_to_publish_are_announced_bare() -> None:
    small = b"RC\x01\x00" + b"x" * 10
    large = b"RC\x01\x00" + b"x" * store.PUBLISH_RECORD_MAX_BYTES
    assert store.ok_message(small) == b"ok" + small and store.ok_message(large) == b"ok"
    assert store.record_of(b"ok") is None and store.record_of(b"abandoned") is None


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
    results: list[services.CachedResult] = []
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
    services.workload_bump(workload, actor="test")
    result = services.cached_message_create(policy=stale, body=ask(), raw_body=orjson.dumps(ask()))
    assert result.status == "miss"  # the version in Redis wins over the stale copy


def test_redis_down_fails_open_and_counts_a_cache_error_later(fake: Any, workload: Workload, settings: Any) -> None:
    live_caches = settings.CACHES
    settings.CACHES = redis_down(live_caches)
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
    assert calls.is_cacheable(lax, {}) and calls.is_cacheable(lax, {"temperature": 0})
    assert calls.is_cacheable(lax, {"temperature": 0.0})
    assert not calls.is_cacheable(lax, {"temperature": 0.2})
    assert not calls.is_cacheable(lax, {"temperature": "0"})
    assert not calls.is_cacheable(strict, {})
    assert calls.is_cacheable(strict, {"temperature": 0})
    assert not calls.is_cacheable(off, {"temperature": 0})


def test_bumps_at_once_give_two_increments(workload: Workload) -> None:
    barrier = threading.Barrier(2)
    versions: list[int] = []

    def bump() -> None:
        w = Workload.objects.get(pk=workload.pk)
        barrier.wait()
        versions.append(services.workload_bump(w, actor="test"))

    for t in run_threads(2, bump):
        t.join(10)
    workload.refresh_from_db()
    assert workload.key_version == 3
    assert sorted(versions) == [2, 3]


def test_a_failed_write_still_counts_the_call_and_a_cache_error(
    fake: Any, workload: Workload, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A miss's counters ride in the write; when the write fails (here: refused, with Redis
    still up for counters) they are counted on their own, with a cache error."""
    from respcache.exceptions import CacheUnavailable

    def unavailable(**kwargs: Any) -> bool:
        raise CacheUnavailable("Redis went away")

    with monkeypatch.context() as patch:
        patch.setattr(store, "write", unavailable)
        assert call(workload, ask("not stored")).status == "miss"
    totals = stats.totals("intents", "5m")
    assert (totals["miss"], totals["upstream_calls"], totals["cache_error"], totals["written"]) == (1, 1, 1, 0)
    assert call(workload, ask("stored")).status == "miss"
    totals = stats.totals("intents", "5m")
    assert (totals["miss"], totals["upstream_calls"], totals["cache_error"], totals["written"]) == (2, 2, 1, 1)


def test_redis_down_a_refresh_is_counted_as_a_refresh(fake: Any, workload: Workload, settings: Any) -> None:
    """Cache-Control: no-cache while Redis is down: answered from the upstream, counted as what
    the caller asked for (refresh) with a cache error, not as a miss."""
    live_caches = settings.CACHES
    settings.CACHES = redis_down(live_caches)
    result = call(workload, ask(), no_cache=True)
    assert (result.status, result.outcome) == ("refresh", "refresh")
    settings.CACHES = live_caches
    call(workload, ask("another"))  # Redis is back: the kept counts reach it with this batch
    totals = stats.totals("intents", "5m")
    assert (totals["refresh"], totals["cache_error"], totals["miss"]) == (1, 1, 1)


def test_a_failed_upstream_call_counts_its_time(fake: Any, workload: Workload) -> None:
    """upstream_ms / upstream_calls is the mean latency: a failed call adds its time too."""
    with pytest.raises(UpstreamError):
        call(workload, ask("[[delay:0.05]] [[status:500]] slow and failing"))
    totals = stats.totals("intents", "5m")
    assert (totals["upstream_calls"], totals["upstream_error"]) == (1, 1)
    assert totals["upstream_ms"] >= 40


RECORDED_MESSAGE = b'{"type":"message","usage":{"input_tokens":3,"output_tokens":4}}'


def test_a_waiter_that_takes_a_lock_freed_with_the_answer_in_a_message_answers_from_it(
    fake: Any, make_workload: Any, monkeypatch: Any
) -> None:
    """A holder that could not store its answer frees its lock and publishes the answer. A waiter
    that took the lock in that instant (no entry to find) answers from the message, passes it on
    to the other waiters, and asks nobody."""
    workload = make_workload("wtake", wait_max=30)
    body = ask("takeover")
    n_ = names(workload, body)
    assert locks.acquire(n_.lock, token="stand-in", ttl_seconds=30)
    real_take_over = locks.take_over

    def take_over_after_the_handover(**kw: Any) -> tuple[str, bytes]:
        if locks.waiting(n_.channel) >= 1 and store.client().get(n_.lock) == b"stand-in":
            store.client().delete(n_.lock)  # the holder let go, the answer in its message only
            record = store.encode_record(RECORDED_MESSAGE, stored_at=time.time(), model="m")
            publish(n_.channel, store.ok_message(record))
            time.sleep(0.2)  # the listener hands it to this waiter
        return real_take_over(**kw)

    monkeypatch.setattr(locks, "take_over", take_over_after_the_handover)
    result = call(workload, body)
    assert (result.status, result.body) == ("wait", RECORDED_MESSAGE)
    assert fake.message_calls() == []
    assert stats.totals("wtake", "5m")["wakes"] == 1
    assert store.client().exists(n_.lock) == 0  # the lock it took, given back


def test_wake_time_is_the_listeners_handover_not_the_callers_clock(
    fake: Any, make_workload: Any, monkeypatch: Any
) -> None:
    workload = make_workload("wclock", wait_max=30)
    body = ask("wake clock")
    n_ = names(workload, body)
    assert locks.acquire(n_.lock, token="stand-in", ttl_seconds=30)
    seen: list[float] = []
    real = stats.wake_fields
    monkeypatch.setattr(stats, "wake_fields", lambda ms: seen.append(ms) or real(ms))
    results: list[Any] = []
    t = threading.Thread(target=lambda: results.append(call(workload, body, clock=lambda: time.time() + 5)))
    t.start()
    wait_for_subscribers(n_.channel, 1)
    record = store.encode_record(RECORDED_MESSAGE, stored_at=time.time(), model="m")
    publish(n_.channel, store.ok_message(record))
    t.join(20)
    assert results[0].status == "wait"
    assert len(seen) == 1 and seen[0] < 1000  # the caller's clock is 5 s ahead: not used for the wake


def test_redis_down_identical_concurrent_calls_share_one_upstream_call(
    fake: Any, workload: Workload, settings: Any
) -> None:
    """No Redis, no lock: within one process a stampede still makes one upstream call, and
    every caller gets its answer (each counted as a miss with a cache error)."""
    from respcache.services import calls

    live_caches = settings.CACHES
    settings.CACHES = redis_down(live_caches)
    the_policy = policy(workload)
    body = ask("redis down stampede")
    fake.pause.clear()
    results: list[services.CachedResult] = []
    threads = [
        threading.Thread(
            target=lambda: results.append(
                services.cached_message_create(policy=the_policy, body=body, raw_body=orjson.dumps(body))
            )
        )
        for _ in range(10)
    ]
    for t in threads:
        t.start()
    fingerprint = keys.request_fingerprint(body)
    key = ("Call", "intents", fingerprint, "miss")
    deadline = time.monotonic() + 10
    while calls._without_cache.in_flight(key) < 10 and time.monotonic() < deadline:
        time.sleep(0.01)
    fake.pause.set()
    for t in threads:
        t.join(20)
    assert len(results) == 10 and {r.status for r in results} == {"miss"}
    assert len({r.body for r in results}) == 1
    assert len(fake.message_calls()) == 1
    settings.CACHES = live_caches
    call(workload, ask("redis is back"))  # the kept counts reach Redis with this one
    totals = stats.totals("intents", "5m")
    assert (totals["miss"], totals["cache_error"], totals["upstream_calls"]) == (11, 10, 2)


@pytest.mark.parametrize(
    "record",
    [
        pytest.param(b"RC\x09\x00" + b'{"stored_at":1,"model":"m"}\n{}', id="another schema"),
        pytest.param(b"RC\x01\x02" + b"\xff\xff\x00\x00 not lz4 at all", id="damaged payload"),
    ],
)
def test_an_unreadable_record_counts_as_a_miss_not_a_hit(
    fake: Any, workload: Workload, record: bytes, redis_db: Any
) -> None:
    """A record this release cannot read is a miss in the numbers too: the lookup script does
    not count another schema, and a damaged payload's counted read is taken back."""
    body = ask("unreadable record")
    n_ = names(workload, body)
    redis_db.set(n_.entry, record, px=60_000)
    redis_db.hset(n_.meta, mapping={"reads": 0, "in": 7, "out": 9})
    result = call(workload, body)
    assert (result.status, result.outcome) == ("miss", "miss")
    assert len(fake.message_calls()) == 1
    totals = stats.totals("intents", "5m")
    assert (totals["hit"], totals["wait"], totals["miss"]) == (0, 0, 1)
    assert (totals["saved_in"], totals["saved_out"]) == (0, 0)
