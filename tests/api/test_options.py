"""OPTIONS answers as the rest of the API: 204 with Allow, never Flask's empty text/html."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize(
    "path,methods",
    [
        ("/api/v1/cases", {"GET", "HEAD", "POST", "OPTIONS"}),
        ("/api/v1/cases/1", {"GET", "HEAD", "OPTIONS"}),
        ("/api/v1/me/tasks", {"GET", "HEAD", "OPTIONS"}),
        ("/api/v1/health", {"GET", "HEAD", "OPTIONS"}),
        ("/openapi.json", {"GET", "HEAD", "OPTIONS"}),
        ("/open311/v2/requests.json", {"GET", "HEAD", "POST", "OPTIONS"}),
    ],
)
def test_options_is_204_with_allow_and_no_body(anon_client, path, methods):
    """OPTIONS on any path answered 200 with an empty text/html body (Flask's default): the
    one answer of the API neither JSON nor documented. Nothing is needed to ask it: a
    browser's preflight carries no credentials."""
    r = anon_client.options(
        path, headers={"Origin": "https://app.example", "Access-Control-Request-Method": "GET"}
    )
    assert r.status_code == 204
    assert "Content-Type" not in r.headers
    assert r.data == b""
    assert {m.strip() for m in r.headers["Allow"].split(",")} == methods
    assert r.headers["X-Request-ID"]


def test_options_on_no_resource_is_the_json_404(anon_client):
    r = anon_client.options("/api/v1/no-such-thing")
    assert r.status_code == 404
    assert r.mimetype == "application/json"
    assert r.get_json()["code"] == 404
