"""Access tokens (short-lived JWT, HS256, fixed issuer/audience/key id) and opaque secrets."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
import uuid
from dataclasses import dataclass
from typing import Any

import jwt

ALGORITHM = "HS256"
API_KEY_PREFIX = "gk_"
#: How far the clocks of the servers behind one load balancer may differ: a token issued by
#: one server whose clock runs a second ahead was refused by the others ("not yet valid")
#: until their clocks caught up. Applies to ``nbf``, ``iat`` and ``exp`` alike.
CLOCK_SKEW_SECONDS = 30


class InvalidToken(Exception):
    """The token is malformed, forged, expired or for another audience."""


@dataclass(frozen=True)
class TokenSigner:
    """Signs and verifies access tokens with one key; the key id names that key."""

    key: bytes
    issuer: str
    audience: str
    lifetime_seconds: int

    @property
    def key_id(self) -> str:
        return hashlib.sha256(b"gridapi-kid" + self.key).hexdigest()[:16]

    def issue(self, *, subject: str, claims: dict[str, Any]) -> str:
        """Return a signed access token for ``subject`` with extra ``claims``."""
        now = int(time.time())
        payload = {
            "iss": self.issuer,
            "aud": self.audience,
            "sub": subject,
            "iat": now,
            "nbf": now,
            "exp": now + self.lifetime_seconds,
            "jti": uuid.uuid4().hex,
            **claims,
        }
        return jwt.encode(
            payload, self.key, algorithm=ALGORITHM, headers={"kid": self.key_id, "typ": "JWT"}
        )

    def verify(self, token: str) -> dict[str, Any]:
        """Return the claims of a valid token. Raises InvalidToken for anything else."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise InvalidToken("malformed token") from exc
        if header.get("alg") != ALGORITHM or header.get("kid") != self.key_id:
            raise InvalidToken("unexpected algorithm or key id")
        try:
            return jwt.decode(
                token,
                self.key,
                algorithms=[ALGORITHM],
                audience=self.audience,
                issuer=self.issuer,
                leeway=CLOCK_SKEW_SECONDS,
                options={"require": ["exp", "iat", "nbf", "sub", "iss", "aud"]},
            )
        except jwt.PyJWTError as exc:
            raise InvalidToken(str(exc)) from exc


def new_secret(nbytes: int = 32) -> str:
    """Return a new URL-safe random secret (refresh tokens, API keys)."""
    return secrets.token_urlsafe(nbytes)


def digest(secret: str) -> str:
    """Return the SHA-256 hex digest of a high-entropy secret (refresh token, API key).

    A fast hash is right here: the secrets are random and long, unlike passwords.
    """
    return hashlib.sha256(secret.encode()).hexdigest()


def same_digest(a: str, b: str) -> bool:
    """Compare two digests in constant time."""
    return hmac.compare_digest(a.encode(), b.encode())


def new_api_key() -> tuple[str, str]:
    """Return (full key shown once, its visible prefix)."""
    prefix = secrets.token_hex(4)
    return f"{API_KEY_PREFIX}{prefix}_{new_secret(30)}", prefix


_PREFIX = re.compile(r"[0-9a-f]{8}")


def api_key_prefix(key: str) -> str | None:
    """Return the visible prefix of an API key (8 lower-case hex digits, as ``new_api_key``
    makes them), or None when it is not shaped like one: only such a prefix is looked up
    (a NUL in it reached PostgreSQL, which refuses NUL in text)."""
    if not key.startswith(API_KEY_PREFIX):
        return None
    prefix, _, rest = key[len(API_KEY_PREFIX) :].partition("_")
    return prefix if rest and _PREFIX.fullmatch(prefix) else None


#: How long a device token (``device_token``) is honoured after it was issued.
DEVICE_TOKEN_DAYS = 180
_DEVICE_PREFIX = "gd1"


def _device_mac(key: bytes, body: str) -> str:
    # A key of its own, derived from the signing key: a device token is no access token,
    # and no access token's signature is a device token's.
    device_key = hmac.new(key, b"gridapi-device-token", hashlib.sha256).digest()
    mac = hmac.new(device_key, body.encode(), hashlib.sha256).hexdigest()
    return mac[:32]


def issue_device_token(key: bytes, user_id: int, now: float | None = None) -> str:
    """Return a new device token for the account ``user_id``: proof that a sign-in to that
    account succeeded on the device that keeps it (OWASP's "device cookie"). It signs nothing
    in, and is not an access token; ``device_of`` reads it back."""
    issued = int(time.time() if now is None else now)
    body = f"{_DEVICE_PREFIX}.{user_id}.{issued}.{secrets.token_hex(12)}"
    return f"{body}.{_device_mac(key, body)}"


_DEVICE = re.compile(rf"{_DEVICE_PREFIX}\.([1-9][0-9]{{0,17}})\.([0-9]{{1,12}})\.([0-9a-f]{{24}})")


def device_of(key: bytes, token: str | None, user_id: int, now: float | None = None) -> str | None:
    """Return the device id (the token's random part) of a device token issued for the
    account ``user_id`` within ``DEVICE_TOKEN_DAYS``, or None for anything else: none, a
    forged or altered one, another account's, an expired one."""
    if not token:
        return None
    body, _, mac = token.rpartition(".")
    match = _DEVICE.fullmatch(body)
    if match is None or not hmac.compare_digest(mac.encode(), _device_mac(key, body).encode()):
        return None
    owner, issued, device = int(match[1]), int(match[2]), match[3]
    age = (time.time() if now is None else now) - issued
    if owner != user_id or not -CLOCK_SKEW_SECONDS <= age <= DEVICE_TOKEN_DAYS * 86400:
        return None
    return device
