"""The messages endpoint's parser: bounded size, strict JSON (no NaN/Infinity), raw bytes kept."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
from rest_framework.parsers import BaseParser

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


class MessageBodyParser(BaseParser):
    """Accepts any content type: curl sends form-encoded by default, SDKs send JSON."""

    media_type = "*/*"

    def parse(self, stream: Any, media_type: str | None = None, parser_context: Any = None) -> MessageBody:
        limit = app_settings.MAX_BODY_BYTES
        raw = stream.read(limit + 1) if stream is not None else b""
        if len(raw) > limit:
            raise too_large()
        return parse_message_body(raw)
