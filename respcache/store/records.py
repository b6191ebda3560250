"""The entry record codec: a Message's bytes behind a small versioned header. Pure: no Redis.

An entry is the upstream's Message JSON, byte for byte, behind a small header::

    b"RC" | schema (1 byte) | flags (1 byte) | payload
    payload = meta JSON | b"\\n" | Message JSON
              (compressed: an LZ4 block with its size when FLAG_LZ4, zlib when FLAG_ZLIB;
              then, with FLAG_AESGCM, sealed: see respcache.sealing)

With ENCRYPTION_KEYS set, the payload is compressed, then encrypted (AES-256-GCM); the header
stays readable (the lookup script checks it) and is authenticated with the payload, with a
label that makes a record's payload useless as any other sealed payload. A record is not bound
to its Redis key: the write hands it to the waiters as it is, and export/import re-encode
records; someone who can write to Redis can swap two encrypted entries (or delete them), but
cannot read or forge one. A record that cannot be decrypted is a miss, logged.

A record with an unknown schema or a damaged payload is a miss, never a crash: an older or
newer release may have written it. The write also publishes the record to the waiters
(``ok_message``), who take it from the message (``record_of``) instead of reading it back.
"""

from __future__ import annotations

import logging
import zlib
from dataclasses import dataclass

import lz4.block
import orjson

from respcache import sealing
from respcache.conf import app_settings

logger = logging.getLogger(__name__)

MAGIC = b"RC"
SCHEMA_VERSION = 1
#: What every record this release can read starts with (the lookup script checks it too).
HEADER = MAGIC + bytes((SCHEMA_VERSION,))
FLAG_ZLIB = 0x01
FLAG_LZ4 = 0x02
#: The payload is sealed (AES-256-GCM, respcache.sealing), after compression.
FLAG_AESGCM = 0x04
#: Authenticated with every sealed record, after its header: a record's payload and no other.
RECORD_PURPOSE = b"respcache entry record"
#: A compressed payload declaring more than this is damaged, not decoded (an LZ4 block names its
#: own size: a flipped bit there must not become a huge allocation).
MAX_DECODED_BYTES = 1 << 30
#: Records up to this size ride in the message that wakes the waiters, so a waiter answers
#: without reading the entry back; a larger one is announced as a bare ``ok`` (read it).
PUBLISH_RECORD_MAX_BYTES = 256 * 1024


@dataclass(frozen=True)
class Entry:
    """A stored answer: the Message bytes as the upstream sent them, and when they were stored."""

    message: bytes
    stored_at: float
    model: str = ""


def _compress(payload: bytes) -> tuple[bytes, int]:
    if app_settings.COMPRESSOR == "zlib":
        return zlib.compress(payload, app_settings.COMPRESS_LEVEL), FLAG_ZLIB
    return lz4.block.compress(payload, store_size=True), FLAG_LZ4


def encode_record(message: bytes, *, stored_at: float, model: str) -> bytes:
    payload = orjson.dumps({"stored_at": stored_at, "model": model}) + b"\n" + message
    flags = 0
    if len(payload) >= app_settings.COMPRESS_MIN_BYTES:
        compressed, flag = _compress(payload)
        if len(compressed) < len(payload):
            payload, flags = compressed, flag
    if sealing.enabled():
        header = MAGIC + bytes((SCHEMA_VERSION, flags | FLAG_AESGCM))
        return header + sealing.seal(payload, header + RECORD_PURPOSE)
    return MAGIC + bytes((SCHEMA_VERSION, flags)) + payload


def decode_record(raw: bytes | None) -> Entry | None:
    """The Entry in ``raw``; None for a missing, foreign, older/newer or damaged record."""
    if not raw or raw[:2] != MAGIC or len(raw) < 4 or raw[2] != SCHEMA_VERSION:
        return None
    payload: bytes | None = raw[4:]
    flags = raw[3]
    if flags & FLAG_AESGCM:
        payload = sealing.open_sealed(raw[4:], raw[:4] + RECORD_PURPOSE)
    elif sealing.plain_refused():
        logger.warning("respcache: a record stored readable is refused (ENCRYPTION_REQUIRED); treated as a miss")
        return None
    if payload is None:
        return None
    try:
        if flags & FLAG_LZ4:
            if len(payload) < 4 or int.from_bytes(payload[:4], "little") > MAX_DECODED_BYTES:
                raise ValueError("damaged LZ4 size")
            payload = lz4.block.decompress(payload)
        elif flags & FLAG_ZLIB:
            payload = zlib.decompress(payload)
        head, sep, message = payload.partition(b"\n")
        if not sep:
            return None
        meta = orjson.loads(head)
        return Entry(message=message, stored_at=float(meta["stored_at"]), model=str(meta.get("model", "")))
    except (zlib.error, lz4.block.LZ4BlockError, orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        logger.warning("respcache: unreadable cache record treated as a miss")
        return None


def ok_message(record: bytes) -> bytes:
    """What the write publishes: ``ok`` followed by the record when it is small enough."""
    return b"ok" + record if len(record) <= PUBLISH_RECORD_MAX_BYTES else b"ok"


def record_of(message: bytes) -> Entry | None:
    """The Entry an ``ok`` message carries; None for a bare ``ok`` (or anything else)."""
    if message[:2] != b"ok" or len(message) <= 2:
        return None
    return decode_record(message[2:])


# --- what an entry keeps beside it for people and the miss explainer ---------------------------
# Small pure codecs, each a pair, so that a wrapper (encryption at rest) can be put around the
# bytes in one place. A value that does not decode is None: the admin shows nothing, the
# explainer skips it.


#: What a summary's seal is bound to: a sealed summary cannot pass for a record, or the reverse.
SUMMARY_PURPOSE = b"respcache entry summary"


def encode_summary(summary: dict[str, str]) -> bytes:
    """An entry's summary (``system``, ``user``, ``answer``: short texts) as stored: it quotes
    the request and the answer, so it is sealed like the record when ENCRYPTION_KEYS are set."""
    return sealing.seal(orjson.dumps(summary), SUMMARY_PURPOSE)


def decode_summary(raw: bytes | None) -> dict[str, str] | None:
    """The summary; None when missing, damaged, or sealed under a key not configured."""
    if not raw:
        return None
    opened = sealing.unseal(raw, SUMMARY_PURPOSE)
    if opened is None:
        return None
    try:
        value = orjson.loads(opened)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(value, dict):
        return None
    return {str(k): str(v) for k, v in value.items() if isinstance(v, str)}


def encode_fields(fields: dict[str, str]) -> bytes:
    """A request's per-field fingerprint (``keys.field_fingerprints``) as stored."""
    return orjson.dumps(fields)


def decode_fields(raw: bytes | None) -> dict[str, str] | None:
    if not raw:
        return None
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        return None
    return {str(k): v for k, v in value.items()}


def encode_notes(fields: bytes, summary: bytes) -> bytes:
    """An entry's notes key: its encoded fields (compact JSON, no newline), a newline, and its
    encoded summary (any bytes: a wrapper may have sealed them)."""
    return fields + b"\n" + summary


def decode_notes(raw: bytes | None) -> tuple[bytes, bytes]:
    """The encoded fields and summary of a notes value (empty when missing)."""
    if not raw:
        return b"", b""
    fields, _sep, summary = raw.partition(b"\n")
    return fields, summary


@dataclass(frozen=True)
class IndexItem:
    """One recent request in a shape index: its key fingerprint, when it was stored, its fields."""

    fingerprint: str
    stored_at: float
    fields: dict[str, str]


def encode_index_item(item: IndexItem) -> bytes:
    return orjson.dumps({"key": item.fingerprint, "at": item.stored_at, "fields": item.fields})


def decode_index_item(raw: bytes) -> IndexItem | None:
    try:
        value = orjson.loads(raw)
        fields = value["fields"]
        if not isinstance(fields, dict):
            return None
        return IndexItem(
            fingerprint=str(value["key"]),
            stored_at=float(value["at"]),
            fields={str(k): str(v) for k, v in fields.items()},
        )
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return None
