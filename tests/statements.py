"""The SQL statements a block of a test sends: to assert how many round trips an answer
takes, or to explain the plan of one."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Engine


@contextlib.contextmanager
def statements_sent(
    engine: Engine, keep: Callable[[str], bool], *, parameters: bool = False
) -> Iterator[list[Any]]:
    """Collect the statements ``engine`` sends in the block that ``keep`` accepts, in order:
    their text, or (text, parameters) with ``parameters``."""
    sent: list[Any] = []

    def capture(conn, cursor, statement, params, context, executemany):  # type: ignore[no-untyped-def]
        if keep(statement):
            sent.append((statement, params) if parameters else statement)

    event.listen(engine, "before_cursor_execute", capture)
    try:
        yield sent
    finally:
        event.remove(engine, "before_cursor_execute", capture)
