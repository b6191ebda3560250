"""Complexity limits of a call body, before anything costs per value: MAX_JSON_VALUES (counted
on the bytes, before parsing), MAX_JSON_DEPTH (within a message or field, while hashing) and the
JSON parser's 1,024 levels; at and just over each, through HTTP, and the value count itself."""

from __future__ import annotations

import json
from typing import Any

import httpx2 as httpx
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from respcache.api import parsers
from respcache.api.parsers import json_value_count, too_many_values
from respcache.conf import DEFAULTS

pytestmark = pytest.mark.django_db(transaction=True)

HEAD = b'{"model":"claude-test-1","max_tokens":10,"messages":[{"role":"user","content":"limits"}]'
#: The values HEAD holds: the body, model, max_tokens, messages, the message, role, content.
HEAD_VALUES = 7


def post(live_server: Any, api_key: str, content: bytes, path: str = "messages") -> httpx.Response:
    url = f"{live_server.url}/w/intents/v1/{path}"
    return httpx.post(url, content=content, headers={"x-api-key": api_key}, timeout=60)


def with_values(values: int, item: bytes = b"0") -> bytes:
    """A body of exactly ``values`` JSON values: HEAD and an array of ``item``s, then zeros."""
    room = values - HEAD_VALUES - 1  # the array's elements
    per_item = json_value_count(item)
    items = [item] * (room // per_item) + [b"0"] * (room % per_item)
    return HEAD + b',"x":[' + b",".join(items) + b"]}"


def nested(levels: int) -> bytes:
    """An array nesting ``levels`` levels (itself level 1)."""
    return b"[" * levels + b"]" * levels


def nested_in_a_message(levels: int) -> bytes:
    """A body whose one message nests ``levels`` levels: the message, its content list, a text
    block, then arrays."""
    message = b'{"role":"user","content":[{"type":"text","text":"t","x":' + nested(levels - 3) + b"}]}"
    return b'{"model":"claude-test-1","max_tokens":10,"messages":[' + message + b"]}"


def assert_400(response: httpx.Response, message: str) -> None:
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert message in error["message"]


# --- MAX_JSON_VALUES, through HTTP ---------------------------------------------------------------


def test_the_default_limit_is_a_million_values() -> None:
    assert DEFAULTS["MAX_JSON_VALUES"] == 1_000_000


@pytest.mark.parametrize(
    "item", [b"0", b'"a,[b]"', b"[]", b'{"k":{}}'], ids=["numbers", "strings", "arrays", "objects"]
)
def test_values_at_and_just_over_the_limit(live_server: Any, api_key: str, settings: Any, item: bytes) -> None:
    settings.RESPCACHE = {**settings.RESPCACHE, "MAX_JSON_VALUES": 60}
    at, over = with_values(60, item), with_values(61, item)
    assert reference_count(orjson.loads(at)) == 60 and reference_count(orjson.loads(over)) == 61
    assert len(at) >= 2 * 60  # long enough to be counted
    assert post(live_server, api_key, at).status_code == 200
    assert_400(post(live_server, api_key, over), "holds more than 60 JSON values (the MAX_JSON_VALUES limit)")


def test_a_million_values_are_answered_and_one_more_is_refused(live_server: Any, api_key: str) -> None:
    at, over = with_values(1_000_000), with_values(1_000_001)
    assert len(over) >= 2 * 1_000_000  # long enough to be counted
    assert post(live_server, api_key, at).status_code == 200
    assert_400(post(live_server, api_key, over), "holds more than 1000000 JSON values")


def test_count_tokens_has_the_same_limit(live_server: Any, api_key: str, settings: Any) -> None:
    settings.RESPCACHE = {**settings.RESPCACHE, "MAX_JSON_VALUES": 40}
    assert post(live_server, api_key, with_values(40), "messages/count_tokens").status_code == 200
    assert_400(post(live_server, api_key, with_values(41), "messages/count_tokens"), "MAX_JSON_VALUES")


# --- MAX_JSON_DEPTH and the parser's limit, through HTTP ------------------------------------------


def test_a_field_or_message_may_nest_254_levels_not_255(live_server: Any, api_key: str) -> None:
    for path in ("messages", "messages/count_tokens"):
        assert post(live_server, api_key, HEAD + b',"x":' + nested(254) + b"}", path).status_code == 200
        assert post(live_server, api_key, nested_in_a_message(254), path).status_code == 200
        limit = "deeper than 254 levels within a message or field (the MAX_JSON_DEPTH limit)"
        assert_400(post(live_server, api_key, HEAD + b',"x":' + nested(255) + b"}", path), limit)
        assert_400(post(live_server, api_key, nested_in_a_message(255), path), limit)


def test_a_lower_depth_limit(live_server: Any, api_key: str, settings: Any) -> None:
    settings.RESPCACHE = {**settings.RESPCACHE, "MAX_JSON_DEPTH": 8}
    assert post(live_server, api_key, HEAD + b',"x":' + nested(8) + b"}").status_code == 200
    assert post(live_server, api_key, nested_in_a_message(8)).status_code == 200
    assert_400(post(live_server, api_key, HEAD + b',"x":' + nested(9) + b"}"), "deeper than 8 levels")
    assert_400(post(live_server, api_key, nested_in_a_message(9)), "deeper than 8 levels")


def test_the_json_parsers_1024_levels(live_server: Any, api_key: str) -> None:
    # The body is level 1: a field nesting 1,023 levels is parsed (and too deep to hash), 1,024 not.
    assert_400(post(live_server, api_key, HEAD + b',"x":' + nested(1023) + b"}"), "(the MAX_JSON_DEPTH limit)")
    assert_400(
        post(live_server, api_key, HEAD + b',"x":' + nested(1024) + b"}"),
        "Request body nests deeper than 1024 levels, the JSON parser's limit.",
    )


# --- the value count ------------------------------------------------------------------------------


def reference_count(value: Any) -> int:
    if isinstance(value, list):
        return 1 + sum(reference_count(v) for v in value)
    if isinstance(value, dict):
        return 1 + sum(reference_count(v) for v in value.values())
    return 1


# Text that looks like structure, escapes and non-ASCII: what the count must see through.
tricky_text = st.text(alphabet=st.sampled_from(list('ab,[]{}:"\\ \n\t\u00e9\u2028/0')), max_size=8)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | tricky_text,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(tricky_text, children, max_size=4),
    max_leaves=30,
)


@pytest.mark.parametrize("few_quotes", [parsers._FEW_QUOTES, 0], ids=["regex", "folded strings"])
@given(value=json_values, indent=st.sampled_from([None, 1]), ascii_only=st.booleans())
@settings(max_examples=300, deadline=None)
def test_the_count_is_exact_on_any_json(few_quotes: int, value: Any, indent: int | None, ascii_only: bool) -> None:
    """Both ways of reading strings (a regex match each, or folded with bytes methods first)."""
    raw = json.dumps(value, indent=indent, ensure_ascii=ascii_only).encode()
    before = parsers._FEW_QUOTES
    parsers._FEW_QUOTES = few_quotes
    try:
        assert json_value_count(raw) == reference_count(value)
    finally:
        parsers._FEW_QUOTES = before


@given(value=json_values, limit=st.integers(1, 40))
@settings(max_examples=300, deadline=None)
def test_too_many_values_is_exact(value: Any, limit: int) -> None:
    raw = json.dumps(value).encode()
    assert too_many_values(raw, limit) == (reference_count(value) > limit)


@given(value=json_values)
@settings(max_examples=300, deadline=None)
def test_every_value_but_the_top_one_takes_two_bytes(value: Any) -> None:
    """What lets the hit path skip the count: a body shorter than 2 x limit bytes holds at most
    limit values. Compact JSON is the densest there is."""
    raw = json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()
    assert reference_count(value) <= (len(raw) + 1) // 2
