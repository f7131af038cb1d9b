"""The bounds of an API key's rate limit: amounts and periods beyond them are no limit."""

from __future__ import annotations

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
