"""Encryption at rest: ``seal`` and ``unseal`` bytes with AES-256-GCM under the keys of
``RESPCACHE["ENCRYPTION_KEYS"]``. Pure: no Redis.

A key is 32 random bytes written as URL-safe base64 (44 characters; ``manage.py
respcache_genkey`` prints a new one). The first key seals; every key unseals, so keys rotate:
put the new key first, keep the old one after it until what it sealed has expired, then drop it.

A sealed payload names its key by a key id (the first 4 bytes of a SHA-256 of the key: it
reveals nothing of the key), so unsealing picks the key without trying each::

    b"\\xff" | version (1 byte) | key id (4 bytes) | nonce (12 random bytes) | ciphertext | tag (16 bytes)

``associated`` bytes (authenticated, not stored) bind a payload to its purpose: unsealed with
other associated bytes it is refused, as a tampered one is. What cannot be unsealed (another
key, tampered, no keys configured) is None, logged, never an exception.

Without keys, ``seal`` returns its bytes as they are; ``unseal`` reads such plain bytes as
they are (ENCRYPTION_REQUIRED: as None), so payloads written before encryption was turned on
stay readable. Plain payloads must not start with 0xFF (UTF-8 text and JSON never do).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import os
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from django.core.exceptions import ImproperlyConfigured

from respcache.conf import app_settings

logger = logging.getLogger(__name__)

KEY_BYTES = 32
KEY_ID_BYTES = 4
NONCE_BYTES = 12
TAG_BYTES = 16
#: How every sealed payload starts: a byte no UTF-8 text starts with, and the format's version.
SEALED = b"\xff\x01"
#: Bytes a sealed payload has beyond its plaintext.
OVERHEAD = len(SEALED) + KEY_ID_BYTES + NONCE_BYTES + TAG_BYTES
_ID_START = len(SEALED)
_NONCE_START = _ID_START + KEY_ID_BYTES
_BODY_START = _NONCE_START + NONCE_BYTES


def generate_key() -> str:
    """A new key, as ENCRYPTION_KEYS takes it: 32 random bytes in URL-safe base64."""
    return base64.urlsafe_b64encode(os.urandom(KEY_BYTES)).decode()


def parse_key(text: str) -> bytes:
    """The 32 bytes of a key written as URL-safe (or standard) base64; ValueError otherwise."""
    try:
        key = base64.urlsafe_b64decode(text.strip().replace("+", "-").replace("/", "_").encode())
    except (binascii.Error, ValueError) as exc:
        raise ValueError("not base64") from exc
    if len(key) != KEY_BYTES:
        raise ValueError(f"{len(key)} bytes, not {KEY_BYTES}")
    return key


def key_id(key: bytes) -> bytes:
    return hashlib.sha256(b"respcache key id\x00" + key).digest()[:KEY_ID_BYTES]


def configured_keys(setting: Any) -> list[str]:
    """ENCRYPTION_KEYS as a list of key texts: a list, or one comma-separated string."""
    if isinstance(setting, str):
        setting = setting.split(",")
    if not isinstance(setting, list | tuple):
        raise ValueError("ENCRYPTION_KEYS must be a list of keys")
    return [str(text).strip() for text in setting if str(text).strip()]


@dataclass(frozen=True)
class Keyring:
    """The configured keys: the sealing one (the first) and every one by its id."""

    sealing: tuple[bytes, AESGCM] | None = None
    by_id: dict[bytes, AESGCM] = field(default_factory=dict)

    @classmethod
    def of(cls, setting: Any) -> Keyring:
        try:
            texts = configured_keys(setting)
            keys = [parse_key(text) for text in texts]
        except ValueError as exc:
            raise ImproperlyConfigured(
                f"RESPCACHE['ENCRYPTION_KEYS'] is invalid ({exc}): each key is 32 random bytes in URL-safe "
                "base64 (manage.py respcache_genkey prints one)."
            ) from exc
        by_id: dict[bytes, AESGCM] = {}
        for key in keys:
            kid = key_id(key)
            if kid in by_id:
                raise ImproperlyConfigured("RESPCACHE['ENCRYPTION_KEYS'] holds the same key twice.")
            by_id[kid] = AESGCM(key)
        sealing = (key_id(keys[0]), by_id[key_id(keys[0])]) if keys else None
        return cls(sealing=sealing, by_id=by_id)


_loaded: tuple[object, Keyring] = (object(), Keyring())


def keyring() -> Keyring:
    """The keys of the current settings (parsed once per settings object: the hit path pays
    an identity check). ImproperlyConfigured for a malformed key."""
    global _loaded
    setting = app_settings.ENCRYPTION_KEYS
    if _loaded[0] is not setting:
        _loaded = (setting, Keyring.of(setting))
    return _loaded[1]


def enabled() -> bool:
    """Whether ``seal`` encrypts (ENCRYPTION_KEYS holds a key)."""
    return keyring().sealing is not None


def is_sealed(data: bytes) -> bool:
    return data[: len(SEALED)] == SEALED


def seal(data: bytes, associated: bytes = b"") -> bytes:
    """``data`` encrypted with the first key under a fresh random nonce; without keys, ``data``."""
    sealing = keyring().sealing
    if sealing is None:
        return data
    kid, aead = sealing
    nonce = os.urandom(NONCE_BYTES)
    return SEALED + kid + nonce + aead.encrypt(nonce, data, associated)


def open_sealed(data: bytes, associated: bytes = b"") -> bytes | None:
    """The plaintext of a sealed payload; None (logged) when it cannot be unsealed."""
    if not is_sealed(data) or len(data) < OVERHEAD:
        logger.warning("respcache: a sealed payload is damaged; treated as missing")
        return None
    kid = data[_ID_START:_NONCE_START]
    aead = keyring().by_id.get(kid)
    if aead is None:
        logger.warning(
            "respcache: a payload sealed with key id %s, not in ENCRYPTION_KEYS, is treated as missing", kid.hex()
        )
        return None
    try:
        return aead.decrypt(data[_NONCE_START:_BODY_START], data[_BODY_START:], associated)
    except InvalidTag:
        logger.warning("respcache: a sealed payload failed authentication (tampered or misplaced); treated as missing")
        return None


def plain_refused() -> bool:
    """Whether plain (unencrypted) payloads are refused: ENCRYPTION_REQUIRED."""
    return bool(app_settings.ENCRYPTION_REQUIRED)


def unseal(data: bytes, associated: bytes = b"") -> bytes | None:
    """What ``seal`` was given: a sealed payload opened, a plain one as it is (None when
    ENCRYPTION_REQUIRED); None for one that cannot be unsealed."""
    if is_sealed(data):
        return open_sealed(data, associated)
    if plain_refused():
        logger.warning("respcache: a plain payload is refused (ENCRYPTION_REQUIRED); treated as missing")
        return None
    return data
