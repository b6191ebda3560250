"""The call endpoints' one body reader: bounded size, bounded complexity, strict JSON (no
NaN/Infinity), raw bytes kept.

Complexity is bounded before anything costs per value: a body holding more than
``MAX_JSON_VALUES`` JSON values is refused before it is parsed (``too_many_values``), orjson
refuses more than 1,024 levels of nesting, and nesting deeper than ``MAX_JSON_DEPTH`` within a
message or field is refused while the key is computed (``keys.TooDeep``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import orjson
from django.http import HttpRequest, UnreadablePostError

from respcache.conf import app_settings
from respcache.exceptions import InvalidRequest, RequestTooLarge

#: The nesting orjson parses (deeper: its "depth limit exceeded" error).
PARSER_MAX_DEPTH = 1024


@dataclass(frozen=True)
class MessageBody:
    """A parsed request body and its bytes (forwarded upstream as they came)."""

    raw: bytes
    data: dict[str, Any]


def too_large() -> RequestTooLarge:
    limit = app_settings.MAX_BODY_BYTES
    return RequestTooLarge(f"Request body exceeds the {limit} byte limit.")


# The value count's skeleton of a body: brackets, commas and quotes stay, white space and colons
# go, every other byte (a scalar's, a string's text) becomes "0".
_SKELETON = bytes(c if c in b'",[]{}' else ord("0") for c in range(256))
_NOT_IN_SKELETON = b" \t\r\n:"
_QUOTED = re.compile(rb'"[^"]*"')
#: Quotes up to which the skeleton's strings are left to _QUOTED alone (a match each: ~0.3 us).
_FEW_QUOTES = 200_000


def _skeleton(raw: bytes) -> bytes:
    """``raw`` reduced to its structure with bytes methods (C speed, a pass or a few): each
    scalar one "0", each string in quotes; with many strings, those without a bracket or comma
    in them are one "0" too."""
    if b"\\" in raw:  # escapes first, as JSON reads them (left to right): "\\", then "\""
        raw = raw.replace(b"\\\\", b"").replace(b'\\"', b"")
    skeleton = raw.translate(_SKELETON, _NOT_IN_SKELETON)
    if skeleton.count(b'"') <= _FEW_QUOTES:
        return skeleton
    while b"0000" in skeleton:  # a run of "0" (a string's text, a number) becomes one
        skeleton = skeleton.replace(b"0000", b"0")
    if b"00" in skeleton:
        skeleton = skeleton.replace(b"00", b"0").replace(b"00", b"0")
    # Two quotes with nothing or a "0" between them are a string, or, with nothing between, the
    # end of one string and the start of the next (a colon apart): replacing them keeps every
    # other quote paired as it was, and the bytes between strings are not structure.
    return skeleton.replace(b'"0"', b"0").replace(b'""', b"0")


def _values_in(skeleton: bytes) -> int:
    """The values of a skeleton, its strings made "0": the top one, one after each comma, and
    the first of each non-empty array or object."""
    count = _QUOTED.sub(b"0", skeleton).count
    return 1 + count(b",") + count(b"[") + count(b"{") - count(b"[]") - count(b"{}")


def json_value_count(raw: bytes) -> int:
    """How many JSON values ``raw`` holds (itself, every array element and member value: not the
    member names), counted on its bytes without parsing it."""
    return _values_in(_skeleton(raw))


def too_many_values(raw: bytes, limit: int) -> bool:
    """Whether ``raw`` holds more than ``limit`` JSON values: exact, and cheap for every body that
    does not (for the bodies callers send, one comparison)."""
    # Every value but the top one takes two bytes at least (its first byte, and a comma or its
    # container's closing bracket), so a body shorter than 2 × limit holds at most limit.
    if len(raw) < 2 * limit:
        return False
    # Counted with the brackets and commas inside strings: too many, never too few.
    if 1 + raw.count(b",") + raw.count(b"[") + raw.count(b"{") <= limit:
        return False
    skeleton = _skeleton(raw)
    # Each pair of quotes left holds a string at least; strings are values or member names, and
    # each name has a value: more than 4 × limit quotes are more than limit values. Fewer bound
    # the regex matches _values_in makes.
    if skeleton.count(b'"') > 4 * limit:
        return True
    return _values_in(skeleton) > limit


def parse_message_body(raw: bytes) -> MessageBody:
    if len(raw) > app_settings.MAX_BODY_BYTES:
        raise too_large()
    if not raw.strip():
        raise InvalidRequest("Request body is empty: expected a JSON object.")
    max_values = app_settings.MAX_JSON_VALUES
    # For the bodies callers send, this comparison is all the value count costs (too_many_values).
    if len(raw) >= 2 * max_values and too_many_values(raw, max_values):
        raise InvalidRequest(f"Request body holds more than {max_values} JSON values (the MAX_JSON_VALUES limit).")
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        if "depth limit" in str(exc) or "ecursion" in str(exc):  # orjson's words, older ones too
            raise InvalidRequest(
                f"Request body nests deeper than {PARSER_MAX_DEPTH} levels, the JSON parser's limit."
            ) from exc
        raise InvalidRequest(f"Request body is not valid JSON (NaN and Infinity are not JSON): {exc}") from exc
    if not isinstance(data, dict):
        raise InvalidRequest("Request body must be a JSON object.")
    return MessageBody(raw=raw, data=data)


def read_message_body(request: HttpRequest) -> MessageBody:
    """The request's body, whatever its content type (curl sends form-encoded by default, SDKs
    JSON): refused (413) past ``MAX_BODY_BYTES``, before reading a byte when its length says so."""
    limit = app_settings.MAX_BODY_BYTES
    try:
        declared = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        declared = 0
    if declared > limit:
        raise too_large()
    # request.read, not request.body: the limit here is MAX_BODY_BYTES, not Django's
    # DATA_UPLOAD_MAX_MEMORY_SIZE (form uploads), and a body that lies about its length
    # is cut at limit + 1 bytes.
    try:
        raw = request.read(limit + 1)
    except (UnreadablePostError, OSError) as exc:  # the client went away mid-body
        raise InvalidRequest(f"Request body could not be read: {exc}") from exc
    return parse_message_body(raw)
