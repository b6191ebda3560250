"""The service under gunicorn as in production (gunicorn.conf.py, two gevent workers): /metrics is
the same whichever worker answers, also after a HUP has replaced the workers without dropping a
request."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx2 as httpx
import orjson
import pytest
from django.conf import settings
from django.db import connection

from respcache import stats
from tests.conftest import ask
from tests.waiting import eventually

pytestmark = pytest.mark.django_db(transaction=True)  # the workers must see the rows

BASE_DIR = Path(__file__).resolve().parent.parent
GUNICORN = Path(sys.executable).parent / "gunicorn"
ACCESS = re.compile(r"^<(?P<pid>\d+)> (?P<method>\S+) (?P<path>\S+) \S+ (?P<status>\d+)$")


def database_url() -> str:
    """The test database (already created by pytest-django) as a DATABASE_URL."""
    db = connection.settings_dict
    if db["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{db['NAME']}"
    user = quote(db.get("USER") or "", safe="")
    password = quote(db.get("PASSWORD") or "", safe="")
    auth = f"{user}:{password}@" if password else (f"{user}@" if user else "")
    return f"postgres://{auth}{db.get('HOST') or '127.0.0.1'}:{db.get('PORT') or 5432}/{db['NAME']}"


@dataclass
class Server:
    url: str
    process: subprocess.Popen[bytes]
    access_log: Path

    def entries(self) -> list[dict[str, str]]:
        lines = self.access_log.read_text().splitlines() if self.access_log.exists() else []
        return [m.groupdict() for m in map(ACCESS.match, lines) if m]

    def get(self, path: str, timeout: float = 10, **kwargs: Any) -> httpx.Response:
        # A new connection per request, so the kernel hands requests to either worker.
        return httpx.get(self.url + path, headers={"connection": "close"}, timeout=timeout, **kwargs)

    def post(self, path: str, **kwargs: Any) -> httpx.Response:
        headers = {"connection": "close", **kwargs.pop("headers", {})}
        return httpx.post(self.url + path, headers=headers, timeout=10, **kwargs)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def gunicorn(tmp_path: Path, db: Any) -> Iterator[Server]:
    port = free_port()
    access_log = tmp_path / "access.log"
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "REDIS_URL": settings.CACHES["respcache"]["LOCATION"],
        "DATABASE_URL": database_url(),
        "WEB_CONCURRENCY": "2",
        "GUNICORN_BIND": f"127.0.0.1:{port}",
        "GUNICORN_ACCESSLOG": str(access_log),
        "GUNICORN_LOGLEVEL": "warning",
        "GUNICORN_GRACEFUL_TIMEOUT": "5",
        "GUNICORN_CMD_ARGS": "--access-logformat '%(p)s %(r)s %(s)s'",
        "RESPCACHE_CALL_LOG_LEVEL": "WARNING",
    }
    with open(tmp_path / "gunicorn.log", "wb") as log:
        process = subprocess.Popen(
            [str(GUNICORN), "-c", "gunicorn.conf.py", "project.wsgi"],
            cwd=BASE_DIR,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    server = Server(f"http://127.0.0.1:{port}", process, access_log)
    deadline = time.monotonic() + 60
    while True:
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail("gunicorn did not start:\n" + (tmp_path / "gunicorn.log").read_text()[-3000:])
        try:
            if server.get("/healthz").status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.1)
    yield server
    process.send_signal(signal.SIGINT)  # quick shutdown: the test is over
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()


def scrape_every_worker(server: Server, pids: set[str]) -> set[str]:
    """Scrape /metrics (a new connection each time) until each of ``pids`` has answered; the bodies."""
    bodies: set[str] = set()
    for _ in range(80):  # bounded; the kernel spreads new connections over the workers
        response = server.get("/metrics")
        assert response.status_code == 200
        bodies.add(response.text)
        answered = {e["pid"] for e in server.entries() if e["path"] == "/metrics"}
        if pids <= answered:
            return bodies
    pytest.fail(f"workers {pids - answered} never answered a scrape")


@pytest.fixture
def no_timed_flush(monkeypatch: pytest.MonkeyPatch) -> None:
    """Servers started after this flush their counters only when they read or exit."""
    monkeypatch.setenv("RESPCACHE_COUNTER_FLUSH_SECONDS", "3600")


def test_a_stopping_worker_sends_the_counts_it_added_up(
    no_timed_flush: None, gunicorn: Server, make_workload: Any, make_key: Any
) -> None:
    """A worker's exit flushes the tally (atexit): counts not yet sent when the workers stop
    (TERM: a deploy, a scale-down) still reach Redis."""
    key = make_key(make_workload("intents"))
    for prompt in ("a", "a", "b", "b"):
        response = gunicorn.post(
            "/w/intents/v1/messages", content=orjson.dumps(ask(prompt)), headers={"x-api-key": key}
        )
        assert response.status_code == 200, response.text
    time.sleep(0.5)
    assert stats.all_time(["intents"])["intents"]["miss"] == 0  # still in the workers
    gunicorn.process.send_signal(signal.SIGTERM)
    gunicorn.process.wait(timeout=30)
    counts = stats.all_time(["intents"])["intents"]
    assert (counts["miss"], counts["hit"], counts["written"]) == (2, 2, 2)


def test_every_worker_reports_the_same_metrics_even_after_a_reload(
    gunicorn: Server, make_workload: Any, make_key: Any
) -> None:
    key = make_key(make_workload("intents"))
    prompts = [f"question {i}" for i in range(12)]
    calls = 0
    workers: set[str] = set()
    # Each prompt a miss, then hits; until both workers have served calls (the kernel spreads
    # new connections over them, usually at once; bounded).
    while calls < 24 or (len(workers) < 2 and calls < 240):
        prompt = prompts[calls % len(prompts)]
        response = gunicorn.post(
            "/w/intents/v1/messages", content=orjson.dumps(ask(prompt)), headers={"x-api-key": key}
        )
        assert response.status_code == 200, response.text
        calls += 1
        workers = {e["pid"] for e in gunicorn.entries() if e["path"].startswith("/w/")}
    assert len(workers) == 2, "the calls should have reached both workers"
    hits = calls - len(prompts)

    # Each worker flushes its counts every second (COUNTER_FLUSH_SECONDS): within that, every
    # worker reports the same numbers.
    def agreed() -> int:
        return len(scrape_every_worker(gunicorn, workers))

    eventually(lambda: stats.all_time(["intents"])["intents"]["hit"], hits)
    eventually(agreed, 1)
    bodies = scrape_every_worker(gunicorn, workers)
    assert len(bodies) == 1, "every worker must report the same numbers"
    text = next(iter(bodies))
    assert f'respcache_requests_total{{outcome="hit",workload="intents"}} {hits}.0' in text
    assert 'respcache_requests_total{outcome="miss",workload="intents"} 12.0' in text
    assert 'respcache_entries_written_total{workload="intents"} 12.0' in text
    assert stats.all_time(["intents"])["intents"]["hit"] == hits  # what this process reads, too

    # Graceful reload: new workers replace the old ones, no request fails meanwhile, and the new
    # workers report the very same numbers (nothing lived in the old workers' memory).
    gunicorn.process.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 60
    new: set[str] = set()
    while len(new) < 2 and time.monotonic() < deadline:
        # Requests that arrive while the new workers boot wait in the listen backlog: served late,
        # never refused.
        assert gunicorn.get("/healthz", timeout=60).status_code == 200
        new = {e["pid"] for e in gunicorn.entries()} - workers
    assert len(new) == 2, "a HUP replaces both workers"
    assert scrape_every_worker(gunicorn, new) | bodies == bodies
    assert gunicorn.process.poll() is None
