"""The call endpoints' one body reader: bounded size, strict JSON (no NaN/Infinity), raw bytes kept."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
from django.http import HttpRequest, UnreadablePostError

from respcache.conf import app_settings
from respcache.exceptions import InvalidRequest, RequestTooLarge


@dataclass(frozen=True)
class MessageBody:
    """A parsed request body and its bytes (forwarded upstream as they came)."""

    raw: bytes
    data: dict[str, Any]


def too_large() -> RequestTooLarge:
    limit = app_settings.MAX_BODY_BYTES
    return RequestTooLarge(f"Request body exceeds the {limit} byte limit.")


def parse_message_body(raw: bytes) -> MessageBody:
    if len(raw) > app_settings.MAX_BODY_BYTES:
        raise too_large()
    if not raw.strip():
        raise InvalidRequest("Request body is empty: expected a JSON object.")
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
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
