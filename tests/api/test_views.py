"""The call endpoint through the official SDK against a live server and the fake Messages API."""

from __future__ import annotations

import inspect
import threading
from typing import Any

import anthropic
import httpx2 as httpx
import orjson
import pytest

from respcache import services
from respcache.models import Workload
from tests.conftest import ask

pytestmark = pytest.mark.django_db(transaction=True)


_SDK_PARAMS = set(inspect.signature(anthropic.resources.messages.Messages.create).parameters) - {"self"}


def create(client: anthropic.Anthropic, body: dict[str, Any], **kwargs: Any) -> Any:
    """messages.create with the raw response; fields the SDK has no argument for (temperature
    in SDK 2.x) go in extra_body, as callers send them."""
    known = {k: v for k, v in body.items() if k in _SDK_PARAMS}
    extra = {k: v for k, v in body.items() if k not in _SDK_PARAMS}
    if extra:
        kwargs["extra_body"] = {**extra, **kwargs.get("extra_body", {})}
    return client.messages.with_raw_response.create(**known, **kwargs)


def post(live_server: Any, slug: str, key: str | None, content: bytes | str, **headers: str) -> httpx.Response:
    all_headers = {"content-type": "application/json", **headers}
    if key:
        all_headers["x-api-key"] = key
    return httpx.post(f"{live_server.url}/w/{slug}/v1/messages", content=content, headers=all_headers, timeout=10)


def test_miss_then_hit_then_bump_gives_miss(sdk: Any, fake: Any, workload: Workload) -> None:
    client = sdk()
    first = create(client, ask())
    second = create(client, ask())
    assert first.headers["x-respcache"] == "miss"
    assert second.headers["x-respcache"] == "hit"
    assert first.parse().model_dump() == second.parse().model_dump()
    assert len(first.headers["x-respcache-key"]) == 64
    assert first.headers["x-respcache-key"] == second.headers["x-respcache-key"]
    assert "age" not in first.headers and int(second.headers["age"]) >= 0
    assert len(fake.message_calls()) == 1

    services.workload_bump(workload, actor="test")
    third = create(client, ask())
    assert third.headers["x-respcache"] == "miss"
    assert len(fake.message_calls()) == 2
    assert create(client, ask()).headers["x-respcache"] == "hit"


def test_hit_is_exactly_the_upstream_message(sdk: Any, fake: Any, fake_server: Any) -> None:
    body = ask("[[shape:tool_use]] weather?")
    direct = anthropic.Anthropic(base_url=fake_server.url, api_key="k", max_retries=0).messages.create(**body)
    client = sdk()
    miss = client.messages.create(**body)
    hit = client.messages.create(**body)
    assert miss.model_dump() == direct.model_dump() == hit.model_dump()


def test_bearer_and_x_api_key_are_both_accepted(live_server: Any, fake: Any, api_key: str) -> None:
    url = f"{live_server.url}/w/intents/v1/messages"
    body = orjson.dumps(ask())
    bearer = httpx.post(url, content=body, headers={"authorization": f"Bearer {api_key}"})
    x_api_key = httpx.post(url, content=body, headers={"x-api-key": api_key})
    assert bearer.status_code == x_api_key.status_code == 200
    assert x_api_key.headers["x-respcache"] == "hit"


def test_callers_key_is_never_forwarded_and_server_key_is(sdk: Any, fake: Any, api_key: str) -> None:
    create(sdk(), ask())
    (call,) = fake.message_calls()
    headers = {k.lower(): v for k, v in call["headers"].items()}
    assert headers.get("authorization") == "Bearer sk-server-key"
    assert api_key not in str(call["headers"])


def test_unknown_fields_and_beta_header_are_forwarded_untouched(sdk: Any, fake: Any) -> None:
    body = ask(temperature=0)
    response = create(
        sdk(),
        body,
        extra_body={"future_option": {"x": [1, 2.5]}},
        extra_headers={"anthropic-beta": "b-2, a-1"},
    )
    assert response.headers["x-respcache"] == "miss"
    (call,) = fake.message_calls()
    assert call["body"]["future_option"] == {"x": [1, 2.5]}
    assert call["body"]["temperature"] == 0
    assert {k.lower(): v for k, v in call["headers"].items()}["anthropic-beta"] == "b-2, a-1"


def test_beta_header_is_part_of_the_key(sdk: Any, fake: Any) -> None:
    client = sdk()
    create(client, ask())
    assert create(client, ask(), extra_headers={"anthropic-beta": "x-1"}).headers["x-respcache"] == "miss"
    assert create(client, ask(), extra_headers={"anthropic-beta": "x-1"}).headers["x-respcache"] == "hit"


def test_temperature_above_zero_bypasses(sdk: Any, fake: Any) -> None:
    client = sdk()
    for _ in range(2):
        response = create(client, ask(), extra_body={"temperature": 0.7})
        assert response.headers["x-respcache"] == "bypass"
    assert len(fake.message_calls()) == 2


def test_strict_workload_caches_only_temperature_zero(sdk: Any, fake: Any, make_workload: Any, make_key: Any) -> None:
    strict = make_workload("evals", strict=True)
    client = sdk("evals", key=make_key(strict))
    assert create(client, ask()).headers["x-respcache"] == "bypass"
    assert create(client, ask(), extra_body={"temperature": 0}).headers["x-respcache"] == "miss"
    assert create(client, ask(), extra_body={"temperature": 0.0}).headers["x-respcache"] == "hit"


def test_disabled_workload_bypasses(sdk: Any, fake: Any, workload: Workload) -> None:
    services.workload_set_enabled(workload, False, actor="test")
    client = sdk()
    assert create(client, ask()).headers["x-respcache"] == "bypass"
    assert create(client, ask()).headers["x-respcache"] == "bypass"


def test_cache_control_no_cache_refreshes_and_stores(sdk: Any, fake: Any) -> None:
    client = sdk()
    create(client, ask())
    refreshed = create(client, ask(), extra_headers={"cache-control": "no-cache"})
    assert refreshed.headers["x-respcache"] == "refresh"
    assert len(fake.message_calls()) == 2
    assert create(client, ask()).headers["x-respcache"] == "hit"


def test_cache_control_no_store_does_not_store(sdk: Any, fake: Any) -> None:
    client = sdk()
    assert create(client, ask(), extra_headers={"cache-control": "no-store"}).headers["x-respcache"] == "miss"
    assert create(client, ask()).headers["x-respcache"] == "miss"
    assert create(client, ask()).headers["x-respcache"] == "hit"


def test_stream_is_not_in_the_key_and_metadata_neither(sdk: Any, fake: Any) -> None:
    client = sdk()
    create(client, ask())
    assert create(client, ask(), metadata={"user_id": "u1"}).headers["x-respcache"] == "hit"


# --- errors --------------------------------------------------------------------------------------


def test_bad_key_is_401(sdk: Any, fake: Any) -> None:
    with pytest.raises(anthropic.AuthenticationError) as info:
        sdk(key="nope.nope").messages.create(**ask())
    assert info.value.body["error"]["type"] == "authentication_error"


def test_missing_key_is_401(live_server: Any, workload: Workload) -> None:
    response = post(live_server, "intents", None, orjson.dumps(ask()))
    assert response.status_code == 401
    assert response.json()["error"]["type"] == "authentication_error"


def test_revoked_key_is_401(sdk: Any, fake: Any, api_key: str) -> None:
    from respcache.models import ApiKey

    ApiKey.objects.update(revoked=True)
    with pytest.raises(anthropic.AuthenticationError):
        sdk().messages.create(**ask())


def test_key_not_allowed_this_workload_is_403(sdk: Any, fake: Any, make_workload: Any) -> None:
    make_workload("moderation")
    with pytest.raises(anthropic.PermissionDeniedError) as info:
        sdk("moderation").messages.create(**ask())
    assert info.value.body["error"]["type"] == "permission_error"


def test_unknown_workload_is_404(sdk: Any, fake: Any) -> None:
    with pytest.raises(anthropic.NotFoundError) as info:
        sdk("no-such-workload").messages.create(**ask())
    assert info.value.body["error"]["type"] == "not_found_error"


def nested_tool_results(levels: int) -> bytes:
    """A body whose one message holds ``levels`` tool_result blocks, each inside the last (as
    bytes: orjson would not serialise it)."""
    block = b'{"type":"tool_result","tool_use_id":"t","content":['
    inner = block * levels + b'{"type":"text","text":"x"}' + b"]}" * levels
    return b'{"model":"m","max_tokens":10,"messages":[{"role":"user","content":[' + inner + b"]}]}"


@pytest.mark.parametrize(
    "content",
    [
        b"not json",
        b"",
        b"[1, 2]",
        b'"a string"',
        b'{"max_tokens": 10, "messages": []}',
        b'{"model": 5, "max_tokens": 10, "messages": []}',
        b'{"model": "m", "max_tokens": 10}',
        b'{"model": "m", "max_tokens": 10, "messages": {}}',
        b'{"model": "m", "messages": []}',
        b'{"model": "m", "max_tokens": "10", "messages": []}',
        b'{"model": "m", "max_tokens": true, "messages": []}',
        b'{"model": "m", "max_tokens": 1.5, "messages": []}',
        b'{"model": "m", "max_tokens": 10, "messages": [], "temperature": NaN}',
        b'{"model": "m", "max_tokens": 10, "messages": [], "temperature": Infinity}',
        b'{"model": "m", "max_tokens": 10, "messages": [], "x": ' + b"[" * 300 + b"]" * 300 + b"}",
        nested_tool_results(300),  # 603 levels: parsed, too deep to hash
        nested_tool_results(450),  # 903 levels: normalising it once overflowed Python's stack (a 500)
        nested_tool_results(10_000),  # deeper than the JSON parser goes
        b'{"model": "m", "max_tokens": 10, "messages": [], "stream": "yes"}',
        b"\xff\xfe",
    ],
)
def test_bad_bodies_are_400_in_anthropic_format(live_server: Any, api_key: str, content: bytes, fake: Any) -> None:
    response = post(live_server, "intents", api_key, content)
    assert response.status_code == 400, response.text
    payload = response.json()
    assert payload["type"] == "error"
    assert payload["error"]["type"] == "invalid_request_error"
    assert payload["error"]["message"]
    assert fake.message_calls() == []


@pytest.mark.parametrize("levels", [126, 450, 10_000])
def test_nested_tool_results_too_deep_name_the_limit(live_server: Any, api_key: str, levels: int) -> None:
    response = post(live_server, "intents", api_key, nested_tool_results(levels))
    assert response.status_code == 400, response.text
    message = response.json()["error"]["message"]
    if levels < 500:
        assert "deeper than 254 levels within a message or field (the MAX_JSON_DEPTH limit)" in message
    else:
        assert message == "Request body nests deeper than 1024 levels, the JSON parser's limit."


def test_nested_tool_results_within_the_limit_are_answered(live_server: Any, api_key: str) -> None:
    # 125 levels: the message (1), its content (2), a block and its content per level, the text (253).
    response = post(live_server, "intents", api_key, nested_tool_results(125))
    assert response.status_code == 200, response.text
    assert response.headers["x-respcache"] == "miss"


def test_simulated_and_real_answers_live_in_key_spaces_of_their_own(
    sdk: Any, fake: Any, settings: Any, workload: Workload
) -> None:
    """The same body asked of the simulated upstream and then of Anthropic is a miss (the
    simulated answer is never served as a real one), and each kind then hits its own entry."""
    client = sdk()

    def asked_of(kind: str) -> tuple[str, str, str]:
        settings.RESPCACHE = {**settings.RESPCACHE, "UPSTREAM": kind}
        response = create(client, ask())
        return response.headers["x-respcache"], response.parse().id, response.headers["x-respcache-key"]

    simulated, real = asked_of("simulated"), asked_of("anthropic")
    assert (simulated[0], real[0]) == ("miss", "miss")
    assert simulated[1].startswith("msg_sim_") and not real[1].startswith("msg_sim_")
    assert len(fake.message_calls()) == 1
    assert asked_of("simulated") == ("hit", *simulated[1:])
    assert asked_of("anthropic") == ("hit", *real[1:])
    assert simulated[2] == real[2]  # X-Respcache-Key is the request's, whoever answers it
    assert len(fake.message_calls()) == 1

    assert services.workload_purge(workload, actor="test") == 2  # a purge empties both
    assert asked_of("simulated")[0] == asked_of("anthropic")[0] == "miss"


def test_bad_body_through_sdk_raises_bad_request(sdk: Any, fake: Any) -> None:
    with pytest.raises(anthropic.BadRequestError):
        sdk(timeout=10).messages.create(model="m", max_tokens=10, messages="hi")  # type: ignore[arg-type]


def test_body_over_the_limit_is_413(live_server: Any, api_key: str, settings: Any, fake: Any) -> None:
    settings.RESPCACHE = {**settings.RESPCACHE, "MAX_BODY_BYTES": 1000}
    body = orjson.dumps(ask("x" * 2000))
    response = post(live_server, "intents", api_key, body)
    assert response.status_code == 413
    assert response.json()["error"]["type"] == "request_too_large"
    with pytest.raises(anthropic.APIStatusError) as info:
        anthropic.Anthropic(base_url=f"{live_server.url}/w/intents", api_key=api_key, max_retries=0).messages.create(
            **ask("x" * 2000)
        )
    assert info.value.status_code == 413


@pytest.mark.django_db
def test_a_body_the_client_stops_sending_is_400_not_500(api_key: str, fake: Any) -> None:
    from django.http import UnreadablePostError
    from django.test import RequestFactory

    from respcache.api.views import MessagesView

    class Broken:
        def read(self, *args: Any) -> bytes:
            raise UnreadablePostError("connection reset mid-body")

    request = RequestFactory().post(
        "/w/intents/v1/messages", data=orjson.dumps(ask()), content_type="application/json", HTTP_X_API_KEY=api_key
    )
    request._stream = Broken()
    response = MessagesView.as_view()(request, workload="intents")
    assert response.status_code == 400
    assert orjson.loads(response.content)["error"]["type"] == "invalid_request_error"
    assert fake.message_calls() == []


def test_default_body_limit_is_32_mib() -> None:
    from respcache.conf import DEFAULTS

    assert DEFAULTS["MAX_BODY_BYTES"] == 32 * 1024 * 1024


@pytest.mark.parametrize(
    ("status", "exc_class", "error_type"),
    [
        (429, anthropic.RateLimitError, "rate_limit_error"),
        (500, anthropic.InternalServerError, "api_error"),
        (529, anthropic.InternalServerError, "overloaded_error"),
        (400, anthropic.BadRequestError, "invalid_request_error"),
    ],
)
def test_upstream_errors_keep_status_and_body_and_are_never_stored(
    sdk: Any, fake: Any, status: int, exc_class: type, error_type: str
) -> None:
    client = sdk()
    body = ask(f"[[status:{status}]]")
    for _ in range(2):
        with pytest.raises(exc_class) as info:
            client.messages.create(**body)
        assert info.value.status_code == status
        assert info.value.body == {"type": "error", "error": {"type": error_type, "message": f"fake {status}"}}
        if status == 429:
            assert info.value.response.headers["retry-after"] == "7"
    assert len(fake.message_calls()) == 2  # nothing was stored


def test_unreachable_upstream_is_502(sdk: Any, fake: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from respcache import upstream

    monkeypatch.setenv("ANTHROPIC_BASE_URL", "http://127.0.0.1:9")
    upstream.reset_upstreams()
    with pytest.raises(anthropic.APIStatusError) as info:
        sdk().messages.create(**ask())
    assert info.value.status_code == 502
    assert info.value.body["error"]["type"] == "api_error"


def test_wrong_method_is_an_error_in_anthropic_format(live_server: Any, api_key: str) -> None:
    response = httpx.get(f"{live_server.url}/w/intents/v1/messages", headers={"x-api-key": api_key})
    assert response.status_code == 405
    assert response.json()["type"] == "error"


CALL_PATHS = ["/w/intents/v1/messages", "/w/intents/v1/messages/count_tokens"]


@pytest.mark.parametrize("path", CALL_PATHS)
@pytest.mark.parametrize("method", ["GET", "PUT", "PATCH", "DELETE"])
def test_other_methods_are_405_in_anthropic_format_with_allow(
    live_server: Any, api_key: str, path: str, method: str
) -> None:
    response = httpx.request(method, live_server.url + path, headers={"x-api-key": api_key}, content=b"{}")
    assert response.status_code == 405
    assert response.headers["allow"] == "POST, OPTIONS"
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {
        "type": "error",
        "error": {"type": "invalid_request_error", "message": f'Method "{method}" not allowed.'},
    }


@pytest.mark.parametrize("path", CALL_PATHS)
def test_options_lists_the_methods_with_an_empty_answer(live_server: Any, api_key: str, path: str) -> None:
    response = httpx.options(live_server.url + path, headers={"x-api-key": api_key})
    assert response.status_code == 200
    assert response.headers["allow"] == "POST, OPTIONS"
    assert response.content == b""
    assert "content-type" not in response.headers


@pytest.mark.parametrize("method", ["GET", "OPTIONS", "DELETE"])
def test_a_caller_without_a_valid_key_gets_401_whatever_the_method(
    live_server: Any, workload: Workload, method: str
) -> None:
    for headers in ({}, {"x-api-key": "sk-unknown"}):
        response = httpx.request(method, f"{live_server.url}/w/intents/v1/messages", headers=headers)
        assert response.status_code == 401
        assert response.json()["error"]["type"] == "authentication_error"
        assert response.headers["allow"] == "POST, OPTIONS"


def test_post_answers_carry_no_allow_header(live_server: Any, api_key: str, fake: Any) -> None:
    answered = post(live_server, "intents", api_key, orjson.dumps(ask()))
    refused = post(live_server, "intents", api_key, b"[]")
    assert (answered.status_code, refused.status_code) == (200, 400)
    assert "allow" not in answered.headers and "allow" not in refused.headers


def test_callers_need_no_csrf_token(api_key: str, fake: Any) -> None:
    """Callers present an API key, not a session: Django's CSRF check must not stand in the way
    (a 403 before the view) of a POST or of the 405 another method gets."""
    from django.test import Client

    client = Client(enforce_csrf_checks=True, HTTP_X_API_KEY=api_key)
    body = orjson.dumps(ask())
    assert client.post(CALL_PATHS[0], data=body, content_type="application/json").status_code == 200
    assert client.put(CALL_PATHS[0], data=body, content_type="application/json").status_code == 405


def test_every_method_writes_the_calls_log_line(api_key: str, settings: Any) -> None:
    """The 405 is recorded like any call: its status, error type and caller. (The test client
    closes the response before it returns, and the line is written at the close.)"""
    import json
    import logging

    from django.test import Client

    from respcache import telemetry

    class Lines(logging.Handler):
        def __init__(self) -> None:
            super().__init__()
            self.messages: list[str] = []

        def emit(self, record: logging.LogRecord) -> None:
            self.messages.append(record.getMessage())

    settings.RESPCACHE = {**settings.RESPCACHE, "CALL_LOG_BATCH_SECONDS": 0}  # written at once
    log = logging.getLogger("respcache.calls")
    lines, level = Lines(), log.level
    log.addHandler(lines)
    log.setLevel(logging.INFO)
    try:
        Client(HTTP_X_API_KEY=api_key).get(CALL_PATHS[1])
        telemetry.flush()
    finally:
        log.removeHandler(lines)
        log.setLevel(level)
    (line,) = [json.loads(message) for message in lines.messages]
    assert (line["endpoint"], line["workload"], line["status"]) == ("count_tokens", "intents", 405)
    assert (line["outcome"], line["error_type"], line["caller"]) == ("error", "invalid_request_error", "caller")


# --- stampede --------------------------------------------------------------------------------------


def test_stampede_many_threads_one_cold_key_one_upstream_call(sdk: Any, fake: Any) -> None:
    threads_n = 24
    body = ask("[[delay:0.5]] trending meme")
    barrier = threading.Barrier(threads_n)
    results: list[tuple[str, Any]] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def worker() -> None:
        client = sdk(timeout=30)
        barrier.wait()
        try:
            response = create(client, body)
            with lock:
                results.append((response.headers["x-respcache"], response.parse().model_dump()))
        except BaseException as exc:  # noqa: BLE001 - collected and asserted below
            with lock:
                errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(threads_n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == [], [repr(e) for e in errors]
    assert len(results) == threads_n
    assert len(fake.message_calls()) == 1
    statuses = sorted(s for s, _ in results)
    assert statuses.count("miss") == 1
    assert set(statuses) <= {"miss", "wait", "hit"}
    assert all(message == results[0][1] for _, message in results)
