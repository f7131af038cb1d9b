"""The bounds of an API key's rate limit: amounts and periods beyond them are no limit."""

from __future__ import annotations

import time
from typing import Any

import pytest


def register(client: Any, limit: str) -> Any:
    body = {"name": "hotline", "scopes": ["grids:read"], "rate_limit": limit}
    return client.post("/api/v1/clients", json=body)


@pytest.mark.parametrize(
    ("limit", "message"),
    [
        ("1 per 99999999999999999999 second", "a period of at most 1000 of its unit"),
        ("1 per 1001 seconds", "a period of at most 1000 of its unit"),
        ("99999999999999999999 per second", "at most 1000000 requests per period"),
        ("1000001/minute", "at most 1000000 requests per period"),
        ("1 per 2 years", "a period of at most a year (366 days)"),
        ("5 per 400 days", "a period of at most a year (366 days)"),
    ],
)
def test_a_rate_limit_beyond_its_bounds_is_422_and_makes_no_client(
    client: Any, limit: str, message: str
) -> None:
    """ "1 per 99999999999999999999 second" was taken (201); the key's second request was
    429 with Retry-After 99999999998203756544. "99999999999999999999 per second" was no
    limit at all."""
    r = register(client, limit)
    assert r.status_code == 422, r.get_json()
    assert r.get_json()["errors"] == {"json": {"rate_limit": [message]}}
    assert client.get("/api/v1/clients").get_json()["items"] == []


@pytest.mark.parametrize(
    "limit", ["1000000/second", "1 per 1000 seconds", "1 per year", "2 per 366 days"]
)
def test_a_rate_limit_at_its_bounds_is_taken(client: Any, limit: str) -> None:
    r = register(client, limit)
    assert r.status_code == 201, r.get_json()
    assert r.get_json()["rate_limit"] == limit


def test_a_key_over_a_long_limit_is_told_to_wait_at_most_its_period(app: Any, client: Any) -> None:
    key = register(client, "1 per 1000 seconds").get_json()["api_key"]
    anon = app.test_client()
    assert anon.get("/api/v1/grids", headers={"X-API-Key": key}).status_code == 200
    refused = anon.get("/api/v1/grids", headers={"X-API-Key": key})
    assert refused.status_code == 429
    assert 0 < int(refused.headers["Retry-After"]) <= 1000


RATE_HEADERS = ("X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset")


def test_a_keys_answers_and_its_429_carry_the_rate_limit_headers_a_sign_ins_do(
    app: Any, client: Any, accounts: Any
) -> None:
    """A key over its limit got 429 with Retry-After only, and its answers no X-RateLimit-*
    at all, while the sign-in's answers and 429s (flask-limiter's) carry all of them."""
    key = register(client, "3 per minute").get_json()["api_key"]
    anon = app.test_client()
    answers = [anon.get("/api/v1/grids", headers={"X-API-Key": key}) for _ in range(3)]
    assert [r.status_code for r in answers] == [200] * 3
    assert [r.headers.get("X-RateLimit-Limit") for r in answers] == ["3"] * 3
    assert [r.headers.get("X-RateLimit-Remaining") for r in answers] == ["2", "1", "0"]
    assert all("Retry-After" not in r.headers for r in answers)
    refused = [anon.get("/api/v1/grids", headers={"X-API-Key": key}) for _ in range(2)]
    reset = int(answers[0].headers["X-RateLimit-Reset"])
    for r in refused:
        assert r.status_code == 429
        body = r.get_json()
        assert set(body) == {"code", "status", "message", "errors"} and body["code"] == 429
        assert (r.headers["X-RateLimit-Limit"], r.headers["X-RateLimit-Remaining"]) == ("3", "0")
        assert int(r.headers["X-RateLimit-Reset"]) == reset
        assert abs(reset - time.time() - int(r.headers["Retry-After"])) <= 2
        assert 1 <= int(r.headers["Retry-After"]) <= 60
    # The sign-in's 429 carries the same headers, no other.
    for _ in range(6):
        locked = anon.post("/api/v1/auth/token", json={"username": "nobody", "password": "x"})
    assert locked.status_code == 429
    assert {h for h in RATE_HEADERS + ("Retry-After",) if h in locked.headers} == {
        h for h in RATE_HEADERS + ("Retry-After",) if h in refused[0].headers
    }
    # A person's access token has no per-request limit: none of them.
    me = client.get("/api/v1/grids")
    assert me.status_code == 200 and not [h for h in RATE_HEADERS if h in me.headers]


def test_a_key_under_its_limit_gets_the_headers_on_an_error_too(app: Any, client: Any) -> None:
    key = register(client, "5 per minute").get_json()["api_key"]
    anon = app.test_client()
    ok = anon.get("/api/v1/grids", headers={"X-API-Key": key})
    missing = anon.get("/api/v1/cases/999999", headers={"X-API-Key": key})
    assert ok.status_code == 200 and missing.status_code in (403, 404)
    assert [ok.headers["X-RateLimit-Remaining"], missing.headers["X-RateLimit-Remaining"]] == [
        "4",
        "3",
    ]
