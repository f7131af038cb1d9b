"""Password hashing (argon2id, rehashed on login when parameters change) and the policy."""

from __future__ import annotations

import functools
import re
import secrets

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

# Common in Chinese password leaks and missing from the English-based list below.
_COMMON_CN = frozenset(
    {
        "woaini1314", "aini1314", "5201314", "1314520", "wodemima", "mima", "nihao",
        "zhongguo", "beijing", "shanghai", "huawei", "xiaomi", "taobao", "weixin",
    }
)  # fmt: skip
# Undo the usual substitutions (p@ssw0rd): "1" is tried as both "i" and "l".
_SUBSTITUTED = {"@": "a", "4": "a", "$": "s", "5": "s", "0": "o", "3": "e", "!": "i", "7": "t"}
_SUBSTITUTIONS = (
    str.maketrans({**_SUBSTITUTED, "1": "i"}),
    str.maketrans({**_SUBSTITUTED, "1": "l"}),
)
_SHIFTED = str.maketrans("!@#$%^&*()", "1234567890")  # the US keyboard's shifted digits
_NOT_LETTERS = "0123456789!@#$%^&*()-_=+[]{};:'\",.<>/?\\|`~ "


@functools.cache
def _common() -> frozenset[str]:
    """The 30,000 most common passwords of zxcvbn's list (from leaked password sets), and a
    few common in China; read once, when the first password is checked."""
    from zxcvbn.frequency_lists import FREQUENCY_LISTS

    return frozenset(FREQUENCY_LISTS["passwords"]) | _COMMON_CN


def is_common(password: str) -> bool:
    """Return whether ``password`` is a common one: itself, without the symbols it ends
    with or holds ("Abc@123456"), or its letters without the digits and symbols around them
    ("Password1!", "Qwerty123!", "Admin@123456"), with the usual substitutions undone
    ("P@ssw0rd123")."""
    lowered = password.lower()
    core = lowered.strip(_NOT_LETTERS)
    # and with the symbols inside taken out ("Abc@123456", "1qaz@WSX3edc", "Pass@word123")
    bare = "".join(ch for ch in lowered if ch.isalnum())
    # and with shifted digits typed unshifted ("1qaz@WSX3edc" is 1qaz2wsx3edc)
    candidates = {lowered, lowered.rstrip(_NOT_LETTERS[10:]), bare, lowered.translate(_SHIFTED)}
    if len(core) >= 4:
        candidates.add(core)
        candidates.update(core.translate(table) for table in _SUBSTITUTIONS)
    return not candidates.isdisjoint(_common())


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
    if is_common(password):
        problems.append("is too common")
    if username and len(username) >= 3 and username.lower() in lowered:
        problems.append("must not contain the username")
    if phone and phone in password:
        problems.append("must not contain the phone number")
    return problems


def random_password() -> str:
    """Return a random password (192 bits) the policy accepts, for an account no person
    signs in to (a tool's own check). ``secrets.token_urlsafe`` alone draws one without a
    digit or a symbol about once in 800, which the policy refuses: drawn again then."""
    while True:
        password = secrets.token_urlsafe(24)
        if not password_problems(password):
            return password
