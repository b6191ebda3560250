"""A small HTTP/1.1 load generator: asyncio protocols, keep-alive, pre-built request bytes.

It replays one request (captured from the official SDK) on ``concurrency`` connections, each
sending the next request as soon as the previous answer is complete (closed loop), and records
every latency. Parsing is the minimum (status line, Content-Length), so the generator costs a
small fraction of what the servers it measures cost.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field


class BadResponse(RuntimeError):
    """The server answered something the bench did not expect."""


@dataclass(frozen=True)
class Response:
    status: int
    head: bytes
    body: bytes
    sent_at: float  # time.perf_counter()
    done_at: float  # time.perf_counter()
    arrived_epoch: float  # time.time() when the last byte arrived

    def header(self, name: str) -> str | None:
        wanted = name.lower().encode() + b":"
        for line in self.head.split(b"\r\n")[1:]:
            if line.lower().startswith(wanted):
                return line[len(wanted) :].strip().decode()
        return None


def _content_length(head: bytes) -> int:
    lower = head.lower()
    at = lower.find(b"\r\ncontent-length:")
    if at < 0:
        if b"\r\ntransfer-encoding:" in lower:
            raise BadResponse("chunked responses are not supported by the bench client")
        return 0
    end = lower.find(b"\r\n", at + 2)
    return int(lower[at + 17 : end if end >= 0 else None])


class _Connection(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.head: bytes | None = None
        self.need = 0
        self.waiter: asyncio.Future[tuple[bytes, bytes, float]] | None = None
        self.lost: BaseException | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self.head is None:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            self.head = bytes(self.buffer[:end])
            del self.buffer[: end + 4]
            self.need = _content_length(self.head)
        if len(self.buffer) >= self.need:
            body = bytes(self.buffer[: self.need])
            del self.buffer[: self.need]
            head, self.head = self.head, None
            waiter, self.waiter = self.waiter, None
            if waiter is not None and not waiter.done():
                waiter.set_result((head, body, time.time()))

    def connection_lost(self, exc: BaseException | None) -> None:
        self.lost = exc or ConnectionResetError("connection closed by the server")
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(self.lost)

    async def exchange(self, request: bytes) -> Response:
        if self.lost is not None or self.transport is None:
            raise ConnectionResetError("connection closed")
        self.waiter = asyncio.get_running_loop().create_future()
        sent = time.perf_counter()
        self.transport.write(request)
        head, body, arrived = await self.waiter
        done = time.perf_counter()
        return Response(int(head[9:12]), head, body, sent, done, arrived)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def _connect(host: str, port: int) -> _Connection:
    _, protocol = await asyncio.get_running_loop().create_connection(_Connection, host, port)
    return protocol


@dataclass
class Run:
    """What one closed-loop run measured. Latencies in seconds."""

    latencies: list[float] = field(default_factory=list)
    elapsed: float = 0.0
    errors: int = 0
    unexpected: str = ""
    #: Answers per connection: a server's workers may not share the connections evenly.
    per_connection: list[int] = field(default_factory=list)

    @property
    def requests(self) -> int:
        return len(self.latencies)

    @property
    def rate(self) -> float:
        return self.requests / self.elapsed if self.elapsed else 0.0


async def _closed_loop(
    host: str,
    port: int,
    request: bytes | Sequence[bytes],
    *,
    concurrency: int,
    duration: float,
    expect: bytes | None,
) -> Run:
    requests = [request] if isinstance(request, bytes) else list(request)
    connections = [await _connect(host, port) for _ in range(concurrency)]
    run = Run(per_connection=[0] * concurrency)
    started = time.perf_counter()
    deadline = started + duration

    async def worker(index: int) -> None:
        connection = connections[index]
        turn = index  # each connection walks the requests from its own place
        while time.perf_counter() < deadline:
            request = requests[turn % len(requests)]
            turn += 1
            try:
                response = await connection.exchange(request)
            except OSError:
                run.errors += 1
                connection.close()
                connection = connections[index] = await _connect(host, port)
                continue
            if response.status != 200 or (expect is not None and expect not in response.head.lower()):
                run.errors += 1
                run.unexpected = run.unexpected or (response.head + b"\r\n\r\n" + response.body[:300]).decode(
                    errors="replace"
                )
                continue
            run.latencies.append(response.done_at - response.sent_at)
            run.per_connection[index] += 1

    try:
        await asyncio.gather(*(worker(i) for i in range(concurrency)))
    finally:
        run.elapsed = time.perf_counter() - started
        for connection in connections:
            connection.close()
    return run


def closed_loop(
    host: str,
    port: int,
    request: bytes | Sequence[bytes],
    *,
    concurrency: int,
    duration: float,
    expect: bytes | None = None,
) -> Run:
    """Replay ``request`` on ``concurrency`` keep-alive connections for ``duration`` seconds
    (several requests: each connection sends them in turn, starting at its own index).

    ``expect``: bytes every answer's (lower-cased) head must contain, e.g. ``b"x-respcache: hit"``.
    """
    return asyncio.run(_closed_loop(host, port, request, concurrency=concurrency, duration=duration, expect=expect))


async def _burst(host: str, port: int, request: bytes, count: int, timeout: float) -> list[Response]:
    connections = await asyncio.gather(*(_connect(host, port) for _ in range(count)))
    try:
        # Every connection is open before the first byte is sent, so the requests arrive together.
        exchanges = [asyncio.ensure_future(c.exchange(request)) for c in connections]
        return list(await asyncio.wait_for(asyncio.gather(*exchanges), timeout))
    finally:
        for connection in connections:
            connection.close()


def burst(host: str, port: int, request: bytes, *, count: int, timeout: float = 60.0) -> list[Response]:
    """Send ``request`` on ``count`` fresh connections at once; every answer, with its arrival."""
    return asyncio.run(_burst(host, port, request, count, timeout))


def sequential(host: str, port: int, requests: list[bytes]) -> list[Response]:
    """Send ``requests`` one after the other on one keep-alive connection."""

    async def run() -> list[Response]:
        connection = await _connect(host, port)
        try:
            return [await connection.exchange(r) for r in requests]
        finally:
            connection.close()

    return asyncio.run(run())


def interleaved(
    a: tuple[str, int], requests_a: list[bytes], b: tuple[str, int], requests_b: list[bytes]
) -> tuple[list[Response], list[Response]]:
    """Send ``requests_a[i]`` to ``a`` then ``requests_b[i]`` to ``b``, in turn, one at a time,
    each on its own keep-alive connection: two series measured under the same conditions."""

    async def run() -> tuple[list[Response], list[Response]]:
        first, second = await _connect(*a), await _connect(*b)
        try:
            out_a, out_b = [], []
            for request_a, request_b in zip(requests_a, requests_b, strict=True):
                out_a.append(await first.exchange(request_a))
                out_b.append(await second.exchange(request_b))
            return out_a, out_b
        finally:
            first.close()
            second.close()

    return asyncio.run(run())


def build_request(method: str, path: str, headers: dict[str, str], body: bytes) -> bytes:
    """Raw HTTP/1.1 request bytes (Content-Length set from ``body``)."""
    lines = [f"{method} {path} HTTP/1.1"]
    for name, value in headers.items():
        if name.lower() not in {"content-length", "connection", "transfer-encoding"}:
            lines.append(f"{name}: {value}")
    lines.append(f"content-length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
