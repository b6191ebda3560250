"""Database down: known workloads and keys keep their last known policy; unknown ones get 503.

The database is made unreachable for real: the connection is closed and pointed at a SQLite file
that cannot be opened, or a PostgreSQL port where nothing listens.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import anthropic
import pytest
from django.db import connection

from respcache import selectors
from respcache.exceptions import DatabaseUnavailable
from tests.conftest import ask

pytestmark = pytest.mark.django_db(transaction=True)


@contextmanager
def database_down() -> Iterator[None]:
    saved = dict(connection.settings_dict)
    connection.close()
    if connection.vendor == "sqlite":
        connection.settings_dict["NAME"] = "/nonexistent/respcache/db.sqlite3"
    else:
        connection.settings_dict.update(HOST="127.0.0.1", PORT="1")
        connection.settings_dict.setdefault("OPTIONS", {})["connect_timeout"] = 1
    try:
        yield
    finally:
        connection.close()
        connection.settings_dict.clear()
        connection.settings_dict.update(saved)


def test_known_policy_and_grant_survive_a_dead_database(workload: Any, api_key: str) -> None:
    policy = selectors.workload_policy("intents")
    grant = selectors.api_key_grant(api_key)
    assert policy is not None and grant is not None
    with database_down():
        selectors.clear_local_caches()  # as if the local copy had expired
        assert selectors.workload_policy("intents") == policy
        assert selectors.api_key_grant(api_key) == grant
        with pytest.raises(DatabaseUnavailable):
            selectors.workload_policy("never-seen")
        with pytest.raises(DatabaseUnavailable):
            selectors.api_key_grant("rc-never-seen.key")
    assert selectors.workload_policy("intents") == policy  # and the database is read again


def test_a_revoked_key_is_forgotten_not_kept_as_last_known(workload: Any, make_key: Any) -> None:
    from respcache.models import ApiKey

    raw = make_key(workload)
    assert selectors.api_key_grant(raw) is not None
    ApiKey.objects.update(revoked=True)
    selectors.clear_local_caches()
    assert selectors.api_key_grant(raw) is None
    with database_down():
        with pytest.raises(DatabaseUnavailable):
            selectors.api_key_grant(raw)


def test_hits_are_served_over_http_while_the_database_is_down(
    sdk: Any, workload: Any, api_key: str, fake: Any, live_server: Any
) -> None:
    client = sdk()
    first = client.messages.with_raw_response.create(**ask("db down"))
    assert first.headers["x-respcache"] == "miss"
    with database_down():
        selectors.clear_local_caches()
        again = client.messages.with_raw_response.create(**ask("db down"))
        assert again.status_code == 200 and again.headers["x-respcache"] == "hit"
        stranger = sdk(key="rc-unknown.key")
        with pytest.raises(anthropic.InternalServerError) as raised:
            stranger.messages.create(**ask("db down"))
        assert raised.value.status_code == 503
        assert raised.value.body["error"]["type"] == "api_error"  # type: ignore[index]
        health = client._client.get(f"{live_server.url}/healthz")
        assert health.status_code == 503 and health.json()["checks"]["database"] == "unavailable"
    assert len(fake.message_calls()) == 1
