"""Bulk import of residents (CSV, XLSX): modes, dry runs, scope, the row-level report, the CLI."""

from __future__ import annotations

import io
import json
from typing import Any

import openpyxl
import pytest
from click.testing import CliRunner
from sqlalchemy import event, text

from gridapi.cli import main
from gridapi.personal import check_digit

from ..factories import COMMUNITY_A, COMMUNITY_B, LAT0, LON0, STEP

A1, A2 = COMMUNITY_A + "001", COMMUNITY_A + "002"
B1 = COMMUNITY_B + "001"
URL = "/api/v1/persons/import"
HEADER = "姓名,身份证号,联系电话,民族,人口类型,与户主关系,户号,户类型,房屋地址,房屋用途,网格编码"


def make_id(seq: int, born: str = "19900101", prefix: str = "320508") -> str:
    first = f"{prefix}{born}{seq:03d}"
    return first + check_digit(first)


def bad_check_digit(seq: int) -> str:
    good = make_id(seq)
    return good[:17] + ("0" if good[17] != "0" else "1")


ID1, ID2, ID3, ID4 = (make_id(n) for n in (11, 12, 13, 14))
PHONE1, PHONE2 = "13812345678", "13987654321"


def csv_bytes(*lines: str, encoding: str = "utf-8") -> bytes:
    return ("\n".join(lines) + "\n").encode(encoding)


def upload(client: Any, content: bytes, filename: str = "people.csv", **form: Any) -> Any:
    data = {"file": (io.BytesIO(content), filename)}
    data.update({k: str(v).lower() if isinstance(v, bool) else v for k, v in form.items()})
    return client.post(URL, data=data, content_type="multipart/form-data")


def count(engine: Any, table: str) -> int:
    with engine.connect() as conn:
        return conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one()


def counts(engine: Any) -> tuple[int, int, int]:
    return count(engine, "persons"), count(engine, "households"), count(engine, "houses")


def audit_rows(engine: Any) -> list[Any]:
    with engine.connect() as conn:
        return conn.execute(
            text(
                "SELECT actor_id, object_type, summary FROM audit_log "
                "WHERE action = 'person.import' ORDER BY id"
            )
        ).all()


def summary_of(row: Any) -> dict[str, Any]:
    return row.summary if isinstance(row.summary, dict) else json.loads(row.summary)


FAMILY = (
    HEADER,
    f"张三,{ID1},{PHONE1},汉族,户籍人口,户主,0001,户籍户,平江路1号,自住,{A1}",
    f"李四,{ID2},,汉族,户籍人口,配偶,0001,,平江路1号,,{A1}",
    f"王五,{ID3},{PHONE2},回族,流动人口,,,,,,{A2}",
)


# ---- formats -----------------------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ["utf-8", "utf-8-sig", "gbk"])
def test_csv_imports_residents_with_their_household_and_house(
    client: Any, world: Any, engine: Any, encoding: str
) -> None:
    r = upload(client, csv_bytes(*FAMILY, encoding=encoding))
    assert r.status_code == 200, r.get_json()
    report = r.get_json()
    assert report == {
        "mode": "all",
        "dry_run": False,
        "committed": True,
        "file_type": "csv",
        "rows": 3,
        "valid": 3,
        "failed": 0,
        "imported": 3,
        "houses_created": 1,
        "households_created": 1,
        "error_count": 0,
        "errors_truncated": False,
        "errors": [],
    }
    assert counts(engine) == (3, 1, 1)
    households = client.get("/api/v1/households?number=0001").get_json()["items"]
    assert len(households) == 1
    household = households[0]
    assert household["grid"] == A1 and household["type"] == "registered"
    assert household["head"]["name"] == "张*"
    assert [m["relation"] for m in household["members"]] == ["head", "spouse"]
    assert all(m["house_id"] == household["house_id"] for m in household["members"])
    house = client.get(f"/api/v1/houses/{household['house_id']}").get_json()
    assert (house["address"], house["use"], house["grid"]) == ("平江路1号", "self_occupied", A1)
    single = client.get("/api/v1/persons?name=王五").get_json()["items"]
    assert len(single) == 1
    assert single[0]["grid"] == A2 and single[0]["household_id"] is None
    assert single[0]["population_type"] == "floating"
    assert single[0]["ethnicity"] == "回族"
    assert single[0]["phone"] == "139****4321"
    (audit,) = audit_rows(engine)
    assert audit.object_type == "person_import"
    assert summary_of(audit)["imported"] == 3 and summary_of(audit)["committed"] is True


def test_headers_are_trimmed_english_names_and_codes_accepted(
    client: Any, world: Any, engine: Any
) -> None:
    content = csv_bytes(
        " name , id_number,phone ,population_type,relation,household_number,house_address,"
        "house_use, grid",
        f"张三,{ID1},+86 138-1234-5678,registered,head,0001,平江路1号,rented,{A1}",
        f"李四,{ID2},,floating,child,0001,平江路1号,rented,{A1}",
    )
    r = upload(client, content)
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["imported"] == 2
    assert counts(engine) == (2, 1, 1)
    house = client.get("/api/v1/houses").get_json()["items"][0]
    assert house["use"] == "rented"


def test_a_second_import_reuses_houses_and_households(client: Any, world: Any, engine: Any) -> None:
    assert upload(client, csv_bytes(*FAMILY[:2])).status_code == 200
    r = upload(
        client,
        csv_bytes(HEADER, f"张小三,{ID4},,,,子女,0001,,平江路1号,,{A1}"),
    )
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["houses_created"] == 0
    assert r.get_json()["households_created"] == 0
    assert counts(engine) == (2, 1, 1)


def test_tab_separated_utf16_text_is_read(client: Any, world: Any) -> None:
    content = "\r\n".join(["姓名\t身份证号\t网格编码", f"张三\t{ID1}\t{A1}"]).encode("utf-16")
    r = upload(client, content, "people.txt")
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["imported"] == 1


def xlsx(rows: list[list[Any]]) -> bytes:
    workbook = openpyxl.Workbook()
    sheet = workbook.active
    for row in rows:
        sheet.append(row)
    out = io.BytesIO()
    workbook.save(out)
    return out.getvalue()


def test_xlsx_with_numbers_and_coordinates(client: Any, world: Any, engine: Any) -> None:
    lon, lat = LON0 + 0.5 * STEP, LAT0 + 0.5 * STEP  # in A1
    content = xlsx(
        [
            ["姓名", "身份证号", "手机号码", "户号", "房屋地址", "经度", "纬度", "与户主关系"],
            ["张三", ID1, 13812345678, 1001, "平江路1号", lon, lat, "户主"],
            ["李四", ID2, 13987654321.0, 1001, "平江路1号", lon, lat, "配偶"],
            [None, None, None, None, None, None, None, None],  # blank rows are skipped
            ["王五", 3.20508199001011e17, None, None, None, lon, lat, None],
        ]
    )
    r = upload(client, content, "people.xlsx", mode="valid")
    assert r.status_code == 200, r.get_json()
    report = r.get_json()
    assert report["file_type"] == "xlsx"
    assert (report["rows"], report["imported"], report["failed"]) == (3, 2, 1)
    assert report["errors"] == [
        {
            "row": 5,
            "field": "身份证号",
            "message": "身份证号: stored as a number by Excel: format the column as text",
        }
    ]
    household = client.get("/api/v1/households?number=1001").get_json()["items"][0]
    assert household["grid"] == A1
    assert [m["phone"] for m in household["members"]] == ["138****5678", "139****4321"]
    house = client.get(f"/api/v1/houses/{household['house_id']}").get_json()
    assert house["location"]["coordinates"] == pytest.approx([lon, lat])
    assert counts(engine) == (2, 1, 1)


def test_a_zero_padded_household_number_keeps_its_zeros(
    client: Any, world: Any, engine: Any
) -> None:
    """A 户号 typed as 0001 into a column formatted "0000" is stored by Excel as the number
    1 and shown as 0001: it was imported as household 1, beside the household 0001 the CSV
    of the same register made."""
    workbook = openpyxl.Workbook()
    sheet = workbook.active
    sheet.append(["姓名", "身份证号", "户号", "房屋地址", "网格编码"])
    sheet.append(["张三", ID1, 1, "平江路1号", A1])
    sheet.append(["李四", ID2, 42, "平江路2号", A1])
    sheet["C2"].number_format = "0000"
    sheet["C3"].number_format = "000000;-000000"
    out = io.BytesIO()
    workbook.save(out)
    r = upload(client, out.getvalue(), "people.xlsx")
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["households_created"] == 2
    with engine.connect() as conn:
        numbers = conn.execute(text("SELECT number FROM households ORDER BY number")).scalars()
        assert list(numbers) == ["000042", "0001"]
    # The CSV of the same sheet names the same household: the row joins it.
    r = upload(client, csv_bytes("姓名,身份证号,户号,网格编码", f"王五,{ID3},0001,{A1}"))
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["households_created"] == 0
    assert count(engine, "households") == 2


def test_full_width_characters_in_codes_are_read_as_ascii(
    client: Any, world: Any, engine: Any
) -> None:
    """Typed with a Chinese input method, an ID number in full-width digits (with a
    full-width Ｘ), a phone number in full-width digits and a 户号 with ideographic spaces
    (U+3000) were refused, or made a second household beside 0001. Names keep what was
    typed, but for the spaces around them."""
    full = str.maketrans("0123456789X", "０１２３４５６７８９Ｘ")
    with_x = next(make_id(n) for n in range(20, 200) if make_id(n).endswith("X"))
    content = csv_bytes(
        "姓名,身份证号,联系电话,户号,网格编码",
        f"张三,{ID1},{PHONE1},0001,{A1}",
        f"\u3000Ｌｉ\u3000,{with_x.translate(full)},{PHONE2.translate(full)},"
        f"\u3000０００１\u3000,{A1}",
    )
    r = upload(client, content)
    assert r.status_code == 200, r.get_json()
    assert (r.get_json()["imported"], r.get_json()["households_created"]) == (2, 1)
    found = client.get(f"/api/v1/persons?id_number={with_x}").get_json()["items"]
    assert len(found) == 1 and found[0]["phone"] == "139****4321"
    with engine.connect() as conn:
        names = conn.execute(text("SELECT name FROM persons ORDER BY id")).scalars()
        assert list(names) == ["张三", "Ｌｉ"]
    assert count(engine, "households") == 1


def test_a_workbook_with_too_much_text_is_refused_unread(
    client: Any, world: Any, engine: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its shared strings past the limit (lowered here), the workbook is refused as a
    whole, 422 naming the file, before openpyxl reads them: nothing imported."""
    from gridapi.services import person_import

    from ..unit.test_person_import_reading import _shared_strings_book

    monkeypatch.setattr(person_import, "MAX_SHARED_STRINGS", 10, raising=False)
    texts = ["姓名", "张三"] + [f"平江路{n}号" for n in range(20)]
    r = upload(client, _shared_strings_book(texts), "people.xlsx", mode="valid")
    assert r.status_code == 422, r.get_json()
    (message,) = r.get_json()["errors"]["file"]
    assert "over 10 texts" in message
    assert counts(engine) == (0, 0, 0) and audit_rows(engine) == []


def test_a_workbook_with_too_much_inline_text_is_refused_unread(
    client: Any, world: Any, engine: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Texts kept in the cells themselves (inlineStr) spend the budget the shared strings
    do: past it (lowered here), 422 naming the file, nothing imported."""
    from gridapi.services import person_import

    from ..unit.test_person_import_reading import _inline_book

    monkeypatch.setattr(person_import, "MAX_SHARED_STRING_CHARS", 1_000, raising=False)
    r = upload(client, _inline_book(["张三", "平江路" * 400]), "people.xlsx", mode="valid")
    assert r.status_code == 422, r.get_json()
    (message,) = r.get_json()["errors"]["file"]
    assert "over 2,000,000 texts or 1,000 characters" in message
    assert counts(engine) == (0, 0, 0) and audit_rows(engine) == []


def test_xlsx_detected_by_content_and_unreadable_files_refused(client: Any, world: Any) -> None:
    content = xlsx([["姓名", "身份证号", "网格编码"], ["张三", ID1, A1]])
    r = upload(client, content, "export")
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["file_type"] == "xlsx"
    r = upload(client, b"PK\x03\x04 not really a zip", "people.xlsx")
    assert r.status_code == 422
    assert "XLSX" in r.get_json()["message"]
    r = upload(client, b"\xd0\xcf\x11\xe0old", "people.xls")
    assert r.status_code == 422
    assert ".xlsx" in r.get_json()["message"]


def test_a_file_sent_twice_or_as_text_is_refused_and_nothing_imported(
    client: Any, world: Any, engine: Any
) -> None:
    """Two files in `file` imported the first and silently dropped the second; a text field
    named `file` was a 500. Both are 422 naming the field, with nothing imported or audited."""
    content = csv_bytes(*FAMILY)
    answers = [
        client.post(
            URL,
            data={"file": [(io.BytesIO(content), "a.csv"), (io.BytesIO(content), "b.csv")]},
            content_type="multipart/form-data",
        ),
        client.post(URL, data={"file": "姓名,身份证号"}, content_type="multipart/form-data"),
        client.post(URL, data={"file": "姓名,身份证号"}),  # urlencoded
    ]
    for r, reason in zip(answers, ("one file per request", "not text", "not text"), strict=True):
        assert r.status_code == 422, r.get_json()
        body = r.get_json()
        assert reason in body["message"] and list(body["errors"]["files"]) == ["file"], body
    assert counts(engine) == (0, 0, 0)
    assert audit_rows(engine) == []
    assert upload(client, content).status_code == 200  # one file, as a file: imported


# ---- the two modes -----------------------------------------------------------------------------


def test_mode_all_imports_nothing_when_a_row_fails(client: Any, world: Any, engine: Any) -> None:
    content = csv_bytes(*FAMILY, f"赵六,{bad_check_digit(15)},,,,,0002,,平江路2号,,{A1}")
    r = upload(client, content)
    assert r.status_code == 422, r.get_json()
    body = r.get_json()
    assert body["message"] == "1 of 4 row(s) have errors; nothing was imported."
    report = body["errors"]
    assert report["committed"] is False
    assert (report["rows"], report["valid"], report["failed"], report["imported"]) == (4, 3, 1, 0)
    assert report["houses_created"] == report["households_created"] == 0
    assert report["errors"] == [
        {"row": 5, "field": "身份证号", "message": "身份证号: has a wrong check digit"}
    ]
    assert counts(engine) == (0, 0, 0)
    (audit,) = audit_rows(engine)  # the refused attempt is audited, alone
    assert summary_of(audit)["committed"] is False and summary_of(audit)["imported"] == 0


def test_mode_valid_imports_the_valid_rows_and_leaves_no_orphans(
    client: Any, world: Any, engine: Any
) -> None:
    r = client.post("/api/v1/persons", json={"name": "钱七", "id_number": ID4, "grid": A2})
    assert r.status_code == 201, r.get_json()
    content = csv_bytes(
        HEADER,
        f"张三,{ID1},{PHONE1},汉族,户籍人口,户主,0001,户籍户,平江路1号,自住,{A1}",
        # Its house and household are written before the person is refused: rolled back.
        f"钱七,{ID4},,,,户主,0002,,平江路2号,,{A1}",
        f"李四,{ID2},,,,户主,0001,,平江路1号,,{A1}",  # a second head
        f"王五,{ID3},,,,,,,,,{A2}",
    )
    r = upload(client, content, mode="valid")
    assert r.status_code == 200, r.get_json()
    report = r.get_json()
    assert report["committed"] is True
    assert (report["rows"], report["imported"], report["failed"]) == (4, 2, 2)
    assert (report["houses_created"], report["households_created"]) == (1, 1)
    assert report["errors"] == [
        {"row": 3, "field": "身份证号", "message": "身份证号: already registered in the county"},
        {
            "row": 4,
            "field": "与户主关系",
            "message": "与户主关系: the household has a head already",
        },
    ]
    assert counts(engine) == (3, 1, 1)
    assert client.get("/api/v1/households?number=0002").get_json()["items"] == []
    assert client.get("/api/v1/houses?address=平江路2号").get_json()["items"] == []
    (audit,) = audit_rows(engine)
    assert summary_of(audit)["imported"] == 2 and summary_of(audit)["mode"] == "valid"


def test_a_nul_in_a_cell_is_a_row_error_and_the_other_rows_are_imported(
    client: Any, world: Any, engine: Any
) -> None:
    # PostgreSQL refused the whole file (field-less 422); SQLite stored the NUL
    content = csv_bytes(
        "姓名,身份证号,网格编码,房屋地址",
        f"张三,{ID1},{A1},",
        f"李\x00四,{ID2},{A1},",
        f"王五,{ID3},{A1},平江路\x001号",
    )
    r = upload(client, content, mode="valid")
    assert r.status_code == 200, r.get_json()
    report = r.get_json()
    assert (report["imported"], report["failed"]) == (1, 2)
    nul = "must not contain NUL characters (U+0000)"
    assert report["errors"] == [
        {"row": 3, "field": "姓名", "message": f"姓名: {nul}"},
        {"row": 4, "field": "房屋地址", "message": f"房屋地址: {nul}"},
    ]
    assert counts(engine) == (1, 0, 0)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT name FROM persons")).scalars().all() == ["张三"]


def test_duplicate_id_within_the_file_fails_the_later_row(
    client: Any, world: Any, engine: Any
) -> None:
    content = csv_bytes(
        "姓名,身份证号,网格编码",
        f"张三,{ID1},{A1}",
        f"李四,{ID2},{A1}",
        f"张三,{ID1.lower()},{A2}",
    )
    r = upload(client, content)
    assert r.status_code == 422
    assert r.get_json()["errors"]["errors"] == [
        {"row": 4, "field": "身份证号", "message": "身份证号: the same ID number is in row 2"}
    ]
    assert counts(engine) == (0, 0, 0)
    r = upload(client, content, mode="valid")
    assert r.status_code == 200
    assert r.get_json()["imported"] == 2
    assert count(engine, "persons") == 2


def test_dry_run_reports_what_it_would_write_and_writes_nothing(
    client: Any, world: Any, engine: Any
) -> None:
    """A dry run answered imported 0, houses_created 0, households_created 0 whatever the
    file: it now reports what the import would create (and refuse), writing nothing."""
    content = csv_bytes(*FAMILY, f"赵六,,,,,,,,,,{A1}")
    r = upload(client, content, mode="valid", dry_run=True)
    assert r.status_code == 200, r.get_json()
    report = r.get_json()
    assert report["dry_run"] is True and report["committed"] is False
    assert (report["valid"], report["failed"], report["imported"]) == (3, 1, 3)
    assert (report["houses_created"], report["households_created"]) == (1, 1)
    assert report["errors"] == [
        {
            "row": 5,
            "field": "身份证号",
            "message": "身份证号: is required (except for 境外人员)",
        }
    ]
    assert counts(engine) == (0, 0, 0)
    # In mode all a dry run answers as the import would: 422, nothing would be written.
    r = upload(client, content, dry_run=True)
    assert r.status_code == 422
    refused = r.get_json()["errors"]
    assert refused["dry_run"] is True and refused["imported"] == 0
    assert (refused["houses_created"], refused["households_created"]) == (0, 0)
    r = upload(client, csv_bytes(*FAMILY), dry_run=True)
    assert r.status_code == 200
    assert r.get_json()["valid"] == 3 and r.get_json()["imported"] == 3
    assert counts(engine) == (0, 0, 0)
    dry = [summary_of(row) for row in audit_rows(engine)]
    assert [(a["imported"], a["committed"]) for a in dry] == [(3, False), (0, False), (3, False)]
    # The real import does what the dry run said; a dry run after it would create nothing.
    real = upload(client, csv_bytes(*FAMILY)).get_json()
    assert {k: real[k] for k in ("imported", "houses_created", "households_created")} == {
        "imported": 3,
        "houses_created": 1,
        "households_created": 1,
    }
    assert counts(engine) == (3, 1, 1)
    again = upload(client, csv_bytes(HEADER, f"周七,{ID4},,,,,0001,,平江路1号,,{A1}"), dry_run=True)
    assert again.status_code == 200, again.get_json()
    assert (again.get_json()["imported"], again.get_json()["households_created"]) == (1, 0)
    assert again.get_json()["houses_created"] == 0
    assert counts(engine) == (3, 1, 1)


def test_row_errors_name_the_column_as_written(client: Any, world: Any, engine: Any) -> None:
    content = csv_bytes(
        "姓名,公民身份号码,手机号码,人口类型,与户主关系,户类型,网格编码,经度",
        f",{ID1},123,外星人,朋友,大户,12345,121.0",
        f"境外人,,,境外人员,,,{A1},",
    )
    r = upload(client, content, mode="valid")
    assert r.status_code == 200, r.get_json()
    report = r.get_json()
    assert (report["imported"], report["failed"]) == (1, 1)
    fields = [e["field"] for e in report["errors"]]
    assert fields == ["姓名", "手机号码", "人口类型", "与户主关系", "户类型", "网格编码", None]
    messages = {e["message"].split(":")[0] for e in report["errors"]}
    assert "纬度" in messages  # the missing column is named by its Chinese header


def test_a_shifted_row_is_one_error_and_a_house_without_household_is_linked(
    client: Any, world: Any, engine: Any
) -> None:
    content = csv_bytes(
        "姓名,身份证号,房屋地址,网格编码",
        f"张三,{ID1},平江路1号,3幢,{A1}",  # an unquoted comma in the address
        f"李四,{ID2},平江路1号,{A1}",
    )
    r = upload(client, content, mode="valid")
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["errors"] == [
        {
            "row": 2,
            "field": None,
            "message": "the value in column 5 has no header (in a CSV file, quote values "
            "that contain a comma)",
        }
    ]
    (person,) = client.get("/api/v1/persons?name=李四").get_json()["items"]
    assert person["household_id"] is None and person["grid"] == A1
    house = client.get(f"/api/v1/houses/{person['house_id']}").get_json()
    assert house["address"] == "平江路1号"
    assert counts(engine) == (1, 0, 1)


def test_too_many_rows_is_refused(client: Any, world: Any, app: Any) -> None:
    app.extensions["gridapi"].settings.import_max_rows = 2
    r = upload(client, csv_bytes(*FAMILY))
    assert r.status_code == 422
    assert "more than 2 rows" in r.get_json()["message"]


@pytest.mark.parametrize("failure", ["crash", "database"])
def test_any_other_failure_imports_nothing_even_in_mode_valid(
    client: Any, world: Any, engine: Any, monkeypatch: Any, failure: str
) -> None:
    from gridapi.services import register

    real = register.create_person
    calls: list[int] = []

    def failing_on_the_third_row(session: Any, data: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 3:
            if failure == "crash":
                raise RuntimeError("the process fell over")
            session.execute(text("INSERT INTO households (county_code) VALUES (NULL)"))
        return real(session, data, **kwargs)

    monkeypatch.setattr(register, "create_person", failing_on_the_third_row)
    r = upload(client, csv_bytes(*FAMILY), mode="valid")
    assert r.status_code == (500 if failure == "crash" else 409), r.get_json()
    assert counts(engine) == (0, 0, 0)
    assert audit_rows(engine) == []


# ---- the file as a whole -----------------------------------------------------------------------


def test_unknown_column_is_refused_by_name(client: Any, world: Any, engine: Any) -> None:
    content = csv_bytes("姓名,身份证,网格编码", f"张三,{ID1},{A1}")
    r = upload(client, content, mode="valid")
    assert r.status_code == 422
    body = r.get_json()
    assert "Unknown column(s): 身份证." in body["message"]
    assert body["errors"]["columns"] == ["身份证"]
    assert counts(engine) == (0, 0, 0)
    assert audit_rows(engine) == []


def test_a_first_row_of_data_is_not_echoed(client: Any, world: Any) -> None:
    content = csv_bytes(f"张三,{ID1},{PHONE1},{A1}", f"李四,{ID2},{PHONE2},{A1}")
    r = upload(client, content)
    assert r.status_code == 422
    raw = r.get_data(as_text=True)
    assert "column headers" in r.get_json()["message"]
    for value in (ID1, PHONE1, "张三"):
        assert value not in raw
    r = upload(client, csv_bytes(f"姓名,{ID1},{PHONE1}", f"李四,{ID2},{PHONE2}"))
    assert r.status_code == 422
    raw = r.get_data(as_text=True)
    assert "column 2 (a value, not a header?)" in raw
    assert ID1 not in raw and PHONE1 not in raw
    # Written as people write them (a run of six digits let these through, echoed)
    for written in ("139-5111-0001", "139 5111 0001", "１３９５１１１０００１"):
        r = upload(client, csv_bytes(f"姓名,{written}", "李四,x"))
        assert r.status_code == 422
        raw = r.get_data(as_text=True)
        assert "column 2 (a value, not a header?)" in raw and written not in raw


def test_missing_name_column_and_bad_mode_are_refused(client: Any, world: Any) -> None:
    r = upload(client, csv_bytes("身份证号,网格编码", f"{ID1},{A1}"))
    assert r.status_code == 422
    assert "姓名" in r.get_json()["message"]
    r = upload(client, csv_bytes(*FAMILY), mode="some")
    assert r.status_code == 422
    r = upload(client, csv_bytes(*FAMILY), extra="1")
    assert r.status_code == 422
    r = client.post(URL, data={"mode": "all"}, content_type="multipart/form-data")
    assert r.status_code == 422


# ---- permission and scope ----------------------------------------------------------------------


def test_a_grid_worker_may_not_import(accounts: Any, world: Any, engine: Any) -> None:
    worker = accounts.client("worker", "grid_worker", grids=[A1])
    r = upload(worker, csv_bytes(*FAMILY))
    assert r.status_code == 403
    assert counts(engine) == (0, 0, 0)


def test_rows_outside_the_callers_scope_are_row_errors(
    accounts: Any, world: Any, engine: Any
) -> None:
    officer = accounts.client("officer", "community_officer", scope_region=COMMUNITY_A)
    lon_b, lat_b = LON0 + 2.5 * STEP, LAT0 + 0.5 * STEP  # in B1
    content = csv_bytes(
        "姓名,身份证号,户号,房屋地址,网格编码,经度,纬度",
        f"张三,{ID1},0001,平江路1号,{A1},,",
        f"李四,{ID2},0002,观前街1号,{B1},,",
        f"王五,{ID3},,观前街2号,,{lon_b},{lat_b}",
    )
    r = upload(officer, content, mode="valid")
    assert r.status_code == 200, r.get_json()
    report = r.get_json()
    assert (report["imported"], report["failed"]) == (1, 2)
    assert report["errors"] == [
        {
            "row": 3,
            "field": "网格编码",
            "message": "网格编码: no grid with this code in service in your scope",
        },
        {"row": 4, "field": "经度", "message": "经度: outside your scope"},
    ]
    assert counts(engine) == (1, 1, 1)
    r = upload(officer, content)
    assert r.status_code == 422
    assert counts(engine) == (1, 1, 1)


def test_rows_of_residents_outside_scope_count_as_lookups(
    app: Any, client: Any, accounts: Any, world: Any, engine: Any
) -> None:
    """A dry run told whether thousands of ID numbers were registered anywhere in the
    county, without limit, while an exact search was throttled."""
    app.extensions["gridapi"].settings.person_lookup_rate = "3 per hour"
    theirs = [make_id(n) for n in (21, 22)]
    lines = [f"某{n},{number},{B1}" for n, number in enumerate(theirs)]
    assert upload(client, csv_bytes("姓名,身份证号,网格编码", *lines)).status_code == 200
    officer = accounts.client("officer", "community_officer", scope_region=COMMUNITY_A)
    # the officer's own residents sent again count nothing, however many
    mine = [f"本{n},{make_id(n)},{A1}" for n in range(31, 36)]
    assert upload(officer, csv_bytes("姓名,身份证号,网格编码", *mine)).status_code == 200
    again = upload(officer, csv_bytes("姓名,身份证号,网格编码", *mine), dry_run=True)
    assert again.status_code == 422 and again.get_json()["errors"]["failed"] == 5
    # two rows of residents elsewhere: two lookups; two more spend the allowance
    probe = csv_bytes("姓名,身份证号,网格编码", *(f"试{n},{x},{A1}" for n, x in enumerate(theirs)))
    first = upload(officer, probe, dry_run=True)
    assert first.status_code == 422 and first.get_json()["errors"]["failed"] == 2
    # ... and audited as the lookups they are, about each resident, the number masked, as a
    # create refused for a registered number is (they were counted, never audited).
    with engine.connect() as conn:
        looked = conn.execute(
            text(
                "SELECT actor_id, object_id, region_code, summary FROM audit_log "
                "WHERE action = 'person.lookup' ORDER BY id"
            )
        ).all()
        ids = conn.execute(
            text("SELECT id FROM persons WHERE grid_code = :g ORDER BY id"), {"g": B1}
        )
        elsewhere = [person_id for (person_id,) in ids]
    assert [(r.actor_id, int(r.object_id), r.region_code) for r in looked] == [
        (f"user:{accounts.ids['officer']}", person_id, COMMUNITY_B) for person_id in elsewhere
    ]
    for row, number, person_id in zip(looked, theirs, elsewhere, strict=True):
        summary = row.summary if isinstance(row.summary, dict) else json.loads(row.summary)
        assert summary == {
            "by": ["id_number"],
            "id_number_masked": number[:4] + "*" * 10 + number[-4:],
            "matched": 1,
            "person_ids": [person_id],
            "via": "import",
        }
        assert number not in json.dumps([str(v) for v in row])
    refused = upload(officer, probe, mode="valid")
    assert refused.status_code == 429 and refused.get_json()["code"] == 429
    assert int(refused.headers["Retry-After"]) > 0
    assert counts(engine)[0] == 7  # nothing of the refused import
    assert officer.get(f"/api/v1/persons?id_number={make_id(31)}").status_code == 429
    # the county, whose scope holds them, re-imports its own at will
    assert (
        upload(client, csv_bytes("姓名,身份证号,网格编码", *lines), dry_run=True).status_code == 422
    )


def test_past_the_allowance_a_file_of_new_numbers_is_refused_as_one_of_registered_ones(
    app: Any, client: Any, accounts: Any, world: Any, engine: Any
) -> None:
    """Only the rows of numbers registered outside the caller's scope counted: once the
    allowance was spent, a dry run answered 429 for a file naming a registered ID number or
    户号 and 200 for one naming none, so one file a request still tested thousands of
    numbers. Past the allowance, a file giving any ID number or 户号 is refused before a
    number is looked up (a dry run too); one giving none is imported as before."""
    theirs = make_id(21)
    assert (
        upload(
            client, csv_bytes("姓名,身份证号,户号,网格编码", f"某,{theirs},H-OUT,{B1}")
        ).status_code
        == 200
    )
    app.extensions["gridapi"].settings.person_lookup_rate = "1 per hour"
    officer = accounts.client("officer", "community_officer", scope_region=COMMUNITY_A)
    new = [f"新{n},{make_id(70 + n)},H-NEW-{n},{A1}" for n in range(5)]
    dry = upload(officer, csv_bytes("姓名,身份证号,户号,网格编码", *new), dry_run=True)
    assert dry.status_code == 200 and dry.get_json()["valid"] == 5  # new numbers cost nothing
    assert officer.get(f"/api/v1/persons?id_number={make_id(99)}").status_code == 200  # spent
    before = counts(engine)
    probes = (
        ("姓名,身份证号,网格编码", f"试,{theirs},{A1}"),  # a registered ID number
        ("姓名,身份证号,网格编码", f"试,{make_id(80)},{A1}"),  # a new one
        ("姓名,人口类型,户号,网格编码", f"Tom,境外人员,H-OUT,{A1}"),  # a registered 户号
        ("姓名,人口类型,户号,网格编码", f"Tom,境外人员,H-NEW-X,{A1}"),  # a new one
    )
    for lines in probes:
        for form in ({"dry_run": True}, {"mode": "valid"}):
            r = upload(officer, csv_bytes(*lines), **form)
            assert r.status_code == 429, (lines, form, r.get_json())
            assert r.get_json()["code"] == 429 and int(r.headers["Retry-After"]) > 0
    assert counts(engine) == before
    assert len(audit_rows(engine)) == 2  # the county's import and the dry run, no more
    # A file giving no number looks nothing up (a column left empty gives none).
    foreign = ("姓名,身份证号,人口类型,网格编码", f"Tom,,境外人员,{A1}", f"Ann,,境外人员,{A1}")
    r = upload(officer, csv_bytes(*foreign))
    assert r.status_code == 200 and r.get_json()["imported"] == 2, r.get_json()


def test_an_existing_household_outside_scope_is_not_joined(
    client: Any, accounts: Any, world: Any, engine: Any
) -> None:
    assert (
        upload(
            client, csv_bytes("姓名,身份证号,户号,网格编码", f"张三,{ID1},0009,{B1}")
        ).status_code
        == 200
    )
    officer = accounts.client("officer", "community_officer", scope_region=COMMUNITY_A)
    r = upload(officer, csv_bytes("姓名,身份证号,户号,网格编码", f"李四,{ID2},0009,{A1}"))
    assert r.status_code == 422
    assert r.get_json()["errors"]["errors"][0]["field"] == "户号"
    assert counts(engine) == (1, 1, 0)


def test_rows_of_households_outside_scope_count_as_lookups(
    app: Any, client: Any, accounts: Any, world: Any, engine: Any
) -> None:
    """A dry run said "户号: already registered in the county, outside your scope" for any
    number of household numbers, without counting, while a 409 on create is a lookup."""
    outside = "姓名,身份证号,户号,网格编码", f"张三,{ID1},H-OUT-1,{B1}", f"李四,{ID2},H-OUT-2,{B1}"
    assert upload(client, csv_bytes(*outside)).status_code == 200
    app.extensions["gridapi"].settings.person_lookup_rate = "3 per hour"
    officer = accounts.client("officer", "community_officer", scope_region=COMMUNITY_A)
    # the officer's own households, sent again, count nothing
    own = [f"本{n},{make_id(40 + n)},H-A-{n},{A1}" for n in range(4)]
    assert upload(officer, csv_bytes("姓名,身份证号,户号,网格编码", *own)).status_code == 200
    joined = [f"新{n},{make_id(50 + n)},H-A-{n},{A1}" for n in range(4)]
    assert upload(officer, csv_bytes("姓名,身份证号,户号,网格编码", *joined)).status_code == 200
    # two rows naming households elsewhere: two lookups, the report as before
    probe = csv_bytes(
        "姓名,身份证号,户号,网格编码", f"试一,{ID3},H-OUT-1,{A1}", f"试二,{ID4},H-OUT-2,{A1}"
    )
    first = upload(officer, probe, dry_run=True)
    assert first.status_code == 422 and first.get_json()["errors"]["failed"] == 2
    assert first.get_json()["errors"]["errors"][0] == {
        "row": 2,
        "field": "户号",
        "message": "户号: already registered in the county, outside your scope",
    }
    before = counts(engine)
    good = f"好人,{make_id(60)},H-A-9,{A1}"
    mixed = upload(
        officer,
        csv_bytes("姓名,身份证号,户号,网格编码", good, f"试一,{ID3},H-OUT-1,{A1}"),
        mode="valid",
    )  # one more lookup is allowed; two are not
    assert mixed.status_code == 200 and mixed.get_json()["imported"] == 1
    again = upload(officer, probe, mode="valid")
    assert again.status_code == 429 and again.get_json()["code"] == 429
    assert int(again.headers["Retry-After"]) > 0
    assert counts(engine) == (before[0] + 1, before[1] + 1, before[2])  # the good row only
    assert officer.get(f"/api/v1/persons?id_number={make_id(40)}").status_code == 429


def test_a_household_number_registered_meanwhile_is_the_row_it_would_have_been(
    app: Any, accounts: Any, world: Any, engine: Any
) -> None:
    """An import whose new 户号 was registered by another request between the row's look-up
    and its insert (PostgreSQL) failed whole with the generic 409 and counted nothing. The
    row is now what it would have been had the other request come first: a household
    outside the caller's scope, one lookup (429 once spent), the house it made undone."""
    from gridapi.models import Household

    from ..races import send_while_uncommitted

    st = app.extensions["gridapi"]
    st.settings.person_lookup_rate = "1 per hour"
    officer = accounts.client("officer", "community_officer", scope_region=COMMUNITY_A)
    before = counts(engine)
    with st.sessions() as session:  # another request's household, inserted, not committed
        session.add(
            Household(
                county_code=B1[:6],
                region_code=COMMUNITY_B,
                grid_code=B1,
                number="H-RACE",
                type="registered",
                created_by="user:other",
            )
        )
        rows = csv_bytes(
            "姓名,身份证号,户号,房屋地址,网格编码",
            f"张三,{ID1},H-RACE,平江路1号,{A1}",
            f"李四,{ID2},H-NEW,平江路2号,{A1}",
        )
        r = send_while_uncommitted(
            engine, session, "households", lambda: upload(officer, rows, mode="valid")
        )
    assert r.status_code == 200, r.get_json()
    body = r.get_json()
    assert (body["imported"], body["failed"]) == (1, 1)
    assert body["errors"] == [
        {
            "row": 2,
            "field": "户号",
            "message": "户号: already registered in the county, outside your scope",
        }
    ]
    # the other request's household, and the second row's house, household and resident
    assert counts(engine) == (before[0] + 1, before[1] + 2, before[2] + 1)
    assert officer.get(f"/api/v1/persons?id_number={ID1}").status_code == 429


def test_an_id_number_registered_meanwhile_is_the_row_it_would_have_been(
    app: Any, accounts: Any, world: Any, engine: Any
) -> None:
    """An import whose ID number was registered by another request between the row's
    look-up and its insert (PostgreSQL) failed whole with the generic 409 and counted
    nothing. The row is now what it would have been had the other request come first: the
    duplicate row error, of a resident outside the caller's scope, one lookup (429 once
    spent); the other rows are imported."""
    from gridapi.scope import Scope
    from gridapi.services import register

    from ..races import send_while_uncommitted

    st = app.extensions["gridapi"]
    st.settings.person_lookup_rate = "1 per hour"
    officer = accounts.client("officer", "community_officer", scope_region=COMMUNITY_A)
    before = counts(engine)
    rows = csv_bytes("姓名,身份证号,网格编码", f"张三,{ID1},{A1}", f"李四,{ID2},{A1}")
    with st.sessions() as session:  # another request's resident, inserted, not committed
        register.create_person(
            session,
            {"name": "王五", "id_number": ID1, "grid": B1},
            scope=Scope.everything(),
            keys=register.Keys(st.cipher, st.phone_key),
            actor="user:other",
        )
        r = send_while_uncommitted(
            engine, session, "persons", lambda: upload(officer, rows, mode="valid")
        )
    assert r.status_code == 200, r.get_json()
    body = r.get_json()
    assert (body["imported"], body["failed"]) == (1, 1)
    assert body["errors"] == [
        {"row": 2, "field": "身份证号", "message": "身份证号: already registered in the county"}
    ]
    # the other request's resident and the second row's
    assert counts(engine) == (before[0] + 2, before[1], before[2])
    assert officer.get(f"/api/v1/persons?id_number={ID1}").status_code == 429


def test_two_imports_at_once_register_each_house_and_household_once(
    accounts: Any, client: Any, world: Any, engine: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two offices sending overlapping files at once (PostgreSQL): the second looked for
    the house 平江路9号 before the first had committed it, found none and created it again.
    An import now waits for one running in its area (the county's for the community's
    here); on SQLite the second writer waits at BEGIN. Every house and household is
    registered once, and the second file's rows join them."""
    import threading

    from gridapi.services import person_import

    from ..races import wait_until_waiting

    held, release = threading.Event(), threading.Event()
    run = person_import._Importer.run

    def run_then_hold(importer: Any) -> None:
        run(importer)
        if not held.is_set():  # the first import: held before its commit
            held.set()
            release.wait(30)

    monkeypatch.setattr(person_import._Importer, "run", run_then_hold)
    officer = accounts.client("officer", "community_officer", scope_region=COMMUNITY_A)
    header = "姓名,身份证号,户号,房屋地址,网格编码"
    first = csv_bytes(header, f"张三,{ID1},,平江路9号,{A1}", f"李四,{ID2},0001,平江路1号,{A1}")
    second = csv_bytes(header, f"王五,{ID3},,平江路9号,{A1}", f"赵六,{ID4},0001,平江路1号,{A1}")
    answers: dict[str, Any] = {}
    county = threading.Thread(target=lambda: answers.update(first=upload(client, first)))
    community = threading.Thread(target=lambda: answers.update(second=upload(officer, second)))
    county.start()
    try:
        assert held.wait(30)
        community.start()
        wait_until_waiting(engine, community, "")  # for the first import, however
    finally:
        release.set()
        county.join(30)
        community.join(30)
    assert answers["first"].status_code == 200, answers["first"].get_json()
    assert answers["second"].status_code == 200, answers["second"].get_json()
    assert answers["second"].get_json()["houses_created"] == 0
    with engine.connect() as conn:
        houses = conn.execute(text("SELECT address FROM houses ORDER BY address")).scalars()
        assert list(houses) == ["平江路1号", "平江路9号"]
        households = conn.execute(text("SELECT number FROM households")).scalars()
        assert list(households) == ["0001"]
    assert count(engine, "persons") == 4


@pytest.mark.engines("postgis")
def test_an_import_waiting_too_long_for_another_of_its_area_is_told_so(
    app: Any, settings: Any, world: Any, engine: Any
) -> None:
    """An import waiting for another import of its area past the statement timeout got the
    generic 503 "The database is unavailable". It is now told what happened: 409 with
    Retry-After, another import of the area is running, nothing imported, no audit row."""
    from dataclasses import replace

    from gridapi import create_app
    from gridapi.services import person_import

    from ..factories import Accounts

    impatient = create_app(replace(settings, db_statement_timeout_ms=300))
    try:
        officer = Accounts(impatient).client(
            "officer", "community_officer", scope_region=COMMUNITY_A
        )
        with engine.connect() as other:  # the county's import, running
            other.execute(
                text("SELECT pg_advisory_xact_lock(:a, :k)"),
                {"a": person_import._IMPORT_AREA_LOCK, "k": person_import._area_key("320508")},
            )
            r = upload(officer, csv_bytes("姓名,身份证号,网格编码", f"张三,{ID1},{A1}"))
            other.rollback()
        assert r.status_code == 409, r.get_json()
        assert r.headers["Retry-After"] == "30"
        assert r.get_json() == {
            "code": 409,
            "status": "Conflict",
            "message": "Another import into this area is running; nothing was imported. "
            "Send the file again when it has finished.",
            "errors": {"file": ["another import into this area is running"]},
        }
        assert counts(engine) == (0, 0, 0) and audit_rows(engine) == []
        # once it has ended, the file goes through
        r = upload(officer, csv_bytes("姓名,身份证号,网格编码", f"张三,{ID1},{A1}"))
        assert r.status_code == 200, r.get_json()
    finally:
        impatient.extensions["gridapi"].engine.dispose()


@pytest.mark.engines("sqlite")
def test_an_import_waiting_too_long_for_another_is_told_so_on_sqlite(
    app: Any,
    settings: Any,
    client: Any,
    world: Any,
    engine: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """SQLite: an import that waited past the busy timeout for another import's write lock
    got the generic 503 "The database is unavailable" (PostgreSQL answers 409). It is now
    the same 409 with Retry-After, nothing imported, no audit row; an import that waited
    as long for any other write still gets the 503."""
    import threading

    from gridapi import create_app
    from gridapi.services import person_import

    from ..factories import Accounts

    impatient = create_app(settings)
    impatient_engine = impatient.extensions["gridapi"].engine

    @event.listens_for(impatient_engine, "connect")
    def _impatient(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.execute("PRAGMA busy_timeout=300")

    impatient_engine.dispose()  # connections made before wait 30 s
    held, release = threading.Event(), threading.Event()
    run = person_import._Importer.run

    def run_then_hold(importer: Any) -> None:
        run(importer)
        if not held.is_set():  # the first import: held before its commit
            held.set()
            release.wait(30)

    try:
        officer = Accounts(impatient).client(
            "officer", "community_officer", scope_region=COMMUNITY_A
        )
        monkeypatch.setattr(person_import._Importer, "run", run_then_hold)
        answers: list[Any] = []
        first = threading.Thread(
            target=lambda: answers.append(
                upload(client, csv_bytes("姓名,身份证号,网格编码", f"李四,{ID2},{A1}"))
            )
        )
        first.start()
        try:
            assert held.wait(30)
            r = upload(officer, csv_bytes("姓名,身份证号,网格编码", f"张三,{ID1},{A1}"))
        finally:
            release.set()
            first.join(30)
        assert r.status_code == 409, r.get_json()
        assert r.headers["Retry-After"] == "30"
        assert r.get_json() == {
            "code": 409,
            "status": "Conflict",
            "message": "Another import into this area is running; nothing was imported. "
            "Send the file again when it has finished.",
            "errors": {"file": ["another import into this area is running"]},
        }
        assert answers[0].status_code == 200, answers[0].get_json()
        assert count(engine, "persons") == 1 and len(audit_rows(engine)) == 1  # the first's
        # a wait as long for another write (not an import's) is the database's busy answer
        taken = threading.Event()

        def write() -> None:
            with engine.connect() as conn:
                conn.execute(text("UPDATE regions SET name = name WHERE code = :c"), {"c": A1[:12]})
                taken.set()
                release.wait(30)
                conn.commit()

        release.clear()
        writer = threading.Thread(target=write)
        writer.start()
        try:
            assert taken.wait(10)
            r = upload(officer, csv_bytes("姓名,身份证号,网格编码", f"张三,{ID1},{A1}"))
        finally:
            release.set()
            writer.join(30)
        assert r.status_code == 503, r.get_json()
        # once they have ended, the file goes through
        r = upload(officer, csv_bytes("姓名,身份证号,网格编码", f"张三,{ID1},{A1}"))
        assert r.status_code == 200, r.get_json()
        assert count(engine, "persons") == 2
    finally:
        impatient_engine.dispose()


# ---- no values in the report -------------------------------------------------------------------


def test_the_report_never_contains_id_or_phone_numbers(
    client: Any, accounts: Any, world: Any, engine: Any
) -> None:
    registered = make_id(21)
    r = client.post("/api/v1/persons", json={"name": "钱七", "id_number": registered, "grid": A1})
    assert r.status_code == 201
    wrong = bad_check_digit(22)
    short_id, bad_phone, landline = "32050819900101", "12345678901", "051265231234"
    values = [registered, wrong, short_id, bad_phone, landline, ID1, ID2, PHONE1, PHONE2]
    content = csv_bytes(
        "姓名,身份证号,联系电话,网格编码",
        f"甲,{registered},{PHONE1},{A1}",  # already registered
        f"乙,{wrong},{PHONE2},{A1}",  # wrong check digit
        f"丙,{short_id},{bad_phone},{A1}",  # too short, not a mobile number
        f"丁,{ID1},{landline},{B1}",  # landline; out of the officer's scope
        f"戊,{ID1},{PHONE1},{A1}",  # the same ID twice
        f"己,{ID2},{PHONE2},320508001001999",  # no such grid
    )
    officer = accounts.client("officer", "community_officer", scope_region=COMMUNITY_A)
    for caller in (client, officer):
        for mode in ("all", "valid"):
            r = upload(caller, content, mode=mode, dry_run=mode == "valid")
            raw = r.get_data(as_text=True)
            assert r.status_code in (200, 422), raw
            body = r.get_json()
            report = body["errors"] if r.status_code == 422 else body
            assert report["error_count"] >= 6
            for value in values:
                assert value not in raw, (value, raw)
    with engine.connect() as conn:
        audit = " ".join(str(row[0]) for row in conn.execute(text("SELECT summary FROM audit_log")))
    for value in values:
        assert value not in audit


# ---- the command line --------------------------------------------------------------------------


@pytest.fixture
def cli(settings: Any, database_url: str) -> Any:
    """Run `gridapi ...` against the test database with the application's keys."""
    env = {
        "GRIDAPI_DATABASE_URL": database_url,
        "GRIDAPI_SECRET_KEY": settings.key_bytes("secret_key").decode(),
        "GRIDAPI_BLIND_INDEX_KEY": settings.key_bytes("blind_index_key").decode(),
        "GRIDAPI_DATA_DIR": settings.data_dir,
    }

    def run(*args: str) -> Any:
        return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)

    return run


def test_cli_import(cli: Any, client: Any, world: Any, engine: Any, tmp_path: Any) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_bytes(csv_bytes(*FAMILY, f"赵六,{bad_check_digit(15)},,,,,,,,,{A1}", encoding="gbk"))
    result = cli("persons", "import", str(bad))
    assert result.exit_code == 1, result.output
    report = json.loads(result.output)
    assert (report["imported"], report["failed"], report["committed"]) == (0, 1, False)
    assert bad_check_digit(15) not in result.output
    assert counts(engine) == (0, 0, 0)

    result = cli("persons", "import", str(bad), "--mode", "valid", "--dry-run")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert (report["valid"], report["imported"], report["committed"]) == (3, 3, False)
    assert (report["houses_created"], report["households_created"]) == (1, 1)
    assert counts(engine) == (0, 0, 0)

    result = cli("persons", "import", str(bad), "--mode", "valid", "--region", COMMUNITY_B)
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert (report["imported"], report["failed"]) == (0, 4)
    assert counts(engine) == (0, 0, 0)

    result = cli("persons", "import", str(bad), "--mode", "valid")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert (report["imported"], report["failed"], report["houses_created"]) == (3, 1, 1)
    assert counts(engine) == (3, 1, 1)
    # Written with the application's keys: the API finds and reveals them.
    found = client.get(f"/api/v1/persons?id_number={ID1}").get_json()["items"]
    assert [p["name"] for p in found] == ["张*"]
    with engine.connect() as conn:
        actors = conn.execute(
            text("SELECT actor_type FROM audit_log WHERE action = 'person.import'")
        ).scalars()
        assert set(actors) == {"cli"}

    unknown = tmp_path / "unknown.csv"
    unknown.write_bytes(csv_bytes("姓名,身份证", f"张三,{ID4}"))
    result = cli("persons", "import", str(unknown))
    assert result.exit_code != 0
    assert "Unknown column(s): 身份证" in result.output


# ---- spreadsheet quirks ------------------------------------------------------------------------


def test_excel_error_values_are_row_errors_not_data(client: Any, world: Any, engine: Any) -> None:
    """A VLOOKUP that failed left #N/A in 户号 and #REF! in 房屋地址: both rows joined one
    household numbered "#N/A" in a house at "#REF!", and a #VALUE! became a resident's name.
    Excel's error values are row errors in XLSX and in the CSV Excel saves."""
    book = xlsx(
        [
            ["姓名", "身份证号", "户号", "房屋地址", "网格编码"],
            ["张三", ID1, "#N/A", "#REF!", A1],
            ["李四", ID2, "#N/A", "#REF!", A1],
            ["#VALUE!", ID3, None, None, A1],
            ["王五", ID4, "0001", "平江路1号", A1],
        ]
    )
    assert openpyxl.load_workbook(io.BytesIO(book))["Sheet"]["C2"].data_type == "e"
    error = "holds an Excel error value (a formula that failed): correct the cell"
    expected = [
        {"row": 2, "field": "户号", "message": f"户号: {error}"},
        {"row": 2, "field": "房屋地址", "message": f"房屋地址: {error}"},
        {"row": 3, "field": "户号", "message": f"户号: {error}"},
        {"row": 3, "field": "房屋地址", "message": f"房屋地址: {error}"},
        {"row": 4, "field": "姓名", "message": f"姓名: {error}"},
    ]
    r = upload(client, book, "people.xlsx", mode="valid")
    assert r.status_code == 200, r.get_json()
    assert (r.get_json()["imported"], r.get_json()["failed"]) == (1, 3)
    assert r.get_json()["errors"] == expected
    assert counts(engine) == (1, 1, 1)
    assert client.get("/api/v1/households?number=%23N/A").get_json()["items"] == []
    # the same sheet saved by Excel as CSV
    content = csv_bytes(
        "姓名,身份证号,户号,房屋地址,网格编码",
        f"张三,{make_id(41)},#N/A,#REF!,{A1}",
        f"李四,{make_id(42)},#N/A,#REF!,{A1}",
        f"#VALUE!,{make_id(43)},,,{A1}",
    )
    r = upload(client, content, mode="valid")
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["failed"] == 3 and r.get_json()["errors"] == expected
    assert counts(engine) == (1, 1, 1)


def test_cells_merged_over_a_households_rows_give_each_row_the_value(
    client: Any, world: Any, engine: Any
) -> None:
    """Register sheets merge 户号 and 房屋地址 over the rows of a household's members. Only
    the first row carried them: the spouse and child were registered alone in the grid,
    outside the household and the house, and the import said all was well."""
    workbook = openpyxl.Workbook()
    sheet = workbook.active
    for row in (
        ["姓名", "身份证号", "与户主关系", "户号", "房屋地址", "网格编码"],
        ["张三", ID1, "户主", "0001", "平江路1号", A1],
        ["李四", ID2, "配偶", None, None, A1],
        ["张小三", ID3, "子女", None, None, A1],
        ["王五", ID4, "户主", "0002", "平江路2号", A1],
    ):
        sheet.append(row)
    sheet.merge_cells("D2:D4")
    sheet.merge_cells("E2:E4")
    out = io.BytesIO()
    workbook.save(out)
    r = upload(client, out.getvalue(), "people.xlsx")
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["households_created"] == 2 and r.get_json()["houses_created"] == 2
    household = client.get("/api/v1/households?number=0001").get_json()["items"][0]
    assert [m["relation"] for m in household["members"]] == ["head", "spouse", "child"]
    assert all(m["house_id"] == household["house_id"] for m in household["members"])
    assert counts(engine) == (4, 2, 2)


def test_a_formula_without_its_result_is_a_row_error_not_a_blank(
    client: Any, world: Any, engine: Any
) -> None:
    """A workbook written by a program rather than Excel holds formulas without their
    results. Such a 户号 was read as blank: the resident was registered alone in the grid,
    outside the household the formula named, and the import said all was well."""
    content = xlsx(
        [
            ["姓名", "身份证号", "与户主关系", "户号", "联系电话", "网格编码"],
            ["张三", ID1, "户主", "0001", None, A1],
            ["李四", ID2, "配偶", "=D2", None, A1],
        ]
    )
    r = upload(client, content, "people.xlsx", mode="valid")
    assert r.status_code == 200, r.get_json()
    message = "holds a formula whose result the file does not keep: open it in Excel and save it"
    assert r.get_json()["errors"] == [{"row": 3, "field": "户号", "message": f"户号: {message}"}]
    assert counts(engine) == (1, 1, 0)


def test_coordinates_from_amap_or_baidu_are_converted_when_the_file_says_so(
    client: Any, world: Any, engine: Any
) -> None:
    """Offices copy coordinates from AMap (GCJ-02) or Baidu (BD-09), hundreds of metres off
    GPS. The import took every point as WGS-84 and had no way to be told otherwise: a house
    in A1 went to A2 with its residents. `crs` names the system of the file's points."""
    from gridapi.geo.crs import wgs84_to_bd09, wgs84_to_gcj02

    lon, lat = 120.6085, 31.305  # WGS-84, in A1 near its eastern edge
    head = "姓名,身份证号,与户主关系,户号,房屋地址,经度,纬度"
    gcj = wgs84_to_gcj02(lon, lat)
    assert LON0 + STEP < gcj[0] < LON0 + 2 * STEP  # the raw numbers lie in A2
    r = upload(
        client,
        csv_bytes(head, f"张三,{ID1},户主,0001,平江路1号,{gcj[0]!r},{gcj[1]!r}"),
        crs="gcj02",
    )
    assert r.status_code == 200, r.get_json()
    bd = wgs84_to_bd09(lon, lat)
    r = upload(
        client, csv_bytes(head, f"李四,{ID2},户主,0002,平江路2号,{bd[0]!r},{bd[1]!r}"), crs="bd09"
    )
    assert r.status_code == 200, r.get_json()
    for number in ("0001", "0002"):
        household = client.get(f"/api/v1/households?number={number}").get_json()["items"][0]
        assert household["grid"] == A1 and household["members"][0]["grid"] == A1
        house = client.get(f"/api/v1/houses/{household['house_id']}").get_json()
        assert house["location"]["coordinates"] == pytest.approx([lon, lat], abs=1e-6)
    # without crs the points are WGS-84, as before
    r = upload(client, csv_bytes(head, f"王五,{ID3},户主,0003,平江路3号,{gcj[0]!r},{gcj[1]!r}"))
    assert r.status_code == 200, r.get_json()
    assert client.get("/api/v1/households?number=0003").get_json()["items"][0]["grid"] == A2
    r = upload(client, csv_bytes(head, f"赵六,{ID4},户主,0004,平江路4号,{lon},{lat}"), crs="mars")
    assert r.status_code == 422 and "crs" in r.get_json()["errors"]["multipart"]
    assert counts(engine) == (3, 3, 3)


def test_a_hidden_first_sheet_is_passed_over(client: Any, world: Any, engine: Any) -> None:
    """Office templates keep the lists of their drop-downs (人口类型, 与户主关系) on a hidden
    sheet, often the first. The import read that sheet, which the office cannot see, and
    refused the file for its unknown columns. The first visible sheet is the one read."""
    workbook = openpyxl.Workbook()
    lists = workbook.active
    lists.title = "字典"
    lists.append(["人口类型", "与户主关系"])
    lists.append(["户籍人口", "户主"])
    lists.sheet_state = "hidden"
    people = workbook.create_sheet("实有人口")
    people.append(["姓名", "身份证号", "人口类型", "网格编码"])
    people.append(["张三", ID1, "户籍人口", A1])
    workbook.active = 1
    out = io.BytesIO()
    workbook.save(out)
    r = upload(client, out.getvalue(), "people.xlsx")
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["imported"] == 1
    assert counts(engine) == (1, 0, 0)


def test_a_code_excel_turned_into_a_date_is_a_row_error(
    client: Any, world: Any, engine: Any
) -> None:
    """Excel turns a typed 户号 such as 3-2 (building 3, unit 2) into the date 2 March: the
    household was registered under the number "2026-03-02T00:00:00", which no office ever
    gave. No column holds a date, so a date or time cell is a row error."""
    from datetime import datetime, time

    content = xlsx(
        [
            ["姓名", "身份证号", "户号", "房屋地址", "网格编码"],
            ["张三", ID1, datetime(2026, 3, 2), "平江路1号", A1],
            ["李四", ID2, "3-3", time(12, 30), A1],
            ["王五", ID3, "3-4", "平江路3号", A1],
        ]
    )
    r = upload(client, content, "people.xlsx", mode="valid")
    assert r.status_code == 200, r.get_json()
    message = "stored as a date or time by Excel: format the column as text and type it again"
    assert r.get_json()["errors"] == [
        {"row": 2, "field": "户号", "message": f"户号: {message}"},
        {"row": 3, "field": "房屋地址", "message": f"房屋地址: {message}"},
    ]
    assert [h["number"] for h in client.get("/api/v1/households").get_json()["items"]] == ["3-4"]
    assert counts(engine) == (1, 1, 1)


def test_a_file_sent_again_registers_no_resident_twice_even_without_an_id_number(
    client: Any, world: Any, engine: Any
) -> None:
    """A corrected file is sent again and the residents imported before are refused as
    registered: so the documentation promises. 境外人员 need no ID number, and each sending
    registered them once more, in the household and in the grid."""
    content = csv_bytes(
        "姓名,身份证号,人口类型,与户主关系,户号,网格编码",
        f"张三,{ID1},户籍人口,户主,0001,{A1}",
        f"John Smith,,境外人员,租客,0001,{A1}",
        f"Anna Ivanova,,境外人员,,,{A1}",
    )
    assert upload(client, content).status_code == 200
    assert counts(engine) == (3, 1, 0)
    r = upload(client, content, mode="valid")
    assert r.status_code == 200, r.get_json()
    assert (r.get_json()["imported"], r.get_json()["failed"]) == (0, 3)
    again = "already registered here (same name, no ID number)"
    assert r.get_json()["errors"][1:] == [
        {"row": 3, "field": "姓名", "message": f"姓名: {again}"},
        {"row": 4, "field": "姓名", "message": f"姓名: {again}"},
    ]
    assert counts(engine) == (3, 1, 0)
    # another resident of that name elsewhere, or with an ID number, is another person
    r = upload(
        client,
        csv_bytes(
            "姓名,身份证号,人口类型,网格编码",
            f"Anna Ivanova,,境外人员,{A2}",
            f"John Smith,{ID2},境外人员,{A1}",
        ),
    )
    assert r.status_code == 200, r.get_json()
    assert counts(engine) == (5, 1, 0)


def test_a_utf8_file_with_a_damaged_character_is_not_read_as_gbk(
    client: Any, world: Any, engine: Any
) -> None:
    """A system export cut a name in the middle of a character (a byte limit): the file was
    no longer UTF-8, so all of it was read as GB18030, and every Chinese name and address
    was registered as mojibake (张三 as 寮犱笁) under English headers. The file is read as
    UTF-8 and only the damaged row fails."""
    content = (
        f"name,id_number,current_address,grid\n张三,{ID1},人民广场,{A1}\n".encode()
        + b"\xe6\x9d,"  # the first two of the three bytes of 李
        + f"{ID2},观前街口,{A1}\n王五,{ID3},观前街口,{A1}\n".encode()
    )
    r = upload(client, content, mode="valid")
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["errors"] == [
        {
            "row": 3,
            "field": "name",
            "message": "name: holds bytes that are not UTF-8 text: the file is damaged here",
        }
    ]
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT name, current_address FROM persons ORDER BY id")).all()
    assert [tuple(r) for r in rows] == [("张三", "人民广场"), ("王五", "观前街口")]


def test_an_id_or_phone_number_in_a_free_text_column_is_refused(
    client: Any, world: Any, engine: Any
) -> None:
    """As the API refuses it: a phone number under 民族 (a shifted sheet) was kept in clear."""
    content = csv_bytes(
        HEADER,
        f"John Smith,,,138 1234 5678,境外人员,,,,,,{A1}",
        f"Jane Smith,,,,境外人员,,,,,,{A1}",
    )
    r = upload(client, content, mode="valid")
    assert r.status_code == 200, r.get_json()
    report = r.get_json()
    assert (report["rows"], report["imported"], report["failed"]) == (2, 1, 1)
    [error] = report["errors"]
    assert (error["row"], error["field"]) == (2, "民族")
    assert "must not hold an ID or phone number" in error["message"]
    assert "1234" not in error["message"]


def test_an_id_or_phone_number_in_the_name_column_is_refused(
    client: Any, world: Any, engine: Any
) -> None:
    """A sheet whose columns were shifted put an ID number under 姓名: it was imported as a
    name, which is kept unencrypted (and searched, and exported), where ID and phone numbers
    are kept only encrypted."""
    content = csv_bytes(
        HEADER,
        f"{ID1},,,,境外人员,,,,,,{A1}",
        f"138 1234 5678,,,,境外人员,,,,,,{A1}",
        f"John Smith,,,,境外人员,,,,,,{A1}",
    )
    r = upload(client, content, mode="valid")
    assert r.status_code == 200, r.get_json()
    report = r.get_json()
    assert (report["rows"], report["imported"], report["failed"]) == (3, 1, 2)
    message = "姓名: must not be an ID or phone number: a name is kept unencrypted"
    assert report["errors"] == [
        {"row": 2, "field": "姓名", "message": message},
        {"row": 3, "field": "姓名", "message": message},
    ]
    assert counts(engine) == (1, 0, 0)
