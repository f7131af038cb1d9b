"""Inserting a row whose natural key was looked up first: the answer a concurrent twin gets.

A service looks a number up (a 户号, an ID number, a phone number) and answers a specific
conflict when it is taken. Two requests with one new number can both look before either
commits; on PostgreSQL the second insert then waits in the unique index for the first and
fails with a unique violation, which gridapi answers with the generic 409. Inserted through
``add_or_conflict``, the second looks again and answers as if the first had come first:
the same message and errors, counted the same way by its resource. A change of an existing
row (a new ID number, a new username) is written in ``conflicts_as``: the savepoint opens
before the first change, since opening it flushes what is pending, outside it. Where the
sequential case is no conflict but a change of the row found (a day of the working
calendar set again), ``add_or_found`` returns the twin's row to change instead.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

T = TypeVar("T")


def add_or_conflict(session: Session, obj: Any, conflict: Callable[[], Exception | None]) -> None:
    """Insert ``obj`` in a savepoint. If a unique index refuses it, raise what
    ``conflict()`` returns on looking again (the error of the sequential case), or the
    IntegrityError itself when it finds nothing (another constraint)."""
    with conflicts_as(session, conflict):
        session.add(obj)


def add_or_found(session: Session, obj: T, found: Callable[[], T | None]) -> T:
    """Insert ``obj`` in a savepoint and return it. If a unique index refuses it (a twin
    inserted the same key meanwhile), return what ``found()`` returns on looking again: the
    twin's row, for the caller to change as it changes a row it found at once; or raise the
    IntegrityError itself when it finds nothing (another constraint)."""
    try:
        with session.begin_nested():
            session.add(obj)
    except IntegrityError:
        row = found()
        if row is None:
            raise
        return row
    return obj


@contextmanager
def conflicts_as(session: Session, conflict: Callable[[], Exception | None]) -> Iterator[None]:
    """Make the changes of the block in a savepoint, flushed at its end. If a unique index
    refuses them, the savepoint is rolled back and what ``conflict()`` returns on looking
    again is raised (the IntegrityError itself when it finds nothing). Open it before the
    first change: pending changes are flushed outside it, as it opens."""
    try:
        with session.begin_nested():
            yield
    except IntegrityError:
        error = conflict()
        if error is None:
            raise
        raise error from None


def advisory_key(name: str) -> int:
    """Return the int4 key of ``name`` (an area, a place) for a PostgreSQL advisory lock's
    two-key form, whose first key says what kind of thing is locked."""
    digest = hashlib.blake2b(name.encode(), digest_size=4).digest()
    return int.from_bytes(digest, "big", signed=True)
