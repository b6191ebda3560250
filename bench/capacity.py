"""Capacity: what one hit and one miss cost Redis and the workers, measured under load, and the
same hit load served by one Redis and by a 3-primary Redis Cluster.

Redis's cost is read from Redis itself, as deltas of ``INFO`` taken around each run:

- *Redis CPU* is the server's main-thread CPU (``used_cpu_user_main_thread`` +
  ``used_cpu_sys_main_thread``): commands, parsing and socket I/O, what a shard runs out of.
- *command time* is ``INFO commandstats``: the µs inside commands. A script's own entry
  (EVALSHA) includes the commands it calls, which Redis also counts under their own names, so
  when scripts ran, the names the Lua scripts call are left out of the sum (a direct call of
  one of them, like the lock's SET NX on a miss, falls in that gap: ~1 µs).
- round trips (``total_reads_processed``) and bytes in + out (``total_net_*_bytes``).

What Redis spends while nobody calls (its cron, the cluster bus) is measured first and taken
off, pro rata of each run's time. The workers' CPU is their processes' utime + stime
(``/proc/<pid>/stat``) over a timed run, divided by the requests they served.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass, field
from importlib import resources
from typing import TYPE_CHECKING, Any

from bench import loadgen
from bench.harness import ROOT
from bench.report import Row, percentile

if TYPE_CHECKING:
    from bench.__main__ import Bench, Wire
    from bench.harness import Process, Server

IN_FLIGHT = 16
#: Commands that run scripts: their time includes the commands the script calls.
SCRIPT_COMMANDS = frozenset({"eval", "evalsha", "eval_ro", "evalsha_ro", "fcall", "fcall_ro"})
#: What the bench itself sends to Redis to measure it.
OWN_COMMANDS = frozenset({"info", "config", "config|resetstat", "ping", "cluster", "cluster|nodes", "cluster|info"})
TICK = os.sysconf("SC_CLK_TCK")


def script_commands() -> frozenset[str]:
    """The command names the store's Lua scripts call (their time is inside EVALSHA's)."""
    names = {"publish", "spublish"}  # the wake-up's command may come as an argument
    for path in (resources.files("respcache.store") / "scripts").iterdir():
        if path.name.endswith(".lua"):
            text = path.read_text(encoding="utf-8")
            names |= {m.lower() for m in re.findall(r"redis\.p?call\(\s*['\"]([A-Za-z_]+)", text)}
    return frozenset(names)


INNER = script_commands()


@dataclass
class RedisSample:
    at: float
    cpu: float  # seconds, main thread
    reads: float
    bytes: float
    commands: dict[str, tuple[float, float]] = field(default_factory=dict)  # name -> (calls, usec)


def redis_sample(client: Any) -> RedisSample:
    info = client.info("all")
    if "used_cpu_user_main_thread" in info:
        cpu = float(info["used_cpu_user_main_thread"]) + float(info["used_cpu_sys_main_thread"])
    else:
        cpu = float(info["used_cpu_user"]) + float(info["used_cpu_sys"])
    commands = {
        name.removeprefix("cmdstat_"): (float(value["calls"]), float(value["usec"]))
        for name, value in info.items()
        if name.startswith("cmdstat_") and isinstance(value, dict)
    }
    return RedisSample(
        time.monotonic(),
        cpu,
        float(info["total_reads_processed"]),
        float(info["total_net_input_bytes"]) + float(info["total_net_output_bytes"]),
        commands,
    )


@dataclass
class Cost:
    """What Redis did between two samples (one node or summed over several)."""

    seconds: float = 0.0
    cpu_us: float = 0.0
    command_us: float = 0.0
    reads: float = 0.0
    bytes: float = 0.0
    commands: dict[str, float] = field(default_factory=dict)  # name -> calls

    @classmethod
    def between(cls, a: RedisSample, b: RedisSample) -> Cost:
        deltas = {}
        for name, (calls, usec) in b.commands.items():
            calls_before, usec_before = a.commands.get(name, (0.0, 0.0))
            if name not in OWN_COMMANDS and calls != calls_before:
                deltas[name] = (calls - calls_before, usec - usec_before)
        scripted = any(name in SCRIPT_COMMANDS for name in deltas)
        return cls(
            seconds=b.at - a.at,
            cpu_us=(b.cpu - a.cpu) * 1e6,
            # When scripts ran, the names they call are counted inside the scripts' time.
            command_us=sum(
                usec
                for name, (_, usec) in deltas.items()
                if not scripted or name in SCRIPT_COMMANDS or name not in INNER
            ),
            reads=b.reads - a.reads,
            bytes=b.bytes - a.bytes,
            commands={name: calls for name, (calls, _) in deltas.items()},
        )

    def __add__(self, other: Cost) -> Cost:
        commands = dict(self.commands)
        for name, calls in other.commands.items():
            commands[name] = commands.get(name, 0.0) + calls
        return Cost(
            max(self.seconds, other.seconds),
            self.cpu_us + other.cpu_us,
            self.command_us + other.command_us,
            self.reads + other.reads,
            self.bytes + other.bytes,
            commands,
        )

    def less_idle(self, idle: Cost) -> Cost:
        """This cost without what Redis spends idle over as long (CPU pro rata of the time; the
        idle sample's INFO traffic once)."""
        share = self.seconds / idle.seconds if idle.seconds else 0.0
        return Cost(
            self.seconds,
            max(0.0, self.cpu_us - idle.cpu_us * share),
            max(0.0, self.command_us - idle.command_us * share),
            max(0.0, self.reads - idle.reads),
            max(0.0, self.bytes - idle.bytes),
            self.commands,
        )

    def per(self, n: float) -> dict[str, float]:
        return {
            "redis_cpu_us": self.cpu_us / n,
            "command_us": self.command_us / n,
            "round_trips": self.reads / n,
            "bytes": self.bytes / n,
            "commands": sum(self.commands.values()) / n,
        }


def idle_cost(clients: list[Any], seconds: float) -> list[Cost]:
    before = [redis_sample(c) for c in clients]
    time.sleep(seconds)
    return [Cost.between(a, redis_sample(c)) for a, c in zip(before, clients, strict=True)]


# --- the workers' CPU --------------------------------------------------------------------------


def children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (a gunicorn master's workers)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    fields = stat.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry))
    return found


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of ``pids`` (a worker gone meanwhile counts nothing)."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / TICK


@dataclass
class Target:
    """A gunicorn under test, its Redis nodes, and what its runs measured."""

    name: str
    server: Server
    process: Process
    request: bytes | list[bytes]
    clients: list[Any]
    expect: bytes | None = b"x-respcache: hit"
    idle: list[Cost] = field(default_factory=list)
    runs: list[loadgen.Run] = field(default_factory=list)
    redis: list[Cost] = field(default_factory=list)  # per node, summed over runs (idle taken off)
    worker_cpu: float = 0.0

    @property
    def workers(self) -> list[int]:
        return children(self.process.popen.pid)

    def measure(self, duration: float, concurrency: int = IN_FLIGHT) -> None:
        pids = self.workers
        before = [redis_sample(c) for c in self.clients]
        cpu = cpu_seconds(pids)
        run = loadgen.closed_loop(
            self.server.host,
            self.server.port,
            self.request,
            concurrency=concurrency,
            duration=duration,
            expect=self.expect,
        )
        self.worker_cpu += cpu_seconds(pids) - cpu
        after = [redis_sample(c) for c in self.clients]
        if run.errors:
            raise RuntimeError(f"{self.name}: {run.errors} unexpected answers, e.g.\n{run.unexpected}")
        self.runs.append(run)
        costs = [Cost.between(a, b).less_idle(i) for a, b, i in zip(before, after, self.idle, strict=True)]
        self.redis = costs if not self.redis else [x + y for x, y in zip(self.redis, costs, strict=True)]

    @property
    def requests(self) -> int:
        return sum(r.requests for r in self.runs)

    @property
    def rate(self) -> float:
        return self.requests / sum(r.elapsed for r in self.runs)

    def latency(self, pct: float) -> float:
        return percentile([x for r in self.runs for x in r.latencies], pct)

    def total(self) -> Cost:
        total = Cost()
        for cost in self.redis:
            total = total + cost
        return total

    def per_request(self) -> dict[str, float]:
        n = self.requests
        return self.total().per(n) | {
            "worker_cpu_s": self.worker_cpu / n,
            "busiest_node_cpu_share": max(c.cpu_us for c in self.redis) / (self.total().cpu_us or 1.0),
        }


def alternate(targets: list[Target], rounds: int, duration: float) -> None:
    for round_ in range(rounds):
        for target in targets if round_ % 2 == 0 else list(reversed(targets)):
            target.measure(duration)


# --- the rows -----------------------------------------------------------------------------------


def add_rows(bench: Bench, wires: dict[str, Wire]) -> None:
    hit_and_miss_rows(bench, wires)
    shard_rows(bench)


def hit_and_miss_rows(bench: Bench, wires: dict[str, Wire]) -> None:
    """Redis and worker cost per hit (16 in flight, against the floor's GET under the same
    load) and per miss (one at a time, each a new prompt)."""
    from bench.__main__ import TICKET, say, slug

    plan = bench.plan
    label = "1 KB"
    wire = wires[label]
    idle = idle_cost([bench.redis], plan.capacity_idle)
    hit = Target("hit", bench.service, bench.service_process, wire.raw, [bench.redis], idle=idle)
    floor = Target(
        "floor",
        bench.floor,
        bench.floor_process,
        wire.to(f"/floor/{slug(label)}/v1/messages"),
        [bench.redis],
        expect=None,
        idle=idle,
    )
    for target in (hit, floor):  # warm every worker
        loadgen.closed_loop(
            target.server.host,
            target.server.port,
            target.request,
            concurrency=IN_FLIGHT,
            duration=plan.warmup,
            expect=target.expect,
        )
    say(
        f"capacity: hit and floor, {IN_FLIGHT} in flight, "
        f"{plan.capacity_rounds} alternating rounds of {plan.capacity_seconds}s"
    )
    alternate([hit, floor], plan.capacity_rounds, plan.capacity_seconds)
    per_hit, per_get = hit.per_request(), floor.per_request()

    n = plan.misses
    say(f"capacity: {n} misses, one at a time")
    stamp = time.time_ns()
    misses = [bench.wire(f"[[answer_bytes:1000]] capacity {stamp} {i} {TICKET}").raw for i in range(n)]
    before = redis_sample(bench.redis)
    answers = loadgen.sequential(bench.service.host, bench.service.port, misses)
    cost = Cost.between(before, redis_sample(bench.redis)).less_idle(idle[0])
    statuses = {a.header("x-respcache") for a in answers}
    if statuses != {"miss"}:
        raise RuntimeError(f"capacity: expected only misses, got {statuses}")
    per_miss = cost.per(n)

    worker_core = 1 / per_hit["worker_cpu_s"] if per_hit["worker_cpu_s"] else None
    shard = 1e6 / per_hit["redis_cpu_us"] if per_hit["redis_cpu_us"] else None
    bench.rows += [
        Row.compare(
            f"capacity: Redis CPU per hit, {label} (server main thread)",
            per_hit["redis_cpu_us"],
            "us",
            per_get["redis_cpu_us"],
            "floor GET",
        ),
        Row.compare(
            f"capacity: Redis command time per hit, {label} (commandstats)",
            per_hit["command_us"],
            "us",
            per_get["command_us"],
            "floor GET",
        ),
        Row.compare(
            "capacity: Redis CPU per miss, 1 KB (server main thread)",
            per_miss["redis_cpu_us"],
            "us",
            per_hit["redis_cpu_us"],
            "hit",
        ),
        Row.compare(
            "capacity: Redis command time per miss, 1 KB (commandstats)",
            per_miss["command_us"],
            "us",
            per_hit["command_us"],
            "hit",
        ),
        Row.compare(
            f"capacity: Redis round trips per hit, {label} ({IN_FLIGHT} in flight)",
            per_hit["round_trips"],
            "count",
            per_get["round_trips"],
            "floor GET",
            target="≤ 2",
            ok=per_hit["round_trips"] <= 2,
        ),
        Row.compare("capacity: Redis round trips per miss, 1 KB", per_miss["round_trips"], "count", None, ""),
        Row.compare(
            f"capacity: Redis bytes per hit (in + out), {label}",
            per_hit["bytes"],
            "bytes",
            per_get["bytes"],
            "floor GET",
        ),
        Row.compare(
            "capacity: Redis bytes per miss (in + out), 1 KB",
            per_miss["bytes"],
            "bytes",
            per_hit["bytes"],
            "hit",
        ),
        Row.compare(
            f"capacity: worker CPU per hit, {label} (gunicorn workers, {IN_FLIGHT} in flight)",
            per_hit["worker_cpu_s"],
            "s",
            per_get["worker_cpu_s"],
            "floor",
        ),
        Row.compare(
            "capacity: hits/s per Redis shard at 100% CPU (1e6 / CPU µs per hit)",
            shard or float("nan"),
            "req/s",
            1e6 / per_get["redis_cpu_us"] if per_get["redis_cpu_us"] else None,
            "floor GET",
        ),
        Row.compare(
            "capacity: hits/s per worker core (1 / worker CPU per hit)",
            worker_core or float("nan"),
            "req/s",
            1 / per_get["worker_cpu_s"] if per_get["worker_cpu_s"] else None,
            "floor",
        ),
    ]
    bench.raw["capacity"] = {
        "in_flight": IN_FLIGHT,
        "hit": per_hit | {"requests": hit.requests, "rate": hit.rate, "commands_by_name": hit.total().commands},
        "floor": per_get | {"requests": floor.requests, "rate": floor.rate},
        "miss": per_miss | {"requests": n, "commands_by_name": cost.commands},
        "idle_redis_cpu_us_per_s": idle[0].cpu_us / idle[0].seconds if idle[0].seconds else None,
    }


# --- one shard against three ---------------------------------------------------------------------


def shard_rows(bench: Bench) -> None:
    """The same hit load (16 in flight over many entries, so they spread over the slots) on a
    service with one Redis and on one with a 3-primary cluster, both on loopback TCP with the
    same redis-server binary, alternating runs."""
    import redis

    from bench.__main__ import TICKET, say
    from project import cluster_redis

    if "REDIS_CLUSTER_NODES" not in (ROOT / "project" / "settings.py").read_text(encoding="utf-8"):
        say("capacity: this tree's settings have no REDIS_CLUSTER_NODES; the 1 vs 3 shard rows are skipped")
        return
    plan = bench.plan
    h = bench.h
    server_binary = cluster_redis.binary()
    say(f"capacity: one Redis and a 3-primary cluster ({server_binary}), a service on each")
    port = _free_port()
    single = h.spawn(
        "redis-1-shard",
        [
            server_binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(h.dir),
        ],
    )
    cluster = cluster_redis.start(primaries=3, replicas_per_primary=0, run_dir=h.dir)
    started: list[Process] = [single]
    try:
        _wait_redis("127.0.0.1", port, single)
        nodes = cluster.startup_nodes
        one, one_process = h.start_gunicorn(
            "service-1-shard", "project.settings", env={"REDIS_URL": f"redis://127.0.0.1:{port}/0"}
        )
        three, three_process = h.start_gunicorn(
            "service-3-shards",
            "project.settings",
            env={"REDIS_URL": "", "REDIS_CLUSTER_NODES": nodes},
        )
        started += [one_process, three_process]
        h.wait_ready(one, one_process)
        h.wait_ready(three, three_process)
        prompts = [bench.wire(f"[[answer_bytes:1000]] shard {i} {TICKET}") for i in range(plan.shard_entries)]
        targets = []
        for name, server, process, clients in (
            ("1 shard", one, one_process, [redis.Redis(host="127.0.0.1", port=port)]),
            ("3 shards", three, three_process, [redis.Redis(host=host, port=p) for host, p in cluster.primaries()]),
        ):
            requests = [w.raw for w in prompts]
            first = loadgen.sequential(server.host, server.port, requests)
            again = loadgen.sequential(server.host, server.port, requests)
            seen = ({a.header("x-respcache") for a in first}, {a.header("x-respcache") for a in again})
            if seen != ({"miss"}, {"hit"}):
                raise RuntimeError(f"{name}: expected misses then hits, got {seen}")
            target = Target(name, server, process, requests, clients)
            loadgen.closed_loop(server.host, server.port, requests, concurrency=IN_FLIGHT, duration=plan.warmup)
            targets.append(target)
        for target in targets:
            target.idle = idle_cost(target.clients, plan.capacity_idle)
        say(
            f"capacity: 1 vs 3 shards, {IN_FLIGHT} in flight, "
            f"{plan.capacity_rounds} alternating rounds of {plan.capacity_seconds}s"
        )
        alternate(targets, plan.capacity_rounds, plan.capacity_seconds)
        one_t, three_t = targets
        a, b = one_t.per_request(), three_t.per_request()
        bench.rows += [
            Row.compare(
                f"3 shards: hit req/s, 1 KB, {IN_FLIGHT} in flight", three_t.rate, "req/s", one_t.rate, "1 shard"
            ),
            Row.compare(
                f"3 shards: hit p50, {IN_FLIGHT} in flight", three_t.latency(50), "s", one_t.latency(50), "1 shard"
            ),
            Row.compare(
                f"3 shards: hit p99, {IN_FLIGHT} in flight", three_t.latency(99), "s", one_t.latency(99), "1 shard"
            ),
            Row.compare(
                "3 shards: Redis CPU per hit, all shards (server main threads)",
                b["redis_cpu_us"],
                "us",
                a["redis_cpu_us"],
                "1 shard",
            ),
            Row.compare(
                "3 shards: Redis command time per hit, all shards (commandstats)",
                b["command_us"],
                "us",
                a["command_us"],
                "1 shard",
            ),
            Row.compare(
                "3 shards: Redis round trips per hit, all shards",
                b["round_trips"],
                "count",
                a["round_trips"],
                "1 shard",
                target="≤ 2",
                ok=b["round_trips"] <= 2,
            ),
            Row.compare(
                "3 shards: busiest shard's share of the Redis CPU",
                b["busiest_node_cpu_share"],
                "share",
                1 / 3,
                "even",
                target="≤ 0.5",
                ok=b["busiest_node_cpu_share"] <= 0.5,
            ),
            Row.compare(
                "3 shards: worker CPU per hit (gunicorn workers)",
                b["worker_cpu_s"],
                "s",
                a["worker_cpu_s"],
                "1 shard",
            ),
        ]
        bench.raw["shards"] = {
            "entries": plan.shard_entries,
            "binary": server_binary,
            "1": a | {"requests": one_t.requests, "rate": one_t.rate},
            "3": b
            | {
                "requests": three_t.requests,
                "rate": three_t.rate,
                "node_cpu_us": [c.cpu_us for c in three_t.redis],
                "node_reads": [c.reads for c in three_t.redis],
            },
        }
    finally:
        for process in reversed(started):
            h.stop(process)
            if process in h.processes:
                h.processes.remove(process)
        cluster.stop()


def _free_port() -> int:
    from bench.harness import free_port

    return free_port()


def _wait_redis(host: str, port: int, process: Process) -> None:
    import redis

    deadline = time.monotonic() + 10
    while True:
        try:
            redis.Redis(host=host, port=port, socket_timeout=0.5).ping()
            return
        except redis.RedisError:
            if process.popen.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{process.name} did not start") from None
            time.sleep(0.05)
