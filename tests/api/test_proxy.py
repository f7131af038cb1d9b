"""Behind reverse proxies (GRIDAPI_PROXY_HOPS): the client's own address goes into audit rows
and rate limits by address, the scheme it used into links; without the setting the
forwarding headers are nobody's word and change nothing."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from sqlalchemy import text

from gridapi.config import Settings

from ..factories import COMMUNITY_A, PASSWORD
from .test_auth import assert_unauthorized, sign_in
from .test_cases import center, report_body

# What nginx sends with `proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for`: the
# client's own header (anything it likes), then the address nginx saw.
FORGED = "10.1.2.3"
CLIENT = "203.0.113.7"


def forwarded(client_address: str = CLIENT, *, forged: str = FORGED) -> dict[str, str]:
    return {"X-Forwarded-For": f"{forged}, {client_address}", "X-Forwarded-Proto": "https"}


@pytest.fixture
def hops() -> int:
    """Proxies in front of the application (a test parametrizes it to change it)."""
    return 1


@pytest.fixture
def settings(settings: Settings, hops: int) -> Settings:
    # An address limit of 30 (the default is higher) keeps the tests of it short.
    return replace(settings, proxy_hops=hops, login_rate_address="30 per 15 minutes")


@pytest.fixture
def alice(factory: Any, accounts: Any) -> int:
    """A community officer who signs in as 'alice'."""
    factory.regions()
    return accounts.create("alice", "community_officer", scope_region=COMMUNITY_A)


def _addresses(session: Any, action: str) -> list[str]:
    session.rollback()  # a fresh snapshot
    rows = session.execute(
        text("SELECT client_address FROM audit_log WHERE action = :a ORDER BY id"), {"a": action}
    )
    return [r[0] for r in rows]


def test_a_reports_audit_row_keeps_the_address_the_proxy_saw(client, world, session):
    r = client.post("/api/v1/cases", json=report_body(*center(0)), headers=forwarded())
    assert r.status_code == 201, r.get_json()
    # Also on the report's own statement path (PostgreSQL), which writes the row itself.
    assert _addresses(session, "case.report") == [CLIENT]


def test_a_sign_in_is_audited_with_the_clients_address(anon_client, alice, session):
    assert sign_in(anon_client, "alice").status_code == 200  # from 127.0.0.1: no proxy header
    assert sign_in_from(anon_client, CLIENT, "alice", PASSWORD).status_code == 200
    assert _addresses(session, "auth.login") == ["127.0.0.1", CLIENT]


@pytest.mark.parametrize("hops", [0])
def test_without_proxies_the_forwarding_headers_change_nothing(client, world, session):
    r = client.post("/api/v1/cases", json=report_body(*center(0)), headers=forwarded())
    assert r.status_code == 201, r.get_json()
    assert _addresses(session, "case.report") == ["127.0.0.1"]


def test_the_address_limit_counts_each_client_behind_the_proxy(anon_client, alice):
    # Before GRIDAPI_PROXY_HOPS every request came from the proxy: 30 failures of anyone
    # locked everyone out of signing in.
    for n in range(30):
        r = sign_in_from(anon_client, CLIENT, f"guess{n % 10}", "Wrong-Passw0rd!", forged=str(n))
        assert_unauthorized(r)
    r = sign_in_from(anon_client, CLIENT, "alice", PASSWORD)
    assert r.status_code == 429, r.get_json()
    assert int(r.headers["Retry-After"]) >= 1
    assert sign_in_from(anon_client, "203.0.113.8", "alice", PASSWORD).status_code == 200


@pytest.mark.parametrize("hops", [0])
def test_without_proxies_a_forged_header_does_not_escape_the_address_limit(anon_client, alice):
    for n in range(30):
        r = sign_in_from(anon_client, f"198.51.100.{n}", f"guess{n % 10}", "Wrong-Passw0rd!")
        assert_unauthorized(r)
    r = sign_in_from(anon_client, "198.51.100.99", "alice", PASSWORD)
    assert r.status_code == 429, r.get_json()


@pytest.mark.parametrize(("hops", "scheme"), [(1, "https"), (0, "http")])
def test_links_carry_the_scheme_the_client_used(anon_client, scheme):
    r = anon_client.get("/open311/v2/discovery.json", headers=forwarded())
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["endpoints"][0]["url"] == f"{scheme}://localhost/open311/v2/"


@pytest.mark.parametrize("raw", ["-1", "one"])
def test_a_bad_proxy_count_stops_start_up_with_its_name(raw):
    with pytest.raises(ValueError, match="GRIDAPI_PROXY_HOPS"):
        Settings.from_env({"GRIDAPI_PROXY_HOPS": raw})


def sign_in_from(
    client: Any, address: str, login: str, password: str, *, forged: str = FORGED
) -> Any:
    return client.post(
        "/api/v1/auth/token",
        json={"username": login, "password": password},
        headers=forwarded(address, forged=forged),
    )
