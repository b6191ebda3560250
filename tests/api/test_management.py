"""The REST management API: each endpoint, each way in (staff sessions, managing keys), each refusal;
no HTTP Basic auth (and no password hashed for it); throttling on Redis."""

from __future__ import annotations

import base64
from collections import Counter
from typing import Any

import orjson
import pytest
from django.contrib.auth.models import Permission, User
from django.http import HttpRequest
from django.test import override_settings
from django.utils.module_loading import import_string
from rest_framework.test import APIClient

from respcache import selectors, services, stats, store
from respcache.api.serializers import StatsSerializer
from respcache.models import AuditEntry, Workload
from tests.conftest import ask, redis_down

pytestmark = pytest.mark.django_db

PASSWORD = "s3cret-pass"  # noqa: S105 - test users only


def call(slug: str, text: str = "password reset", **extra: Any) -> services.CachedResult:
    """One call through the cache (simulated upstream), as the endpoint makes it."""
    body = ask(text, **extra)
    policy = selectors.workload_policy(slug)
    assert policy is not None
    return services.cached_message_create(policy=policy, body=body, raw_body=orjson.dumps(body))


def make_user(username: str, *, staff: bool = True, perms: tuple[str, ...] = (), superuser: bool = False) -> User:
    user = User.objects.create_user(username, password=PASSWORD, is_staff=staff, is_superuser=superuser)
    for codename in perms:
        user.user_permissions.add(Permission.objects.get(codename=codename, content_type__app_label="respcache"))
    return user


def signed_in(username: str) -> APIClient:
    """A client with the user's admin session (CSRF is checked in its own test)."""
    client = APIClient()
    client.force_login(User.objects.get(username=username))
    return client


def basic_auth(username: str, password: str = PASSWORD) -> str:
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()


def keyed(key: str, *, bearer: bool = False) -> APIClient:
    client = APIClient()
    if bearer:
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {key}")
    else:
        client.credentials(HTTP_X_API_KEY=key)
    return client


def error_of(response: Any) -> dict[str, str]:
    body = response.json()
    assert body["type"] == "error", body
    return body["error"]


@pytest.fixture
def two(make_workload: Any) -> tuple[Workload, Workload]:
    return make_workload("intents"), make_workload("extract", ttl_seconds=60)


# --- authentication and permission -------------------------------------------------------------


def test_anonymous_gets_401_in_the_error_format(two: Any) -> None:
    response = APIClient().get("/api/workloads/")
    assert response.status_code == 401
    assert error_of(response)["type"] == "authentication_error"
    assert response["WWW-Authenticate"].startswith("Bearer")


def test_non_staff_user_is_refused(two: Any) -> None:
    make_user("bob", staff=False)
    response = signed_in("bob").get("/api/workloads/")
    assert response.status_code == 403
    assert error_of(response)["type"] == "permission_error"


@pytest.fixture
def password_hashes(settings: Any, monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """Counts every password hash from here on: each configured hasher's ``verify`` (checking a
    password) and ``encode`` (Django hashes a dummy for unknown users), still run for real."""
    counts: Counter[str] = Counter()

    def counted(name: str, real: Any) -> Any:
        def counting(self: Any, *args: Any) -> Any:
            counts[name] += 1
            return real(self, *args)

        return counting

    for path in settings.PASSWORD_HASHERS:
        hasher = import_string(path)
        for method in ("verify", "encode"):
            monkeypatch.setattr(hasher, method, counted(method, getattr(hasher, method)))
    return counts


def test_basic_auth_is_refused_without_hashing_a_password(two: Any, password_hashes: Counter[str]) -> None:
    make_user("alice")
    make_user("root", superuser=True)
    password_hashes.clear()  # setting their passwords hashed them
    for username, password in (("alice", PASSWORD), ("root", PASSWORD), ("alice", "wrong"), ("nobody", "x")):
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=basic_auth(username, password))
        for response in (client.get("/api/workloads/"), client.post("/api/workloads/intents/bump/")):
            assert response.status_code == 401, (username, password)
            error = error_of(response)
            assert error["type"] == "authentication_error" and "Basic" in error["message"]
            assert response["WWW-Authenticate"].startswith("Bearer")
    assert password_hashes == {}
    assert Workload.objects.get(slug="intents").key_version == 1
    # The counting sees real hashing: signing in with the same password hashes it.
    assert APIClient().login(request=HttpRequest(), username="alice", password=PASSWORD)
    assert password_hashes["verify"] >= 1


def test_unknown_key_is_401(two: Any) -> None:
    response = keyed("not-a-key").get("/api/workloads/")
    assert response.status_code == 401 and error_of(response)["type"] == "authentication_error"


def test_a_caller_key_that_manages_nothing_is_refused(two: Any, make_key: Any) -> None:
    key = make_key(two[0])  # may call intents, manage nothing
    response = keyed(key).get("/api/workloads/")
    assert response.status_code == 403
    assert error_of(response)["type"] == "permission_error"


# --- list and stats ---------------------------------------------------------------------------


def test_staff_lists_every_workload_with_its_numbers(two: Any) -> None:
    make_user("alice")
    call("intents")
    call("intents")
    call("intents", "other", temperature=0.7)
    response = signed_in("alice").get("/api/workloads/")
    assert response.status_code == 200
    rows = {row["slug"]: row for row in response.json()}
    assert set(rows) == {"intents", "extract"}
    numbers = rows["intents"]["stats"]
    assert (numbers["window"], numbers["miss"], numbers["hit"], numbers["bypass"]) == ("1h", 1, 1, 1)
    assert numbers["hit_rate"] == 0.5
    assert rows["intents"]["key_version"] == 1 and rows["extract"]["ttl_seconds"] == 60
    assert rows["extract"]["stats"]["requests"] == 0 and rows["extract"]["stats"]["hit_rate"] is None


def test_a_key_lists_only_the_workloads_it_manages(two: Any, make_key: Any) -> None:
    key = make_key(two[0], managed=(two[1],))
    for client in (keyed(key), keyed(key, bearer=True)):
        response = client.get("/api/workloads/?window=24h")
        assert response.status_code == 200
        assert [row["slug"] for row in response.json()] == ["extract"]
        assert response.json()[0]["stats"]["window"] == "24h"


@pytest.mark.parametrize("window", list(stats.WINDOWS))
def test_stats_over_each_window(two: Any, window: str) -> None:
    make_user("alice")
    call("intents")
    call("intents")
    response = signed_in("alice").get(f"/api/workloads/intents/stats/?window={window}")
    assert response.status_code == 200
    body = response.json()
    assert body["workload"] == "intents" and body["window"] == window and body["key_version"] == 1
    assert (body["hit"], body["miss"], body["written"], body["requests"]) == (1, 1, 1, 2)
    assert body["saved_in"] > 0 and body["saved_out"] > 0


def test_stats_default_window_is_1h_and_matches_the_stats_command(two: Any) -> None:
    make_user("alice")
    call("intents")
    body = signed_in("alice").get("/api/workloads/intents/stats/").json()
    assert body == {"workload": "intents", "key_version": 1, "enabled": True, **stats.totals("intents", "1h").as_dict()}


@pytest.mark.parametrize("window", ["1y", "60", "1H", "5m,1h"])
def test_a_bad_window_is_a_400_naming_the_window(two: Any, window: str) -> None:
    make_user("alice")
    response = signed_in("alice").get("/api/workloads/intents/stats/", {"window": window})
    assert response.status_code == 400
    error = error_of(response)
    assert error["type"] == "invalid_request_error"
    assert error["message"].startswith("window: ")


def test_unknown_workload_is_404_for_staff_and_403_for_a_key(two: Any, make_key: Any) -> None:
    make_user("alice")
    response = signed_in("alice").get("/api/workloads/nope/stats/")
    assert response.status_code == 404
    assert error_of(response)["type"] == "not_found_error"
    key = make_key(managed=(two[1],))
    # A key learns nothing about workloads it does not manage, existing or not.
    assert keyed(key).get("/api/workloads/nope/stats/").status_code == 403
    assert keyed(key).get("/api/workloads/intents/stats/").status_code == 403
    assert keyed(key).get("/api/workloads/extract/stats/").status_code == 200


def test_redis_down_is_a_503_that_leaks_nothing(two: Any) -> None:
    make_user("alice")
    from django.conf import settings

    with override_settings(CACHES=redis_down(settings.CACHES)):
        response = signed_in("alice").get("/api/workloads/intents/stats/")
    assert response.status_code == 503
    assert error_of(response) == {"type": "api_error", "message": "Redis is unavailable; try again later."}
    assert b"127.0.0.1" not in response.content


# --- bump and purge ---------------------------------------------------------------------------


def test_bump_needs_the_bump_permission(two: Any) -> None:
    make_user("viewer")
    make_user("bumper", perms=("bump_workload",))
    refused = signed_in("viewer").post("/api/workloads/intents/bump/")
    assert refused.status_code == 403 and error_of(refused)["type"] == "permission_error"
    assert Workload.objects.get(slug="intents").key_version == 1
    response = signed_in("bumper").post("/api/workloads/intents/bump/")
    assert response.status_code == 200
    assert response.json() == {"workload": "intents", "key_version": 2}
    assert Workload.objects.get(slug="intents").key_version == 2


def test_a_bump_through_the_api_makes_old_entries_unreachable_and_is_audited(two: Any) -> None:
    user = make_user("bumper", perms=("bump_workload",))
    assert call("intents").status == "miss"
    assert call("intents").status == "hit"
    assert signed_in("bumper").post("/api/workloads/intents/bump/").status_code == 200
    assert call("intents").status == "miss"
    entry = AuditEntry.objects.get(action=AuditEntry.Action.BUMP)
    assert (entry.actor, entry.user, entry.workload_slug) == ("user:bumper", user, "intents")
    assert (entry.before, entry.after) == ({"key_version": 1}, {"key_version": 2})


def test_a_managing_key_bumps_with_one_post_and_is_audited_by_name(two: Any, make_key: Any) -> None:
    from respcache.services import api_key_create

    _, key = api_key_create(name="ci-pipeline", workloads=(), managed_workloads=(two[0],))
    response = keyed(key, bearer=True).post("/api/workloads/intents/bump/")
    assert response.status_code == 200 and response.json()["key_version"] == 2
    entry = AuditEntry.objects.get(action=AuditEntry.Action.BUMP)
    assert (entry.actor, entry.user) == ("apikey:ci-pipeline", None)
    assert keyed(key).post("/api/workloads/extract/bump/").status_code == 403
    assert Workload.objects.get(slug="extract").key_version == 1


def test_purge_deletes_the_entries_says_how_many_and_is_audited(two: Any) -> None:
    make_user("bumper", perms=("bump_workload",))
    make_user("purger", perms=("purge_workload",))
    call("intents", "one")
    call("intents", "two")
    call("extract", "three")
    assert signed_in("bumper").post("/api/workloads/intents/purge/").status_code == 403
    response = signed_in("purger").post("/api/workloads/intents/purge/")
    assert response.status_code == 200
    assert response.json() == {"workload": "intents", "purged": 2}
    assert call("intents", "one").status == "miss"
    assert call("extract", "three").status == "hit"  # other workloads untouched
    entry = AuditEntry.objects.get(action=AuditEntry.Action.PURGE)
    assert (entry.actor, entry.entries_purged) == ("user:purger", 2)


def test_superuser_may_do_everything(two: Any) -> None:
    make_user("root", superuser=True)
    client = signed_in("root")
    assert client.post("/api/workloads/extract/bump/").json()["key_version"] == 2
    assert client.post("/api/workloads/extract/purge/").json()["purged"] == 0


def test_wrong_methods_are_405_in_the_error_format(two: Any) -> None:
    make_user("root", superuser=True)
    client = signed_in("root")
    assert client.get("/api/workloads/intents/bump/").status_code == 405
    assert client.delete("/api/workloads/intents/").status_code == 404
    response = client.post("/api/workloads/")
    assert response.status_code == 405 and error_of(response)["type"] == "invalid_request_error"


def test_session_auth_works_and_enforces_csrf_on_posts(two: Any) -> None:
    make_user("bumper", perms=("bump_workload",))
    client = APIClient(enforce_csrf_checks=True)
    assert client.login(request=HttpRequest(), username="bumper", password=PASSWORD)
    assert client.get("/api/workloads/").status_code == 200
    refused = client.post("/api/workloads/intents/bump/")
    assert refused.status_code == 403 and "CSRF" in error_of(refused)["message"]
    assert Workload.objects.get(slug="intents").key_version == 1


def test_bump_reaches_redis_so_every_worker_sees_it_at_once(two: Any, redis_db: Any) -> None:
    make_user("root", superuser=True)
    signed_in("root").post("/api/workloads/intents/bump/")
    assert int(redis_db.get(store.version_key("intents"))) == 2


def test_stats_serializer_covers_every_counter() -> None:
    assert set(stats.FIELDS) <= set(StatsSerializer().fields)
    assert set(stats.Totals(window="1h").as_dict()) == set(StatsSerializer().fields)


def test_unrouted_api_paths_answer_in_the_error_format(db: Any) -> None:
    for path in ("/api/nope/", "/api/workloads/not.a.slug/stats/", "/w/not.a.slug/v1/messages"):
        response = APIClient().post(path)
        assert response.status_code == 404
        assert error_of(response)["type"] == "not_found_error"
    other = APIClient().get("/no-such-page")
    assert other.status_code == 404 and other["Content-Type"].startswith("text/html")
