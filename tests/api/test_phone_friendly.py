"""What phones on slow networks rely on: gzip, sparse fields, ETag/If-None-Match (304) on
lists and boundaries, timestamps with time zones."""

from __future__ import annotations

import codecs
import gzip
import json
import re

import pytest

from ..factories import COMMUNITY_A, LAT0, LON0, STEP

A1 = COMMUNITY_A + "001"


def report(client) -> dict:  # type: ignore[no-untyped-def]
    body = {
        "category": "0101",
        "description": "手机友好",
        "location": {"type": "Point", "coordinates": [LON0 + 0.5 * STEP, LAT0 + 0.5 * STEP]},
    }
    r = client.post("/api/v1/cases", json=body)
    assert r.status_code == 201, r.get_json()
    return r.get_json()


def test_json_answers_are_gzipped_when_asked(client, world):
    for _ in range(5):
        report(client)
    plain = client.get("/api/v1/cases")
    assert "Content-Encoding" not in plain.headers
    zipped = client.get("/api/v1/cases", headers={"Accept-Encoding": "gzip"})
    assert zipped.headers["Content-Encoding"] == "gzip"
    assert "Accept-Encoding" in zipped.headers["Vary"]
    body = json.loads(gzip.decompress(zipped.get_data()))
    assert body == plain.get_json()
    assert len(zipped.get_data()) < len(plain.get_data()) / 3


def test_sparse_fields_keep_what_is_asked_for(client, world):
    case = report(client)
    items = client.get("/api/v1/cases?fields=status,grid.code").get_json()["items"]
    assert items == [{"id": case["id"], "status": "reported", "grid": {"code": A1}}]
    one = client.get(f"/api/v1/cases/{case['id']}?fields=number").get_json()
    assert one == {"id": case["id"], "number": case["number"]}
    # a list endpoint with a strict query schema accepts `fields` too
    r = client.get("/api/v1/regions?fields=code,name&limit=2")
    assert r.status_code == 200
    assert all(set(i) <= {"id", "code", "name"} for i in r.get_json()["items"])


def test_lists_answer_304_when_nothing_changed(client, world):
    report(client)
    first = client.get("/api/v1/cases")
    etag = first.headers["ETag"]
    again = client.get("/api/v1/cases", headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.get_data() == b""
    report(client)
    changed = client.get("/api/v1/cases", headers={"If-None-Match": etag})
    assert changed.status_code == 200 and changed.headers["ETag"] != etag
    # a case's own ETag ("id-version") works as well
    case_id = changed.get_json()["items"][0]["id"]
    one = client.get(f"/api/v1/cases/{case_id}")
    assert (
        client.get(
            f"/api/v1/cases/{case_id}", headers={"If-None-Match": one.headers["ETag"]}
        ).status_code
        == 304
    )


def test_boundaries_answer_304_until_a_new_version_is_activated(client, world):
    first = client.get("/api/v1/grids/export")
    assert first.status_code == 200 and first.headers["ETag"]
    assert len(first.get_json()["features"]) == 4
    etag = first.headers["ETag"]
    assert client.get("/api/v1/grids/export", headers={"If-None-Match": etag}).status_code == 304
    world.grid_version()
    after = client.get("/api/v1/grids/export", headers={"If-None-Match": etag})
    assert after.status_code == 200 and after.headers["ETag"] != etag


def test_timestamps_carry_a_time_zone(client, world):
    case = report(client)
    for value in (case["reported_at"], case["deadlines"]["accept"], case["updated_at"]):
        assert re.search(r"(\+00:00|Z)$", value), value


def test_the_spec_documents_fields_and_304_on_json_gets(client):
    spec = client.get("/openapi.json").get_json()
    op = spec["paths"]["/api/v1/cases"]["get"]
    assert "fields" in [p["name"] for p in op["parameters"]]
    assert "304" in op["responses"]


GZIP = {"Accept-Encoding": "gzip"}


def test_the_etag_of_a_compressed_answer_is_a_valid_if_match(client, world):
    # Every phone asks for gzip; Flask-Compress then tags the answer "<id>-<version>:gzip".
    # That tag was answered with 412 "changed since you read it" on every workflow step.
    case = report(client)
    read = client.get(f"/api/v1/cases/{case['id']}", headers=GZIP)
    assert read.headers["Content-Encoding"] == "gzip"
    etag = read.headers["ETag"]
    assert etag == f'"{case["id"]}-1:gzip"'
    unchanged = client.get(f"/api/v1/cases/{case['id']}", headers={**GZIP, "If-None-Match": etag})
    assert unchanged.status_code == 304
    step = client.post(
        f"/api/v1/cases/{case['id']}/transitions",
        json={"action": "accept"},
        headers={**GZIP, "If-Match": etag},
    )
    assert step.status_code == 200, step.get_data()
    assert json.loads(gzip.decompress(step.get_data()))["status"] == "accepted"
    # still a version check: the tag read before that step is stale now
    again = client.post(
        f"/api/v1/cases/{case['id']}/transitions",
        json={"action": "file"},
        headers={**GZIP, "If-Match": etag},
    )
    assert again.status_code == 412, again.get_json()
    assert again.headers["ETag"] == f'"{case["id"]}-2"'


def test_a_phones_queued_step_with_a_compressed_answers_etag_is_applied(client, world):
    case = report(client)
    etag = client.get(f"/api/v1/cases/{case['id']}", headers=GZIP).headers["ETag"]
    actions = [
        {
            "key": "accept-1",
            "type": "case.transition",
            "payload": {"case_id": case["id"], "action": "accept", "if_match": etag},
        }
    ]
    r = client.post("/api/v1/sync/batch", json={"actions": actions})
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["results"][0]["status"] == 200, r.get_json()
    assert client.get(f"/api/v1/cases/{case['id']}").get_json()["status"] == "accepted"


def test_every_coding_the_server_compresses_with_is_read_back_from_if_match(app):
    from gridapi.services.preconditions import parse_etag

    for coding in app.config["COMPRESS_ALGORITHM"]:
        assert parse_etag(f'"12-3:{coding}"') == ["12-3"]
    assert parse_etag('W/"12-3:br", "7-1"') == ["7-1"]  # a weak tag never matches
    assert parse_etag('"12-3:other"') == ["12-3:other"]  # not a coding: not this version


def test_locate_takes_fields_as_its_spec_says(client, world):
    # /locate parses its query by hand: `fields` (documented on every JSON GET) was 422.
    spec = client.get("/openapi.json").get_json()
    op = spec["paths"]["/api/v1/locate"]["get"]
    assert "fields" in [p["name"] for p in op["parameters"]]
    r = client.get(f"/api/v1/locate?lon={LON0 + 0.5 * STEP}&lat={LAT0 + 0.5 * STEP}&fields=method")
    assert r.status_code == 200, r.get_json()
    assert r.get_json() == {"method": "inside"}
    assert client.get("/api/v1/locate?lon=1&lat=1&bogus=1").status_code == 422


def test_geojson_answers_document_and_honour_fields_and_304(client, world):
    """GeoJSON answers get an ETag, 304 and `fields` at runtime as JSON ones do; the spec
    said so for JSON only. Streamed answers get no `fields`; 304 only where they have an
    ETag of their own (grids, photos, an export job's file), not streamed exports."""
    spec = client.get("/openapi.json").get_json()
    paths = spec["paths"]
    for path in ("/api/v1/maps/case-counts", "/api/v1/maps/case-clusters"):
        op = paths[path]["get"]
        assert "fields" in [p["name"] for p in op["parameters"]], path
        assert op["responses"]["304"] == {"$ref": "#/components/responses/NOT_MODIFIED"}, path
    # streamed, with an ETag of their own: 304, but no `fields`
    for path in ("/api/v1/grids/export", "/api/v1/grid-versions/{version_id}/grids"):
        op = paths[path]["get"]
        assert "fields" not in [p["name"] for p in op.get("parameters", [])], path
        assert "304" in op["responses"], path
    for path in (
        "/api/v1/cases/{case_id}/attachments/{attachment_id}/content",
        "/api/v1/cases/{case_id}/attachments/{attachment_id}/thumbnail",
        "/api/v1/exports/cases/jobs/{job_id}/file",
    ):
        assert "304" in paths[path]["get"]["responses"], path
    for path in ("/api/v1/exports/cases", "/api/v1/exports/cases/jobs/{job_id}/file"):
        op = paths[path]["get"]
        assert "fields" not in [p["name"] for p in op.get("parameters", [])], path
    assert "304" not in paths["/api/v1/exports/cases"]["get"]["responses"]
    assert "x-gridapi-streamed" not in json.dumps(spec)
    assert "Not modified" in spec["components"]["responses"]["NOT_MODIFIED"]["description"]

    counts = f"/api/v1/maps/case-counts?region={COMMUNITY_A}"
    full = client.get(counts)
    assert full.status_code == 200 and full.mimetype == "application/geo+json"
    sparse = client.get(counts + "&fields=type")
    assert sparse.status_code == 200 and sparse.get_json() == {"type": "FeatureCollection"}
    etag = {"If-None-Match": full.headers["ETag"]}
    assert client.get(counts, headers=etag).status_code == 304


def _coded(client, body: bytes, coding: str, **headers):  # type: ignore[no-untyped-def]
    return client.post(
        "/api/v1/cases",
        data=body,
        headers={"Content-Type": "application/json", "Content-Encoding": coding, **headers},
    )


def test_a_gzipped_report_is_read_and_its_retry_replays(client, world, session):
    """A phone that gzips its queue's bodies was told its JSON was not valid (400), and a
    body in a coding the server does not know was read as if plain."""
    import uuid
    import zlib

    from sqlalchemy import text

    body = {
        "category": "0101",
        "description": "压缩上报",
        "location": {"type": "Point", "coordinates": [LON0 + 0.5 * STEP, LAT0 + 0.5 * STEP]},
        "client_id": str(uuid.uuid4()),
    }
    raw = json.dumps(body, ensure_ascii=False).encode()
    first = _coded(client, gzip.compress(raw), "gzip", **{"Idempotency-Key": "gz-1"})
    assert first.status_code == 201, first.get_json()
    assert first.get_json()["description"] == "压缩上报"
    # the same report sent plain, and deflated, is the same request: replayed
    plain = client.post("/api/v1/cases", json=body, headers={"Idempotency-Key": "gz-1"})
    assert plain.status_code == 201 and plain.headers["Idempotent-Replayed"] == "true"
    assert plain.get_data() == first.get_data()
    deflated = _coded(client, zlib.compress(raw), "deflate", **{"Idempotency-Key": "gz-1"})
    assert deflated.status_code == 201 and deflated.headers["Idempotent-Replayed"] == "true"
    session.rollback()
    assert (
        session.execute(text("SELECT count(*) FROM cases WHERE description = '压缩上报'")).scalar()
        == 1
    )

    # bytes that are not gzip: 400 naming the header, not "invalid JSON"
    broken = _coded(client, raw, "gzip")
    assert broken.status_code == 400
    assert broken.get_json()["errors"] == {
        "headers": {"Content-Encoding": ["the body is not gzip data"]}
    }
    cut = _coded(client, gzip.compress(raw)[:-12], "gzip")
    assert cut.status_code == 400 and set(cut.get_json()) == {"code", "status", "message", "errors"}
    # a coding the server does not decode: 415, saying which it does; nothing stored
    brotli = _coded(client, raw, "br")
    assert brotli.status_code == 415
    assert brotli.headers["Accept-Encoding"] == "gzip, deflate, identity"
    assert brotli.get_json()["errors"] == {
        "headers": {"Content-Encoding": ["one of gzip, deflate, identity"]}
    }
    identity = _coded(
        client, json.dumps(dict(body, client_id=str(uuid.uuid4()))).encode(), "identity"
    )
    assert identity.status_code == 201
    session.rollback()
    assert (
        session.execute(text("SELECT count(*) FROM cases WHERE description = '压缩上报'")).scalar()
        == 2
    )


def test_a_gzip_body_that_inflates_past_the_limit_is_refused(client, world):
    """A few kilobytes of gzip may inflate to gigabytes: decoding stops at the body limit."""
    limit = client.application.config["MAX_CONTENT_LENGTH"]
    bomb = gzip.compress(b" " * (limit + 1024))
    assert len(bomb) < limit // 100
    r = _coded(client, bomb, "gzip")
    assert r.status_code == 413
    assert "GRIDAPI_MAX_BODY_MB" in r.get_json()["message"]


@pytest.mark.parametrize(
    ("encoded", "content_type"),
    [
        (lambda text: text.encode("gbk"), "application/json; charset=GBK"),
        (lambda text: text.encode("gb18030"), "application/json;charset=gb18030"),
        (lambda text: text.encode("utf-16"), "application/json"),  # its BOM says
        (lambda text: codecs.BOM_UTF8 + text.encode(), "application/json"),
    ],
    ids=["gbk", "gb18030", "utf-16 with its bom", "utf-8 with a bom"],
)
def test_a_report_in_its_declared_charset_is_read_and_is_the_same_request(
    client, world, session, encoded, content_type
):
    """A phone that sends its JSON in GBK (saying so), in UTF-16 or with a UTF-8 BOM was
    told its JSON was invalid (400) and dropped the report. The body is read as it says, and
    its retry in UTF-8 is the same request."""
    import uuid

    from sqlalchemy import text

    body = {
        "category": "0101",
        "description": "小区门口垃圾堆放",
        "address": "平江路 1 号",
        "location": {"type": "Point", "coordinates": [LON0 + 0.5 * STEP, LAT0 + 0.5 * STEP]},
        "client_id": str(uuid.uuid4()),
    }
    raw = encoded(json.dumps(body, ensure_ascii=False))
    first = client.post(
        "/api/v1/cases",
        data=raw,
        headers={"Content-Type": content_type, "Idempotency-Key": "charset-1"},
    )
    assert first.status_code == 201, first.get_json()
    assert first.get_json()["description"] == "小区门口垃圾堆放"
    again = client.post("/api/v1/cases", json=body, headers={"Idempotency-Key": "charset-1"})
    assert again.status_code == 201 and again.headers["Idempotent-Replayed"] == "true"
    session.rollback()
    assert session.execute(text("SELECT count(*) FROM cases")).scalar() == 1


def test_a_body_that_parses_as_sent_is_never_read_otherwise(client, world):
    """UTF-8 sent under another charset's name (a library's default) is read as UTF-8;
    bytes in no encoding they name stay invalid JSON (400)."""
    body = {
        "category": "0101",
        "description": "垃圾",
        "location": {"type": "Point", "coordinates": [LON0 + 0.5 * STEP, LAT0 + 0.5 * STEP]},
    }
    raw = json.dumps(body, ensure_ascii=False).encode()
    for charset in ("ISO-8859-1", "gbk"):
        r = client.post(
            "/api/v1/cases",
            data=raw,
            headers={"Content-Type": f"application/json; charset={charset}"},
        )
        assert r.status_code == 201 and r.get_json()["description"] == "垃圾", r.get_json()
    for content_type in ("application/json; charset=no-such-charset", "application/json"):
        r = client.post(
            "/api/v1/cases", data="垃圾".encode("gbk"), headers={"Content-Type": content_type}
        )
        assert r.status_code == 400
        assert r.get_json()["errors"] == {"json": ["Invalid JSON body."]}


def test_a_chunked_gzip_body_over_the_limit_is_413_not_a_cut_off_gzip(client, world):
    """Sent chunked (no Content-Length), a compressed body over the limit was read up to
    the limit and refused 400 as cut-off gzip data."""
    import io
    import os

    limit = client.application.config["MAX_CONTENT_LENGTH"]
    noise = gzip.compress(os.urandom(limit + 1024), compresslevel=1)  # does not compress
    r = client.post(
        "/api/v1/cases",
        input_stream=io.BytesIO(noise),
        headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
        # as gunicorn hands over a chunked body: no length, a stream that ends
        environ_overrides={"CONTENT_LENGTH": "", "wsgi.input_terminated": True},
    )
    assert r.status_code == 413, r.get_json()
    assert "GRIDAPI_MAX_BODY_MB" in r.get_json()["message"]
