"""The keyset cursor codec the case list and /me/tasks share."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from gridapi.errors import Unprocessable
from gridapi.services.cursors import Place, decode_cursor, encode_cursor

NOON = datetime(2026, 11, 20, 12, tzinfo=UTC)


def test_the_codec_writes_the_cursors_the_two_copies_wrote():
    """New cursors are the bytes the case list's and /me/tasks' own copies wrote (kept from
    before they shared this codec), so a client comparing cursors sees no change."""
    assert encode_cursor(NOON, 1, tag="3a086c8be21d") == (
        "WyIyMDI2LTExLTIwVDEyOjAwOjAwKzAwOjAwIiwgMSwgIjNhMDg2YzhiZTIxZCJd"
    )
    assert encode_cursor(datetime(2099, 6, 1, tzinfo=UTC), 1, part="open", tag=7) == (
        "WyJvcGVuIiwgIjIwOTktMDYtMDFUMDA6MDA6MDArMDA6MDAiLCAxLCA3XQ"
    )


def test_a_cursor_reads_back_in_utc_with_its_part_and_tag():
    cst = NOON.astimezone(timezone(timedelta(hours=8)))
    assert decode_cursor(encode_cursor(cst, 5, tag="t")) == Place(None, NOON, 5, "t")
    assert decode_cursor(encode_cursor(NOON, 5)) == Place(None, NOON, 5, None)
    place = decode_cursor(encode_cursor(NOON, 5, part="closed", tag=7), parts=("open", "closed"))
    assert place == Place("closed", NOON, 5, 7)


@pytest.mark.parametrize(
    ("cursor", "parts"),
    [
        (encode_cursor(NOON, 5, part="later", tag=7), ("open", "closed")),
        (encode_cursor(NOON, 5, tag=7), ("open", "closed")),  # no part where one is due
        (encode_cursor(NOON, 2**31), ()),  # within 64 bits, but past id_below
        ("not base64!", ()),
    ],
)
def test_anything_else_is_refused_naming_the_cursor(cursor, parts):
    with pytest.raises(Unprocessable) as refused:
        decode_cursor(cursor, parts=parts, id_below=2**31)
    assert refused.value.errors == {"query": {"cursor": ["not a cursor from this API"]}}
