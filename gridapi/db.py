"""Engines for SQLite + SpatiaLite and PostgreSQL + PostGIS, and the one session per request."""

from __future__ import annotations

import contextlib
import contextvars
import os
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

# Imported before any connection loads mod_spatialite: SQLite loads extensions with
# RTLD_GLOBAL, which puts the system GEOS in the global symbol scope; a shapely loaded after
# that binds its GEOS calls to the wrong library and crashes. Loaded first, shapely's own
# GEOS is bound at once (Python loads extensions with RTLD_NOW).
import shapely  # noqa: F401  isort: skip
from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.orm import Session, sessionmaker

from .config import private_directory
from .jsonio import loads_stored

T = TypeVar("T")

# Write requests open SQLite transactions with BEGIN IMMEDIATE, so two writers queue on the
# busy timeout instead of failing when a read transaction tries to upgrade to a write (a
# reader whose snapshot is older than the last commit gets "database is locked" at once,
# whatever the timeout). GET views that write (an audit row of a read) say so: `writes`.
# Set, it decides how a SQLite transaction begins (True: IMMEDIATE, False: a plain read,
# even on an engine made with ``sqlite_immediate``); unset (None), the engine's default does.
sqlite_write_intent: contextvars.ContextVar[bool | None] = contextvars.ContextVar(
    "sqlite_write_intent", default=None
)

_WRITES = "_gridapi_writes"


def writes(view: Any) -> Any:
    """Mark a view of a reading method (GET) that writes too — an audit row of what was
    read — so that on SQLite its transaction begins as a writer's."""
    setattr(view, _WRITES, True)
    return view


def writes_when(predicate: Callable[[], bool]) -> Callable[[Any], Any]:
    """Mark a view of a reading method (GET) that writes for some requests only — an audit
    row of an exact lookup — so that on SQLite its transaction begins as a writer's when
    ``predicate()`` (called in the request's context, before the view) says it will write,
    and as a plain read otherwise."""

    def mark(view: Any) -> Any:
        setattr(view, _WRITES, predicate)
        return view

    return mark


def view_writes(view: Any) -> bool:
    """Return whether ``view`` (a view function, or a method of a MethodView) is marked
    (``writes`` or ``writes_when``)."""
    return bool(getattr(view, _WRITES, False))


def view_writes_now(view: Any) -> bool:
    """Return whether ``view`` writes in the current request: marked with ``writes``, or with
    ``writes_when`` and its predicate says so."""
    marker = getattr(view, _WRITES, False)
    return bool(marker()) if callable(marker) else bool(marker)


#: What SQLite's -wal file is cut back to when it starts again from the beginning (after a
#: checkpoint): it is reused, never shortened, and one large write (a grid set, a resident
#: import) otherwise left a file of its size beside the database as long as the server ran.
SQLITE_WAL_KEEP_BYTES = 16 * 1024 * 1024


class SpatialExtensionMissing(RuntimeError):
    """The database has no usable spatial extension; the message says what to install."""


def sqlite_dbapi() -> Any:
    """Return a DB-API module whose SQLite can load extensions (stdlib first, then sqlean)."""
    if hasattr(sqlite3.Connection, "enable_load_extension"):
        return sqlite3
    try:
        import sqlean  # type: ignore[import-untyped]
    except ImportError as exc:  # pragma: no cover - sqlean is a declared dependency
        raise SpatialExtensionMissing(
            "This Python's sqlite3 cannot load extensions and sqlean.py is not installed: "
            "pip install sqlean.py"
        ) from exc
    return sqlean.dbapi2


def make_engine(
    database_url: str,
    *,
    spatialite_path: str = "mod_spatialite",
    pool_size: int = 5,
    statement_timeout_ms: int = 30000,
    sqlite_immediate: bool = False,
) -> Engine:
    """Return an engine for the URL with the spatial extension wired in.

    ``sqlite_immediate``: every SQLite transaction begins IMMEDIATE unless
    ``sqlite_write_intent`` says otherwise (a command, whose transactions read and then
    write: begun as readers, their first write failed at once with "database is locked"
    whenever a request had written meanwhile). Not for the job runner: it holds reads open
    while it writes files and renews leases beside them, so its engine begins plain reads
    and each of its write transactions says so with ``sqlite_write_intent``.
    Raises SpatialExtensionMissing when SpatiaLite cannot be loaded.
    """
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite":
        return _make_sqlite_engine(database_url, spatialite_path, sqlite_immediate)
    if url.get_backend_name() == "postgresql":
        if url.drivername == "postgresql":
            url = url.set(drivername="postgresql+psycopg")
        engine = create_engine(
            url,
            pool_size=pool_size,
            max_overflow=pool_size,
            pool_recycle=1800,
            json_deserializer=loads_stored,
            connect_args={
                "options": f"-c statement_timeout={int(statement_timeout_ms)}",
                "connect_timeout": 5,
            },
        )
        _ping_idle_connections(engine)
        return engine
    raise ValueError(
        f"unsupported database URL {database_url!r}: use sqlite:///PATH or "
        "postgresql+psycopg://USER@HOST/DB"
    )


#: A pooled connection unused for this long is tested before it is handed out.
PING_AFTER_IDLE_S = 2.0


def _ping_idle_connections(engine: Engine) -> None:
    """Test a pooled PostgreSQL connection before use when it has been idle a while.

    SQLAlchemy's ``pool_pre_ping`` costs a round trip on every checkout (a tenth of a busy
    report's time). A connection in constant use needs none: if the server went away, the
    request using it fails with 503 and Retry-After, and that disconnect invalidates every
    older pooled connection, so the retry gets a fresh one. One idle for a while (the server
    may have restarted, a firewall may have dropped it) is tested first, and replaced by the
    pool if the test fails, as the documented pessimistic handling does.
    """
    from time import monotonic

    from sqlalchemy import exc

    @event.listens_for(engine, "checkin")
    def _checked_in(_dbapi_conn: Any, record: Any) -> None:
        record.info["idle_since"] = monotonic()

    @event.listens_for(engine, "checkout")
    def _checked_out(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        since = record.info.get("idle_since")
        if since is None or monotonic() - since < PING_AFTER_IDLE_S:
            return
        try:
            dbapi_conn.execute("SELECT 1")
            dbapi_conn.rollback()
        except Exception as error:  # the pool then connects afresh (up to three times)
            raise exc.DisconnectionError() from error


def _lower(value: Any) -> Any:
    return value.lower() if isinstance(value, str) else value


def _make_sqlite_engine(database_url: str, spatialite_path: str, immediate: bool = False) -> Engine:
    url = make_url(database_url)
    if url.database and url.database != ":memory:":
        # The register is in this file (names, addresses in clear): readable by the
        # service's user alone. SQLite gives its -wal and -shm files the file's mode.
        private_directory(Path(url.database).parent)
        with contextlib.suppress(FileExistsError):
            os.close(os.open(url.database, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    engine = create_engine(
        url,
        module=sqlite_dbapi(),
        connect_args={"timeout": 30},
        json_deserializer=loads_stored,
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Take transaction control from the driver so BEGIN is emitted when SQLAlchemy
        # starts a transaction (SAVEPOINTs then work as documented).
        dbapi_conn.isolation_level = None
        try:
            dbapi_conn.enable_load_extension(True)
            dbapi_conn.load_extension(spatialite_path)
            dbapi_conn.enable_load_extension(False)
        except Exception as exc:
            raise SpatialExtensionMissing(
                f"SpatiaLite could not be loaded ({spatialite_path}: {exc}). Install it with "
                "'apt-get install libsqlite3-mod-spatialite' or point GRIDAPI_SPATIALITE_PATH "
                "at mod_spatialite."
            ) from exc
        # lower() as PostgreSQL's in a UTF-8 database: for every letter, not ASCII alone (a
        # case search for "école" missed "ÉCOLE" here, and fullwidth "ｆｕｌｌ" missed "ＦＵＬＬ").
        dbapi_conn.create_function("lower", 1, _lower, deterministic=True)
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA journal_size_limit={SQLITE_WAL_KEEP_BYTES}")
        # FULL, not NORMAL: in WAL mode NORMAL leaves the last commits to a power cut (the
        # WAL is synced at checkpoints only), and a phone that was answered 201 has cleared
        # its queue. FULL syncs the WAL at every commit.
        cur.execute("PRAGMA synchronous=FULL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=30000")
        # LIKE as PostgreSQL's: case-sensitive. SQLite's ignores ASCII case by default, so a
        # name or address search for "john" found "John Smith" here and not on PostgreSQL.
        cur.execute("PRAGMA case_sensitive_like=ON")
        # What is deleted is overwritten: an erased resident's name and address stayed in
        # the file's free space, readable by anyone with a copy of it (PIPL art. 47).
        cur.execute("PRAGMA secure_delete=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        intent = sqlite_write_intent.get()
        write = immediate if intent is None else intent
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

    return engine


def spatial_extension_version(engine: Engine) -> str:
    """Return the spatial extension's version string.

    Raises SpatialExtensionMissing with what to install when there is none.
    """
    with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            return "SpatiaLite " + conn.execute(text("SELECT spatialite_version()")).scalar_one()
        row = conn.execute(
            text(
                "SELECT installed_version, default_version FROM pg_available_extensions "
                "WHERE name = 'postgis'"
            )
        ).first()
        if row is None:
            raise SpatialExtensionMissing(
                "PostGIS is not installed on the PostgreSQL server. Install it with "
                "'apt-get install postgresql-15-postgis-3' (match your PostgreSQL version), "
                "then run 'gridapi db upgrade'."
            )
        if row[0] is None:
            raise SpatialExtensionMissing(
                "PostGIS is available but not enabled in this database: run 'gridapi db "
                "upgrade' (it runs CREATE EXTENSION postgis), as a role allowed to do so."
            )
        return "PostGIS " + conn.execute(text("SELECT postgis_lib_version()")).scalar_one()


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    """Return the session factory; sessions never expire loaded objects on commit."""
    return sessionmaker(bind=engine, expire_on_commit=False, autoflush=True)


Sessions = sessionmaker[Session]


def sessions_of(bind: Engine | Sessions) -> Sessions:
    """Return ``bind`` when it is a session factory, else a factory of sessions on it."""
    return make_sessionmaker(bind) if isinstance(bind, Engine) else bind


@contextlib.contextmanager
def write_transaction(sessions: Sessions) -> Iterator[Session]:
    """Yield a session in one write transaction of a job or a command, committed at the end
    (rolled back on an error). On SQLite it begins IMMEDIATE, taking the write lock: a
    transaction that reads and then writes, begun as a reader, fails at its first write
    whenever another connection committed meanwhile."""
    token = sqlite_write_intent.set(True)
    try:
        with sessions.begin() as session:
            yield session
    finally:
        sqlite_write_intent.reset(token)


def in_write_transaction(sessions: Sessions, work: Callable[[Session], T]) -> T:
    """Return what ``work`` returns, run in one ``write_transaction``."""
    with write_transaction(sessions) as session:
        return work(session)
