"""respcache.keys against the independent reference canonicaliser (tests/reference_keys.py):
identical digests on a corpus of equivalent and different requests, as callers write them."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from respcache.keys import request_fingerprint
from tests.reference_keys import beta_values, dumps, format_float, reference_fingerprint
from tests.test_keys import DIFFERENT, SAME, base, json_value, requests


def respcache_fingerprint(raw: str | bytes, beta: str | list[str] | None = None) -> str:
    """What the endpoint computes: orjson parses the body, respcache.keys hashes it."""
    return request_fingerprint(orjson.loads(raw), beta=beta)


def spellings(body: dict[str, Any]) -> list[str]:
    """One request written as different callers write it: spacing, key order, escapes."""
    return [
        json.dumps(body),
        json.dumps(body, indent=2, ensure_ascii=False),
        json.dumps(dict(reversed(list(body.items()))), separators=(",", ":")),
        json.dumps(body, sort_keys=True, ensure_ascii=True),
    ]


def hand_written() -> list[tuple[str, str]]:
    """JSON texts whose numbers, strings and nesting exercise the canonical form's corners."""
    head = '{"model":"m","max_tokens":%s,"messages":[{"role":"user","content":%s}]%s}'
    numbers = [
        "0",
        "0.0",
        "-0.0",
        "-0",
        "1e2",
        "1E2",
        "100.0",
        "1.5",
        "0.1",
        "1e-7",
        "0.00001",
        "1.5e-5",
        "0.0001",
        "123.456",
        "1e15",
        "1e16",
        "1.5e16",
        "1e300",
        "5e-324",
        "1.7976931348623157e308",
        "9007199254740992.0",
        "9007199254740993",
        "9007199254740994.0",
        "9007199254740994",
        "1e19",
        "10000000000000000000",
        "18446744073709551615",
        "18446744073709551616",
        "1e20",
        "-9223372036854775808",
        "-9223372036854775809",
        "123456789012345678901234567890",
        "12345678901234567",
        "0.30000000000000004",
    ]
    strings = [
        '"plain"',
        '"h\\u00e9llo \\ud83d\\ude00"',
        '"héllo 😀"',
        '"line\\nbreak\\ttab\\u0001\\u001f"',
        '"quote \\" backslash \\\\ slash \\/"',
        '"\\u2028\\u2029\\u007f"',
        '""',
        '[{"type":"text","text":"a","cache_control":{"type":"ephemeral"}},{"type":"image",'
        '"source":{"type":"base64","media_type":"image/png","data":"iVBORw0KGgo="}}]',
    ]
    extras = [
        "",
        ',"temperature":0',
        ',"temperature":0.0',
        ',"top_p":0.95',
        ',"stream":true',
        ',"metadata":{"user_id":"u"}',
        ',"service_tier":"auto"',
        ',"cache_control":{"type":"ephemeral"}',
        ',"system":"s"',
        ',"system":[{"type":"text","text":"s","cache_control":{"type":"ephemeral"}}]',
        ',"tools":[{"name":"t","input_schema":{"type":"object","properties":{"cache_control":{}}},'
        '"cache_control":{"type":"ephemeral"}}]',
        ',"x":' + "[" * 60 + "1" + "]" * 60,
        ',"\\u00e9":1,"e\\u0301":2,"z":3,"😀":4,"\\uffff":5',
    ]
    out = [(f"max_tokens={n}", head % (n, '"hi"', "")) for n in numbers]
    out += [(f"content={s[:20]}", head % ("1", s, "")) for s in strings]
    out += [(f"extra={e[:30]}", head % ("1", '"hi"', e)) for e in extras]
    return out


BETAS: list[str | list[str] | None] = [
    None,
    "",
    "a-1",
    "a-1,b-2",
    " b-2 , a-1",
    ["b-2", "a-1"],
    "a-1,,a-1",
    "a-2",
]


def corpus() -> list[tuple[str, str, str | list[str] | None]]:
    items: list[tuple[str, str, str | list[str] | None]] = []
    for why, a, b in SAME + DIFFERENT:
        for body in (a, b):
            items += [(why, raw, None) for raw in spellings(body)]
    items += [(why, raw, None) for why, raw in hand_written()]
    items += [(f"beta={beta!r}", json.dumps(base()), beta) for beta in BETAS]
    return items


CORPUS = corpus()


@pytest.mark.parametrize(("why", "raw", "beta"), CORPUS, ids=[f"{i}-{c[0][:30]}" for i, c in enumerate(CORPUS)])
def test_respcache_and_reference_give_identical_keys(why: str, raw: str, beta: Any) -> None:
    assert respcache_fingerprint(raw, beta) == reference_fingerprint(raw, beta)


@pytest.mark.parametrize(("why", "raw", "beta"), CORPUS[::15])
def test_count_tokens_keys_are_identical_too_and_apart_from_messages(why: str, raw: str, beta: Any) -> None:
    ours = request_fingerprint(orjson.loads(raw), beta=beta, endpoint="count_tokens")
    assert ours == reference_fingerprint(raw, beta, endpoint="count_tokens")
    assert ours != reference_fingerprint(raw, beta)


def test_corpus_holds_both_equivalent_and_different_requests() -> None:
    """The corpus is not one request written many ways: the keys fall into many classes, and
    the contract's must-be-equal / must-differ pairs hold for the reference itself."""
    distinct = {reference_fingerprint(raw, beta) for _, raw, beta in CORPUS}
    assert len(distinct) >= 60
    for _, a, b in SAME:
        assert len({reference_fingerprint(raw) for raw in spellings(a) + spellings(b)}) == 1
    for _, a, b in DIFFERENT:
        assert reference_fingerprint(json.dumps(a)) != reference_fingerprint(json.dumps(b))
    assert reference_fingerprint('{"a":0}') == reference_fingerprint('{"a":-0.0}')
    assert reference_fingerprint('{"a":1}') != reference_fingerprint('{"a":1.5}')
    assert reference_fingerprint('{"a":1}', "b") != reference_fingerprint('{"a":1}')


def test_reference_canonical_form_by_hand() -> None:
    """The reference's own rules, checked against text written out by hand."""
    assert dumps({"b": [1.0, 2.5, None, True], "a": "é\n"}) == '{"a":"é\\n","b":[1,2.5,null,true]}'
    assert [format_float(x) for x in (1e-7, 1e-5, 1.5e-5, 1e-4, 1e16, 2.0**53 + 2, 1e20, -(2.0**63))] == [
        "1e-7",
        "0.00001",
        "0.000015",
        "0.0001",
        "10000000000000000",
        "9007199254740994",
        "1e+20",
        "-9223372036854775808",
    ]
    assert (
        dumps([2**64 - 1, 2**64, -(2**63) - 1]) == "[18446744073709551615,1.8446744073709552e+19,-9223372036854775808]"
    )
    assert beta_values([" b , a", "a,,c"]) == ["a", "b", "c"]


bodies_with_any_json = st.builds(lambda body, extra: {**body, "x_extra": extra}, requests(), json_value)


@settings(max_examples=300, deadline=None)
@given(bodies_with_any_json, st.sampled_from([0, 2, None]), st.booleans())
def test_property_identical_keys_on_random_requests(body: dict[str, Any], indent: Any, ascii_only: bool) -> None:
    raw = json.dumps(body, indent=indent, ensure_ascii=ascii_only)
    assert respcache_fingerprint(raw) == reference_fingerprint(raw)
