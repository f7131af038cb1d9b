"""Password hashing (argon2id, rehashed on login when parameters change) and the policy."""

from __future__ import annotations

import re

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

_HASHER = PasswordHasher()  # argon2id with the library's current recommended parameters
# Verified against when the user does not exist, so a missing account costs the same time.
_DUMMY_HASH = _HASHER.hash("gridapi-dummy-password")


def configure(time_cost: int, memory_kib: int) -> None:
    """Set the argon2id cost for new hashes; older hashes are upgraded at the next sign-in."""
    global _HASHER, _DUMMY_HASH
    if (time_cost, memory_kib) != (_HASHER.time_cost, _HASHER.memory_cost):
        _HASHER = PasswordHasher(time_cost=time_cost, memory_cost=memory_kib)
        _DUMMY_HASH = _HASHER.hash("gridapi-dummy-password")


MIN_LENGTH = 10
_COMMON = {
    "password",
    "12345678",
    "123456789",
    "1234567890",
    "qwertyuiop",
    "iloveyou",
    "admin12345",
    "password123",
    "a123456789",
    "1qaz2wsx3edc",
}


def hash_password(password: str) -> str:
    """Return the argon2id hash of ``password``."""
    return _HASHER.hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    """Return whether ``password`` matches; spends the same time when there is no hash."""
    try:
        return _HASHER.verify(password_hash or _DUMMY_HASH, password) and password_hash is not None
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def needs_rehash(password_hash: str) -> bool:
    """Return whether the hash was made with parameters other than the current ones."""
    return _HASHER.check_needs_rehash(password_hash)


def password_problems(password: str, *, username: str = "", phone: str = "") -> list[str]:
    """Return what is wrong with a new password under the policy (empty when it is fine).

    At least 10 characters, at least three of: lower case, upper case, digits, other
    characters; not a common password; not containing the username or the phone number.
    """
    problems = []
    if len(password) < MIN_LENGTH:
        problems.append(f"must have at least {MIN_LENGTH} characters")
    if len(password) > 256:
        problems.append("must have at most 256 characters")
    classes = sum(
        bool(re.search(p, password)) for p in (r"[a-z]", r"[A-Z]", r"[0-9]", r"[^a-zA-Z0-9]")
    )
    if classes < 3:
        problems.append("must mix at least three of: lower case, upper case, digits, symbols")
    lowered = password.lower()
    if lowered in _COMMON:
        problems.append("is too common")
    if username and len(username) >= 3 and username.lower() in lowered:
        problems.append("must not contain the username")
    if phone and phone in password:
        problems.append("must not contain the phone number")
    return problems
