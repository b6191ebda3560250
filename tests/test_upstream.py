"""The upstream contract: the official SDK against the fake Messages API, and the simulated one."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from respcache import upstream
from respcache.exceptions import UpstreamError, UpstreamUnavailable
from tests.conftest import ask


def test_anthropic_upstream_forwards_bytes_and_headers(fake: Any) -> None:
    raw = b'{"model":"m","max_tokens":5,"messages":[{"role":"user","content":"hi"}],"zz_unknown":1.50}'
    response = upstream.get_upstream().create(
        raw, orjson.loads(raw), headers={"anthropic-beta": "x-1,y-2", "anthropic-version": "2023-06-01"}
    )
    (call,) = fake.message_calls()
    assert call["raw"] == raw  # byte for byte: unknown fields and number forms untouched
    headers = {k.lower(): v for k, v in call["headers"].items()}
    assert headers["anthropic-beta"] == "x-1,y-2"
    assert headers["anthropic-version"] == "2023-06-01"
    assert headers["authorization"] == "Bearer sk-server-key"
    assert response.message["type"] == "message"
    assert response.input_tokens > 0 and response.output_tokens > 0
    assert orjson.loads(response.body) == response.message


def test_anthropic_upstream_error_keeps_status_body_and_retry_after(fake: Any) -> None:
    body = ask("[[status:429]]")
    with pytest.raises(UpstreamError) as info:
        upstream.get_upstream().create(orjson.dumps(body), body, headers={})
    assert info.value.status_code == 429
    assert info.value.error_type == "rate_limit_error"
    assert info.value.headers()["retry-after"] == "7"
    assert orjson.loads(info.value.body())["error"]["message"] == "fake 429"


def test_unreachable_upstream_is_upstream_unavailable(monkeypatch: pytest.MonkeyPatch, settings: Any) -> None:
    monkeypatch.setenv("ANTHROPIC_BASE_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "k")
    settings.RESPCACHE = {**settings.RESPCACHE, "UPSTREAM": "anthropic"}
    upstream.reset_upstreams()
    body = ask()
    with pytest.raises(UpstreamUnavailable) as info:
        upstream.get_upstream().create(orjson.dumps(body), body, headers={})
    assert info.value.status_code == 502
    upstream.reset_upstreams()


def test_simulated_upstream_is_deterministic_and_local(settings: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    settings.RESPCACHE = {**settings.RESPCACHE, "UPSTREAM": ""}
    upstream.reset_upstreams()
    chosen = upstream.get_upstream()
    assert isinstance(chosen, upstream.SimulatedUpstream)
    body = ask("hello there")
    a = chosen.create(orjson.dumps(body), body, headers={})
    b = chosen.create(orjson.dumps(body), body, headers={})
    c = chosen.create(orjson.dumps(ask("other")), ask("other"), headers={})
    assert a.body == b.body != c.body
    assert a.message["type"] == "message" and "hello there" in a.message["content"][0]["text"]
    upstream.reset_upstreams()


def test_upstream_kind_defaults_to_anthropic_when_a_key_is_set(settings: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from respcache.conf import app_settings

    settings.RESPCACHE = {**settings.RESPCACHE, "UPSTREAM": ""}
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-x")
    assert app_settings.upstream_kind == "anthropic"
    monkeypatch.delenv("ANTHROPIC_API_KEY")
    assert app_settings.upstream_kind == "simulated"


def test_an_unknown_upstream_is_an_error_not_a_silent_simulation(settings: Any) -> None:
    from django.core.exceptions import ImproperlyConfigured

    settings.RESPCACHE = {**settings.RESPCACHE, "UPSTREAM": "anthropc"}  # a typo
    upstream.reset_upstreams()
    with pytest.raises(ImproperlyConfigured, match="anthropc"):
        upstream.get_upstream()
    upstream.reset_upstreams()
