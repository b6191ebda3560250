"""/healthz: 200 when the database and Redis answer, 503 naming the one that failed, nothing leaked."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.test import Client, override_settings

from tests.conftest import redis_down

BASE_DIR = Path(__file__).resolve().parent.parent


@pytest.mark.django_db
def test_healthy_is_200_without_auth() -> None:
    response = Client().get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "checks": {"database": "ok", "redis": "ok"}}
    assert "no-cache" in response["Cache-Control"]


@pytest.mark.django_db
def test_redis_down_is_503_naming_redis_and_leaking_nothing() -> None:
    with override_settings(CACHES=redis_down(settings.CACHES)):
        response = Client().get("/healthz")
    assert response.status_code == 503
    assert response.json() == {"status": "unavailable", "checks": {"database": "ok", "redis": "unavailable"}}
    for leak in (b"127.0.0.1", b"Error", b"refused", b"redis://"):
        assert leak not in response.content


def test_only_get() -> None:
    assert Client().post("/healthz").status_code == 405


_PROBE = textwrap.dedent(
    """
    import json, django
    django.setup()
    from django.test.utils import setup_test_environment
    setup_test_environment()
    from django.conf import settings
    from django.test import Client, override_settings
    out = {}
    response = Client().get("/healthz")
    out["db"] = [response.status_code, response.content.decode()]
    dead = dict(settings.CACHES["respcache"], LOCATION="redis://127.0.0.1:1/0")
    dead["OPTIONS"] = dict(dead["OPTIONS"], SOCKET_CONNECT_TIMEOUT=0.2, SOCKET_TIMEOUT=0.2)
    with override_settings(CACHES={**settings.CACHES, "respcache": dead}):
        response = Client().get("/healthz")
    out["both"] = [response.status_code, response.content.decode()]
    print(json.dumps(out))
    """
)


def test_database_down_is_503_naming_the_database(tmp_path: Any) -> None:
    """A real broken database: a service whose DATABASE_URL points where no database can be opened
    (its own process, so this test's database connection is never touched)."""
    missing = tmp_path / "no-such-dir" / "db.sqlite3"
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings", "DATABASE_URL": f"sqlite:///{missing}"}
    done = subprocess.run(
        [sys.executable, "-c", _PROBE], cwd=BASE_DIR, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    status, body = out["db"]
    assert status == 503
    assert json.loads(body) == {"status": "unavailable", "checks": {"database": "unavailable", "redis": "ok"}}
    assert str(missing) not in body and "sqlite" not in body.lower()
    status, body = out["both"]
    assert status == 503
    assert json.loads(body)["checks"] == {"database": "unavailable", "redis": "unavailable"}
