"""Sign-in, token refresh, sign-out, password change, and who am I."""

from __future__ import annotations

from flask import g, request
from flask.views import MethodView

from ..auditing import audit
from ..auth import AUTHENTICATED, Forbidden, Unauthorized, current_principal
from ..errors import Unprocessable
from ..extensions import commit, db_session, reading_session, state
from ..limits import (
    account_locked,
    address_key,
    count_account_failure,
    limiter,
    login_name_key,
    password_guesses,
    trusted_device,
)
from ..models import User
from ..personal import number_in_name
from ..schemas.identity import (
    LoginSchema,
    MeSchema,
    PasswordChangeSchema,
    RefreshSchema,
    TokenSchema,
)
from ..security.tokens import device_of, issue_device_token
from ..services import identity as svc
from ..services.audit import Actor
from ..spec import RATE_LIMIT_REFS
from .blueprint import Blueprint

blp = Blueprint(
    "auth",
    __name__,
    url_prefix="/api/v1",
    description="Sign-in for people: short-lived access tokens, rotating refresh tokens.",
)


def _failed(response) -> bool:  # type: ignore[no-untyped-def]
    return response.status_code == 401


def _account_address_limit() -> str:
    return state().settings.login_rate_account_address


def _address_limit() -> str:
    return state().settings.login_rate_address


def _address_message() -> str:
    return f"Too many failed sign-ins from this address ({_address_limit()}); retry later."


def _account_message() -> str:
    return (
        f"Too many failed sign-ins for this account from this address "
        f"({_account_address_limit()}); retry later."
    )


def _trusted_device(data: dict, user_id: int) -> str | None:
    """Return the device id of the sign-in's ``device_token`` when it is one of the account
    ``user_id``'s and its device's allowance of failures is left (``limits.trusted_device``),
    else None."""
    device = device_of(state().tokens.key, data.get("device_token"), user_id)
    return trusted_device(user_id, device)


def _tokens_body(issued: svc.IssuedTokens) -> dict:
    return {
        "access_token": issued.access_token,
        "refresh_token": issued.refresh_token,
        "token_type": "Bearer",
        "expires_in": issued.expires_in,
    }


#: How much of a refused sign-in's name the audit log keeps: enough to tell one name from
#: another, little of a password typed into the wrong field.
LOGIN_SHOWN_CHARS = 32


def _audit_failed_sign_in(login: str, failed: svc.LoginFailed) -> None:
    """Add the audit row of a refused sign-in: the name as typed (cut short; a phone number
    not at all, as it is kept only encrypted), why it was refused, the account it named.

    Nor any name holding a run of 11 digits or more, whatever else it holds: an ID number
    typed as the name, or a phone number written as +86…, was kept as typed, in rows that
    are never updated or deleted.

    The rows are bounded by the sign-in's limits: only a 401 writes one, and 401s spend the
    allowances of the address and of the name (a 429 is answered before the check).
    """
    login = login.strip()
    by_phone = svc.login_phone(login) is not None
    personal = by_phone or number_in_name(login)
    audit(
        "auth.login_failed",
        "user",
        failed.user_id,
        region_code=failed.region_code,
        summary={
            "login": None if personal else login[:LOGIN_SHOWN_CHARS],
            "by": "phone" if by_phone else "username",
            "reason": failed.reason,
        },
        actor=Actor("anonymous", None, None, g.get("request_id"), request.remote_addr),
    )


@blp.route("/auth/token")
class AuthToken(MethodView):
    @blp.public
    @limiter.limit(
        _address_limit,
        key_func=address_key,
        deduct_when=_failed,
        scope="login-address",
        error_message=_address_message,
    )
    @limiter.limit(
        _account_address_limit,
        key_func=login_name_key,
        deduct_when=_failed,
        scope="login-name",
        error_message=_account_message,
    )
    @blp.arguments(LoginSchema)
    @blp.response(200, TokenSchema, headers=RATE_LIMIT_REFS)
    @blp.alt_response(401, response="UNAUTHORIZED")
    @blp.alt_response(429, response="TOO_MANY_REQUESTS")
    def post(self, data):
        """Sign in with a username (or phone number) and password

        Returns an access token (a JWT, valid `expires_in` seconds) and a single-use refresh
        token. Failed attempts are throttled per name given from one client address
        (GRIDAPI_LOGIN_RATE_ACCOUNT_ADDRESS) and per client address (GRIDAPI_LOGIN_RATE_ADDRESS):
        429 with Retry-After. An account's failures by its username and its phone number count
        together, from the client's address and, with a higher allowance, from every address
        (GRIDAPI_LOGIN_RATE_ACCOUNT); once one is spent the account is refused (401, as a wrong
        password) by any other name from that address, or from every address, until the
        window passes. Failures from elsewhere therefore do not lock its owner out of their
        own address until the allowance of every address is spent, nor ever out of a device
        that sends the `device_token` an earlier sign-in to the account answered: while it is
        valid, that device's failures count on it alone. Each refused attempt
        (401) writes an audit row
        `auth.login_failed`: the name as typed (cut to 32 characters; none for a phone
        number, also written with spaces, dashes or +86, which sign in as its 11 digits do,
        nor for a name holding 11 digits in a row, an ID number typed as the name), why it
        was refused (`unknown_account`, `wrong_password`, `disabled`,
        `account_changed`, `locked`) and the account named; the answer itself is the same
        whatever the reason.
        """
        st = state()
        try:
            # The password is checked before the request's transaction begins: on SQLite a
            # POST begins as a writer, and every report and step of every phone waited for
            # each sign-in's argon2 check (a failed one by anybody included).
            with reading_session() as reading:
                checked = svc.check_credentials(
                    reading, data["username"], data["password"], phone_key=st.phone_key
                )
            device = _trusted_device(data, checked.user_id)
            if account_locked(checked.user_id, device):
                raise svc.LoginFailed("locked", checked.user_id, checked.region_code)
            issued = svc.login(
                db_session(),
                checked,
                data["password"],
                signer=st.tokens,
                refresh_days=st.settings.refresh_token_days,
            )
        except svc.LoginFailed as failed:
            if failed.user_id is not None and failed.reason != "locked":
                # An account's failures by any of its names count together; once they are
                # spent its other names are refused as a wrong password is (401), not 429:
                # a 429 there told whose a phone number was. The password was checked all
                # the same, so the answer takes as long.
                device = _trusted_device(data, failed.user_id)
                if account_locked(failed.user_id, device):
                    failed = svc.LoginFailed("locked", failed.user_id, failed.region_code)
                else:
                    count_account_failure(failed.user_id, device)
            _audit_failed_sign_in(data["username"], failed)
            commit()  # the row outlives the refusal (the request's rollback)
            raise Unauthorized(
                "The username, phone number or password is wrong, or the account is disabled."
            ) from None
        user = issued.user
        # The actor is the account that signed in, whatever credentials the request carried.
        audit(
            "auth.login",
            "user",
            user.id,
            region_code=user.region_code,
            actor=Actor(
                "user", f"user:{user.id}", user.username, g.get("request_id"), request.remote_addr
            ),
        )
        commit()
        kept = device_of(st.tokens.key, data.get("device_token"), user.id)
        return {
            **_tokens_body(issued),
            "device_token": data["device_token"]
            if kept
            else issue_device_token(st.tokens.key, user.id),
        }


@blp.route("/auth/refresh")
class AuthRefresh(MethodView):
    @blp.public
    @blp.arguments(RefreshSchema)
    @blp.response(200, TokenSchema)
    @blp.alt_response(401, response="UNAUTHORIZED")
    def post(self, data):
        """Exchange a refresh token for a new token pair

        The refresh token is single use. Presenting one that was already used revokes its
        whole family: the next refresh of either holder fails, the family's access tokens are
        refused as after a sign-out, and the user signs in again.
        """
        st = state()
        session = db_session()
        try:
            issued = svc.refresh(
                session,
                data["refresh_token"],
                signer=st.tokens,
                refresh_days=st.settings.refresh_token_days,
            )
        except svc.RefreshRejected as exc:
            if exc.reuse:
                # Commit the family revocation (and its audit row) before refusing. The row
                # says where the replay came from, and is filed under the account's region,
                # for the centre over it to read (filed under none, only admins saw it).
                owner = session.get(User, exc.user_id)
                audit(
                    "auth.refresh_reuse",
                    "user",
                    exc.user_id,
                    region_code=owner.region_code if owner else None,
                    actor=Actor(
                        "system",
                        None,
                        "refresh-reuse-detection",
                        g.get("request_id"),
                        request.remote_addr,
                    ),
                )
                commit()
                if exc.family_id is not None:
                    st.principals.end_session(exc.family_id)
            raise Unauthorized("The refresh token is invalid, expired or revoked.") from None
        commit()
        return _tokens_body(issued)


@blp.route("/auth/logout")
class AuthLogout(MethodView):
    @blp.requires(AUTHENTICATED)
    @blp.arguments(RefreshSchema)
    @blp.response(204)
    def post(self, data):
        """Sign out: revoke the refresh token's family, and its access tokens

        Every access token issued with that sign-in (by the sign-in or a refresh of it) is
        refused from then on (401): at once by the server that answered, and by every other
        within GRIDAPI_AUTH_CACHE_SECONDS (5 s by default), the time a server trusts a token
        it has checked. Other sign-ins of the same person (another phone) go on.
        """
        principal = current_principal()
        if principal.kind != "user":
            raise Forbidden("Only people sign out; API keys are revoked by an admin.")
        ended = svc.logout(db_session(), data["refresh_token"], principal.id)
        if ended is not None:
            audit("auth.logout", "user", principal.id, region_code=principal.region_code)
        commit()
        if ended is not None:
            state().principals.end_session(ended)


@blp.route("/auth/password")
class AuthPassword(MethodView):
    @blp.requires(AUTHENTICATED)
    @blp.arguments(PasswordChangeSchema)
    @blp.response(204)
    def post(self, data):
        """Change your own password

        Every token issued before stops working: sign in again with the new password. A wrong
        `current_password` counts as a failed sign-in of the account, from the client's address
        (GRIDAPI_LOGIN_RATE_ACCOUNT_ADDRESS) and from every address (GRIDAPI_LOGIN_RATE_ACCOUNT):
        past either allowance, 429.
        """
        principal = current_principal()
        if principal.kind != "user":
            raise Forbidden("API keys have no password.")
        password_guesses(principal.id, failed=False)  # spent: 429 before any check
        try:
            # Checked and hashed before the request's transaction begins (argon2 twice): on
            # SQLite that transaction holds the database's one write lock.
            with reading_session() as reading:
                checked, new_hash = svc.check_password_change(
                    reading,
                    principal.id,
                    data["current_password"],
                    data["new_password"],
                    phone_key=state().phone_key,
                )
            svc.change_password(db_session(), checked, new_hash)
        except Unprocessable as exc:
            if "current_password" in (exc.errors or {}).get("json", {}):
                password_guesses(principal.id, failed=True)
            raise
        audit("user.password_change", "user", principal.id, region_code=principal.region_code)
        commit()
        state().principals.clear()


@blp.route("/me")
class Me(MethodView):
    @blp.requires(AUTHENTICATED)
    @blp.response(200, MeSchema)
    def get(self):
        """Who the caller is: role, permissions and area scope

        Describes the credential the request was made with: `kind` (`user` for a person's access
        token, `client` for an API key), its id and name, the role, the sorted list of permissions
        and the area scope (`unrestricted`, the region code prefixes and any grids given one by
        one). Any valid credential may call it; nothing is written. Phone apps and integrations use
        it after sign-in to decide which screens and actions to offer, rather than trying an
        operation and waiting for a 403.
        """
        p = current_principal()
        scope = {
            "unrestricted": p.scope.unrestricted,
            "region_prefixes": list(p.scope.prefixes),
            "grids": sorted(p.scope.grid_codes),
        }
        return {
            "kind": p.kind,
            "id": p.id,
            "name": p.name,
            "role": p.role,
            "permissions": sorted(p.permissions),
            "scope": scope,
        }
