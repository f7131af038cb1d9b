"""Sign-in, access tokens, API keys, refresh rotation, sign-out, throttling, password change."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import jwt
import pytest
from argon2 import PasswordHasher
from sqlalchemy import event, select, update

from gridapi import create_app
from gridapi.config import Settings
from gridapi.models import AuditEntry, User
from gridapi.security.tokens import CLOCK_SKEW_SECONDS, TokenSigner

from ..factories import COMMUNITY_A, COUNTY, PASSWORD, TOWNSHIP
from ..races import report_while_held

PHONE = "13812345678"
NEW_PASSWORD = "Brand-New-Pa55!"


def sign_in(client: Any, login: str, password: str = PASSWORD) -> Any:
    return client.post("/api/v1/auth/token", json={"username": login, "password": password})


#: Client addresses of the throttling tests (documentation ranges, RFC 5737).
HOME, ELSEWHERE, FAR_AWAY = "192.0.2.10", "198.51.100.7", "203.0.113.99"


def sign_in_from(
    client: Any, address: str, login: str, password: str = PASSWORD, device: str | None = None
) -> Any:
    body = {"username": login, "password": password}
    if device is not None:
        body["device_token"] = device
    return client.post("/api/v1/auth/token", json=body, environ_base={"REMOTE_ADDR": address})


def tokens(client: Any, login: str, password: str = PASSWORD) -> dict[str, Any]:
    r = sign_in(client, login, password)
    assert r.status_code == 200, r.get_json()
    return r.get_json()


def refresh(client: Any, refresh_token: str) -> Any:
    return client.post("/api/v1/auth/refresh", json={"refresh_token": refresh_token})


def me(client: Any, token: str) -> Any:
    return client.get("/api/v1/me", headers={"Authorization": f"Bearer {token}"})


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def assert_unauthorized(response: Any) -> dict[str, Any]:
    assert response.status_code == 401, response.get_json()
    body = response.get_json()
    assert body["code"] == 401 and body["message"]
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    return body


def signer(app: Any, **changes: Any) -> TokenSigner:
    """A signer like the application's, with ``changes``."""
    own = app.extensions["gridapi"].tokens
    values = {
        "key": own.key,
        "issuer": own.issuer,
        "audience": own.audience,
        "lifetime_seconds": own.lifetime_seconds,
        **changes,
    }
    return TokenSigner(**values)


def b64(part: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(part).encode()).rstrip(b"=").decode()


def audit_actions(session: Any, action: str) -> list[AuditEntry]:
    session.rollback()
    return list(session.scalars(select(AuditEntry).where(AuditEntry.action == action)))


@pytest.fixture
def alice(factory: Any, accounts: Any) -> int:
    """A community officer who can sign in by username 'alice' or by phone."""
    factory.regions()
    return accounts.create("alice", "community_officer", scope_region=COMMUNITY_A, phone=PHONE)


@pytest.fixture
def bob(factory: Any, accounts: Any, alice: int) -> int:
    return accounts.create("bob", "township_office", scope_region=TOWNSHIP)


@pytest.fixture
def server(settings: Settings) -> Iterator[Callable[..., Any]]:
    """Make another application on the test database (another server process, with its own
    cache of callers), with ``changes`` to its settings; return its application."""
    made: list[Any] = []

    def make(**changes: Any) -> Any:
        application = create_app(replace(settings, **changes))
        application.config["TESTING"] = True
        made.append(application)
        return application

    yield make
    for application in made:
        application.extensions["gridapi"].engine.dispose()


# ---- sign-in ---------------------------------------------------------------------------------


@pytest.mark.parametrize("login", ["alice", PHONE, f"  {PHONE} "])
def test_sign_in_by_username_or_phone_returns_a_token_pair(
    anon_client: Any, alice: int, login: str
) -> None:
    r = sign_in(anon_client, login)
    assert r.status_code == 200, r.get_json()
    body = r.get_json()
    assert set(body) == {
        "access_token",
        "refresh_token",
        "token_type",
        "expires_in",
        "device_token",
    }
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 900
    assert body["access_token"].count(".") == 2
    assert body["refresh_token"] and body["refresh_token"] != body["access_token"]


def test_the_access_token_works_on_me(anon_client: Any, alice: int) -> None:
    r = me(anon_client, tokens(anon_client, PHONE)["access_token"])
    assert r.status_code == 200, r.get_json()
    body = r.get_json()
    assert (body["kind"], body["id"], body["name"]) == ("user", alice, "alice")
    assert body["role"] == "community_officer"
    assert "users:read" in body["permissions"] and "users:write" not in body["permissions"]
    assert body["scope"]["unrestricted"] is False
    assert body["scope"]["region_prefixes"] == [COMMUNITY_A]


def test_a_sign_in_is_audited(anon_client: Any, alice: int, session: Any) -> None:
    tokens(anon_client, "alice")
    (row,) = audit_actions(session, "auth.login")
    assert (row.actor_type, row.actor_id, row.object_id) == ("user", f"user:{alice}", str(alice))


def test_wrong_password_unknown_user_and_disabled_user_answer_alike(
    anon_client: Any, client: Any, alice: int, bob: int
) -> None:
    r = client.patch(f"/api/v1/users/{bob}", json={"is_active": False})
    assert r.status_code == 200, r.get_json()
    bodies = [
        assert_unauthorized(sign_in(anon_client, "alice", PASSWORD + "x")),
        assert_unauthorized(sign_in(anon_client, "nobody")),
        assert_unauthorized(sign_in(anon_client, "13900000000")),
        assert_unauthorized(sign_in(anon_client, "bob")),
    ]
    assert all(body == bodies[0] for body in bodies)
    assert "password" not in json.dumps(bodies[0]["errors"])


def test_each_refused_sign_in_is_audited_with_its_reason(
    anon_client: Any, client: Any, alice: int, bob: int, session: Any
) -> None:
    """Refused sign-ins left no trace (MLPS 2.0 wants login failures recorded): each 401
    writes a row, with the reason the answer never gives, and never the password."""
    r = client.patch(f"/api/v1/users/{bob}", json={"is_active": False})
    assert r.status_code == 200, r.get_json()
    wrong = "Wrong-Passw0rd!"
    answers = [
        sign_in(anon_client, "Alice", wrong),
        sign_in(anon_client, PHONE, wrong),
        sign_in(anon_client, "nobody-" + "x" * 50, wrong),
        sign_in(anon_client, "13900000000", wrong),
        sign_in(anon_client, "bob"),
    ]
    for answer in answers:
        assert_unauthorized(answer)
    rows = audit_actions(session, "auth.login_failed")
    seen = [
        (row.object_id, row.region_code, row.summary, row.request_id, row.client_address)
        for row in sorted(rows, key=lambda row: row.id)
    ]
    ids = [answer.headers["X-Request-ID"] for answer in answers]
    assert seen == [
        (
            str(alice),
            COMMUNITY_A,
            {"login": "Alice", "by": "username", "reason": "wrong_password"},
            ids[0],
            "127.0.0.1",
        ),
        (
            str(alice),
            COMMUNITY_A,
            {"login": None, "by": "phone", "reason": "wrong_password"},
            ids[1],
            "127.0.0.1",
        ),
        (
            None,
            None,
            {"login": "nobody-" + "x" * 25, "by": "username", "reason": "unknown_account"},
            ids[2],
            "127.0.0.1",
        ),
        (
            None,
            None,
            {"login": None, "by": "phone", "reason": "unknown_account"},
            ids[3],
            "127.0.0.1",
        ),
        (
            str(bob),
            TOWNSHIP,
            {"login": "bob", "by": "username", "reason": "disabled"},
            ids[4],
            "127.0.0.1",
        ),
    ]
    assert {(row.actor_type, row.actor_id) for row in rows} == {("anonymous", None)}
    dumped = json.dumps([row.summary for row in rows])
    assert wrong not in dumped and PASSWORD not in dumped and "5678" not in dumped


@pytest.mark.parametrize(
    "written", ["+86 138 1234 5678", "0086-138-1234-5678", "138-1234-5678", "+8613812345678"]
)
def test_a_phone_number_as_people_write_it_signs_in(
    anon_client: Any, alice: int, written: str
) -> None:
    """Only 11 bare digits were a phone number at sign-in: +86 or spaces made it an unknown
    name (the register reads such numbers as the 11 digits)."""
    r = sign_in(anon_client, written)
    assert r.status_code == 200, r.get_json()
    assert me(anon_client, r.get_json()["access_token"]).get_json()["id"] == alice


def test_no_refused_sign_in_keeps_a_number_in_the_audit_log(
    anon_client: Any, alice: int, session: Any
) -> None:
    """A phone number written with +86 or spaces, an ID number typed as the name, a name
    with a long number in it: each was kept as typed in the audit log, whose rows are never
    updated or deleted. The row says it was refused and why, not the number."""
    wrong = "Wrong-Passw0rd!"
    names = ["+86 138 1234 5678", "+8613900000000", "320508196203150317", "x13912345678y"]
    for name in names:
        assert_unauthorized(sign_in(anon_client, name, wrong))
    rows = sorted(audit_actions(session, "auth.login_failed"), key=lambda row: row.id)
    assert [row.summary for row in rows] == [
        {"login": None, "by": "phone", "reason": "wrong_password"},
        {"login": None, "by": "phone", "reason": "unknown_account"},
        {"login": None, "by": "username", "reason": "unknown_account"},
        {"login": None, "by": "username", "reason": "unknown_account"},
    ]
    assert rows[0].object_id == str(alice)


def test_a_throttled_sign_in_writes_no_row(anon_client: Any, alice: int, session: Any) -> None:
    """What bounds the failed sign-ins' rows: only a 401 writes one, and 401s spend the
    account's and the address's allowances; a 429 is answered before any check."""
    for _ in range(5):
        assert_unauthorized(sign_in(anon_client, "alice", "Wrong-Passw0rd!"))
    for _ in range(3):
        assert sign_in(anon_client, "alice", "Wrong-Passw0rd!").status_code == 429
    assert len(audit_actions(session, "auth.login_failed")) == 5


def test_no_credentials_answers_401(anon_client: Any, alice: int) -> None:
    assert_unauthorized(anon_client.get("/api/v1/me"))


def test_a_username_shaped_like_a_phone_does_not_shadow_sign_in_by_phone(
    anon_client: Any, client: Any, alice: int
) -> None:
    r = client.post(
        "/api/v1/users",
        json={
            "username": PHONE,
            "password": "Other-Passw0rd!",
            "role": "grid_worker",
            "scope_region": COMMUNITY_A,
        },
    )
    if r.status_code == 422:  # refusing such usernames is a fix too
        return
    assert r.status_code == 201, r.get_json()
    assert sign_in(anon_client, PHONE).status_code == 200  # alice, by her phone


# ---- access tokens that are refused ----------------------------------------------------------


def _refused_tokens(app: Any, user_id: int) -> dict[str, str]:
    own = app.extensions["gridapi"].tokens
    good = own.issue(subject=str(user_id), claims={"ver": 0, "role": "admin"})
    payload = own.verify(good)
    header, body, signature = good.split(".")
    return {
        "alg none": f"{b64({'alg': 'none', 'typ': 'JWT', 'kid': own.key_id})}.{body}.",
        "alg none by PyJWT": jwt.encode(
            payload, None, algorithm="none", headers={"kid": own.key_id}
        ),
        "wrong key": signer(app, key=b"x" * 64).issue(subject=str(user_id), claims={"ver": 0}),
        "wrong key, right kid": jwt.encode(
            payload, b"x" * 64, algorithm="HS256", headers={"kid": own.key_id}
        ),
        "expired": signer(app, lifetime_seconds=-CLOCK_SKEW_SECONDS - 10).issue(
            subject=str(user_id), claims={"ver": 0}
        ),
        "wrong audience": signer(app, audience="elsewhere").issue(
            subject=str(user_id), claims={"ver": 0}
        ),
        "wrong issuer": signer(app, issuer="elsewhere").issue(
            subject=str(user_id), claims={"ver": 0}
        ),
        "wrong kid": jwt.encode(payload, own.key, algorithm="HS256", headers={"kid": "0" * 16}),
        "other subject, old signature": f"{header}.{b64({**payload, 'sub': '999'})}.{signature}",
        "garbage": "garbage",
        "three dots": "a.b.c",
        "unknown user": own.issue(subject="999999", claims={"ver": 0}),
        "no version": own.issue(subject=str(user_id), claims={}),
    }


def test_forged_expired_and_foreign_tokens_are_refused(
    app: Any, client: Any, accounts: Any
) -> None:
    admin = accounts.ids["admin"]
    for name, token in _refused_tokens(app, admin).items():
        r = me(app.test_client(), token)
        assert r.status_code == 401, (name, r.get_json())
    # The control: the same user with a genuine token gets in.
    assert me(app.test_client(), accounts.token("admin")).status_code == 200


@pytest.mark.parametrize("header", ["Basic YWxpY2U6eA==", "Bearer", "Bearer   ", "Token abc"])
def test_malformed_authorization_headers_are_refused(anon_client: Any, header: str) -> None:
    assert_unauthorized(anon_client.get("/api/v1/me", headers={"Authorization": header}))


def test_the_token_of_a_disabled_user_is_refused(anon_client: Any, client: Any, alice: int) -> None:
    access = tokens(anon_client, "alice")["access_token"]
    assert me(anon_client, access).status_code == 200
    r = client.patch(f"/api/v1/users/{alice}", json={"is_active": False})
    assert r.status_code == 200 and r.get_json()["is_active"] is False
    assert_unauthorized(me(anon_client, access))
    assert_unauthorized(anon_client.get("/api/v1/regions", headers=_bearer(access)))


def test_a_disabled_user_cannot_refresh(anon_client: Any, client: Any, alice: int) -> None:
    pair = tokens(anon_client, "alice")
    assert client.patch(f"/api/v1/users/{alice}", json={"is_active": False}).status_code == 200
    assert_unauthorized(refresh(anon_client, pair["refresh_token"]))


def test_re_enabling_an_account_does_not_revive_its_old_sessions(
    anon_client: Any, client: Any, alice: int
) -> None:
    pair = tokens(anon_client, "alice")
    assert client.patch(f"/api/v1/users/{alice}", json={"is_active": False}).status_code == 200
    assert client.patch(f"/api/v1/users/{alice}", json={"is_active": True}).status_code == 200
    assert_unauthorized(me(anon_client, pair["access_token"]))
    assert_unauthorized(refresh(anon_client, pair["refresh_token"]))


def test_a_role_change_ends_the_old_tokens(anon_client: Any, client: Any, alice: int) -> None:
    access = tokens(anon_client, "alice")["access_token"]
    r = client.patch(f"/api/v1/users/{alice}", json={"role": "grid_chief"})
    assert r.status_code == 200, r.get_json()
    assert_unauthorized(me(anon_client, access))
    assert me(anon_client, tokens(anon_client, "alice")["access_token"]).get_json()["role"] == (
        "grid_chief"
    )


# ---- API keys --------------------------------------------------------------------------------


def make_key(app: Any, **extra: Any) -> dict[str, Any]:
    """Register an API client through the service layer (POST /api/v1/clients answers 500)."""
    from gridapi.services.identity import create_client

    values: dict[str, Any] = {
        "name": "hotline",
        "scopes": ["grids:read", "regions:read"],
        "scope_region": None,
        "rate_limit": "600 per minute",
        "created_by": "test",
        **extra,
    }
    with app.extensions["gridapi"].sessions.begin() as session:
        row, key = create_client(session, **values)
        return {"id": row.id, "key_prefix": row.key_prefix, "api_key": key}


def test_registering_a_client_over_http_shows_its_key_once(app: Any, client: Any) -> None:
    r = client.post("/api/v1/clients", json={"name": "hotline", "scopes": ["grids:read"]})
    assert r.status_code == 201, r.get_json()
    created = r.get_json()
    assert created["api_key"].startswith(f"gk_{created['key_prefix']}_")
    r = app.test_client().get("/api/v1/grids", headers={"X-API-Key": created["api_key"]})
    assert r.status_code == 200


@pytest.mark.parametrize(
    "limit", ["0 per minute", "5 per 0 minute", "1 per 00 second", "3/0minute", "often"]
)
def test_a_rate_limit_of_nothing_is_422_and_makes_no_client(client: Any, limit: str) -> None:
    """'0 per minute' made a key every request of which was 429; 'per 0 minute' was read as
    per minute. Refused as malformed, as the spec says, and nothing is registered."""
    before = client.get("/api/v1/clients").get_json()["items"]
    r = client.post(
        "/api/v1/clients", json={"name": "x", "scopes": ["grids:read"], "rate_limit": limit}
    )
    assert r.status_code == 422, r.get_json()
    assert list(r.get_json()["errors"]["json"]) == ["rate_limit"]
    assert client.get("/api/v1/clients").get_json()["items"] == before
    ok = {"name": "x", "scopes": ["grids:read"], "rate_limit": "10 per 2 minutes"}
    assert client.post("/api/v1/clients", json=ok).status_code == 201


@pytest.mark.parametrize("limit", ["10/second;1/day", "600 per minute, 1 per day", "1/s|9/m"])
def test_a_rate_limit_of_several_limits_is_422(client: Any, limit: str) -> None:
    """Only the first of several limits was ever counted ("10/second;1/day" allowed 864000
    requests a day): taken and shown as given, the rest silently did nothing."""
    r = client.post(
        "/api/v1/clients", json={"name": "x", "scopes": ["grids:read"], "rate_limit": limit}
    )
    assert r.status_code == 422, r.get_json()
    assert list(r.get_json()["errors"]["json"]) == ["rate_limit"]
    assert client.get("/api/v1/clients").get_json()["items"] == []


def test_an_api_key_works_as_x_api_key_and_as_bearer(app: Any, client: Any) -> None:
    created = make_key(app)
    key = created["api_key"]
    assert key.startswith(f"gk_{created['key_prefix']}_")
    anon = app.test_client()
    for headers in ({"X-API-Key": key}, {"Authorization": f"Bearer {key}"}):
        r = anon.get("/api/v1/me", headers=headers)
        assert r.status_code == 200, r.get_json()
        body = r.get_json()
        assert (body["kind"], body["id"], body["name"]) == ("client", created["id"], "hotline")
        assert body["permissions"] == ["grids:read", "regions:read"]
        assert anon.get("/api/v1/grids", headers=headers).status_code == 200


def test_a_request_with_a_token_and_a_key_is_the_tokens(
    app: Any, client: Any, anon_client: Any, alice: int
) -> None:
    """Both headers: the Authorization header's credential is used, the X-API-Key is not
    read (docs/integration.md), whichever comes first."""
    key = make_key(app)["api_key"]
    access = tokens(anon_client, "alice")["access_token"]
    for headers in (
        {"X-API-Key": key, "Authorization": f"Bearer {access}"},
        {"Authorization": f"Bearer {access}", "X-API-Key": key},
    ):
        r = anon_client.get("/api/v1/me", headers=headers)
        assert r.status_code == 200, r.get_json()
        assert (r.get_json()["kind"], r.get_json()["id"]) == ("user", alice)
    # and a bad token is refused, not passed over for the key
    bad = anon_client.get("/api/v1/me", headers={"X-API-Key": key, "Authorization": "Bearer x.y.z"})
    assert bad.status_code == 401


@pytest.mark.parametrize("authorization", ["", "Bearer ", "Bearer", " ", "Basic Z2s6", "Token x"])
def test_an_empty_or_malformed_authorization_is_refused_whatever_key_comes_with_it(
    app: Any, client: Any, authorization: str
) -> None:
    """An empty `Authorization:` sent with a valid X-API-Key was taken as the key: the
    Authorization header, when present, is the request's credential (the key is not read
    beside it), so an empty one is a bad credential, as a malformed one was already."""
    key = make_key(app)["api_key"]
    anon = app.test_client()
    assert anon.get("/api/v1/grids", headers={"X-API-Key": key}).status_code == 200
    for path in ("/api/v1/grids", "/api/v1/me"):
        r = anon.get(path, headers={"Authorization": authorization, "X-API-Key": key})
        body = assert_unauthorized(r)
        assert body["message"] == "The Authorization header must be 'Bearer <token>'."
        assert r.headers["WWW-Authenticate"] == 'Bearer realm="gridapi"'
    # A write is refused before anything is done.
    r = anon.post(
        "/api/v1/clients",
        json={"name": "x", "scopes": ["grids:read"], "rate_limit": "1/second"},
        headers={"Authorization": authorization, "X-API-Key": key},
    )
    assert_unauthorized(r)


def test_an_api_key_gets_only_its_scopes(app: Any, client: Any) -> None:
    key = make_key(app, scopes=["grids:read"])["api_key"]
    r = app.test_client().get("/api/v1/regions", headers={"X-API-Key": key})
    assert r.status_code == 403, r.get_json()


def test_the_key_is_shown_once(app: Any, client: Any) -> None:
    created = make_key(app)
    listed = client.get(f"/api/v1/clients/{created['id']}")
    assert listed.status_code == 200
    assert "api_key" not in listed.get_json()
    assert created["api_key"] not in listed.get_data(as_text=True)
    assert created["api_key"] not in client.get("/api/v1/clients").get_data(as_text=True)


@pytest.mark.parametrize(
    "key", ["gk_00000000_doesnotexist", "gk_short_x", "gk_", "not-a-key-at-all"]
)
def test_unknown_and_malformed_keys_are_refused(app: Any, client: Any, key: str) -> None:
    real = make_key(app)
    assert_unauthorized(app.test_client().get("/api/v1/grids", headers={"X-API-Key": key}))
    # The right prefix with the wrong secret is refused too.
    forged = f"gk_{real['key_prefix']}_{'A' * 40}"
    assert_unauthorized(app.test_client().get("/api/v1/grids", headers={"X-API-Key": forged}))


def test_a_sign_in_name_with_a_nul_is_422_naming_it_on_both_engines(app: Any) -> None:
    """The sign-in throttle looked the account up by the raw name before the schema read
    it: PostgreSQL refused the NUL (a field-less 422 'out of range'), SQLite named it."""
    anon = app.test_client()
    for name in ("adm\x00in", "\x00", "x" * 65 + "\x00"):
        r = anon.post("/api/v1/auth/token", json={"username": name, "password": "x"})
        assert r.status_code == 422, r.get_json()
        assert list(r.get_json()["errors"]["json"]) == ["username"], r.get_json()


def test_a_key_with_a_nul_is_refused_on_both_engines(app: Any, client: Any) -> None:
    """NUL in a key (after the prefix, in it, in the Bearer form) is 401 like any unknown
    key: the prefix is looked up and the secret hashed, neither sent to the database as
    text (PostgreSQL refuses NUL in text: that would have been a 500)."""
    real = make_key(app)
    anon = app.test_client()
    for key in (
        real["api_key"] + "\x00",
        real["api_key"].replace("_", "\x00", 1),
        f"gk_{real['key_prefix'][:4]}\x00{real['key_prefix'][5:]}_{'A' * 40}",
    ):
        assert_unauthorized(anon.get("/api/v1/grids", headers={"X-API-Key": key}))
        assert_unauthorized(anon.get("/api/v1/grids", headers={"Authorization": f"Bearer {key}"}))
    assert anon.get("/api/v1/grids", headers={"X-API-Key": real["api_key"]}).status_code == 200


def test_a_revoked_key_is_refused(app: Any, client: Any) -> None:
    created = make_key(app)
    anon = app.test_client()
    headers = {"X-API-Key": created["api_key"]}
    assert anon.get("/api/v1/grids", headers=headers).status_code == 200
    r = client.delete(f"/api/v1/clients/{created['id']}")
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["revoked_at"] is not None
    assert_unauthorized(anon.get("/api/v1/grids", headers=headers))
    assert_unauthorized(
        anon.get("/api/v1/grids", headers={"Authorization": f"Bearer {created['api_key']}"})
    )


def test_a_key_has_its_own_rate_limit(app: Any, client: Any) -> None:
    limited = make_key(app, rate_limit="3 per minute")["api_key"]
    other = make_key(app, name="resident-app")["api_key"]
    anon = app.test_client()
    for _ in range(3):
        r = anon.get("/api/v1/grids", headers={"X-API-Key": limited})
        assert r.status_code == 200, r.get_json()
    r = anon.get("/api/v1/grids", headers={"X-API-Key": limited})
    assert r.status_code == 429, r.get_json()
    assert r.get_json()["code"] == 429
    assert 1 <= int(r.headers["Retry-After"]) <= 60
    # Another key from the same address is not affected.
    assert anon.get("/api/v1/grids", headers={"X-API-Key": other}).status_code == 200


def test_a_key_cannot_sign_out_or_change_a_password(app: Any, client: Any) -> None:
    key = make_key(app)["api_key"]
    anon = app.test_client()
    r = anon.post(
        "/api/v1/auth/logout", json={"refresh_token": "x" * 43}, headers={"X-API-Key": key}
    )
    # The key is good; the operation is for people: 403, not a credential failure.
    assert r.status_code == 403, r.get_json()
    r = anon.post(
        "/api/v1/auth/password",
        json={"current_password": PASSWORD, "new_password": NEW_PASSWORD},
        headers={"X-API-Key": key},
    )
    assert r.status_code == 403, r.get_json()


# ---- refresh rotation and sign-out -----------------------------------------------------------


def test_a_refresh_returns_a_new_pair(anon_client: Any, alice: int) -> None:
    first = tokens(anon_client, "alice")
    r = refresh(anon_client, first["refresh_token"])
    assert r.status_code == 200, r.get_json()
    second = r.get_json()
    assert second["token_type"] == "Bearer" and second["expires_in"] == 900
    assert second["refresh_token"] != first["refresh_token"]
    assert second["access_token"] != first["access_token"]
    assert me(anon_client, second["access_token"]).get_json()["id"] == alice
    assert refresh(anon_client, second["refresh_token"]).status_code == 200


def test_reusing_a_refresh_token_revokes_the_whole_family(
    anon_client: Any, alice: int, session: Any, accounts: Any
) -> None:
    first = tokens(anon_client, "alice")
    second = refresh(anon_client, first["refresh_token"]).get_json()
    third = refresh(anon_client, second["refresh_token"]).get_json()
    # The first token comes back (stolen and replayed): refused, and its family dies.
    replay = refresh(anon_client, first["refresh_token"])
    assert_unauthorized(replay)
    assert_unauthorized(refresh(anon_client, third["refresh_token"]))
    (row,) = audit_actions(session, "auth.refresh_reuse")
    assert (row.object_type, row.object_id) == ("user", str(alice))
    # Where the replay came from, and filed under the account's region: the centre over it
    # reads it in its log (filed under none, only admins did).
    assert row.request_id == replay.headers["X-Request-ID"]
    assert row.client_address == "127.0.0.1"
    assert row.region_code == COMMUNITY_A
    centre = accounts.client("centre", "county_centre", scope_region=COUNTY)
    r = centre.get("/api/v1/audit", query_string={"action": "auth.refresh_reuse"})
    assert [e["object_id"] for e in r.get_json()["items"]] == [str(alice)]
    # Another sign-in of the same person (another device) is a family of its own.
    assert refresh(anon_client, tokens(anon_client, "alice")["refresh_token"]).status_code == 200


@pytest.mark.parametrize("token", ["x" * 43, "not-a-refresh-token"])
def test_an_unknown_refresh_token_is_refused(anon_client: Any, alice: int, token: str) -> None:
    assert_unauthorized(refresh(anon_client, token))


def test_an_access_token_is_not_a_refresh_token(anon_client: Any, alice: int) -> None:
    access = tokens(anon_client, "alice")["access_token"]
    r = refresh(anon_client, access)
    assert r.status_code in (401, 422), r.get_json()


def test_logout_revokes_the_family_and_only_it(anon_client: Any, alice: int) -> None:
    phone = tokens(anon_client, "alice")
    rotated = refresh(anon_client, phone["refresh_token"]).get_json()
    laptop = tokens(anon_client, "alice")
    r = anon_client.post(
        "/api/v1/auth/logout",
        json={"refresh_token": rotated["refresh_token"]},
        headers=_bearer(rotated["access_token"]),
    )
    assert r.status_code == 204, r.get_json()
    assert_unauthorized(refresh(anon_client, rotated["refresh_token"]))
    assert refresh(anon_client, laptop["refresh_token"]).status_code == 200


def test_logout_needs_an_access_token(anon_client: Any, alice: int) -> None:
    pair = tokens(anon_client, "alice")
    r = anon_client.post("/api/v1/auth/logout", json={"refresh_token": pair["refresh_token"]})
    assert_unauthorized(r)
    assert refresh(anon_client, pair["refresh_token"]).status_code == 200


def test_logout_cannot_revoke_another_users_tokens(anon_client: Any, alice: int, bob: int) -> None:
    alices = tokens(anon_client, "alice")
    bobs = tokens(anon_client, "bob")
    r = anon_client.post(
        "/api/v1/auth/logout",
        json={"refresh_token": alices["refresh_token"]},
        headers=_bearer(bobs["access_token"]),
    )
    assert r.status_code == 204
    assert refresh(anon_client, alices["refresh_token"]).status_code == 200
    # Nobody's sign-in ended: both access tokens still work.
    assert me(anon_client, alices["access_token"]).status_code == 200
    assert me(anon_client, bobs["access_token"]).status_code == 200


def logout(client: Any, pair: dict[str, Any]) -> Any:
    return client.post(
        "/api/v1/auth/logout",
        json={"refresh_token": pair["refresh_token"]},
        headers=_bearer(pair["access_token"]),
    )


def test_logout_ends_the_access_tokens_of_the_sign_in_at_once(
    anon_client: Any, alice: int, server: Any
) -> None:
    """The access token stayed valid for its 15 minutes after sign-out: a phone handed on,
    or a token copied from it, went on reading and writing as the worker."""
    phone = tokens(anon_client, "alice")
    rotated = refresh(anon_client, phone["refresh_token"]).get_json()
    laptop = tokens(anon_client, "alice")
    for access in (phone["access_token"], rotated["access_token"], laptop["access_token"]):
        assert me(anon_client, access).status_code == 200  # checked, and kept in the cache
    assert logout(anon_client, rotated).status_code == 204
    # Both access tokens of that sign-in (before and after its refresh) are refused...
    for access in (rotated["access_token"], phone["access_token"]):
        body = assert_unauthorized(me(anon_client, access))
        assert set(body) == {"code", "status", "message", "errors"}
        assert body["message"] == "The access token is no longer valid."
    # ...for writes too, and by a server that never saw them.
    r = anon_client.post(
        "/api/v1/auth/logout",
        json={"refresh_token": laptop["refresh_token"]},
        headers=_bearer(rotated["access_token"]),
    )
    assert_unauthorized(r)
    assert_unauthorized(me(server().test_client(), rotated["access_token"]))
    # The person's other sign-in goes on.
    assert me(anon_client, laptop["access_token"]).get_json()["id"] == alice
    assert refresh(anon_client, laptop["refresh_token"]).status_code == 200


def test_a_server_that_trusted_a_signed_out_token_refuses_it_when_its_cache_ends(
    anon_client: Any, alice: int, server: Any
) -> None:
    """Another server trusts a token it checked for GRIDAPI_AUTH_CACHE_SECONDS at most."""
    other = server()
    pair = tokens(anon_client, "alice")
    assert me(other.test_client(), pair["access_token"]).status_code == 200
    assert logout(anon_client, pair).status_code == 204
    other.extensions["gridapi"].principals.clear()  # what GRIDAPI_AUTH_CACHE_SECONDS does
    assert_unauthorized(me(other.test_client(), pair["access_token"]))
    # Without a cache (GRIDAPI_AUTH_CACHE_SECONDS=0) it is refused at once everywhere.
    uncached = server(auth_cache_seconds=0.0)
    second = tokens(anon_client, "alice")
    assert me(uncached.test_client(), second["access_token"]).status_code == 200
    assert logout(anon_client, second).status_code == 204
    assert_unauthorized(me(uncached.test_client(), second["access_token"]))


def test_a_replayed_refresh_token_ends_the_access_tokens_of_its_sign_in(
    anon_client: Any, alice: int
) -> None:
    first = tokens(anon_client, "alice")
    second = refresh(anon_client, first["refresh_token"]).get_json()
    assert me(anon_client, second["access_token"]).status_code == 200
    assert_unauthorized(refresh(anon_client, first["refresh_token"]))  # stolen and replayed
    assert_unauthorized(me(anon_client, second["access_token"]))
    assert_unauthorized(me(anon_client, first["access_token"]))


def test_a_request_with_a_checked_token_reads_nothing_for_it(
    anon_client: Any, alice: int, engine: Any
) -> None:
    """The sign-in an access token belongs to is read once per GRIDAPI_AUTH_CACHE_SECONDS
    and process, not on every request."""
    access = tokens(anon_client, "alice")["access_token"]
    assert me(anon_client, access).status_code == 200
    statements: list[str] = []

    def seen(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        statements.append(statement)

    event.listen(engine, "before_cursor_execute", seen)
    try:
        assert me(anon_client, access).status_code == 200
    finally:
        event.remove(engine, "before_cursor_execute", seen)
    assert not [s for s in statements if "refresh_tokens" in s or "users" in s], statements


# ---- throttling ------------------------------------------------------------------------------


def test_five_failures_lock_the_account_even_for_the_right_password(
    anon_client: Any, alice: int, bob: int
) -> None:
    for _ in range(5):
        assert_unauthorized(sign_in(anon_client, "alice", "Wrong-Passw0rd!"))
    r = sign_in(anon_client, "alice")
    assert r.status_code == 429, r.get_json()
    assert r.get_json()["code"] == 429
    assert int(r.headers["Retry-After"]) >= 1
    # The same name in another case or padded is the same account.
    assert sign_in(anon_client, " ALICE ").status_code == 429
    # Another account from the same address is not locked out.
    assert sign_in(anon_client, "bob").status_code == 200


def test_only_the_429_of_the_sign_in_asks_to_wait_and_says_why(
    anon_client: Any, alice: int
) -> None:
    """flask-limiter put `Retry-After: 900` on every answer of the sign-in, a first wrong
    password's 401 too, and its 429 said only "5 per 15 minute"."""
    first = sign_in(anon_client, "alice", "Wrong-Passw0rd!")
    assert_unauthorized(first)
    assert "Retry-After" not in first.headers
    assert "Retry-After" not in sign_in(anon_client, "nobody").headers
    for _ in range(4):
        assert "Retry-After" not in sign_in(anon_client, "alice", "Wrong-Passw0rd!").headers
    r = sign_in(anon_client, "alice")
    assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
    body = r.get_json()
    assert set(body) == {"code", "status", "message", "errors"}
    assert body["message"] == (
        "Too many failed sign-ins for this account from this address (5 per 15 minutes);"
        " retry later."
    )


def test_successful_sign_ins_do_not_count(anon_client: Any, alice: int) -> None:
    for _ in range(4):
        assert_unauthorized(sign_in(anon_client, "alice", "Wrong-Passw0rd!"))
    for _ in range(6):
        assert sign_in(anon_client, "alice").status_code == 200
    assert_unauthorized(sign_in(anon_client, "alice", "Wrong-Passw0rd!"))
    assert sign_in(anon_client, "alice").status_code == 429


def test_the_address_limit_is_higher_and_covers_every_name(
    anon_client: Any, alice: int, bob: int
) -> None:
    for n in range(100):  # 4 failures for each of 25 names: no name reaches its limit
        assert_unauthorized(sign_in(anon_client, f"guess{n % 25}", "Wrong-Passw0rd!"))
    r = sign_in(anon_client, "bob")
    assert r.status_code == 429, r.get_json()
    assert int(r.headers["Retry-After"]) >= 1


def test_failures_by_username_and_by_phone_count_for_one_account(
    anon_client: Any, alice: int
) -> None:
    for _ in range(5):
        assert_unauthorized(sign_in(anon_client, "alice", "Wrong-Passw0rd!"))
    # Refused by the phone number too, the right password included, as a wrong one is.
    assert_unauthorized(sign_in(anon_client, PHONE, "Wrong-Passw0rd!"))
    assert_unauthorized(sign_in(anon_client, PHONE))


def test_a_lockout_does_not_tell_whose_a_phone_number_is(
    anon_client: Any, alice: int, bob: int, session: Any
) -> None:
    """Failures by a phone number locked the account's username out with a 429, and no
    other name: whoever could guess a username learned, one attempt per number, whose number
    it was (and that it had an account). A locked account's other names are refused as a
    wrong password is (401), the right password too, and its audit rows say why."""
    for _ in range(5):
        assert_unauthorized(sign_in(anon_client, PHONE, "Wrong-Passw0rd!"))
    assert sign_in(anon_client, PHONE).status_code == 429  # the name tried, as before
    mine, theirs = (sign_in(anon_client, name, "Wrong-Passw0rd!") for name in ("alice", "bob"))
    assert assert_unauthorized(mine) == assert_unauthorized(theirs)
    assert "Retry-After" not in mine.headers
    assert_unauthorized(sign_in(anon_client, "alice"))  # the lock holds
    assert sign_in(anon_client, "bob").status_code == 200
    rows = sorted(audit_actions(session, "auth.login_failed"), key=lambda row: row.id)
    reasons = [row.summary["reason"] for row in rows if row.object_id == str(alice)]
    assert reasons == ["wrong_password"] * 5 + ["locked"] * 2


def test_failures_from_elsewhere_do_not_lock_the_owner_out_of_their_own_address(
    anon_client: Any, alice: int, session: Any
) -> None:
    """Failures were counted per account alone: whoever knew a grid worker's username could
    keep the worker locked out all day, from anywhere. Counted per account and address, the
    guesser is stopped where they are, and the worker signs in from their own address."""
    for _ in range(5):
        assert_unauthorized(sign_in_from(anon_client, ELSEWHERE, "alice", "Wrong-Passw0rd!"))
    assert sign_in_from(anon_client, ELSEWHERE, "alice").status_code == 429
    # The guesser's other names of the account are refused there as a wrong password is.
    assert_unauthorized(sign_in_from(anon_client, ELSEWHERE, PHONE))
    for login in ("alice", PHONE):
        r = sign_in_from(anon_client, HOME, login)
        assert r.status_code == 200, r.get_json()
    # From home, the worker's own allowance is whole: a typo does not lock them out.
    assert_unauthorized(sign_in_from(anon_client, HOME, "alice", "Wrong-Passw0rd!"))
    assert sign_in_from(anon_client, HOME, "alice").status_code == 200
    logins = [row for row in audit_actions(session, "auth.login") if row.object_id == str(alice)]
    assert [row.client_address for row in logins] == [HOME] * 3


def test_failures_from_many_addresses_are_bounded_per_account(
    alice: int, bob: int, server: Any, session: Any
) -> None:
    """Guessing spread over many addresses still meets the account's own allowance
    (GRIDAPI_LOGIN_RATE_ACCOUNT): the owner signs in from home until it is spent, then
    is refused as a wrong password is, the right password too, with no other answer than
    an unknown name's."""
    client = server(login_rate_account="8 per 15 minutes").test_client()
    for _ in range(5):
        assert_unauthorized(sign_in_from(client, ELSEWHERE, "alice", "Wrong-Passw0rd!"))
    for _ in range(2):
        assert_unauthorized(sign_in_from(client, FAR_AWAY, PHONE, "Wrong-Passw0rd!"))
    assert sign_in_from(client, HOME, "alice").status_code == 200  # 7 of 8 spent
    assert_unauthorized(sign_in_from(client, FAR_AWAY, "alice", "Wrong-Passw0rd!"))
    locked = sign_in_from(client, HOME, "alice")
    unknown = sign_in_from(client, HOME, "nobody", "Wrong-Passw0rd!")
    assert assert_unauthorized(locked) == assert_unauthorized(unknown)
    assert "Retry-After" not in locked.headers
    assert_unauthorized(sign_in_from(client, HOME, PHONE))
    assert sign_in_from(client, HOME, "bob").status_code == 200  # other accounts go on
    rows = sorted(audit_actions(session, "auth.login_failed"), key=lambda row: row.id)
    reasons = [
        (row.client_address, row.summary["reason"]) for row in rows if row.object_id == str(alice)
    ]
    assert reasons == (
        [(ELSEWHERE, "wrong_password")] * 5
        + [(FAR_AWAY, "wrong_password")] * 3
        + [(HOME, "locked")] * 2
    )


def test_a_device_that_signed_in_before_is_not_locked_out_by_guessing_elsewhere(
    alice: int, bob: int, server: Any, session: Any
) -> None:
    """Once guessers from many addresses have spent the account's allowance of every
    address, its owner was refused everywhere, the right password too. A phone that signed
    in before keeps the sign-in's ``device_token`` and sends it: it is trusted, whatever its
    address that day (a phone's changes), and its failures count on it alone."""
    client = server(login_rate_account="6 per 15 minutes").test_client()
    first = sign_in_from(client, HOME, "alice")
    assert first.status_code == 200
    device = first.get_json()["device_token"]
    for address in (ELSEWHERE, FAR_AWAY, "192.0.2.77"):
        for _ in range(2):
            assert_unauthorized(sign_in_from(client, address, "alice", "Wrong-Passw0rd!"))
    phone_today = "192.0.2.200"  # the owner's phone, on another network than at first
    assert_unauthorized(sign_in_from(client, phone_today, "alice"))  # without the token
    r = sign_in_from(client, phone_today, "alice", device=device)
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["device_token"] == device  # answered back while valid
    assert me(client, r.get_json()["access_token"]).status_code == 200
    # By the phone number too: the token is the account's, whatever name signs in.
    assert sign_in_from(client, phone_today, PHONE, device=device).status_code == 200
    # Someone else's token, an altered one, a forged one: not trusted (401 as before).
    bobs = sign_in_from(client, FAR_AWAY, "bob").get_json()["device_token"]
    altered = device[:-1] + ("0" if device[-1] != "0" else "1")
    forged = f"gd1.{alice}.{int(time.time())}.{'ab' * 12}.{'0' * 32}"
    for n, token in enumerate((bobs, altered, forged, "", "x" * 200)):
        assert_unauthorized(sign_in_from(client, f"192.0.2.{210 + n}", "alice", device=token))
    # Nor is it a credential: as a bearer token it is refused.
    assert_unauthorized(me(client, device))
    rows = sorted(audit_actions(session, "auth.login"), key=lambda row: row.id)
    assert [row.client_address for row in rows if row.object_id == str(alice)] == [
        HOME,
        phone_today,
        phone_today,
    ]


def test_a_stolen_device_token_buys_a_guesser_its_own_allowance_once(
    alice: int, server: Any
) -> None:
    """Failures on a trusted device count against the device's allowance
    (GRIDAPI_LOGIN_RATE_ACCOUNT_ADDRESS) and not the account's of every address; once it is
    spent the token counts for nothing, and the account's allowances hold as without it."""
    client = server(login_rate_account="6 per 15 minutes").test_client()
    device = sign_in_from(client, HOME, "alice").get_json()["device_token"]
    places = [f"198.51.100.{n}" for n in range(1, 12)]
    for address in places[:5]:  # five guesses on the stolen token, from five addresses
        assert_unauthorized(
            sign_in_from(client, address, "alice", "Wrong-Passw0rd!", device=device)
        )
    for address in places[5:11]:  # then six more: the account's allowance of every address
        assert_unauthorized(
            sign_in_from(client, address, "alice", "Wrong-Passw0rd!", device=device)
        )
    # Both spent: the right password is refused, with the token or without, from anywhere.
    assert_unauthorized(sign_in_from(client, "192.0.2.201", "alice", device=device))
    assert_unauthorized(sign_in_from(client, "192.0.2.202", "alice"))


def test_a_refresh_answers_no_device_token(anon_client: Any, alice: int) -> None:
    pair = tokens(anon_client, "alice")
    refreshed = refresh(anon_client, pair["refresh_token"]).get_json()
    assert set(refreshed) == {"access_token", "refresh_token", "token_type", "expires_in"}


def test_a_device_token_is_honoured_for_180_days_for_its_account_only() -> None:
    from gridapi.security.tokens import device_of, issue_device_token

    key, now = b"k" * 32, 1_800_000_000.0
    token = issue_device_token(key, 42, now=now)
    device = device_of(key, token, 42, now=now + 179 * 86400)
    assert device is not None and device in token
    assert device_of(key, token, 42, now=now + 181 * 86400) is None  # expired
    assert device_of(key, token, 43, now=now) is None  # another account's
    assert device_of(b"j" * 32, token, 42, now=now) is None  # another server's key
    assert issue_device_token(key, 42, now=now) != token  # a new device each time


def test_the_account_allowance_of_every_address_is_shared_by_every_server(
    alice: int, server: Any
) -> None:
    limited = {"login_rate_account": "6 per 15 minutes"}
    first, second = server(**limited).test_client(), server(**limited).test_client()
    for address in (ELSEWHERE, FAR_AWAY, "192.0.2.77"):
        for client in (first, second):
            assert_unauthorized(sign_in_from(client, address, "alice", "Wrong-Passw0rd!"))
    assert_unauthorized(sign_in_from(first, HOME, "alice"))


def test_wrong_current_passwords_spend_the_allowance_of_every_address_too(
    alice: int, server: Any
) -> None:
    client = server(login_rate_account="7 per 15 minutes").test_client()
    for _ in range(5):
        assert_unauthorized(sign_in_from(client, ELSEWHERE, "alice", "Wrong-Passw0rd!"))
    access = tokens(client, "alice")["access_token"]
    answers = [
        change_password(client, access, f"Wrong-Passw0rd-{i}", NEW_PASSWORD).status_code
        for i in range(3)
    ]
    assert answers == [422, 422, 429], answers


# ---- password change -------------------------------------------------------------------------


def change_password(client: Any, access: str, current: str, new: str) -> Any:
    return client.post(
        "/api/v1/auth/password",
        json={"current_password": current, "new_password": new},
        headers=_bearer(access),
    )


def test_a_wrong_current_password_is_refused(anon_client: Any, alice: int) -> None:
    access = tokens(anon_client, "alice")["access_token"]
    r = change_password(anon_client, access, "Not-The-Passw0rd", NEW_PASSWORD)
    assert r.status_code == 422, r.get_json()
    assert "current_password" in r.get_json()["errors"]["json"]
    assert sign_in(anon_client, "alice").status_code == 200


def test_guessing_the_current_password_is_throttled_as_sign_ins_are(
    anon_client: Any, alice: int
) -> None:
    """30 wrong current passwords with a (stolen) access token were 30 × 422, and the right
    one then worked: the account's sign-in allowance (5 per 15 minutes) applies."""
    access = tokens(anon_client, "alice")["access_token"]
    answers = [
        change_password(anon_client, access, f"Wrong-Passw0rd-{i}", NEW_PASSWORD).status_code
        for i in range(6)
    ]
    assert answers == [422] * 5 + [429], answers
    r = change_password(anon_client, access, PASSWORD, NEW_PASSWORD)
    assert r.status_code == 429 and int(r.headers["Retry-After"]) > 0
    assert r.get_json()["code"] == 429
    # The headers of the limit that refused, as the sign-in's own 429 carries them.
    assert (r.headers["X-RateLimit-Limit"], r.headers["X-RateLimit-Remaining"]) == ("5", "0")
    wait = int(r.headers["X-RateLimit-Reset"]) - time.time()
    assert abs(wait - int(r.headers["Retry-After"])) <= 2
    assert_unauthorized(sign_in(anon_client, "alice"))  # and no sign-in either


def test_a_huge_new_password_is_refused_by_its_length(anon_client: Any, alice: int) -> None:
    """5 MB of digits took seconds and 400 MB to check against the phone number."""
    access = tokens(anon_client, "alice")["access_token"]
    r = change_password(anon_client, access, PASSWORD, "7" * 5_000_000)
    assert r.status_code == 422
    assert r.get_json()["errors"] == {
        "json": {"new_password": ["Length must be between 1 and 256."]}
    }


@pytest.mark.parametrize(
    "weak",
    [
        "short1A!",
        "alllowercaseletters",
        "Xx-alice-2024",
        "Password123",
        # leaked ones with a symbol put inside, or shifted digits (were taken)
        "Abc@123456",
        "Pass@word123",
        "1qaz@WSX3edc",
    ],
)
def test_a_weak_new_password_is_refused(anon_client: Any, alice: int, weak: str) -> None:
    access = tokens(anon_client, "alice")["access_token"]
    r = change_password(anon_client, access, PASSWORD, weak)
    assert r.status_code == 422, r.get_json()
    assert r.get_json()["errors"]["json"]["new_password"]
    assert sign_in(anon_client, "alice").status_code == 200
    assert me(anon_client, access).status_code == 200


def test_a_new_password_containing_the_phone_number_is_refused(
    anon_client: Any, alice: int
) -> None:
    access = tokens(anon_client, "alice")["access_token"]
    r = change_password(anon_client, access, PASSWORD, f"Xy-{PHONE}")
    assert r.status_code == 422, r.status_code
    assert r.get_json()["errors"]["json"]["new_password"]


def test_after_a_change_only_the_new_password_works_and_old_tokens_die(
    anon_client: Any, alice: int, session: Any
) -> None:
    before = tokens(anon_client, "alice")
    other_device = tokens(anon_client, PHONE)
    r = change_password(anon_client, before["access_token"], PASSWORD, NEW_PASSWORD)
    assert r.status_code == 204, r.get_json()
    assert_unauthorized(sign_in(anon_client, "alice"))
    after = tokens(anon_client, "alice", NEW_PASSWORD)
    assert me(anon_client, after["access_token"]).status_code == 200
    for old in (before, other_device):
        assert_unauthorized(me(anon_client, old["access_token"]))
        assert_unauthorized(refresh(anon_client, old["refresh_token"]))
    assert refresh(anon_client, after["refresh_token"]).status_code == 200
    (row,) = audit_actions(session, "user.password_change")
    assert row.object_id == str(alice)


# ---- rehash on sign-in -----------------------------------------------------------------------


def test_an_outdated_hash_is_upgraded_at_sign_in(
    anon_client: Any, alice: int, session: Any, settings: Any
) -> None:
    old_hash = PasswordHasher(time_cost=2, memory_cost=2048).hash(PASSWORD)
    session.execute(update(User).where(User.id == alice).values(password_hash=old_hash))
    session.commit()
    assert sign_in(anon_client, "alice").status_code == 200
    session.rollback()
    new_hash = session.scalar(select(User.password_hash).where(User.id == alice))
    assert new_hash != old_hash
    assert f"m={settings.argon2_memory_kib},t={settings.argon2_time_cost}," in new_hash
    assert PasswordHasher().verify(new_hash, PASSWORD)
    assert sign_in(anon_client, "alice").status_code == 200
    session.rollback()
    assert session.scalar(select(User.password_hash).where(User.id == alice)) == new_hash


def test_a_client_gets_only_scopes_its_registrar_holds(
    app: Any, client: Any, accounts: Any, factory: Any
) -> None:
    """Roles are data a county adjusts: a county centre given `clients:manage` registered a
    key with `webhooks:manage`, a permission its own role lacks."""
    from gridapi.models import Role

    factory.regions()
    with app.extensions["gridapi"].sessions.begin() as session:
        role = session.get(Role, "county_centre")
        role.permissions = sorted({*role.permissions, "clients:manage"})
    centre = accounts.client("centre", "county_centre", scope_region=COUNTY)
    body = {"name": "x", "scope_region": TOWNSHIP}
    r = centre.post("/api/v1/clients", json={**body, "scopes": ["cases:read", "webhooks:manage"]})
    assert r.status_code == 422, r.get_json()
    assert list(r.get_json()["errors"]["json"]) == ["scopes"]
    assert "webhooks:manage" in r.get_json()["errors"]["json"]["scopes"][0]
    assert client.get("/api/v1/clients").get_json()["items"] == []
    r = centre.post("/api/v1/clients", json={**body, "scopes": ["cases:read", "grids:read"]})
    assert r.status_code == 201, r.get_json()
    # an admin holds every permission
    r = client.post("/api/v1/clients", json={"name": "y", "scopes": ["webhooks:manage"]})
    assert r.status_code == 201, r.get_json()


def test_a_sign_in_racing_a_password_reset_does_not_outlive_it(
    app: Any, engine: Any, anon_client: Any, alice: int
) -> None:
    """A sign-in with the old password read the account, checked the password (argon2 takes
    a while) and inserted its refresh token after a reset had revoked the account's tokens
    but before the reset committed (PostgreSQL): the reset's revocation missed that token,
    which then refreshed into sessions that the new password did not end. The sign-in
    re-reads the account under a lock now, and refuses once its password has changed."""
    from gridapi.services import identity as svc

    from ..races import send_while_uncommitted

    st = app.extensions["gridapi"]
    with st.sessions() as session:  # an admin's reset, written, not committed
        svc.set_password(session, session.get(User, alice), NEW_PASSWORD, phone_key=st.phone_key)
        r = send_while_uncommitted(
            engine,
            session,
            "refresh_tokens",
            lambda: sign_in(anon_client, "alice"),
            waits_in="SELECT users.",
        )
    if r.status_code == 200:  # it signed in before the reset: the reset must still end it
        assert refresh(anon_client, r.get_json()["refresh_token"]).status_code == 401
    else:
        assert r.status_code == 401, r.get_json()
    assert sign_in(anon_client, "alice").status_code == 401
    assert sign_in(anon_client, "alice", NEW_PASSWORD).status_code == 200


def test_a_refresh_racing_a_password_reset_does_not_outlive_it(
    app: Any, engine: Any, client: Any, anon_client: Any, alice: int
) -> None:
    """A refresh (holding its token's row) inserted the new token while an admin's reset
    waited to revoke the old one (PostgreSQL): the reset's revocation, begun before that
    insert, missed the new token, which went on refreshing after the reset. A refresh
    takes the account's lock first now, so the reset waits for it and then revokes the
    new token too."""
    from gridapi.services import identity as svc

    from ..races import send_while_uncommitted

    st = app.extensions["gridapi"]
    pair = tokens(anon_client, "alice")
    with st.sessions() as session:  # a refresh, written, not committed
        issued = svc.refresh(
            session,
            pair["refresh_token"],
            signer=st.tokens,
            refresh_days=st.settings.refresh_token_days,
        )
        r = send_while_uncommitted(
            engine,
            session,
            "refresh_tokens",
            lambda: client.post(
                f"/api/v1/users/{alice}/password", json={"new_password": NEW_PASSWORD}
            ),
            waits_in="UPDATE ",
        )
    assert r.status_code == 204, r.get_json()
    assert refresh(anon_client, issued.refresh_token).status_code == 401
    assert sign_in(anon_client, "alice", NEW_PASSWORD).status_code == 200


@pytest.mark.parametrize("password", [PASSWORD, "Wrong-Passw0rd!"])
def test_a_report_does_not_wait_for_a_sign_in_checking_its_password(
    app: Any,
    client: Any,
    world: Any,
    anon_client: Any,
    alice: int,
    monkeypatch: Any,
    password: str,
) -> None:
    """On SQLite a sign-in began as a writer (BEGIN IMMEDIATE, as every POST) and checked
    the password (argon2: a tenth of a second to seconds of CPU, by design) holding the
    database's one write lock: every report, step and upload of every phone waited for each
    sign-in, a failed one by anybody included. The password is checked in a plain read now;
    the account is read again under its lock before the tokens are written."""
    from gridapi.services import identity as svc

    answer = report_while_held(
        client, monkeypatch, svc, "verify_password", lambda: sign_in(anon_client, "alice", password)
    )
    if password == PASSWORD:
        assert answer.status_code == 200, answer.get_json()
        assert refresh(anon_client, answer.get_json()["refresh_token"]).status_code == 200
    else:
        assert_unauthorized(answer)


def test_a_report_does_not_wait_for_a_password_change(
    app: Any, client: Any, world: Any, anon_client: Any, alice: int, monkeypatch: Any
) -> None:
    """A password change checked the current password and hashed the new one (argon2,
    twice) holding SQLite's one write lock, as a sign-in did: both happen in a plain read
    now, and the account is read again under its lock before the new hash is written."""
    from gridapi.services import identity as svc

    access = tokens(anon_client, "alice")["access_token"]
    verify = svc.verify_password
    answer = report_while_held(
        client,
        monkeypatch,
        svc,
        "verify_password",
        lambda: change_password(anon_client, access, PASSWORD, NEW_PASSWORD),
    )
    assert answer.status_code == 204, answer.get_json()
    monkeypatch.setattr(svc, "verify_password", verify)
    assert sign_in(anon_client, "alice").status_code == 401
    assert sign_in(anon_client, "alice", NEW_PASSWORD).status_code == 200
