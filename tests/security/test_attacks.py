"""Unauthenticated floods and password guessing: the guard locks guessing out, and cache hits are
still answered during a flood (how fast goes in ``make bench``, never in a test).

The floods run against the service under gunicorn with gevent workers (tests/test_gunicorn.py's
fixture), with the project's real password hasher (PBKDF2, a million iterations) instead of the
test settings' fast one.
"""

from __future__ import annotations

import re
import secrets
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import httpx2 as httpx
import orjson
import pytest
from axes.handlers.proxy import AxesProxyHandler
from django.contrib.auth.hashers import PBKDF2PasswordHasher, check_password, identify_hasher, make_password
from django.test import Client, override_settings

from project import login_guard
from tests.conftest import ask
from tests.test_gunicorn import Server, gunicorn  # noqa: F401 - the fixture, reused

pytestmark = pytest.mark.django_db(transaction=True)

PASSWORD = "correct horse battery staple"
LOGIN = "/admin/login/"
BOUNDED = ["project.login_guard.BoundedPBKDF2PasswordHasher"]


def sign_in(client: Client, username: str, password: str, ip: str = "10.0.0.1") -> Any:
    return client.post(LOGIN, {"username": username, "password": password, "next": "/admin/"}, REMOTE_ADDR=ip)


# --- the guard, in process ------------------------------------------------------------------


def test_the_attempt_after_the_limit_is_refused_even_with_the_right_password(
    django_user_model: Any, settings: Any
) -> None:
    django_user_model.objects.create_superuser("ops", "ops@example.com", PASSWORD)
    limit = settings.AXES_FAILURE_LIMIT
    client = Client()
    for _ in range(limit - 1):
        response = sign_in(client, "ops", "guess")
        assert response.status_code == 200 and "Please enter the correct username" in response.content.decode()
    assert sign_in(client, "ops", "guess").status_code == 429  # the limit-th failure locks the pair out
    locked = sign_in(client, "ops", PASSWORD)
    assert locked.status_code == 429 and "locked" in locked.content.decode().lower()
    assert "_auth_user_id" not in client.session
    # The lockout is per (username, IP): the same user from elsewhere still signs in.
    elsewhere = Client()
    assert sign_in(elsewhere, "ops", PASSWORD, ip="10.0.0.2").status_code == 302
    assert elsewhere.session["_auth_user_id"]


def test_a_successful_sign_in_clears_the_count(django_user_model: Any, settings: Any) -> None:
    django_user_model.objects.create_superuser("ops", "ops@example.com", PASSWORD)
    client = Client()
    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        assert sign_in(client, "ops", "guess").status_code == 200
    assert sign_in(client, "ops", PASSWORD).status_code == 302
    client.logout()
    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        assert sign_in(client, "ops", "guess").status_code == 200  # counted from zero again
    assert sign_in(client, "ops", PASSWORD).status_code == 302


def test_with_redis_down_a_sign_in_is_checked_by_its_password_alone(django_user_model: Any, settings: Any) -> None:
    """The guard's counts are in Redis; while it is down they are skipped (fail-open), not a 500."""
    django_user_model.objects.create_superuser("ops", "ops@example.com", PASSWORD)
    alias = settings.CACHES["respcache"]
    down = {
        **alias,
        "LOCATION": "redis://127.0.0.1:1/0",
        "OPTIONS": {**alias["OPTIONS"], "SOCKET_CONNECT_TIMEOUT": 0.2},
    }
    settings.CACHES = {**settings.CACHES, "respcache": down}
    AxesProxyHandler.get_implementation(force=True)  # axes keeps its cache from when it started
    try:
        client = Client()
        for _ in range(settings.AXES_FAILURE_LIMIT + 1):
            refused = sign_in(client, "ops", "guess")
            assert refused.status_code == 200 and "Please enter the correct username" in refused.content.decode()
        assert sign_in(client, "ops", PASSWORD).status_code == 302
    finally:
        settings.CACHES = {**settings.CACHES, "respcache": alias}
        AxesProxyHandler.get_implementation(force=True)


def test_the_bounded_hasher_reads_and_writes_django_pbkdf2() -> None:
    bounded = login_guard.BoundedPBKDF2PasswordHasher()
    stock = PBKDF2PasswordHasher()
    assert bounded.algorithm == stock.algorithm
    encoded = bounded.encode("pw", bounded.salt(), iterations=1_000)
    assert stock.verify("pw", encoded) and bounded.verify("pw", encoded)
    assert not bounded.verify("other", encoded)
    assert bounded.verify("pw", stock.encode("pw", stock.salt(), iterations=1_000))
    with override_settings(PASSWORD_HASHERS=BOUNDED):
        assert isinstance(identify_hasher(make_password("pw")), login_guard.BoundedPBKDF2PasswordHasher)


@pytest.fixture
def hashing_slot_taken(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """This process's one hashing slot held by someone else, and no patience to wait for it."""
    monkeypatch.setattr(login_guard.BoundedPBKDF2PasswordHasher, "max_wait", 0.0)
    gate = login_guard._gate
    gate._ready()
    assert gate.semaphore.acquire(timeout=1)
    yield
    gate.semaphore.release()


def test_a_sign_in_that_cannot_get_a_hashing_slot_gets_503(django_user_model: Any, hashing_slot_taken: None) -> None:
    with override_settings(PASSWORD_HASHERS=BOUNDED):
        with pytest.raises(login_guard.PasswordHashingBusy):
            check_password("pw", PBKDF2PasswordHasher().encode("pw", "salt", iterations=1_000))
        response = sign_in(Client(), "nobody", "guess")
    assert response.status_code == 503 and response["Retry-After"] == "5"
    assert orjson.loads(response.content)["error"]["type"] == "api_error"


@pytest.fixture
def management_slot_taken(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(login_guard.ManagementBulkheadMiddleware, "max_wait", 0.0)
    gate = login_guard._bulkhead
    gate._ready()
    assert gate.semaphore.acquire(timeout=1)
    yield
    gate.semaphore.release()


def test_management_requests_wait_for_the_workers_slot_and_calls_never_do(
    make_workload: Any, make_key: Any, management_slot_taken: None
) -> None:
    key = make_key(make_workload("intents"))
    client = Client()
    for path in ("/api/workloads/", LOGIN):
        refused = client.get(path)
        assert refused.status_code == 503 and refused["Retry-After"] == "5", path
        assert int(refused["Content-Length"]) == len(refused.content)
    call = client.post(
        "/w/intents/v1/messages", orjson.dumps(ask()), content_type="application/json", HTTP_X_API_KEY=key
    )
    assert call.status_code == 200
    assert client.get("/healthz").status_code == 200


def test_the_management_slot_is_given_back(make_workload: Any) -> None:
    make_workload("intents")
    for _ in range(3):  # slots = 1: a slot kept by the first request would refuse the next ones
        assert Client().get("/api/workloads/").status_code == 401
    assert login_guard._bulkhead.semaphore.acquire(timeout=0)
    login_guard._bulkhead.semaphore.release()


# --- floods against gunicorn ------------------------------------------------------------------


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest, django_user_model: Any) -> Server:
    """The service under gunicorn (two gevent workers) with the real PBKDF2 hasher."""
    monkeypatch.setenv("RESPCACHE_TEST_REAL_HASHERS", "1")
    with override_settings(PASSWORD_HASHERS=BOUNDED):
        django_user_model.objects.create_superuser("ops", "ops@example.com", PASSWORD)
    started: Server = request.getfixturevalue("gunicorn")
    return started


class Flood:
    """``threads`` callers sending ``send(client)`` in a loop until stopped; their status codes."""

    def __init__(self, threads: int, send: Callable[[httpx.Client], httpx.Response]) -> None:
        self.statuses: Counter[int] = Counter()
        self.errors: list[str] = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(send,)) for _ in range(threads)]

    def _run(self, send: Callable[[httpx.Client], httpx.Response]) -> None:
        with httpx.Client(timeout=30) as client:
            while not self.stop.is_set():
                try:
                    self.statuses[send(client).status_code] += 1
                except httpx.HTTPError as error:
                    self.errors.append(repr(error))

    def __enter__(self) -> Flood:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(60)


def hits_during(
    server: Server, key: str, flood: Flood, count: int = 40, until: Callable[[], bool] = lambda: True
) -> list[tuple[int, str | None]]:
    """A legitimate caller's cache hits while ``flood`` runs (once it has started answering):
    ``count`` of them, and more until ``until()`` holds (bounded)."""
    body = orjson.dumps(ask("the cached question"))
    headers = {"x-api-key": key, "content-type": "application/json"}
    with httpx.Client(base_url=server.url, headers=headers, timeout=30) as caller:
        first = caller.post("/w/intents/v1/messages", content=body)
        assert first.status_code == 200 and first.headers["x-respcache"] in ("miss", "hit")
        with flood:
            while sum(flood.statuses.values()) < 8 and not flood.errors:  # the flood is on
                caller.get("/healthz")
            answers = [caller.post("/w/intents/v1/messages", content=body) for _ in range(count)]
            while not until() and len(answers) < 20 * count:
                answers.append(caller.post("/w/intents/v1/messages", content=body))
    return [(a.status_code, a.headers.get("x-respcache")) for a in answers]


def basic_flood(server: Server) -> Callable[[httpx.Client], httpx.Response]:
    def send(client: httpx.Client) -> httpx.Response:
        made_up = httpx.BasicAuth(f"user{secrets.token_hex(4)}", secrets.token_hex(8))
        return client.get(server.url + "/api/workloads/", auth=made_up)

    return send


def login_flood(server: Server) -> Callable[[httpx.Client], httpx.Response]:
    """Failed sign-ins with a valid CSRF token: half guess the real user's password (locked out
    after the limit), half try made-up usernames (each one a password hash)."""

    def send(client: httpx.Client) -> httpx.Response:
        if "csrftoken" not in client.cookies:
            page = client.get(server.url + LOGIN)
            if page.status_code != 200:  # 503: the worker's management slot stayed taken
                return page
            client.headers["x-csrf-form"] = re.findall(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text)[0]
        username = "ops" if secrets.randbelow(2) else f"user{secrets.token_hex(4)}"
        form = {"csrfmiddlewaretoken": client.headers["x-csrf-form"], "username": username, "password": "guess"}
        return client.post(server.url + LOGIN, data=form, headers={"referer": server.url + LOGIN})

    return send


def test_hits_are_served_during_a_basic_auth_flood(server: Server, make_workload: Any, make_key: Any) -> None:
    key = make_key(make_workload("intents"))
    flood = Flood(8, basic_flood(server))
    answers = hits_during(server, key, flood)
    assert answers == [(200, "hit")] * len(answers)
    assert not flood.errors, flood.errors[:3]
    assert sum(flood.statuses.values()) > 8
    # Refused unread, then throttled; 503 when the worker's management slot stayed taken.
    assert set(flood.statuses) <= {401, 429, 503}, flood.statuses
    assert flood.statuses[401] > 0, flood.statuses


def test_hits_are_served_during_a_login_flood(server: Server, make_workload: Any, make_key: Any) -> None:
    key = make_key(make_workload("intents"))
    flood = Flood(8, login_flood(server))
    answers = hits_during(server, key, flood, until=lambda: flood.statuses[429] > 0)
    assert answers == [(200, "hit")] * len(answers)
    assert not flood.errors, flood.errors[:3]
    # 200: the form again (a failed sign-in); 429: the pair is locked out; 503: no hashing slot.
    assert set(flood.statuses) <= {200, 429, 503}, flood.statuses
    assert flood.statuses[429] > 0, f"guessing the real user's password must get it locked out: {flood.statuses}"
    # Locked out from this address even with the right password; the count is shared by workers.
    with httpx.Client(base_url=server.url, timeout=30) as client:
        page = client.get(LOGIN)
        token = re.findall(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text)[0]
        form = {"csrfmiddlewaretoken": token, "username": "ops", "password": PASSWORD}
        assert client.post(LOGIN, data=form, headers={"referer": server.url + LOGIN}).status_code == 429
