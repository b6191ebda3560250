"""``python -m bench`` (``make bench``): where the hit path stands, in one table of same-run ratios.

It starts its own Redis, the fake upstream and two gunicorns as deployed (the service, and the
framework floor: bench/floor.py), measures, stops all of them and prints the table. Absolute
times on a shared machine are noise, so every row is a ratio against a baseline measured in the
same run, and the hit and floor runs alternate. ``--quick`` runs every step briefly (the test
suite's smoke test); ``--out`` writes the machine-readable copy (bench/results.json).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import io
import json
import logging
import math
import os
import sys
import time
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import capacity, crypto, flood, keybuild, limits, loadgen
from bench.harness import ROOT, Harness, web_concurrency
from bench.report import Row, as_json, machine, percentile, ratio, render

WORKLOAD = "bench"
SIZES = {"1 KB": 1_000, "20 KB": 20_000}
SYSTEM = (
    "You route support tickets. Read the ticket and answer with a JSON object: the intent "
    "(one of login, billing, refund, shipping, bug, other), the priority (low, medium, high), "
    "a one-sentence summary, and the fields you can extract (order id, amount, date, product). "
    "Never invent a field; leave it out when the ticket does not state it. Answer in the ticket's "
    "language. Keep the summary under thirty words, and do not add any text outside the object."
)
TICKET = (
    "Hello, since yesterday's update I cannot log in to my account: the password reset e-mail "
    "never arrives, and the app says my session expired every time I open it. Order 88213 is "
    "stuck too."
)


@dataclass(frozen=True)
class Plan:
    """How long each step runs. ``quick`` only proves every step works."""

    duration: float = 0.5  # seconds per closed-loop run
    rounds: int = 16  # alternating hit / floor runs per row: short and many, to share the noise
    warmup: float = 1.0
    concurrency: tuple[int, ...] = (1, 16)
    misses: int = 100
    stampede_callers: int = 200
    stampede_runs: int = 3
    stampede_delay: float = 1.5
    round_trip_hits: int = 300
    db_hits: int = 200
    cpu_requests: int = 500
    key_min_time: float = 0.2
    key_repeats: int = 5
    key_sizes: tuple[int, ...] = (1_000, 100_000, 1_000_000)
    crypto_decodes: int = 20_000
    capacity_seconds: float = 2.0  # per closed-loop run of the capacity rows
    capacity_rounds: int = 6
    capacity_idle: float = 1.0  # Redis's own idle cost, taken off the runs'
    shard_entries: int = 64  # distinct hits in the 1 vs 3 shard load (spread over the slots)


QUICK = Plan(
    duration=0.3,
    rounds=1,
    warmup=0.2,
    misses=5,
    stampede_callers=20,
    stampede_runs=1,
    stampede_delay=0.5,
    round_trip_hits=20,
    db_hits=10,
    cpu_requests=20,
    key_min_time=0.01,
    key_repeats=1,
    key_sizes=(1_000, 100_000),
    crypto_decodes=200,
    capacity_seconds=0.3,
    capacity_rounds=1,
    capacity_idle=0.2,
    shard_entries=8,
)


def say(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Wire:
    """One request as the official SDK sends it: path, headers, body."""

    path: str
    headers: dict[str, str]
    body: bytes

    def to(self, path: str) -> bytes:
        return loadgen.build_request("POST", path, self.headers, self.body)

    @property
    def raw(self) -> bytes:
        return self.to(self.path)


def ask(prompt: str) -> dict[str, Any]:
    return {
        "model": "claude-bench-1",
        "max_tokens": 512,
        "system": SYSTEM,
        "messages": [{"role": "user", "content": prompt}],
        "extra_body": {"temperature": 0},
    }


def sdk_wire(base_url: str, api_key: str, prompt: str) -> Wire:
    """Capture what ``anthropic.Anthropic(...).messages.create`` puts on the wire."""
    import anthropic
    import httpx2 as httpx

    captured: dict[str, Any] = {}

    def handle(request: httpx.Request) -> httpx.Response:
        captured.update(path=request.url.raw_path.decode(), headers=dict(request.headers), body=request.content)
        return httpx.Response(
            200,
            json={
                "id": "msg_x",
                "type": "message",
                "role": "assistant",
                "model": "m",
                "content": [],
                "stop_reason": "end_turn",
                "stop_sequence": None,
                "usage": {"input_tokens": 1, "output_tokens": 1},
            },
        )

    client = anthropic.Anthropic(
        base_url=base_url,
        api_key=api_key,
        max_retries=0,
        http_client=httpx.Client(transport=httpx.MockTransport(handle)),
    )
    client.messages.create(**ask(prompt))
    return Wire(captured["path"], captured["headers"], captured["body"])


class Bench:
    def __init__(self, harness: Harness, plan: Plan) -> None:
        self.h = harness
        self.plan = plan
        self.rows: list[Row] = []
        self.raw: dict[str, Any] = {}

    # --- setup ---------------------------------------------------------------------------------

    def start(self) -> None:
        h = self.h
        say(f"starting Redis, the fake upstream and two gunicorns in {h.dir}")
        self.redis_url = h.start_redis()
        self.upstream = h.start_upstream()
        h.env.update(
            REDIS_URL=self.redis_url,
            DATABASE_URL=f"sqlite:///{h.dir / 'bench.sqlite3'}",
            ANTHROPIC_BASE_URL=self.upstream.url,
            ANTHROPIC_API_KEY="sk-bench-upstream",
            RESPCACHE_UPSTREAM="anthropic",
            RESPCACHE_RUN_DIR=str(h.dir),
            DJANGO_SETTINGS_MODULE="project.settings",
            DJANGO_DEBUG="0",
        )
        os.environ.update(h.env)
        # The gunicorns boot while this process migrates: they need the tables only per request.
        self.service, self.service_process = h.start_gunicorn("service", "project.settings")
        self.floor, self.floor_process = h.start_gunicorn("floor", "bench.floor_settings")

        import django
        from django.core.management import call_command

        django.setup()
        logging.getLogger().setLevel(logging.WARNING)  # this process reports through the table
        # The in-process rows run the service's code here: its call log goes to a file, as the
        # gunicorns' does, not to this terminal (a write to a tty or pipe per call would be
        # measured as hit-path CPU, and would bury the table).
        calls_log = open(h.dir / "calls-in-process.log", "a")  # noqa: SIM115 - closed with the harness dir
        for handler in logging.getLogger("respcache.calls").handlers:
            if isinstance(handler, logging.StreamHandler):
                handler.setStream(calls_log)
        call_command("migrate", verbosity=0, interactive=False)
        call_command("respcache_workload", WORKLOAD, "--ttl", "86400", stdout=io.StringIO())
        out = io.StringIO()
        call_command("respcache_apikey", "bench-caller", "--workload", WORKLOAD, stdout=out)
        self.api_key = out.getvalue().strip().splitlines()[-1]

        import redis

        self.redis = redis.Redis.from_url(self.redis_url)
        self.redis_version = str(self.redis.info("server")["redis_version"])
        h.wait_ready(self.service, self.service_process)
        h.wait_ready(self.floor, self.floor_process)
        say(f"service on {self.service.url}, floor on {self.floor.url}, upstream on {self.upstream.url}")

    def wire(self, prompt: str) -> Wire:
        return sdk_wire(f"{self.service.url}/w/{WORKLOAD}", self.api_key, prompt)

    def upstream_calls(self) -> int:
        get = loadgen.build_request("GET", "/_calls", {"host": "bench"}, b"")
        (response,) = loadgen.sequential(self.upstream.host, self.upstream.port, [get])
        return int(json.loads(response.body)["messages"])

    # --- the hit path against its baselines -------------------------------------------------

    def prepare_hits(self) -> dict[str, Wire]:
        """Store one answer per size through a miss, check the SDK reads the hit and the floor
        alike, and give the floor the exact bytes a hit returns."""
        import anthropic

        wires = {}
        for label, size in SIZES.items():
            prompt = f"[[answer_bytes:{size}]] {TICKET}"
            wire = wires[label] = self.wire(prompt)
            sdk = anthropic.Anthropic(base_url=f"{self.service.url}/w/{WORKLOAD}", api_key=self.api_key, max_retries=0)
            first = sdk.messages.with_raw_response.create(**ask(prompt))
            second = sdk.messages.with_raw_response.create(**ask(prompt))
            if (first.headers["x-respcache"], second.headers["x-respcache"]) != ("miss", "hit"):
                raise RuntimeError(
                    f"expected miss then hit, got {first.headers['x-respcache']}, {second.headers['x-respcache']}"
                )
            (hit,) = loadgen.sequential(self.service.host, self.service.port, [wire.raw])
            self.redis.set(f"bench:floor:{slug(label)}", hit.body)
            floor = anthropic.Anthropic(base_url=f"{self.floor.url}/floor/{slug(label)}", api_key="-", max_retries=0)
            if not (first.parse() == second.parse() == floor.messages.create(**ask(prompt))):
                raise RuntimeError("the hit and the floor do not return the upstream's Message")
            self.raw.setdefault("answer_bytes", {})[label] = len(hit.body)
            self.raw.setdefault("request_bytes", {})[label] = len(wire.body)
            self.raw.setdefault("fingerprints", {})[label] = hit.header("x-respcache-key")
        return wires

    def hit_rows(self, wires: dict[str, Wire]) -> None:
        plan = self.plan
        for label, wire in wires.items():
            service_request = wire.raw
            floor_request = wire.to(f"/floor/{slug(label)}/v1/messages")
            targets = {
                "hit": (self.service, service_request, b"x-respcache: hit"),
                "floor": (self.floor, floor_request, None),
            }
            for server, request, expect in targets.values():  # warm every worker
                loadgen.closed_loop(
                    server.host,
                    server.port,
                    request,
                    concurrency=max(plan.concurrency),
                    duration=plan.warmup,
                    expect=expect,
                )
            for concurrency in plan.concurrency:
                say(f"hit {label}, {concurrency} in flight: {plan.rounds} alternating rounds of {plan.duration}s")
                runs: dict[str, list[loadgen.Run]] = {"hit": [], "floor": []}
                for round_ in range(plan.rounds):
                    for name in ("hit", "floor") if round_ % 2 == 0 else ("floor", "hit"):
                        server, request, expect = targets[name]
                        run = loadgen.closed_loop(
                            server.host,
                            server.port,
                            request,
                            concurrency=concurrency,
                            duration=plan.duration,
                            expect=expect,
                        )
                        if run.errors:
                            raise RuntimeError(f"{name}: {run.errors} unexpected answers, e.g.\n{run.unexpected}")
                        runs[name].append(run)
                get = redis_get(self.redis_url, f"bench:floor:{slug(label)}", concurrency, plan.duration)
                self.add_hit_rows(label, concurrency, runs, get)

    def add_hit_rows(self, label: str, concurrency: int, runs: dict[str, list[loadgen.Run]], get: loadgen.Run) -> None:
        def pooled(name: str) -> tuple[list[float], float]:
            latencies = [x for run in runs[name] for x in run.latencies]
            elapsed = sum(run.elapsed for run in runs[name])
            return latencies, len(latencies) / elapsed

        hit, hit_rate = pooled("hit")
        floor, floor_rate = pooled("floor")
        prefix = f"hit {label}, {concurrency} in flight"
        p50, p99 = percentile(hit, 50), percentile(hit, 99)
        f50, f99 = percentile(floor, 50), percentile(floor, 99)
        g50, g99 = percentile(get.latencies, 50), percentile(get.latencies, 99)
        p50_ratio = ratio(p50, f50)
        p99_ratio = ratio(p99, f99)
        rate_ratio = ratio(hit_rate, floor_rate)
        self.rows += [
            Row.compare(
                f"{prefix}: p50",
                p50,
                "s",
                f50,
                "floor",
                redis_get=g50,
                redis_get_ratio=ratio(p50, g50),
                target="≤ 1.20× floor",
                ok=p50_ratio is not None and p50_ratio <= 1.2,
            ),
            Row.compare(
                f"{prefix}: p99",
                p99,
                "s",
                f99,
                "floor",
                redis_get=g99,
                redis_get_ratio=ratio(p99, g99),
                # One request at a time, a p99 is a scheduling hiccup on a shared machine.
                target="≤ 1.50× floor" if concurrency > 1 else "",
                ok=(p99_ratio is not None and p99_ratio <= 1.5) if concurrency > 1 else None,
            ),
            Row.compare(
                f"{prefix}: req/s",
                hit_rate,
                "req/s",
                floor_rate,
                "floor",
                redis_get=get.rate,
                redis_get_ratio=ratio(hit_rate, get.rate),
                target="≥ 1.00× floor",
                ok=rate_ratio is not None and rate_ratio >= 1.0,
            ),
        ]
        if concurrency > 1:

            def evenness(name: str) -> float:
                """Fewest over most answers on one connection, per run, averaged (1 = even)."""
                shares = [min(r.per_connection) / max(r.per_connection) for r in runs[name] if max(r.per_connection)]
                return sum(shares) / len(shares) if shares else math.nan

            self.rows.append(
                Row.compare(
                    f"{prefix}: evenness (fewest / most answers per connection)",
                    evenness("hit"),
                    "share",
                    evenness("floor"),
                    "floor",
                )
            )
        self.raw.setdefault("hit_runs", []).append(
            {
                "size": label,
                "in_flight": concurrency,
                "hit": [
                    {
                        "requests": r.requests,
                        "elapsed": r.elapsed,
                        "p50": percentile(r.latencies, 50),
                        "per_connection": r.per_connection,
                    }
                    for r in runs["hit"]
                ],
                "floor": [
                    {
                        "requests": r.requests,
                        "elapsed": r.elapsed,
                        "p50": percentile(r.latencies, 50),
                        "per_connection": r.per_connection,
                    }
                    for r in runs["floor"]
                ],
                "redis_get": {"requests": get.requests, "elapsed": get.elapsed},
            }
        )

    def redis_cost_rows(self, wires: dict[str, Wire]) -> None:
        """Round trips and bytes per hit, as Redis itself counts them (INFO stats deltas)."""
        n = self.plan.round_trip_hits
        for label, wire in wires.items():
            requests = [wire.raw] * n
            idle = self._redis_delta(lambda: None)
            busy = self._redis_delta(
                lambda requests=requests: loadgen.sequential(  # type: ignore[misc]
                    self.service.host, self.service.port, requests
                )
            )
            per_hit = {k: (busy[k] - idle[k]) / n for k in busy}
            answer = self.raw["answer_bytes"][label]
            self.rows += [
                Row.compare(
                    f"Redis round trips per hit, {label}",
                    per_hit["total_reads_processed"],
                    "count",
                    1,
                    "bare GET",
                    target="≤ 2",
                    ok=per_hit["total_reads_processed"] <= 2,
                ),
                Row.compare(
                    f"Redis bytes per hit (in + out), {label}",
                    per_hit["total_net_input_bytes"] + per_hit["total_net_output_bytes"],
                    "bytes",
                    answer,
                    "answer",
                ),
            ]
            self.raw.setdefault("redis_per_hit", {})[label] = per_hit

    def _redis_delta(self, action: Any) -> dict[str, float]:
        fields = (
            "total_reads_processed",
            "total_net_input_bytes",
            "total_net_output_bytes",
            "total_commands_processed",
        )
        before = self.redis.info("stats")
        action()
        after = self.redis.info("stats")
        return {f: float(after[f]) - float(before[f]) for f in fields}

    def cpu_rows(self, wires: dict[str, Wire]) -> None:
        """CPU per request in this process (WSGI, no socket): what the hit path itself costs over
        the floor, free of the scheduling noise that wall times on a shared machine carry."""
        from django.core.handlers.wsgi import WSGIHandler
        from django.test import override_settings

        app = WSGIHandler()
        n = self.plan.cpu_requests
        for label, wire in wires.items():
            say(f"CPU per request in process, {label}: hit and floor, {self.plan.rounds} alternating rounds")
            floor_path = f"/floor/{slug(label)}/v1/messages"
            spent = {"hit": 0.0, "floor": 0.0}
            for round_ in range(self.plan.rounds + 1):  # round 0 warms both
                for name in ("hit", "floor") if round_ % 2 else ("floor", "hit"):
                    if name == "hit":
                        used = wsgi_cpu(app, wire.path, wire.headers, wire.body, n, expect="hit")
                    else:
                        with override_settings(ROOT_URLCONF="bench.floor"):
                            used = wsgi_cpu(app, floor_path, wire.headers, wire.body, n)
                    if round_:
                        spent[name] += used
            hit, floor = (
                spent["hit"] / (n * self.plan.rounds),
                spent["floor"] / (n * self.plan.rounds),
            )
            self.rows.append(Row.compare(f"hit {label}: CPU per request (in process)", hit, "s", floor, "floor"))
            self.raw.setdefault("cpu_per_request", {})[label] = {"hit": hit, "floor": floor}

    def db_rows(self, wires: dict[str, Wire]) -> None:
        """Queries per hit, counted in this process: the WSGI app behind the official SDK."""
        import anthropic
        import httpx2 as httpx
        from django.core.handlers.wsgi import WSGIHandler
        from django.db import connection
        from django.test.utils import CaptureQueriesContext

        from respcache import selectors
        from respcache.conf import app_settings

        prompt = f"[[answer_bytes:{SIZES['1 KB']}]] {TICKET}"
        sdk = anthropic.Anthropic(
            base_url=f"http://127.0.0.1/w/{WORKLOAD}",
            api_key=self.api_key,
            max_retries=0,
            http_client=httpx.Client(transport=httpx.WSGITransport(app=WSGIHandler())),
        )

        def hit() -> None:
            status = sdk.messages.with_raw_response.create(**ask(prompt)).headers["x-respcache"]
            if status != "hit":
                raise RuntimeError(f"expected a hit in process, got {status}")

        selectors.clear_local_caches()
        with CaptureQueriesContext(connection) as reload:
            hit()
        with CaptureQueriesContext(connection) as steady:
            for _ in range(self.plan.db_hits):
                hit()
        per_hit = len(steady.captured_queries) / self.plan.db_hits
        lifetime = float(app_settings.LOCAL_CACHE_SECONDS)
        self.rows.append(
            Row.compare(
                "DB queries per hit (steady state)",
                per_hit,
                "count",
                len(reload.captured_queries),
                f"first hit per {lifetime:g}s",
                target="0",
                ok=per_hit == 0,
            )
        )
        self.raw["db"] = {
            "hits": self.plan.db_hits,
            "queries": len(steady.captured_queries),
            "queries_per_reload": len(reload.captured_queries),
            "local_cache_seconds": lifetime,
        }

    # --- misses and stampedes ------------------------------------------------------------------

    def miss_rows(self) -> None:
        n = self.plan.misses
        say(f"miss path: {n} misses against {n} direct calls of the fake upstream, interleaved")
        stamp = time.time_ns()
        misses = [self.wire(f"[[answer_bytes:1000]] miss {stamp} {i} {TICKET}").raw for i in range(n)]
        direct = [self.wire(f"[[answer_bytes:1000]] direct {stamp} {i} {TICKET}").to("/v1/messages") for i in range(n)]
        before = self.upstream_calls()
        a, b = loadgen.interleaved(
            (self.service.host, self.service.port),
            misses,
            (self.upstream.host, self.upstream.port),
            direct,
        )
        if self.upstream_calls() - before != 2 * n:
            raise RuntimeError("every miss and every direct call should reach the upstream once")
        statuses = Counter(r.header("x-respcache") for r in a)
        if statuses != Counter({"miss": n}) or any(r.status != 200 for r in a + b):
            raise RuntimeError(f"unexpected miss answers: {statuses}")
        miss = [r.done_at - r.sent_at for r in a]
        calls = [r.done_at - r.sent_at for r in b]
        m50, d50 = percentile(miss, 50), percentile(calls, 50)
        self.rows += [
            Row.compare("miss 1 KB: p50", m50, "s", d50, "direct"),
            Row.compare("miss 1 KB: p99", percentile(miss, 99), "s", percentile(calls, 99), "direct"),
        ]
        self.raw["miss"] = {"n": n, "overhead_p50_s": m50 - d50}

    def stampede_rows(self) -> None:
        from respcache import keys, stats, store
        from respcache.conf import app_settings

        plan = self.plan
        calls_per_run: list[int] = []
        wakeups: list[float] = []
        woken: Counter[str] = Counter()  # the service's own wake-up histogram, summed over runs
        statuses: Counter[str] = Counter()
        for run in range(plan.stampede_runs):
            say(f"stampede {run + 1}/{plan.stampede_runs}: {plan.stampede_callers} identical cold requests")
            prompt = f"[[delay:{plan.stampede_delay}]] [[answer_bytes:1000]] stampede {time.time_ns()} {TICKET}"
            wire = self.wire(prompt)
            before = self.upstream_calls()
            totals_before = self._wake_counts()
            responses = loadgen.burst(self.service.host, self.service.port, wire.raw, count=plan.stampede_callers)
            calls_per_run.append(self.upstream_calls() - before)
            statuses.update(r.header("x-respcache") or f"status {r.status}" for r in responses)
            fingerprint = next(r.header("x-respcache-key") for r in responses if r.header("x-respcache-key"))
            version = int(self.redis.get(store.version_key(WORKLOAD)) or 1)
            meta = store.full_key(
                keys.meta_key(keys.entry_key(workload=WORKLOAD, version=version, fingerprint=fingerprint))
            )
            stored_at = float(self.redis.hget(meta, "stored_at") or "nan")
            wakeups += [r.arrived_epoch - stored_at for r in responses if r.header("x-respcache") == "wait"]
            # The workers add their counts up and flush them every COUNTER_FLUSH_SECONDS.
            time.sleep(float(app_settings.COUNTER_FLUSH_SECONDS) + 0.5)
            woken.update(self._wake_counts() - totals_before)
        worst = max(calls_per_run)
        label = f"stampede of {plan.stampede_callers}"
        # What serving the waiters costs at best: each worker answers its share one after the
        # other, each answer costing what the floor's does (CPU per request, measured above).
        floor_cpu = self.raw.get("cpu_per_request", {}).get("1 KB", {}).get("floor")
        share = (plan.stampede_callers - 1) / web_concurrency()
        bound = floor_cpu * share if floor_cpu else None
        self.rows += [
            Row.compare(
                f"{label}: upstream calls (worst of {plan.stampede_runs})",
                worst,
                "count",
                1,
                "ideal",
                target="= 1",
                ok=worst == 1,
            ),
            Row.compare(
                f"{label}: first waiter served after the write",
                min(wakeups, default=math.nan),
                "s",
                floor_cpu,
                "floor 1 answer",
            ),
            Row.compare(
                f"{label}: waiters served after the write, p50",
                percentile(wakeups, 50),
                "s",
                bound / 2 if bound else None,
                "floor-bound",
            ),
            Row.compare(
                f"{label}: waiters served after the write, p99",
                percentile(wakeups, 99),
                "s",
                bound,
                "floor-bound",
            ),
        ]
        # When each waiter *woke* (the service's histogram: bucket upper bounds), as opposed
        # to when its client had the whole HTTP answer above.
        for q in (50, 99):
            woke = stats.wake_percentile(dict(woken), q)
            self.rows.append(
                Row.compare(
                    f"{label}: waiters woken after the write, p{q} (≤)",
                    math.nan if woke is None else woke / 1000,
                    "s",
                    None,
                    "",
                    target="< 10 ms" if q == 99 else "",
                    ok=woke is not None and woke < 10 if q == 99 else None,
                )
            )
        self.raw["stampede"] = {
            "callers": plan.stampede_callers,
            "runs": plan.stampede_runs,
            "upstream_calls": calls_per_run,
            "statuses": dict(statuses),
            "waiters": len(wakeups),
            "woken_histogram": dict(woken),
        }

    def _wake_counts(self) -> Counter[str]:
        from respcache import store

        raw = self.redis.hgetall(store.totals_key(WORKLOAD))
        return Counter(
            {k.decode(): int(v) for k, v in raw.items() if k.startswith(b"wake") and not k.startswith(b"wake_us")}
        )

    # --- key building and memory -----------------------------------------------------------------

    def key_rows(self) -> None:
        import orjson

        from tests.reference_keys import reference_fingerprint
        from tests.test_keys_reference import CORPUS, respcache_fingerprint

        plan = self.plan
        for size in plan.key_sizes:
            body = keybuild.make_request(size)
            label = f"{size // 1000:,} KB" if size < 1_000_000 else f"{size // 1_000_000} MB"
            say(f"key building, {label}")
            ours = article = 0.0
            for _ in range(plan.key_repeats):  # alternate, keep the best of each
                article = max(
                    article,
                    keybuild.throughput(keybuild.article_key, body, min_time=plan.key_min_time, repeats=1),
                )
                ours = max(
                    ours,
                    keybuild.throughput(keybuild.respcache_key, body, min_time=plan.key_min_time, repeats=1),
                )
            same = keybuild.respcache_key(body) == reference_fingerprint(orjson.dumps(body))
            if not same:
                raise RuntimeError(f"respcache and the reference disagree on the {label} request")
            r = ratio(ours, article)
            self.rows.append(
                Row.compare(
                    f"key building {label}: canonicalise + SHA-256",
                    ours,
                    "MB/s",
                    article,
                    "article",
                    target="≥ 2× article" if size == 100_000 else "",
                    ok=(r is not None and r >= 2) if size == 100_000 else None,
                )
            )
        identical = sum(respcache_fingerprint(raw, beta) == reference_fingerprint(raw, beta) for _, raw, beta in CORPUS)
        self.rows.append(
            Row.compare(
                "keys identical to the reference canonicaliser",
                identical,
                "count",
                len(CORPUS),
                "corpus",
                target="all",
                ok=identical == len(CORPUS),
            )
        )

    def memory_rows(self) -> None:
        from django.test import override_settings

        from respcache import keys, store

        for label, fingerprint in self.raw["fingerprints"].items():
            version = int(self.redis.get(store.version_key(WORKLOAD)) or 1)
            entry = store.full_key(keys.entry_key(workload=WORKLOAD, version=version, fingerprint=fingerprint))
            meta = store.full_key(
                keys.meta_key(keys.entry_key(workload=WORKLOAD, version=version, fingerprint=fingerprint))
            )
            # The notes (request fields and summary) count as the entry's too.
            notes = store.full_key(
                keys.notes_key(keys.entry_key(workload=WORKLOAD, version=version, fingerprint=fingerprint))
            )
            record = self.redis.get(entry)
            decoded = store.decode_record(record)
            if decoded is None:
                raise RuntimeError(f"the {label} entry is missing or unreadable")
            with override_settings(RESPCACHE={"CACHE_ALIAS": "respcache", "COMPRESS_MIN_BYTES": 1 << 62}):
                plain = store.encode_record(decoded.message, stored_at=decoded.stored_at, model=decoded.model)
            self.redis.set("bench:plain", plain)
            meta_bytes = self.memory(meta) + self.memory(notes)
            compressed = self.memory(entry) + meta_bytes
            uncompressed = self.memory("bench:plain") + meta_bytes
            self.redis.delete("bench:plain")
            self.rows.append(
                Row.compare(
                    f"memory per entry {label} (entry + meta + notes)",
                    compressed,
                    "bytes",
                    uncompressed,
                    "uncompressed",
                )
            )

    def crypto_rows(self) -> None:
        """Encryption at rest's CPU per hit (bench/crypto.py), after cpu_rows: against its hit CPU."""
        say("encryption at rest: record decode CPU with and without a key")
        rows, raw = crypto.rows(SIZES, self.plan.crypto_decodes, self.plan.rounds, self.raw.get("cpu_per_request", {}))
        self.rows += rows
        self.raw["encryption"] = raw

    def memory(self, key: str) -> int:
        return int(self.redis.memory_usage(key, samples=0) or 0)


def wsgi_cpu(app: Any, path: str, headers: dict[str, str], body: bytes, n: int, expect: str = "") -> float:
    """CPU seconds ``app`` spends on ``n`` calls of one request (SDK headers and body): the
    whole process's, so work a call hands to another thread (the call log's writer) counts."""
    environ: dict[str, Any] = {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": path,
        "SCRIPT_NAME": "",
        "QUERY_STRING": "",
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": False,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
        "CONTENT_LENGTH": str(len(body)),
        "CONTENT_TYPE": headers.get("content-type", ""),
    }
    for name, value in headers.items():
        if name.lower() not in {"content-type", "content-length"}:
            environ["HTTP_" + name.upper().replace("-", "_")] = value
    # Kept as they come and checked after the clock stops: the hit and the floor pay the same.
    seen: list[tuple[str, list[tuple[str, str]]]] = []

    def start_response(status: str, response_headers: list[tuple[str, str]], exc_info: Any = None) -> None:
        seen.append((status, response_headers))

    from respcache import telemetry

    telemetry.flush()  # lines queued before this run are not its cost
    started = time.process_time()
    for _ in range(n):
        result = app({**environ, "wsgi.input": io.BytesIO(body)}, start_response)
        b"".join(result)
        result.close()
    telemetry.flush()  # the call log lines these calls queued are
    used = time.process_time() - started
    statuses = Counter(
        (status, dict((k.lower(), v) for k, v in response_headers).get("x-respcache", ""))
        for status, response_headers in seen
    )
    if statuses != Counter({("200 OK", expect): n}):
        raise RuntimeError(f"{path}: expected 200 OK, X-Respcache {expect!r} every time, got {statuses}")
    return used


def slug(label: str) -> str:
    return label.replace(" ", "").lower()


def redis_get(url: str, key: str, concurrency: int, duration: float) -> loadgen.Run:
    """The bare baseline: GET of the same bytes from Python (redis-py, asyncio when concurrent)."""
    import redis
    import redis.asyncio as aioredis

    run = loadgen.Run()
    if concurrency == 1:
        client = redis.Redis.from_url(url)
        client.get(key)
        started = time.perf_counter()
        deadline = started + duration
        while (now := time.perf_counter()) < deadline:
            client.get(key)
            run.latencies.append(time.perf_counter() - now)
        run.elapsed = time.perf_counter() - started
        client.close()
        return run

    async def main() -> None:
        client = aioredis.from_url(url, max_connections=concurrency)
        await client.get(key)
        started = time.perf_counter()
        deadline = started + duration

        async def worker() -> None:
            while (now := time.perf_counter()) < deadline:
                await client.get(key)
                run.latencies.append(time.perf_counter() - now)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        run.elapsed = time.perf_counter() - started
        await client.aclose()

    asyncio.run(main())
    return run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="run every step briefly (a smoke test)")
    parser.add_argument(
        "--out",
        type=Path,
        help="write the results as JSON here (default: bench/results.json, none with --quick)",
    )
    parser.add_argument(
        "--only",
        choices=["hits", "capacity", "flood", "limits"],
        help="run only this section (after the setup): hits = the hit-vs-floor and CPU rows",
    )
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", message="No directory at")  # whitenoise, before collectstatic
    plan = QUICK if args.quick else Plan()
    out = args.out or (None if args.quick or args.only else ROOT / "bench" / "results.json")
    started = time.monotonic()
    load_before = os.getloadavg()[0]
    with Harness() as harness:
        bench = Bench(harness, plan)
        bench.start()
        if args.only in (None, "hits", "capacity"):
            wires = bench.prepare_hits()
        if args.only in (None, "hits"):
            bench.hit_rows(wires)
        if args.only is None:
            bench.redis_cost_rows(wires)
        if args.only in (None, "hits"):
            bench.cpu_rows(wires)
        if args.only is None:
            bench.crypto_rows()
            bench.db_rows(wires)
        if args.only in (None, "capacity"):
            capacity.add_rows(bench, wires)
        if args.only is None:
            bench.miss_rows()
            bench.stampede_rows()
            bench.key_rows()
            bench.memory_rows()
        if args.only in (None, "limits"):
            limits.add_rows(bench)
        if args.only in (None, "flood"):
            flood.add_rows(bench)
        workers = web_concurrency()
        redis_version = bench.redis_version
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    box = machine()
    command = "make bench" + (" (quick)" if args.quick else "")
    header = [
        f"respcache bench, {now}: {command}, {time.monotonic() - started:.0f}s; "
        f"load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after (other work shares these cores)",
        f"machine: {box['cpu']}, {box['cores']} cores, {box['memory']}, {box['os']}, "
        f"Python {box['python']}, Redis {redis_version}; gunicorn gevent × {workers} workers "
        "(gunicorn.conf.py) for service and floor",
        "floor = minimal Django + DRF view doing one Redis GET, same settings and gunicorn; ratio = value / baseline",
        "",
    ]
    print(render(bench.rows, header))
    if out is not None:
        payload = as_json(
            bench.rows,
            date=now,
            load_average=[load_before, os.getloadavg()[0]],
            command=command,
            machine=box,
            redis=redis_version,
            gunicorn_workers=workers,
            plan=plan.__dict__,
            raw=bench.raw,
        )
        out.write_text(json.dumps(payload, indent=2, default=str) + "\n")
        say(f"wrote {out}")
    return 0  # a missed target is a finding in the table, not a failure of the bench


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        say("interrupted; everything it started is stopped")
        sys.exit(130)
