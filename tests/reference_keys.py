"""A reference canonicaliser, written apart from respcache.keys with nothing but the json module.

It follows CONTRACT.md's "What makes two requests the same" rule by rule, reading the request
from its JSON text as a caller sends it. Where the contract leaves a choice open, it takes the
one respcache documents, so that both must produce the *same digest*, not merely the same
equivalences:

- the hashed document is ``{"anthropic-beta": [sorted values], "request": normalised body}``,
  plus ``"endpoint": name`` for an endpoint other than ``messages`` (``count_tokens``);
- JSON text: keys sorted by code point, no white space, non-ASCII written as UTF-8, control
  characters escaped as Python's json module escapes them;
- numbers: an integral float within the 64-bit integers (-2**63 to 2**64 - 1) is that integer,
  and an integer outside them is the float JSON parsers read it as; other floats are written
  with the shortest digits that round-trip, positionally for decimal exponents -5 to 15 and
  otherwise as ``<digits>e<sign><exponent>``.

tests/test_keys_reference.py and ``python -m bench`` compare it with respcache.keys.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

LEFT_OUT = ("stream", "metadata", "service_tier", "cache_control")
INT_MIN, INT_MAX = -(2**63), 2**64 - 1


def _text_block(text: str) -> dict[str, Any]:
    return {"type": "text", "text": text}


def _without_marker(block: Any) -> Any:
    """A content, system or tool block without its prompt-caching marker."""
    if not isinstance(block, dict):
        return block
    out = dict(block)
    out.pop("cache_control", None)
    if out.get("type") == "tool_result" and "content" in out:
        out["content"] = _content(out["content"])
    return out


def _content(value: Any) -> Any:
    """A string is the same text as one text block; blocks lose their cache_control markers."""
    if isinstance(value, str):
        return [_text_block(value)]
    if isinstance(value, list):
        return [_without_marker(block) for block in value]
    return value


def normalise_body(body: dict[str, Any]) -> dict[str, Any]:
    out = {name: value for name, value in body.items() if name not in LEFT_OUT}
    if "system" in out:
        out["system"] = _content(out["system"])
    if isinstance(out.get("messages"), list):
        messages = []
        for message in out["messages"]:
            if isinstance(message, dict) and "content" in message:
                message = dict(message)
                message["content"] = _content(message["content"])
            messages.append(message)
        out["messages"] = messages
    if isinstance(out.get("tools"), list):
        out["tools"] = [_without_marker(tool) for tool in out["tools"]]
    return out


def beta_values(headers: str | list[str] | None) -> list[str]:
    if not headers:
        return []
    if isinstance(headers, str):
        headers = [headers]
    found = set()
    for header in headers:
        for value in header.split(","):
            if value.strip():
                found.add(value.strip())
    return sorted(found)


def format_float(value: float) -> str:
    if value.is_integer() and INT_MIN <= value <= INT_MAX:
        return str(int(value))
    text = repr(value)  # the shortest digits that round-trip
    if "e" not in text:
        return text
    mantissa, exponent_text = text.split("e")
    exponent = int(exponent_text)
    if exponent == -5:  # repr switches to exponent notation one decade earlier
        sign = "-" if mantissa.startswith("-") else ""
        return sign + "0.0000" + mantissa.lstrip("-").replace(".", "")
    return f"{mantissa}e{'+' if exponent > 0 else '-'}{abs(exponent)}"


def dumps(value: Any) -> str:
    """Canonical JSON text of a parsed JSON value."""
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        return str(value) if INT_MIN <= value <= INT_MAX else format_float(float(value))
    if isinstance(value, float):
        return format_float(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ",".join(dumps(item) for item in value) + "]"
    if isinstance(value, dict):
        items = sorted(value.items())
        return "{" + ",".join(json.dumps(k, ensure_ascii=False) + ":" + dumps(v) for k, v in items) + "}"
    raise TypeError(f"not a JSON value: {value!r}")


def reference_fingerprint(raw: str | bytes, beta: str | list[str] | None = None, endpoint: str = "messages") -> str:
    """SHA-256 (hex) of the canonical form of the request in the JSON text ``raw``."""
    document: dict[str, Any] = {"anthropic-beta": beta_values(beta), "request": normalise_body(json.loads(raw))}
    if endpoint != "messages":
        document["endpoint"] = endpoint
    return hashlib.sha256(dumps(document).encode("utf-8")).hexdigest()
