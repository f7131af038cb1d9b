"""What a SQLite transaction did with the database's one write lock."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Engine


@contextlib.contextmanager
def writes_begun_as_reads() -> Iterator[list[str]]:
    """Collect the statements that write in a SQLite transaction begun as a plain read
    (BEGIN, not BEGIN IMMEDIATE): SQLite refuses them at once ("database is locked",
    whatever the busy timeout) whenever another connection committed since the BEGIN."""
    begun: dict[int, str] = {}
    found: list[str] = []

    def before(conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if conn.dialect.name != "sqlite":
            return
        key = id(conn.connection.dbapi_connection)
        head = statement.lstrip().split(None, 1)[0].upper()
        if head == "BEGIN":
            begun[key] = statement.strip().upper()
        elif head in ("INSERT", "UPDATE", "DELETE") and begun.get(key) == "BEGIN":
            found.append(statement)

    event.listen(Engine, "before_cursor_execute", before)
    try:
        yield found
    finally:
        event.remove(Engine, "before_cursor_execute", before)
