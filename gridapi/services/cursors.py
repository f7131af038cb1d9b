"""Keyset cursors: the opaque place a page of a list ended on, for the next page to go on from.

A cursor is URL-safe base64 (unpadded) of a JSON array: ``[part?, time, id, tag?]``. The time
and the id are the sort key of the last row shown; ``part`` names the part of a list read in
parts (``/me/tasks``: ``open``, then ``closed``); ``tag`` names the list itself (the case
list's sort and filters, ``/me/tasks``' ``days``), so that a cursor sent with another list is
refused rather than paging it from a place in another. The case list and ``/me/tasks`` wrote
these arrays each with a copy of this code; the layout is theirs, so the cursors they handed
out before still decode.

Most lists page by id alone, and their cursor is the last id shown (``page_by_id``).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Select

from ..errors import Unprocessable
from ..schemas.common import instant_problem


@dataclass(frozen=True)
class Place:
    """Where a page ended, as a cursor names it."""

    part: str | None  #: the part of the list; None for a list read in one
    moment: datetime  #: the sort time of the last row, in UTC
    row_id: int  #: the id of the last row
    tag: str | int | None  #: the list it belongs to; None when the cursor names none


def encode_cursor(
    moment: datetime, row_id: int, *, part: str | None = None, tag: str | int | None = None
) -> str:
    """Return the cursor of the place after ``row_id`` (sorted at ``moment``, written as
    given), in ``part`` of the list ``tag`` names (each left out when None)."""
    items = [*([part] if part is not None else []), moment.isoformat(), row_id]
    if tag is not None:
        items.append(tag)
    return base64.urlsafe_b64encode(json.dumps(items).encode()).decode().rstrip("=")


def decode_cursor(cursor: str, *, parts: Collection[str] = (), id_below: int = 2**63) -> Place:
    """Return the place ``cursor`` names, as ``encode_cursor`` wrote it: with a part among
    ``parts`` first when ``parts`` are given, an id from 1 to below ``id_below``, a time
    with its zone within the years every time may take, and at most one tag.

    Raises Unprocessable (naming ``cursor``) for anything else: a forged id past 64 bits
    reached the query (422 "out of range" naming nothing), "2" or 1.5 were read as ids, a
    time without a zone as one, and 0001-01-01T00:00+14:00 could not be put in UTC. Whether
    the tag is the list's is for the caller to say (``another_list``)."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        items = json.loads(raw)
        if not isinstance(items, list):
            raise ValueError(cursor)
        part = None
        if parts:
            if not items or not isinstance(items[0], str) or items[0] not in parts:
                raise ValueError(cursor)
            part, *items = items
        text_value, row_id, *written = items
        if len(written) > 1:
            raise ValueError(cursor)
        moment = datetime.fromisoformat(text_value)
        if (
            type(row_id) is not int
            or not 0 < row_id < id_below
            or moment.utcoffset() is None
            or instant_problem(moment)
        ):
            raise ValueError(cursor)
    except (ValueError, TypeError, binascii.Error):
        raise invalid_cursor() from None
    # In UTC, as the database keeps it: SQLite compares the times as text, and the same
    # instant written +08:00 sorted after every case of that day.
    return Place(part, moment.astimezone(UTC), row_id, written[0] if written else None)


def invalid_cursor() -> Unprocessable:
    """Return the error for a cursor this API did not write."""
    return Unprocessable(
        "Invalid cursor.", errors={"query": {"cursor": ["not a cursor from this API"]}}
    )


def another_list(what: str) -> Unprocessable:
    """Return the error for a cursor of another list than the one asked for (``what``
    says how the lists differ)."""
    return Unprocessable(
        "The cursor belongs to another list.",
        errors={"query": {"cursor": [f"from a list of {what}: start again"]}},
    )


#: The most rows a page of a list by id holds, whatever ``limit`` asks.
PAGE_MAX = 200


class Page(list):  # type: ignore[type-arg]
    """The rows of one page of a list, and whether more rows follow it (``more``): the page
    answers ``next_cursor`` only then, so a full last page answers null as every list's
    last page does (docs/integration.md). Before, a page exactly ``limit`` long always named
    a next page, and the client's next request answered an empty one."""

    more: bool = False


def one_page(rows: Any, limit: int) -> Page:
    """Return the first ``limit`` (at most ``PAGE_MAX``) of ``rows``, as ``page_by_id``
    reads them (one more than a page, to tell whether more follow), as a Page."""
    rows = list(rows)
    size = min(limit, PAGE_MAX)
    page = Page(rows[:size])
    page.more = len(rows) > size
    return page


def page_by_id(
    stmt: Select[Any], id_column: Any, after: int | None, limit: int, *, newest_first: bool = False
) -> Select[Any]:
    """Return ``stmt`` narrowed to one page by id: the rows after the id ``after`` (None or
    0: from the first), in the order of ``id_column`` (``newest_first``: descending, and
    "after" means below), ``limit`` of them (never more than ``PAGE_MAX``) and one more,
    which tells whether more follow: read the rows with ``one_page``."""
    if after:
        stmt = stmt.where(id_column < after if newest_first else id_column > after)
    order = id_column.desc() if newest_first else id_column
    return stmt.order_by(order).limit(min(limit, PAGE_MAX) + 1)
