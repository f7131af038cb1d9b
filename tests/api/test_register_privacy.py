"""Personal data at rest, in logs and on the wire (both engines).

ID numbers, phone numbers and special-group notes never reach the database, its WAL or the
logs in plaintext; stored values moved between rows or altered answer 500 in the one error
body, never someone else's value; reads are masked; bad values are 422 with the reason.
"""

from __future__ import annotations

import base64
import json
import logging
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, text
from sqlalchemy.engine import make_url

from gridapi.models import AuditEntry
from gridapi.personal import check_digit

from ..factories import COMMUNITY_A

A1 = COMMUNITY_A + "001"
ERROR_KEYS = {"code", "status", "message", "errors"}
PURPOSE = "核实低保申请人身份"
NOTES = "多次到市政府上访，情绪激动，需每周走访"


def make_id(prefix: str = "320508", born: str = "19900101", seq: str = "123") -> str:
    first = prefix + born + seq
    return first + check_digit(first)


def id_ending_in_x(prefix: str, born: str) -> str:
    return next(
        make_id(prefix, born, f"{n:03d}")
        for n in range(1000)
        if make_id(prefix, born, f"{n:03d}").endswith("X")
    )


# name, ID number as sent, ID number stored, phone as sent, phone stored
PEOPLE = [
    ("张三", make_id(), make_id(), "13812345678", "13812345678"),
    (
        "李四",
        id_ending_in_x("320508", "19751231").lower(),
        id_ending_in_x("320508", "19751231"),
        "+86 139-0011-2233",
        "13900112233",
    ),
    (
        "王五",
        make_id("110105", "20000229", "042"),
        make_id("110105", "20000229", "042"),
        "158 5739 1246",
        "15857391246",
    ),  # fmt: skip
    (
        "欧阳修",
        make_id("440305", "19481107", "871"),
        make_id("440305", "19481107", "871"),
        "0086 18600001111",
        "18600001111",
    ),  # fmt: skip
]
NEW_PHONE = "17722334455"


@pytest.fixture
def settings(settings):  # type: ignore[no-untyped-def]
    """The shared settings with room for this module's many exact lookups."""
    return replace(settings, person_lookup_rate="1000 per hour")


@pytest.fixture
def debug_logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """Every log record at DEBUG from before the application is created, SQLAlchemy's
    statements and parameters included (it keeps its own loggers at WARNING otherwise)."""
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="sqlalchemy.engine")
    return caplog


def create(client: Any, name: str, id_number: str, phone: str, **extra: Any) -> dict[str, Any]:
    where = {} if "household_id" in extra else {"grid": A1}
    r = client.post(
        "/api/v1/persons",
        json={"name": name, "id_number": id_number, "phone": phone, **where, **extra},
    )
    assert r.status_code == 201, r.get_json()
    return r.get_json()


def create_people(client: Any) -> list[dict[str, Any]]:
    return [create(client, name, sent_id, sent_phone) for name, sent_id, _, sent_phone, _ in PEOPLE]


def assert_error(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.get_json()
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert set(body) == ERROR_KEYS
    assert body["code"] == status
    return body


def secrets_of(*extra: str) -> list[str]:
    """Every plaintext that must never be stored or logged, in the forms it was seen."""
    values = {NOTES, NEW_PHONE, *extra}
    for _, sent_id, stored_id, sent_phone, stored_phone in PEOPLE:
        values |= {sent_id, stored_id, sent_phone, stored_phone}
    return sorted(values)


def hits(haystack: bytes, secrets: list[str]) -> list[str]:
    return [s for s in secrets if s.encode() in haystack]


# --- the scans --------------------------------------------------------------------------------


def database_bytes(engine: Any) -> bytes:
    """Everything the database holds, as bytes: the SQLite files (after a checkpoint, and the
    WAL too), or every text, varchar and JSON column of every PostgreSQL table."""
    if engine.dialect.name == "sqlite":
        with engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        path = Path(make_url(str(engine.url)).database)
        files = [path] + [Path(f"{path}{suffix}") for suffix in ("-wal", "-journal", "-shm")]
        blob = b"".join(f.read_bytes() for f in files if f.exists())
        assert len(blob) > 100_000  # really the database, not an empty file
        return blob
    chunks: list[str] = []
    with engine.connect() as conn:
        columns = conn.execute(
            text(
                "SELECT c.table_name, c.column_name FROM information_schema.columns c "
                "JOIN information_schema.tables t "
                "ON t.table_schema = c.table_schema AND t.table_name = c.table_name "
                "WHERE c.table_schema = 'public' AND t.table_type = 'BASE TABLE' "
                "AND c.data_type IN ('text', 'character varying', 'character', 'json', 'jsonb')"
            )
        ).all()
        assert ("persons", "phone_enc") in columns
        assert ("audit_log", "summary") in columns
        for table, column in columns:
            chunks.extend(
                v
                for (v,) in conn.execute(
                    text(f'SELECT "{column}"::text FROM "{table}" WHERE "{column}" IS NOT NULL')
                )
            )
    return "\n".join(chunks).encode()


def audit_bytes(session_factory: Any) -> bytes:
    with session_factory() as session:
        rows = session.scalars(select(AuditEntry).order_by(AuditEntry.id)).all()
        assert rows
        dumped = [
            json.dumps(
                {c.name: getattr(r, c.name) for c in AuditEntry.__table__.columns},
                ensure_ascii=False,
                default=str,
            )
            for r in rows
        ]
    return "\n".join(dumped).encode()


def log_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return caplog.get_records("setup") + caplog.get_records("call")


def log_bytes(caplog: pytest.LogCaptureFixture) -> bytes:
    parts = [caplog.text]
    for record in log_records(caplog):
        parts.append(record.getMessage())
        parts.append(repr(record.args))
        if record.exc_text:
            parts.append(record.exc_text)
    return "\n".join(parts).encode()


# --- no plaintext at rest or in logs ----------------------------------------------------------


def test_no_plaintext_in_the_database_or_the_logs(debug_logs, client, world, app, engine):
    people = create_people(client)
    ids = [p["id"] for p in people]

    # A special-group record with notes, read back.
    r = client.post(
        "/api/v1/special-groups", json={"person_id": ids[0], "type": "petitioner", "notes": NOTES}
    )
    assert r.status_code == 201, r.get_json()
    record_id = r.get_json()["id"]
    assert r.get_json()["notes"] == NOTES
    assert client.get(f"/api/v1/special-groups/{record_id}").get_json()["notes"] == NOTES

    # Exact searches by every form of every value, and by name.
    for pid, (_, sent_id, stored_id, sent_phone, stored_phone) in zip(ids, PEOPLE, strict=True):
        for query in (
            {"id_number": sent_id},
            {"id_number": stored_id},
            {"phone": sent_phone},
            {"phone": stored_phone},
        ):
            r = client.get("/api/v1/persons", query_string=query)
            assert r.status_code == 200, r.get_json()
            assert [p["id"] for p in r.get_json()["items"]] == [pid], query
    r = client.get("/api/v1/persons", query_string={"name": "欧阳"})
    assert [p["id"] for p in r.get_json()["items"]] == [ids[3]]

    # Full values through the audited reads.
    for pid, (name, _, stored_id, _, stored_phone) in zip(ids, PEOPLE, strict=True):
        r = client.get(f"/api/v1/persons/{pid}/sensitive", query_string={"purpose": PURPOSE})
        assert r.status_code == 200, r.get_json()
        body = r.get_json()
        assert (body["name"], body["id_number"], body["phone"]) == (name, stored_id, stored_phone)
    r = client.get(f"/api/v1/persons/{ids[0]}/export", query_string={"purpose": PURPOSE})
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["special_groups"][0]["notes"] == NOTES

    # A changed phone: found by the new number only.
    r = client.patch(f"/api/v1/persons/{ids[1]}", json={"phone": NEW_PHONE})
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["phone"] == "177****4455"
    found = client.get("/api/v1/persons", query_string={"phone": NEW_PHONE}).get_json()["items"]
    assert [p["id"] for p in found] == [ids[1]]
    assert client.get("/api/v1/persons", query_string={"phone": PEOPLE[1][4]}).get_json() == {
        "items": [],
        "next_cursor": None,
    }
    r = client.get(f"/api/v1/persons/{ids[1]}/sensitive", query_string={"purpose": PURPOSE})
    assert r.get_json()["phone"] == NEW_PHONE

    secrets = secrets_of()
    at_rest = database_bytes(engine)
    assert hits(at_rest, secrets) == []
    # The scan does find what is stored in plaintext (names, the grid code).
    assert hits(at_rest, ["欧阳修", A1]) == ["欧阳修", A1]
    assert hits(audit_bytes(app.extensions["gridapi"].sessions), secrets) == []
    logged = log_bytes(debug_logs)
    # The capture really ran: the statements that wrote the ciphertexts were logged.
    assert b"INSERT INTO persons" in logged
    assert b"v1:" in logged
    assert hits(logged, secrets) == []


# --- moved and tampered ciphertexts -----------------------------------------------------------


def _set_column(engine: Any, person_id: int, column: str, value: str) -> None:
    with engine.begin() as conn:
        conn.execute(
            text(f"UPDATE persons SET {column} = :v WHERE id = :id"), {"v": value, "id": person_id}
        )


def _get_column(engine: Any, person_id: int, column: str) -> str:
    with engine.connect() as conn:
        return conn.execute(
            text(f"SELECT {column} FROM persons WHERE id = :id"), {"id": person_id}
        ).scalar_one()


def _assert_rejected(client: Any, person_id: int, logs: pytest.LogCaptureFixture) -> None:
    """Every read of the person answers 500 in the one error body, with no value in it."""
    secrets = secrets_of()
    masked = [re.escape(s[:3]) + r"\*{4}" for s in secrets if re.fullmatch(r"1[0-9]{10}", s)]
    responses = [
        client.get(f"/api/v1/persons/{person_id}"),
        client.get(f"/api/v1/persons/{person_id}/sensitive", query_string={"purpose": PURPOSE}),
        client.get("/api/v1/persons", query_string={"name": "李"}),
    ]
    for response in responses:
        body = assert_error(response, 500)
        assert body["status"] == "Internal Server Error"
        assert "integrity check" in body["message"]
        raw = response.get_data()
        assert hits(raw, secrets) == []
        assert not any(re.search(m.encode(), raw) for m in masked)
        assert b"****" not in raw
    # Logged: where (table, column, row), never the value.
    rejected = [r for r in logs.records if "stored value rejected" in r.getMessage()]
    assert len(rejected) == len(responses)
    assert hits(log_bytes(logs), secrets) == []


@pytest.mark.parametrize("column", ["phone_enc", "id_number_enc"])
def test_a_ciphertext_copied_to_another_row_answers_500(debug_logs, client, world, engine, column):
    people = create_people(client)
    source, target = people[0]["id"], people[1]["id"]
    _set_column(engine, target, column, _get_column(engine, source, column))
    # The source row itself still reads.
    assert client.get(f"/api/v1/persons/{source}").status_code == 200
    _assert_rejected(client, target, debug_logs)
    rejected = next(r for r in debug_logs.records if "stored value rejected" in r.getMessage())
    assert f"persons.{column.removesuffix('_enc')} of row" in rejected.getMessage()


@pytest.mark.parametrize("column", ["phone_enc", "id_number_enc"])
def test_a_tampered_ciphertext_answers_500(debug_logs, client, world, engine, column):
    people = create_people(client)
    target = people[1]["id"]
    stored = _get_column(engine, target, column)
    assert stored.startswith("v")
    # One base64 character in the middle of the body (never one of spare padding bits).
    position = len(stored) // 2
    flipped = "B" if stored[position] != "B" else "C"
    tampered = stored[:position] + flipped + stored[position + 1 :]
    base64.b64decode(tampered.partition(":")[2], validate=True)  # still well-formed base64
    _set_column(engine, target, column, tampered)
    _assert_rejected(client, target, debug_logs)


def test_a_special_group_note_moved_to_another_record_answers_500(client, world, engine):
    people = create_people(client)
    made = [
        client.post(
            "/api/v1/special-groups",
            json={"person_id": people[i]["id"], "type": "petitioner", "notes": f"{NOTES}{i}"},
        ).get_json()["id"]
        for i in (0, 1)
    ]
    with engine.begin() as conn:
        conn.execute(
            text(
                "UPDATE special_group_records SET notes_enc = "
                "(SELECT notes_enc FROM special_group_records WHERE id = :src) WHERE id = :dst"
            ),
            {"src": made[0], "dst": made[1]},
        )
    assert client.get(f"/api/v1/special-groups/{made[0]}").get_json()["notes"] == f"{NOTES}0"
    r = client.get(f"/api/v1/special-groups/{made[1]}")
    body = assert_error(r, 500)
    assert NOTES.encode() not in r.get_data()
    assert "integrity check" in body["message"]


# --- masked views -----------------------------------------------------------------------------

MASKED_PHONE = re.compile(r"1[3-9][0-9]\*{4}[0-9]{4}")
MASKED_ID = re.compile(r"[0-9]{4}\*{10}[0-9]{3}[0-9X]")


def test_reads_are_masked(client, world):
    r = client.post("/api/v1/households", json={"number": "0001", "grid": A1})
    assert r.status_code == 201, r.get_json()
    household = r.get_json()["id"]
    made = create(client, "张三", make_id(), "13812345678", household_id=household)
    assert made["name"] == "张*"
    assert made["phone"] == "138****5678"
    assert made["id_number"] == "3205**********" + make_id()[-4:]
    assert made["masked"] is True
    others = [create(client, name, i, p) for name, i, _, p, _ in PEOPLE[1:]]
    assert [o["name"] for o in others] == ["李*", "王*", "欧**"]

    views = [
        made,
        client.get(f"/api/v1/persons/{made['id']}").get_json(),
        *client.get("/api/v1/persons", query_string={"grid": A1}).get_json()["items"],
        *client.get(f"/api/v1/households/{household}").get_json()["members"],
    ]
    for view in views:
        assert MASKED_PHONE.fullmatch(view["phone"]), view
        assert MASKED_ID.fullmatch(view["id_number"]), view
        assert len(view["name"]) >= 2 and set(view["name"][1:]) == {"*"}
        assert view["masked"] is True
    pages = b"".join(
        client.get(path).get_data()
        for path in (
            f"/api/v1/persons/{made['id']}",
            "/api/v1/persons?limit=200",
            f"/api/v1/households/{household}",
        )
    )
    assert hits(pages, [s for s in secrets_of() if s != NOTES]) == []
    assert "张三".encode() not in pages


def test_full_values_are_kept_in_no_cache(client, world):
    """Answers with full values (as exports' files already were) say no-store: "no-cache"
    let a browser on an office's shared computer keep the ID numbers on its disk."""
    made = create(client, "张三", make_id(), "13812345678")
    r = client.post(
        "/api/v1/special-groups",
        json={"person_id": made["id"], "type": "petitioner", "notes": NOTES},
    )
    assert r.status_code == 201, r.get_json()
    record_id = r.get_json()["id"]
    purpose = {"purpose": PURPOSE}
    for path, query in (
        (f"/api/v1/persons/{made['id']}/sensitive", purpose),
        (f"/api/v1/persons/{made['id']}/export", purpose),
        (f"/api/v1/special-groups/{record_id}", {}),
        ("/api/v1/special-groups", {}),
    ):
        r = client.get(path, query_string=query)
        assert r.status_code == 200, (path, r.get_json())
        assert NOTES.encode() in r.get_data() or make_id().encode() in r.get_data()
        assert r.headers["Cache-Control"] == "private, no-store", path
    r = client.patch(f"/api/v1/special-groups/{record_id}", json={"attention_level": "high"})
    assert r.status_code == 200, r.get_json()
    assert r.headers["Cache-Control"] == "private, no-store"
    # Masked answers stay cacheable (revalidated each time).
    r = client.get(f"/api/v1/persons/{made['id']}")
    assert r.headers["Cache-Control"] == "private, no-cache"


# --- validation over HTTP ---------------------------------------------------------------------


def test_a_bad_id_number_is_422_with_the_reason(client, world):
    good = make_id()
    wrong_check = good[:-1] + ("0" if good[-1] != "0" else "1")
    cases = [
        (wrong_check, "has a wrong check digit"),
        (good[:-1], "must be 18 characters"),
        ("99" + good[2:17] + check_digit("99" + good[2:17]), "known region code"),
        (make_id(born="19990229"), "real birth date"),
        (make_id(born="20990101"), "in the future"),
        ("32050819900101123A", "17 digits followed by a digit or X"),
    ]
    for value, reason in cases:
        r = client.post(
            "/api/v1/persons",
            json={"name": "张三", "id_number": value, "phone": "13812345678", "grid": A1},
        )
        body = assert_error(r, 422)
        assert list(body["errors"]["json"]) == ["id_number"], body
        assert any(reason in m for m in body["errors"]["json"]["id_number"]), body
        assert value.encode() not in r.get_data()
        search = client.get("/api/v1/persons", query_string={"id_number": value})
        assert_error(search, 422)
    assert client.get("/api/v1/persons").get_json()["items"] == []


@pytest.mark.parametrize(
    "phone", ["12812345678", "138123456789", "1381234567", "10086", "+852 9123 4567"]
)
def test_a_bad_phone_is_422(client, world, phone):
    r = client.post(
        "/api/v1/persons",
        json={"name": "张三", "id_number": make_id(), "phone": phone, "grid": A1},
    )
    body = assert_error(r, 422)
    assert list(body["errors"]["json"]) == ["phone"], body
    assert "mainland mobile number" in body["errors"]["json"]["phone"][0]
    made = create(client, "张三", make_id(), "13812345678")
    r = client.patch(f"/api/v1/persons/{made['id']}", json={"phone": phone})
    body = assert_error(r, 422)
    assert list(body["errors"]["json"]) == ["phone"], body
    r = client.get(f"/api/v1/persons/{made['id']}/sensitive", query_string={"purpose": PURPOSE})
    assert r.get_json()["phone"] == "13812345678"
