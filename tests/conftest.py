"""Fixtures: a real Redis database flushed around each test, the fake Messages API, factories."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import anthropic
import pytest
from django_redis import get_redis_connection

from respcache import selectors, store, tally, upstream
from respcache.models import ApiKey, Workload
from respcache.services import api_key_create
from tests.fake_anthropic import FakeAnthropic


@pytest.fixture(autouse=True)
def redis_db(settings: Any) -> Iterator[Any]:
    """The test Redis database, empty at the start of each test; local copies dropped too."""
    client = get_redis_connection("respcache")
    client.flushdb()
    store.breaker.reset()
    listening()
    selectors.clear_local_caches()
    tally.discard()
    yield client
    client.flushdb()
    selectors.clear_local_caches()


def listening() -> None:
    """This process hears announced policy changes (its first confirmation drops the local
    copies once: a test must not see that happen in its middle)."""
    import time

    selectors.listen_for_changes()
    deadline = time.monotonic() + 5
    while not selectors.listening_for_changes() and time.monotonic() < deadline:
        time.sleep(0.005)


@pytest.fixture(scope="session")
def fake_server() -> Iterator[FakeAnthropic]:
    server = FakeAnthropic().start()
    yield server
    server.stop()


@pytest.fixture
def fake(fake_server: FakeAnthropic, settings: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeAnthropic]:
    """respcache's upstream pointed at the fake Messages API, through the official SDK."""
    fake_server.reset()
    monkeypatch.setenv("ANTHROPIC_BASE_URL", fake_server.url)
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-server-key")
    settings.RESPCACHE = {**settings.RESPCACHE, "UPSTREAM": "anthropic"}
    upstream.reset_upstreams()
    yield fake_server
    fake_server.pause.set()
    fake_server.stream_gate.set()
    fake_server.salt = ""
    upstream.reset_upstreams()


@pytest.fixture
def make_workload(db: Any) -> Any:
    def make(slug: str = "intents", **fields: Any) -> Workload:
        return Workload.objects.create(slug=slug, **fields)

    return make


@pytest.fixture
def workload(make_workload: Any) -> Workload:
    return make_workload("intents")


@pytest.fixture
def make_key(db: Any) -> Any:
    def make(*workloads: Workload, name: str = "caller", managed: tuple[Workload, ...] = ()) -> str:
        _, raw = api_key_create(name=name, workloads=workloads, managed_workloads=managed)
        return raw

    return make


@pytest.fixture
def api_key(make_key: Any, workload: Workload) -> str:
    return make_key(workload)


@pytest.fixture
def sdk(live_server: Any, api_key: str) -> Any:
    """An official SDK client for ``/w/<slug>`` on the live server (no retries: tests count calls)."""

    def make(slug: str = "intents", key: str | None = None, **kwargs: Any) -> anthropic.Anthropic:
        return anthropic.Anthropic(
            base_url=f"{live_server.url}/w/{slug}", api_key=key or api_key, max_retries=0, **kwargs
        )

    return make


def redis_down(caches: dict[str, Any]) -> dict[str, Any]:
    """``caches`` with the respcache alias pointed at a port where no Redis listens (failing in
    0.2 s, not the client's default timeouts): for fail-open and "Redis is down" tests."""
    alias = caches["respcache"]
    options = {**alias.get("OPTIONS", {}), "SOCKET_CONNECT_TIMEOUT": 0.2, "SOCKET_TIMEOUT": 0.2}
    return {**caches, "respcache": {**alias, "LOCATION": "redis://127.0.0.1:1/0", "OPTIONS": options}}


def ask(text: str = "password reset", **extra: Any) -> dict[str, Any]:
    """A Messages API request body."""
    body: dict[str, Any] = {
        "model": "claude-test-1",
        "max_tokens": 64,
        "messages": [{"role": "user", "content": text}],
    }
    body.update(extra)
    return body


__all__ = ["ApiKey", "ask", "os"]
