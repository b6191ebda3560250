"""The canonical request key: every rule of the contract as must-be-equal / must-differ pairs,
then generalised into property tests."""

from __future__ import annotations

import copy
import hashlib
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from respcache import keys
from respcache.keys import TooDeep, entry_key, request_fingerprint


def base(**extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": "claude-sonnet-4-5-20250929",
        "max_tokens": 100,
        "system": "You classify intents.",
        "messages": [{"role": "user", "content": "password reset"}],
        "temperature": 0,
        "tools": [{"name": "lookup", "description": "d", "input_schema": {"type": "object"}}],
    }
    body.update(extra)
    return body


SAME = [
    ("key order", base(), dict(reversed(list(base().items())))),
    ("0 vs 0.0", base(temperature=0), base(temperature=0.0)),
    ("int vs float max_tokens", base(max_tokens=100), base(max_tokens=100.0)),
    ("1e2 vs 100", base(max_tokens=1e2), base(max_tokens=100)),
    ("string content vs text block", base(),
     base(messages=[{"role": "user", "content": [{"type": "text", "text": "password reset"}]}])),
    ("string system vs text block", base(), base(system=[{"type": "text", "text": "You classify intents."}])),
    ("stream left out", base(), base(stream=True)),
    ("metadata left out", base(), base(metadata={"user_id": "u-123"})),
    ("service_tier left out", base(), base(service_tier="auto")),
    ("cache_control on a content block", base(),
     base(messages=[{"role": "user", "content": [
         {"type": "text", "text": "password reset", "cache_control": {"type": "ephemeral"}}]}])),
    ("cache_control on a system block", base(),
     base(system=[{"type": "text", "text": "You classify intents.", "cache_control": {"type": "ephemeral"}}])),
    ("cache_control on a tool", base(),
     base(tools=[{"name": "lookup", "description": "d", "input_schema": {"type": "object"},
                  "cache_control": {"type": "ephemeral", "ttl": "1h"}}])),
    ("top-level cache_control", base(), base(cache_control={"type": "ephemeral"})),
    ("tool_result string vs block",
     base(messages=[{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "42"}]}]),
     base(messages=[{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1",
                                                   "content": [{"type": "text", "text": "42",
                                                                "cache_control": {"type": "ephemeral"}}]}]}])),
]

DIFFERENT = [
    ("model", base(), base(model="claude-sonnet-4-5-20250930")),
    ("max_tokens", base(), base(max_tokens=101)),
    ("system", base(), base(system="You classify intent.")),
    ("message text", base(), base(messages=[{"role": "user", "content": "password resets"}])),
    ("message role", base(), base(messages=[{"role": "assistant", "content": "password reset"}])),
    ("temperature", base(), base(temperature=0.5)),
    ("top_p", base(), base(top_p=0.9)),
    ("stop_sequences", base(), base(stop_sequences=["END"])),
    ("tools", base(), base(tools=[])),
    ("tool schema", base(), base(tools=[{"name": "lookup", "description": "d",
                                          "input_schema": {"type": "object", "required": ["x"]}}])),
    ("unknown field", base(), base(top_k=5)),
    ("another unknown field", base(), base(some_future_option={"a": 1})),
    ("thinking", base(), base(thinking={"type": "enabled", "budget_tokens": 1024})),
    ("1 vs 1.5", base(max_tokens=1), base(max_tokens=1.5)),
    ("true vs 1", base(top_k=True), base(top_k=1)),
    ("cache_control inside a tool schema is data",
     base(tools=[{"name": "t", "input_schema": {"properties": {"cache_control": {"type": "string"}}}}]),
     base(tools=[{"name": "t", "input_schema": {"properties": {}}}])),
    ("cache_control inside tool_use input is data",
     base(messages=[{"role": "assistant", "content": [
         {"type": "tool_use", "id": "t", "name": "n", "input": {"cache_control": 1}}]}]),
     base(messages=[{"role": "assistant", "content": [
         {"type": "tool_use", "id": "t", "name": "n", "input": {}}]}])),
]


@pytest.mark.parametrize(("why", "a", "b"), SAME, ids=[s[0] for s in SAME])
def test_equivalent_requests_share_a_key(why: str, a: dict, b: dict) -> None:
    assert request_fingerprint(a) == request_fingerprint(b)


@pytest.mark.parametrize(("why", "a", "b"), DIFFERENT, ids=[d[0] for d in DIFFERENT])
def test_different_requests_get_different_keys(why: str, a: dict, b: dict) -> None:
    assert request_fingerprint(a) != request_fingerprint(b)


def test_beta_header_is_in_the_key_sorted_and_trimmed() -> None:
    body = base()
    assert request_fingerprint(body) != request_fingerprint(body, beta="tools-2024-04-04")
    assert request_fingerprint(body, beta="a-1,b-2") == request_fingerprint(body, beta=" b-2 , a-1")
    assert request_fingerprint(body, beta=["b-2", "a-1"]) == request_fingerprint(body, beta="a-1, b-2")
    assert request_fingerprint(body, beta="") == request_fingerprint(body)
    assert request_fingerprint(body, beta="a-1") != request_fingerprint(body, beta="a-2")


def test_fingerprint_is_sha256_over_sorted_compact_json() -> None:
    body = {"model": "m", "max_tokens": 1.0, "messages": []}
    expected_doc = {"anthropic-beta": [], "request": {"max_tokens": 1, "messages": [], "model": "m"}}
    canonical = json.dumps(expected_doc, sort_keys=True, separators=(",", ":")).encode()
    assert keys.canonical_json(keys.normalise(body)) == canonical
    assert request_fingerprint(body) == hashlib.sha256(canonical).hexdigest()
    assert len(request_fingerprint(body)) == 64


def test_normalising_does_not_change_the_callers_body() -> None:
    body = base(stream=True, cache_control={"type": "ephemeral"})
    before = copy.deepcopy(body)
    request_fingerprint(body)
    assert body == before


def test_nesting_limit() -> None:
    deep: Any = "x"
    for _ in range(300):
        deep = {"a": deep}
    with pytest.raises(TooDeep):
        request_fingerprint(base(extra=deep))
    with pytest.raises(TooDeep):
        request_fingerprint(base(messages=[{"role": "user", "content": [{"type": "text", "x": deep}]}]))
    assert request_fingerprint(base(extra={"a": {"b": 1}}))


def test_fast_fingerprint_equals_the_plain_canonical_json() -> None:
    """request_fingerprint (part by part, walking only parts with integral floats) hashes the
    very bytes of canonical_json(normalise(...))."""
    bodies = [body for _, a, b in SAME + DIFFERENT for body in (a, b)]
    bodies += [
        base(temperature=1.0, top_k=1e16, x=[1.0, "1.0]", {"y": 2.5e20}]),
        base(messages=[{"role": "user", "content": [{"type": "text", "text": "v1.0, 2e5]"}]}]),
        base(messages="not a list", system=None, tools="nope"),
        base(tools=[{"name": "t", "input_schema": {"minimum": 0.0, "maximum": 1e3}}]),
    ]
    for body in bodies:
        for beta in ("", "b-1,a-2"):
            for endpoint in ("messages", "count_tokens"):
                doc = keys.normalise(body, beta=beta, endpoint=endpoint)
                expected = hashlib.sha256(keys.canonical_json(doc)).hexdigest()
                assert request_fingerprint(body, beta=beta, endpoint=endpoint) == expected


def test_entry_key_namespaces_workload_and_version() -> None:
    fp = "ab" * 32
    a = entry_key(workload="intents", version=1, fingerprint=fp)
    assert a != entry_key(workload="intents", version=2, fingerprint=fp)
    assert a != entry_key(workload="moderation", version=1, fingerprint=fp)
    assert a.endswith(fp) and "intents" in a


# --- property tests ---------------------------------------------------------------------------

json_leaf = st.one_of(
    st.none(), st.booleans(), st.integers(-(10**12), 10**12),
    st.floats(allow_nan=False, allow_infinity=False, width=64), st.integers(), st.text(max_size=20),
)
json_value = st.recursive(
    json_leaf,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)
texts = st.text(min_size=0, max_size=50)


@st.composite
def requests(draw: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": draw(st.sampled_from(["claude-a", "claude-b-20250101"])),
        "max_tokens": draw(st.integers(1, 4096)),
        "messages": [
            {"role": draw(st.sampled_from(["user", "assistant"])), "content": draw(texts)}
            for _ in range(draw(st.integers(1, 3)))
        ],
    }
    if draw(st.booleans()):
        body["system"] = draw(texts)
    if draw(st.booleans()):
        body["temperature"] = draw(st.sampled_from([0, 0.0, 0.5, 1]))
    for name in draw(st.lists(st.sampled_from(["top_k", "x_future", "tool_choice"]), unique=True, max_size=2)):
        body[name] = draw(json_value)
    return body


def equivalent_variant(body: dict[str, Any], data: Any) -> dict[str, Any]:
    """The same request, written differently in every way the contract says does not matter."""
    out: dict[str, Any] = {}
    items = list(body.items())
    data.draw(st.randoms()).shuffle(items)
    for name, value in items:
        if isinstance(value, int) and not isinstance(value, bool) and data.draw(st.booleans()):
            value = float(value)
        if isinstance(value, float) and value.is_integer() and data.draw(st.booleans()):
            value = int(value)
        out[name] = value
    if isinstance(out.get("system"), str) and data.draw(st.booleans()):
        out["system"] = [{"type": "text", "text": out["system"], "cache_control": {"type": "ephemeral"}}]
    out["messages"] = [
        {**m, "content": [{"type": "text", "text": m["content"]}]} if data.draw(st.booleans()) else m
        for m in body["messages"]
    ]
    if data.draw(st.booleans()):
        out["stream"] = data.draw(st.booleans())
    if data.draw(st.booleans()):
        out["metadata"] = {"user_id": data.draw(texts)}
    return out


@settings(max_examples=200, deadline=None)
@given(requests(), st.data())
def test_property_equivalent_requests_share_a_key(body: dict[str, Any], data: Any) -> None:
    assert request_fingerprint(body) == request_fingerprint(equivalent_variant(body, data))


@settings(max_examples=200, deadline=None)
@given(requests(), st.sampled_from(["model", "max_tokens", "messages", "system", "temperature", "new_field"]), st.data())
def test_property_changing_an_included_field_changes_the_key(body: dict[str, Any], field: str, data: Any) -> None:
    changed = copy.deepcopy(body)
    if field == "model":
        changed["model"] = body["model"] + "-x"
    elif field == "max_tokens":
        changed["max_tokens"] = body["max_tokens"] + 1
    elif field == "messages":
        changed["messages"][-1]["content"] = str(changed["messages"][-1]["content"]) + "!"
    elif field == "system":
        changed["system"] = str(body.get("system", "")) + "?"
    elif field == "temperature":
        changed["temperature"] = 0.25 if body.get("temperature") not in (0.25,) else 0.75
    else:
        changed["new_field"] = data.draw(json_value)
    assert request_fingerprint(body) != request_fingerprint(changed)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        (9007199254740994.0, 9007199254740994),  # above 2**53, still exactly integral
        (1.8446744073709552e19, 2**64),  # beyond 64 bits: the float form, as JSON parsers read it
        (-0.0, 0),
        (1e2, 100),
    ],
)
def test_large_and_signed_integral_numbers_share_a_key(a: float, b: int) -> None:
    assert request_fingerprint(base(top_k=a)) == request_fingerprint(base(top_k=b))


def test_integers_beyond_64_bits_do_not_crash() -> None:
    assert request_fingerprint(base(top_k=2**70)) == request_fingerprint(base(top_k=float(2**70)))


def test_exponent_floats_in_the_integer_range_equal_their_integers() -> None:
    assert request_fingerprint(base(x=[1e16])) == request_fingerprint(base(x=[10**16]))
    assert request_fingerprint(base(messages=[{"role": "user", "content": [{"type": "text", "text": "t", "n": 2.5e17}]}])) == (
        request_fingerprint(base(messages=[{"role": "user", "content": [{"type": "text", "text": "t", "n": 25 * 10**16}]}]))
    )


@pytest.mark.parametrize("dots_before", [0, 5, keys._DOTS_CHECKED - 1, keys._DOTS_CHECKED, keys._DOTS_CHECKED + 40])
@pytest.mark.parametrize("tail", ["2.0]", "2.0}", "2.0,", "2.5]", "2.05]", "1e+16]", "0.0]"])
def test_integral_float_scan_agrees_with_the_regexes_however_many_dots(dots_before: int, tail: str) -> None:
    """_needs_walk checks dots one by one, then hands the rest to the regex: the answer must not
    depend on where the integral float sits relative to that switch."""
    data = ("[" + '"a sentence. "' * dots_before + "," * bool(dots_before) + tail).encode()
    expected = bool(keys._INTEGRAL_FLOAT.search(data) or keys._INTEGRAL_FLOAT_EXP.search(data))
    assert keys._needs_walk(data) is expected
    assert expected is (tail in {"2.0]", "2.0}", "2.0,", "1e+16]", "0.0]"})


def test_few_dots_are_checked_without_the_regex(monkeypatch: Any) -> None:
    class NoRegex:
        def search(self, *a: Any) -> Any:
            raise AssertionError("the regex ran")
    monkeypatch.setattr(keys, "_INTEGRAL_FLOAT", NoRegex())
    assert keys._needs_walk(b'[1.5,"a. b."]') is False
    assert keys._needs_walk(b'[2.0]') is True

