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


SST_TYPE = "application/vnd.openxmlformats-officedocument.spreadsheetml.sharedStrings+xml"


def _shared_strings_book(texts: list[str], part: bytes | None = None) -> bytes:
    """A workbook as Excel writes it, its cells' texts in the shared strings: A1 is
    ``texts[0]``, A2 ``texts[1]``, the others unused. ``part`` replaces the part's XML."""
    ns = "http://schemas.openxmlformats.org/spreadsheetml/2006/main"
    if part is None:
        part = (
            f'<sst xmlns="{ns}" count="{len(texts)}" uniqueCount="{len(texts)}">'
            + "".join(f"<si><t>{t}</t></si>" for t in texts)
            + "</sst>"
        ).encode()
    book = _with_sheet_xml(
        _xlsx([["姓名"]]),
        '<row r="1"><c r="A1" t="s"><v>0</v></c></row><row r="2"><c r="A2" t="s"><v>1</v></c></row>',
    )
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(book)) as src, zipfile.ZipFile(out, "w") as dst:
        for item in src.infolist():
            data = src.read(item.filename)
            if item.filename == "[Content_Types].xml":
                override = f'<Override PartName="/xl/sharedStrings.xml" ContentType="{SST_TYPE}"/>'
                data = data.replace(b"</Types>", override.encode() + b"</Types>")
            dst.writestr(item, data, compress_type=zipfile.ZIP_DEFLATED)
        dst.writestr("xl/sharedStrings.xml", part, compress_type=zipfile.ZIP_DEFLATED)
    return out.getvalue()


def test_too_many_shared_strings_are_refused_before_they_are_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """openpyxl reads every shared string into memory before the first row: a workbook
    within the unpacked-size limits held tens of millions of them (gigabytes once read).
    Past MAX_SHARED_STRINGS the file is refused, read no further than the limit."""
    from gridapi.services import person_import

    monkeypatch.setattr(person_import, "MAX_SHARED_STRINGS", 1000, raising=False)
    texts = ["姓名", "张三"] + [f"{n:07d}" for n in range(200_000)]
    crafted = _shared_strings_book(texts)
    assert len(crafted) < 2_000_000  # packed no more than 200 times: not a zip bomb
    tracemalloc.start()
    try:
        with pytest.raises(Unprocessable) as refused:
            read_sheet(crafted, "people.xlsx", 100_000)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    (message,) = refused.value.errors["file"]
    assert message.startswith("The workbook holds more text than a register import reads")
    assert "1,000 texts" in message
    assert peak < 5_000_000, f"reading took {peak / 1e6:.0f} MB"
    assert read_sheet(_shared_strings_book(texts[:1000]), "p.xlsx", 10).rows == [(2, {0: "张三"})]


def test_a_shared_string_too_long_is_refused_before_it_is_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One shared string of hundreds of millions of characters, compressed within the zip
    bomb limits, was held whole: past MAX_SHARED_STRING_CHARS in all, the file is refused."""
    from gridapi.services import person_import

    monkeypatch.setattr(person_import, "MAX_SHARED_STRING_CHARS", 100_000, raising=False)
    crafted = _shared_strings_book(["姓名", "张三", "平江路" * 40_000])
    tracemalloc.start()
    try:
        with pytest.raises(Unprocessable) as refused:
            read_sheet(crafted, "people.xlsx", 100_000)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert "100,000 characters" in refused.value.errors["file"][0]
    assert peak < 2_000_000, f"reading took {peak / 1e6:.0f} MB"
    assert read_sheet(_shared_strings_book(["姓名", "张三"]), "p.xlsx", 10).rows == [
        (2, {0: "张三"})
    ]


def test_a_shared_strings_part_with_a_document_type_is_unreadable() -> None:
    """Entities declared in a DTD expand as they are read: no OOXML part has one."""
    ns = "http://schemas.openxmlformats.org/spreadsheetml/2006/main"
    part = (
        f'<!DOCTYPE sst [<!ENTITY a "{"x" * 1000}">]><sst xmlns="{ns}">'
        "<si><t>姓名</t></si><si><t>&a;&a;&a;</t></si></sst>"
    ).encode()
    with pytest.raises(Unprocessable) as refused:
        read_sheet(_shared_strings_book([], part), "people.xlsx", 10)
    assert refused.value.errors == {"file": ["The file cannot be read as an XLSX workbook."]}


def _open_archives() -> set[int]:
    import gc

    return {id(o) for o in gc.get_objects() if isinstance(o, zipfile.ZipFile) and o.fp}


def test_a_workbook_refused_half_read_is_closed_at_once() -> None:
    """A workbook openpyxl failed to read kept its archive open until the garbage collector
    closed it (a warning at the end of a CI run: KeyboardInterrupt in ZipFile.__del__)."""
    before = _open_archives()
    with pytest.raises(Unprocessable) as refused:  # its traceback keeps the reader alive
        read_sheet(_shared_strings_book([], b"<sst"), "people.xlsx", 10)
    assert refused.value.errors == {"file": ["The file cannot be read as an XLSX workbook."]}
    assert _open_archives() - before == set()


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


def _inline_book(texts: list[str]) -> bytes:
    """A workbook whose cells hold their texts themselves (t="inlineStr", as some exporters
    write every text): A1 is 姓名, A2, A3, … the ``texts``."""
    cells = ['<row r="1"><c r="A1" t="inlineStr"><is><t>姓名</t></is></c></row>'] + [
        f'<row r="{n}"><c r="A{n}" t="inlineStr"><is><t>{t}</t></is></c></row>'
        for n, t in enumerate(texts, start=2)
    ]
    return _with_sheet_xml(_xlsx([["姓名"]]), "".join(cells))


def test_an_inline_string_too_long_is_refused_before_it_is_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A cell holding its text itself (inlineStr) was read whole with its row, bounded only
    by the unpacked-size limit (512 MiB): past MAX_SHARED_STRING_CHARS the file is refused
    before openpyxl reads a row."""
    from gridapi.services import person_import

    monkeypatch.setattr(person_import, "MAX_SHARED_STRING_CHARS", 100_000, raising=False)
    crafted = _inline_book(["张三", "平江路" * 40_000])
    tracemalloc.start()
    try:
        with pytest.raises(Unprocessable) as refused:
            read_sheet(crafted, "people.xlsx", 100_000)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    (message,) = refused.value.errors["file"]
    assert message.startswith("The workbook holds more text than a register import reads")
    assert "100,000 characters" in message
    assert peak < 2_000_000, f"reading took {peak / 1e6:.0f} MB"
    assert read_sheet(_inline_book(["张三", "平江路" * 100]), "p.xlsx", 10).rows[0] == (
        2,
        {0: "张三"},
    )


def test_too_many_inline_strings_are_refused() -> None:
    """Inline strings count as texts, as shared strings do."""
    from gridapi.services import person_import

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(person_import, "MAX_SHARED_STRINGS", 50, raising=False)
        with pytest.raises(Unprocessable) as refused:
            read_sheet(_inline_book([f"张{n}" for n in range(60)]), "people.xlsx", 100_000)
        assert "over 50 texts" in refused.value.errors["file"][0]
        assert (
            len(read_sheet(_inline_book([f"张{n}" for n in range(40)]), "p.xlsx", 100).rows) == 40
        )


def test_shared_and_inline_strings_spend_one_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    """The shared strings and the sheet's inline strings are counted together: each within
    the limit, together past it, the file is refused."""
    from gridapi.services import person_import

    monkeypatch.setattr(person_import, "MAX_SHARED_STRING_CHARS", 1_000, raising=False)
    shared = _shared_strings_book(["姓名", "张三", "平江路" * 200])  # 600 characters unused
    with zipfile.ZipFile(io.BytesIO(shared)) as archive:
        sst = archive.read("xl/sharedStrings.xml")
    inline = (
        '<row r="1"><c r="A1" t="s"><v>0</v></c></row>'
        '<row r="2"><c r="A2" t="inlineStr"><is><t>' + "李" * 500 + "</t></is></c></row>"
    )
    book = _shared_strings_book([], sst)
    crafted = _with_sheet_xml(book, inline)
    with pytest.raises(Unprocessable) as refused:
        read_sheet(crafted, "people.xlsx", 100)
    assert "1,000 characters" in refused.value.errors["file"][0]
    monkeypatch.setattr(person_import, "MAX_SHARED_STRING_CHARS", 1_200, raising=False)
    assert read_sheet(crafted, "people.xlsx", 100).rows == [(2, {0: "李" * 500})]
