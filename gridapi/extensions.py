"""Application state (settings, engine, routing index) and the per-request session."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from flask import current_app, g
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from .config import Settings
from .db import sqlite_write_intent

if TYPE_CHECKING:
    from .auth import LocalRateLimiter, PrincipalCache
    from .security.fields import FieldCipher
    from .security.tokens import TokenSigner
    from .services.routing import RoutingIndex
    from .workcalendar import WorkingCalendar


@dataclass
class AppState:
    """What one application instance holds: settings, engine, sessions, index, credentials."""

    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    routing: RoutingIndex
    tokens: TokenSigner
    principals: PrincipalCache
    phone_key: bytes
    client_limits: LocalRateLimiter
    cipher: FieldCipher
    _calendar: tuple[float, WorkingCalendar] | None = field(default=None, repr=False)
    _calendar_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    # How many times an edit has forgotten the calendar: a read that began before the last
    # one may hold the days as they were, and is not kept.
    _calendar_generation: int = field(default=0, repr=False)

    def calendar(self, session: Session) -> WorkingCalendar:
        """Return the working calendar, re-read at most every ``calendar_cache_seconds``
        (at once in this process after an edit: see ``forget_calendar``)."""
        cached = self._calendar
        if cached is not None and time.monotonic() < cached[0]:
            return cached[1]
        from .services.calendar import working_calendar

        # Noted before the days are read: an edit committed before this saw its generation
        # bumped after its commit, so a read that sees this generation unchanged read after
        # that commit (every caller reads within a write transaction: on PostgreSQL a
        # statement sees what was committed when it began, on SQLite no edit commits
        # meanwhile). An edit forgotten meanwhile may be missing from what was read: the
        # request uses it, but it is not kept for the next ones (it was, for up to
        # calendar_cache_seconds after the edit).
        generation = self._calendar_generation
        calendar = working_calendar(session, self.settings.working_hours, self.settings.timezone)
        with self._calendar_lock:
            if generation == self._calendar_generation:
                expires = time.monotonic() + self.settings.calendar_cache_seconds
                self._calendar = (expires, calendar)
        return calendar

    def forget_calendar(self) -> None:
        """Drop the calendar kept, after an edit has committed, and any read under way."""
        with self._calendar_lock:
            self._calendar_generation += 1
            self._calendar = None


def state() -> AppState:
    """Return the current application's state."""
    return current_app.extensions["gridapi"]


def db_session() -> Session:
    """Return the request's session, opened on first use and closed at teardown."""
    session = g.get("_db_session")
    if session is None:
        session = state().sessions()
        g._db_session = session
    return session


@contextlib.contextmanager
def reading_session() -> Iterator[Session]:
    """Yield a session of its own that only reads, closed at the end: on SQLite it begins a
    plain read whatever the request's method, so it neither takes the database's one write
    lock nor waits for it (a POST's own session begins as a writer, BEGIN IMMEDIATE)."""
    token = sqlite_write_intent.set(False)
    try:
        with state().sessions() as session:
            yield session
    finally:
        sqlite_write_intent.reset(token)


def use_session(session: Session) -> None:
    """Make ``session`` the request's session: the sync batch runs each action's request on a
    session bound to the action's transaction (its commit ends a savepoint)."""
    g._db_session = session


def commit() -> None:
    """Commit the request's one transaction; called once by each write view.

    A ``g.before_commit`` hook (set by the sync batch for each action it applies) adds its
    rows to the same transaction first: the action's idempotency key commits with its effect.
    """
    session = db_session()
    hook = g.pop("before_commit", None)
    if hook is not None:
        hook(session)
    elif not session.in_transaction():
        return  # nothing was written through the session (a report that committed itself)
    session.commit()


def commit_adds_nothing() -> bool:
    """Return whether the request's commit will write nothing besides what the view writes
    (no ``g.before_commit`` hook): a view whose writes are one statement may then let that
    statement commit by itself (``services.intake``)."""
    return "before_commit" not in g


def close_session(_exc: BaseException | None = None) -> None:
    """Roll back anything uncommitted and return the connection to the pool."""
    session = g.pop("_db_session", None)
    if session is not None:
        session.close()
