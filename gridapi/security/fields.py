"""Field-level encryption of personal data (AES-256-GCM) and blind indexes (HMAC-SHA256).

A value is stored as ``v<version>:<base64(nonce || ciphertext || tag)>``: a fresh 96-bit
nonce per encryption, and the table, column and row identity bound in as associated data, so
a ciphertext copied to another row or column, or altered by a single bit, fails to decrypt
instead of yielding someone else's data. Keys come from configuration
(``GRIDAPI_FIELD_KEYS``), never from the database; the version prefix says which key wrote a
value, so keys rotate without downtime (``gridapi keys rotate`` re-encrypts under the newest).

Exact-match search uses a keyed hash under a separate key (``GRIDAPI_BLIND_INDEX_KEY``), so
the database alone is useless to someone testing ID numbers against it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass
from functools import cached_property

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

NONCE_BYTES = 12
KEY_BYTES = 32


class KeyConfigError(ValueError):
    """GRIDAPI_FIELD_KEYS is malformed (the message says how; it never contains a key)."""


class CiphertextError(Exception):
    """A stored value failed to decrypt: tampered, moved to another row, or an unknown key.

    Raised rather than returning anything: the API answers 500 and logs the table, column
    and row, never the value.
    """


def parse_keys(text: str) -> dict[int, bytes]:
    """Return ``{version: key}`` from ``"1:<base64>,2:<base64>"`` (32-byte keys)."""
    keys: dict[int, bytes] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        version_text, sep, encoded = part.partition(":")
        if not sep or not version_text.strip().isdigit():
            raise KeyConfigError("each key must read <version>:<base64 of 32 bytes>")
        version = int(version_text)
        if version < 1 or version in keys:
            raise KeyConfigError(f"key version {version} is not positive or appears twice")
        try:
            key = base64.b64decode(encoded.strip(), validate=True)
        except binascii.Error:
            raise KeyConfigError(f"key version {version} is not valid base64") from None
        if len(key) != KEY_BYTES:
            raise KeyConfigError(f"key version {version} is {len(key)} bytes, not {KEY_BYTES}")
        keys[version] = key
    if not keys:
        raise KeyConfigError("no key given")
    return keys


def new_key_text(version: int) -> str:
    """Return a fresh key in the configuration format, for ``gridapi keys generate``."""
    return f"{version}:{base64.b64encode(secrets.token_bytes(KEY_BYTES)).decode()}"


def _aad(table: str, column: str, row: str) -> bytes:
    # NUL-separated: no table, column or row name can run into the next one.
    return "\x00".join(("gridapi", table, column, row)).encode()


@dataclass(frozen=True)
class FieldCipher:
    """Encrypts and decrypts single values under versioned AES-256-GCM keys."""

    keys: dict[int, bytes]

    @property
    def current_version(self) -> int:
        return max(self.keys)

    @cached_property
    def _aead(self) -> dict[int, AESGCM]:
        # One AESGCM object per key (built once: constructing one costs more than a decrypt).
        return {version: AESGCM(key) for version, key in self.keys.items()}

    def encrypt(self, value: str, *, table: str, column: str, row: str) -> str:
        version = self.current_version
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._aead[version].encrypt(nonce, value.encode(), _aad(table, column, row))
        return f"v{version}:{base64.b64encode(nonce + sealed).decode()}"

    def decrypt(self, stored: str, *, table: str, column: str, row: str) -> str:
        where = f"{table}.{column} of row {row}"
        prefix, sep, body = stored.partition(":")
        if not sep or not prefix.startswith("v") or not prefix[1:].isdigit():
            raise CiphertextError(f"{where} is not a ciphertext")
        aead = self._aead.get(int(prefix[1:]))
        if aead is None:
            raise CiphertextError(
                f"{where} was written under key version {prefix[1:]}, not configured"
            )
        try:
            raw = base64.b64decode(body, validate=True)
            if base64.b64encode(raw).decode() != body:
                # The last character's unused bits: not ours, even if the bytes are.
                raise ValueError("not canonical base64")
            plain = aead.decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], _aad(table, column, row))
        except (binascii.Error, InvalidTag, ValueError):
            raise CiphertextError(f"{where} failed its integrity check") from None
        return plain.decode()

    @staticmethod
    def version_of(stored: str) -> int | None:
        prefix = stored.partition(":")[0]
        return int(prefix[1:]) if prefix.startswith("v") and prefix[1:].isdigit() else None


def blind_index(kind: str, value: str, key: bytes) -> str:
    """Return the keyed hash an exact value of ``kind`` ("id_number", "phone") is found by."""
    return hmac.new(key, kind.encode() + b":" + value.encode(), hashlib.sha256).hexdigest()
