"""Exports (both engines): what a file holds equals what the list shows for the same filters
and caller; residents masked unless unmasked with a purpose; every export audited; streamed."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import threading
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from openpyxl import load_workbook
from sqlalchemy import select, text

from gridapi.cli import job_runner_engine
from gridapi.db import make_engine, make_sessionmaker
from gridapi.models import AuditEntry
from gridapi.personal import check_digit
from gridapi.services import exports as exports_svc

from ..factories import COMMUNITY_A, COMMUNITY_B, COUNTY, LAT0, LON0, STEP, TOWNSHIP
from ..sqlite_locks import writes_begun_as_reads

A1, A2 = COMMUNITY_A + "001", COMMUNITY_A + "002"
B1 = COMMUNITY_B + "001"
SOON = {"amount": 3, "unit": "days"}
PURPOSE = "核实低保申请人身份"
NOTES = "多次到市政府上访，情绪激动，需每周走访"
XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"


def ok(response: Any, status: int = 200) -> Any:
    assert response.status_code == status, (response.status_code, response.get_data()[:500])
    return response


def center(col: int) -> list[float]:
    return [round(LON0 + (col + 0.5) * STEP, 6), round(LAT0 + 0.5 * STEP, 6)]


def make_id(seq: int) -> str:
    first = f"32050819900101{seq:03d}"
    return first + check_digit(first)


def parse_csv(response: Any) -> tuple[list[str], list[dict[str, str]]]:
    raw = response.get_data()
    assert raw.startswith("\ufeff".encode())
    rows = list(csv.reader(io.StringIO(raw.decode("utf-8")[1:])))
    keys = [key for key, header in _columns(rows[0])]
    return rows[0], [dict(zip(keys, row, strict=True)) for row in rows[1:]]


def _columns(headers: list[str]) -> list[tuple[str, str]]:
    for columns in (
        exports_svc.CASE_COLUMNS,
        exports_svc.TASK_COLUMNS,
        exports_svc.VISIT_COLUMNS,
        exports_svc.PERSON_COLUMNS,
        exports_svc.UNMASKED_PERSON_COLUMNS,
    ):
        if [h for _, h in columns] == headers:
            return list(columns)
    raise AssertionError(f"unknown headers {headers}")


def audit_rows(engine: Any) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT actor_id, object_id, region_code, summary FROM audit_log "
                "WHERE action = 'export.download' ORDER BY id"
            )
        ).all()
    return [
        {
            "actor": a,
            "object_id": o,
            "region": r,
            "summary": json.loads(s) if isinstance(s, str) else s,
        }
        for a, o, r, s in rows
    ]


@pytest.fixture
def world(factory, client):  # type: ignore[no-untyped-def]
    factory.regions()
    factory.grid_version()
    for col, description in enumerate(["垃圾堆放", "=1+1 占道经营", "噪音扰民"]):
        body = {
            "category": "0101",
            "description": description,
            "location": {"type": "Point", "coordinates": center(col)},
            "address": f"平江路 {col} 号",
        }
        ok(client.post("/api/v1/cases", json=body), 201)
    return factory


@pytest.fixture
def worker(accounts, world):  # type: ignore[no-untyped-def]
    return accounts.client("worker1", "grid_worker", grids=[A1])


def test_case_csv_equals_the_list_with_chinese_headers(client, world, engine):
    listed = client.get("/api/v1/cases").get_json()["items"]
    r = ok(client.get("/api/v1/exports/cases?format=csv"))
    assert r.mimetype == "text/csv"
    assert r.headers["Content-Disposition"].startswith('attachment; filename="cases-')
    headers, rows = parse_csv(r)
    assert headers[:4] == ["编号", "事件编号", "状态", "状态名称"]
    assert [int(row["id"]) for row in rows] == [c["id"] for c in listed]  # the list's order
    for row, case in zip(rows, listed, strict=True):
        assert row["number"] == case["number"]
        assert row["status_name"] == case["status_name"] == "已上报"
        assert row["grid"] == case["grid"]["code"]
        assert [float(row["lon"]), float(row["lat"])] == case["location"]["coordinates"]
        assert datetime.fromisoformat(row["reported_at"]) == datetime.fromisoformat(
            case["reported_at"]
        )
        # A formula is neutralised for Excel; other text is as the list shows it.
        expected = case["description"]
        assert row["description"] == ("'" + expected if expected.startswith("=") else expected)
    # The same filters as the list.
    only = client.get(f"/api/v1/cases?grid={A2}").get_json()["items"]
    _, rows = parse_csv(ok(client.get(f"/api/v1/exports/cases?grid={A2}")))
    assert [int(row["id"]) for row in rows] == [c["id"] for c in only] and len(only) == 1
    assert audit_rows(engine)[-1]["summary"] == {
        "kind": "cases",
        "format": "csv",
        "filters": {"grid": A2, "sort": "-reported_at"},
    }


def test_a_worker_exports_only_what_the_worker_may_list(worker, world, client):
    listed = worker.get("/api/v1/cases").get_json()["items"]
    assert [c["grid"]["code"] for c in listed] == [A1]
    _, rows = parse_csv(ok(worker.get("/api/v1/exports/cases")))
    assert [int(row["id"]) for row in rows] == [c["id"] for c in listed]
    # A region outside the worker's scope answers an empty file, as the list answers nothing.
    assert worker.get(f"/api/v1/cases?region={COMMUNITY_B}").get_json()["items"] == []
    _, rows = parse_csv(ok(worker.get(f"/api/v1/exports/cases?region={COMMUNITY_B}")))
    assert rows == []


def test_case_xlsx_and_geojson_hold_the_same_cases(client, world):
    listed = client.get("/api/v1/cases?sort=reported_at").get_json()["items"]
    r = ok(client.get("/api/v1/exports/cases?format=xlsx&sort=reported_at"))
    assert r.mimetype == XLSX
    sheet = load_workbook(io.BytesIO(r.get_data()), read_only=True).worksheets[0]
    rows = list(sheet.iter_rows(values_only=True))
    assert rows[0][:2] == ("编号", "事件编号")
    assert [row[0] for row in rows[1:]] == [c["id"] for c in listed]
    assert [row[1] for row in rows[1:]] == [c["number"] for c in listed]
    # A description starting with "=" is text, not a formula, in the workbook.
    assert "'=1+1 占道经营" in [row[5] for row in rows[1:]]

    r = ok(client.get("/api/v1/exports/cases?format=geojson&sort=reported_at"))
    assert r.mimetype == "application/geo+json"
    collection = json.loads(r.get_data())
    assert collection["type"] == "FeatureCollection"
    features = collection["features"]
    assert [f["id"] for f in features] == [c["id"] for c in listed]
    for feature, case in zip(features, listed, strict=True):
        assert feature["geometry"] == case["location"]
        assert feature["properties"]["number"] == case["number"]
        assert feature["properties"]["urgent"] is False


def test_an_export_is_streamed_in_batches_through_a_session_of_its_own(
    client, world, monkeypatch, engine
):
    monkeypatch.setattr(exports_svc, "BATCH", 1)
    r = ok(client.get("/api/v1/exports/cases", buffered=False))
    assert r.is_streamed
    # The audit row is committed before the first byte is produced.
    assert len(audit_rows(engine)) == 1
    chunks = list(r.response)
    r.close()
    assert len(chunks) == 4  # the headers, then one batch per case
    assert chunks[0].startswith("\ufeff编号".encode())
    assert all(chunk.count(b"\r\n") == 1 for chunk in chunks)


def test_tasks_export_equals_the_list_with_the_grid_as_geometry(client, world, accounts):
    office = accounts.client("office", "township_office", scope_region=TOWNSHIP)
    for grid in (A1, B1):
        body = {"title": f"走访独居老人 {grid}", "grid": grid, "due_in": SOON}
        ok(office.post("/api/v1/tasks", json=body), 201)
    listed = office.get(f"/api/v1/tasks?grid={B1}").get_json()["items"]
    _, rows = parse_csv(ok(office.get(f"/api/v1/exports/tasks?grid={B1}")))
    assert [int(row["id"]) for row in rows] == [t["id"] for t in listed] and len(rows) == 1
    assert rows[0]["title"] == listed[0]["title"]
    assert rows[0]["status_name"] == listed[0]["status_name"]
    everything = office.get("/api/v1/tasks").get_json()["items"]
    collection = json.loads(ok(office.get("/api/v1/exports/tasks?format=geojson")).get_data())
    assert [f["id"] for f in collection["features"]] == [t["id"] for t in everything]
    grid = client.get(f"/api/v1/grids/{A1}").get_json()
    geometry = collection["features"][0]["geometry"]
    assert geometry["type"] in ("Polygon", "MultiPolygon")
    ring = (
        geometry["coordinates"][0]
        if geometry["type"] == "Polygon"
        else geometry["coordinates"][0][0]
    )
    grid_geometry = grid["geometry"]
    grid_ring = (
        grid_geometry["coordinates"][0]
        if grid_geometry["type"] == "Polygon"
        else grid_geometry["coordinates"][0][0]
    )

    def rounded(points: list[list[float]]) -> list[tuple[float, float]]:
        return sorted((round(x, 9), round(y, 9)) for x, y in points)

    assert rounded(ring) == rounded(grid_ring)


def _person(client: Any, name: str, seq: int, grid: str = A1) -> dict[str, Any]:
    body = {"name": name, "id_number": make_id(seq), "phone": f"1381234{seq:04d}", "grid": grid}
    return ok(client.post("/api/v1/persons", json=body), 201).get_json()


@pytest.fixture
def residents(client, world) -> list[dict[str, Any]]:  # type: ignore[no-untyped-def]
    people = [
        _person(client, "张三", 1),
        _person(client, "欧阳修", 2),
        _person(client, "李四", 3, B1),
    ]
    record = {"person_id": people[0]["id"], "type": "petitioner", "notes": NOTES}
    ok(client.post("/api/v1/special-groups", json=record), 201)
    visit = {
        "person_id": people[0]["id"],
        "findings": "谈心",
        "location": {"type": "Point", "coordinates": center(0)},
    }
    ok(client.post("/api/v1/visits", json=visit), 201)
    ok(client.post("/api/v1/visits", json={"person_id": people[2]["id"], "findings": "回访"}), 201)
    return people


def test_persons_are_masked_as_the_search_shows_them(client, residents, engine):
    listed = client.get("/api/v1/persons").get_json()["items"]
    for fmt in ("csv", "xlsx", "geojson"):
        r = ok(client.get(f"/api/v1/exports/persons?format={fmt}"))
        body = r.get_data()
        for secret in (make_id(1), "13812340001", "张三", "欧阳修", NOTES, "petitioner"):
            assert secret.encode() not in body, (fmt, secret)
    _, rows = parse_csv(ok(client.get("/api/v1/exports/persons")))
    assert [int(row["id"]) for row in rows] == [p["id"] for p in listed]
    for row, person in zip(rows, listed, strict=True):
        for key in ("name", "id_number", "phone", "gender", "grid", "population_type"):
            assert row[key] == (person[key] or ""), key
        assert row["age"] == str(person["age"])
    assert rows[0]["name"] == "张*" and rows[0]["phone"] == "138****0001"
    features = json.loads(ok(client.get("/api/v1/exports/persons?format=geojson")).get_data())
    assert [f["properties"]["name"] for f in features["features"]] == [p["name"] for p in listed]
    assert audit_rows(engine)[-1]["summary"]["masked"] is True


def test_unmasking_needs_the_permission_and_a_purpose_and_is_audited(
    client, residents, accounts, engine
):
    worker = accounts.client("worker1", "grid_worker", grids=[A1])
    r = worker.get(f"/api/v1/exports/persons?unmask=true&purpose={PURPOSE}")
    assert r.status_code == 403 and r.get_json()["code"] == 403
    r = client.get("/api/v1/exports/persons?unmask=true")
    assert r.status_code == 422
    assert r.get_json()["errors"]["query"]["purpose_code"]
    assert audit_rows(engine) == []
    stated = "purpose_code=identity_verification&reference=MZJ-2026/0412"
    r = ok(client.get(f"/api/v1/exports/persons?unmask=true&{stated}&grid={A1}"))
    headers, rows = parse_csv(r)
    assert "出生日期" in headers
    assert [(row["name"], row["id_number"], row["phone"]) for row in rows] == [
        ("张三", make_id(1), "13812340001"),
        ("欧阳修", make_id(2), "13812340002"),
    ]
    assert rows[0]["birth_date"] == "1990-01-01"
    assert NOTES.encode() not in r.get_data() and b"petitioner" not in r.get_data()
    (entry,) = audit_rows(engine)
    assert entry["actor"] == f"user:{accounts.ids['admin']}"
    assert entry["summary"] == {
        "kind": "persons",
        "format": "csv",
        "filters": {"grid": A1},
        "masked": False,
        "purpose_code": "identity_verification",
        "reference": "MZJ-2026/0412",
    }


def test_an_export_naming_a_region_above_the_exporters_is_filed_under_the_exporters(
    client, residents, accounts, engine
):
    """An officer's unmasked export naming the township or the county as its region (it
    still holds only the officer's residents) was filed under that region: one above the
    township office and the community, where only the county centre or an admin looked.
    It is filed under the officer's own region, as one naming none."""
    officer = accounts.client("officer_a", "community_officer", scope_region=COMMUNITY_A)
    for region in (TOWNSHIP, COUNTY, COMMUNITY_B, COMMUNITY_A):
        ok(officer.get(f"/api/v1/exports/persons?unmask=true&purpose={PURPOSE}&region={region}"))
    assert [e["region"] for e in audit_rows(engine)] == [COMMUNITY_A] * 4
    job = officer.post(
        "/api/v1/exports/persons/jobs",
        json={"unmask": True, "purpose_code": "statistics", "filters": {"region": COUNTY}},
    )
    assert job.status_code == 202, job.get_json()
    with engine.connect() as conn:
        queued = conn.execute(
            text("SELECT region_code FROM audit_log WHERE action = 'export.queue'")
        ).scalars()
        assert list(queued) == [COMMUNITY_A]


def test_an_export_without_a_region_is_filed_under_the_exporters_and_the_centre_sees_it(
    client, residents, accounts, engine
):
    """An officer's unmasked export of every resident it may see was audited under no region:
    only admins read it, never the county centre over that officer."""
    officer = accounts.client("officer_a", "community_officer", scope_region=COMMUNITY_A)
    ok(officer.get(f"/api/v1/exports/persons?unmask=true&purpose={PURPOSE}"))
    (entry,) = audit_rows(engine)
    assert entry["region"] == COMMUNITY_A
    county = accounts.client("county_c", "county_centre", scope_region=COUNTY)
    seen = ok(county.get("/api/v1/audit?action=export.download")).get_json()["items"]
    assert [(e["actor_type"], e["actor_id"]) for e in seen] == [
        ("user", f"user:{accounts.ids['officer_a']}")
    ]


def test_a_searched_id_number_is_matched_but_never_written_to_the_audit_log(
    client, residents, engine
):
    _, rows = parse_csv(ok(client.get(f"/api/v1/exports/persons?id_number={make_id(2)}")))
    assert [int(row["id"]) for row in rows] == [residents[1]["id"]]
    entry = audit_rows(engine)[-1]
    assert list(entry["summary"]["filters"]) == ["id_number"]
    assert make_id(2) not in json.dumps(entry["summary"])


def test_names_addresses_and_texts_searched_are_not_written_to_the_audit_log(
    client, residents, engine
):
    """The audit log holds ids and field names, and outlives an erasure: an export
    searched by a resident's name or address kept them there in full."""
    name, address = residents[0]["name"], "平江路"
    query = {"name": name, "address": address, "format": "csv"}
    ok(client.get("/api/v1/exports/persons", query_string=query))
    r = client.post(
        "/api/v1/exports/persons/jobs", json={"filters": {"name": name, "address": address}}
    )
    assert r.status_code == 202, r.get_json()
    ok(client.get("/api/v1/exports/cases", query_string={"q": "王建国"}))
    with engine.connect() as conn:
        kept = conn.execute(
            text("SELECT action, summary FROM audit_log WHERE object_type = 'export'")
        ).all()
    summaries = {a: json.loads(s) if isinstance(s, str) else s for a, s in kept}
    assert summaries["export.queue"]["filters"] == {"name": "(given)", "address": "(given)"}
    assert [json.dumps(s, ensure_ascii=False) for s in summaries.values() if name in str(s)] == []
    assert "王建国" not in json.dumps([s for _, s in kept], ensure_ascii=False)


def test_visits_export_equals_the_list(client, residents, accounts):
    worker = accounts.client("worker1", "grid_worker", grids=[A1])
    listed = worker.get("/api/v1/visits").get_json()["items"]
    assert len(listed) == 1
    _, rows = parse_csv(ok(worker.get("/api/v1/exports/visits")))
    assert [int(row["id"]) for row in rows] == [v["id"] for v in listed]
    assert rows[0]["findings"] == "谈心"
    everything = client.get("/api/v1/visits").get_json()["items"]
    collection = json.loads(ok(client.get("/api/v1/exports/visits?format=geojson")).get_data())
    assert [f["geometry"] for f in collection["features"]] == [v["location"] for v in everything]
    assert collection["features"][1]["geometry"] is None


@pytest.mark.parametrize(
    "query",
    [
        "cases?q=" + "x" * 5000,
        "cases?format=pdf",
        "cases?region=32050800",
        "cases?bbox=121,31,120,32",
        "cases?limit=10",
        "tasks?status=lost",
        "persons?name=" + "张" * 500,
        "visits?since=yesterday",
    ],
)
def test_bad_or_huge_filters_are_422_in_the_one_error_shape(client, world, engine, query):
    r = client.get(f"/api/v1/exports/{query}")
    assert r.status_code == 422, r.get_data()[:300]
    assert set(r.get_json()) == {"code", "status", "message", "errors"}
    assert audit_rows(engine) == []


def test_exports_need_the_read_permission_of_their_kind(accounts, world):
    department = accounts.client("dept", "department", scope_region=TOWNSHIP)
    assert department.get("/api/v1/exports/persons").status_code == 403
    assert department.get("/api/v1/exports/tasks").status_code == 403
    anonymous = accounts.app.test_client()
    assert anonymous.get("/api/v1/exports/cases").status_code == 401


@pytest.mark.parametrize("fmt", ["csv", "geojson"])
def test_a_streamed_export_the_database_fails_midway_is_cut_off_and_audited(
    client, world, engine, monkeypatch, fmt
):
    """A streamed export whose query failed midway (the database gone, a statement
    cancelled) left no trace but a traceback: no audit row said the file that left was cut
    short. The failure is now audited (`export.failed`, with the bytes sent) and raised
    again, so that the server aborts the transfer rather than end it as complete; a GeoJSON
    body is left without its closing brackets. The error here is a real one: the export's
    connection is interrupted (SQLite) or its backend terminated (PostgreSQL) between two
    batches."""
    from sqlalchemy import event
    from sqlalchemy.exc import DBAPIError

    monkeypatch.setattr(exports_svc, "BATCH", 1)  # one case a batch: three batches
    exporting: list[Any] = []

    def note(conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT") and "FROM cases" in statement:
            exporting.append(conn.connection.dbapi_connection)

    event.listen(engine, "before_cursor_execute", note)
    try:
        r = client.get(f"/api/v1/exports/cases?format={fmt}", buffered=False)
        assert r.status_code == 200
        blocks = iter(r.response)
        received = [next(blocks), next(blocks)]  # the header, the first case
        (connection,) = exporting
        if engine.dialect.name == "sqlite":
            connection.interrupt()
        else:
            pid = connection.info.backend_pid
            with engine.connect() as conn:
                conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
                gone = text("SELECT count(*) FROM pg_stat_activity WHERE pid = :pid")
                while conn.execute(gone, {"pid": pid}).scalar_one():
                    conn.rollback()
        with pytest.raises(DBAPIError):
            received.extend(blocks)
        r.close()
    finally:
        event.remove(engine, "before_cursor_execute", note)
    sent = b"".join(received)
    if fmt == "geojson":
        assert not sent.endswith(b"]}")
        with pytest.raises(ValueError):
            json.loads(sent)
    else:
        assert sent.decode("utf-8").count("\r\n") == 2  # the header and one case
    with engine.connect() as conn:
        failed = conn.execute(
            select(AuditEntry.object_id, AuditEntry.summary).where(
                AuditEntry.action == "export.failed"
            )
        ).all()
    assert [tuple(row) for row in failed] == [
        ("cases", {"format": fmt, "bytes_sent": len(sent), "error": "OperationalError"})
    ]


# --- export jobs ------------------------------------------------------------------------------


def job_options(app: Any, **changes: Any) -> exports_svc.JobOptions:
    """The export-job options ``gridapi worker`` builds from the app's settings."""
    from gridapi.services.register import Keys

    st = app.extensions["gridapi"]
    return exports_svc.JobOptions(
        st.settings.data_dir,
        st.settings.export_retention_hours,
        Keys(st.cipher, st.phone_key),
        **changes,
    )


@contextlib.contextmanager
def job_runner_sessions(app: Any, **engine: Any) -> Iterator[Any]:
    """Sessions on an engine of the job runner's, as ``gridapi worker`` makes it (not the
    app's: on SQLite a runner's engine began every transaction IMMEDIATE and only the
    worker deadlocked). ``engine`` asks for another engine's settings instead."""
    settings = app.extensions["gridapi"].settings
    bind = make_engine(settings.database_url, **engine) if engine else job_runner_engine(settings)
    try:
        yield make_sessionmaker(bind)
    finally:
        bind.dispose()


def run_jobs(app: Any, **kwargs: Any) -> dict[str, int]:
    """Run what ``gridapi worker`` runs for exports, once, on the worker's engine."""
    with job_runner_sessions(app) as sessions:
        return exports_svc.run_export_jobs(sessions, job_options(app), **kwargs)


def test_a_job_writes_the_export_to_a_file_only_its_requester_downloads(
    client, world, accounts, app, engine
):
    r = client.post("/api/v1/exports/cases/jobs", json={"format": "csv", "filters": {}})
    assert r.status_code == 202, r.get_json()
    job = r.get_json()
    assert r.headers["Location"] == f"/api/v1/exports/cases/jobs/{job['id']}"
    assert (job["status"], job["download"], job["masked"]) == ("queued", None, True)
    r = client.get(f"/api/v1/exports/cases/jobs/{job['id']}/file")
    assert r.status_code == 409 and r.get_json()["code"] == 409
    assert run_jobs(app) == {"done": 1, "failed": 0, "purged": 0}
    job = ok(client.get(f"/api/v1/exports/cases/jobs/{job['id']}")).get_json()
    assert job["status"] == "done" and job["row_count"] == 3 and job["size_bytes"] > 0
    assert job["download"] == f"/api/v1/exports/cases/jobs/{job['id']}/file"
    filed = ok(client.get(job["download"]))
    assert filed.headers["Content-Disposition"].startswith("attachment")
    streamed = ok(client.get("/api/v1/exports/cases"))
    assert parse_csv(filed)[1] == parse_csv(streamed)[1]
    # Nobody else sees the job or its file; another kind's path does not find it either.
    office = accounts.client("office", "township_office", scope_region=TOWNSHIP)
    assert office.get(f"/api/v1/exports/cases/jobs/{job['id']}").status_code == 404
    assert office.get(job["download"]).status_code == 404
    assert client.get(f"/api/v1/exports/tasks/jobs/{job['id']}").status_code == 404
    with engine.connect() as conn:
        actions = conn.execute(
            text("SELECT action FROM audit_log WHERE object_type = 'export' ORDER BY id")
        ).scalars()
        assert list(actions) == ["export.queue", "export.file", "export.download"]


def test_a_file_downloaded_in_ranges_is_audited_once(client, world, app, engine):
    """Each range and each 304 of an export's file wrote an export.file row: one file
    fetched in 20 ranges wrote 20. A row is written for the whole file (200) or a range from
    its first byte; the ranges that resume it, a 304, a 416 and a HEAD write none."""
    r = client.post("/api/v1/exports/cases/jobs", json={"format": "csv", "filters": {}})
    assert r.status_code == 202, r.get_json()
    assert run_jobs(app)["done"] == 1
    url = f"{r.headers['Location']}/file"

    def files() -> int:
        with engine.connect() as conn:
            return conn.execute(
                text("SELECT count(*) FROM audit_log WHERE action = 'export.file'")
            ).scalar_one()

    whole = ok(client.get(url))
    assert files() == 1
    size, step = len(whole.data), 20
    parts = []
    for start in range(0, size, step):
        part = client.get(url, headers={"Range": f"bytes={start}-{start + step - 1}"})
        assert part.status_code == 206, part.status_code
        parts.append(part.data)
    assert len(parts) > 2 and b"".join(parts) == whole.data
    assert files() == 2  # the one range from byte 0
    assert client.get(url, headers={"If-None-Match": whole.headers["ETag"]}).status_code == 304
    assert client.get(url, headers={"Range": f"bytes={size + 10}-"}).status_code == 416
    assert client.head(url).status_code == 200
    assert files() == 2
    # A resumed download whose file changed (If-Range not matching) gets it whole: a row.
    again = client.get(url, headers={"Range": "bytes=5-", "If-Range": '"other"'})
    assert again.status_code == 200 and again.data == whole.data
    assert files() == 3


def test_a_range_not_from_the_first_byte_is_audited_unless_resuming_a_recorded_fetch(
    client, world, app, engine
):
    """A range not from the first byte wrote no export.file row: `bytes=1-` took all of a
    file but its first byte unrecorded, and `bytes=0-0` then `bytes=1-` (hours apart) left
    only a one-byte fetch. Now such a range is recorded unless the same caller's fetch of the
    file was recorded in the last hour."""
    jobs = []
    for _ in range(3):
        r = client.post("/api/v1/exports/cases/jobs", json={"format": "csv", "filters": {}})
        assert r.status_code == 202, r.get_json()
        jobs.append(r.get_json()["id"])
    assert run_jobs(app)["done"] == 3

    def url(job_id: int) -> str:
        return f"/api/v1/exports/cases/jobs/{job_id}/file"

    def rows_of(job_id: int) -> int:
        with engine.connect() as conn:
            summaries = conn.execute(
                select(AuditEntry.summary).where(AuditEntry.action == "export.file")
            ).scalars()
            return sum(1 for summary in summaries if summary["job_id"] == job_id)

    # All but the first byte, alone: a fetch, recorded.
    whole = ok(client.get(url(jobs[0])))
    assert rows_of(jobs[0]) == 1
    first, rest = jobs[1], client.get(url(jobs[1]), headers={"Range": "bytes=1-"})
    assert rest.status_code == 206 and rest.data == whole.data[1:]
    assert rows_of(first) == 1
    again = client.get(url(first), headers={"Range": "bytes=2-"})  # resumed within the hour
    assert again.status_code == 206 and rows_of(first) == 1

    # bytes=0-0, then bytes=1- more than an hour later: the second fetch is recorded too.
    gamed = jobs[2]
    assert client.get(url(gamed), headers={"Range": "bytes=0-0"}).status_code == 206
    assert rows_of(gamed) == 1
    with engine.begin() as conn:
        row = conn.execute(
            select(AuditEntry.actor_type, AuditEntry.actor_id, AuditEntry.actor_name)
            .where(AuditEntry.action == "export.file")
            .order_by(AuditEntry.id.desc())
            .limit(1)
        ).one()
    # A fetch of a job recorded two hours ago (the row its bytes=0-0 wrote, dated back: the
    # append-only log refuses changing one), then bytes=1-: recorded.
    fresh = client.post("/api/v1/exports/cases/jobs", json={"format": "csv", "filters": {}})
    assert fresh.status_code == 202 and run_jobs(app)["done"] == 1
    fresh_id = fresh.get_json()["id"]
    with engine.begin() as conn:
        conn.execute(
            AuditEntry.__table__.insert().values(
                at=datetime.now(UTC) - timedelta(hours=2),
                actor_type=row.actor_type,
                actor_id=row.actor_id,
                actor_name=row.actor_name,
                action="export.file",
                object_type="export",
                object_id="cases",
                summary={"job_id": fresh_id, "format": "csv", "rows": 3},
            )
        )
    assert rows_of(fresh_id) == 1
    later = client.get(url(fresh_id), headers={"Range": "bytes=1-"})
    assert later.status_code == 206 and later.data == whole.data[1:]
    assert rows_of(fresh_id) == 2
    # Nothing sent, nothing recorded.
    assert client.head(url(fresh_id)).status_code == 200
    assert (
        client.get(url(fresh_id), headers={"If-None-Match": later.headers["ETag"]}).status_code
        == 304
    )
    assert rows_of(fresh_id) == 2


def test_export_files_and_their_directories_are_the_services_alone(settings, tmp_path, usual_umask):
    """Under umask 022, with GRIDAPI_DATA_DIR not made yet (keys set: no key file makes it),
    a spreadsheet streamed and a job's file leave GRIDAPI_DATA_DIR, exports/ and exports/tmp/
    0700 (mkdir's parents took the umask's 0755) and the file 0600: unmasked residents."""
    import dataclasses

    from gridapi import create_app
    from gridapi.security.fields import new_key_text

    from ..factories import Accounts, Factory

    srv = tmp_path / "srv"
    app = create_app(
        dataclasses.replace(
            settings,
            data_dir=str(srv / "gridapi"),
            secret_key="s" * 32,
            blind_index_key="b" * 32,
            field_keys=new_key_text(1),
        )
    )
    try:
        client = Accounts(app).client("admin")
        Factory(client).regions()
        assert not srv.exists()
        ok(client.get("/api/v1/exports/cases?format=xlsx"))
        ok(client.post("/api/v1/exports/cases/jobs", json={"format": "csv"}), 202)
        assert run_jobs(app) == {"done": 1, "failed": 0, "purged": 0}
    finally:
        app.extensions["gridapi"].engine.dispose()
    made = {
        str(p.relative_to(srv)): (p.is_dir(), oct(p.stat().st_mode & 0o777))
        for p in [srv, *srv.rglob("*")]
    }
    assert {"gridapi/exports/tmp", "gridapi/exports/1.csv"} <= set(made), made
    assert {mode for is_dir, mode in made.values() if is_dir} == {"0o700"}, made
    assert {mode for is_dir, mode in made.values() if not is_dir} == {"0o600"}, made


@pytest.mark.parametrize(("kind", "fmt"), [("cases", "csv"), ("persons", "xlsx")])
def test_a_job_file_is_downloaded_with_a_relative_data_directory(
    settings, tmp_path, monkeypatch, kind, fmt
):
    """With GRIDAPI_DATA_DIR=var (the README's default, relative to the working directory)
    the worker wrote ./var/exports/1.csv, and every download of it answered 500: Flask's
    send_file read the relative path against the gridapi package instead."""
    import dataclasses

    from gridapi import create_app

    from ..factories import Accounts, Factory

    monkeypatch.chdir(tmp_path)
    app = create_app(dataclasses.replace(settings, data_dir="var"))
    try:
        client = Accounts(app).client("admin")
        Factory(client).regions()
        job = ok(client.post(f"/api/v1/exports/{kind}/jobs", json={"format": fmt}), 202)
        assert run_jobs(app) == {"done": 1, "failed": 0, "purged": 0}
        written = (tmp_path / "var" / "exports" / f"{job.get_json()['id']}.{fmt}").read_bytes()
        url = f"/api/v1/exports/{kind}/jobs/{job.get_json()['id']}/file"
        assert ok(client.get(url)).get_data() == written
        part = ok(client.get(url, headers={"Range": "bytes=0-9"}), 206)
        assert part.get_data() == written[:10]
    finally:
        app.extensions["gridapi"].engine.dispose()


def test_a_job_keeps_the_scope_and_masking_of_its_requester(client, residents, accounts, app):
    worker = accounts.client("worker1", "grid_worker", grids=[A1])
    mine = worker.post("/api/v1/exports/persons/jobs", json={"format": "xlsx"})
    assert mine.status_code == 202, mine.get_json()
    r = worker.post("/api/v1/exports/persons/jobs", json={"unmask": True, "purpose": PURPOSE})
    assert r.status_code == 403
    full = client.post(
        "/api/v1/exports/persons/jobs",
        json={
            "format": "csv",
            "unmask": True,
            "purpose_code": "legal_request",
            "reference": "GA-2026/77",
            "filters": {"grid": A1},
        },
    )
    assert full.status_code == 202, full.get_json()
    assert run_jobs(app)["done"] == 2
    book = ok(worker.get(f"/api/v1/exports/persons/jobs/{mine.get_json()['id']}/file"))
    rows = list(load_workbook(io.BytesIO(book.get_data())).worksheets[0].values)
    listed = worker.get("/api/v1/persons").get_json()["items"]
    assert [(r[0], r[1]) for r in rows[1:]] == [(p["id"], p["name"]) for p in listed]
    assert [p["grid"] for p in listed] == [A1, A1]
    unmasked = ok(client.get(f"/api/v1/exports/persons/jobs/{full.get_json()['id']}/file"))
    _, rows = parse_csv(unmasked)
    assert [row["id_number"] for row in rows] == [make_id(1), make_id(2)]
    # full ID and phone numbers: cached nowhere, readable by the service's user alone (the
    # download said no-cache, max-age=0; the file was 0644 in a 0755 directory)
    assert unmasked.headers["Cache-Control"] == "private, no-store"
    directory = Path(app.extensions["gridapi"].settings.data_dir) / "exports"
    assert oct(directory.stat().st_mode & 0o777) == "0o700"
    assert {oct(f.stat().st_mode & 0o777) for f in directory.iterdir()} == {"0o600"}
    # Each download's audit row says whether the file was unmasked, and why: read alone (a
    # centre reading its log), export.file of the full file looked like the masked one's.
    with app.extensions["gridapi"].engine.connect() as conn:
        files = conn.execute(
            select(AuditEntry.summary)
            .where(AuditEntry.action == "export.file")
            .order_by(AuditEntry.id)
        ).scalars()
        assert [
            (f["job_id"], f["masked"], f.get("purpose_code"), f.get("reference")) for f in files
        ] == [
            (mine.get_json()["id"], True, None, None),
            (full.get_json()["id"], False, "legal_request", "GA-2026/77"),
        ]
    # An exact ID number would be kept in the job's filters: refused, never stored.
    r = client.post("/api/v1/exports/persons/jobs", json={"filters": {"id_number": make_id(1)}})
    assert r.status_code == 422 and "id_number" in r.get_json()["errors"]["json"]["filters"]


def test_a_job_queued_with_an_id_number_as_reference_does_not_copy_it_at_download(
    client, residents, app, engine
):
    """Before an ID number written with separators was refused as a ``reference``, a job
    could be queued with one; its file's download copied it into the append-only log."""
    r = client.post(
        "/api/v1/exports/persons/jobs",
        json={"unmask": True, "purpose_code": "legal_request", "reference": "GA-2026/77"},
    )
    assert r.status_code == 202, r.get_json()
    job = r.get_json()["id"]
    written_apart = f"{make_id(1)[:6]}-{make_id(1)[6:14]}-{make_id(1)[14:]}"
    with engine.begin() as conn:  # as such a job was stored before the fix
        conn.execute(
            text("UPDATE export_jobs SET purpose = :p WHERE id = :i"),
            {"p": f"legal_request {written_apart}", "i": job},
        )
    assert run_jobs(app)["done"] == 1
    ok(client.get(f"/api/v1/exports/persons/jobs/{job}/file"))
    with engine.connect() as conn:
        (summary,) = conn.execute(
            select(AuditEntry.summary).where(AuditEntry.action == "export.file")
        ).scalars()
    assert (summary["purpose_code"], summary["reference"]) == ("legal_request", "(given)")
    assert make_id(1)[6:14] not in json.dumps(summary)


def test_after_an_erasure_no_export_job_serves_or_keeps_anything_of_the_resident(
    client, residents, app, engine
):
    """A job's file written before a resident was erased kept serving them in full (name, ID
    and phone numbers) until it expired, and the job's stored filters kept the name searched
    for. Now the file of residents or visits is no longer served (the job failed with the
    reason, the file deleted at the worker's next round), one being written is written again
    without them, and no finished job keeps a name searched for; other kinds stay served."""
    erased, name = residents[0], "张三"  # its name, as registered (answers mask it)

    def queue(kind: str, body: dict[str, Any]) -> int:
        r = client.post(f"/api/v1/exports/{kind}/jobs", json={"format": "csv", **body})
        assert r.status_code == 202, r.get_json()
        return r.get_json()["id"]

    persons = queue("persons", {"unmask": True, "purpose": PURPOSE, "filters": {"name": name}})
    visits = queue("visits", {})
    cases = queue("cases", {"filters": {"q": "垃圾"}})
    assert run_jobs(app)["done"] == 3
    running = queue("persons", {"unmask": True, "purpose": PURPOSE, "filters": {"grid": A1}})
    with engine.begin() as conn:  # a worker is writing it as the erasure comes
        conn.execute(
            text("UPDATE export_jobs SET status = 'running', lease_until = :t WHERE id = :i"),
            {"t": datetime.now(UTC) + timedelta(minutes=5), "i": running},
        )

    def stored() -> str:
        with engine.connect() as conn:
            return json.dumps(
                [
                    json.loads(f) if isinstance(f, str) else f
                    for f in conn.execute(text("SELECT filters FROM export_jobs")).scalars()
                ],
                ensure_ascii=False,
            )

    assert name not in stored() and "垃圾" not in stored()  # cleared when each job ran
    view = ok(client.get(f"/api/v1/exports/persons/jobs/{persons}")).get_json()
    assert view["filters"] == {"name": "(given)"}  # as before
    _, rows = parse_csv(ok(client.get(view["download"])))
    assert [row["id_number"] for row in rows] == [make_id(1)]

    r = client.delete(f"/api/v1/persons/{erased['id']}", query_string={"reason": "本人申请删除"})
    assert r.status_code == 204, r.get_json()
    for kind, job in (("persons", persons), ("visits", visits)):
        view = ok(client.get(f"/api/v1/exports/{kind}/jobs/{job}")).get_json()
        assert (view["status"], view["download"]) == ("failed", None)
        assert view["error"] == exports_svc.ERASED_ERROR
        r = client.get(f"/api/v1/exports/{kind}/jobs/{job}/file")
        assert r.status_code == 409 and name not in r.get_data(as_text=True)
    view = ok(client.get(f"/api/v1/exports/persons/jobs/{running}")).get_json()
    assert (view["status"], view["download"]) == ("queued", None)
    ok(client.get(f"/api/v1/exports/cases/jobs/{cases}/file"))  # no resident in it

    assert run_jobs(app)["done"] == 1  # the one being written, again
    directory = Path(app.extensions["gridapi"].settings.data_dir) / "exports"
    assert sorted(f.name for f in directory.iterdir() if f.is_file()) == sorted(
        [f"{cases}.csv", f"{running}.csv"]
    )
    _, rows = parse_csv(ok(client.get(f"/api/v1/exports/persons/jobs/{running}/file")))
    assert [row["id_number"] for row in rows] == [make_id(2)]
    for path in directory.iterdir():
        if path.is_file():
            assert make_id(1) not in path.read_text("utf-8-sig") and name not in path.name
    assert name not in stored()


def test_an_export_matches_names_as_the_search_does_for_its_caller(
    client, residents, accounts, app
):
    """A worker without persons:unmask could read a masked name back by exporting with
    longer and longer name prefixes (欧, 欧阳, 欧阳修…), streamed or as a job."""
    worker = accounts.client("worker1", "grid_worker", grids=[A1])

    def streamed(who, name: str) -> list[int]:  # type: ignore[no-untyped-def]
        r = ok(who.get("/api/v1/exports/persons", query_string={"name": name}))
        return [int(row["id"]) for row in parse_csv(r)[1]]

    ouyang = residents[1]["id"]
    assert streamed(worker, "欧") == [ouyang] and streamed(worker, "欧阳") == []
    assert streamed(worker, "欧阳修") == [ouyang]
    assert streamed(client, "欧阳") == [ouyang]
    jobs = {
        who: ok(
            caller.post(
                "/api/v1/exports/persons/jobs",
                json={"format": "csv", "filters": {"name": "欧阳"}},
            ),
            202,
        ).get_json()["id"]
        for who, caller in (("worker", worker), ("admin", client))
    }
    assert run_jobs(app)["done"] == 2
    rows = {
        who: [
            int(row["id"])
            for row in parse_csv(ok(caller.get(f"/api/v1/exports/persons/jobs/{jobs[who]}/file")))[
                1
            ]
        ]
        for who, caller in (("worker", worker), ("admin", client))
    }
    assert rows == {"worker": [], "admin": [ouyang]}


def test_a_file_is_served_only_while_its_requester_may_still_have_it(
    client, residents, accounts, app
):
    """A finished file of unmasked residents stayed downloadable for its whole retention
    after its requester lost persons:unmask, and after they were moved to another area."""
    officer = accounts.client("officer", "community_officer", scope_region=COMMUNITY_A)
    user = accounts.ids["officer"]

    def queued(body: dict) -> str:
        r = officer.post("/api/v1/exports/persons/jobs", json={"format": "csv", **body})
        assert r.status_code == 202, r.get_json()
        return f"/api/v1/exports/persons/jobs/{r.get_json()['id']}/file"

    def changed(**change: Any) -> None:  # a change of role or area ends the sessions
        ok(client.patch(f"/api/v1/users/{user}", json=change))
        officer.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {accounts.token('officer')}"

    full, masked = queued({"unmask": True, "purpose": PURPOSE}), queued({})
    assert run_jobs(app)["done"] == 2
    assert [row["id_number"] for row in parse_csv(ok(officer.get(full)))[1]] == [
        make_id(1),
        make_id(2),
    ]
    changed(role="grid_chief")
    r = officer.get(full)
    assert r.status_code == 403, r.get_json()
    assert "persons:unmask" in r.get_json()["message"]
    assert make_id(1) not in r.get_data(as_text=True)
    r = officer.get(masked)  # the same area, masked, but another role: not theirs either
    assert r.status_code == 403, r.get_json()
    assert r.get_json()["message"].startswith("Your role, permissions or area have changed")
    changed(role="community_officer", scope_region=COMMUNITY_B)
    for path in (full, masked):
        r = officer.get(path)
        assert r.status_code == 403, r.get_json()
        assert r.get_json()["message"].startswith("Your role, permissions or area have changed")
    changed(scope_region=COMMUNITY_A)  # back as what and where the file was written for
    ok(officer.get(full))
    ok(officer.get(masked))


def test_a_file_is_not_served_once_its_requesters_role_changed(client, world, accounts, app):
    """A township office's export of cases holds the sensitive ones (a family dispute) only
    an office reads; made a grid chief of the same township, the office's former member got
    404 for that case and left it out of the list and the streamed export, but downloaded
    the file written before with it. Every kind's file is checked the same way."""
    from .test_cases import report_body

    office = accounts.client("ex1", "township_office", scope_region=TOWNSHIP)
    user = accounts.ids["ex1"]
    body = report_body(*center(1), category="5103")  # 婚姻家庭纠纷: sensitive
    dispute = ok(client.post("/api/v1/cases", json=body), 201).get_json()
    dispute_id = dispute["id"]
    assert office.get(f"/api/v1/cases/{dispute_id}").status_code == 200
    files = {}
    for kind in exports_svc.KINDS:
        r = office.post(f"/api/v1/exports/{kind}/jobs", json={"format": "csv"})
        assert r.status_code == 202, r.get_json()
        files[kind] = f"/api/v1/exports/{kind}/jobs/{r.get_json()['id']}/file"
    assert run_jobs(app)["done"] == len(files)
    cases_file = [int(row["id"]) for row in parse_csv(ok(office.get(files["cases"])))[1]]
    assert dispute_id in cases_file and len(cases_file) == 4

    def made(role: str) -> None:  # the area stays the township's
        ok(client.patch(f"/api/v1/users/{user}", json={"role": role}))
        office.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {accounts.token('ex1')}"

    made("grid_chief")
    assert office.get(f"/api/v1/cases/{dispute_id}").status_code == 404
    listed = [c["id"] for c in ok(office.get("/api/v1/cases?limit=200")).get_json()["items"]]
    streamed = [int(row["id"]) for row in parse_csv(ok(office.get("/api/v1/exports/cases")))[1]]
    assert dispute_id not in listed and sorted(streamed) == sorted(listed)
    for kind, path in files.items():
        r = office.get(path)
        assert r.status_code == 403, (kind, r.get_json())
        assert r.get_json()["message"].startswith("Your role, permissions or area have changed")
        assert dispute["number"] not in r.get_data(as_text=True)
    made("township_office")  # as the files were written for: theirs again
    for path in files.values():
        ok(office.get(path))


def test_a_job_takes_a_bbox_and_statuses_as_json_arrays(client, world, app):
    """A job's bbox could be given in no form: "120.5,…" was text where numbers are due,
    and an array was not a delimited list."""
    from .test_cases import report_body

    lon, lat = center(0)
    assert client.post("/api/v1/cases", json=report_body(lon, lat)).status_code == 201
    box = [lon - 0.001, lat - 0.001, lon + 0.001, lat + 0.001]
    filters = {"bbox": box, "status": ["reported", "accepted"]}
    r = client.post("/api/v1/exports/cases/jobs", json={"filters": filters})
    assert r.status_code == 202, r.get_json()
    assert run_jobs(app)["done"] == 1
    filed = ok(client.get(f"/api/v1/exports/cases/jobs/{r.get_json()['id']}/file"))
    query = "bbox=" + ",".join(map(str, box)) + "&status=reported,accepted"
    rows = parse_csv(filed)[1]
    assert rows and rows == parse_csv(ok(client.get(f"/api/v1/exports/cases?{query}")))[1]


@pytest.mark.parametrize(
    ("path", "query"),
    [
        # 200, a header row, then a broken download on PostgreSQL (curl exit 18)
        ("persons", "house_id=-99999999999"),
        ("persons", "household_id=-99999999999"),
        ("visits", "person_id=-99999999999"),
        ("tasks", "assignee=99999999999"),
    ],
)
def test_an_id_filter_no_column_holds_is_422_before_the_download(client, world, path, query):
    r = client.get(f"/api/v1/exports/{path}?format=csv&{query}")
    assert r.status_code == 422, (r.status_code, r.get_data(as_text=True)[:200])
    assert query.split("=")[0] in r.get_json()["errors"]["query"]


@pytest.mark.parametrize(
    "body",
    [
        {"filters": {"colour": "red"}},
        {"filters": {"q": "x" * 5000}},
        {"filters": {"region": "32050800"}},
        {"format": "pdf"},
        {"unmask": True},
        {"filters": "grid=1"},
    ],
)
def test_a_job_with_bad_filters_is_refused_before_it_is_queued(client, world, engine, body):
    r = client.post("/api/v1/exports/cases/jobs", json=body)
    assert r.status_code == 422, r.get_json()
    assert set(r.get_json()) == {"code", "status", "message", "errors"}
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM export_jobs")).scalar() == 0


def test_files_are_deleted_when_their_retention_has_passed(client, world, app):
    job = client.post("/api/v1/exports/visits/jobs", json={"format": "geojson"}).get_json()
    run_jobs(app)
    r = ok(client.get(f"/api/v1/exports/visits/jobs/{job['id']}/file"))
    assert json.loads(r.get_data()) == {"type": "FeatureCollection", "features": []}
    r.close()
    later = datetime.now(UTC) + timedelta(
        hours=app.extensions["gridapi"].settings.export_retention_hours + 1
    )
    assert run_jobs(app, now=later)["purged"] == 1
    assert client.get(f"/api/v1/exports/visits/jobs/{job['id']}").status_code == 404
    directory = Path(app.extensions["gridapi"].settings.data_dir) / "exports"
    assert [path.name for path in directory.iterdir()] == []


def test_an_idle_round_writes_nothing_and_takes_no_write_lock(client, world, app, engine):
    """Every poll_seconds (2 s) an idle worker's round began three write transactions (give
    up, claim, purge): on SQLite each took the database's one write lock, which requests
    writing meanwhile waited for. A round with nothing to take, give up or purge now only
    reads; a failed job's file is deleted (and the job marked) by the round after it
    failed, and by none after."""
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    done = client.post("/api/v1/exports/cases/jobs", json={"format": "csv"}).get_json()
    failed = client.post("/api/v1/exports/tasks/jobs", json={"format": "csv"}).get_json()
    assert run_jobs(app)["done"] == 2
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE export_jobs SET status = 'failed' WHERE id = :id"), {"id": failed["id"]}
        )
    directory = Path(app.extensions["gridapi"].settings.data_dir) / "exports"
    assert len(list(directory.iterdir())) == 2
    assert run_jobs(app) == {"done": 0, "failed": 0, "purged": 0}
    # The failed job's file is gone; the done one is still served.
    assert [path.name for path in directory.iterdir()] == [f"{done['id']}.csv"]
    writes: list[str] = []

    def before(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        head = statement.lstrip().upper()
        if head.startswith(("INSERT", "UPDATE", "DELETE", "BEGIN IMMEDIATE")):
            writes.append(statement)

    event.listen(Engine, "before_cursor_execute", before)
    try:
        assert run_jobs(app) == {"done": 0, "failed": 0, "purged": 0}
    finally:
        event.remove(Engine, "before_cursor_execute", before)
    assert writes == []
    ok(client.get(f"/api/v1/exports/cases/jobs/{done['id']}/file")).close()


def _failed(engine: Any, *job_ids: int) -> None:
    with engine.begin() as conn:
        for job_id in job_ids:
            conn.execute(
                text("UPDATE export_jobs SET status = 'failed', error = 'x' WHERE id = :id"),
                {"id": job_id},
            )


def _marked(engine: Any) -> dict[int, Any]:
    """The jobs whose file the worker recorded as deleted, and when."""
    with engine.connect() as conn:
        return dict(
            conn.execute(
                text(
                    "SELECT id, file_deleted_at FROM export_jobs"
                    " WHERE file_deleted_at IS NOT NULL ORDER BY id"
                )
            ).all()
        )


def test_a_failed_jobs_file_is_deleted_once_by_one_of_several_workers(client, world, app, engine):
    """Every round (every 2 s) of every worker deleted the file of every failed job again,
    for as long as the jobs were kept. Now the first round deletes it and marks the job
    (``file_deleted_at``); two workers at it at once mark each job once, and later rounds
    find nothing to do. The failed job is still shown, with its reason."""
    ids = [
        ok(client.post("/api/v1/exports/cases/jobs", json={"format": "csv"}), 202).get_json()["id"]
        for _ in range(3)
    ]
    assert run_jobs(app)["done"] == 3
    _failed(engine, ids[0], ids[1])
    options = job_options(app)
    barrier = threading.Barrier(2)
    marked: list[int] = []
    failures: list[BaseException] = []

    def worker() -> None:
        try:
            with job_runner_sessions(app) as sessions:  # an engine of its own, as a process
                barrier.wait(timeout=30)
                marked.append(exports_svc._delete_failed_files(sessions, options))
        except BaseException as exc:  # reported below, in the test's thread
            failures.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not failures, failures
    assert len(marked) == 2 and sum(marked) == 2  # each job marked by one of them, once
    directory = Path(app.extensions["gridapi"].settings.data_dir) / "exports"
    assert [path.name for path in directory.iterdir()] == [f"{ids[2]}.csv"]
    first = _marked(engine)
    assert set(first) == {ids[0], ids[1]}
    with job_runner_sessions(app) as sessions:
        assert exports_svc._delete_failed_files(sessions, options) == 0
    assert run_jobs(app) == {"done": 0, "failed": 0, "purged": 0}
    assert _marked(engine) == first  # nobody marked them again
    view = ok(client.get(f"/api/v1/exports/cases/jobs/{ids[0]}")).get_json()
    assert (view["status"], view["error"], view["download"]) == ("failed", "x", None)


@contextlib.contextmanager
def export_jobs_refused(engine: Any, *operations: str) -> Iterator[None]:
    """Make the database refuse ``operations`` (UPDATE, DELETE) of export jobs, as a lost
    connection or a lock timeout fails a transaction: a trigger raises "refused"."""
    with engine.begin() as conn:
        if engine.dialect.name == "sqlite":
            for operation in operations:
                conn.exec_driver_sql(
                    f"CREATE TRIGGER refuse_{operation} BEFORE {operation} ON export_jobs"
                    " BEGIN SELECT RAISE(ABORT, 'refused'); END"
                )
        else:
            conn.exec_driver_sql(
                "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql"
                " AS $$ BEGIN RAISE EXCEPTION 'refused'; END $$"
            )
            conn.exec_driver_sql(
                f"CREATE TRIGGER refuse BEFORE {' OR '.join(operations)} ON export_jobs"
                " FOR EACH ROW EXECUTE FUNCTION refuse()"
            )
    try:
        yield
    finally:
        with engine.begin() as conn:
            if engine.dialect.name == "sqlite":
                for operation in operations:
                    conn.exec_driver_sql(f"DROP TRIGGER refuse_{operation}")
            else:
                conn.exec_driver_sql("DROP TRIGGER refuse ON export_jobs")
                conn.exec_driver_sql("DROP FUNCTION refuse()")


def _expired_job(client: Any, app: Any) -> tuple[int, Path, datetime]:
    """A done job of cases, its file, and a moment past its retention."""
    job = ok(client.post("/api/v1/exports/cases/jobs", json={"format": "csv"}), 202).get_json()
    assert run_jobs(app)["done"] == 1
    path = Path(app.extensions["gridapi"].settings.data_dir) / "exports" / f"{job['id']}.csv"
    assert path.exists()
    later = datetime.now(UTC) + timedelta(
        hours=app.extensions["gridapi"].settings.export_retention_hours + 1
    )
    return job["id"], path, later


def test_a_purge_whose_transaction_fails_leaves_the_files_of_the_jobs_it_kept(
    client, world, app, engine
):
    """The purge deleted the expired jobs' files inside the transaction that deleted the
    jobs: when that transaction failed, the jobs stayed, listed as done, and their files
    were gone. Now nothing is deleted until the jobs are marked as having no file: a
    transaction that fails leaves the job served with its file, and the next round purges
    both."""
    from sqlalchemy.exc import DBAPIError

    job_id, path, later = _expired_job(client, app)
    with (
        export_jobs_refused(engine, "UPDATE", "DELETE"),
        pytest.raises(DBAPIError, match="refused"),
    ):
        run_jobs(app, now=later)
    assert path.exists()
    view = ok(client.get(f"/api/v1/exports/cases/jobs/{job_id}")).get_json()
    assert view["status"] == "done"
    filed = ok(client.get(view["download"]))
    assert len(parse_csv(filed)[1]) == 3
    filed.close()

    assert run_jobs(app, now=later)["purged"] == 1
    assert not path.exists()
    assert client.get(f"/api/v1/exports/cases/jobs/{job_id}").status_code == 404


def test_a_job_whose_file_is_gone_is_not_served_while_its_row_waits_to_be_deleted(
    client, world, app, engine
):
    """The files are deleted once the jobs are marked; when the rows' deletion then fails,
    or a file cannot be deleted (here a directory stands in its place), the jobs stay,
    marked: they answer 404, as expired, never "done" without a file, and a later round
    deletes what is left."""
    from sqlalchemy.exc import DBAPIError

    job_id, path, later = _expired_job(client, app)
    with export_jobs_refused(engine, "DELETE"), pytest.raises(DBAPIError, match="refused"):
        run_jobs(app, now=later)
    assert not path.exists()
    for url in (
        f"/api/v1/exports/cases/jobs/{job_id}",
        f"/api/v1/exports/cases/jobs/{job_id}/file",
    ):
        assert client.get(url).status_code == 404
    assert run_jobs(app, now=later)["purged"] == 1
    assert _marked(engine) == {}

    job_id, path, later = _expired_job(client, app)
    path.unlink()
    path.mkdir()  # os.unlink refuses it
    assert run_jobs(app, now=later)["purged"] == 0
    assert set(_marked(engine)) == {job_id}
    assert client.get(f"/api/v1/exports/cases/jobs/{job_id}").status_code == 404
    path.rmdir()
    assert run_jobs(app, now=later)["purged"] == 1
    assert _marked(engine) == {}


def _as_left_by_a_dead_worker(
    engine: Any, job_id: int, attempts: int, lease_until: datetime
) -> None:
    """Mark the job running as a worker that took it and was killed leaves it."""
    with engine.begin() as conn:
        conn.execute(
            text(
                "UPDATE export_jobs SET status = 'running', started_at = :at, attempts = :n, "
                "lease_until = :until WHERE id = :id"
            ),
            {
                "at": datetime.now(UTC) - timedelta(hours=1),
                "n": attempts,
                "until": lease_until,
                "id": job_id,
            },
        )


def _job_row(engine: Any, job_id: int) -> tuple[Any, ...]:
    with engine.connect() as conn:
        return tuple(
            conn.execute(
                text("SELECT status, attempts, lease_until FROM export_jobs WHERE id = :id"),
                {"id": job_id},
            ).one()
        )


def test_a_job_whose_worker_was_killed_is_taken_up_again(client, world, app, engine):
    job = client.post("/api/v1/exports/cases/jobs", json={"format": "csv"}).get_json()
    _as_left_by_a_dead_worker(engine, job["id"], 1, datetime.now(UTC) - timedelta(seconds=1))
    directory = Path(app.extensions["gridapi"].settings.data_dir) / "exports"
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{job['id']}.csv.1.part").write_bytes(b"id,number\n1,")  # its half file
    assert run_jobs(app) == {"done": 1, "failed": 0, "purged": 0}
    body = ok(client.get(f"/api/v1/exports/cases/jobs/{job['id']}")).get_json()
    assert body["status"] == "done" and body["row_count"] == 3
    assert _job_row(engine, job["id"])[:2] == ("done", 2)
    assert [p.name for p in directory.iterdir()] == [f"{job['id']}.csv"]
    filed = parse_csv(ok(client.get(body["download"])))
    assert filed == parse_csv(ok(client.get("/api/v1/exports/cases"))) and len(filed[1]) == 3


def test_a_job_under_a_live_lease_is_left_to_its_worker(client, world, app, engine):
    job = client.post("/api/v1/exports/cases/jobs", json={"format": "csv"}).get_json()
    _as_left_by_a_dead_worker(engine, job["id"], 1, datetime.now(UTC) + timedelta(minutes=4))
    assert run_jobs(app) == {"done": 0, "failed": 0, "purged": 0}
    assert _job_row(engine, job["id"])[:2] == ("running", 1)
    body = ok(client.get(f"/api/v1/exports/cases/jobs/{job['id']}")).get_json()
    assert body["status"] == "running" and body["download"] is None


def test_a_job_that_keeps_losing_its_worker_fails_with_a_reason(client, world, app, engine):
    job = client.post("/api/v1/exports/cases/jobs", json={"format": "csv"}).get_json()
    last = exports_svc.JOB_MAX_ATTEMPTS
    _as_left_by_a_dead_worker(engine, job["id"], last, datetime.now(UTC) - timedelta(seconds=1))
    assert run_jobs(app) == {"done": 0, "failed": 1, "purged": 0}
    body = ok(client.get(f"/api/v1/exports/cases/jobs/{job['id']}")).get_json()
    assert body["status"] == "failed" and body["download"] is None
    assert f"stopped while writing this export {last} times" in body["error"]
    assert _job_row(engine, job["id"]) == ("failed", last, None)


def test_a_worker_that_lost_its_lease_discards_its_file(client, world, app, engine):
    """Worker A took the job; its lease ran out and worker B took it over: A's file does not
    replace B's and A's outcome is not recorded."""
    st = app.extensions["gridapi"]
    options = job_options(app)
    job = client.post("/api/v1/exports/cases/jobs", json={"format": "csv"}).get_json()
    with job_runner_sessions(app) as sessions:
        assert exports_svc._claim(sessions, options, datetime.now(UTC)) == (job["id"], 1)
        until = datetime.now(UTC) + timedelta(minutes=5)
        _as_left_by_a_dead_worker(engine, job["id"], 2, until)  # B holds attempt 2
        assert exports_svc.run_job(sessions, options, job["id"], datetime.now(UTC), 1) == "lost"
    assert _job_row(engine, job["id"])[:2] == ("running", 2)
    directory = Path(st.settings.data_dir) / "exports"
    assert not directory.exists() or list(directory.iterdir()) == []


def test_a_worker_renews_its_lease_while_it_writes(client, world, app, engine):
    """With a lease shorter than a row takes, the worker renews it at every row (in a
    transaction of its own, beside the open read: SQLite's WAL allows it) and finishes."""
    options = job_options(app, lease_seconds=0.000_001)
    job = client.post("/api/v1/exports/cases/jobs", json={"format": "xlsx"}).get_json()
    with job_runner_sessions(app) as sessions:
        assert exports_svc.run_export_jobs(sessions, options) == {
            "done": 1,
            "failed": 0,
            "purged": 0,
        }
    assert _job_row(engine, job["id"]) == ("done", 1, None)
    body = ok(client.get(f"/api/v1/exports/cases/jobs/{job['id']}")).get_json()
    book = ok(client.get(body["download"]))
    assert len(list(load_workbook(io.BytesIO(book.get_data())).worksheets[0].values)) == 4


# --- export jobs beside the other writers (SQLite's one write lock) ---------------------------


@pytest.fixture
def of_every_kind(client, residents, accounts):  # type: ignore[no-untyped-def]
    """Cases (3), residents (3), visits (2) and tasks (2) to export."""
    office = accounts.client("office", "township_office", scope_region=TOWNSHIP)
    for grid in (A1, B1):
        body = {"title": f"走访独居老人 {grid}", "grid": grid, "due_in": SOON}
        ok(office.post("/api/v1/tasks", json=body), 201)
    return {"cases": 3, "persons": 3, "visits": 2, "tasks": 2}


@pytest.mark.parametrize("kind", ["cases", "tasks", "visits", "persons"])
def test_the_specs_examples_of_each_export_are_written_as_that_export_writes(
    client, of_every_kind, kind
):
    """The CSV and GeoJSON examples of the residents', visits' and tasks' exports (streamed
    and a job's file, 200 and 206) were copies of the cases' (编号,事件编号,状态)."""
    spec = client.get("/openapi.json").get_json()["paths"]
    headers, rows = parse_csv(ok(client.get(f"/api/v1/exports/{kind}")))
    exported = json.loads(ok(client.get(f"/api/v1/exports/{kind}?format=geojson")).get_data())
    feature = exported["features"][0]
    for path, code in [
        (f"/api/v1/exports/{kind}", "200"),
        (f"/api/v1/exports/{kind}/jobs/{{job_id}}/file", "200"),
        (f"/api/v1/exports/{kind}/jobs/{{job_id}}/file", "206"),
    ]:
        content = spec[path]["get"]["responses"][code]["content"]
        example = content["text/csv"]["example"]
        lines = example.removeprefix("\ufeff").split("\r\n")
        assert example.startswith("\ufeff") and lines[0].split(",") == headers, (path, code)
        (shown,) = content["application/geo+json"]["example"]["features"]
        assert list(shown["properties"]) == list(feature["properties"]), (path, code)
        if feature["geometry"] is not None:  # residents without a house have none
            assert shown["geometry"]["type"] == feature["geometry"]["type"], (path, code)
        for key, value in feature["properties"].items():
            if value is not None and shown["properties"][key] is not None:
                assert type(shown["properties"][key]) is type(value), (path, code, key)
    if kind == "persons":  # masked, as the export is unless unmasked with a purpose
        assert rows[0]["name"].endswith("*") and "****" in rows[0]["phone"]
        assert (shown["properties"]["name"], shown["properties"]["phone"]) == ("张*", "138****5678")
        assert shown["properties"]["id_number"] == "3205**********1234"
        assert "3205**********1234,138****5678" in example


def pausing_at_the_first_row(monkeypatch: Any, at_first_row: Any) -> None:
    """Call ``at_first_row()`` while a job writes its file, after its first row was read."""
    real = exports_svc.plan_for
    called: list[bool] = []

    def plan_for(*args: Any, **kwargs: Any) -> exports_svc.ExportPlan:
        plan = real(*args, **kwargs)

        def values(row: Any) -> list[Any]:
            if not called:
                called.append(True)
                at_first_row()
            return plan.values(row)

        return replace(plan, values=values)

    monkeypatch.setattr(exports_svc, "plan_for", plan_for)


@pytest.mark.parametrize(
    ("kind", "fmt"),
    [("cases", "csv"), ("tasks", "xlsx"), ("persons", "geojson"), ("visits", "csv")],
)
def test_gridapi_worker_writes_each_kind_while_a_request_writes_beside_it(
    client, of_every_kind, app, settings, monkeypatch, kind, fmt
):
    """`gridapi worker --once` (its own engine, as in production) writes the job's file; a
    request that writes while the file is being written is answered at once, and the job
    finishes. On SQLite the job held a write transaction open while it wrote the file: the
    request waited out the 30 s busy timeout (503), and so did the lease's renewal, which
    failed the job ("The export could not be written (OperationalError)")."""
    from .test_worker import cli

    job = ok(client.post(f"/api/v1/exports/{kind}/jobs", json={"format": fmt}), 202).get_json()
    during: list[tuple[str, int]] = []

    def a_request_writes() -> None:
        status = ok(client.get(f"/api/v1/exports/{kind}/jobs/{job['id']}")).get_json()["status"]
        body = {"code": "FIRE", "name": "消防", "region_code": COMMUNITY_A}
        during.append((status, client.post("/api/v1/departments", json=body).status_code))

    pausing_at_the_first_row(monkeypatch, a_request_writes)
    with writes_begun_as_reads() as unsafe:
        result = cli(settings, "worker", "--once")
    assert during == [("running", 201)]  # mid-run, and the write went through
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[-1] == "exports: done=1 failed=0 purged=0", result.output
    assert unsafe == []  # every write of the worker's round began as a writer's
    body = ok(client.get(f"/api/v1/exports/{kind}/jobs/{job['id']}")).get_json()
    assert (body["status"], body["error"]) == ("done", None)
    assert body["row_count"] == of_every_kind[kind]
    filed = ok(client.get(body["download"])).get_data()
    if fmt == "csv":
        assert filed.decode("utf-8-sig").count("\n") == of_every_kind[kind] + 1
    elif fmt == "xlsx":
        rows = list(load_workbook(io.BytesIO(filed)).worksheets[0].values)
        assert len(rows) == of_every_kind[kind] + 1
    else:
        assert len(json.loads(filed)["features"]) == of_every_kind[kind]
    assert any(d["name"] == "消防" for d in client.get("/api/v1/departments").get_json()["items"])


@pytest.mark.engines("sqlite")
def test_a_job_run_on_an_engine_that_begins_as_a_writer_still_reads_without_the_lock(
    client, world, app, monkeypatch
):
    """The job's read is a plain read whatever the engine's default (a command's begins every
    transaction IMMEDIATE): another connection writes while the file is written, and the
    lease is renewed at every row (a lease shorter than a row takes) beside the read."""
    job = ok(client.post("/api/v1/exports/cases/jobs", json={"format": "csv"}), 202).get_json()
    written: list[int] = []

    def another_connection_writes() -> None:
        # In a thread, so that a wait on the lock shows as a timeout here, not a 30 s stall.
        def write() -> None:
            written.append(client.post("/api/v1/departments", json=department).status_code)

        department = {"code": "FIRE", "name": "消防", "region_code": COMMUNITY_A}
        writer = threading.Thread(target=write)
        writer.start()
        writer.join(timeout=10)
        assert written == [201]

    pausing_at_the_first_row(monkeypatch, another_connection_writes)
    options = job_options(app, lease_seconds=0.000_001)
    with job_runner_sessions(app, sqlite_immediate=True) as sessions:
        counts = exports_svc.run_export_jobs(sessions, options)
    assert counts == {"done": 1, "failed": 0, "purged": 0}
    assert _job_row(app.extensions["gridapi"].engine, job["id"]) == ("done", 1, None)


def test_an_xlsx_longer_than_a_sheet_goes_on_in_further_sheets(client, world, app, monkeypatch):
    """A sheet holds at most 1,048,576 rows (Excel's limit); openpyxl wrote past it and
    Excel dropped the rest. Here a sheet of three rows: the header and two cases."""
    monkeypatch.setattr(exports_svc, "XLSX_MAX_ROWS", 3)
    for col in (3, 4):
        body = {
            "category": "0101",
            "description": "乱贴广告",
            "location": {"type": "Point", "coordinates": center(col)},
        }
        ok(client.post("/api/v1/cases", json=body), 201)
    listed = client.get("/api/v1/cases?sort=reported_at").get_json()["items"]
    assert len(listed) == 5
    r = ok(client.get("/api/v1/exports/cases?format=xlsx&sort=reported_at"))
    book = load_workbook(io.BytesIO(r.get_data()), read_only=True)
    assert book.sheetnames == ["事件", "事件(2)", "事件(3)"]
    ids = []
    for sheet in book.worksheets:
        rows = list(sheet.iter_rows(values_only=True))
        assert rows[0][:2] == ("编号", "事件编号") and 2 <= len(rows) <= 3
        ids += [row[0] for row in rows[1:]]
    assert ids == [c["id"] for c in listed]
    # A job's file too.
    job = ok(client.post("/api/v1/exports/cases/jobs", json={"format": "xlsx"}), 202).get_json()
    run_jobs(app)
    r = ok(client.get(f"/api/v1/exports/cases/jobs/{job['id']}/file"))
    book = load_workbook(io.BytesIO(r.get_data()), read_only=True)
    assert book.sheetnames == ["事件", "事件(2)", "事件(3)"]
    assert sum(len(list(sheet.iter_rows())) - 1 for sheet in book.worksheets) == 5
