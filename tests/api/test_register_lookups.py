"""Searches of the register by an exact ID or phone number are audited (both engines).

Such a search tells whether a given person lives in the caller's area, and where: a read of
sensitive personal information (PIPL; DOMAIN.md §7). Each one, in the search and in the
residents' export, hit or miss, writes a ``person.lookup`` row in the request's transaction:
the kind of number, the number masked (never in clear), how many residents matched and which,
and the purpose code and reference when stated. A search without a number writes none, and
the answers are what they were.
"""

from __future__ import annotations

import csv
import io
import json
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import text

from gridapi.personal import check_digit

from ..factories import COMMUNITY_A, COMMUNITY_B, COUNTY
from ..sqlite_locks import writes_begun_as_reads
from ..statements import statements_sent
from .test_sqlite_writers import HOLD_S, holding_the_write_lock

A1 = COMMUNITY_A + "001"
B1 = COMMUNITY_B + "001"
PHONE = "13812345678"
SHARED_PHONE = "13900001111"  # a parent's number, given for a child too


def make_id(seq: str = "123", born: str = "19900101", prefix: str = "320508") -> str:
    first = prefix + born + seq
    return first + check_digit(first)


def ok(response: Any, status: int = 200) -> Any:
    assert response.status_code == status, (response.status_code, response.get_data()[:500])
    return response


@pytest.fixture
def people(client, world) -> dict[str, dict[str, Any]]:  # type: ignore[no-untyped-def]
    def add(name: str, seq: str, phone: str, grid: str) -> dict[str, Any]:
        body = {"name": name, "id_number": make_id(seq), "phone": phone, "grid": grid}
        return ok(client.post("/api/v1/persons", json=body), 201).get_json()

    return {
        "zhang": add("张三", "101", PHONE, A1),
        "mother": add("王芳", "102", SHARED_PHONE, A1),
        "child": add("王小明", "103", SHARED_PHONE, A1),
        "li": add("李四", "104", "13700002222", B1),
    }


@pytest.fixture
def officer(accounts, world):  # type: ignore[no-untyped-def]
    return accounts.client("officer_a", "community_officer", scope_region=COMMUNITY_A)


@pytest.fixture
def centre(accounts, world):  # type: ignore[no-untyped-def]
    """The county centre: reads the audit log of the county."""
    return accounts.client("centre", "county_centre", scope_region=COUNTY)


def lookups(reader: Any) -> list[dict[str, Any]]:
    """The ``person.lookup`` entries the audit API lists to ``reader``, oldest first."""
    r = ok(reader.get("/api/v1/audit", query_string={"action": "person.lookup", "limit": 200}))
    return list(reversed(r.get_json()["items"]))


def audit_log_text(engine: Any) -> str:
    """Every audit row as text, all columns."""
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT * FROM audit_log ORDER BY id")).all()
    return json.dumps([[str(v) for v in row] for row in rows], ensure_ascii=False)


def count_rows(engine: Any, action: str | None = None) -> int:
    with engine.connect() as conn:
        if action is None:
            return conn.execute(text("SELECT count(*) FROM audit_log")).scalar_one()
        return conn.execute(
            text("SELECT count(*) FROM audit_log WHERE action = :a"), {"a": action}
        ).scalar_one()


def test_a_search_by_id_number_is_audited_with_the_number_masked(
    officer, centre, people, accounts, engine
):
    zhang = people["zhang"]
    number = make_id("101")
    r = ok(officer.get("/api/v1/persons", query_string={"id_number": number}))
    # The answer is what it was: the resident, masked, as any other search shows them.
    same = ok(officer.get(f"/api/v1/persons?grid={A1}")).get_json()["items"]
    assert r.get_json() == {
        "items": [p for p in same if p["id"] == zhang["id"]],
        "next_cursor": None,
    }
    assert r.get_json()["items"][0]["id_number"] == number[:4] + "*" * 10 + number[-4:]

    (entry,) = lookups(centre)  # the county centre over the officer reads it
    assert entry["actor_id"] == f"user:{accounts.ids['officer_a']}"
    assert entry["request_id"] == r.headers["X-Request-ID"]
    assert (entry["object_type"], entry["object_id"]) == ("person", str(zhang["id"]))
    assert entry["region_code"] == COMMUNITY_A
    assert entry["summary"] == {
        "by": ["id_number"],
        "id_number_masked": number[:4] + "**********" + number[-4:],
        "matched": 1,
        "person_ids": [zhang["id"]],
        "via": "search",
    }
    assert number not in audit_log_text(engine)
    assert number[6:14] not in audit_log_text(engine)  # nor its birth date
    # A lower-case x, spaces or full-width digits are the same number, masked the same way.
    ok(officer.get("/api/v1/persons", query_string={"id_number": f" {number.lower()} "}))
    assert (
        lookups(centre)[-1]["summary"]["id_number_masked"] == entry["summary"]["id_number_masked"]
    )


def test_a_search_that_finds_nobody_is_audited_and_committed(officer, centre, people, engine):
    """A miss answers the question too (this person does not live here): its row is
    committed with the empty answer, filed under the caller's area."""
    number = make_id("999")
    phone = "+86 158-0000-9999"
    r = ok(officer.get("/api/v1/persons", query_string={"id_number": number, "phone": phone}))
    assert r.get_json() == {"items": [], "next_cursor": None}
    (entry,) = lookups(centre)
    assert entry["object_id"] is None
    assert entry["region_code"] == COMMUNITY_A
    assert entry["summary"] == {
        "by": ["id_number", "phone"],
        "id_number_masked": number[:4] + "**********" + number[-4:],
        "phone_masked": "158****9999",
        "matched": 0,
        "person_ids": [],
        "via": "search",
    }
    logged = audit_log_text(engine)
    assert number not in logged and "15800009999" not in logged and "158-0000-9999" not in logged
    # A resident outside the caller's area is not found, and the row says so.
    ok(officer.get("/api/v1/persons", query_string={"id_number": make_id("104")}))
    assert lookups(centre)[-1]["summary"]["matched"] == 0


def test_a_phone_number_shared_by_several_residents(officer, centre, people, engine):
    r = ok(officer.get("/api/v1/persons", query_string={"phone": "139 0000 1111"}))
    ids = [p["id"] for p in r.get_json()["items"]]
    assert ids == [people["mother"]["id"], people["child"]["id"]]
    assert all(p["phone"] == "139****1111" for p in r.get_json()["items"])
    (entry,) = lookups(centre)
    assert entry["object_id"] is None  # about no one resident: the ids are in the summary
    assert entry["region_code"] == COMMUNITY_A
    assert entry["summary"]["by"] == ["phone"]
    assert entry["summary"]["phone_masked"] == "139****1111"
    assert (entry["summary"]["matched"], entry["summary"]["person_ids"]) == (2, ids)
    assert SHARED_PHONE not in audit_log_text(engine)
    # Yet it is in the history of each, and in each one's access export: an access request
    # of the child was answered without the lookup that found them.
    for person_id in ids:
        history = ok(
            centre.get(
                "/api/v1/audit",
                query_string={"object_type": "person", "object_id": person_id, "limit": 200},
            )
        ).get_json()["items"]
        assert entry["id"] in [row["id"] for row in history], person_id
        export = ok(
            centre.get(
                f"/api/v1/persons/{person_id}/export",
                query_string={"purpose_code": "subject_access"},
            )
        ).get_json()
        assert "person.lookup" in [row["action"] for row in export["processing"]]
    # Not in the history of a resident it did not find.
    zhang = people["zhang"]["id"]
    history = ok(
        centre.get("/api/v1/audit", query_string={"object_type": "person", "object_id": zhang})
    ).get_json()["items"]
    assert entry["id"] not in [row["id"] for row in history]
    # A page of it: each page is a lookup, and its row names what that page answered.
    r = ok(officer.get("/api/v1/persons", query_string={"phone": SHARED_PHONE, "limit": 1}))
    assert r.get_json()["next_cursor"] == ids[0]
    assert lookups(centre)[-1]["summary"]["person_ids"] == [ids[0]]
    assert lookups(centre)[-1]["object_id"] == str(ids[0])


def test_the_purpose_and_reference_are_kept_when_stated(officer, centre, people, engine):
    query = {
        "id_number": make_id("101"),
        "purpose_code": "identity_verification",
        "reference": "MZJ-2026/0412",
    }
    plain = ok(officer.get("/api/v1/persons", query_string={"id_number": make_id("101")}))
    stated = ok(officer.get("/api/v1/persons", query_string=query))
    assert stated.get_json() == plain.get_json()
    entry = lookups(centre)[-1]
    assert entry["summary"]["purpose_code"] == "identity_verification"
    assert entry["summary"]["reference"] == "MZJ-2026/0412"
    assert "purpose_code" not in lookups(centre)[0]["summary"]  # optional: none was stated
    before = count_rows(engine)
    # A reference that is an ID or phone number is refused (the log keeps it for good); so
    # is an unknown code. Nothing is looked up, counted or audited.
    for bad in (
        {"reference": make_id("101")},
        {"reference": "139-0000-1111"},
        {"reference": f"{make_id('101')[:6]}-{make_id('101')[6:14]}-{make_id('101')[14:]}"},
        {"purpose_code": "curiosity"},
    ):
        r = officer.get("/api/v1/persons", query_string={"id_number": make_id("101"), **bad})
        assert r.status_code == 422, r.get_json()
        assert set(r.get_json()["errors"]["query"]) == set(bad)
    assert count_rows(engine) == before


def test_a_whole_name_searched_by_a_caller_shown_masked_names_is_audited(
    centre, people, accounts, engine
):
    """A grid worker sees residents as 张*; searching 张三 tests a guess at the hidden part
    (counted against the lookup allowance as a number is). It was not audited: it now writes
    its `person.lookup` row as a search by number does, the name masked. One character
    looks nobody up, and a caller who sees whole names (the officer) searches by them as
    before, unaudited (test below)."""
    worker = accounts.client("worker_a", "grid_worker", grids=[A1])
    zhang = people["zhang"]
    r = ok(worker.get("/api/v1/persons", query_string={"name": "张三"}))
    assert [p["id"] for p in r.get_json()["items"]] == [zhang["id"]]
    assert r.get_json()["items"][0]["name"] == "张*"
    (entry,) = lookups(centre)
    assert entry["actor_id"] == f"user:{accounts.ids['worker_a']}"
    assert (entry["object_type"], entry["object_id"]) == ("person", str(zhang["id"]))
    assert entry["region_code"] == COMMUNITY_A
    assert entry["summary"] == {
        "by": ["name"],
        "name_masked": "张*",
        "matched": 1,
        "person_ids": [zhang["id"]],
        "via": "search",
    }
    assert "张三" not in audit_log_text(engine)
    # A miss is a row too; one character is no lookup.
    ok(worker.get("/api/v1/persons", query_string={"name": "张伟"}))
    assert lookups(centre)[-1]["summary"]["matched"] == 0
    ok(worker.get("/api/v1/persons", query_string={"name": "张"}))
    assert len(lookups(centre)) == 2
    # The residents' export by a whole name is the same lookup, audited as the search's.
    ok(worker.get("/api/v1/exports/persons", query_string={"name": "张三", "format": "csv"}))
    exported = lookups(centre)[-1]
    assert exported["summary"] == {**entry["summary"], "via": "export"}
    assert exported["object_id"] == str(zhang["id"])
    # So is an export job's: queued, it was counted and wrote no row (the history and the
    # access export of the resident in its file did not show it).
    job = worker.post(
        "/api/v1/exports/persons/jobs", json={"format": "csv", "filters": {"name": "张三"}}
    )
    assert job.status_code == 202, job.get_json()
    queued = lookups(centre)[-1]
    assert queued["summary"] == {**entry["summary"], "via": "export_job"}
    assert queued["object_id"] == str(zhang["id"])
    assert "张三" not in audit_log_text(engine)


def test_a_search_without_a_number_writes_no_row(officer, client, people, engine):
    before = count_rows(engine)
    for query in (
        {},
        {"name": "张"},
        {"name": "张三"},  # by callers who see whole names
        {"grid": A1},
        {"address": "平江路"},
        {"household_id": 1},
        {"id_number": ""},
        {"phone": ""},
        # a purpose alone looks nothing up: accepted, and kept nowhere
        {"grid": A1, "purpose_code": "statistics", "reference": "TJ-2026/1"},
    ):
        ok(officer.get("/api/v1/persons", query_string=query))
        ok(client.get("/api/v1/persons", query_string=query))
    assert count_rows(engine) == before


def test_a_malformed_or_refused_lookup_writes_no_row(app, officer, people, engine):
    before = count_rows(engine)
    r = officer.get("/api/v1/persons", query_string={"id_number": "12345"})
    assert r.status_code == 422 and r.get_json()["errors"]["query"]["id_number"]
    r = officer.get("/api/v1/persons", query_string={"phone": "12345"})
    assert r.status_code == 422 and r.get_json()["errors"]["query"]["phone"]
    assert count_rows(engine) == before
    # Past the allowance: 429 before anything is looked up, and nothing is audited.
    app.extensions["gridapi"].settings.person_lookup_rate = "1 per hour"
    ok(officer.get("/api/v1/persons", query_string={"id_number": make_id("101")}))
    assert count_rows(engine, "person.lookup") == 1
    r = officer.get("/api/v1/persons", query_string={"phone": PHONE})
    assert r.status_code == 429
    assert count_rows(engine, "person.lookup") == 1


def test_a_create_or_change_refused_for_a_registered_number_is_audited_as_a_lookup(
    app, officer, centre, client, people, engine
):
    """A 409 "already registered in the county" tells the caller that someone in the county
    has that ID number, wherever they live (here in a community the officer cannot see): a
    lookup of that resident, audited as the search's, about them and filed under their
    region; it shows in their access export. Before, the refused write was rolled back with
    nothing audited."""
    li, zhang = people["li"], people["zhang"]
    number = make_id("104")  # 李四's, in community B
    r = officer.post("/api/v1/persons", json={"name": "赵六", "id_number": number, "grid": A1})
    assert r.status_code == 409, r.get_json()
    assert r.get_json()["errors"]["json"]["id_number"] == ["already registered in the county"]
    (entry,) = lookups(centre)
    assert (entry["object_type"], entry["object_id"]) == ("person", str(li["id"]))
    assert entry["region_code"] == COMMUNITY_B
    assert entry["request_id"] == r.headers["X-Request-ID"]
    assert entry["summary"] == {
        "by": ["id_number"],
        "id_number_masked": number[:4] + "**********" + number[-4:],
        "matched": 1,
        "person_ids": [li["id"]],
        "via": "create",
    }
    assert number not in audit_log_text(engine)
    assert count_rows(engine, "person.create") == 4  # the fixture's four, not a fifth

    # A change of a resident's number to one registered in the county: the same.
    tag = ok(officer.get(f"/api/v1/persons/{zhang['id']}")).headers["ETag"]
    r = officer.patch(
        f"/api/v1/persons/{zhang['id']}",
        json={"id_number": number},
        headers={"If-Match": tag},
    )
    assert r.status_code == 409, r.get_json()
    entry = lookups(centre)[-1]
    assert (entry["object_id"], entry["summary"]["via"]) == (str(li["id"]), "update")
    assert entry["summary"]["id_number_masked"] == number[:4] + "**********" + number[-4:]
    assert ok(officer.get(f"/api/v1/persons/{zhang['id']}")).get_json()["id_number"] == (
        make_id("101")[:4] + "**********" + make_id("101")[-4:]
    )  # unchanged
    assert count_rows(engine, "person.update") == 0

    # The resident's access export lists both lookups of them.
    export = ok(
        client.get(
            f"/api/v1/persons/{li['id']}/export",
            query_string={"purpose_code": "subject_access", "reference": "SAR-1"},
        )
    ).get_json()
    assert "person.lookup" in json.dumps(export)

    # Past the allowance: 429 before the number is looked up, and nothing is audited.
    app.extensions["gridapi"].settings.person_lookup_rate = "1 per hour"
    before = count_rows(engine, "person.lookup")
    r = officer.post("/api/v1/persons", json={"name": "赵六", "id_number": number, "grid": A1})
    assert r.status_code == 409
    r = officer.post("/api/v1/persons", json={"name": "赵六", "id_number": number, "grid": A1})
    assert r.status_code == 429
    assert count_rows(engine, "person.lookup") == before + 1


def test_a_number_shared_by_many_residents_is_in_each_ones_history(client, officer, centre):
    """A care home's duty phone, given for its 60 residents: the export by it names all 60, and
    the lookup is in the history of the last as of the first. Its row kept 50 ids, so the
    access export (查阅复制) of ten residents whose records the file held did not show it."""
    home = "13655550000"
    ids = [
        ok(
            client.post(
                "/api/v1/persons",
                json={
                    "name": "陈老",
                    "id_number": make_id(f"{200 + n}"),
                    "phone": home,
                    "grid": A1,
                },
            ),
            201,
        ).get_json()["id"]
        for n in range(60)
    ]
    ok(officer.get("/api/v1/exports/persons", query_string={"phone": home}))
    page = ok(officer.get("/api/v1/persons", query_string={"phone": home, "limit": 100}))
    assert [p["id"] for p in page.get_json()["items"]] == ids
    export_row, search_row = lookups(centre)
    for entry, via in ((export_row, "export"), (search_row, "search")):
        assert entry["summary"]["via"] == via
        assert (entry["summary"]["matched"], entry["summary"]["person_ids"]) == (60, ids)
    history = ok(
        centre.get("/api/v1/audit", query_string={"object_type": "person", "object_id": ids[-1]})
    ).get_json()["items"]
    assert {export_row["id"], search_row["id"]} <= {row["id"] for row in history}


def _plan(conn: Any, statement: str, parameters: Any) -> str:
    if conn.dialect.name == "postgresql":
        return json.dumps(
            conn.exec_driver_sql("EXPLAIN (FORMAT JSON) " + statement, parameters).scalar()
        )
    rows = conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, parameters).all()
    return " | ".join(str(row[-1]) for row in rows)


def test_a_residents_history_is_read_from_indexes_in_a_long_log(centre, people, engine):
    """Since the history of a resident took the lookups naming them among several, it read
    every row of the log on PostgreSQL (a backward scan of its key, filtering: 580 ms at 1.5
    million rows), until 0060's index of those lookups' residents. The statements of the
    history and of the access export (查阅复制) are planned on indexes on both engines."""
    mother = people["mother"]["id"]
    lookup = json.dumps({"by": ["phone"], "matched": 0, "person_ids": [], "via": "search"})
    found = json.dumps({"by": ["phone"], "matched": 2, "person_ids": [mother, 10**6]})
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO audit_log (at, actor_type, actor_id, action, object_type, "
                "object_id, region_code, summary) VALUES (:at, 'user', 'user:1', :action, "
                ":type, :object_id, :region, :summary)"
            ),
            [
                {
                    "at": datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=i),
                    "action": "person.lookup" if i % 2 else "case.report",
                    "type": "person" if i % 2 else "case",
                    "object_id": None if i % 2 else str(i),
                    "region": COMMUNITY_A,
                    "summary": found if i % 1000 == 1 else lookup,
                }
                for i in range(20_000)
            ],
        )
        conn.exec_driver_sql("ANALYZE audit_log")
    with statements_sent(engine, lambda s: "FROM audit_log" in s, parameters=True) as sent:
        history = ok(
            centre.get("/api/v1/audit", query_string={"object_type": "person", "object_id": mother})
        ).get_json()["items"]
        export = ok(
            centre.get(
                f"/api/v1/persons/{mother}/export", query_string={"purpose_code": "subject_access"}
            )
        ).get_json()
    assert len([row for row in history if row["action"] == "person.lookup"]) == 20
    assert len([r for r in export["processing"] if r["action"] == "person.lookup"]) == 20
    assert len(sent) == 2, sent
    with engine.connect() as conn:
        for statement, parameters in sent:
            plan = _plan(conn, statement, parameters)
            if engine.dialect.name == "postgresql":
                assert "ix_audit_log_person_ids" in plan, plan
                assert "pk_audit_log" not in plan and "Seq Scan" not in plan, plan
            else:  # each branch of the condition from ix_audit_log_object
                assert "SCAN audit_log" not in plan.replace("USING INDEX", ""), plan
                assert "ix_audit_log_object" in plan, plan


def test_an_export_by_number_is_audited_as_the_search_is(officer, centre, people, engine):
    def rows(response: Any) -> list[list[str]]:
        return list(csv.reader(io.StringIO(response.get_data(as_text=True).lstrip("\ufeff"))))

    masked = ok(officer.get("/api/v1/exports/persons", query_string={"phone": SHARED_PHONE}))
    by_grid = ok(officer.get("/api/v1/exports/persons", query_string={"grid": A1}))
    family = {str(people["mother"]["id"]), str(people["child"]["id"])}
    assert rows(masked)[1:] == [row for row in rows(by_grid)[1:] if row[0] in family]
    assert count_rows(engine, "person.lookup") == 1  # the grid's export looked nothing up
    entry = lookups(centre)[-1]
    assert entry["summary"] == {
        "by": ["phone"],
        "phone_masked": "139****1111",
        "matched": 2,
        "person_ids": sorted(int(i) for i in family),
        "via": "export",
    }
    # Unmasked, with its purpose: the lookup's row keeps the purpose as the export's does.
    query = {
        "id_number": make_id("101"),
        "unmask": "true",
        "purpose_code": "legal_request",
        "reference": "GA-2026/77",
    }
    full = rows(ok(officer.get("/api/v1/exports/persons", query_string=query)))
    assert [row[0] for row in full[1:]] == [str(people["zhang"]["id"])]
    assert make_id("101") in full[1]  # the file has it in full: the log does not
    entry = lookups(centre)[-1]
    assert (entry["object_id"], entry["region_code"]) == (str(people["zhang"]["id"]), A1[:12])
    assert entry["summary"] == {
        "by": ["id_number"],
        "id_number_masked": make_id("101")[:4] + "**********" + make_id("101")[-4:],
        "matched": 1,
        "person_ids": [people["zhang"]["id"]],
        "via": "export",
        "purpose_code": "legal_request",
        "reference": "GA-2026/77",
    }
    # The export's own row is as it was: the filter named, its value not.
    with engine.connect() as conn:
        summary = conn.execute(
            text("SELECT summary FROM audit_log WHERE action = 'export.download' ORDER BY id DESC")
        ).scalar()
    summary = json.loads(summary) if isinstance(summary, str) else summary
    assert list(summary["filters"]) == ["id_number"]
    # A miss in the export is committed too.
    ok(officer.get("/api/v1/exports/persons", query_string={"id_number": make_id("998")}))
    assert lookups(centre)[-1]["summary"]["matched"] == 0
    logged = audit_log_text(engine)
    for value in (make_id("101"), make_id("998"), SHARED_PHONE):
        assert value not in logged


def test_a_queued_export_cannot_search_by_number(officer, people, engine):
    """A job keeps its filters until it has run: an exact number is refused there (422), so
    no job looks one up unaudited."""
    before = count_rows(engine)
    for filters in ({"id_number": make_id("101")}, {"phone": PHONE}):
        r = officer.post("/api/v1/exports/persons/jobs", json={"filters": filters})
        assert r.status_code == 422, r.get_json()
        assert set(r.get_json()["errors"]["json"]["filters"]) == set(filters)
    assert count_rows(engine) == before


def searched_while_a_writer_holds_the_lock(engine: Any, caller: Any, query: dict) -> Any:
    """Search residents as ``caller`` while another connection holds SQLite's write lock;
    assert the answer did not wait for the writer (the search began as a plain read)."""
    writer = holding_the_write_lock(engine)
    began = time.monotonic()
    r = ok(caller.get("/api/v1/persons", query_string=query))
    assert time.monotonic() - began < HOLD_S * 0.5  # it did not wait for the writer
    writer.join()
    return r


@pytest.mark.engines("sqlite")
def test_on_sqlite_a_lookup_begins_as_a_writer_and_a_plain_search_as_a_read(
    officer, people, engine
):
    """A search by number writes its audit row: on SQLite its transaction begins as a
    writer's (begun as a read, its INSERT is refused at once, "database is locked", whenever
    another connection committed meanwhile). A search that looks no number up stays a plain
    read, answered while a writer holds the lock."""
    with writes_begun_as_reads() as unsafe:
        r = ok(officer.get("/api/v1/persons", query_string={"id_number": make_id("101")}))
        ok(officer.get("/api/v1/persons", query_string={"phone": SHARED_PHONE}))
    assert [p["id"] for p in r.get_json()["items"]] == [people["zhang"]["id"]]
    assert count_rows(engine, "person.lookup") == 2
    assert unsafe == []
    r = searched_while_a_writer_holds_the_lock(engine, officer, {"name": "张"})
    assert len(r.get_json()["items"]) == 1


@pytest.mark.engines("sqlite")
def test_on_sqlite_a_whole_name_begins_as_a_writer_only_for_a_caller_shown_masked_names(
    officer, accounts, people, engine
):
    """A grid worker's search by a whole name writes its audit row (it sees names masked):
    its transaction begins as a writer's. The officer, who sees whole names, searches by
    them unaudited, and stays a plain read, answered while a writer holds the lock: the
    search did not know the caller yet and began every whole-name search as a writer's."""
    worker = accounts.client("worker_a", "grid_worker", grids=[A1])
    with writes_begun_as_reads() as unsafe:
        r = ok(worker.get("/api/v1/persons", query_string={"name": "张三"}))
    assert [p["id"] for p in r.get_json()["items"]] == [people["zhang"]["id"]]
    assert count_rows(engine, "person.lookup") == 1
    assert unsafe == []
    r = searched_while_a_writer_holds_the_lock(engine, officer, {"name": "张三"})
    assert [p["id"] for p in r.get_json()["items"]] == [people["zhang"]["id"]]
    assert count_rows(engine, "person.lookup") == 1
    # Credentials refused: 401, as before, and nothing written.
    bad = worker.get(
        "/api/v1/persons", query_string={"name": "张三"}, headers={"Authorization": "Bearer x"}
    )
    assert bad.status_code == 401
