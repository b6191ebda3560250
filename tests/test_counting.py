"""What a call costs, counted exactly: database queries and Redis round trips per hit (through
the official SDK, in process), upstream calls per stampede. Counts, never timings."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import anthropic
import httpx2 as httpx
import orjson
import pytest
from django.core.handlers.wsgi import WSGIHandler
from django.db import connection
from django.test.utils import CaptureQueriesContext
from redis.connection import AbstractConnection

from respcache import selectors, services, stats, tally
from respcache.models import Workload
from tests.conftest import ask

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def in_process_sdk(api_key: str) -> Any:
    """The official SDK calling the service in this thread (WSGI, no socket), so that the
    queries and Redis commands it causes are the ones this thread counts."""

    def make(slug: str = "intents") -> anthropic.Anthropic:
        transport = httpx.WSGITransport(app=WSGIHandler())
        return anthropic.Anthropic(
            base_url=f"http://testserver/w/{slug}",
            api_key=api_key,
            max_retries=0,
            http_client=httpx.Client(transport=transport, base_url="http://testserver"),
        )

    return make


def status(client: anthropic.Anthropic, body: dict[str, Any]) -> str:
    return str(client.messages.with_raw_response.create(**body).headers["x-respcache"])


@dataclass
class RoundTrips:
    """Redis round trips sent by this process: one per command, one per pipeline."""

    sent: list[bytes] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.sent)

    def commands(self) -> list[str]:
        """The first command of each round trip (``EVALSHA``, ``GET``, …), for messages."""
        names = []
        for packed in self.sent:
            parts = packed.split(b"\r\n")
            names.append(parts[2].decode(errors="replace").upper() if len(parts) > 2 else "?")
        return names


@contextmanager
def redis_round_trips(monkeypatch: pytest.MonkeyPatch) -> Iterator[RoundTrips]:
    """Count what redis-py writes to its sockets. Every command, pipeline and Pub/Sub call goes
    through ``send_packed_command``; the real one still runs: nothing is faked."""
    trips = RoundTrips()
    real = AbstractConnection.send_packed_command

    def counted(self: AbstractConnection, command: Any, check_health: bool = True) -> None:
        chunks = [command] if isinstance(command, bytes | str) else list(command)
        trips.sent.append(b"".join(c.encode() if isinstance(c, str) else bytes(c) for c in chunks))
        real(self, command, check_health)

    with monkeypatch.context() as patch:
        patch.setattr(AbstractConnection, "send_packed_command", counted)
        yield trips


def test_hit_makes_no_database_query_within_the_local_copy_lifetime(
    in_process_sdk: Any, fake: Any, settings: Any
) -> None:
    settings.RESPCACHE = {**settings.RESPCACHE, "LOCAL_CACHE_SECONDS": 60}
    client = in_process_sdk()
    assert status(client, ask()) == "miss"
    assert status(client, ask()) == "hit"  # steady state: policy and key are held locally
    with CaptureQueriesContext(connection) as queries:
        statuses = [status(client, ask()) for _ in range(5)]
    assert statuses == ["hit"] * 5
    assert [q["sql"] for q in queries.captured_queries] == []


def test_without_a_local_copy_every_hit_reads_policy_and_key(in_process_sdk: Any, fake: Any) -> None:
    """The same count with LOCAL_CACHE_SECONDS = 0 (the tests' default): the queries the local
    copy saves are there, so the zero above is measured, not vacuous."""
    client = in_process_sdk()
    status(client, ask())
    with CaptureQueriesContext(connection) as queries:
        assert status(client, ask()) == "hit"
    assert len(queries.captured_queries) >= 2


def test_hit_costs_at_most_two_redis_round_trips(
    in_process_sdk: Any, fake: Any, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings.RESPCACHE = {**settings.RESPCACHE, "LOCAL_CACHE_SECONDS": 60}
    client = in_process_sdk()
    status(client, ask())
    status(client, ask())  # the lookup script is loaded in Redis now
    with redis_round_trips(monkeypatch) as miss:
        assert status(client, ask("another question")) == "miss"
    with redis_round_trips(monkeypatch) as hits:
        assert [status(client, ask()) for _ in range(3)] == ["hit"] * 3
    # A miss: the lookup, the lock, the re-read under it, the miss explainer's read of the
    # request's shape index, the write (entry, meta, notes, lock release, wake-up: one slot) and
    # the push onto the shape index (its own slot; LPUSH, LTRIM, PEXPIRE in one pipeline) ...
    assert miss.commands() == ["EVALSHA", "SET", "EVALSHA", "LRANGE", "EVALSHA", "LPUSH"], miss.commands()
    # ... and a hit is its lookup alone: the counts wait in the process for the next flush.
    assert hits.commands() == ["EVALSHA"] * 3, hits.commands()
    assert tally.pending(), "the hits were counted in the process"


@pytest.mark.parametrize("callers", [32, 200])
def test_stampede_of_many_callers_makes_one_upstream_call(fake: Any, workload: Workload, callers: int) -> None:
    """N callers miss one cold key together. The upstream holds its answer until every caller
    but the lock holder is subscribed to the key's channel (counted in Redis, not timed), so
    all of them are waiting when the answer is written."""
    policy = selectors.workload_policy(workload.slug)
    assert policy is not None
    body = ask("a trending question")
    raw = orjson.dumps(body)
    fake.pause.clear()
    results: list[services.CachedResult] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    start = threading.Barrier(callers)

    def call() -> None:
        start.wait()
        try:
            result = services.cached_message_create(policy=policy, body=body, raw_body=raw)
        except BaseException as exc:  # noqa: BLE001 - collected and asserted below
            with lock:
                errors.append(exc)
            return
        with lock:
            results.append(result)

    threads = [threading.Thread(target=call) for _ in range(callers)]
    for thread in threads:
        thread.start()
    try:
        wait_for_subscribers(callers - 1, fake, timeout=30)
    finally:
        fake.pause.set()
    for thread in threads:
        thread.join(30)

    assert errors == []
    assert len(fake.message_calls()) == 1
    assert sorted(r.status for r in results) == ["miss"] + ["wait"] * (callers - 1)
    assert len({r.body for r in results}) == 1
    totals = stats.totals(workload.slug, "5m")
    assert (totals["miss"], totals["wait"], totals["upstream_calls"]) == (1, callers - 1, 1)


def wait_for_subscribers(expected: int, fake: Any, *, timeout: float) -> None:
    """Block until ``expected`` callers are subscribed to respcache channels, or until a second
    caller reached the upstream (then the count below fails at once), or ``timeout``."""
    from respcache import keys, locks, store

    channel = store.full_key(
        keys.channel_name(
            keys.entry_key(
                workload="intents", version=1, fingerprint=keys.request_fingerprint(ask("a trending question"))
            )
        )
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        # Waiters share their process's one Pub/Sub connection: count them in the process.
        if locks.waiting(channel) >= expected or len(fake.message_calls()) > 1:
            return
        time.sleep(0.01)
    raise AssertionError(f"only {locks.waiting(channel)} of {expected} callers subscribed within {timeout}s")


# --- readers: every workload's numbers in one round trip ----------------------------------------


def _workloads_with_numbers(how_many: int) -> list[str]:
    """``how_many`` workloads, each with counts in its buckets and all-time totals (each its own)."""
    slugs = [f"w{i:02d}" for i in range(how_many)]
    now = time.time()
    for i, slug in enumerate(slugs):
        Workload.objects.create(slug=slug)
        stats.count(slug, now, hit=i + 1, miss=1)
    return slugs


def _metrics(slugs: list[str]) -> None:
    from django.test import Client
    from prometheus_client.parser import text_string_to_metric_families

    response = Client().get("/metrics")
    assert response.status_code == 200
    samples = {
        (s.name, s.labels.get("workload"), s.labels.get("outcome"), s.labels.get("window")): s.value
        for family in text_string_to_metric_families(response.content.decode())
        for s in family.samples
    }
    assert samples[("respcache_redis_up", None, None, None)] == 1
    for i, slug in enumerate(slugs):  # all-time totals and the window's gauges, each workload's own
        assert samples[("respcache_requests_total", slug, "hit", None)] == i + 1
        assert samples[("respcache_hit_rate", slug, None, "1h")] == (i + 1) / (i + 2)


def _management_list(slugs: list[str]) -> None:
    from django.contrib.auth.models import User
    from rest_framework.test import APIClient

    client = APIClient()
    staff, _ = User.objects.get_or_create(username="staff", defaults={"is_staff": True})
    client.force_authenticate(staff)
    response = client.get("/api/workloads/?window=5m")
    assert response.status_code == 200, response.content
    assert {w["slug"]: w["stats"]["hit"] for w in response.json()} == {s: i + 1 for i, s in enumerate(slugs)}


def _stats_command(slugs: list[str]) -> None:
    import io
    import json

    from django.core.management import call_command

    out = io.StringIO()
    call_command("respcache_stats", "--json", "--window", "24h", stdout=out)
    assert {row["workload"]: row["hit"] for row in json.loads(out.getvalue())} == {
        s: i + 1 for i, s in enumerate(slugs)
    }


@pytest.mark.parametrize("reader", [_metrics, _management_list, _stats_command], ids=lambda r: r.__name__)
def test_readers_read_every_workloads_numbers_in_one_round_trip(
    reader: Any, monkeypatch: pytest.MonkeyPatch, redis_db: Any
) -> None:
    """/metrics, the management API's list and respcache_stats: one Redis round trip for the
    numbers of 1 workload and of 20 (one pipeline), not one per workload."""
    trips = {}
    for how_many in (1, 20):
        Workload.objects.all().delete()
        redis_db.flushdb()
        slugs = _workloads_with_numbers(how_many)
        tally.flush()  # what this process counted: a reader would flush it first (one more trip)
        with redis_round_trips(monkeypatch) as counted:
            reader(slugs)
        trips[how_many] = counted.commands()
    # The management API's throttle reads and writes its history first, once per request.
    expected = ["GET", "SET", "HGETALL"] if reader is _management_list else ["HGETALL"]
    assert trips[1] == trips[20] == expected, trips
