"""The canonical request key: every rule of the contract as must-be-equal / must-differ pairs,
then generalised into property tests."""

from __future__ import annotations

import ast
import copy
import fnmatch
import hashlib
import json
import pathlib
import re
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import assume, given, settings
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
    (
        "string content vs text block",
        base(),
        base(messages=[{"role": "user", "content": [{"type": "text", "text": "password reset"}]}]),
    ),
    ("string system vs text block", base(), base(system=[{"type": "text", "text": "You classify intents."}])),
    ("stream left out", base(), base(stream=True)),
    ("metadata left out", base(), base(metadata={"user_id": "u-123"})),
    ("service_tier left out", base(), base(service_tier="auto")),
    (
        "cache_control on a content block",
        base(),
        base(
            messages=[
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "password reset", "cache_control": {"type": "ephemeral"}}],
                }
            ]
        ),
    ),
    (
        "cache_control on a system block",
        base(),
        base(system=[{"type": "text", "text": "You classify intents.", "cache_control": {"type": "ephemeral"}}]),
    ),
    (
        "cache_control on a tool",
        base(),
        base(
            tools=[
                {
                    "name": "lookup",
                    "description": "d",
                    "input_schema": {"type": "object"},
                    "cache_control": {"type": "ephemeral", "ttl": "1h"},
                }
            ]
        ),
    ),
    ("top-level cache_control", base(), base(cache_control={"type": "ephemeral"})),
    (
        "tool_result string vs block",
        base(messages=[{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "42"}]}]),
        base(
            messages=[
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "tool_result",
                            "tool_use_id": "t1",
                            "content": [{"type": "text", "text": "42", "cache_control": {"type": "ephemeral"}}],
                        }
                    ],
                }
            ]
        ),
    ),
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
    (
        "tool schema",
        base(),
        base(tools=[{"name": "lookup", "description": "d", "input_schema": {"type": "object", "required": ["x"]}}]),
    ),
    ("unknown field", base(), base(top_k=5)),
    ("another unknown field", base(), base(some_future_option={"a": 1})),
    ("thinking", base(), base(thinking={"type": "enabled", "budget_tokens": 1024})),
    ("1 vs 1.5", base(max_tokens=1), base(max_tokens=1.5)),
    ("true vs 1", base(top_k=True), base(top_k=1)),
    (
        "cache_control inside a tool schema is data",
        base(tools=[{"name": "t", "input_schema": {"properties": {"cache_control": {"type": "string"}}}}]),
        base(tools=[{"name": "t", "input_schema": {"properties": {}}}]),
    ),
    (
        "cache_control inside tool_use input is data",
        base(
            messages=[
                {
                    "role": "assistant",
                    "content": [{"type": "tool_use", "id": "t", "name": "n", "input": {"cache_control": 1}}],
                }
            ]
        ),
        base(messages=[{"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "n", "input": {}}]}]),
    ),
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


def nested(levels: int) -> Any:
    """A value nesting ``levels`` levels (itself level 1)."""
    value: Any = []
    for _ in range(levels - 1):
        value = [value]
    return value


def in_a_message(levels: int) -> list[dict[str, Any]]:
    """Messages whose one message nests ``levels`` levels (the message, its content list, a
    block, then lists)."""
    return [{"role": "user", "content": [{"type": "text", "text": "t", "x": nested(levels - 3)}]}]


@pytest.mark.parametrize("max_depth", [keys.DEFAULT_MAX_DEPTH, 40, 5])
def test_nesting_limit_at_and_just_over_max_depth(max_depth: int) -> None:
    """A message or field may nest max_depth levels (itself level 1), not one more; the
    default is what orjson serialises, a lower limit walks the parts that could break it."""
    for at, over in (
        (base(extra=nested(max_depth)), base(extra=nested(max_depth + 1))),
        (base(messages=in_a_message(max_depth)), base(messages=in_a_message(max_depth + 1))),
    ):
        assert request_fingerprint(at, max_depth=max_depth)
        with pytest.raises(TooDeep, match=f"deeper than {max_depth} levels"):
            request_fingerprint(over, max_depth=max_depth)


def test_a_lower_depth_limit_does_not_change_a_key() -> None:
    for _, a, b in SAME + DIFFERENT:
        for body in (a, b):
            assert request_fingerprint(body, max_depth=16) == request_fingerprint(body)


def test_depth_limit_is_from_1_to_what_orjson_serialises() -> None:
    for bad in (0, keys.DEFAULT_MAX_DEPTH + 1):
        with pytest.raises(ValueError, match="max_depth"):
            request_fingerprint(base(), max_depth=bad)


def nested_tool_results(levels: int) -> list[dict[str, Any]]:
    """One user message whose content is ``levels`` tool_result blocks, each inside the last."""
    block: dict[str, Any] = {"type": "text", "text": "the bottom"}
    for level in range(levels):
        block = {"type": "tool_result", "tool_use_id": f"t{level}", "content": [block]}
    return [{"role": "user", "content": [block]}]


@pytest.mark.parametrize("levels", [125, 126, 450, 10_000])
def test_nested_tool_results_stop_at_the_depth_limit_never_recursing_on(levels: int) -> None:
    """Normalising tool_result content recurses: it stops with TooDeep where hashing would (a
    level is two: the block and its content list), never a RecursionError."""
    body = base(messages=nested_tool_results(levels))
    # The message (1), its content (2), then a block and its content per level, the text block.
    depth = 2 + 2 * levels + 1
    if depth <= keys.DEFAULT_MAX_DEPTH:
        assert request_fingerprint(body)
    else:
        with pytest.raises(TooDeep):
            request_fingerprint(body)
        with pytest.raises(TooDeep):
            keys.normalise(body)


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


def test_entry_key_namespaces_workload_upstream_kind_and_version() -> None:
    fp = "ab" * 32
    a = entry_key(workload="intents", version=1, fingerprint=fp)
    assert a == entry_key(workload="intents", version=1, fingerprint=fp, upstream=keys.ANTHROPIC)
    assert a != entry_key(workload="intents", version=2, fingerprint=fp)
    assert a != entry_key(workload="moderation", version=1, fingerprint=fp)
    assert a != entry_key(workload="intents", version=1, fingerprint=fp, upstream=keys.SIMULATED)
    assert a.endswith(fp) and "intents" in a


def test_an_unknown_upstream_kind_has_no_key_space() -> None:
    with pytest.raises(ValueError, match="openai"):
        entry_key(workload="intents", version=1, fingerprint="ab" * 32, upstream="openai")


# --- property tests ---------------------------------------------------------------------------

json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**12), 10**12),
    st.floats(allow_nan=False, allow_infinity=False, width=64),
    st.integers(),
    st.text(max_size=20),
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
@given(
    requests(), st.sampled_from(["model", "max_tokens", "messages", "system", "temperature", "new_field"]), st.data()
)
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
    assert request_fingerprint(
        base(messages=[{"role": "user", "content": [{"type": "text", "text": "t", "n": 2.5e17}]}])
    ) == (
        request_fingerprint(
            base(messages=[{"role": "user", "content": [{"type": "text", "text": "t", "n": 25 * 10**16}]}])
        )
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
    assert keys._needs_walk(b"[2.0]") is True


# --- Redis key and channel names ---------------------------------------------------------------

FP = "ab" * 32
TAIL = f"{{aba}}:{FP}"  # the hash tag of the fingerprint's group (its first 3 hex digits)
ENTRY = f"respcache:e:intents:3:{TAIL}"
SIM = keys.SIMULATED
SIM_ENTRY = f"respcache:e:intents:simulated:3:{TAIL}"


@pytest.mark.parametrize(
    ("built", "expected"),
    [
        (lambda: keys.version_key("intents"), "respcache:v:intents"),
        (lambda: keys.version_key("intents", "aba"), "respcache:v:intents:{aba}"),
        (lambda: keys.entry_tail(FP), TAIL),
        (lambda: keys.budget_key(workload="intents", width_seconds=60, start=60), "respcache:b:{intents}:m:60"),
        (lambda: keys.budget_key(workload="intents", width_seconds=86400, start=0), "respcache:b:{intents}:d:0"),
        (lambda: keys.entry_key(workload="intents", version=3, fingerprint=FP), ENTRY),
        (lambda: keys.entry_prefix("intents"), "respcache:e:intents:"),
        (lambda: keys.entry_pattern(workload="intents"), "respcache:e:intents:*:*"),
        (lambda: keys.entry_pattern(workload="intents", version=3), "respcache:e:intents:3:*"),
        (lambda: keys.meta_key(ENTRY), f"respcache:m:intents:3:{TAIL}"),
        (lambda: keys.meta_prefix("intents"), "respcache:m:intents:"),
        (lambda: keys.meta_pattern(workload="intents"), "respcache:m:intents:*:*"),
        (lambda: keys.meta_pattern(workload="intents", version=3), "respcache:m:intents:3:*"),
        (lambda: keys.lock_key(ENTRY), f"respcache:l:intents:3:{TAIL}"),
        (lambda: keys.channel_name(ENTRY), f"respcache:c:intents:3:{TAIL}"),
        (
            lambda: keys.bucket_key(workload="intents", width_seconds=60, start=1_800_000_000),
            "respcache:s:intents:m:1800000000",
        ),
        (
            lambda: keys.bucket_key(workload="intents", width_seconds=3600, start=1_799_996_400),
            "respcache:s:intents:h:1799996400",
        ),
        (lambda: keys.totals_key("intents"), "respcache:s:intents:total"),
        # The simulated upstream's key space: its kind after the slug.
        (lambda: keys.entry_key(workload="intents", version=3, fingerprint=FP, upstream=SIM), SIM_ENTRY),
        (lambda: keys.entry_prefix("intents", SIM), "respcache:e:intents:simulated:"),
        (lambda: keys.entry_pattern(workload="intents", version=3, upstream=SIM), "respcache:e:intents:simulated:3:*"),
        (lambda: keys.entry_pattern(workload="intents", upstream=SIM), "respcache:e:intents:*:*"),
        (lambda: keys.meta_key(SIM_ENTRY), f"respcache:m:intents:simulated:3:{TAIL}"),
        (lambda: keys.meta_prefix("intents", SIM), "respcache:m:intents:simulated:"),
        (lambda: keys.meta_pattern(workload="intents", version=3, upstream=SIM), "respcache:m:intents:simulated:3:*"),
        (lambda: keys.lock_key(SIM_ENTRY), f"respcache:l:intents:simulated:3:{TAIL}"),
        (lambda: keys.channel_name(SIM_ENTRY), f"respcache:c:intents:simulated:3:{TAIL}"),
        (lambda: keys.failure_key(SIM_ENTRY), f"respcache:f:intents:simulated:3:{TAIL}"),
    ],
    ids=lambda value: value if isinstance(value, str) else "",
)
def test_every_redis_name_has_its_exact_shape(built: Any, expected: str) -> None:
    """The names are what older releases wrote and other workers read: a change is a migration."""
    assert built() == expected


def test_a_bucket_is_a_minute_or_an_hour_wide() -> None:
    with pytest.raises(ValueError, match="120 s"):
        keys.bucket_key(workload="intents", width_seconds=120, start=0)


def test_the_lookup_scripts_prefixes_complete_to_the_entry_and_meta_keys() -> None:
    """lookup.lua appends "<version>:<fingerprint>" to the prefixes: the same names as here."""
    assert keys.entry_prefix("intents") + f"3:{TAIL}" == ENTRY
    assert keys.meta_prefix("intents") + f"3:{TAIL}" == keys.meta_key(ENTRY)
    assert keys.entry_prefix("intents", SIM) + f"3:{TAIL}" == SIM_ENTRY
    assert keys.meta_prefix("intents", SIM) + f"3:{TAIL}" == keys.meta_key(SIM_ENTRY)


def names_of(slug: str, version: int, upstream: str = keys.ANTHROPIC) -> dict[str, str]:
    entry = keys.entry_key(workload=slug, version=version, fingerprint=FP, upstream=upstream)
    return {
        "entry": entry,
        "meta": keys.meta_key(entry),
        "lock": keys.lock_key(entry),
        "channel": keys.channel_name(entry),
        "version": keys.version_key(slug),
        "totals": keys.totals_key(slug),
        "bucket": keys.bucket_key(workload=slug, width_seconds=60, start=version * 60),
    }


# "intents" is a prefix of two of the others' slugs; version 1 is a prefix of version 12.
SLUGS = ("intents", "intents2", "intents-v2", "intent", "moderation")
VERSIONS = (1, 2, 12)


BOTH = (keys.ANTHROPIC, SIM)


@pytest.mark.parametrize(
    ("pattern", "kind", "versions", "upstreams"),
    [
        (keys.entry_pattern(workload="intents"), "entry", VERSIONS, BOTH),
        (keys.entry_pattern(workload="intents", version=1), "entry", (1,), (keys.ANTHROPIC,)),
        (keys.entry_pattern(workload="intents", version=1, upstream=SIM), "entry", (1,), (SIM,)),
        (keys.meta_pattern(workload="intents"), "meta", VERSIONS, BOTH),
        (keys.meta_pattern(workload="intents", version=12), "meta", (12,), (keys.ANTHROPIC,)),
        (keys.meta_pattern(workload="intents", version=12, upstream=SIM), "meta", (12,), (SIM,)),
    ],
)
def test_purge_and_scan_patterns_match_exactly_their_workloads_keys(
    redis_db: Any, pattern: str, kind: str, versions: tuple[int, ...], upstreams: tuple[str, ...]
) -> None:
    """In a real Redis (SCAN MATCH is the glob that counts): every name of every workload,
    version and upstream kind is there, and the pattern finds the ones it should, no other
    workload's; a purge's (no version) finds both kinds', a version's only its kind's."""
    every = {name for slug in SLUGS for v in VERSIONS for u in BOTH for name in names_of(slug, v, u).values()}
    redis_db.mset(dict.fromkeys(every, b"1"))
    found = {key.decode() for key in redis_db.scan_iter(match=pattern, count=1000)}
    assert found == {names_of("intents", v, u)[kind] for v in versions for u in upstreams}
    assert {name for name in every if fnmatch.fnmatchcase(name, pattern)} == found


slugs = st.from_regex(r"[-a-zA-Z0-9_]{1,64}", fullmatch=True)  # what a SlugField admits


kinds = st.sampled_from(BOTH)


@given(
    a=slugs,
    b=slugs,
    version=st.integers(1, 10**6),
    other_version=st.integers(1, 10**6),
    upstream=kinds,
    other_upstream=kinds,
)
@settings(max_examples=300)
def test_a_workloads_patterns_never_reach_another_workloads_names(
    a: str, b: str, version: int, other_version: int, upstream: str, other_upstream: str
) -> None:
    assume(a != b)
    ours, theirs = names_of(a, version, upstream), names_of(b, other_version, other_upstream)
    for kind, pattern in (
        ("entry", keys.entry_pattern(workload=a)),
        ("entry", keys.entry_pattern(workload=a, version=version, upstream=upstream)),
        ("meta", keys.meta_pattern(workload=a)),
        ("meta", keys.meta_pattern(workload=a, version=version, upstream=upstream)),
    ):
        assert fnmatch.fnmatchcase(ours[kind], pattern)
        assert not [name for name in theirs.values() if fnmatch.fnmatchcase(name, pattern)]
        assert [name for name in ours.values() if fnmatch.fnmatchcase(name, pattern)] == [ours[kind]]


@given(slug=slugs, version=st.integers(1, 10**6), other_version=st.integers(1, 10**6))
def test_a_versions_patterns_reach_no_other_version(slug: str, version: int, other_version: int) -> None:
    assume(version != other_version)
    other = names_of(slug, other_version)
    for kind, all_versions, one_version in (
        ("entry", keys.entry_pattern(workload=slug), keys.entry_pattern(workload=slug, version=version)),
        ("meta", keys.meta_pattern(workload=slug), keys.meta_pattern(workload=slug, version=version)),
    ):
        assert fnmatch.fnmatchcase(other[kind], all_versions)
        assert not fnmatch.fnmatchcase(other[kind], one_version)


@given(slug=slugs, version=st.integers(1, 10**6), other_version=st.integers(1, 10**6), upstream=kinds)
def test_one_upstream_kinds_names_never_match_the_others_patterns(
    slug: str, version: int, other_version: int, upstream: str
) -> None:
    """The key spaces are apart: no name of one kind (any version) matches a pattern of the
    other's, while a purge's pattern (no version) matches both."""
    other = SIM if upstream == keys.ANTHROPIC else keys.ANTHROPIC
    theirs = names_of(slug, other_version, other)
    for pattern in (
        keys.entry_pattern(workload=slug, version=version, upstream=upstream),
        keys.meta_pattern(workload=slug, version=version, upstream=upstream),
    ):
        assert not [name for name in theirs.values() if fnmatch.fnmatchcase(name, pattern)]
    assert fnmatch.fnmatchcase(theirs["entry"], keys.entry_pattern(workload=slug))
    assert fnmatch.fnmatchcase(theirs["meta"], keys.meta_pattern(workload=slug))


def string_constants(path: pathlib.Path) -> Iterator[str]:
    """The string literals of a module (f-strings' literal parts too), docstrings left out."""
    tree = ast.parse(path.read_text())
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            yield node.value


def test_no_module_but_keys_formats_a_redis_name() -> None:
    """Names are built in keys.py alone; the rest of respcache asks it (the Lua scripts too:
    they only append a version and a fingerprint to the prefixes they are handed)."""
    package = pathlib.Path(keys.__file__).parent
    name = re.compile(r"respcache:[a-z]+:")
    offenders = {
        f"{path.relative_to(package)}: {text!r}"
        for path in package.rglob("*.py")
        if path.name != "keys.py"
        for text in string_constants(path)
        if name.search(text)
    }
    offenders |= {str(path.relative_to(package)) for path in package.rglob("*.lua") if name.search(path.read_text())}
    assert offenders == set()
    assert "respcache:e:" in set(string_constants(pathlib.Path(keys.__file__)))  # the check sees literals


def test_keys_imports_nothing_of_ours() -> None:
    """Nor Django or Redis: every other module may import it, it imports none of them."""
    tree = ast.parse(pathlib.Path(keys.__file__).read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {"." * node.level + (node.module or "") for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert "orjson" in imported  # the check sees the imports
    assert not {name for name in imported if name.split(".")[0] in {"", "respcache", "django", "redis", "django_redis"}}
