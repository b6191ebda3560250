"""Request fingerprints and Redis key names. Pure functions: no Django, no Redis, no I/O.

What makes two requests "the same" (CONTRACT.md), one named function a rule:

- ``_drop_excluded``: ``stream``, ``metadata``, ``service_tier`` and the top-level
  ``cache_control`` are left out; every other field is in, unknown ones included.
- ``_as_blocks``: a string ``system``, message ``content`` or ``tool_result`` content equals the
  same text as a single text block.
- ``_strip_cache_control``: ``cache_control`` markers on system blocks, content blocks (nested
  tool_result blocks too) and tool definitions are left out. Only there: a tool's
  ``input_schema`` or a ``tool_use`` input may legitimately hold a field of that name.
- ``_canonical_numbers``: a float with an integral value is written as an integer (``0`` ≡
  ``0.0``, ``1e2`` ≡ ``100``); other floats in their shortest round-trip form; an integer beyond
  64 bits as the float JSON parsers read it as.
- ``_beta_values``: the ``anthropic-beta`` header's comma-separated values, trimmed and sorted.
- ``canonical_json``: sorted keys, no insignificant white space (orjson).
- ``endpoint``: a request to another endpoint than ``/v1/messages`` (``count_tokens``) hashes
  its name too, so the same body never shares an entry across endpoints.

The fingerprint is SHA-256 over the canonical JSON; ``entry_key`` namespaces it by workload and
key version, so a version bump makes every older entry unreachable at once.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any

import orjson

EXCLUDED_FIELDS = frozenset({"stream", "metadata", "service_tier", "cache_control"})
DEFAULT_MAX_DEPTH = 64
# The integers orjson writes (and reads: larger JSON integers arrive as floats).
_INT_MIN, _INT_MAX = -(2**63), 2**64 - 1


class TooDeep(ValueError):
    """The request nests deeper than the allowed depth."""


def _as_blocks(content: Any) -> Any:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if isinstance(content, list):
        return [_strip_cache_control(block) for block in content]
    return content


def _strip_cache_control(block: Any) -> Any:
    if not isinstance(block, dict):
        return block
    out = {k: v for k, v in block.items() if k != "cache_control"}
    if out.get("type") == "tool_result" and "content" in out:
        out["content"] = _as_blocks(out["content"])
    return out


def _drop_excluded(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k not in EXCLUDED_FIELDS}


def _normalise_messages(messages: Any) -> Any:
    if not isinstance(messages, list):
        return messages
    out = []
    for message in messages:
        if isinstance(message, dict) and "content" in message:
            message = {**message, "content": _as_blocks(message["content"])}
        out.append(message)
    return out


def _canonical_numbers(value: Any, depth: int, max_depth: int) -> Any:
    """Rewrite integral floats as ints, and enforce the nesting limit, in one walk."""
    kind = type(value)
    if kind is dict:
        if depth >= max_depth:
            raise TooDeep(f"request nests deeper than {max_depth} levels")
        return {k: _canonical_numbers(v, depth + 1, max_depth) for k, v in value.items()}
    if kind is list:
        if depth >= max_depth:
            raise TooDeep(f"request nests deeper than {max_depth} levels")
        return [_canonical_numbers(v, depth + 1, max_depth) for v in value]
    if kind is float and value.is_integer() and _INT_MIN <= value <= _INT_MAX:
        return int(value)  # exact: an integral float converts to the very same integer
    if kind is int and not _INT_MIN <= value <= _INT_MAX:
        return float(value)  # what orjson parses such a JSON number as
    return value


def _beta_values(beta: str | Iterable[str] | None) -> list[str]:
    if not beta:
        return []
    headers = [beta] if isinstance(beta, str) else list(beta)
    values = {v.strip() for header in headers for v in header.split(",")}
    return sorted(v for v in values if v)


#: The endpoint whose requests hash without an ``endpoint`` field (keys made before there were
#: others stay valid).
MESSAGES = "messages"
COUNT_TOKENS = "count_tokens"


def normalise(
    body: dict[str, Any],
    *,
    beta: str | Iterable[str] | None = (),
    max_depth: int = DEFAULT_MAX_DEPTH,
    endpoint: str = MESSAGES,
) -> dict[str, Any]:
    """The document whose canonical JSON is hashed: the normalised body and the beta values."""
    doc = _drop_excluded(body)
    if "system" in doc:
        doc["system"] = _as_blocks(doc["system"])
    if "messages" in doc:
        doc["messages"] = _normalise_messages(doc["messages"])
    if isinstance(doc.get("tools"), list):
        doc["tools"] = [_strip_cache_control(tool) for tool in doc["tools"]]
    normalised = {
        "anthropic-beta": _beta_values(beta),
        "request": _canonical_numbers(doc, 1, max_depth),
    }
    if endpoint != MESSAGES:
        normalised["endpoint"] = endpoint
    return normalised


def canonical_json(doc: Any) -> bytes:
    return orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)


def request_fingerprint(
    body: dict[str, Any],
    *,
    beta: str | Iterable[str] | None = (),
    max_depth: int = DEFAULT_MAX_DEPTH,
    endpoint: str = MESSAGES,
) -> str:
    """SHA-256 (hex) of the canonical JSON of the normalised request to ``endpoint``."""
    doc = normalise(body, beta=beta, max_depth=max_depth, endpoint=endpoint)
    return hashlib.sha256(canonical_json(doc)).hexdigest()


def entry_key(*, workload: str, version: int, fingerprint: str) -> str:
    return f"respcache:e:{workload}:{version}:{fingerprint}"


def entry_pattern(*, workload: str, version: int | None = None) -> str:
    """Glob matching a workload's entries (of one key version, or of all)."""
    return f"respcache:e:{workload}:{'*' if version is None else version}:*"


def meta_key(key: str) -> str:
    """Read counter and accounting of one entry, kept beside it with the same TTL."""
    return "respcache:m:" + key.removeprefix("respcache:e:")


def lock_key(key: str) -> str:
    return "respcache:l:" + key.removeprefix("respcache:e:")


def channel_name(key: str) -> str:
    return "respcache:c:" + key.removeprefix("respcache:e:")
