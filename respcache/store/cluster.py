"""Redis Cluster through django-redis: a client class whose connection is redis-py's RedisCluster.

django-redis has no cluster client (7.x). This one is its ``DefaultClient`` with ``connect()``
answering one shared ``redis.cluster.RedisCluster`` per process and cache location: redis-py
routes each command to the primary of its key's slot, follows MOVED and ASK, refreshes its slot
map after a failover and reloads a script on NOSCRIPT. No sharding of ours. Configure it as::

    CACHES["respcache"] = {
        "BACKEND": "django_redis.cache.RedisCache",
        # The startup nodes; rediss:// for TLS (every node the same scheme); a password in the
        # URL or in OPTIONS["PASSWORD"]. Any one reachable node is enough to find the others.
        "LOCATION": "redis://10.0.0.1:6379,redis://10.0.0.2:6379",
        "OPTIONS": {"CLIENT_CLASS": "respcache.store.cluster.ClusterClient", ...},
    }

The OPTIONS a single Redis takes apply to every node: PASSWORD, USERNAME, SOCKET_TIMEOUT,
SOCKET_CONNECT_TIMEOUT, CONNECTION_POOL_CLASS (a pool per node) and CONNECTION_POOL_KWARGS
(``max_connections`` per node, the blocking pool's ``timeout``, ``ssl_*``). Two more:
``CLUSTER_RETRIES`` (1 by default: how many times redis-py retries a command after a connection
error, a timeout or CLUSTERDOWN, each after refreshing its slot map; kept low so that a call
fails open fast while a primary is down) and ``CLUSTER_KWARGS`` (passed to RedisCluster as is).

What the app uses from django-redis works here: get/set/add/delete/incr/touch/ttl (one key each),
get_many (MGET per slot), set_many and delete_many (pipelined or split by slot), iter_keys and
delete_pattern (SCAN on every primary: redis-py's RedisCluster.scan_iter keeps a cursor per
primary), clear (FLUSHDB on every primary), make_key/make_pattern, and the raw client's
register_script (EVALSHA routed by the script's first key; on NOSCRIPT, after a failover to a
replica that never loaded it, redis-py's Script loads it on every primary and runs it again).
A key prefix must not contain "{" or "}": it would become the hash tag of every key (system
check respcache.E011).
"""

from __future__ import annotations

import os
import threading
from typing import Any
from urllib.parse import unquote, urlsplit

from django.utils.module_loading import import_string
from django_redis.client import DefaultClient
from django_redis.exceptions import ConnectionInterrupted
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode, ClusterPipeline, RedisCluster
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException, RedisError, SlotNotCoveredError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

#: One RedisCluster per (process, location, options): Django makes a cache client per thread
#: (and django-redis a client object per cache object), but each RedisCluster keeps a
#: connection pool per node and its own slot map, so the process shares one, as django-redis
#: shares a pool per URL.
_clusters: dict[tuple[int, str, str], RespcacheCluster] = {}
_clusters_lock = threading.Lock()

#: CONNECTION_POOL_KWARGS that RedisCluster passes on to every node's pool (others are dropped
#: by redis-py, e.g. health_check_interval).
_NODE_KWARGS = (
    "max_connections",
    "timeout",
    "ssl_ca_certs",
    "ssl_ca_data",
    "ssl_ca_path",
    "ssl_certfile",
    "ssl_keyfile",
    "ssl_password",
    "ssl_cert_reqs",
    "ssl_check_hostname",
    "socket_keepalive",
    "retry_on_timeout",
    "client_name",
)


class ClusterUnreachable(RedisConnectionError):
    """No node of the cluster answers, or a slot has no node: redis-py says it with its own
    RedisClusterException, which is no RedisError; as a ConnectionError, whoever fails open on
    an unreachable Redis (respcache's guard, the sign-in guard, django-redis) does so here too."""


class RespcacheCluster(RedisCluster):
    """RedisCluster whose "cannot reach the cluster" errors are ConnectionErrors."""

    def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().execute_command(*args, **kwargs)  # type: ignore[no-untyped-call]
        except RedisClusterException as exc:
            if unreachable(exc):
                raise ClusterUnreachable(str(exc)) from exc
            raise  # keys of one command on several slots, a command the cluster client lacks: a bug

    def pipeline(self, transaction: Any = None, shard_hint: Any = None) -> Any:
        pipe = super().pipeline(transaction, shard_hint)  # type: ignore[no-untyped-call]
        pipe.__class__ = RespcacheClusterPipeline  # the same object, with EVAL and EVALSHA queued
        return pipe


class RespcacheClusterPipeline(ClusterPipeline):
    """redis-py's cluster pipeline, which refuses EVAL and EVALSHA (its ``eval`` takes no
    arguments): here they are queued as any keyed command, sent to their first key's slot."""

    def eval(self, script: Any, numkeys: int, *keys_and_args: Any) -> Any:  # type: ignore[override]
        return self.execute_command("EVAL", script, numkeys, *keys_and_args)  # type: ignore[no-untyped-call]

    def evalsha(self, sha: Any, numkeys: int, *keys_and_args: Any) -> Any:
        return self.execute_command("EVALSHA", sha, numkeys, *keys_and_args)  # type: ignore[no-untyped-call]

    # redis-py's cluster pipeline refuses DEL, UNLINK and EXISTS of several keys; several keys of
    # one slot (an entry's record, meta and notes) are one command to one node, one reply.
    def delete(self, *names: Any) -> Any:
        return self._same_slot("DEL", names, super().delete)

    def unlink(self, *names: Any) -> Any:
        return self._same_slot("UNLINK", names, super().unlink)

    def exists(self, *names: Any) -> Any:
        return self._same_slot("EXISTS", names, super().exists)

    def _same_slot(self, command: str, names: tuple[Any, ...], single: Any) -> Any:
        if len(names) > 1 and len({self.keyslot(name) for name in names}) == 1:  # type: ignore[no-untyped-call]
            return self.execute_command(command, *names)  # type: ignore[no-untyped-call]
        return single(*names)


def unreachable(exc: RedisClusterException) -> bool:
    """Whether redis-py's cluster error says the cluster (or the node of a slot) cannot be
    reached, rather than refusing a command (keys on several slots, an unsupported command)."""
    text = str(exc)
    return (
        isinstance(exc, SlotNotCoveredError)
        or isinstance(exc.__cause__, RedisConnectionError | RedisTimeoutError | OSError)
        or "cannot be connected" in text
        or "slots are not covered" in text
        or "could not agree" in text
    )


def startup_nodes(location: str | list[str] | tuple[str, ...]) -> tuple[list[ClusterNode], dict[str, Any]]:
    """The nodes of a LOCATION ("redis://h:p,rediss://h:p" or a list of such URLs, or bare
    "h:p") and what their URLs say for every node: ssl, username, password."""
    urls = location.split(",") if isinstance(location, str) else list(location)
    nodes: list[ClusterNode] = []
    common: dict[str, Any] = {}
    for raw in (u.strip() for u in urls):
        if not raw:
            continue
        parts = urlsplit(raw if "://" in raw else f"redis://{raw}")
        if parts.scheme not in ("redis", "rediss"):
            raise ValueError(f"a cluster node must be redis:// or rediss:// host:port, not {raw!r}")
        if parts.path not in ("", "/", "/0"):
            raise ValueError(f"a cluster has one database (0): {raw!r}")
        nodes.append(ClusterNode(parts.hostname or "127.0.0.1", parts.port or 6379))  # type: ignore[no-untyped-call]
        if parts.scheme == "rediss":
            common["ssl"] = True
        if parts.username:
            common["username"] = unquote(parts.username)
        if parts.password:
            common["password"] = unquote(parts.password)
    if not nodes:
        raise ValueError("no cluster node in the cache LOCATION")
    return nodes, common


def connect(location: str | list[str] | tuple[str, ...], options: dict[str, Any]) -> RespcacheCluster:
    """This process's RedisCluster for ``location`` and ``options`` (made at first use)."""
    key = (os.getpid(), str(location), repr(sorted(options.items(), key=lambda kv: kv[0])))
    found = _clusters.get(key)
    if found is not None:
        return found
    with _clusters_lock:
        found = _clusters.get(key)
        if found is None:
            found = _clusters[key] = build(location, options)
    return found


def build(location: str | list[str] | tuple[str, ...], options: dict[str, Any]) -> RespcacheCluster:
    """A new RedisCluster from a cache alias's LOCATION and OPTIONS (it asks a startup node for
    the slot map at once: ClusterUnreachable if none answers)."""
    try:
        return RespcacheCluster(**cluster_kwargs(location, options))
    except RedisClusterException as exc:
        raise ClusterUnreachable(str(exc)) from exc


def cluster_kwargs(location: str | list[str] | tuple[str, ...], options: dict[str, Any]) -> dict[str, Any]:
    """What ``build`` passes to RedisCluster, from a cache alias's LOCATION and OPTIONS."""
    nodes, kwargs = startup_nodes(location)
    for option, name in (
        ("USERNAME", "username"),
        ("PASSWORD", "password"),
        ("SOCKET_TIMEOUT", "socket_timeout"),
        ("SOCKET_CONNECT_TIMEOUT", "socket_connect_timeout"),
    ):
        if options.get(option):
            kwargs[name] = options[option]
    pool_kwargs = options.get("CONNECTION_POOL_KWARGS", {})
    kwargs.update({name: pool_kwargs[name] for name in _NODE_KWARGS if name in pool_kwargs})
    tls = kwargs.pop("ssl", False) or any(name.startswith("ssl_") for name in pool_kwargs)
    pool_class = options.get("CONNECTION_POOL_CLASS")
    if pool_class:
        kwargs["connection_pool_class"] = import_string(pool_class)
    else:
        kwargs.pop("timeout", None)  # only a blocking pool waits
    kwargs.update(options.get("CLUSTER_KWARGS", {}))
    # The first node as a URL: only then does redis-py build each node's pool from
    # connection_pool_class (a blocking pool, as for a single Redis), and its scheme says TLS.
    first, others = nodes[0], nodes[1:]
    kwargs["url"] = f"{'rediss' if tls else 'redis'}://{first.host}:{first.port}"
    kwargs["startup_nodes"] = others
    kwargs["retry"] = Retry(NoBackoff(), int(options.get("CLUSTER_RETRIES", 1)))
    return kwargs


class ClusterClient(DefaultClient):  # type: ignore[misc]
    """django-redis's DefaultClient on a Redis Cluster (see the module docstring)."""

    def __init__(self, server: Any, params: dict[str, Any], backend: Any) -> None:
        super().__init__(server, params, backend)
        # The whole LOCATION is one cluster (DefaultClient would read a list as primary + replicas).
        self._location = server
        self._server = [server if isinstance(server, str) else ",".join(server)]
        self._clients = [None]

    def connect(self, index: int = 0) -> Any:
        return connect(self._location, self._options)

    def disconnect(self, index: int = 0, client: Any = None) -> None:
        # The RedisCluster is shared by the process's threads: closing it under one would break
        # the others. Its connections close with the process.
        return None

    def get_many(self, keys: Any, version: int | None = None, client: Any = None) -> dict[Any, Any]:
        """MGET per slot (a cluster refuses an MGET across slots)."""
        if client is None:
            client = self.get_client(write=False)
        if not keys:
            return {}
        recovered: dict[Any, Any] = {}
        mapped = {self.make_key(key, version=version): key for key in keys}
        try:
            results = client.mget_nonatomic(list(mapped))
        except (RedisError, OSError) as exc:
            raise ConnectionInterrupted(connection=client) from exc
        for made, value in zip(mapped, results, strict=True):
            if value is not None:
                recovered[mapped[made]] = self.decode(value)
        return recovered
