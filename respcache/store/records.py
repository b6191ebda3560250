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
