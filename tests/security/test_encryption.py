"""Encryption at rest. The pure codec (Redis refused): sealed records round-trip, keys rotate, and
what cannot be decrypted (tampered, another key, no key) is a miss, never an exception. The service
(the SDK against the live server, real Redis): what Redis holds does not contain the answer, and a
rotation that drops the key of an entry sends its call upstream once and stores it again. The
system checks and respcache_genkey."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from io import StringIO
from typing import Any

import pytest
from django.core.management import call_command
from django.test import override_settings
from django_redis import get_redis_connection
from redis.connection import AbstractConnection

from respcache import checks, sealing, store
from respcache.store.records import FLAG_AESGCM, HEADER, decode_record, encode_record, ok_message, record_of
from tests.conftest import ask

A, B = sealing.generate_key(), sealing.generate_key()
MESSAGE = b'{"type":"message","content":[{"type":"text","text":"the secret answer"}]}'


@pytest.fixture
def no_redis(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The codec opens no Redis connection from the test's thread (other threads, such as the
    policy listener, may reconnect as they please)."""
    tested, connect = threading.get_ident(), AbstractConnection.connect

    def refuse(self: AbstractConnection) -> None:
        if threading.get_ident() == tested:
            raise AssertionError("the codec opened a Redis connection")
        connect(self)

    get_redis_connection("respcache").connection_pool.disconnect(inuse_connections=False)
    monkeypatch.setattr(AbstractConnection, "connect", refuse)
    yield
    monkeypatch.undo()


def keys(*texts: str, **more: Any) -> Any:
    return override_settings(RESPCACHE={"ENCRYPTION_KEYS": list(texts), **more})


def test_a_sealed_record_round_trips_and_hides_the_answer(no_redis: None) -> None:
    with keys(A):
        raw = encode_record(MESSAGE * 40, stored_at=1.0, model="m")
        assert raw[:3] == HEADER and raw[3] & FLAG_AESGCM
        assert b"secret answer" not in raw and len(raw) < len(MESSAGE * 40)  # compressed, then sealed
        assert decode_record(raw) is not None and decode_record(raw).message == MESSAGE * 40  # type: ignore[union-attr]
        assert record_of(ok_message(raw)).message == MESSAGE * 40  # type: ignore[union-attr]


def test_keys_rotate_and_a_dropped_key_is_a_miss(no_redis: None) -> None:
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


def test_tampering_anywhere_is_a_miss(no_redis: None) -> None:
    with keys(A):
        raw = encode_record(MESSAGE, stored_at=1.0, model="m")
        for at in range(3, len(raw)):
            damaged = raw[:at] + bytes((raw[at] ^ 1,)) + raw[at + 1 :]
            assert decode_record(damaged) is None, at


def test_without_keys_records_are_plain_and_required_refuses_them(no_redis: None) -> None:
    with keys():
        plain = encode_record(MESSAGE, stored_at=1.0, model="m")
    assert b"secret answer" in plain and not plain[3] & FLAG_AESGCM
    with keys(A):
        assert decode_record(plain) is not None
    with keys(A, ENCRYPTION_REQUIRED=True):
        assert decode_record(plain) is None


def test_seal_binds_its_purpose_and_malformed_keys_are_refused(no_redis: None) -> None:
    with keys(A):
        sealed = sealing.seal(b"summary", b"purpose")
        assert sealing.unseal(sealed, b"purpose") == b"summary"
        assert sealing.unseal(sealed, b"other") is None
    with keys("not-a-key"), pytest.raises(Exception, match="ENCRYPTION_KEYS"):
        sealing.keyring()


# The service: the SDK against the live server, with real Redis.


def use_keys(settings: Any, *texts: str) -> None:
    """Set ENCRYPTION_KEYS (replacing the dict, so that setting_changed reloads app_settings)."""
    settings.RESPCACHE = {**settings.RESPCACHE, "ENCRYPTION_KEYS": list(texts)}


def call(sdk: Any, text: str) -> tuple[str, str]:
    """The x-respcache outcome and the answer's text of one call."""
    response = sdk().messages.with_raw_response.create(**ask(text))
    return str(response.headers["x-respcache"]), response.parse().content[0].text


def at_rest_quoting(redis_db: Any, text: bytes) -> list[bytes]:
    """Every Redis key whose value (a string, a hash's or a list's items) holds ``text``."""
    found = []
    for key in redis_db.scan_iter(count=1000):
        kind = redis_db.type(key)
        values = {
            b"string": lambda k: [redis_db.get(k)],
            b"hash": lambda k: list(redis_db.hgetall(k).values()),
            b"list": lambda k: redis_db.lrange(k, 0, -1),
        }.get(kind, lambda k: [])(key)
        if any(text in (v or b"") for v in values):
            found.append(key)
    return found


def stored(redis_db: Any) -> bytes:
    (key,) = list(redis_db.scan_iter(match=store.full_key("respcache:e:intents:*")))
    raw: bytes = redis_db.get(key)
    return raw


@pytest.mark.django_db(transaction=True)
def test_the_service_stores_answers_unreadable_and_serves_them(
    sdk: Any, fake: Any, redis_db: Any, settings: Any
) -> None:
    use_keys(settings, A)
    outcome, answer = call(sdk, "the secret plan")
    assert outcome == "miss" and "the secret plan" in answer
    raw = stored(redis_db)
    assert raw[3] & FLAG_AESGCM and answer.encode() not in raw and b"secret plan" not in raw
    assert call(sdk, "the secret plan") == ("hit", answer)
    assert len(fake.message_calls()) == 1
    # Nothing else at rest quotes it either: the entry's summary (its notes key) is sealed too.
    assert at_rest_quoting(redis_db, b"secret plan") == []
    (notes,) = list(redis_db.scan_iter(match=store.full_key("respcache:n:*")))
    summary = store.decode_summary(store.decode_notes(redis_db.get(notes))[1])
    assert summary is not None and "the secret plan" in summary["user"]
    use_keys(settings, B)  # under another key the summary is unreadable, never garbage
    assert store.decode_summary(store.decode_notes(redis_db.get(notes))[1]) is None
    use_keys(settings, A)
    redis_db.flushdb()
    use_keys(settings)  # the control: without keys, the same answer is in Redis as it is
    assert call(sdk, "the secret plan") == ("miss", answer)
    assert answer.encode() in stored(redis_db)


@pytest.mark.django_db(transaction=True)
def test_rotation_serves_old_entries_until_their_key_is_dropped(
    sdk: Any, fake: Any, redis_db: Any, settings: Any
) -> None:
    a_id, b_id = (sealing.key_id(sealing.parse_key(text)) for text in (A, B))
    use_keys(settings, A)
    outcome, answer = call(sdk, "rotate me")
    assert outcome == "miss" and stored(redis_db)[6:10] == a_id
    use_keys(settings, B, A)  # B first: new entries under B, A's still read
    assert call(sdk, "rotate me") == ("hit", answer)
    assert len(fake.message_calls()) == 1
    use_keys(settings, B)  # A dropped: its entry is a miss, upstream once, stored again under B
    assert call(sdk, "rotate me") == ("miss", answer)
    assert len(fake.message_calls()) == 2
    assert stored(redis_db)[6:10] == b_id
    assert call(sdk, "rotate me") == ("hit", answer)
    assert len(fake.message_calls()) == 2


def test_a_malformed_or_repeated_key_is_e010(settings: Any) -> None:
    use_keys(settings, A, B)
    assert checks.check_encryption_keys() == []
    for bad in (["not-a-key"], [A[:-8]], [A, A], "x" * 44):
        settings.RESPCACHE = {**settings.RESPCACHE, "ENCRYPTION_KEYS": bad}
        assert [e.id for e in checks.check_encryption_keys()] == ["respcache.E010"], bad


def test_deploying_without_keys_is_w001(settings: Any) -> None:
    use_keys(settings)
    assert [w.id for w in checks.check_encrypted_at_rest()] == ["respcache.W001"]
    use_keys(settings, A)
    assert checks.check_encrypted_at_rest() == []


def test_genkey_prints_a_new_valid_key(settings: Any) -> None:
    printed = []
    for _ in range(2):
        out = StringIO()
        call_command("respcache_genkey", stdout=out)
        printed.append(out.getvalue())
    assert printed[0] != printed[1]
    for text in printed:
        assert text.endswith("\n") and len(text.strip()) == 44
        assert len(sealing.parse_key(text.strip())) == sealing.KEY_BYTES
    use_keys(settings, printed[0].strip())
    assert checks.check_encryption_keys() == [] and sealing.enabled()
    assert sealing.unseal(sealing.seal(b"round trip")) == b"round trip"
