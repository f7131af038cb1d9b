"""What schemathesis found (tests/fuzz), each pinned by a plain test: ill-formed codes and
huge numbers are 422 not 500, path values the spec refuses are 404, body integers and
booleans are JSON's own, optional bodies may be left out, uploads refuse unknown parts,
track points need a CRS name, and an administrator cannot lock themselves out."""

from __future__ import annotations

import io
import json
import struct
import zlib
from datetime import UTC, datetime
from typing import Any

import pytest

from ..factories import COMMUNITY_A, LAT0, LON0, STEP

A1 = COMMUNITY_A + "001"
ERROR_KEYS = {"code", "status", "message", "errors"}
TOO_BIG = 10**30


def error(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, (response.status_code, response.get_data(as_text=True))
    body = response.get_json()
    assert set(body) == ERROR_KEYS and body["code"] == status
    return body


def ok(response: Any, status: int = 200) -> Any:
    assert response.status_code == status, (response.status_code, response.get_json())
    return response.get_json()


def png() -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00\x00"))
        + chunk(b"IEND", b"")
    )


@pytest.fixture
def town(factory):  # type: ignore[no-untyped-def]
    factory.regions()
    factory.grid_version()
    return factory


def new_case(client) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    lon, lat = round(LON0 + 0.5 * STEP, 6), round(LAT0 + 0.5 * STEP, 6)
    body = {
        "category": "0101",
        "description": "楼道堆放杂物",
        "location": {"type": "Point", "coordinates": [lon, lat]},
    }
    return ok(client.post("/api/v1/cases", json=body), 201)


@pytest.mark.parametrize(
    "url",
    [
        "/api/v1/users?region=400000000000",  # no such province: 12 digits, still ill-formed
        "/api/v1/departments?region=000000000000",
        "/api/v1/grids/export?region=000000000000",
    ],
)
def test_an_ill_formed_region_code_in_a_query_is_422(client, url):
    body = error(client.get(url), 422)
    # Said in the message, or (the grids, since their query schema checks the code's
    # structure) on the field itself.
    named = body["errors"].get("query", {}).get("region")
    assert "code" in body["message"].lower() or named, body


def test_a_number_beyond_what_the_database_stores_is_422(client):
    error(client.get(f"/api/v1/users?after={TOO_BIG}"), 422)


@pytest.mark.parametrize(
    "path",
    [
        f"/api/v1/cases/{2**31}",
        f"/api/v1/cases/{TOO_BIG}",
        "/api/v1/cases/0",
        "/api/v1/cases/-1",
        "/api/v1/regions/32050800100x",
        "/api/v1/calendar/not-a-day",
    ],
)
def test_path_values_outside_the_spec_are_404_not_500(client, path):
    method = client.delete if "calendar" in path else client.get
    error(method(path), 404)


def test_the_spec_publishes_the_path_converters(client):
    spec = client.get("/openapi.json").get_json()
    case_id = spec["paths"]["/api/v1/cases/{case_id}"]["parameters"][0]["schema"]
    assert case_id == {"type": "integer", "format": "int32", "minimum": 1, "maximum": 2**31 - 1}
    code = spec["paths"]["/api/v1/regions/{code}"]["parameters"][0]["schema"]
    assert code["pattern"] == "^[0-9]{1,20}$"
    day = spec["paths"]["/api/v1/calendar/{day}"]["parameters"][0]["schema"]
    assert day["format"] == "date"


@pytest.mark.parametrize("assignee", [1.0, 2.5, True, "1"])
def test_body_integers_are_json_integers(client, town, assignee):
    body = {"title": "走访", "assignee_id": assignee, "due_in": {"amount": 3, "unit": "days"}}
    errors = error(client.post("/api/v1/tasks", json=body), 422)["errors"]
    assert "assignee_id" in errors["json"]


def test_a_huge_id_in_a_body_is_422(client, town):
    for big in (2**63, TOO_BIG):
        body = {"title": "走访", "assignee_id": big, "due_in": {"amount": 3, "unit": "days"}}
        sent = json.dumps(body)  # the test client's own encoder stops at 64 bits
        error(client.post("/api/v1/tasks", data=sent, content_type="application/json"), 422)


@pytest.mark.parametrize("force", [0, 1, "yes", "true", None])
def test_body_booleans_are_json_booleans(client, town, force):
    version = town.grid_version(activate=False)
    response = client.post(f"/api/v1/grid-versions/{version['id']}/activate", json={"force": force})
    assert "force" in error(response, 422)["errors"]["json"]


def test_query_booleans_and_integers_stay_text(client, town):
    # Query strings are text: "true" and "5" are how a boolean and a number are written there.
    ok(client.get("/api/v1/categories?include_inactive=true"))
    ok(client.get("/api/v1/users?limit=5"))


def test_a_body_that_requires_nothing_is_optional_in_the_spec_and_may_be_left_out(client):
    spec = client.get("/openapi.json").get_json()["paths"]
    assert spec["/api/v1/tasks/{task_id}/complete"]["post"]["requestBody"]["required"] is False
    assert spec["/api/v1/houses/{house_id}"]["patch"]["requestBody"]["required"] is False
    assert spec["/api/v1/cases"]["post"]["requestBody"]["required"] is True
    error(client.post("/api/v1/cases"), 422)  # its required members are missing


def test_an_upload_with_an_unknown_form_part_is_422(client, town):
    case = new_case(client)
    response = client.post(
        f"/api/v1/cases/{case['id']}/attachments",
        data={"file": (io.BytesIO(png()), "photo.png", "image/png"), "note": "extra"},
        content_type="multipart/form-data",
    )
    assert error(response, 422)["errors"]["files"]["note"] == ["Unknown field."]
    response = client.post(
        f"/api/v1/cases/{case['id']}/attachments",
        data={"file": (io.BytesIO(png()), "photo.png", "image/png")},
        content_type="multipart/form-data",
    )
    ok(response, 201)


@pytest.mark.parametrize("crs", [["wgs84"], {"name": "wgs84"}, 4326, None])
def test_a_track_point_crs_must_be_a_name(accounts, town, crs):
    worker = accounts.client("worker", "grid_worker", grids=[A1])
    patrol = ok(worker.post("/api/v1/patrols", json={}), 201)
    lon, lat = round(LON0 + 0.5 * STEP, 6), round(LAT0 + 0.5 * STEP, 6)
    point = {"t": datetime.now(UTC).isoformat(), "lon": lon, "lat": lat, "crs": crs}
    body = error(
        worker.post(f"/api/v1/patrols/{patrol['id']}/points", json={"points": [point]}), 422
    )
    assert "crs" in str(body["errors"])


def test_an_administrator_cannot_lock_themselves_out(client, accounts, town):
    me = ok(client.get("/api/v1/me"))["id"]
    body = error(client.patch(f"/api/v1/users/{me}", json={"role": "grid_worker"}), 422)
    assert body["errors"]["json"]["role"] == ["not for your own account"]
    error(client.patch(f"/api/v1/users/{me}", json={"is_active": False}), 422)
    assert ok(client.get("/api/v1/me"))["role"] == "admin"
    # The same role again is no change, and another account's role can be changed.
    ok(client.patch(f"/api/v1/users/{me}", json={"role": "admin"}))
    other = accounts.create("clerk", "township_office", scope_region="320508001000")
    assert ok(client.patch(f"/api/v1/users/{other}", json={"role": "grid_chief"}))


def test_a_fields_list_longer_than_the_spec_allows_is_422(client):
    error(client.get("/api/v1/me?fields=" + "a" * 1001), 422)
    ok(client.get("/api/v1/me?fields=id"))


def test_published_patterns_are_ecma_262(client):
    text = client.get("/openapi.json").get_data(as_text=True)
    assert "\\\\Z" not in text
    spec = client.get("/openapi.json").get_json()
    code = spec["components"]["schemas"]["CategoryCreate"]["properties"]["code"]["pattern"]
    assert code == "^([0-9]{2}|[0-9]{4})$"
