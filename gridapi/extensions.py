"""Application state (settings, engine, routing index) and the per-request session."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from flask import current_app, g
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from .config import Settings

if TYPE_CHECKING:
    from .auth import LocalRateLimiter, PrincipalCache
    from .security.tokens import TokenSigner
    from .services.routing import RoutingIndex


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


def commit() -> None:
    """Commit the request's one transaction; called once by each write view."""
    db_session().commit()


def close_session(_exc: BaseException | None = None) -> None:
    """Roll back anything uncommitted and return the connection to the pool."""
    session = g.pop("_db_session", None)
    if session is not None:
        session.close()
