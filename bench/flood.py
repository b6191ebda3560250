"""The hit path during the worst unauthenticated flood: a legitimate caller's hit p50 while 16
strangers hammer the service, against the same caller's p50 without them.

The flood runs in its own process (its client CPU must not slow the measuring client): 8
connections send ``Authorization: Basic <random>`` to ``/api/workloads/`` (refused unread, then
throttled) and 8 post failed sign-ins to ``/admin/login/`` with a valid CSRF token and a made-up
username each time, so that the lockout never spares a password hash: every one costs PBKDF2
(a million iterations) unless the hashing gate refuses it. Quiet and flooded runs alternate.
"""

from __future__ import annotations

import asyncio
import base64
import http.client
import multiprocessing
import re
import secrets
import time
from collections import Counter
from typing import Any
from urllib.parse import urlencode

from bench import loadgen
from bench.report import Row, percentile, ratio

CONNECTIONS = 16
KINDS = ("basic", "login")  # connection i sends KINDS[i % len(KINDS)]: half Basic-auth calls, half sign-ins
LOGIN = "/admin/login/"


def csrf(host: str, port: int) -> tuple[str, str]:
    """A CSRF cookie and form token for the sign-in page (reusable for every post)."""
    conn = http.client.HTTPConnection(host, port, timeout=10)
    conn.request("GET", LOGIN)
    response = conn.getresponse()
    page = response.read().decode()
    cookie = next(
        part.split(";", 1)[0] for name, part in response.getheaders() if name.lower() == "set-cookie" and "csrf" in part
    )
    conn.close()
    return cookie, re.findall(r'name="csrfmiddlewaretoken" value="([^"]+)"', page)[0]


def basic_request(host: str) -> bytes:
    credentials = f"user{secrets.token_hex(4)}:{secrets.token_hex(8)}".encode()
    auth = "Basic " + base64.b64encode(credentials).decode()
    return loadgen.build_request("GET", "/api/workloads/", {"host": host, "authorization": auth}, b"")


def login_request(host: str, cookie: str, token: str) -> bytes:
    form = {"csrfmiddlewaretoken": token, "username": f"user{secrets.token_hex(4)}", "password": secrets.token_hex(8)}
    headers = {
        "host": host,
        "cookie": cookie,
        "referer": f"http://{host}{LOGIN}",
        "content-type": "application/x-www-form-urlencoded",
    }
    return loadgen.build_request("POST", LOGIN, headers, urlencode(form).encode())


async def _flood(host: str, port: int, kinds: tuple[str, ...], active: Any, stop: Any, statuses: Counter[str]) -> None:
    cookie, token = csrf(host, port)
    netloc = f"{host}:{port}"

    async def worker(index: int) -> None:
        connection = await loadgen._connect(host, port)
        while not stop.is_set():
            if not active.is_set():
                await asyncio.sleep(0.02)
                continue
            kind = kinds[index % len(kinds)]
            request = basic_request(netloc) if kind == "basic" else login_request(netloc, cookie, token)
            try:
                response = await connection.exchange(request)
            except (OSError, loadgen.BadResponse):
                statuses[f"{kind} dropped"] += 1
                connection.close()
                connection = await loadgen._connect(host, port)
                continue
            statuses[f"{kind} {response.status}"] += 1
        connection.close()

    await asyncio.gather(*(worker(i) for i in range(CONNECTIONS)))


def _flood_process(host: str, port: int, kinds: tuple[str, ...], active: Any, stop: Any, results: Any) -> None:
    statuses: Counter[str] = Counter()
    asyncio.run(_flood(host, port, kinds, active, stop, statuses))
    results.put(dict(statuses))


def add_rows(bench: Any) -> None:
    """Alternating quiet and flooded runs of one caller's 1 KB hits (one in flight); one row."""
    from bench.__main__ import TICKET, say

    plan = bench.plan
    service = bench.service
    hit = bench.wire(f"[[answer_bytes:1000]] flood {TICKET}").raw
    loadgen.sequential(service.host, service.port, [hit])  # the miss that stores it
    context = multiprocessing.get_context("spawn")
    active, stop, results = context.Event(), context.Event(), context.Queue()
    flooder = context.Process(target=_flood_process, args=(service.host, service.port, KINDS, active, stop, results))
    flooder.start()
    pairs = max(1, plan.rounds // 2)
    say(f"hit p50 with and without a {CONNECTIONS}-way unauthenticated flood: {pairs} pairs of {plan.duration}s runs")
    runs: dict[str, list[loadgen.Run]] = {"quiet": [], "flood": []}
    try:
        for _ in range(pairs):
            for name in ("quiet", "flood"):
                if name == "flood":
                    active.set()
                    time.sleep(max(0.5, plan.warmup))  # let the hashing queues fill
                run = loadgen.closed_loop(
                    service.host,
                    service.port,
                    hit,
                    concurrency=1,
                    duration=plan.duration,
                    expect=b"x-respcache: hit",
                )
                active.clear()
                if run.errors:
                    raise RuntimeError(f"hit during the flood: {run.errors} unexpected answers, e.g.\n{run.unexpected}")
                runs[name].append(run)
                time.sleep(0.3)  # the flood's requests in flight drain
    finally:
        stop.set()
        active.set()
        statuses = results.get(timeout=60)
        flooder.join(30)
    quiet = [x for r in runs["quiet"] for x in r.latencies]
    flooded = [x for r in runs["flood"] for x in r.latencies]
    p50, q50 = percentile(flooded, 50), percentile(quiet, 50)
    p50_ratio = ratio(p50, q50)
    bench.rows.append(
        Row.compare(
            f"hit 1 KB p50 during a {CONNECTIONS}-way unauthenticated flood",
            p50,
            "s",
            q50,
            "no flood",
            target="≤ 1.50× no flood",
            ok=p50_ratio is not None and p50_ratio <= 1.5,
        )
    )
    bench.raw["flood"] = {
        "statuses": statuses,
        "hits": {name: [len(r.latencies) for r in rs] for name, rs in runs.items()},
        "p99": {"quiet": percentile(quiet, 99), "flood": percentile(flooded, 99)},
    }
    say(f"flood answers: {statuses}")
