"""``POST /w/<workload>/v1/messages/count_tokens`` through the official SDK: cached, its own key space."""

from __future__ import annotations

from typing import Any

import anthropic
import httpx2 as httpx
import orjson
import pytest

from respcache import keys, services, stats
from respcache.models import Workload

pytestmark = pytest.mark.django_db(transaction=True)

COUNT = {"model": "claude-test-1", "messages": [{"role": "user", "content": "how many tokens is this?"}]}


def count_calls(fake: Any) -> int:
    with fake.lock:
        return sum(1 for c in fake.calls if c["path"] == "/v1/messages/count_tokens")


def count(client: anthropic.Anthropic, body: dict[str, Any] = COUNT, **kwargs: Any) -> Any:
    return client.messages.with_raw_response.count_tokens(**body, **kwargs)


def post(live_server: Any, key: str, content: bytes, path: str = "count_tokens") -> httpx.Response:
    url = f"{live_server.url}/w/intents/v1/messages" + (f"/{path}" if path else "")
    return httpx.post(url, content=content, headers={"x-api-key": key, "content-type": "application/json"})


def test_miss_then_hit_equal_to_the_upstream_count(sdk: Any, fake: Any, fake_server: Any) -> None:
    expected = anthropic.Anthropic(base_url=fake_server.url, api_key="k").messages.count_tokens(**COUNT)
    client = sdk()
    first, second = count(client), count(client)
    assert (first.headers["x-respcache"], second.headers["x-respcache"]) == ("miss", "hit")
    assert first.parse() == second.parse() == expected
    assert first.headers["x-respcache-key"] == second.headers["x-respcache-key"]
    assert int(second.headers["age"]) >= 0
    assert count_calls(fake) == 2  # the direct one and respcache's one
    totals = stats.totals("intents", "5m")
    assert (totals["miss"], totals["hit"]) == (1, 1)


def test_its_key_space_is_not_the_messages_one(live_server: Any, api_key: str, fake: Any) -> None:
    body = orjson.dumps({**COUNT, "max_tokens": 16})  # the very same bytes to both endpoints
    assert post(live_server, api_key, body, path="").headers["x-respcache"] == "miss"
    counted = post(live_server, api_key, body)
    assert counted.headers["x-respcache"] == "miss"
    assert set(counted.json()) == {"input_tokens"}
    assert post(live_server, api_key, body).headers["x-respcache"] == "hit"
    assert post(live_server, api_key, body, path="").json()["type"] == "message"
    parsed = orjson.loads(body)
    assert keys.request_fingerprint(parsed, endpoint=keys.COUNT_TOKENS) != keys.request_fingerprint(parsed)
    assert counted.headers["x-respcache-key"] == keys.request_fingerprint(parsed, endpoint=keys.COUNT_TOKENS)


def test_messages_keys_are_unchanged_by_the_endpoint_field() -> None:
    assert keys.normalise(COUNT) == keys.normalise(COUNT, endpoint=keys.MESSAGES)
    assert "endpoint" not in keys.normalise(COUNT)


def test_cache_control_and_a_disabled_workload(sdk: Any, fake: Any, workload: Workload) -> None:
    client = sdk()
    assert count(client, extra_headers={"cache-control": "no-store"}).headers["x-respcache"] == "miss"
    assert count(client).headers["x-respcache"] == "miss"
    assert count(client, extra_headers={"cache-control": "no-cache"}).headers["x-respcache"] == "refresh"
    assert count(client).headers["x-respcache"] == "hit"
    services.workload_set_enabled(workload, False, actor="test")
    assert count(client).headers["x-respcache"] == "bypass"


def test_a_count_is_cached_whatever_the_temperature_and_strictness(
    sdk: Any, fake: Any, make_workload: Any, make_key: Any
) -> None:
    strict = make_workload("evals", strict=True)
    client = sdk("evals", key=make_key(strict))
    assert count(client).headers["x-respcache"] == "miss"
    assert count(client).headers["x-respcache"] == "hit"


@pytest.mark.parametrize(
    "content",
    [
        b"not json",
        b"[]",
        b'{"messages": []}',
        b'{"model": "m"}',
        b'{"model": "m", "messages": "hi"}',
        b'{"model": "m", "messages": [], "x": NaN}',
    ],
)
def test_bad_bodies_are_400(live_server: Any, api_key: str, fake: Any, content: bytes) -> None:
    response = post(live_server, api_key, content)
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert count_calls(fake) == 0


def test_max_tokens_is_not_required(live_server: Any, api_key: str, fake: Any) -> None:
    assert post(live_server, api_key, b'{"model": "m", "messages": []}').status_code == 200


def test_auth_and_workload_errors(sdk: Any, fake: Any, make_workload: Any) -> None:
    with pytest.raises(anthropic.AuthenticationError):
        count(sdk(key="nope.nope"))
    make_workload("moderation")
    with pytest.raises(anthropic.PermissionDeniedError):
        count(sdk("moderation"))
    with pytest.raises(anthropic.NotFoundError):
        count(sdk("no-such-workload"))
    assert count_calls(fake) == 0


@pytest.mark.parametrize(("status", "exc_class"), [(429, anthropic.RateLimitError), (529, anthropic.OverloadedError)])
def test_upstream_errors_pass_through_and_are_never_stored(sdk: Any, fake: Any, status: int, exc_class: type) -> None:
    body = {**COUNT, "messages": [{"role": "user", "content": f"[[status:{status}]]"}]}
    for attempt in (1, 2):
        with pytest.raises(exc_class) as info:
            count(sdk(), body)
        assert info.value.status_code == status
        if status == 429:
            assert info.value.response.headers["retry-after"] == "7"
        assert count_calls(fake) == attempt
