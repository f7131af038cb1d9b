"""Bulk import of residents from the sheets offices keep: CSV or XLSX, one row per person,
with household and house columns.

The whole file is one transaction, committed once by the caller (``ImportReport.committed``
says whether to commit or roll back):

* mode ``all`` (the default): any row error and nothing is imported;
* mode ``valid``: the rows without errors are imported, the others reported. Every row runs
  in a SAVEPOINT, so a row that fails half-way (its house created, its person refused)
  leaves nothing behind;
* any other failure (a database error, a crash) propagates and imports nothing.

Rows run in savepoints in both modes, so mode ``all`` reports exactly the errors mode
``valid`` would. Error messages say what is wrong and never repeat a value from the file
(the ID and phone numbers above all).
"""

from __future__ import annotations

import bisect
import csv
import io
import logging
import math
import os
import re
import unicodedata
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from pathlib import Path
from time import monotonic, sleep
from typing import IO, Any
from xml.parsers import expat

from sqlalchemy import event, select
from sqlalchemy import text as sql
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from ..codes import common_region
from ..errors import Conflict, DomainError, Unprocessable
from ..geo.crs import SUPPORTED_CRS
from ..geo.shapes import geojson_point
from ..models.register import (
    HOUSE_USES,
    HOUSEHOLD_TYPES,
    POPULATION_TYPES,
    RELATIONS,
    House,
    Household,
    address_key,
)
from ..personal import (
    NUMBER_IN_NAME,
    NUMBER_IN_TEXT,
    InvalidValue,
    number_in_name,
    parse_id_number,
    parse_phone,
)
from ..scope import Scope
from . import register
from .register import Keys, Place
from .routing import IndexSnapshot
from .uniques import advisory_key

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no advisory file locks
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

MODES = ("all", "valid")
MAX_LISTED_ERRORS = 1000


# --- columns ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Column:
    key: str
    headers: tuple[str, ...]  # the first is the name used in messages when the file lacks it
    max_length: int | None = None

    @property
    def label(self) -> str:
        return self.headers[0]


COLUMNS = (
    Column("name", ("姓名", "name"), 100),
    Column("id_number", ("身份证号", "公民身份号码", "身份证号码", "id_number")),
    Column("phone", ("联系电话", "手机号码", "手机号", "phone")),
    Column("ethnicity", ("民族", "ethnicity"), 32),
    Column("population_type", ("人口类型", "population_type")),
    Column("relation", ("与户主关系", "relation")),
    Column("current_address", ("现住址", "current_address"), 300),
    Column("registered_address", ("户籍地址", "户籍地", "registered_address"), 300),
    Column("household_number", ("户号", "household_number"), 32),
    Column("household_type", ("户类型", "household_type")),
    Column("house_address", ("房屋地址", "house_address"), 300),
    Column("house_use", ("房屋用途", "house_use")),
    Column("lon", ("经度", "lon")),
    Column("lat", ("纬度", "lat")),
    Column("grid", ("网格编码", "grid")),
)
COLUMN_BY_KEY = {c.key: c for c in COLUMNS}
REQUIRED_COLUMNS = ("name",)


def _header_key(text: str) -> str:
    return text.strip().casefold()


HEADER_KEYS = {_header_key(h): c.key for c in COLUMNS for h in c.headers}


def _choices(chinese: dict[str, str], codes: tuple[str, ...]) -> dict[str, str]:
    return {**{c: c for c in codes}, **chinese}


POPULATION_TYPE_VALUES = _choices(
    {
        "户籍人口": "registered",
        "流动人口": "floating",
        "未落户人口": "unregistered",
        "境外人员": "foreign",
    },
    POPULATION_TYPES,
)
RELATION_VALUES = _choices(
    {
        "户主": "head",
        "配偶": "spouse",
        "子女": "child",
        "子": "child",
        "女": "child",
        "儿子": "child",
        "女儿": "child",
        "父母": "parent",
        "父亲": "parent",
        "母亲": "parent",
        "孙子女": "grandchild",
        "孙子": "grandchild",
        "孙女": "grandchild",
        "祖父母": "grandparent",
        "祖父": "grandparent",
        "祖母": "grandparent",
        "兄弟姐妹": "sibling",
        "儿媳": "child_in_law",
        "女婿": "child_in_law",
        "租客": "tenant",
        "其他": "other",
    },
    RELATIONS,
)
HOUSEHOLD_TYPE_VALUES = _choices(
    {"户籍户": "registered", "流动户": "floating", "租住户": "rental"}, HOUSEHOLD_TYPES
)
HOUSE_USE_VALUES = _choices(
    {"自住": "self_occupied", "出租": "rented", "空置": "vacant", "经营": "commercial"}, HOUSE_USES
)
CHOICES = {
    "population_type": ("户籍人口, 流动人口, 未落户人口, 境外人员", POPULATION_TYPE_VALUES),
    "relation": (
        "户主, 配偶, 子女, 父母, 孙子女, 祖父母, 兄弟姐妹, 儿媳, 女婿, 租客, 其他",
        RELATION_VALUES,
    ),
    "household_type": ("户籍户, 流动户, 租住户", HOUSEHOLD_TYPE_VALUES),
    "house_use": ("自住, 出租, 空置, 经营", HOUSE_USE_VALUES),
}

# Columns whose values are codes: a number Excel stored in floating point has lost digits.
_CODE_COLUMNS = frozenset({"id_number", "phone", "household_number", "grid"})
_SCIENTIFIC = re.compile(r"[0-9](?:\.[0-9]+)?[eE]\+?[0-9]+")
_GRID = re.compile(r"[0-9]{15}")


def _looks_like_data(header: str) -> bool:
    """Six digits or more, however written ("139-5111-0001", "139 5111 0001", full-width):
    a value, not a column name, and never echoed (a run of six ASCII digits let a phone
    number written with dashes through)."""
    return sum(c.isdigit() for c in header) >= 6


LOST_NUMBER = "stored as a number by Excel: format the column as text"
# What a cell shows when its formula failed (a VLOOKUP with no match gives #N/A): XLSX keeps
# them as error cells, read as this text, and Excel's CSV writes them as text. Never data.
EXCEL_ERRORS = frozenset(
    {
        "#NULL!",
        "#DIV/0!",
        "#VALUE!",
        "#REF!",
        "#NAME?",
        "#NUM!",
        "#N/A",
        "#GETTING_DATA",
        "#SPILL!",
        "#CALC!",
        "#FIELD!",
        "#BLOCKED!",
        "#CONNECT!",
        "#BUSY!",
        "#UNKNOWN!",
    }
)
FAILED_FORMULA = "holds an Excel error value (a formula that failed): correct the cell"


class _Uncomputed:
    """A formula cell without its result: programs other than Excel write formulas and leave
    computing them to Excel. Not blank: the cell has a value, which the file does not hold."""

    def __str__(self) -> str:
        return ""


UNCOMPUTED = _Uncomputed()


# --- errors and the report --------------------------------------------------------------------


class RowError(Exception):
    """A row cannot be imported: ``key`` is the column (None: the row as a whole)."""

    def __init__(self, key: str | None, reason: str) -> None:
        super().__init__(reason)
        self.key = key
        self.reason = reason


class UnseenHousehold(RowError):
    """The row's household number (户号) belongs to a household outside the caller's scope:
    the error tells that the number is registered, so the row counts as an exact lookup."""

    def __init__(self) -> None:
        super().__init__("household_number", "already registered in the county, outside your scope")


def _file_error(message: str, **extra: Any) -> Unprocessable:
    return Unprocessable(message, errors={"file": [message], **extra})


@dataclass
class ImportReport:
    """What an import did (or, dry or refused, would have done)."""

    mode: str
    dry_run: bool
    file_type: str = ""
    rows: int = 0
    valid: int = 0
    failed: int = 0
    houses_created: int = 0
    households_created: int = 0
    error_count: int = 0
    errors: list[dict[str, Any]] = field(default_factory=list)
    committed: bool = False
    regions: set[str] = field(default_factory=set, repr=False)
    #: Rows refused because their ID number belongs to a resident, or their household
    #: number (户号) to a household, outside the caller's scope: each tells that the number
    #: is registered, and counts as an exact lookup.
    unseen_duplicates: int = field(default=0, repr=False)
    #: Of those, the ID numbers: (the number masked, the resident's id, their region), for
    #: the ``person.lookup`` audit row each is (``register.record_taken_number``).
    unseen_holders: list[tuple[str, int, str]] = field(default_factory=list, repr=False)

    def add_error(self, row: int, field_name: str | None, message: str) -> None:
        self.error_count += 1
        if len(self.errors) < MAX_LISTED_ERRORS:
            self.errors.append({"row": row, "field": field_name, "message": message})

    @property
    def would_commit(self) -> bool:
        """Whether the import, were it not a dry run, would be committed."""
        return self.mode == "valid" or self.failed == 0

    def as_dict(self) -> dict[str, Any]:
        """The answer: counts of what was written (a dry run: of what the import would
        write; 0 when it would write nothing) and the errors."""
        done = self.committed or (self.dry_run and self.would_commit)
        return {
            "mode": self.mode,
            "dry_run": self.dry_run,
            "committed": self.committed,
            "file_type": self.file_type,
            "rows": self.rows,
            "valid": self.valid,
            "failed": self.failed,
            "imported": self.valid if done else 0,
            "houses_created": self.houses_created if done else 0,
            "households_created": self.households_created if done else 0,
            "error_count": self.error_count,
            "errors_truncated": self.error_count > len(self.errors),
            "errors": self.errors,
        }

    def audit_summary(self) -> dict[str, Any]:
        """Counts and mode only: never a value from the file, nor its name."""
        body = self.as_dict()
        return {k: body[k] for k in body if k not in ("errors", "errors_truncated")}

    def region_code(self, scope: Scope) -> str | None:
        """The deepest region holding every row that passed (else the caller's region)."""
        codes = sorted(self.regions)
        if not codes and len(scope.prefixes) == 1:
            codes = [scope.prefixes[0].ljust(12, "0")]
        return common_region(codes)


# --- reading the file -------------------------------------------------------------------------


#: The cells of a row that are not blank, by column index (0 is column A): a row costs what
#: its values cost, however far to the right they lie.
Cells = dict[int, Any]


@dataclass
class Sheet:
    file_type: str
    labels: dict[str, str]  # column key -> its header as written in the file
    positions: list[tuple[int, str]]  # (cell index, column key)
    rows: list[tuple[int, Cells]]  # (spreadsheet row number, its cells)


def _is_blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _is_xlsx(content: bytes, filename: str) -> bool:
    return filename.lower().endswith((".xlsx", ".xlsm")) or content.startswith(b"PK\x03\x04")


def _cells(values: Any) -> Cells:
    return {i: v for i, v in enumerate(values) if not _is_blank(v)}


DAMAGED_TEXT = "\ufffd"


def _damaged_utf8(content: bytes) -> str | None:
    """The text of a UTF-8 file with a few damaged characters (an export that cut a value in
    the middle of one), each replaced by U+FFFD; None for valid UTF-8 or for text in another
    encoding. Read as GB18030, such a file turned every Chinese value into mojibake."""
    try:
        content.decode("utf-8")
        return None
    except UnicodeDecodeError:
        pass
    text = content.decode("utf-8-sig", errors="replace")
    high_bytes = len(content) - len(content.translate(None, bytes(range(128, 256))))
    # GBK read as UTF-8 fails at nearly every character; UTF-8 only where it was damaged.
    if content.startswith(b"\xef\xbb\xbf") or text.count(DAMAGED_TEXT) * 10 <= high_bytes:
        return text
    return None


def _csv_rows(content: bytes) -> Iterator[tuple[int, Cells]]:
    if content.startswith((b"\xff\xfe", b"\xfe\xff")):
        text = content.decode("utf-16")
    elif (damaged := _damaged_utf8(content)) is not None:
        text = damaged
    else:
        for encoding in ("utf-8-sig", "gb18030"):
            try:
                text = content.decode(encoding)
                break
            except UnicodeDecodeError:
                continue
        else:
            raise _file_error(
                "The CSV file is neither UTF-8 nor GB18030/GBK text: save it from Excel as "
                "'CSV UTF-8' or 'CSV'."
            )
    first_line = text.split("\n", 1)[0]
    delimiter = "\t" if "\t" in first_line and "," not in first_line else ","
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        for number, record in enumerate(reader, start=1):
            yield number, _cells(record)
    except csv.Error as exc:
        raise _file_error(
            f"The CSV file cannot be read past line {reader.line_num}: {exc}."
        ) from None


# An XLSX file is a ZIP archive whose parts openpyxl unpacks (the shared strings whole, in
# memory). Sheets of residents unpack to 10-20 times their size, some hundred megabytes at
# GRIDAPI_IMPORT_MAX_ROWS; a zip bomb, to thousands of times.
MAX_UNPACKED_BYTES = 512 * 1024 * 1024
MAX_PACKING_RATIO = 200
_RATIO_FROM_BYTES = 1024 * 1024


def _check_unpacked_size(content: bytes) -> None:
    """Raise Unprocessable when the workbook would unpack to far more than its size: the
    sizes its archive declares are the most Python's zipfile unpacks."""
    try:
        with zipfile.ZipFile(io.BytesIO(content)) as archive:
            parts = archive.infolist()
    except Exception:  # not a ZIP archive: openpyxl says so
        return
    total = sum(part.file_size for part in parts)
    if total > MAX_UNPACKED_BYTES or any(
        part.file_size > _RATIO_FROM_BYTES
        and part.file_size > MAX_PACKING_RATIO * max(part.compress_size, 1)
        for part in parts
    ):
        raise _file_error(
            "The workbook unpacks to far more than its size: it is refused unread (save the sheet as CSV)."
        )


# openpyxl keeps every shared string (the texts of the workbook's cells, each once) in a
# list before the first row is read: some 150 bytes a string while it reads them, and the
# text itself. A register of GRIDAPI_IMPORT_MAX_ROWS rows of 15 columns holds at most
# 1.5 million distinct texts, some tens of millions of characters; a crafted part within
# the unpacked-size limits holds tens of millions of strings, or one of 500 million
# characters, gigabytes once read. A cell may also hold its text itself (t="inlineStr",
# as some exporters write every text), or a formula's text result: each such value is read
# whole with its row. Both count against the one budget below.
MAX_SHARED_STRINGS = 2_000_000
MAX_SHARED_STRING_CHARS = 50_000_000
_XML_CHUNK = 64 * 1024
# The elements of a worksheet whose text is a cell's value (an inline string's runs, a
# stored result, a formula): what openpyxl reads whole with the row.
_CELL_TEXT = frozenset({"is", "v", "f"})


class _DocumentType(Exception):
    """A part declares a document type: no OOXML part has one (entities expand within)."""


@dataclass
class _TextBudget:
    """The texts a workbook holds, counted across its parts (the shared strings, then the
    sheet read): one limit for both, however the writer kept its texts."""

    strings: int = 0
    chars: int = 0

    def count_string(self) -> None:
        self.strings += 1
        if self.strings > MAX_SHARED_STRINGS:
            raise _too_much_text()

    def count_chars(self, n: int) -> None:
        self.chars += n
        if self.chars > MAX_SHARED_STRING_CHARS:
            raise _too_much_text()


def _scan_xml(source: IO[bytes], start: Any, end: Any, text: Any) -> None:
    """Parse an XML part as a stream, in constant memory, with these handlers; raises
    ``_DocumentType`` or ``ExpatError`` for a part that is not plain XML."""

    def doctype(*_: Any) -> None:
        raise _DocumentType

    parser = expat.ParserCreate(namespace_separator=" ")
    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = text
    parser.StartDoctypeDeclHandler = doctype
    parser.buffer_text = False  # text in the pieces read, never gathered whole
    while chunk := source.read(_XML_CHUNK):
        parser.Parse(chunk, False)
    parser.Parse(b"", True)


def _check_shared_strings(source: IO[bytes], budget: _TextBudget) -> None:
    """Count the shared-strings part's strings and characters into ``budget`` as it
    streams; raise Unprocessable as soon as either exceeds its limit."""

    def start(name: str, _attributes: Any) -> None:
        if name.rpartition(" ")[2] == "si":
            budget.count_string()

    _scan_xml(source, start, None, lambda data: budget.count_chars(len(data)))


def _check_cell_texts(source: IO[bytes], budget: _TextBudget) -> None:
    """Count the texts the worksheet's cells hold themselves (inline strings, stored
    results and formulas) into ``budget`` as the part streams, before openpyxl reads a
    row; raise Unprocessable as soon as the budget is spent."""
    depth = 0  # inside a cell's text element (they do not nest, but count all the same)

    def start(name: str, _attributes: Any) -> None:
        nonlocal depth
        local = name.rpartition(" ")[2]
        if local in _CELL_TEXT:
            depth += 1
            if local == "is":
                budget.count_string()

    def end(name: str) -> None:
        nonlocal depth
        if name.rpartition(" ")[2] in _CELL_TEXT:
            depth -= 1

    def text(data: str) -> None:
        if depth:
            budget.count_chars(len(data))

    _scan_xml(source, start, end, text)


def _too_much_text() -> Unprocessable:
    return _file_error(
        f"The workbook holds more text than a register import reads (over "
        f"{MAX_SHARED_STRINGS:,} texts or {MAX_SHARED_STRING_CHARS:,} characters): "
        "it is refused unread. Import the register in several files."
    )


def _open_workbook(content: bytes, budget: _TextBudget) -> Any:
    """Open the workbook read-only (formulas' cached values), its shared strings counted
    into ``budget`` before openpyxl reads them. Raises Unprocessable when they are too many
    or too long."""
    from openpyxl.reader.excel import ExcelReader
    from openpyxl.xml.constants import SHARED_STRINGS

    class Reader(ExcelReader):
        def read_strings(self) -> None:
            part = self.package.find(SHARED_STRINGS)
            if part is not None:
                with self.archive.open(part.PartName[1:]) as source:
                    _check_shared_strings(source, budget)
            super().read_strings()

    reader = Reader(io.BytesIO(content), read_only=True, data_only=True)
    try:
        reader.read()
    except BaseException:
        # A read-only workbook keeps its archive open for its rows; one refused half-read
        # is closed here, not whenever the garbage collector gets to it.
        reader.archive.close()
        raise
    return reader.wb


_ZERO_PADDING = re.compile(r"0+")


def _zero_padded_styles(workbook: Any) -> dict[int, int]:
    """The cell styles whose number format pads with zeros ("0000", as offices format a
    户号 column): style id -> the number of digits shown."""
    from openpyxl.styles.numbers import BUILTIN_FORMATS, BUILTIN_FORMATS_MAX_SIZE

    widths: dict[int, int] = {}
    for style_id, style in enumerate(workbook._cell_styles):
        number_format = BUILTIN_FORMATS.get(style.numFmtId)
        custom = style.numFmtId - BUILTIN_FORMATS_MAX_SIZE
        if 0 <= custom < len(workbook._number_formats):
            number_format = workbook._number_formats[custom]
        # The first section applies to positive numbers ("0000;-0000" pads them too). No
        # code column is wider than 32 characters: a wider format pads nothing.
        first = str(number_format or "").split(";", 1)[0]
        if 1 < len(first) <= 32 and _ZERO_PADDING.fullmatch(first):
            widths[style_id] = len(first)
    return widths


def _padded(value: Any, width: int) -> Any:
    """A whole number as the cell shows it, with its leading zeros (the 户号 0001 that Excel
    stored as 1); any other value unchanged (beyond 15 digits the number has lost digits:
    read as a number, it is refused as one)."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 10**15:
        return value
    return f"{value:0{width}d}"


class _XlsxRows:
    """The rows of the first visible worksheet as the file stores them (openpyxl's own rows are
    padded to their last cell: a row with one value in column XFD was 16,384 cells), then,
    once they are read, its merged cells (``merged``: the ranges, as (first column, first
    row, last column, last row), 1-based)."""

    def __init__(self, content: bytes) -> None:
        self.content = content
        self.merged: list[tuple[int, int, int, int]] = []

    def __iter__(self) -> Iterator[tuple[int, Cells]]:
        from openpyxl.utils.cell import range_boundaries
        from openpyxl.worksheet._reader import FORMULA_TAG, WorkSheetParser

        unreadable = _file_error("The file cannot be read as an XLSX workbook.")
        _check_unpacked_size(self.content)
        budget = _TextBudget()
        try:
            workbook = _open_workbook(self.content, budget)
        except DomainError:
            raise
        except Exception:  # a damaged or foreign file: the client's to fix
            raise unreadable from None
        try:
            if not workbook.worksheets:
                raise _file_error("The workbook has no worksheet.")
            # Templates keep their drop-down lists on a hidden sheet, often the first one:
            # the sheet read is the first the office can see.
            visible = [ws for ws in workbook.worksheets if ws.sheet_state == "visible"]
            sheet = (visible or workbook.worksheets)[0]
            padded = _zero_padded_styles(workbook)
            try:
                with sheet._get_source() as source:
                    _check_cell_texts(source, budget)
            except DomainError:
                raise
            except Exception:
                raise unreadable from None

            class Parser(WorkSheetParser):
                def parse_cell(self, element: Any) -> dict[str, Any]:
                    cell = super().parse_cell(element)
                    if cell["data_type"] == "n" and cell["style_id"] in padded:
                        cell["value"] = _padded(cell["value"], padded[cell["style_id"]])
                    # Excel keeps every result, an empty text one as t="str"
                    if (
                        cell["value"] is None
                        and element.get("t") != "str"
                        and element.find(FORMULA_TAG) is not None
                    ):
                        cell["value"] = UNCOMPUTED
                    return cell

            try:
                parser = Parser(
                    sheet._get_source(),
                    sheet._shared_strings,
                    data_only=True,
                    epoch=workbook.epoch,
                    date_formats=workbook._date_formats,
                    timedelta_formats=workbook._timedelta_formats,
                )
                rows = parser.parse()
            except Exception:
                raise unreadable from None
            while True:
                try:
                    number, cells = next(rows)
                except StopIteration:
                    break
                except Exception:
                    raise unreadable from None
                yield (
                    number,
                    {c["column"] - 1: c["value"] for c in cells if not _is_blank(c["value"])},
                )
            try:  # written after the rows
                refs = [m.ref for m in parser.merged_cells.mergeCell] if parser.merged_cells else []
                self.merged = [range_boundaries(str(ref)) for ref in refs]
            except Exception:
                raise unreadable from None
        finally:
            workbook.close()


def _fill_merged(
    rows: list[tuple[int, Cells]], merged: list[tuple[int, int, int, int]], columns: set[int]
) -> None:
    """Give a value merged over several rows (户号, 房屋地址 over a household's members) to
    each of those rows that has values of its own, in the first column of the range: the
    cell Excel shows it in. Ranges of other columns, or of the header row, are ignored; so
    are ranges overlapping one before them in their column (Excel writes none)."""
    numbers = [number for number, _ in rows]
    by_number = dict(rows)
    ends: dict[int, int] = {}
    for first_col, first_row, _, last_row in sorted(merged, key=lambda m: (m[0], m[1])):
        column = first_col - 1
        if column not in columns or first_row < 2 or last_row <= first_row:
            continue
        if first_row <= ends.get(column, 0):
            continue
        ends[column] = last_row
        value = by_number.get(first_row, {}).get(column)
        if value is None:
            continue
        start = bisect.bisect_right(numbers, first_row)
        for number in numbers[start : bisect.bisect_right(numbers, last_row)]:
            by_number[number].setdefault(column, value)


def _header_text(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return "" if value is None else str(value).strip()


def read_sheet(content: bytes, filename: str, max_rows: int) -> Sheet:
    """Read the first visible sheet (XLSX) or the CSV: headers from the first row, then the rows that
    are not blank. Raises Unprocessable for anything wrong with the file as a whole."""
    if content.startswith(b"\xd0\xcf\x11\xe0") or filename.lower().endswith(".xls"):
        raise _file_error("Old Excel (.xls) files are not read: save the sheet as .xlsx or CSV.")
    file_type = "xlsx" if _is_xlsx(content, filename) else "csv"
    if not content:
        raise _file_error("The file is empty.")
    xlsx = _XlsxRows(content) if file_type == "xlsx" else None
    source = iter(xlsx) if xlsx is not None else _csv_rows(content)
    first = next(source, None)
    if first is None or first[0] != 1 or not first[1]:
        raise _file_error("The first row must hold the column headers; it is empty.")
    header = first[1]
    labels: dict[str, str] = {}
    positions: list[tuple[int, str]] = []
    unknown: list[str] = []
    for index, value in sorted(header.items()):
        text = _header_text(value)
        if not text:
            continue
        key = HEADER_KEYS.get(_header_key(text))
        if key is None:
            # A first row of data instead of headers must not be echoed (ID, phone numbers).
            unknown.append(
                f"column {index + 1} (a value, not a header?)" if _looks_like_data(text) else text
            )
        elif key in labels:
            raise _file_error(
                f"The columns {labels[key]} and {text} both give "
                f"{COLUMN_BY_KEY[key].label}: keep one."
            )
        else:
            labels[key] = text
            positions.append((index, key))
    if not labels:
        raise _file_error(
            "No known column in the first row: it must hold the column headers "
            f"({', '.join(c.label for c in COLUMNS)})."
        )
    if unknown:
        raise _file_error(
            f"Unknown column(s): {', '.join(unknown)}. Known columns: "
            f"{', '.join('/'.join(c.headers) for c in COLUMNS)}.",
            columns=unknown,
        )
    missing = [COLUMN_BY_KEY[k].label for k in REQUIRED_COLUMNS if k not in labels]
    if missing:
        raise _file_error(f"Required column(s) missing: {', '.join(missing)}.")
    rows: list[tuple[int, Cells]] = []
    for number, cells in source:
        if not cells:
            continue
        if len(rows) >= max_rows:
            raise _file_error(
                f"The file has more than {max_rows} rows (GRIDAPI_IMPORT_MAX_ROWS): split it."
            )
        rows.append((number, cells))
    if xlsx is not None and xlsx.merged:
        _fill_merged(rows, xlsx.merged, {index for index, _ in positions})
    return Sheet(file_type, labels, positions, rows)


# --- one row ----------------------------------------------------------------------------------


def _cell_text(key: str, value: Any) -> str:
    """Return a cell as text; raises RowError for a code Excel stored as a float."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if key in ("lon", "lat"):
            return repr(value)
        if key == "id_number" or (key in _CODE_COLUMNS and abs(value) >= 1e15):
            raise RowError(key, LOST_NUMBER)
        return str(int(value)) if value.is_integer() else repr(value)
    if isinstance(value, datetime | date | time | timedelta):
        # No column holds a date: Excel made one of what was typed (户号 3-2 is 2 March).
        raise RowError(
            key, "stored as a date or time by Excel: format the column as text and type it again"
        )
    if value is UNCOMPUTED:
        raise RowError(
            key,
            "holds a formula whose result the file does not keep: open it in Excel and save it",
        )
    text = str(value).strip()
    if key in _CODE_COLUMNS:
        # Typed with a Chinese input method: full-width digits and letters (１２３, Ｘ), the
        # ideographic space U+3000, are the ASCII ones of the code.
        text = unicodedata.normalize("NFKC", text).strip()
    if "\x00" in text:  # PostgreSQL refuses it in text (the whole file failed); SQLite kept it
        raise RowError(key, "must not contain NUL characters (U+0000)")
    if text.upper() in EXCEL_ERRORS:
        raise RowError(key, FAILED_FORMULA)
    if DAMAGED_TEXT in text:
        raise RowError(key, "holds bytes that are not UTF-8 text: the file is damaged here")
    if key == "id_number" and _SCIENTIFIC.fullmatch(text):
        raise RowError(key, LOST_NUMBER)
    return text


@dataclass
class RowData:
    name: str
    id_number: str | None
    phone: str | None
    ethnicity: str | None
    population_type: str
    relation: str | None
    current_address: str | None
    registered_address: str | None
    household_number: str | None
    household_type: str | None
    house_address: str | None
    house_use: str | None
    lon: float | None
    lat: float | None
    grid: str | None


def _coordinate(key: str, text: str, limit: float) -> float:
    try:
        value = float(text)
    except ValueError:
        raise RowError(key, "must be a number in decimal degrees") from None
    if not math.isfinite(value) or not -limit <= value <= limit:
        raise RowError(key, f"must be between -{limit:g} and {limit:g}")
    return value


class _Importer:
    def __init__(
        self,
        session: Session,
        sheet: Sheet,
        report: ImportReport,
        *,
        scope: Scope,
        keys: Keys,
        snapshot: IndexSnapshot | None,
        actor: str,
        crs: str = "wgs84",
    ) -> None:
        self.session = session
        self.crs = crs
        self.sheet = sheet
        self.report = report
        self.scope = scope
        self.keys = keys
        self.snapshot = snapshot
        self.actor = actor
        self.seen_ids: dict[str, int] = {}
        self.grid_places: dict[str, Place | None] = {}
        # A row's errors are listed in the order of the file's columns.
        self.order = {key: i for i, (_, key) in enumerate(sorted(sheet.positions))}
        self.headed = {index for index, _ in sheet.positions}

    # -- reporting ----------------------------------------------------------------------------

    def _error(self, row: int, key: str | None, reason: str, secrets: list[str]) -> None:
        label = self.sheet.labels.get(key) if key else None
        name = label or (COLUMN_BY_KEY[key].label if key in COLUMN_BY_KEY else None)
        message = f"{name}: {reason}" if name else reason
        for secret in secrets:  # belt and braces: no value of these columns in a message
            message = message.replace(secret, "***")
        self.report.add_error(row, label, message)

    # -- checks that need no database ---------------------------------------------------------

    def _stray(self, cells: Cells) -> RowError | None:
        """A value in a column without a header: an unquoted comma shifted the cells, or a
        column was left unnamed. Never guessed at."""
        stray = min((i for i in cells if i not in self.headed), default=None)
        if stray is None:
            return None
        return RowError(
            None,
            f"the value in column {stray + 1} has no header (in a CSV file, quote values "
            "that contain a comma)",
        )

    def _values(self, cells: Cells, problems: list[RowError]) -> dict[str, str]:
        values: dict[str, str] = {}
        for index, key in self.sheet.positions:
            try:
                values[key] = _cell_text(key, cells.get(index))
            except RowError as exc:
                problems.append(exc)
                values[key] = ""
        return values

    def _parse(self, row: int, values: dict[str, str], problems: list[RowError]) -> RowData:
        def text(key: str) -> str | None:
            value = values.get(key, "")
            if not value:
                return None
            limit = COLUMN_BY_KEY[key].max_length
            if limit and len(value) > limit:
                problems.append(RowError(key, f"is longer than {limit} characters"))
            return value

        def choice(key: str) -> str | None:
            value = values.get(key, "")
            if not value:
                return None
            listed, mapping = CHOICES[key]
            found = mapping.get(value) or mapping.get(value.lower())
            if found is None:
                problems.append(RowError(key, f"not a known value; use {listed}"))
            return found

        for key in ("ethnicity", "current_address", "registered_address"):
            if number_in_name(values.get(key, "")):  # as the API refuses it
                problems.append(RowError(key, NUMBER_IN_TEXT))
        name = text("name")
        if name is None and not any(p.key == "name" for p in problems):
            problems.append(RowError("name", "is required"))
        elif name is not None and number_in_name(name):
            problems.append(RowError("name", NUMBER_IN_NAME))
        population_type = choice("population_type") or "registered"
        id_number = None
        if values.get("id_number"):
            try:
                id_number = parse_id_number(values["id_number"]).value
            except InvalidValue as exc:
                problems.append(RowError("id_number", str(exc)))
        elif population_type != "foreign" and not any(p.key == "id_number" for p in problems):
            problems.append(RowError("id_number", "is required (except for 境外人员)"))
        if id_number is not None:
            first = self.seen_ids.setdefault(id_number, row)
            if first != row:
                problems.append(RowError("id_number", f"the same ID number is in row {first}"))
        phone = None
        if values.get("phone"):
            try:
                phone = parse_phone(values["phone"])
            except InvalidValue as exc:
                problems.append(RowError("phone", str(exc)))
        lon = lat = None
        if values.get("lon") or values.get("lat"):
            if not (values.get("lon") and values.get("lat")):
                missing = "lat" if values.get("lon") else "lon"
                problems.append(RowError(missing, "is required with the other coordinate"))
            else:
                try:
                    lon = _coordinate("lon", values["lon"], 180)
                    lat = _coordinate("lat", values["lat"], 90)
                except RowError as exc:
                    problems.append(exc)
                    lon = lat = None
        grid = text("grid")
        if grid is not None and not _GRID.fullmatch(grid):
            problems.append(RowError("grid", "must be a 15-digit grid code"))
        return RowData(
            name=name or "",
            id_number=id_number,
            phone=phone,
            ethnicity=text("ethnicity"),
            population_type=population_type,
            relation=choice("relation"),
            current_address=text("current_address"),
            registered_address=text("registered_address"),
            household_number=text("household_number"),
            household_type=choice("household_type"),
            house_address=text("house_address"),
            house_use=choice("house_use"),
            lon=lon,
            lat=lat,
            grid=grid,
        )

    # -- writing ------------------------------------------------------------------------------

    def _grid_place(self, code: str) -> Place:
        """The place of a grid in service in scope (grids do not change during an import)."""
        if code not in self.grid_places:
            try:
                self.grid_places[code] = register.place_of_grid(self.session, code, self.scope)
            except DomainError:
                self.grid_places[code] = None
        place = self.grid_places[code]
        if place is None:
            raise RowError("grid", "no grid with this code in service in your scope")
        return place

    def _place(self, d: RowData) -> tuple[Place | None, dict[str, Any]]:
        """The place the row names (a routed point, else its grid) and how to name it."""
        if d.lon is not None:
            where: dict[str, Any] = {
                "location": geojson_point(d.lon, d.lat),
                "crs": self.crs,
            }
            if d.grid:
                where["grid"] = d.grid
                self._grid_place(d.grid)
            place, _, _ = register.resolve_place(self.session, where, self.scope, self.snapshot)
            return place, where
        if d.grid:
            return self._grid_place(d.grid), {"grid": d.grid}
        return None, {}

    def _visible(self, obj: Any) -> bool:
        if obj.grid_code:
            return self.scope.covers_grid(obj.grid_code)
        return self.scope.covers_region(obj.region_code)

    def _household(self, d: RowData, place: Place | None) -> Household | None:
        """The registered household with the row's number (in the place's county)."""
        stmt = select(Household).where(Household.number == d.household_number)
        if place is not None:
            found = self.session.scalars(
                stmt.where(Household.county_code == place.county_code)
            ).first()
            if found is not None and not self._visible(found):
                raise UnseenHousehold
            return found
        candidates = self.session.scalars(
            stmt.where(register.in_scope(self.scope, Household)).order_by(Household.id).limit(2)
        ).all()
        if len(candidates) > 1:
            raise RowError(
                "household_number",
                "registered in several counties of your scope: give 网格编码 or 经度 and 纬度",
            )
        return candidates[0] if candidates else None

    def _house(self, d: RowData, place: Place | None, where: dict[str, Any]) -> tuple[House, int]:
        """The house with the row's address at the row's place: found, or created."""
        if place is None:
            raise RowError("house_address", "needs a place: give 网格编码 or 经度 and 纬度")
        # The API's rule (and the unique indexes'): the place is in the caller's scope, and
        # so is a house there.
        found = register.house_at(self.session, place, d.house_address)
        if found is not None:
            if d.house_use and d.house_use != found.use:
                raise RowError("house_use", "differs from the use of the house in the register")
            return found, 0
        data = {"address": d.house_address, "use": d.house_use or "self_occupied", **where}
        house = register.create_house(
            self.session, data, scope=self.scope, snapshot=self.snapshot, actor=self.actor
        )
        return house, 1

    def _write(self, d: RowData) -> tuple[int, int, str]:
        """Register the row's house, household and person; return what was created.

        A 户号 registered by another request between this row's look-up and its insert is
        looked up again: the row then joins that household, or is the unseen duplicate it
        would have been had the other request come first (counted as a lookup)."""
        try:
            with self.session.begin_nested():  # a house made for the household goes too
                return self._write_once(d)
        except (register.DuplicateHousehold, register.DuplicateHouse):
            # A house registered meanwhile (POST /api/v1/houses beside the import) is
            # joined, as it would have been had it come first.
            return self._write_once(d)

    def _write_once(self, d: RowData) -> tuple[int, int, str]:
        place, where = self._place(d)
        house: House | None = None
        household: Household | None = None
        new_houses = new_households = 0
        if d.household_number:
            household = self._household(d, place)
        if household is not None:
            if d.grid and household.grid_code != d.grid:
                raise RowError(
                    "grid", "differs from the grid of the household (户号) in the register"
                )
            if d.household_type and d.household_type != household.type:
                raise RowError(
                    "household_type", "differs from the type of the household in the register"
                )
            if d.house_address:
                house = self.session.get(House, household.house_id) if household.house_id else None
                if house is None or house.address_key != address_key(d.house_address):
                    raise RowError(
                        "house_address", "differs from the household's house in the register"
                    )
                if d.house_use and d.house_use != house.use:
                    raise RowError("house_use", "differs from the use of the house in the register")
        else:
            if d.house_address:
                house, new_houses = self._house(d, place, where)
            if d.household_number:
                if place is None:
                    raise RowError(
                        "household_number",
                        "no such household in your scope: give 网格编码 or 经度 and 纬度 to "
                        "register it",
                    )
                data: dict[str, Any] = {
                    "number": d.household_number,
                    "type": d.household_type or "registered",
                }
                if house is not None:
                    data["house_id"] = house.id
                else:
                    data.update(where)
                household = register.create_household(
                    self.session, data, scope=self.scope, snapshot=self.snapshot, actor=self.actor
                )
                new_households = 1
        person_data: dict[str, Any] = {
            "name": d.name,
            "id_number": d.id_number,
            "phone": d.phone,
            "relation": d.relation,
            "ethnicity": d.ethnicity,
            "population_type": d.population_type,
            "current_address": d.current_address,
            "registered_address": d.registered_address,
        }
        if household is not None:
            person_data["household_id"] = household.id
        elif place is not None and place.grid_code:
            person_data["grid"] = place.grid_code
        else:
            raise RowError(
                "grid",
                "say where the resident lives: 网格编码, 经度 and 纬度 inside a grid, or 户号",
            )
        # A resident without an ID number whose namesake lives there already (registered
        # by an import or through the API) is refused by create_person: the row error
        # "already registered here (same name, no ID number)".
        # The import waits for the place's namesake lock as long as it takes (a request
        # holds it for a moment); a request waiting for the import is answered 409.
        person = register.create_person(
            self.session,
            person_data,
            scope=self.scope,
            keys=self.keys,
            actor=self.actor,
            wait_for_imports=True,
        )
        if household is None and house is not None:
            person.house_id = house.id
            self.session.flush()
        return new_houses, new_households, person.region_code

    # -- the file -----------------------------------------------------------------------------

    def run(self) -> None:
        report = self.report
        for number, cells in self.sheet.rows:
            report.rows += 1
            problems: list[RowError] = []
            values = self._values(cells, problems)
            secrets = [v for k in ("id_number", "phone") if len(v := values.get(k, "")) >= 4]
            stray = self._stray(cells)
            if stray is not None:  # the other cells are not where their headers say
                problems = [stray]
            else:
                data = self._parse(number, values, problems)
            if not problems:
                try:
                    with self.session.begin_nested():
                        houses, households, region = self._write(data)
                except RowError as exc:
                    problems.append(exc)
                    if isinstance(exc, UnseenHousehold):
                        report.unseen_duplicates += 1
                except DomainError as exc:
                    problems.append(_row_error(exc))
                    if isinstance(exc, register.DuplicatePerson) and not self._visible(exc.holder):
                        report.unseen_duplicates += 1
                        holder = exc.holder
                        report.unseen_holders.append((exc.masked, holder.id, holder.region_code))
                else:
                    report.valid += 1
                    report.houses_created += houses
                    report.households_created += households
                    report.regions.add(region)
                    continue
            report.failed += 1
            problems.sort(key=lambda p: self.order.get(p.key or "", len(self.order)))
            for problem in problems:
                self._error(number, problem.key, problem.reason, secrets)


# The register's field names, as the columns that carry them.
_API_FIELDS = {
    "name": "name",
    "id_number": "id_number",
    "phone": "phone",
    "grid": "grid",
    "region": "grid",
    "location": "lon",
    "relation": "relation",
    "household_id": "household_number",
    "number": "household_number",
    "house_id": "house_address",
    "address": "house_address",
}


def _row_error(exc: DomainError) -> RowError:
    if isinstance(exc, register.DuplicatePerson):
        return RowError("id_number", "already registered in the county")
    for field_errors in (exc.errors or {}).values():
        if isinstance(field_errors, dict) and field_errors:
            name, reasons = next(iter(field_errors.items()))
            reason = reasons[0] if isinstance(reasons, list) and reasons else str(reasons)
            return RowError(_API_FIELDS.get(name), str(reason))
    return RowError(None, exc.message)


# PostgreSQL advisory locks, two-key form: this first key, then an area's (below).
_IMPORT_AREA_LOCK = 2280
_AREA_LEVELS = (0, 2, 4, 6, 9, 12)  # root, province, city, county, township, community


def _area_key(area: str) -> int:
    """The lock's second key for an area (a code prefix; "" for everywhere): an int4."""
    return advisory_key(area)


def lock_import_area(session: Session, scope: Scope) -> None:
    """Wait until no other import into the caller's area (or one above or below it) is
    running, and keep any from starting until this transaction ends (PostgreSQL).

    A row's house is looked up, then created when there is none: two imports at once, each
    looking before the other committed, created one house twice. The area of the scope is
    locked exclusively, the areas above it shared, so an import by the county waits for
    one by a community in it, and two communities' imports do not wait for each other.
    Every import takes its locks in one order (their keys'), so no two wait for each
    other. SQLite writers are one at a time already: a request that writes begins with
    BEGIN IMMEDIATE, the command line's import too (``_begin_sqlite_import``)."""
    if session.get_bind().dialect.name == "sqlite":
        _begin_sqlite_import(session)
        return
    if session.get_bind().dialect.name != "postgresql":
        return
    areas = {""} if scope.unrestricted else set(scope.prefixes) | set(scope.grid_codes)
    exclusive = {_area_key(area) for area in areas}
    shared = {
        _area_key(area[:n]) for area in areas for n in _AREA_LEVELS if n < len(area)
    } - exclusive
    for key in sorted(exclusive | shared):
        function = "pg_advisory_xact_lock" if key in exclusive else "pg_advisory_xact_lock_shared"
        try:
            session.execute(
                sql(f"SELECT {function}(:area_lock, :area)"),
                {"area_lock": _IMPORT_AREA_LOCK, "area": key},
            )
        except OperationalError as exc:
            if getattr(exc.orig, "sqlstate", None) not in _WAIT_ENDED:
                raise
            raise ImportAreaBusy() from None


def _import_marker(session: Session) -> Path | None:
    """The file beside a SQLite database an import holds a lock on while it writes (None
    for a database in memory, or where there are no advisory file locks)."""
    if fcntl is None:
        return None
    database = session.get_bind().url.database
    if not database or database == ":memory:":
        return None
    return Path(database + "-import.lock")


def _begin_sqlite_import(session: Session) -> None:
    """Begin the import's transaction (BEGIN IMMEDIATE: it waits, up to SQLite's busy
    timeout, for the write before it) and mark it as an import's until it ends.

    SQLite says only "database is locked" when a wait ends, whoever held the lock. The
    mark is an advisory lock on a file beside the database (``_import_marker``), held by
    the import whose transaction has the write lock: an import that waited in vain for an
    import is told so (ImportAreaBusy, 409 with Retry-After, as on PostgreSQL); one that
    waited for any other write gets the generic 503."""
    marker = _import_marker(session)
    try:
        session.connection()
    except OperationalError as exc:
        if marker is not None and _sqlite_busy(exc) and _marked(marker):
            raise ImportAreaBusy() from None
        raise
    if marker is not None:
        _mark_until_the_end(session, marker)


def _sqlite_busy(exc: OperationalError) -> bool:
    name = getattr(exc.orig, "sqlite_errorname", None)
    return name == "SQLITE_BUSY" if name else "database is locked" in str(exc.orig)


def _open_marker(marker: Path) -> int:
    return os.open(marker, os.O_RDWR | os.O_CREAT, 0o600)


def _marked(marker: Path) -> bool:
    """Whether an import holds the mark (its transaction has the database's write lock)."""
    assert fcntl is not None
    fd = _open_marker(marker)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # a lock taken goes with it
    return False


#: Seconds an import waits for the mark, which one ending (or a look at it) holds briefly.
_MARK_WAIT_S = 5.0


def _mark_until_the_end(session: Session, marker: Path) -> None:
    """Hold the mark until the session's transaction ends (committed or rolled back). An
    import not marked is still an import: another waiting for it is answered 503."""
    assert fcntl is not None
    fd = _open_marker(marker)
    deadline = monotonic() + _MARK_WAIT_S
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if monotonic() > deadline:
                os.close(fd)
                log.warning("the import could not mark itself (%s)", marker)
                return
            sleep(0.01)
    held = [fd]

    def release(_session: Session, transaction: Any) -> None:
        if transaction.parent is None and held:  # the import's, not a row's savepoint
            os.close(held.pop())

    event.listen(session, "after_transaction_end", release)


#: The SQLSTATEs of a wait cut short: the statement timeout (query_canceled), or a
#: lock_timeout a deployment may set (lock_not_available).
_WAIT_ENDED = frozenset({"57014", "55P03"})
#: Seconds an import refused for another one of its area asks the client to wait.
IMPORT_BUSY_RETRY_AFTER = 30


class ImportAreaBusy(Conflict):
    """Another import into the caller's area (or one above or below it; on SQLite any
    other import) ran longer than this one could wait for it (GRIDAPI_DB_STATEMENT_TIMEOUT_MS;
    on SQLite its busy timeout): nothing is imported, and
    the client is asked to send the file again later, as a request whose key is in flight
    is (409 with Retry-After). The generic 503 said the database was unavailable."""

    def __init__(self) -> None:
        super().__init__(
            "Another import into this area is running; nothing was imported. "
            "Send the file again when it has finished.",
            errors={"file": ["another import into this area is running"]},
            headers={"Retry-After": str(IMPORT_BUSY_RETRY_AFTER)},
        )


def _gives_numbers(sheet: Sheet) -> bool:
    """Return whether a row of ``sheet`` gives an ID number or a household number (户号),
    which the import looks up in the register."""
    columns = {index for index, key in sheet.positions if key in ("id_number", "household_number")}
    return any(
        not _is_blank(value)
        for _, cells in sheet.rows
        for index, value in cells.items()
        if index in columns
    )


def import_persons(
    session: Session,
    content: bytes,
    filename: str,
    *,
    scope: Scope,
    keys: Keys,
    snapshot: IndexSnapshot | None,
    actor: str,
    mode: str = "all",
    dry_run: bool = False,
    max_rows: int = 100_000,
    crs: str = "wgs84",
    before_lookup: register.BeforeLookup | None = None,
) -> ImportReport:
    """Import the residents of a CSV or XLSX file into ``session``'s transaction.

    Returns the report; ``report.committed`` tells the caller what to do with the
    transaction: commit it (with its audit row) when True, roll it back when False (a dry
    run, or mode ``all`` with any row error). Raises Unprocessable when the file as a whole
    cannot be read (encoding, format, unknown or missing columns, too many rows). ``crs``
    names the system of the file's 经度 and 纬度 (AMap's gcj02, Baidu's bd09, ...).
    ``before_lookup`` is called once, before any row is looked up, when a row gives an ID
    number or a household number (户号): the caller refuses the whole file there when it
    may look no more numbers up (a dry run too).
    """
    if mode not in MODES:
        raise Unprocessable(f"mode must be one of {', '.join(MODES)}.")
    if crs not in SUPPORTED_CRS:
        raise Unprocessable(f"crs must be one of {', '.join(SUPPORTED_CRS)}.")
    sheet = read_sheet(content, filename, max_rows)
    report = ImportReport(mode=mode, dry_run=dry_run, file_type=sheet.file_type)
    if before_lookup is not None and _gives_numbers(sheet):
        # Refused only once a refused row had spent the allowance, an import answered 429
        # for a file naming a registered number and 200 for one naming none: a dry run
        # tested thousands of numbers a file, past the allowance as before it.
        before_lookup()
    lock_import_area(session, scope)
    _Importer(
        session, sheet, report, scope=scope, keys=keys, snapshot=snapshot, actor=actor, crs=crs
    ).run()
    report.committed = not dry_run and report.would_commit
    return report
