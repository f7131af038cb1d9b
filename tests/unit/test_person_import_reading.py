"""Reading import files (no database): what a spreadsheet holds, and what it costs to read."""

from __future__ import annotations

import io
import tracemalloc
import zipfile

import openpyxl
import pytest

from gridapi.errors import Unprocessable
from gridapi.services.person_import import read_sheet


def _xlsx(rows: list[list[object]]) -> bytes:
    workbook = openpyxl.Workbook()
    sheet = workbook.active
    for row in rows:
        sheet.append(row)
    out = io.BytesIO()
    workbook.save(out)
    return out.getvalue()


def _with_sheet_xml(book: bytes, sheet_data: str) -> bytes:
    """``book`` with the rows of its first sheet replaced by ``sheet_data`` (XML)."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(book)) as src, zipfile.ZipFile(out, "w") as dst:
        for item in src.infolist():
            data = src.read(item.filename)
            if item.filename == "xl/worksheets/sheet1.xml":
                text = data.decode()
                start, end = text.index("<sheetData>"), text.index("</sheetData>")
                data = (text[:start] + f"<sheetData>{sheet_data}" + text[end:]).encode()
            dst.writestr(item, data, compress_type=zipfile.ZIP_DEFLATED)
    return out.getvalue()


def test_a_value_far_to_the_right_costs_no_more_than_the_value() -> None:
    """Each row with one cell in the last column (XFD) was read as 16,384 cells and kept:
    a 100 kB upload of such rows held gigabytes while it was read. A row now costs what
    its cells cost, and the value still fails its row as one without a header."""
    header = '<row r="1"><c r="A1" t="inlineStr"><is><t>姓名</t></is></c></row>'
    rows = "".join(
        f'<row r="{n}"><c r="A{n}" t="inlineStr"><is><t>张三</t></is></c>'
        f'<c r="XFD{n}"><v>1</v></c></row>'
        for n in range(2, 1502)
    )
    content = _with_sheet_xml(_xlsx([["姓名"]]), header + rows)
    assert len(content) < 100_000
    tracemalloc.start()
    try:
        sheet = read_sheet(content, "people.xlsx", 100_000)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(sheet.rows) == 1500
    assert sheet.rows[0] == (2, {0: "张三", 16383: 1})  # a value without a header: a row error
    assert peak < 20_000_000, f"reading took {peak / 1e6:.0f} MB"


def test_a_zip_bomb_is_refused_before_it_is_unpacked() -> None:
    """A workbook's parts were unpacked whatever their size: an XLSX of some kilobytes that
    unpacks to gigabytes (shared strings are held in memory whole) took the worker down.
    A part that unpacks to more than 200 times its packed size (past 1 MiB), or a workbook
    of more than 512 MiB unpacked, is refused as a whole, before anything is unpacked."""
    book = _xlsx([["姓名", "身份证号"], ["张三", "32050819900101001X"]])
    padding = " " * 40_000_000  # whitespace between rows: well-formed XML, read to the end
    bomb = _with_sheet_xml(
        book,
        '<row r="1"><c r="A1" t="inlineStr"><is><t>姓名</t></is></c></row>'
        + padding
        + '<row r="2"><c r="A2" t="inlineStr"><is><t>张三</t></is></c></row>',
    )
    assert len(bomb) < 200_000
    with pytest.raises(Unprocessable) as refused:
        read_sheet(bomb, "people.xlsx", 100_000)
    message = "The workbook unpacks to far more than its size: it is refused unread (save the sheet as CSV)."
    assert refused.value.errors == {"file": [message]}
    assert read_sheet(book, "people.xlsx", 100_000).rows == [
        (2, {0: "张三", 1: "32050819900101001X"})
    ]


def test_a_formula_whose_result_is_empty_text_is_blank() -> None:
    """Excel keeps the result of ="" as empty text (t="str"): a blank cell, not a formula
    whose result the file lacks."""
    header = (
        '<row r="1"><c r="A1" t="inlineStr"><is><t>姓名</t></is></c>'
        '<c r="B1" t="inlineStr"><is><t>户号</t></is></c></row>'
    )
    row = (
        '<row r="2"><c r="A2" t="inlineStr"><is><t>张三</t></is></c>'
        '<c r="B2" t="str"><f>IF(A2="","","")</f><v></v></c></row>'
    )
    sheet = read_sheet(_with_sheet_xml(_xlsx([["姓名"]]), header + row), "p.xlsx", 10)
    assert sheet.rows == [(2, {0: "张三"})]
