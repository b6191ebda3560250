"""The fault runs' upstream: the bench's fake Messages API, with behaviour set at run time.

Run as ``python -m faults.upstream``: it prints its base URL on the first line of stdout and
serves until stdin closes (so it never outlives the run). On top of bench/upstream.py:

- ``POST /_faults`` with ``{"delay": S, "status": CODE, "plan": [S, ...]}`` sets how the next
  ``/v1/messages`` calls are answered: each call first sleeps the next delay of ``plan`` (one
  entry per call, in order) or else ``delay``, then answers ``status`` (an error in the Messages
  API's shape; 429 carries ``retry-after``) or, when it is null, the usual answer. Fields left
  out keep their value; ``POST /_faults`` with ``{}`` changes nothing.
- ``GET /_faults`` answers ``{"calls": [{"at", "port", "path", "prompt"}, ...]}``: every call,
  in arrival order, with the wall-clock time it arrived and the client's TCP port (which tells
  which gunicorn worker made it: faults/procs.py).

``Upstream`` is the run's handle on it: ``configure()``, ``calls()``.
"""

from __future__ import annotations

import io
import json
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from typing import Any

from bench.upstream import BenchUpstream
from tests.fake_anthropic import ERROR_TYPES


@dataclass
class Behaviour:
    delay: float = 0.0
    status: int | None = None
    plan: list[float] | None = None

    def next_delay(self) -> float:
        if self.plan:
            return self.plan.pop(0)
        return self.delay


def _prompt(body: Any) -> str:
    """The first user message's text (the runs tag their prompts), or ""."""
    try:
        content = body["messages"][0]["content"]
        return content if isinstance(content, str) else " ".join(b.get("text", "") for b in content)
    except (KeyError, IndexError, TypeError, AttributeError):
        return ""


class FaultyUpstream(BenchUpstream):
    """The fake Messages API whose delay and status a run sets while it serves."""

    def __init__(self) -> None:
        super().__init__()
        # http.server's backlog is 5: a 40-caller stampede's connections would be refused.
        self.server.socket.listen(512)
        self.behaviour = Behaviour()
        self.log: list[dict[str, Any]] = []

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        base: Any = super()._handler()
        fake = self

        class Handler(base):  # type: ignore[misc]  # its base is built at run time
            rfile: Any  # the connection's reader (swapped for the body's bytes while the fake reads it)

            def do_GET(self) -> None:
                if self.path == "/_faults":
                    with fake.lock:
                        self._send_json(200, {"calls": list(fake.log)})
                else:
                    super().do_GET()

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("content-length") or 0))
                if self.path == "/_faults":
                    self._configure(raw)
                    return
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = {}
                with fake.lock:
                    fake.log.append(
                        {
                            "at": time.time(),
                            "port": self.client_address[1],
                            "path": self.path,
                            "prompt": _prompt(body),
                        }
                    )
                    delay = fake.behaviour.next_delay()
                    status = fake.behaviour.status
                if delay:
                    time.sleep(delay)
                if status is not None and self.path.startswith("/v1/messages"):
                    error = {"type": ERROR_TYPES.get(status, "api_error"), "message": f"faults: upstream {status}"}
                    headers = {"retry-after": "7"} if status == 429 else {}
                    self._send_json(status, {"type": "error", "error": error}, headers)
                    return
                connection, self.rfile = self.rfile, io.BytesIO(raw)  # the test fake reads the body again
                try:
                    super().do_POST()
                finally:
                    self.rfile = connection  # the next request on this keep-alive connection

            def _configure(self, raw: bytes) -> None:
                changes = json.loads(raw or b"{}")
                with fake.lock:
                    for name in ("delay", "status", "plan"):
                        if name in changes:
                            setattr(fake.behaviour, name, changes[name])
                self._send_json(200, {"ok": True})

        return Handler


_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never through a proxy


class Upstream:
    """The run's handle on a FaultyUpstream process at ``url``."""

    def __init__(self, url: str) -> None:
        self.url = url

    def configure(self, *, delay: float = 0.0, status: int | None = None, plan: list[float] | None = None) -> None:
        """Answer every next call after ``delay`` (the first ones after ``plan``'s delays) with
        ``status``, or normally when it is None."""
        self._request("POST", {"delay": delay, "status": status, "plan": list(plan or [])})

    def calls(self, prompt: str | None = None) -> list[dict[str, Any]]:
        """Every /v1/messages call so far (see the module docstring), or those of ``prompt``."""
        return [
            c
            for c in self._request("GET")["calls"]
            if c["path"] == "/v1/messages" and (prompt is None or c["prompt"] == prompt)
        ]

    def wait_calls(self, prompt: str, count: int = 1, timeout: float = 10.0) -> list[dict[str, Any]]:
        """Block until ``count`` calls of ``prompt`` have arrived; the calls so far."""
        deadline = time.monotonic() + timeout
        while len(calls := self.calls(prompt)) < count:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the upstream saw {len(calls)} calls of {prompt!r}, expected {count}")
            time.sleep(0.02)
        return calls

    def count(self) -> int:
        return len(self.calls())

    def _request(self, method: str, payload: dict[str, Any] | None = None) -> Any:
        data = None if payload is None else json.dumps(payload).encode()
        request = urllib.request.Request(
            self.url + "/_faults", data=data, method=method, headers={"content-type": "application/json"}
        )
        with _DIRECT.open(request, timeout=10) as response:
            return json.loads(response.read())


def main() -> None:
    server = FaultyUpstream().start()
    print(server.url, flush=True)
    stopped = threading.Event()

    def watch_stdin() -> None:
        sys.stdin.read()
        stopped.set()

    threading.Thread(target=watch_stdin, daemon=True).start()
    stopped.wait()
    server.stop()


if __name__ == "__main__":
    main()
