"""The management API's throttles: strangers per client IP (failed credentials included), each staff
user and API key on its own, counted in the real Redis, answered 429 in Anthropic's format."""

from __future__ import annotations

import runpy
from pathlib import Path
from typing import Any

import pytest
from rest_framework.test import APIClient

from respcache.api.throttling import DEFAULT_RATES, AnonymousRateThrottle, CallerRateThrottle
from respcache.models import Workload
from tests.api.test_management import basic_auth, error_of, keyed, make_user, signed_in

pytestmark = pytest.mark.django_db

LIST = "/api/workloads/"


def set_rates(settings: Any, anon: str | None = "600/minute", user: str | None = "600/minute") -> None:
    """The two scopes' rates (override_settings, so DRF's api_settings reload)."""
    rates = {"management_anon": anon, "management_user": user}
    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "DEFAULT_THROTTLE_RATES": rates}


def assert_throttled(response: Any, period: int = 60) -> None:
    assert response.status_code == 429, response.content
    assert error_of(response)["type"] == "rate_limit_error"
    assert 0 < int(response["Retry-After"]) <= period


@pytest.fixture
def intents(make_workload: Any) -> Workload:
    return make_workload("intents")


def test_strangers_over_the_anonymous_rate_get_429_with_retry_after(intents: Any, settings: Any, redis_db: Any) -> None:
    set_rates(settings, anon="3/minute")
    make_user("alice")
    stranger = APIClient()
    assert [stranger.get(LIST).status_code for _ in range(3)] == [401, 401, 401]
    assert_throttled(stranger.get(LIST))
    # Made-up credentials are a stranger's too: Basic auth, an unknown key, a POST.
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=basic_auth("alice"))
    assert_throttled(client.get(LIST))
    assert_throttled(keyed("not-a-key").post("/api/workloads/intents/bump/"))
    # The client IP is REMOTE_ADDR: an X-Forwarded-For the client wrote buys nothing...
    assert_throttled(stranger.get(LIST, HTTP_X_FORWARDED_FOR="203.0.113.9"))
    # ...while another address has its own count.
    assert stranger.get(LIST, REMOTE_ADDR="198.51.100.7").status_code == 401
    # The count is in Redis, which every worker and machine shares.
    names = [key.decode() for key in redis_db.keys("*throttle_*")]
    assert {name.rsplit(":", 1)[-1] for name in names} == {
        "throttle_management_anon_127.0.0.1",
        "throttle_management_anon_198.51.100.7",
    }
    # Callers with valid credentials are not strangers: the anonymous rate is not theirs.
    assert signed_in("alice").get(LIST).status_code == 200
    assert Workload.objects.get(slug="intents").key_version == 1


def test_behind_proxies_the_client_ip_comes_from_x_forwarded_for(intents: Any, settings: Any) -> None:
    set_rates(settings, anon="1/minute")
    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "NUM_PROXIES": 1}
    stranger = APIClient()
    assert stranger.get(LIST, HTTP_X_FORWARDED_FOR="spoofed, 203.0.113.9").status_code == 401
    assert_throttled(stranger.get(LIST, HTTP_X_FORWARDED_FOR="other, 203.0.113.9"))
    assert stranger.get(LIST, HTTP_X_FORWARDED_FOR="203.0.113.10").status_code == 401


def test_each_user_and_each_key_has_its_own_rate(intents: Any, settings: Any, make_key: Any) -> None:
    set_rates(settings, anon="1/minute", user="2/minute")
    make_user("alice")
    make_user("bob", staff=False)
    alice = signed_in("alice")
    assert [alice.get(LIST).status_code for _ in range(2)] == [200, 200]
    assert_throttled(alice.get(LIST))
    # Throttled before the permission check: a refused user counts too.
    bob = signed_in("bob")
    assert [bob.get(LIST).status_code for _ in range(2)] == [403, 403]
    assert_throttled(bob.get(LIST))
    key = make_key(managed=(intents,))
    assert keyed(key).post("/api/workloads/intents/bump/").status_code == 200
    assert keyed(key, bearer=True).get(LIST).status_code == 200  # the same key, either header
    assert_throttled(keyed(key).get(LIST))
    assert keyed(make_key(name="other", managed=(intents,))).get(LIST).status_code == 200
    # Neither spent the strangers' count.
    assert APIClient().get(LIST).status_code == 401


def test_a_rate_of_none_turns_its_scope_off(intents: Any, settings: Any) -> None:
    set_rates(settings, anon=None)
    assert {APIClient().get(LIST).status_code for _ in range(5)} == {401}


def test_default_rates_apply_where_the_settings_name_none(settings: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """An embedding project need not list the scopes; the service's settings default to the same."""
    for name in ("RESPCACHE_MANAGEMENT_ANON_RATE", "RESPCACHE_MANAGEMENT_USER_RATE", "DJANGO_NUM_PROXIES"):
        monkeypatch.delenv(name, raising=False)
    settings.REST_FRAMEWORK = {k: v for k, v in settings.REST_FRAMEWORK.items() if k != "DEFAULT_THROTTLE_RATES"}
    assert (AnonymousRateThrottle().rate, CallerRateThrottle().rate) == ("60/minute", "600/minute")
    project = runpy.run_path(str(Path(__file__).resolve().parents[2] / "project" / "settings.py"))
    assert project["REST_FRAMEWORK"]["DEFAULT_THROTTLE_RATES"] == DEFAULT_RATES
    assert project["REST_FRAMEWORK"]["NUM_PROXIES"] == 0
