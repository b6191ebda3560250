"""Encryption at rest, the pure codec (Redis refused): sealed records round-trip, keys rotate, and
what cannot be decrypted (tampered, another key, no key) is a miss, never an exception."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from django.test import override_settings
from redis.connection import AbstractConnection

from respcache import sealing
from respcache.store.records import FLAG_AESGCM, HEADER, decode_record, encode_record, ok_message, record_of

A, B = sealing.generate_key(), sealing.generate_key()
MESSAGE = b'{"type":"message","content":[{"type":"text","text":"the secret answer"}]}'


@pytest.fixture(autouse=True)
def redis_db(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    def refuse(self: AbstractConnection) -> None:
        raise AssertionError("the codec opened a Redis connection")

    monkeypatch.setattr(AbstractConnection, "connect", refuse)
    yield


def keys(*texts: str, **more: Any) -> Any:
    return override_settings(RESPCACHE={"ENCRYPTION_KEYS": list(texts), **more})


def test_a_sealed_record_round_trips_and_hides_the_answer() -> None:
    with keys(A):
        raw = encode_record(MESSAGE * 40, stored_at=1.0, model="m")
        assert raw[:3] == HEADER and raw[3] & FLAG_AESGCM
        assert b"secret answer" not in raw and len(raw) < len(MESSAGE * 40)  # compressed, then sealed
        assert decode_record(raw) is not None and decode_record(raw).message == MESSAGE * 40  # type: ignore[union-attr]
        assert record_of(ok_message(raw)).message == MESSAGE * 40  # type: ignore[union-attr]


def test_keys_rotate_and_a_dropped_key_is_a_miss() -> None:
    with keys(A):
        old = encode_record(MESSAGE, stored_at=1.0, model="m")
    with keys(B, A):
        assert decode_record(old) is not None
        new = encode_record(MESSAGE, stored_at=1.0, model="m")
        assert new[6:10] == sealing.key_id(sealing.parse_key(B))
    with keys(B):
        assert decode_record(old) is None and decode_record(new) is not None
    with keys():
        assert decode_record(new) is None


def test_tampering_anywhere_is_a_miss() -> None:
    with keys(A):
        raw = encode_record(MESSAGE, stored_at=1.0, model="m")
        for at in range(3, len(raw)):
            damaged = raw[:at] + bytes((raw[at] ^ 1,)) + raw[at + 1 :]
            assert decode_record(damaged) is None, at


def test_without_keys_records_are_plain_and_required_refuses_them() -> None:
    with keys():
        plain = encode_record(MESSAGE, stored_at=1.0, model="m")
    assert b"secret answer" in plain and not plain[3] & FLAG_AESGCM
    with keys(A):
        assert decode_record(plain) is not None
    with keys(A, ENCRYPTION_REQUIRED=True):
        assert decode_record(plain) is None


def test_seal_binds_its_purpose_and_malformed_keys_are_refused() -> None:
    with keys(A):
        sealed = sealing.seal(b"summary", b"purpose")
        assert sealing.unseal(sealed, b"purpose") == b"summary"
        assert sealing.unseal(sealed, b"other") is None
    with keys("not-a-key"), pytest.raises(Exception, match="ENCRYPTION_KEYS"):
        sealing.keyring()
