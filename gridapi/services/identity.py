"""Users, grid rosters, departments, API clients, sign-in and token rotation."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

from sqlalchemy import and_, exists, func, or_, select, update
from sqlalchemy.orm import Session

from .. import clock
from ..codes import subtree_prefix
from ..errors import Conflict, NotFound, Unprocessable
from ..models import ApiClient, Department, Grid, GridAssignment, RefreshToken, Role, User
from ..models.base import utcnow
from ..personal import InvalidValue, mask_phone, parse_phone
from ..scope import Scope
from ..security.fields import blind_index
from ..security.passwords import hash_password, needs_rehash, password_problems, verify_password
from ..security.permissions import CLIENT_SCOPES, ROLE_RANK
from ..security.tokens import digest, new_api_key, new_secret, same_digest
from .regions import get_region
from .uniques import add_or_conflict, conflicts_as

PHONE_RE = re.compile(r"1[3-9][0-9]{9}")


def phone_index(phone: str, key: bytes) -> str:
    """Return the keyed hash (HMAC-SHA256) a phone number is looked up by (the residents'
    register uses the same one)."""
    return blind_index("phone", phone, key)


def _region_or_422(session: Session, code: str, scope: Scope, field_name: str) -> None:
    try:
        get_region(session, code, scope=scope)
    except NotFound:
        raise Unprocessable(
            "Unknown region.", errors={"json": {field_name: [f"no region {code} in your scope"]}}
        ) from None


def _not_found(kind: str) -> NotFound:
    # One message for missing and out-of-scope objects, so the two answer byte for byte alike.
    return NotFound(f"The {kind} does not exist or is outside your scope.")


# --- principals -----------------------------------------------------------------------------


def user_principal(session: Session, user_id: int, token_version: int):  # type: ignore[no-untyped-def]
    """Return the Principal of an active user whose tokens are still current, else None."""
    from ..auth import Principal

    user = session.get(User, user_id)
    if user is None or not user.is_active or user.token_version != token_version:
        return None
    role = session.get(Role, user.role_name)
    return Principal(
        kind="user",
        id=user.id,
        name=user.username,
        role=user.role_name,
        rank=role.rank if role else 0,
        permissions=frozenset(role.permissions if role else ()),
        scope=user_scope(session, user),
        region_code=user.region_code,
    )


class PhoneTaken(Conflict):
    """The phone number is another account's: which tells whether a number has an account
    anywhere, so each such answer counts as an exact lookup of the caller."""


class UsernameTaken(Conflict):
    """The username is another account's, in any case. Usernames are unique across every
    scope, so the answer tells whether an account has the name anywhere, also one the caller
    may not see: each such answer counts as an exact lookup and is audited."""


def user_scope(session: Session, user: User, on: date | None = None) -> Scope:
    """Return the scope of a user: admins everything, else the region or the grids."""
    if user.role_name == "admin" and not user.scope_region_code:
        return Scope.everything()
    if user.scope_region_code:
        return Scope.of_region(user.scope_region_code)
    return Scope.of_grids(current_grids(session, user.id, on))


def assignment_holds_on(day: date):  # type: ignore[no-untyped-def]
    """Return the condition 'the assignment holds on ``day``' (``valid_to`` is the first day
    off), the one place the roster's period semantics are written."""
    return and_(
        GridAssignment.valid_from <= day,
        or_(GridAssignment.valid_to.is_(None), GridAssignment.valid_to > day),
    )


def current_grids(session: Session, user_id: int, on: date | None = None) -> list[str]:
    """Return the codes of the grids a user is assigned to on ``on`` (default today)."""
    day = on or clock.today()
    return list(
        session.scalars(
            select(GridAssignment.grid_code).where(
                GridAssignment.user_id == user_id,
                assignment_holds_on(day),
            )
        )
    )


def client_principal(session: Session, prefix: str, key: str):  # type: ignore[no-untyped-def]
    """Return the Principal of an unrevoked client whose key matches, else None."""
    client = session.scalars(select(ApiClient).where(ApiClient.key_prefix == prefix)).first()
    if (
        client is None
        or client.revoked_at is not None
        or not same_digest(client.key_hash, digest(key))
    ):
        return None
    return principal_of_client(client)


def principal_of_client(client: ApiClient):  # type: ignore[no-untyped-def]
    """Return the Principal an API client acts as (its scopes, area and rate limit)."""
    from ..auth import Principal

    scope = (
        Scope.of_region(client.scope_region_code)
        if client.scope_region_code
        else Scope.everything()
    )
    return Principal(
        kind="client",
        id=client.id,
        name=client.name,
        role=None,
        rank=0,
        permissions=frozenset(client.scopes),
        scope=scope,
        region_code=client.scope_region_code,
        rate_limit=client.rate_limit,
    )


# --- sign-in --------------------------------------------------------------------------------


@dataclass
class IssuedTokens:
    access_token: str
    refresh_token: str
    expires_in: int
    user: User


class LoginFailed(Exception):
    """Wrong username, phone or password, or a disabled account (one message for all).

    ``reason`` says which, for the audit log only (never for the answer): ``unknown_account``,
    ``wrong_password``, ``disabled``, ``account_changed`` (a new password or a disabling
    committed while the password was checked) or ``locked`` (the account's allowance of
    failures spent); ``user_id`` and ``region_code`` are the account named, if any.
    """

    def __init__(
        self, reason: str, user_id: int | None = None, region_code: str | None = None
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.user_id = user_id
        self.region_code = region_code

    @classmethod
    def of(cls, reason: str, user: User | None) -> LoginFailed:
        """Return the failure of a sign-in that named ``user`` (None: no account)."""
        return cls(reason, user.id, user.region_code) if user else cls(reason)


def login_phone(login: str) -> str | None:
    """Return the mobile number a sign-in name is written as (11 digits; spaces, dashes,
    +86 or 0086 as people write it, as the register reads it), or None."""
    try:
        return parse_phone(login)
    except InvalidValue:
        return None


def find_login_user(session: Session, login: str, phone_key: bytes) -> User | None:
    """Return the user a sign-in names, by username or by phone number. A name that is a
    username (``137-0000-2222`` may be one) is the username's; a number written with spaces,
    dashes or +86 is found as its 11 digits (it was an unknown name)."""
    login = login.strip()
    if PHONE_RE.fullmatch(login):
        return session.scalars(
            select(User).where(User.phone_hmac == phone_index(login, phone_key))
        ).first()
    # Usernames are case-insensitive at sign-in (and unique regardless of case).
    user = session.scalars(select(User).where(func.lower(User.username) == login.lower())).first()
    if user is None and (phone := login_phone(login)) is not None:
        user = session.scalars(
            select(User).where(User.phone_hmac == phone_index(phone, phone_key))
        ).first()
    return user


@dataclass(frozen=True)
class CheckedCredentials:
    """An account whose password a sign-in was checked against, and the hash it matched."""

    user_id: int
    password_hash: str
    region_code: str | None = None


def check_credentials(
    session: Session, login_name: str, password: str, *, phone_key: bytes
) -> CheckedCredentials:
    """Return the active account the credentials are right for. Raises LoginFailed.

    Reads only: the caller runs it outside the transaction that writes the tokens (on
    SQLite that one holds the database's one write lock, and the password check is
    argon2's tenth of a second to seconds of CPU by design).
    """
    user = find_login_user(session, login_name, phone_key)
    ok = verify_password(user.password_hash if user else None, password)
    if user is None:
        raise LoginFailed("unknown_account")
    if not user.is_active:
        raise LoginFailed.of("disabled", user)
    if not ok:
        raise LoginFailed.of("wrong_password", user)
    return CheckedCredentials(user.id, user.password_hash, user.region_code)


def locked_account(session: Session, user_id: int | None) -> User | None:
    """Return the account read again under its row lock (PostgreSQL; SQLite writers are
    one at a time), or None: what a concurrent reset, disabling or change committed is
    seen, and one still uncommitted is waited for."""
    return session.scalars(
        select(User)
        .where(User.id == user_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).first()


def login(
    session: Session, checked: CheckedCredentials, password: str, *, signer, refresh_days: int
) -> IssuedTokens:  # type: ignore[no-untyped-def]
    """Issue a token pair for credentials ``check_credentials`` accepted; rehash an outdated
    password hash.

    Raises LoginFailed when the account changed since (a new password, disabled).
    """
    # Read again under the account's lock (PostgreSQL; SQLite writers are one at a time):
    # a reset or a disabling committed while the password was checked had revoked the
    # account's refresh tokens before this one was written, which then outlived it. One
    # still uncommitted is waited for.
    user = locked_account(session, checked.user_id)
    if user is None or user.password_hash != checked.password_hash or not user.is_active:
        raise LoginFailed.of("account_changed", user)
    if needs_rehash(user.password_hash):
        user.password_hash = hash_password(password)
    return _issue(session, user, signer, refresh_days, family=uuid.uuid4().hex)


def _issue(session: Session, user: User, signer, refresh_days: int, family: str) -> IssuedTokens:  # type: ignore[no-untyped-def]
    refresh = new_secret()
    session.add(
        RefreshToken(
            user_id=user.id,
            family_id=family,
            token_hash=digest(refresh),
            expires_at=utcnow() + timedelta(days=refresh_days),
        )
    )
    session.flush()
    # ``sid`` names the sign-in the token belongs to (its refresh family), so that signing
    # out (or a replayed refresh token) ends its access tokens too (``session_live``).
    access = signer.issue(
        subject=str(user.id),
        claims={"ver": user.token_version, "role": user.role_name, "sid": family},
    )
    return IssuedTokens(access, refresh, signer.lifetime_seconds, user)


class RefreshRejected(Exception):
    """The refresh token is unknown, expired, revoked or was used before. ``family_id`` is
    the sign-in a reused token revoked (``reuse``)."""

    def __init__(
        self, reuse: bool = False, user_id: int | None = None, family_id: str | None = None
    ) -> None:
        super().__init__()
        self.reuse = reuse
        self.user_id = user_id
        self.family_id = family_id


def refresh(session: Session, token: str, *, signer, refresh_days: int) -> IssuedTokens:  # type: ignore[no-untyped-def]
    """Rotate a refresh token: mark it used and issue a new pair in the same family.

    A token presented a second time means it was stolen or replayed: its whole family is
    revoked (RefreshRejected with ``reuse``), so neither holder can go on.
    """
    owner = session.scalars(
        select(RefreshToken.user_id).where(RefreshToken.token_hash == digest(token))
    ).first()
    if owner is None:
        raise RefreshRejected
    # The account's lock first, then the token's: the order of a reset, a disabling or a
    # role change (the account, then its tokens). Holding only the token's, a reset waiting
    # on it had begun its revocation before the new token was written, and missed it.
    user = locked_account(session, owner)
    row = session.scalars(
        select(RefreshToken)
        .where(RefreshToken.token_hash == digest(token))
        .with_for_update()
        .execution_options(populate_existing=True)
    ).first()
    if row is None:
        raise RefreshRejected
    now = utcnow()
    if row.used_at is not None or row.revoked_at is not None:
        if row.used_at is not None:
            revoke_family(session, row.family_id)
            raise RefreshRejected(reuse=True, user_id=row.user_id, family_id=row.family_id)
        raise RefreshRejected
    if row.expires_at <= now:
        raise RefreshRejected
    if user is None or not user.is_active:
        raise RefreshRejected
    # Guarded update: of two concurrent uses of one token, only one can mark it used.
    marked = session.execute(
        update(RefreshToken)
        .where(RefreshToken.id == row.id, RefreshToken.used_at.is_(None))
        .values(used_at=now)
    )
    if marked.rowcount != 1:
        revoke_family(session, row.family_id)
        raise RefreshRejected(reuse=True, user_id=row.user_id, family_id=row.family_id)
    return _issue(session, user, signer, refresh_days, family=row.family_id)


def revoke_family(session: Session, family_id: str) -> None:
    """Revoke every token of a refresh family: the sign-in ends, its access tokens with it
    (``session_live``)."""
    session.execute(
        update(RefreshToken)
        .where(RefreshToken.family_id == family_id, RefreshToken.revoked_at.is_(None))
        .values(revoked_at=utcnow())
    )


def logout(session: Session, token: str, user_id: int) -> str | None:
    """Revoke the family of a refresh token the user holds; return the family (the sign-in
    ended), or None when the user holds no such token."""
    row = session.scalars(
        select(RefreshToken).where(
            RefreshToken.token_hash == digest(token), RefreshToken.user_id == user_id
        )
    ).first()
    if row is None:
        return None
    revoke_family(session, row.family_id)
    return row.family_id


def session_live(session: Session, family_id: str) -> bool:
    """Return whether the sign-in ``family_id`` (an access token's ``sid``) still holds a
    refresh token not revoked: false once it was signed out, replayed, or ended by a new
    password, a disabling or a role change (which revoke every refresh token)."""
    return bool(
        session.scalar(
            select(
                exists().where(
                    RefreshToken.family_id == family_id, RefreshToken.revoked_at.is_(None)
                )
            )
        )
    )


def check_password_change(
    session: Session, user_id: int, current: str, new: str, phone_key: bytes | None = None
) -> tuple[CheckedCredentials, str]:
    """Check a user's current password and their new one against the policy; return the
    account as checked and the new password's hash.

    Reads only: the caller runs it outside the transaction that writes the hash (on SQLite
    that one holds the database's one write lock, and argon2 runs twice here). Raises
    Unprocessable for a wrong current password or a weak new one.
    """
    user = session.get(User, user_id)
    if user is None:
        raise _not_found("user")
    if not verify_password(user.password_hash, current):
        raise _wrong_current_password()
    _check_password_policy(user, new, "new_password", phone_key)
    return CheckedCredentials(user.id, user.password_hash), hash_password(new)


def change_password(session: Session, checked: CheckedCredentials, new_hash: str) -> User:
    """Store the hash ``check_password_change`` made; every token issued before stops
    working. Raises Unprocessable when the password changed since it was checked."""
    user = locked_account(session, checked.user_id)
    if user is None:
        raise _not_found("user")
    if user.password_hash != checked.password_hash:  # changed meanwhile: no longer current
        raise _wrong_current_password()
    _store_password_hash(session, user, new_hash)
    return user


def _wrong_current_password() -> Unprocessable:
    return Unprocessable(
        "The current password is wrong.", errors={"json": {"current_password": ["is wrong"]}}
    )


def set_password(
    session: Session,
    user: User,
    new: str,
    field_name: str = "new_password",
    phone_key: bytes | None = None,
    *,
    new_hash: str | None = None,
) -> None:
    """Set a password that passes the policy and end every session of the user.

    Only the phone number's keyed hash is stored, so a number inside the new password is
    found by hashing each 11-digit run (``phone_key`` is the blind-index key). ``new_hash``
    is ``hash_password(new)`` made by the caller before its transaction began (see
    ``create_user``); made here when not given.
    """
    _check_password_policy(user, new, field_name, phone_key)
    _store_password_hash(session, user, new_hash or hash_password(new))


def _check_password_policy(user: User, new: str, field_name: str, phone_key: bytes | None) -> None:
    """Raise Unprocessable (naming ``field_name``) when ``new`` fails the policy."""
    problems = password_problems(new, username=user.username)
    if user.phone_hmac and phone_key:
        runs = {new[i : i + 11] for i in range(len(new) - 10)}
        if any(
            PHONE_RE.fullmatch(r) and phone_index(r, phone_key) == user.phone_hmac for r in runs
        ):
            problems.append("must not contain the phone number")
    if problems:
        raise Unprocessable(
            "The password does not meet the policy.", errors={"json": {field_name: problems}}
        )


def _store_password_hash(session: Session, user: User, password_hash: str) -> None:
    user.password_hash = password_hash
    user.password_changed_at = utcnow()
    user.token_version += 1
    _revoke_refresh_tokens(session, user.id)
    session.flush()


def _revoke_refresh_tokens(session: Session, user_id: int) -> None:
    session.execute(
        update(RefreshToken)
        .where(RefreshToken.user_id == user_id, RefreshToken.revoked_at.is_(None))
        .values(revoked_at=utcnow())
    )


# --- users ----------------------------------------------------------------------------------


def _check_role_grant(session: Session, actor_rank: int | None, role: str) -> Role:
    role_row = session.get(Role, role)
    if role_row is None:
        raise Unprocessable("Unknown role.", errors={"json": {"role": [f"no role {role!r}"]}})
    if actor_rank is not None and actor_rank < ROLE_RANK["admin"] and role_row.rank >= actor_rank:
        raise Unprocessable(
            "You may not give this role.",
            errors={
                "json": {
                    "role": [f"your role may only give roles below its own rank, not {role!r}"]
                }
            },
        )
    return role_row


def _grid_in_service(session: Session, code: str, scope: Scope) -> Grid | None:
    return session.scalars(
        select(Grid).where(
            Grid.code == code,
            Grid.in_service.is_(True),
            scope.grid_condition(Grid.code, Grid.community_code),
        )
    ).first()


def _username_problem(username: str) -> str | None:
    if not re.fullmatch(r"[A-Za-z0-9_.\-]{3,64}", username):
        return "3-64 letters, digits, '_', '.' or '-'"
    if login_phone(username) is not None:  # 13800138000, 138-0013-8000
        return "must not look like a phone number (people sign in by phone too)"
    return None


def _username_taken(session: Session, username: str, user_id: int | None = None) -> bool:
    """Whether another account has ``username``, in any case (the unique index's rule)."""
    others = select(User.id).where(func.lower(User.username) == username.lower())
    if user_id is not None:
        others = others.where(User.id != user_id)
    return session.scalars(others).first() is not None


def rename_user(session: Session, user: User, username: str) -> None:
    """Give ``user`` a new username (another case of its own is one). Raises Unprocessable,
    or Conflict when another account has it in any case. Sessions go on: they name the
    account by id."""
    if (problem := _username_problem(username)) is not None:
        raise Unprocessable("Invalid user.", errors={"json": {"username": [problem]}})

    def taken() -> Conflict | None:
        if _username_taken(session, username, user.id):
            return UsernameTaken(
                f"The username {username!r} is taken.", errors={"json": {"username": ["taken"]}}
            )
        return None

    if (error := taken()) is not None:
        raise error
    with conflicts_as(session, taken):
        user.username = username


def create_user(
    session: Session,
    *,
    scope: Scope,
    actor_rank: int | None,
    username: str,
    password: str,
    role: str,
    display_name: str | None = None,
    phone: str | None = None,
    scope_region: str | None = None,
    grids: list[str] | None = None,
    primary_grid: str | None = None,
    department_id: int | None = None,
    phone_key: bytes,
    password_hash: str | None = None,
) -> User:
    """Create a user inside the caller's scope. Raises Unprocessable or Conflict.

    ``password_hash`` is ``hash_password(password)`` made by the caller before its
    transaction began: argon2 costs a tenth of a second to seconds of CPU by design, and on
    SQLite a writing transaction holds the database's one write lock, which every phone's
    report waits for. Made here when not given (the password is checked either way).
    """
    _check_role_grant(session, actor_rank, role)
    errors: dict[str, list[str]] = {}
    if (problem := _username_problem(username)) is not None:
        errors["username"] = [problem]
    if phone is not None and not PHONE_RE.fullmatch(phone):
        errors["phone"] = ["must be a mainland mobile number (11 digits starting 13-19)"]
    if scope_region and grids:
        errors["grids"] = ["give either scope_region or grids, not both"]
    if role == "admin" and grids:
        # An admin without a region is unrestricted: one on grids alone saw everything (a
        # regional admin made one and so stepped out of its region).
        errors["grids"] = ["an admin's area is a region (scope_region), or none at all"]
    elif role != "admin" and not scope_region and not grids:
        errors["scope_region"] = ["every account but an admin needs a region or grids"]
    elif not scope_region and not grids and not scope.unrestricted:
        errors["scope_region"] = ["an account you create must stay inside your own area"]
    if errors:
        raise Unprocessable("Invalid user.", errors={"json": errors})
    region_code = None
    if scope_region:
        if not scope.covers_region(scope_region):
            raise Unprocessable(
                "Unknown region.",
                errors={"json": {"scope_region": [f"no region {scope_region} in your scope"]}},
            )
        _region_or_422(session, scope_region, scope, "scope_region")
        region_code = scope_region
    grid_rows = []
    for code in grids or []:
        grid = _grid_in_service(session, code, scope)
        if grid is None:
            raise Unprocessable(
                "Unknown grid.", errors={"json": {"grids": [f"no grid {code} in your scope"]}}
            )
        grid_rows.append(grid)
    if grid_rows:
        region_code = (primary_grid or grid_rows[0].code)[:12]
    if primary_grid and primary_grid not in (grids or []):
        raise Unprocessable(
            "Invalid primary grid.", errors={"json": {"primary_grid": ["must be one of grids"]}}
        )
    if department_id is not None:
        dept = session.get(Department, department_id)
        if dept is None or not scope.covers_region(dept.region_code):
            raise Unprocessable(
                "Unknown department.",
                errors={"json": {"department_id": ["no such department in your scope"]}},
            )
    hmac_value = phone_index(phone, phone_key) if phone else None

    def taken() -> Conflict | None:
        if _username_taken(session, username):
            return UsernameTaken(
                f"The username {username!r} is taken.", errors={"json": {"username": ["taken"]}}
            )
        if (
            hmac_value
            and session.scalars(select(User.id).where(User.phone_hmac == hmac_value)).first()
        ):
            return PhoneTaken(
                "The phone number belongs to another account.",
                errors={"json": {"phone": ["another account's"]}},
            )
        return None

    if (error := taken()) is not None:
        raise error
    problems = password_problems(password, username=username, phone=phone or "")
    if problems:
        raise Unprocessable(
            "The password does not meet the policy.", errors={"json": {"password": problems}}
        )
    user = User(
        username=username,
        display_name=display_name or username,
        phone_hmac=hmac_value,
        phone_masked=mask_phone(phone) if phone else None,
        password_hash=password_hash or hash_password(password),
        role_name=role,
        scope_region_code=scope_region,
        region_code=region_code,
        department_id=department_id,
        is_active=True,
        token_version=0,
    )
    # A username or phone number taken by another request between the look-up and the
    # insert: the same answer (a phone number's counted) as when it came first.
    add_or_conflict(session, user, taken)
    for grid in grid_rows:
        session.add(
            GridAssignment(
                user_id=user.id,
                grid_code=grid.code,
                county_code=grid.county_code,
                is_primary=grid.code == (primary_grid or grid_rows[0].code),
                valid_from=clock.today(),
            )
        )
    session.flush()
    return user


def users_query(scope: Scope, *, to_change: bool = False):  # type: ignore[no-untyped-def]
    """Return a select of the users inside ``scope``: living in its regions, or on the
    current roster of one of its grids (a grid named by the scope, or one inside its
    regions: an account from another township put on a grid of this one is read here).

    ``to_change``: the accounts the caller may change: living in its regions, or on the
    roster of a grid its scope names; one living elsewhere is changed where it lives."""
    if scope.unrestricted:
        return select(User)
    condition = scope.region_condition(User.region_code)
    if to_change:
        grids = GridAssignment.grid_code.in_(sorted(scope.grid_codes)) if scope.grid_codes else None
    else:  # a grid code starts with its community's code: the regions' prefixes hold
        grids = scope.grid_condition(GridAssignment.grid_code, GridAssignment.grid_code)
    if grids is not None:
        on_roster = select(GridAssignment.user_id).where(grids, assignment_holds_on(clock.today()))
        condition = or_(condition, User.id.in_(on_roster))
    return select(User).where(condition)


def get_user(session: Session, user_id: int, scope: Scope, *, to_change: bool = False) -> User:
    """Return a user inside the scope (``users_query``). Raises NotFound otherwise."""
    stmt = users_query(scope, to_change=to_change).where(User.id == user_id)
    user = session.scalars(stmt).first()
    if user is None:
        raise _not_found("user")
    return user


def department_regions(session: Session, users: Iterable[User]) -> dict[int, str]:
    """Return the region each department of ``users`` serves, by department id (one query;
    what ``user_view`` decides by)."""
    ids = {user.department_id for user in users if user.department_id is not None}
    if not ids:
        return {}
    rows = session.execute(
        select(Department.id, Department.region_code).where(Department.id.in_(sorted(ids)))
    )
    return {dept_id: region for dept_id, region in rows}


def user_view(user: User, scope: Scope, departments: Mapping[int, str]) -> dict[str, Any]:
    """Return an account as ``scope`` may see it: its region codes (where it lives, the
    region it sees) only where those regions are readable in the scope (``Scope.sees_region``,
    the rule of the regions themselves), else None. An account is read through a grid of
    the caller's roster too, and where it lives elsewhere (another township) the caller,
    who gets 404 for that region, is not told.

    Its ``department_id`` likewise only where the department is readable in the scope (the
    rule of ``get_department``: the region it serves, ``departments[id]``, is readable), else
    None: the id would tell which office of another township or county the account is in.
    """

    def shown(code: str | None) -> str | None:
        return code if code is not None and scope.sees_region(code) else None

    department = user.department_id
    if department is not None and shown(departments.get(department)) is None:
        department = None
    return {
        "id": user.id,
        "username": user.username,
        "display_name": user.display_name,
        "phone_masked": user.phone_masked,
        "role_name": user.role_name,
        "scope_region_code": shown(user.scope_region_code),
        "region_code": shown(user.region_code),
        "department_id": department,
        "is_active": user.is_active,
        "created_at": user.created_at,
    }


def list_users(
    session: Session,
    scope: Scope,
    *,
    role: str | None = None,
    region: str | None = None,
    q: str | None = None,
    after: int | None = None,
    limit: int = 100,
) -> list[User]:
    """Return users inside the scope ordered by id."""
    stmt = users_query(scope)
    if role:
        stmt = stmt.where(User.role_name == role)
    if region:
        stmt = stmt.where(User.region_code.startswith(subtree_prefix(region)))
    if q:
        stmt = stmt.where(
            or_(
                User.username.contains(q, autoescape=True),
                User.display_name.contains(q, autoescape=True),
            )
        )
    if after:
        stmt = stmt.where(User.id > after)
    return list(session.scalars(stmt.order_by(User.id).limit(limit)))


def changeable_user(
    session: Session, user_id: int, *, scope: Scope, actor_rank: int | None
) -> User:
    """Return a user the caller may change: in scope and of a lower rank (admins: any).

    A peer or superior answers like a missing user, and so does an unrestricted admin to a
    restricted caller: one living in the caller's area (the community of the grids it had
    before it was made an admin) had its password reset by a regional admin there, who
    could then sign in as it and see everything. Raises NotFound.
    """
    user = get_user(session, user_id, scope, to_change=True)
    if not scope.unrestricted and user.role_name == "admin" and not user.scope_region_code:
        raise _not_found("user")
    role_row = session.get(Role, user.role_name)
    if (
        actor_rank is not None
        and actor_rank < ROLE_RANK["admin"]
        and role_row
        and role_row.rank >= actor_rank
    ):
        raise _not_found("user")
    return user


def works_beyond(session: Session, user: User, scope: Scope) -> bool:
    """Return whether the account reaches outside ``scope``: a grid on its roster now, the
    region it sees, or the department it is in, outside it."""
    if scope.unrestricted:
        return False
    if user.scope_region_code and not scope.covers_region(user.scope_region_code):
        return True
    if user.department_id is not None:
        served = session.scalar(
            select(Department.region_code).where(Department.id == user.department_id)
        )
        if served and not scope.covers_region(served):
            return True
    today = clock.today()
    grids = session.scalars(
        select(GridAssignment.grid_code).where(
            GridAssignment.user_id == user.id,
            or_(GridAssignment.valid_to.is_(None), GridAssignment.valid_to > today),
        )
    )
    return not all(scope.covers_grid(code) for code in grids)  # not named: out of scope


def check_whole_account(
    session: Session, user: User, scope: Scope, field_name: str, what: str
) -> None:
    """Refuse (422 naming ``field_name``) a change of what gives an account its access (its
    role, name, password, activity, area) to a caller whose scope does not hold all of the
    account's reach (``works_beyond``). A township office reset the password of an account
    that the county had also put on another township's grid, signed in as it and read that
    township's residents. An office over all of it may."""
    if works_beyond(session, user, scope):
        raise Unprocessable(
            "The account works outside your scope.",
            errors={
                "json": {
                    field_name: [
                        "the account works outside your scope (a grid, the region it sees or "
                        f"its department): an office over all of it may change its {what}"
                    ]
                }
            },
        )


def update_user(
    session: Session,
    user_id: int,
    changes: dict[str, Any],
    *,
    scope: Scope,
    actor_rank: int | None,
    actor_id: int | None,
) -> User:
    """Change a user's username, display name, role, activity or scope. Raises NotFound,
    Unprocessable, UsernameTaken."""
    user = changeable_user(session, user_id, scope=scope, actor_rank=actor_rank)
    for field_name, current, what in (
        ("username", user.username, "name"),
        ("role", user.role_name, "role"),
        ("is_active", user.is_active, "activity"),
        ("scope_region", user.scope_region_code, "area"),
    ):
        # A change only: an edit form sends every field, and the same value is no change.
        if field_name in changes and changes[field_name] != current and actor_id != user.id:
            check_whole_account(session, user, scope, field_name, what)
    if "username" in changes and changes["username"] != user.username:
        if actor_id == user.id:
            # As its own role: a stolen token renamed its administrator, who then could not
            # sign in by the name they knew.
            raise Unprocessable(
                "You cannot rename yourself; ask another administrator.",
                errors={"json": {"username": ["not for your own account"]}},
            )
        rename_user(session, user, changes["username"])
    if "role" in changes and actor_id == user.id and changes["role"] != user.role_name:
        # An administrator demoting themselves could leave nobody able to undo it.
        raise Unprocessable(
            "You cannot change your own role; ask another administrator.",
            errors={"json": {"role": ["not for your own account"]}},
        )
    if "role" in changes:
        _check_role_grant(session, actor_rank, changes["role"])
        region_after = changes.get("scope_region", user.scope_region_code)
        if (
            changes["role"] == "admin"
            and not region_after
            and user.role_name != "admin"
            and not (scope.unrestricted and not current_grids(session, user.id))
        ):
            # An admin without a region is unrestricted: a regional admin promoting an
            # account on grids made one that saw everything (an unrestricted admin may
            # make another of an account on no grid).
            raise Unprocessable(
                "An admin's area is a region: give scope_region with the role.",
                errors={"json": {"scope_region": ["required to make this account an admin"]}},
            )
        if changes["role"] != user.role_name:  # the same role again ends no session
            user.role_name = changes["role"]
            user.token_version += 1
            _revoke_refresh_tokens(session, user.id)  # signed in again, under the new role
    if "display_name" in changes:
        user.display_name = changes["display_name"]
    if "is_active" in changes:
        if actor_id == user.id and not changes["is_active"]:
            raise Unprocessable(
                "You cannot disable yourself.",
                errors={"json": {"is_active": ["not for your own account"]}},
            )
        if changes["is_active"] != user.is_active:  # the same again ends no session
            user.is_active = changes["is_active"]
            user.token_version += 1
            if not user.is_active:  # its sessions end and do not come back on re-enabling
                _revoke_refresh_tokens(session, user.id)
    if "scope_region" in changes:
        code = changes["scope_region"]
        if actor_id == user.id and code != user.scope_region_code:
            # As its own role: an unrestricted admin giving itself a region could not undo it.
            raise Unprocessable(
                "You cannot change your own scope; ask another administrator.",
                errors={"json": {"scope_region": ["not for your own account"]}},
            )
        if not scope.covers_region(code):
            raise Unprocessable(
                "Unknown region.",
                errors={"json": {"scope_region": [f"no region {code} in your scope"]}},
            )
        _region_or_422(session, code, scope, "scope_region")
        if code != user.scope_region_code:  # the same scope again ends no session
            user.scope_region_code = code
            user.token_version += 1
            _revoke_refresh_tokens(session, user.id)
        user.region_code = code
    session.flush()
    return user


def assign_grid(
    session: Session,
    user_id: int,
    grid_code: str,
    *,
    scope: Scope,
    actor_rank: int | None = None,
    valid_from: date | None = None,
    is_primary: bool = False,
) -> GridAssignment:
    """Put a user on a grid's roster from ``valid_from`` (default today)."""
    user = changeable_user(session, user_id, scope=scope, actor_rank=actor_rank)
    grid = _grid_in_service(session, grid_code, scope)
    if grid is None:
        raise Unprocessable(
            "Unknown grid.", errors={"json": {"grid": [f"no grid {grid_code} in your scope"]}}
        )
    # Rosters are checked, then written, per account: the account's row is locked first
    # (PostgreSQL; SQLite writers are one at a time already), so that two assignments at
    # once of it to a grid both checked before either was written cannot both be written
    # (twice on one grid, or two primary grids): the second waits, then sees the first.
    user = locked_account(session, user.id)
    assert user is not None  # read in this transaction already
    start = valid_from or clock.today()
    open_rows = session.scalars(
        select(GridAssignment).where(
            GridAssignment.user_id == user.id,
            GridAssignment.grid_code == grid_code,
            or_(GridAssignment.valid_to.is_(None), GridAssignment.valid_to > start),
        )
    ).all()
    if open_rows:
        raise Conflict(f"The user is already on the roster of grid {grid_code}.")
    if is_primary:
        # Only the assignments still open lose the flag: an ended one keeps it, so a past
        # day's roster reads as it was (it was rewritten by every new primary grid).
        session.execute(
            update(GridAssignment)
            .where(
                GridAssignment.user_id == user.id,
                or_(GridAssignment.valid_to.is_(None), GridAssignment.valid_to > start),
            )
            .values(is_primary=False)
        )
    row = GridAssignment(
        user_id=user.id,
        grid_code=grid_code,
        county_code=grid.county_code,
        is_primary=is_primary,
        valid_from=start,
    )
    session.add(row)
    if user.scope_region_code is None:
        user.token_version += 1  # the scope changed
        if user.region_code is None or is_primary:
            user.region_code = grid_code[:12]
    session.flush()
    return row


def end_assignment(
    session: Session,
    user_id: int,
    grid_code: str,
    *,
    scope: Scope,
    actor_rank: int | None = None,
    valid_to: date | None = None,
) -> GridAssignment:
    """End a user's current assignment to a grid: from ``valid_to`` on (default today) the
    grid is no longer theirs. ``valid_to`` is the first day off, so ending today takes
    effect at once. An assignment whose end is set for a later day may be ended earlier,
    not later. Raises NotFound for a grid or user outside the scope."""
    if not scope.covers_grid(grid_code):
        raise _not_found("assignment")
    user = changeable_user(session, user_id, scope=scope, actor_rank=actor_rank)
    # Not ended yet: open-ended, or ending on a later day (that one answered 404, and an
    # end set for next month could not be brought forward to today).
    row = session.scalars(
        select(GridAssignment)
        .where(
            GridAssignment.user_id == user.id,
            GridAssignment.grid_code == grid_code,
            or_(GridAssignment.valid_to.is_(None), GridAssignment.valid_to > clock.today()),
        )
        .order_by(GridAssignment.valid_from)
    ).first()
    if row is None:
        raise _not_found("assignment")
    end = valid_to or clock.today()
    if end < row.valid_from:
        raise Unprocessable(
            "The end is before the start.",
            errors={"json": {"valid_to": [f"must not be before {row.valid_from}"]}},
        )
    if row.valid_to is not None and end > row.valid_to:
        raise Unprocessable(
            f"The assignment already ends on {row.valid_to}; assign the grid again to extend it.",
            errors={"json": {"valid_to": [f"must not be after {row.valid_to}"]}},
        )
    row.valid_to = end
    user.token_version += 1
    session.flush()
    return row


def roster(
    session: Session, grid_code: str, scope: Scope, on: date | None = None
) -> list[tuple[GridAssignment, User]]:
    """Return who was responsible for a grid on a day (default today)."""
    if _grid_in_service(session, grid_code, scope) is None:
        raise _not_found("grid")
    day = on or clock.today()
    return list(
        session.execute(
            select(GridAssignment, User)
            .join(User, User.id == GridAssignment.user_id)
            .where(
                GridAssignment.grid_code == grid_code,
                assignment_holds_on(day),
            )
            .order_by(GridAssignment.is_primary.desc(), User.id)
        ).all()
    )


def assignments_of(session: Session, user_id: int, scope: Scope) -> list[GridAssignment]:
    """Return the assignments of a user to grids inside ``scope``, newest first (the
    history). An assignment to a grid outside it is left out, as the grid itself answers
    404 there: an account read through a grid of the caller's may also be on the roster of
    another township's."""
    # A grid code starts with its community's code: the scope's region prefixes hold.
    in_scope = scope.grid_condition(GridAssignment.grid_code, GridAssignment.grid_code)
    return list(
        session.scalars(
            select(GridAssignment)
            .where(GridAssignment.user_id == user_id, in_scope)
            .order_by(GridAssignment.valid_from.desc(), GridAssignment.id.desc())
        )
    )


# --- departments ----------------------------------------------------------------------------


def create_department(
    session: Session, *, scope: Scope, code: str, name: str, region_code: str
) -> Department:
    """Create a functional department serving a region in scope. Raises Unprocessable, or
    Conflict naming ``code`` when a department has it."""
    if not scope.covers_region(region_code):
        raise Unprocessable(
            "Unknown region.",
            errors={"json": {"region_code": [f"no region {region_code} in your scope"]}},
        )
    _region_or_422(session, region_code, scope, "region_code")

    def taken() -> Conflict | None:
        if session.scalars(select(Department.id).where(Department.code == code)).first() is None:
            return None
        return Conflict(
            f"A department with code {code!r} exists.",
            errors={"json": {"code": ["a department has this code"]}},
        )

    if (error := taken()) is not None:
        raise error
    dept = Department(code=code, name=name, region_code=region_code, is_active=True)
    # Created by another request between the look-up and the insert: the same answer.
    add_or_conflict(session, dept, taken)
    return dept


def list_departments(session: Session, scope: Scope, region: str | None = None) -> list[Department]:
    """Return departments serving regions in scope or above it (dispatch targets)."""
    stmt = select(Department).where(
        scope.region_condition(Department.region_code, with_ancestors=True)
    )
    if region:
        stmt = stmt.where(Department.region_code.startswith(subtree_prefix(region)))
    return list(session.scalars(stmt.order_by(Department.code)))


def get_department(session: Session, dept_id: int, scope: Scope) -> Department:
    dept = session.scalars(
        select(Department).where(
            Department.id == dept_id,
            scope.region_condition(Department.region_code, with_ancestors=True),
        )
    ).first()
    if dept is None:
        raise _not_found("department")
    return dept


def update_department(
    session: Session, dept_id: int, changes: dict[str, Any], *, scope: Scope
) -> Department:
    dept = session.scalars(
        select(Department).where(
            Department.id == dept_id, scope.region_condition(Department.region_code)
        )
    ).first()
    if dept is None:
        raise _not_found("department")
    for key in ("name", "is_active"):
        if key in changes:
            setattr(dept, key, changes[key])
    session.flush()
    return dept


# --- API clients ----------------------------------------------------------------------------


#: The bounds of an app's rate limit ("<amount> per <multiple> <unit>"). Beyond them a limit
#: is no limit anyone means: "1 per 99999999999999999999 second" was taken, and its first
#: refusal asked the app to retry in three trillion years.
CLIENT_RATE_MAX_AMOUNT = 1_000_000
CLIENT_RATE_MAX_MULTIPLE = 1000
CLIENT_RATE_MAX_WINDOW = timedelta(days=366)


def client_rate_limit_beyond_bounds(text: str) -> str | None:
    """Return why the rate limit ``text`` (one that `rate_limit_problem` reads) lies beyond
    the bounds of an app's limit, or None: at most `CLIENT_RATE_MAX_AMOUNT` requests, per at
    most `CLIENT_RATE_MAX_MULTIPLE` of a unit, a window of at most `CLIENT_RATE_MAX_WINDOW`."""
    from limits import parse

    item = parse(text)
    if item.amount > CLIENT_RATE_MAX_AMOUNT:
        return f"at most {CLIENT_RATE_MAX_AMOUNT} requests per period"
    if item.multiples > CLIENT_RATE_MAX_MULTIPLE:
        return f"a period of at most {CLIENT_RATE_MAX_MULTIPLE} of its unit"
    if item.get_expiry() > CLIENT_RATE_MAX_WINDOW.total_seconds():
        return f"a period of at most a year ({CLIENT_RATE_MAX_WINDOW.days} days)"
    return None


def create_client(
    session: Session,
    *,
    name: str,
    scopes: list[str],
    scope_region: str | None,
    rate_limit: str,
    created_by: str | None,
    scope: Scope | None = None,
    permissions: frozenset[str] | None = None,
) -> tuple[ApiClient, str]:
    """Register an app inside the caller's ``scope`` with scopes among the caller's
    ``permissions`` (None for both: the machine's operator, as the command line); return it
    and its key (shown once, only a digest is kept).

    Raises Unprocessable.
    """
    scope = scope or Scope.everything()
    from ..config import rate_limit_problem

    bad = sorted(set(scopes) - CLIENT_SCOPES)
    if bad or not scopes:
        raise Unprocessable(
            "Invalid scopes.",
            errors={
                "json": {
                    "scopes": [
                        f"allowed: {', '.join(sorted(CLIENT_SCOPES))}"
                        + (f"; not {bad}" if bad else "")
                    ]
                }
            },
        )
    if permissions is not None and (not_held := sorted(set(scopes) - permissions)):
        # Roles are data a county adjusts: one given clients:manage gave a key permissions
        # its own role lacks.
        raise Unprocessable(
            "Invalid scopes.",
            errors={"json": {"scopes": [f"you may only give scopes you hold; not {not_held}"]}},
        )
    if rate_limit_problem(rate_limit):
        raise Unprocessable(
            "Invalid rate limit.",
            errors={"json": {"rate_limit": ["one limit, e.g. '600 per minute' or '10/second'"]}},
        )
    if beyond := client_rate_limit_beyond_bounds(rate_limit):
        raise Unprocessable("Invalid rate limit.", errors={"json": {"rate_limit": [beyond]}})
    if scope_region:
        _region_or_422(session, scope_region, scope, "scope_region")
        if not scope.covers_region(scope_region):
            raise Unprocessable(
                "Unknown region.",
                errors={"json": {"scope_region": [f"no region {scope_region} in your scope"]}},
            )
    elif not scope.unrestricted:
        raise Unprocessable(
            "A scope is required.",
            errors={
                "json": {"scope_region": ["you may only register clients inside your own area"]}
            },
        )
    key, prefix = new_api_key()
    client = ApiClient(
        name=name,
        key_prefix=prefix,
        key_hash=digest(key),
        scopes=sorted(set(scopes)),
        scope_region_code=scope_region,
        rate_limit=rate_limit,
        created_by=created_by,
    )
    session.add(client)
    session.flush()
    return client, key


def _clients(scope: Scope):  # type: ignore[no-untyped-def]
    # A client without an area sees everything, so only unrestricted callers see it.
    return select(ApiClient).where(scope.region_condition(ApiClient.scope_region_code))


def list_clients(session: Session, scope: Scope) -> list[ApiClient]:
    """Return the clients whose area lies inside ``scope``."""
    return list(session.scalars(_clients(scope).order_by(ApiClient.id)))


def get_client(session: Session, client_id: int, scope: Scope) -> ApiClient:
    """Return a client inside ``scope``. Raises NotFound."""
    client = session.scalars(_clients(scope).where(ApiClient.id == client_id)).first()
    if client is None:
        raise _not_found("client")
    return client


def revoke_client(session: Session, client_id: int, scope: Scope) -> tuple[ApiClient, bool]:
    """Revoke an app's key; it stops working at once (or within the auth cache time).
    Returns the client and whether this revoked it (False: revoked before, nothing changed)."""
    client = get_client(session, client_id, scope)
    if client.revoked_at is not None:
        return client, False
    client.revoked_at = utcnow()
    session.flush()
    return client, True
