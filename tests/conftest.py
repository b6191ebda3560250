"""Fixtures: a real Redis database flushed around each test, the fake Messages API, factories."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import anthropic
import pytest
from django_redis import get_redis_connection

from respcache import selectors, store, tally, upstream
from respcache.models import ApiKey, Workload
from respcache.services import api_key_create
from tests.fake_anthropic import FakeAnthropic

#: The cache tests: the ones the cluster pass runs again on a local Redis Cluster
#: (``RESPCACHE_TEST_CLUSTER=1 make test PYTEST_ARGS='-m cluster'``). Not in it: the tests of the
#: single-Redis embedded server, Sentinel, TLS and production settings, the fault harness, the
#: admin pages and the API's HTTP surface (they reach Redis only through the same store calls),
#: and test_counting.py (Redis round trips as one Redis sees them: a cluster pipeline is one per
#: shard; test_cluster.py counts a hit's commands per primary instead).
CLUSTER_MODULES = {
    "test_cluster.py",
    "test_service.py",
    "test_service_stream.py",
    "test_store.py",
    "test_locks.py",
    "test_singleflight.py",
    "test_pubsub.py",
    "test_stats.py",
    "test_metrics.py",
    "test_commands.py",
    "test_export_import.py",
    "test_explain.py",
    "test_shadow.py",
    "test_stampede.py",
    "test_counts.py",
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.name in CLUSTER_MODULES:
            item.add_marker(pytest.mark.cluster)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """The cluster pass: the hub stops listening, then the cluster stops (at exit otherwise,
    with the hub's thread still reconnecting to it)."""
    from tests import settings as test_settings

    if test_settings.TEST_CLUSTER is not None:
        from respcache import locks

        locks.hub().stop()
        test_settings.TEST_CLUSTER.stop()


@pytest.fixture(scope="session")
def local_cluster() -> Any:
    """The local Redis Cluster this test run started (tests/settings.py, RESPCACHE_TEST_CLUSTER=1):
    its nodes, primaries, PIDs; skips the test on a single Redis or a cluster not ours."""
    from tests import settings as test_settings

    if test_settings.TEST_CLUSTER is None:
        pytest.skip("needs the local Redis Cluster of the cluster pass (RESPCACHE_TEST_CLUSTER=1)")
    return test_settings.TEST_CLUSTER


@pytest.fixture(autouse=True)
def redis_db(settings: Any) -> Iterator[Any]:
    """The test Redis database, empty at the start of each test; local copies dropped too."""
    client = get_redis_connection("respcache")
    client.flushdb()
    store.breaker.reset()
    listening()
    selectors.clear_local_caches()
    tally.discard()
    yield client
    client.flushdb()
    selectors.clear_local_caches()


def listening() -> None:
    """This process hears announced policy changes (its first confirmation drops the local
    copies once: a test must not see that happen in its middle)."""
    import time

    selectors.listen_for_changes()
    deadline = time.monotonic() + 5
    while not selectors.listening_for_changes() and time.monotonic() < deadline:
        time.sleep(0.005)


@pytest.fixture(scope="session")
def fake_server() -> Iterator[FakeAnthropic]:
    server = FakeAnthropic().start()
    yield server
    server.stop()


@pytest.fixture
def fake(fake_server: FakeAnthropic, settings: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeAnthropic]:
    """respcache's upstream pointed at the fake Messages API, through the official SDK."""
    fake_server.reset()
    monkeypatch.setenv("ANTHROPIC_BASE_URL", fake_server.url)
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-server-key")
    settings.RESPCACHE = {**settings.RESPCACHE, "UPSTREAM": "anthropic"}
    upstream.reset_upstreams()
    yield fake_server
    fake_server.pause.set()
    fake_server.stream_gate.set()
    fake_server.salt = ""
    upstream.reset_upstreams()


@pytest.fixture
def make_workload(db: Any) -> Any:
    def make(slug: str = "intents", **fields: Any) -> Workload:
        return Workload.objects.create(slug=slug, **fields)

    return make


@pytest.fixture
def workload(make_workload: Any) -> Workload:
    return make_workload("intents")


@pytest.fixture
def make_key(db: Any) -> Any:
    def make(*workloads: Workload, name: str = "caller", managed: tuple[Workload, ...] = ()) -> str:
        _, raw = api_key_create(name=name, workloads=workloads, managed_workloads=managed)
        return raw

    return make


@pytest.fixture
def api_key(make_key: Any, workload: Workload) -> str:
    return make_key(workload)


@pytest.fixture
def sdk(live_server: Any, api_key: str) -> Any:
    """An official SDK client for ``/w/<slug>`` on the live server (no retries: tests count calls)."""

    def make(slug: str = "intents", key: str | None = None, **kwargs: Any) -> anthropic.Anthropic:
        return anthropic.Anthropic(
            base_url=f"{live_server.url}/w/{slug}", api_key=key or api_key, max_retries=0, **kwargs
        )

    return make


def publish(channel: str, message: bytes) -> int:
    """Publish as respcache does: an entry's channel with ``store.publish_command()`` (SPUBLISH on
    a cluster with sharded Pub/Sub, where its waiters listen), any other channel with PUBLISH.
    Returns how many subscribers got it."""
    from respcache.store import connection

    sharded = channel.startswith(connection.full_key(connection.CHANNEL_PREFIX))
    command = store.publish_command() if sharded else "PUBLISH"
    return int(store.client().execute_command(command, channel, message))


def on_every_node(command: str, *args: Any) -> list[Any]:
    """``command`` on the Redis, or on every node of a cluster: each node's reply."""
    from redis.cluster import RedisCluster

    client = store.client()
    if isinstance(client, RedisCluster):
        replies = client.execute_command(command, *args, target_nodes=RedisCluster.ALL_NODES)
        return list(replies.values()) if isinstance(replies, dict) else [replies]
    return [client.execute_command(command, *args)]


def kill_pubsub_connections() -> int:
    """CLIENT KILL TYPE pubsub on the Redis (every node of a cluster): how many were killed."""
    return sum(int(n) for n in on_every_node("CLIENT", "KILL", "TYPE", "pubsub"))


def pubsub_connections() -> int:
    """How many Pub/Sub connections the Redis (every node of a cluster) has now."""
    listings = on_every_node("CLIENT", "LIST", "TYPE", "pubsub")
    return sum(len((x.decode() if isinstance(x, bytes) else str(x)).strip().splitlines()) for x in listings)


def connected_clients() -> int:
    """Connected clients of the Redis (summed over every node of a cluster)."""
    from redis.cluster import RedisCluster

    client = store.client()
    if isinstance(client, RedisCluster):
        infos = client.info("clients", target_nodes=RedisCluster.ALL_NODES)
        return sum(int(info["connected_clients"]) for info in infos.values())
    return int(client.info("clients")["connected_clients"])


def subscribers(channel: str) -> int:
    """How many subscribe to ``channel``: PUBSUB NUMSUB, or on a cluster with sharded Pub/Sub
    and an entry channel, PUBSUB SHARDNUMSUB on the node of its slot."""
    from redis.cluster import RedisCluster

    from respcache.store import connection

    client = store.client()
    sharded = channel.startswith(connection.full_key(connection.CHANNEL_PREFIX))
    if isinstance(client, RedisCluster) and sharded and store.publish_command() == "SPUBLISH":
        node = client.get_node_from_key(channel)
        reply = client.get_redis_connection(node).execute_command("PUBSUB", "SHARDNUMSUB", channel)
    else:
        reply = client.execute_command("PUBSUB", "NUMSUB", channel)
    return int(reply[1])


def redis_down(caches: dict[str, Any]) -> dict[str, Any]:
    """``caches`` with the respcache alias pointed at a port where no Redis listens (failing in
    0.2 s, not the client's default timeouts): for fail-open and "Redis is down" tests."""
    alias = caches["respcache"]
    options = {**alias.get("OPTIONS", {}), "SOCKET_CONNECT_TIMEOUT": 0.2, "SOCKET_TIMEOUT": 0.2}
    return {**caches, "respcache": {**alias, "LOCATION": "redis://127.0.0.1:1/0", "OPTIONS": options}}


def ask(text: str = "password reset", **extra: Any) -> dict[str, Any]:
    """A Messages API request body."""
    body: dict[str, Any] = {
        "model": "claude-test-1",
        "max_tokens": 64,
        "messages": [{"role": "user", "content": text}],
    }
    body.update(extra)
    return body


__all__ = ["ApiKey", "ask", "os"]
