"""Starting and stopping what the bench measures: its own Redis, the fake upstream, gunicorn.

Everything lives in one temporary folder and runs in its own session (so a Ctrl-C reaches the
bench, which then stops each process it started, by its id, and removes the folder).
"""

from __future__ import annotations

import http.client
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from project import embedded_redis

ROOT = Path(__file__).resolve().parent.parent


def redis_server_command(binary: str, socket: Path, folder: Path) -> list[str]:
    """A private redis-server on a unix socket in ``folder``, keeping nothing on disk (bench and
    faults start theirs alike)."""
    return [
        binary,
        "--port",
        "0",
        "--unixsocket",
        str(socket),
        "--unixsocketperm",
        "700",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        str(folder),
        "--databases",
        "16",
    ]


class StartError(RuntimeError):
    """A process the bench needs did not start; the message ends with its log."""


@dataclass
class Process:
    name: str
    popen: subprocess.Popen[Any]
    log: Path


@dataclass(frozen=True)
class Server:
    name: str
    host: str
    port: int

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def web_concurrency() -> int:
    """gunicorn.conf.py's worker count, as the bench's gunicorns will compute it."""
    return int(os.environ.get("WEB_CONCURRENCY", max(2, os.cpu_count() or 1)))


class Harness:
    """A context manager owning the bench's processes and temporary folder."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="respcache-bench-"))
        self.processes: list[Process] = []
        self.redis_socket = self.dir / "redis.sock"
        self.env: dict[str, str] = {}

    def __enter__(self) -> Harness:
        signal.signal(signal.SIGTERM, _raise_interrupt)
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

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
        log = self.dir / f"{name}.log"
        log_file: IO[bytes] = open(log, "ab")  # noqa: SIM115 - closed when the process is stopped
        popen = subprocess.Popen(
            argv,
            cwd=ROOT,
            env={**os.environ, **self.env, **(env or {})},
            stdin=stdin,
            stdout=stdout if stdout is not None else log_file,
            stderr=log_file,
            start_new_session=True,
        )
        log_file.close()  # the child holds its own descriptor
        process = Process(name, popen, log)
        self.processes.append(process)
        return process

    def log_tail(self, process: Process, lines: int = 30) -> str:
        try:
            text = process.log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def fail(self, process: Process, why: str) -> StartError:
        return StartError(f"{process.name}: {why}\n--- {process.log} ---\n{self.log_tail(process)}")

    def stop(self, process: Process, timeout: float = 10.0) -> None:
        popen = process.popen
        if popen.poll() is None:
            try:
                popen.terminate()
                popen.wait(timeout)
            except subprocess.TimeoutExpired:
                popen.kill()
                popen.wait(5)
        for stream in (popen.stdin, popen.stdout):
            if stream is not None:
                stream.close()

    def close(self) -> None:
        stopped = []
        for process in reversed(self.processes):
            self.stop(process)
            stopped.append(f"{process.name} {process.popen.pid}")
        self.processes.clear()
        shutil.rmtree(self.dir, ignore_errors=True)
        print(
            f"bench: stopped {', '.join(stopped) or 'nothing'}; removed {self.dir}",
            file=sys.stderr,
            flush=True,
        )

    # --- what the bench starts ---------------------------------------------------------------

    def start_redis(self) -> str:
        """A redis-server of our own on a unix socket in the temporary folder; its URL (db 0)."""
        process = self.spawn("redis", redis_server_command(embedded_redis.binary(), self.redis_socket, self.dir))
        deadline = time.monotonic() + 10
        while not self._redis_answers():
            if process.popen.poll() is not None or time.monotonic() > deadline:
                raise self.fail(process, "redis-server did not start")
            time.sleep(0.02)
        return f"unix://{self.redis_socket}?db=0"

    def _redis_answers(self) -> bool:
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(0.5)
                sock.connect(str(self.redis_socket))
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def start_upstream(self) -> Server:
        """The fake Messages API (bench/upstream.py) in its own process; stops when stdin closes."""
        process = self.spawn(
            "upstream",
            [sys.executable, "-m", "bench.upstream"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        assert process.popen.stdout is not None
        line = process.popen.stdout.readline().decode().strip()
        if not line.startswith("http://"):
            raise self.fail(process, "the fake upstream did not start")
        host, _, port = line.removeprefix("http://").partition(":")
        return Server("upstream", host, int(port))

    def start_gunicorn(
        self, name: str, settings_module: str, env: dict[str, str] | None = None
    ) -> tuple[Server, Process]:
        """``gunicorn -c gunicorn.conf.py project.wsgi`` as deployed, on a free port (``env``:
        more environment, e.g. another Redis)."""
        port = free_port()
        process = self.spawn(
            name,
            [
                str(Path(sys.executable).parent / "gunicorn"),
                "-c",
                "gunicorn.conf.py",
                "project.wsgi",
            ],
            env={"DJANGO_SETTINGS_MODULE": settings_module, "GUNICORN_BIND": f"127.0.0.1:{port}", **(env or {})},
        )
        return Server(name, "127.0.0.1", port), process

    def wait_ready(self, server: Server, process: Process, path: str = "/healthz", timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if process.popen.poll() is not None:
                raise self.fail(process, f"exited with status {process.popen.returncode}")
            try:
                conn = http.client.HTTPConnection(server.host, server.port, timeout=2)
                conn.request("GET", path)
                if conn.getresponse().status == 200:
                    conn.close()
                    return
                conn.close()
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise self.fail(process, f"{path} did not answer 200 within {timeout:.0f}s")
            time.sleep(0.1)


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")
