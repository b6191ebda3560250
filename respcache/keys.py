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

``request_fingerprint`` hashes the same bytes as ``canonical_json(normalise(...))``, faster:
it serialises each top-level field with orjson and walks (in Python) only a part whose JSON
shows an integral float (``_needs_walk``: ``2.0``, ``1e16``), the messages one by one only when
needed. Most of a large request is text that needs no walk, and the walk was most of the cost
(see the bench). Nesting deeper than ``max_depth`` levels within one message or field (at most
254, what orjson serialises) is ``TooDeep``, and so bounds every walk and recursion here.
- ``endpoint``: a request to another endpoint than ``/v1/messages`` (``count_tokens``) hashes
  its name too, so the same body never shares an entry across endpoints.

The fingerprint is SHA-256 over the canonical JSON; ``entry_key`` namespaces it by workload,
upstream kind and key version, so a version bump makes every older entry unreachable at once and
the simulated upstream's answers are never served as the real upstream's (nor the reverse).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from typing import Any

import orjson

EXCLUDED_FIELDS = frozenset({"stream", "metadata", "service_tier", "cache_control"})
DEFAULT_MAX_DEPTH = 254  # what orjson serialises
# The integers orjson writes (and reads: larger JSON integers arrive as floats).
_INT_MIN, _INT_MAX = -(2**63), 2**64 - 1


class TooDeep(ValueError):
    """The request nests deeper than the allowed depth."""


def _too_deep(max_depth: int) -> str:
    return f"nesting deeper than {max_depth} levels within a message or field"


def _as_blocks(content: Any, depth: int, max_depth: int) -> Any:
    """``content`` as blocks; ``depth`` is its nesting level within its message or field (the
    message or field itself is level 1), so that nested tool_result content stops at
    ``max_depth`` with TooDeep, as hashing it would, instead of recursing on."""
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if isinstance(content, list):
        # Copy only when a block changes: most blocks of a long conversation do not.
        for block in content:
            if type(block) is dict and ("cache_control" in block or block.get("type") == "tool_result"):
                return [_strip_cache_control(b, depth + 1, max_depth) for b in content]
    return content


def _strip_cache_control(block: Any, depth: int, max_depth: int) -> Any:
    """The block without its cache_control marker (tool_result content as blocks); the
    caller's dict is never changed, and a block that needs nothing is returned as it is.
    ``depth``: the block's nesting level (see _as_blocks)."""
    if type(block) is not dict:
        return block
    if depth > max_depth:
        raise TooDeep(_too_deep(max_depth))
    if "cache_control" in block:
        block = {k: v for k, v in block.items() if k != "cache_control"}
    if block.get("type") == "tool_result" and "content" in block:
        content = block["content"]
        blocks = _as_blocks(content, depth + 1, max_depth)
        if blocks is not content:
            block = {**block, "content": blocks}
    return block


def _drop_excluded(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k not in EXCLUDED_FIELDS}


def _normalise_messages(messages: Any, max_depth: int) -> Any:
    if type(messages) is not list:
        return messages
    out: list[Any] = []
    append = out.append
    for message in messages:  # the hot loop of a long conversation: kept flat on purpose
        if type(message) is dict:
            content = message.get("content")
            if type(content) is str:
                message = {**message, "content": [{"type": "text", "text": content}]}
            elif type(content) is list:
                blocks = _as_blocks(content, 2, max_depth)  # the message is level 1, its content 2
                if blocks is not content:
                    message = {**message, "content": blocks}
        append(message)
    return out


def _canonical_numbers(value: Any, depth: int, max_depth: int) -> Any:
    """Rewrite integral floats as ints, and enforce the nesting limit, in one walk."""
    kind = type(value)
    if kind is dict:
        if depth >= max_depth:
            raise TooDeep(_too_deep(max_depth))
        return {k: _canonical_numbers(v, depth + 1, max_depth) for k, v in value.items()}
    if kind is list:
        if depth >= max_depth:
            raise TooDeep(_too_deep(max_depth))
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


def _structural(body: dict[str, Any], max_depth: int) -> dict[str, Any]:
    """The body with excluded fields dropped, text as blocks, cache_control markers gone."""
    doc = _drop_excluded(body)
    if "system" in doc:
        doc["system"] = _as_blocks(doc["system"], 1, max_depth)
    if "messages" in doc:
        doc["messages"] = _normalise_messages(doc["messages"], max_depth)
    if type(doc.get("tools")) is list:
        doc["tools"] = [_strip_cache_control(tool, 2, max_depth) for tool in doc["tools"]]
    return doc


def normalise(
    body: dict[str, Any],
    *,
    beta: str | Iterable[str] | None = (),
    max_depth: int = DEFAULT_MAX_DEPTH,
    endpoint: str = MESSAGES,
) -> dict[str, Any]:
    """The document whose canonical JSON is hashed: the normalised body and the beta values."""
    doc = _structural(body, max_depth)
    normalised = {
        "anthropic-beta": _beta_values(beta),
        "request": _canonical_numbers(doc, 1, max_depth),
    }
    if endpoint != MESSAGES:
        normalised["endpoint"] = endpoint
    return normalised


def canonical_json(doc: Any) -> bytes:
    try:
        return orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)
    except orjson.JSONEncodeError as exc:
        raise TooDeep(f"request cannot be canonicalised: {exc}") from exc


# An integral float as orjson writes it, followed by what ends a number: "2.0", and, within
# orjson's integer range, "1e+16" … "1.8e+19" (orjson writes 1e16 and up with an exponent).
# Both patterns start with a literal ("+" only follows an exponent's "e" outside strings), so
# re scans for them fast; a string that happens to hold one only costs its part a walk.
_INTEGRAL_FLOAT = re.compile(rb"\.0[,}\]]")
_INTEGRAL_FLOAT_EXP = re.compile(rb"\+1[6-9][,}\]]")
_SORT = orjson.OPT_SORT_KEYS


_DOT = ord(".")
_AFTER_DOT = frozenset((b"0,", b"0}", b"0]"))
#: Dots checked one by one before the regex takes over the rest of a part.
_DOTS_CHECKED = 32


def _needs_walk(data: bytes) -> bool:
    # Most dots in a request's JSON sit in numbers and sentences, and many requests have few:
    # each is a memchr away (bytes.find of one byte), ~4x faster than the regex over a 100 KB
    # part. Prose with many dots gives up after _DOTS_CHECKED and lets the regex scan the rest.
    find = data.find
    i = find(_DOT)
    checked = 0
    while i != -1:
        if checked == _DOTS_CHECKED:
            if _INTEGRAL_FLOAT.search(data, i) is not None:
                return True
            break
        if data[i + 1 : i + 3] in _AFTER_DOT:
            return True
        checked += 1
        i = find(_DOT, i + 1)
    # A one-byte `in` is a memchr too: it rules out the exponent scan in most requests.
    return b"+" in data and _INTEGRAL_FLOAT_EXP.search(data) is not None


def _part(value: Any, max_depth: int = DEFAULT_MAX_DEPTH) -> bytes:
    """Canonical JSON of one part of a request (a message, a field's value)."""
    kind = type(value)
    if kind is float or kind is int:
        return orjson.dumps(_canonical_numbers(value, 0, max_depth))
    if kind is str or kind is bool or value is None:
        return orjson.dumps(value)
    try:
        data = orjson.dumps(value, option=_SORT)
    except orjson.JSONEncodeError:  # too deep, or an integer beyond 64 bits: the walk decides
        return canonical_json(_canonical_numbers(value, 0, max_depth))
    # orjson refuses what nests deeper than DEFAULT_MAX_DEPTH; a lower limit needs the walk for a
    # part with the brackets to break it (max_depth + 1 levels take that many, a string's add some).
    if _needs_walk(data) or (max_depth < DEFAULT_MAX_DEPTH and data.count(b"[") + data.count(b"{") > max_depth):
        data = canonical_json(_canonical_numbers(value, 0, max_depth))
    return data


def _messages_part(messages: Any, max_depth: int = DEFAULT_MAX_DEPTH) -> bytes:
    """The messages in one piece when none holds an integral float, else message by message
    (always, under a limit below orjson's: each message is a part with its own)."""
    if type(messages) is not list:
        return _part(messages, max_depth)
    data = b""
    if max_depth == DEFAULT_MAX_DEPTH:
        try:
            data = orjson.dumps(messages, option=_SORT)
        except orjson.JSONEncodeError:
            pass
    if data and not _needs_walk(data):
        return data
    return b"[" + b",".join([_part(m, max_depth) for m in messages]) + b"]"


def _canonical_request(doc: dict[str, Any], max_depth: int) -> bytes:
    """``canonical_json`` of a structurally normalised request, part by part."""
    out = []
    for name in sorted(doc):
        value = doc[name]
        part = _messages_part(value, max_depth) if name == "messages" else _part(value, max_depth)
        out.append(orjson.dumps(name) + b":" + part)
    return b"{" + b",".join(out) + b"}"


def request_fingerprint(
    body: dict[str, Any],
    *,
    beta: str | Iterable[str] | None = (),
    endpoint: str = MESSAGES,
    max_depth: int = DEFAULT_MAX_DEPTH,
) -> str:
    """SHA-256 (hex) of the canonical JSON of the normalised request to ``endpoint``:
    the bytes of ``canonical_json(normalise(body, beta=beta, endpoint=endpoint))``.

    Raises TooDeep when a message or another field nests deeper than ``max_depth`` levels (the
    message or field itself is level 1), from 1 up to DEFAULT_MAX_DEPTH, what orjson serialises.
    """
    if not 1 <= max_depth <= DEFAULT_MAX_DEPTH:
        raise ValueError(f"max_depth must be from 1 to {DEFAULT_MAX_DEPTH}, not {max_depth}")
    doc = _structural(body, max_depth)
    digest = hashlib.sha256(b'{"anthropic-beta":')
    digest.update(orjson.dumps(_beta_values(beta)))
    if endpoint != MESSAGES:
        digest.update(b',"endpoint":' + orjson.dumps(endpoint))
    digest.update(b',"request":')
    digest.update(_canonical_request(doc, max_depth))
    digest.update(b"}")
    return digest.hexdigest()


# --- per-field fingerprints (the miss explainer) ---------------------------------------------
# What a stored request is compared by when a later one misses: a short hash of each top-level
# field of the same canonical form the key hashes (``_structural`` then ``_part``), and of each
# message by index, so "the closest stored request differs in system" means exactly that the
# canonical bytes of ``system`` differ. Never on the hit path: only a miss computes them.

#: Bytes of each field's BLAKE2b digest (hex doubles it): 2**-64 odds that two different values
#: of one field look equal, plenty for naming which fields differ.
FIELD_DIGEST_BYTES = 8
#: The name of the ``anthropic-beta`` header's values among the fields (they are in the key).
BETA_FIELD = "anthropic-beta"


def _short_hash(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=FIELD_DIGEST_BYTES).hexdigest()


def message_field(index: int) -> str:
    """The field name of the message at ``index``: ``messages[<index>]``."""
    return f"messages[{index}]"


def field_fingerprints(
    body: dict[str, Any],
    *,
    beta: str | Iterable[str] | None = (),
    max_depth: int = DEFAULT_MAX_DEPTH,
) -> dict[str, str]:
    """A short hash (hex) of each field that goes into the key: every top-level field but
    ``messages`` by name, each message as ``messages[i]``, and the beta values (when any) as
    ``anthropic-beta``. Two requests have equal keys (same endpoint) exactly when, up to a hash
    collision, these are equal. Raises TooDeep as ``request_fingerprint`` does."""
    doc = _structural(body, max_depth)
    out: dict[str, str] = {}
    for name in sorted(doc):
        value = doc[name]
        if name == "messages" and type(value) is list:
            for i, message in enumerate(value):
                out[message_field(i)] = _short_hash(_part(message, max_depth))
        else:
            out[name] = _short_hash(_part(value, max_depth))
    betas = _beta_values(beta)
    if betas:
        out[BETA_FIELD] = _short_hash(orjson.dumps(betas))
    return out


def request_shape(body: dict[str, Any], *, endpoint: str = MESSAGES) -> str:
    """What requests must share to be compared by the miss explainer: the endpoint, and the
    number and roles of the messages (not the model, so "differs in model" can be said). A short
    hash, part of the shape index's key name."""
    messages = body.get("messages")
    roles = [m.get("role") if type(m) is dict else None for m in messages] if type(messages) is list else None
    return _short_hash(orjson.dumps([endpoint, roles]))


# --- Redis key and channel names --------------------------------------------------------------
# Every name respcache gives a Redis key or channel is built here, raw: the store puts each
# under the cache alias's own "prefix:version:" (Django's default key function). A workload
# slug holds no ":" and no glob character (a SlugField), so "<kind>:<slug>:" never matches
# another workload's names, even one whose slug starts with this one's.
#
# Redis Cluster puts a key in the slot of its hash tag (the text between the first "{" and the
# next "}"). Every name of one entry carries the same tag, ``{<g>}``, where g is the first
# three hex digits of its fingerprint (``group``: 4,096 groups): a script or a wake-up touches
# one slot, and a workload's entries spread over every shard instead of pinning one.
#
#   respcache:v:<slug>                              the workload's key version (one Redis)
#   respcache:v:<slug>:{<g>}                        its copy for one group (a cluster: the
#                                                   lookup reads it in the entry's own slot)
#   respcache:e:<slug>:<version>:{<g>}:<fingerprint>  an entry (the record)
#   respcache:m:<slug>:<version>:{<g>}:<fingerprint>  its accounting hash (same TTL)
#   respcache:n:<slug>:<version>:{<g>}:<fingerprint>  its notes: request fields, summary
#   respcache:l:<slug>:<version>:{<g>}:<fingerprint>  its stampede lock
#   respcache:c:<slug>:<version>:{<g>}:<fingerprint>  the channel that wakes its waiters
#   respcache:f:<slug>:<version>:{<g>}:<fingerprint>  its lock holder's failure, for a few seconds
#   respcache:x:<slug>:<version>:<shape>        recent requests of one shape (the miss explainer)
#   respcache:policies                          the channel that says "policies changed"
#   respcache:s:<slug>:m:<start> / :h:<start>   a minute / hour counter bucket
#   respcache:s:<slug>:total                    the all-time counters
#   respcache:b:{<slug>}:m:<start> / :d:<start> budget: upstream calls of a UTC minute / tokens
#                                               of a UTC day (expire when the window ends;
#                                               one tag, as one script reads both)
#
# Those are the names of the anthropic upstream's key space. The simulated upstream's entries
# (and their meta, lock, channel and failure names) carry its kind after the slug,
# "respcache:e:<slug>:simulated:<version>:{<g>}:<fingerprint>", so neither upstream's answers
# are ever served as the other's; a version never reads "simulated", and a slug holds no ":",
# so no name of one key space matches a pattern of the other's. Key versions and counters are
# the workload's, shared by both.
#
# The lookup script appends "<version>:" and the entry's tail (``entry_tail``: "{<g>}:<fp>")
# to ``entry_prefix`` and ``meta_prefix`` itself (the version is resolved inside Redis):
# ``entry_prefix(w, u) + f"{v}:" + entry_tail(fp)`` is ``entry_key(workload=w, version=v,
# fingerprint=fp, upstream=u)``, and tests hold it so.

#: Hex digits of the fingerprint in an entry's hash tag: 16**3 = 4,096 groups per workload.
GROUP_DIGITS = 3


def group(fingerprint: str) -> str:
    """The entry's group: what its hash tag holds (the fingerprint's first hex digits)."""
    return fingerprint[:GROUP_DIGITS]


def groups() -> list[str]:
    """Every group, in order (a bump raises the key version copy of each on a cluster)."""
    return [f"{i:0{GROUP_DIGITS}x}" for i in range(16**GROUP_DIGITS)]


def entry_tail(fingerprint: str) -> str:
    """What follows "<version>:" in every name of one entry: its hash tag and fingerprint."""
    return f"{{{group(fingerprint)}}}:{fingerprint}"


_ENTRY, _META, _LOCK, _CHANNEL = "respcache:e:", "respcache:m:", "respcache:l:", "respcache:c:"
_FAILURE = "respcache:f:"
_NOTES = "respcache:n:"
#: The bucket kind in a counter bucket's name, by bucket width in seconds.
_BUCKET_KINDS = {60: "m", 3600: "h"}

#: The upstream kinds (``RESPCACHE_UPSTREAM``), each answering in its own key space.
ANTHROPIC, SIMULATED = "anthropic", "simulated"
UPSTREAM_KINDS = (ANTHROPIC, SIMULATED)
#: What follows the slug in an upstream kind's names: nothing for anthropic, whose names are
#: those every entry had before the simulated upstream got a key space of its own.
_KEY_SPACES = {ANTHROPIC: "", SIMULATED: f"{SIMULATED}:"}


def _space(workload: str, upstream: str) -> str:
    """``<slug>:`` and the upstream kind's segment: where the names of its entries start."""
    try:
        return f"{workload}:{_KEY_SPACES[upstream]}"
    except KeyError:
        raise ValueError(f"unknown upstream kind {upstream!r}") from None


def version_key(workload: str, group_: str | None = None) -> str:
    """The workload's current key version, as Redis holds it (a bump raises it); with a
    ``group_``, that group's copy (a cluster keeps one per group, in the group's slot)."""
    if group_ is None:
        return f"respcache:v:{workload}"
    return f"respcache:v:{workload}:{{{group_}}}"


def entry_key(*, workload: str, version: int, fingerprint: str, upstream: str = ANTHROPIC) -> str:
    return f"{_ENTRY}{_space(workload, upstream)}{version}:{entry_tail(fingerprint)}"


def entry_prefix(workload: str, upstream: str = ANTHROPIC) -> str:
    """What every entry key of ``workload`` in ``upstream``'s key space starts with (any version)."""
    return f"{_ENTRY}{_space(workload, upstream)}"


def _pattern(kind: str, workload: str, version: int | None, upstream: str) -> str:
    if version is None:  # "*" spans the upstream kind's segment too
        return f"{kind}{workload}:*:*"
    return f"{kind}{_space(workload, upstream)}{version}:*"


def entry_pattern(*, workload: str, version: int | None = None, upstream: str = ANTHROPIC) -> str:
    """Glob matching a workload's entries: of one key version in ``upstream``'s key space, or,
    without a version, of every version in every key space (what a purge deletes)."""
    return _pattern(_ENTRY, workload, version, upstream)


def meta_key(key: str) -> str:
    """Read counter and accounting of one entry, kept beside it with the same TTL."""
    return _META + key.removeprefix(_ENTRY)


def meta_prefix(workload: str, upstream: str = ANTHROPIC) -> str:
    """What every meta key of ``workload`` in ``upstream``'s key space starts with (any version)."""
    return f"{_META}{_space(workload, upstream)}"


def meta_pattern(*, workload: str, version: int | None = None, upstream: str = ANTHROPIC) -> str:
    """Glob matching the meta hashes of a workload's entries, as ``entry_pattern`` matches them."""
    return _pattern(_META, workload, version, upstream)


def notes_key(key: str) -> str:
    """What the entry says for people and the miss explainer (its request's per-field fingerprint
    and its summary), beside it with the same TTL; never read by the hit path. A string of its
    own, not fields of the meta hash: values that long would turn Redis's compact encoding of
    every meta hash into a full hash table (about 1 KB more per entry, measured)."""
    return _NOTES + key.removeprefix(_ENTRY)


def notes_pattern(*, workload: str) -> str:
    """Glob matching the notes of every entry of a workload (all versions and key spaces)."""
    return _pattern(_NOTES, workload, None, ANTHROPIC)


def lock_key(key: str) -> str:
    return _LOCK + key.removeprefix(_ENTRY)


def channel_name(key: str) -> str:
    return _CHANNEL + key.removeprefix(_ENTRY)


def failure_key(key: str) -> str:
    """Where a lock holder's upstream failure waits a few seconds for waiters that missed it."""
    return _FAILURE + key.removeprefix(_ENTRY)


def policies_channel() -> str:
    """The channel on which a policy change, a bump or a key revocation is announced to every
    process, so each drops its local copies at once."""
    return "respcache:policies"


def bucket_key(*, workload: str, width_seconds: int, start: int) -> str:
    """The counter bucket of ``workload`` that is ``width_seconds`` wide (60 or 3600) and
    starts at ``start`` (Unix seconds)."""
    try:
        kind = _BUCKET_KINDS[width_seconds]
    except KeyError:
        raise ValueError(f"no counter bucket is {width_seconds} s wide") from None
    return f"respcache:s:{workload}:{kind}:{start}"


def totals_key(workload: str) -> str:
    """The workload's all-time counters; never expire."""
    return f"respcache:s:{workload}:total"


#: The budget window kinds in a budget counter's name, by window width in seconds.
_BUDGET_KINDS = {60: "m", 86400: "d"}


def budget_key(*, workload: str, width_seconds: int, start: int) -> str:
    """The budget counter of ``workload`` for the window ``width_seconds`` wide (60: upstream
    calls of a minute, 86400: upstream tokens of a day) that starts at ``start`` (Unix seconds)."""
    try:
        kind = _BUDGET_KINDS[width_seconds]
    except KeyError:
        raise ValueError(f"no budget window is {width_seconds} s wide") from None
    return f"respcache:b:{{{workload}}}:{kind}:{start}"


_SHAPES = "respcache:x:"


def shape_index_key(*, workload: str, version: int, shape: str, upstream: str = ANTHROPIC) -> str:
    """The bounded list of the field fingerprints of recent entries of one request shape
    (``request_shape``) at one key version: where the miss explainer finds candidates."""
    return f"{_SHAPES}{_space(workload, upstream)}{version}:{shape}"


def shape_index_pattern(*, workload: str) -> str:
    """Glob matching every shape index of a workload (all versions and key spaces): purged with it."""
    return _pattern(_SHAPES, workload, None, ANTHROPIC)
