"""The entry record codec, without Redis: layout, compression, what reads as a miss, and the
message that hands a record to the waiters."""

from __future__ import annotations

import ast
import inspect
import random
import zlib
from collections.abc import Iterator
from typing import Any

import lz4.block
import orjson
import pytest
from django.test import override_settings
from hypothesis import given
from hypothesis import strategies as st
from redis.connection import AbstractConnection

from respcache.conf import app_settings
from respcache.store import records
from respcache.store.records import (
    FLAG_LZ4,
    FLAG_ZLIB,
    MAX_DECODED_BYTES,
    PUBLISH_RECORD_MAX_BYTES,
    Entry,
    decode_record,
    encode_record,
    ok_message,
    record_of,
)

READABLE = b"RC\x01\x00" + b'{"stored_at":1}\n{}'  # a plain record, as encode_record writes one


@pytest.fixture(autouse=True)
def redis_db(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Replaces conftest's flushed test database: here no Redis connection may even be opened."""

    def refuse(self: AbstractConnection) -> None:
        raise AssertionError("the record codec opened a Redis connection")

    monkeypatch.setattr(AbstractConnection, "connect", refuse)
    yield


def compressor(name: str) -> Any:
    return override_settings(RESPCACHE={"COMPRESSOR": name})


def payload_of(message: bytes, *, stored_at: float, model: str) -> bytes:
    """What a record carries after its header (before compression), as the format says."""
    return orjson.dumps({"stored_at": stored_at, "model": model}) + b"\n" + message


def compressible(size: int) -> bytes:
    """A message whose payload (stored_at=1.0, model "m") is exactly ``size`` bytes."""
    filler = size - len(payload_of(b"", stored_at=1.0, model="m"))
    return b"a" * filler


def test_the_codec_imports_nothing_of_redis() -> None:
    tree = ast.parse(inspect.getsource(records))
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert not {name for name in imported if "redis" in name or name.startswith("respcache.store")}


def test_a_small_record_is_the_header_and_the_plain_payload() -> None:
    message = b'{"type":"message","content":[]}'
    raw = encode_record(message, stored_at=123.5, model="claude")
    assert raw == b"RC\x01\x00" + payload_of(message, stored_at=123.5, model="claude")
    assert decode_record(raw) == Entry(message=message, stored_at=123.5, model="claude")


def test_compression_starts_at_the_minimum_size() -> None:
    min_bytes = app_settings.COMPRESS_MIN_BYTES
    below = encode_record(compressible(min_bytes - 1), stored_at=1.0, model="m")
    at = encode_record(compressible(min_bytes), stored_at=1.0, model="m")
    assert below[3] == 0 and len(below) == 4 + min_bytes - 1
    assert at[3] == FLAG_LZ4 and len(at) < min_bytes / 4


def test_lz4_record_is_a_block_with_its_size() -> None:
    message = compressible(5000)
    raw = encode_record(message, stored_at=1.0, model="m")
    assert raw[:4] == bytes((ord("R"), ord("C"), 1, FLAG_LZ4))
    assert int.from_bytes(raw[4:8], "little") == 5000
    assert lz4.block.decompress(raw[4:]) == payload_of(message, stored_at=1.0, model="m")
    assert decode_record(raw) == Entry(message=message, stored_at=1.0, model="m")


def test_zlib_record_uses_the_configured_level_and_both_codecs_stay_readable() -> None:
    message = compressible(5000)
    lz4_record = encode_record(message, stored_at=1.0, model="m")
    with override_settings(RESPCACHE={"COMPRESSOR": "zlib", "COMPRESS_LEVEL": 1}):
        zlib_record = encode_record(message, stored_at=2.0, model="m")
        assert decode_record(lz4_record) == Entry(message=message, stored_at=1.0, model="m")
    payload = payload_of(message, stored_at=2.0, model="m")
    assert zlib_record == b"RC\x01" + bytes((FLAG_ZLIB,)) + zlib.compress(payload, 1)
    assert decode_record(zlib_record) == Entry(message=message, stored_at=2.0, model="m")


def test_a_record_compression_would_not_shrink_is_stored_plain() -> None:
    message = random.Random(0).randbytes(2048)  # LZ4 has no entropy coding: noise does not shrink
    raw = encode_record(message, stored_at=1.0, model="m")
    assert len(lz4.block.compress(raw[4:], store_size=True)) >= len(raw) - 4  # the premise
    assert raw[3] == 0
    assert decode_record(raw) == Entry(message=message, stored_at=1.0, model="m")


def test_a_record_without_a_model_reads_with_an_empty_one() -> None:
    assert decode_record(b"RC\x01\x00" + b'{"stored_at":5}\n{}') == Entry(message=b"{}", stored_at=5.0, model="")


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(None, id="missing"),
        pytest.param(b"", id="empty"),
        pytest.param(b"RC", id="header cut short"),
        pytest.param(b"RC\x01", id="flags missing"),
        pytest.param(b"RC\x02\x00" + b'{"stored_at":1}\n{}', id="newer schema"),
        pytest.param(b"RC\x00\x00" + b'{"stored_at":1}\n{}', id="older schema"),
        pytest.param(b"rc\x01\x00" + b'{"stored_at":1}\n{}', id="foreign magic"),
        pytest.param(b"\x80\x04\x95" + b"pickle", id="a pickle"),
        pytest.param(b'{"stored_at":1}\n{}', id="no header"),
        pytest.param(b"RC\x01\x00" + b"no newline", id="no separator"),
        pytest.param(b"RC\x01\x00" + b'{"nope":1}\n{}', id="no stored_at"),
        pytest.param(b"RC\x01\x00" + b'{"stored_at":"soon"}\n{}', id="stored_at not a number"),
        pytest.param(b"RC\x01\x00" + b"[1]\n{}", id="meta not an object"),
        pytest.param(b"RC\x01\x00" + b"{oops\n{}", id="meta not JSON"),
        pytest.param(b"RC\x01\x01" + b"not zlib", id="damaged zlib"),
        pytest.param(b"RC\x01\x01" + zlib.compress(b'{"stored_at":1}'), id="zlib without separator"),
        pytest.param(b"RC\x01\x02" + b"not lz4 at all", id="damaged lz4"),
        pytest.param(b"RC\x01\x02" + b"\x01", id="lz4 size cut short"),
        pytest.param(b"RC\x01\x02" + b"\xff\xff\xff\x7f" + b"declares 2 GiB", id="absurd lz4 size"),
        pytest.param(b"RC\x01\x02" + lz4.block.compress(b"[1]\n{}"), id="lz4 of bad meta"),
    ],
)
def test_unreadable_records_are_misses_not_crashes(raw: bytes | None) -> None:
    assert decode_record(raw) is None


def test_an_absurd_lz4_size_is_refused_before_decompressing(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args: Any, **kwargs: Any) -> bytes:
        raise MemoryError("decompressed a damaged size")

    at_limit = b"RC\x01\x02" + MAX_DECODED_BYTES.to_bytes(4, "little") + b"x" * 8
    over = b"RC\x01\x02" + (MAX_DECODED_BYTES + 1).to_bytes(4, "little") + b"x" * 8
    monkeypatch.setattr(records.lz4.block, "decompress", boom)
    assert decode_record(over) is None
    with pytest.raises(MemoryError):  # the guard is the size, not a blanket catch
        decode_record(at_limit)


@given(
    message=st.binary(max_size=4000),
    stored_at=st.floats(min_value=0, max_value=4e9, allow_nan=False),
    model=st.text(max_size=40),
    codec=st.sampled_from(["lz4", "zlib"]),
)
def test_every_record_round_trips(message: bytes, stored_at: float, model: str, codec: str) -> None:
    with compressor(codec):
        raw = encode_record(message, stored_at=stored_at, model=model)
    assert decode_record(raw) == Entry(message=message, stored_at=stored_at, model=model)


# --- the message that wakes the waiters -------------------------------------------------------


def test_ok_message_carries_a_record_up_to_the_cap() -> None:
    record = encode_record(b'{"type":"message"}', stored_at=3.0, model="m")
    assert ok_message(record) == b"ok" + record
    assert record_of(ok_message(record)) == Entry(message=b'{"type":"message"}', stored_at=3.0, model="m")
    at_cap = b"x" * PUBLISH_RECORD_MAX_BYTES
    assert ok_message(at_cap) == b"ok" + at_cap
    assert ok_message(at_cap + b"x") == b"ok"


def test_a_record_over_the_cap_is_announced_bare() -> None:
    """The waiters then read the entry back: a bare ``ok`` hands them nothing."""
    big = encode_record(random.Random(1).randbytes(PUBLISH_RECORD_MAX_BYTES), stored_at=1.0, model="m")
    assert len(big) > PUBLISH_RECORD_MAX_BYTES
    assert ok_message(big) == b"ok"
    assert record_of(ok_message(big)) is None


@pytest.mark.parametrize(
    "message",
    [
        b"ok",
        b"",
        b"o",
        b"abandoned",
        b'error:{"type":"api_error"}',
        b"okgarbage",
        b"ok" + READABLE[:-3],
        b"OK" + READABLE,
        b"no" + READABLE,
    ],
)
def test_record_of_anything_but_ok_with_a_readable_record_is_none(message: bytes) -> None:
    assert record_of(b"ok" + READABLE) == Entry(message=b"{}", stored_at=1.0)  # the premise
    assert record_of(message) is None
