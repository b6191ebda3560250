"""The deployment: gunicorn.conf.py's gevent workers keep serving while a stream is held open; with
production settings the API refuses plain HTTP with a 403 (never a redirect)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

import anthropic
import httpx2 as httpx
import pytest
from django.conf import settings as django_settings
from django.db import connection

from tests.conftest import ask

pytestmark = pytest.mark.django_db(transaction=True)  # committed, so the server sees the data

BASE_DIR = Path(__file__).resolve().parent.parent
GUNICORN = Path(sys.executable).with_name("gunicorn")


def database_url() -> str:
    """A URL for the database this test uses (the test database, not the development one)."""
    db = connection.settings_dict
    if db["ENGINE"] == "django.db.backends.sqlite3":
        return f"sqlite:///{db['NAME']}"
    if db["ENGINE"] == "django.db.backends.postgresql":
        user = quote(db.get("USER") or "", safe="")
        password = quote(db.get("PASSWORD") or "", safe="")
        auth = f"{user}:{password}@" if password else (f"{user}@" if user else "")
        port = f":{db['PORT']}" if db.get("PORT") else ""
        return f"postgres://{auth}{db.get('HOST') or ''}{port}/{db['NAME']}"
    pytest.skip(f"no DATABASE_URL form for {db['ENGINE']}")


@contextmanager
def serving(fake: Any, tmp_path: Path, **extra_env: str) -> Iterator[str]:
    """``gunicorn -c gunicorn.conf.py project.wsgi`` with ONE gevent worker (and ``extra_env``);
    yields its base URL."""
    env = {
        **os.environ,
        "GUNICORN_BIND": "127.0.0.1:0",  # an ephemeral port, read back from the log
        "WEB_CONCURRENCY": "1",
        "GUNICORN_GRACEFUL_TIMEOUT": "3",
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "REDIS_URL": django_settings.CACHES["respcache"]["LOCATION"],
        "DATABASE_URL": database_url(),
        "RESPCACHE_TEST_UPSTREAM": "anthropic",
        "ANTHROPIC_BASE_URL": fake.url,
        "ANTHROPIC_API_KEY": "sk-server-key",
        **extra_env,
    }
    env.pop("GUNICORN_WORKER_CLASS", None)  # the test is of the configured default
    log_path = tmp_path / "gunicorn.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [str(GUNICORN), "-c", "gunicorn.conf.py", "project.wsgi"],
            cwd=BASE_DIR,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        url = _wait_until_serving(process, log_path)
        yield url
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


@pytest.fixture
def gunicorn(fake: Any, tmp_path: Path) -> Iterator[str]:
    """The service with the test settings (no production hardening)."""
    with serving(fake, tmp_path) as url:
        yield url


def _wait_until_serving(process: subprocess.Popen[bytes], log_path: Path) -> str:
    deadline = time.monotonic() + 30
    url = None
    while time.monotonic() < deadline:
        log = log_path.read_text(errors="replace")
        if process.poll() is not None:
            raise AssertionError(f"gunicorn exited ({process.returncode}):\n{log}")
        if url is None and (found := re.search(r"Listening at: (http://127\.0\.0\.1:\d+)", log)):
            url = found.group(1)
        if url is not None:
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    assert "Using worker: gevent" in log, log
                    return url
            except httpx.TransportError:
                pass
        time.sleep(0.1)
    raise AssertionError(f"gunicorn did not start serving:\n{log_path.read_text(errors='replace')}")


def test_one_gevent_worker_serves_other_calls_while_a_stream_is_held_open(
    gunicorn: str, api_key: str, fake: Any, fake_server: Any
) -> None:
    held = ask("[[shape:tool_use]] [[stream_hold_after:3]] a long generation")
    expected = anthropic.Anthropic(base_url=fake_server.url, api_key="k").messages.stream(**held)
    with expected as direct:
        expected_message = direct.get_final_message().model_dump()

    client = anthropic.Anthropic(base_url=f"{gunicorn}/w/intents", api_key=api_key, max_retries=0, timeout=15)
    other = anthropic.Anthropic(base_url=f"{gunicorn}/w/intents", api_key=api_key, max_retries=0, timeout=15)
    fake.stream_gate.clear()  # the upstream stops mid-stream until the gate opens
    try:
        with client.messages.stream(**held) as stream:
            events = iter(stream)
            assert next(events).type == "message_start"
            assert stream.response.headers["x-respcache"] == "miss"
            # The one worker is in the middle of that stream; it serves everyone else meanwhile.
            quick = ask("meanwhile")
            assert other.messages.with_raw_response.create(**quick).headers["x-respcache"] == "miss"
            assert other.messages.with_raw_response.create(**quick).headers["x-respcache"] == "hit"
            with other.messages.stream(**quick) as replay:
                replay.get_final_message()
                assert replay.response.headers["x-respcache"] == "hit"
            counted = other.messages.with_raw_response.count_tokens(model=quick["model"], messages=quick["messages"])
            assert counted.headers["x-respcache"] == "miss"
            fake.stream_gate.set()
            assert stream.get_final_message().model_dump() == expected_message
        hit = other.messages.with_raw_response.create(**held)
        assert hit.headers["x-respcache"] == "hit"
        assert (
            hit.parse().model_dump()
            == anthropic.Anthropic(base_url=fake_server.url, api_key="k").messages.create(**held).model_dump()
        )
    finally:
        fake.stream_gate.set()
        client.close()
        other.close()


#: Production settings (tests.settings is project.settings underneath), behind a proxy that
#: terminates TLS and is trusted to say so in X-Forwarded-Proto.
PRODUCTION = {
    "DJANGO_DEBUG": "0",
    "DJANGO_SECRET_KEY": "rc-" + "p9Wm3Xk7Qv2Ls8Dn5Ty4Hb6Jg1Fz0Rc" * 2,
    "DJANGO_ALLOWED_HOSTS": "127.0.0.1",
    "DJANGO_SECURE_PROXY_SSL_HEADER": "1",
    "RESPCACHE_METRICS_TOKEN": "scrape-token",
}


def test_in_production_the_api_refuses_plain_http_and_never_redirects(
    fake: Any, tmp_path: Path, api_key: str, make_key: Any
) -> None:
    with serving(fake, tmp_path, **PRODUCTION) as url:  # its readiness check: /healthz over plain HTTP
        body = ask("over plain http")
        for path, headers in (
            ("/w/intents/v1/messages", {"x-api-key": api_key}),
            ("/w/intents/v1/messages/count_tokens", {"Authorization": f"Bearer {api_key}"}),
            ("/api/workloads/intents/bump/", {"x-api-key": make_key(managed=())}),
        ):
            refused = httpx.post(f"{url}{path}", json=body, headers=headers, follow_redirects=False)
            assert refused.status_code == 403, (path, refused.text)
            assert "location" not in refused.headers
            error = refused.json()
            assert error["type"] == "error" and error["error"]["type"] == "permission_error"
            assert "HTTPS" in error["error"]["message"]
        # The SDK raises its usual class; nothing went upstream.
        client = anthropic.Anthropic(base_url=f"{url}/w/intents", api_key=api_key, max_retries=0, timeout=15)
        with pytest.raises(anthropic.PermissionDeniedError, match="HTTPS"):
            client.messages.create(**body)
        assert fake.calls == []
        # Marked HTTPS by the trusted proxy: served as usual.
        proxied = anthropic.Anthropic(
            base_url=f"{url}/w/intents",
            api_key=api_key,
            max_retries=0,
            timeout=15,
            default_headers={"X-Forwarded-Proto": "https"},
        )
        assert proxied.messages.with_raw_response.create(**body).headers["x-respcache"] == "miss"
        assert proxied.messages.with_raw_response.create(**body).headers["x-respcache"] == "hit"
        # Pages keep Django's redirect; /metrics keeps its exemption.
        admin = httpx.get(f"{url}/admin/", follow_redirects=False)
        assert admin.status_code == 301 and admin.headers["location"].startswith("https://127.0.0.1")
        assert httpx.get(f"{url}/metrics").status_code == 401  # its token, required in production
        assert httpx.get(f"{url}/metrics", headers={"Authorization": "Bearer scrape-token"}).status_code == 200
        client.close()
        proxied.close()
