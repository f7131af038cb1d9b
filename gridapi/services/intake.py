"""Taking a report in exactly once: the case, its timeline, its audit row, its stored answer.

``report_once`` is what ``POST /api/v1/cases`` and the Open311 ``POST requests`` do: claim
the request's idempotency keys (409 while a request with one is in flight), replay a stored
answer (422 if the key was used for another request), else report the case (route, number,
deadlines, first timeline row), render the answer, store it under the keys and add the audit
row, all in the caller's one transaction (the resource commits).

On SQLite it runs the steps one statement at a time (``services.cases.report``; writers are
serialised by the database anyway). On PostgreSQL the same work takes two statements, both
prepared:

1. the new case's id, the answers already stored under the keys, the duplicate candidates
   and the category's row as text, in one row (nothing written; the category's columns are
   read by a statement of their own only when the process has not kept that same row);
2. the advisory locks of the keys (409 when one is held), the answers stored under them
   read again after the locks, and, when there are none, the number from the county's
   counter row for the day and the case, its first timeline row, its audit row and its
   keys (with the answer, rendered in between) inserted.

Everything is written by the second statement. When the caller says the report is all its
transaction will hold (``alone``: ``POST /cases`` and Open311, unless a sync batch adds the
action's key to the same transaction) and the session has not begun, the two run on a
connection of the pool in autocommit mode, outside the session: the second is a transaction
of its own and commits as it ends, with no BEGIN or COMMIT round trip, and the session is
never begun, so the resource's commit has nothing to do. Otherwise they run in the session's
transaction and the resource's COMMIT ends it.

A report on the ORM path was eleven round trips and ≈ 10 ms of a worker's CPU; it is two
round trips now (docs/performance.md). Reports of one county and day queue on the counter
row for the second statement only. The rows written are the same on both paths
(tests/api/test_intake.py compares them column by column).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Any

import orjson
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import Session

from ..auth import Principal
from ..errors import Unprocessable
from ..jsonio import dumps_bytes
from ..models import Case, Category
from ..workcalendar import WorkingCalendar
from . import cases as svc
from . import idempotency
from .audit import Actor, clean_summary, record
from .preconditions import etag
from .routing import IndexSnapshot

#: The engines whose reports take the two-statement path (the others: one by one).
TWO_STATEMENT_DIALECTS = frozenset({"postgresql"})

#: Render the answer of a new report: (case, possible duplicates, category) → JSON text.
#: ``case`` is a ``Case`` or a row with the same attributes; duplicates have ``id``,
#: ``number``, ``status``, ``lon``, ``lat`` and ``reported_at``.
Respond = Callable[[Any, list[Any], Category], str]


@dataclass(frozen=True)
class Taken:
    """What ``report_once`` did: a new case (``replayed`` false) or a stored answer."""

    status_code: int
    payload: str
    replayed: bool
    case_id: int | None
    etag: str | None = None


def report_once(
    session: Session,
    data: dict[str, Any],
    *,
    principal: Principal,
    actor: Actor,
    keys: list[str],
    body_hash: idempotency.RequestHash,
    path: str,
    snapshot: IndexSnapshot,
    calendar: WorkingCalendar,
    now: datetime,
    duplicate_window_hours: float,
    keep_days: int,
    respond: Respond,
    audit_summary: dict[str, Any] | None = None,
    alone: bool = False,
) -> Taken:
    """Report the case of ``data`` once per key (see the module's docstring).

    A replayed answer leaves the transaction with nothing to commit (the caller rolls back).
    ``audit_summary`` is added to the audit row's summary (``number`` and ``grid``).
    ``alone``: the caller's transaction will hold nothing else (it commits right after and
    adds no rows of its own), so on PostgreSQL the report may commit by itself.
    """
    request = _Request(
        data, principal, actor, keys, body_hash, path, snapshot, calendar, now, audit_summary
    )
    if session.get_bind().dialect.name in TWO_STATEMENT_DIALECTS:
        return _TwoStatements(session, request, alone).run(
            duplicate_window_hours, keep_days, respond
        )
    return _one_by_one(session, request, duplicate_window_hours, keep_days, respond)


@dataclass(frozen=True)
class _Request:
    data: dict[str, Any]
    principal: Principal
    actor: Actor
    keys: list[str]
    body_hash: idempotency.RequestHash
    path: str
    snapshot: IndexSnapshot
    calendar: WorkingCalendar
    now: datetime
    audit_summary: dict[str, Any] | None

    def summary(self, case: Any) -> dict[str, Any]:
        return {"number": case.number, "grid": case.grid_code, **(self.audit_summary or {})}


def _replay(stored: idempotency.Stored) -> Taken:
    return Taken(stored.status_code, stored.response, True, stored.resource_id)


def _answered(stored: str | None, body_hash: idempotency.RequestHash) -> Taken | None:
    """Return the replay of the answer stored under the keys (``stored``: the rows of
    ``gridapi_stored_answers`` as JSON text, or null), or None; 422 if a key was used for
    another request."""
    rows = orjson.loads(stored) if stored else ()
    answer = idempotency.choose([idempotency.Found(*item) for item in rows], body_hash)
    return _replay(answer) if answer is not None else None


def _one_by_one(
    session: Session, r: _Request, window_hours: float, keep_days: int, respond: Respond
) -> Taken:
    caller = r.principal.actor_id
    idempotency.claim(session, caller, r.keys)
    stored = idempotency.find(session, caller, r.keys, r.body_hash)
    if stored is not None:
        return _replay(stored)
    reported = svc.report(
        session,
        r.data,
        principal=r.principal,
        snapshot=r.snapshot,
        calendar=r.calendar,
        now=r.now,
        duplicate_window_hours=window_hours,
    )
    case = reported.case
    payload = respond(case, reported.duplicates, reported.category)
    idempotency.remember(
        session,
        caller,
        r.keys,
        hash_=r.body_hash,
        method="POST",
        path=r.path,
        status_code=201,
        response=payload,
        resource_id=case.id,
        now=r.now,
        keep_days=keep_days,
    )
    record(
        session,
        r.actor,
        "case.report",
        "case",
        case.id,
        summary=r.summary(case),
        region_code=case.region_code,
    )
    return Taken(201, payload, False, case.id, etag(case))


# --- PostgreSQL: two round trips ------------------------------------------------------------------

# Written here rather than from the row: chosen by the first statement, or built.
_COMPUTED = {"id", "number", "location"}
# The categories as last read by this process, by code: (the row as text, the row). The
# first statement reads the category's row as text, and the row's columns are read (in a
# statement of their own) only when that text is not the one cached: every report reads its
# category, an admin edits one now and then, and a result of twenty columns cost the worker
# more than one of a single text. The cached duplicate radius also lets the search for
# duplicates go with the first statement (it is repeated in a statement of its own when the
# category's row says otherwise).
_categories: dict[str, tuple[str, Row]] = {}


@cache
def _duplicates_sql() -> str:
    """Return ``services.cases.duplicate_search`` as psycopg's SQL (named parameters; the
    limit written in)."""
    from sqlalchemy.dialects.postgresql.psycopg import dialect

    stmt = svc.duplicate_search(*(getattr(Case, name) for name in svc.DUPLICATE_COLUMNS))
    compiled = stmt.compile(dialect=dialect(), compile_kwargs={"render_postcompile": True})
    sql = str(compiled)
    given = {"category", "lon0", "lon1", "lat0", "lat1", "since"}  # by the report
    for name, value in compiled.params.items():
        if name not in given:  # the limit
            sql = sql.replace(f"%({name})s", str(int(value)))
    return sql


@cache
def _nearby_sql() -> str:
    """Return the subquery of the duplicate candidates as one JSON text (null when none):
    ``[[id, number, status, …], …]`` (``services.cases.DUPLICATE_COLUMNS``), as ``_run``
    reads them."""
    return (
        f"(SELECT json_agg(json_build_array({', '.join(svc.DUPLICATE_COLUMNS)}))::text"
        f" FROM ({_duplicates_sql()}) AS d)"
    )


@cache
def _first_sql() -> str:
    """Return the first statement of a report.

    One row: the id the case will have (its number is taken last: see ``_insert_sql``), the
    answers stored under the keys (a retry is answered without rendering anything), the
    duplicate candidates (when the bounds are given), and the category's row as text (null
    when there is none; its columns are read by ``_category_sql`` when the text is not the
    one cached). It writes nothing: a key is claimed by the second statement.
    """
    return f"""
SELECT nextval(pg_get_serial_sequence('cases', 'id')),
  gridapi_stored_answers(%(caller)s, %(keys)s::text[])::text,
  {_nearby_sql()},
  k::text
FROM (SELECT 1) AS o
LEFT JOIN categories AS k ON k.code = %(category)s"""


@cache
def _category_sql() -> tuple[str, tuple[str, ...]]:
    """Return the statement that reads a category's columns and its row as text (as the
    first statement does), and the names of the columns."""
    names = tuple(c.name for c in Category.__table__.columns)
    columns = ", ".join(f"k.{n}" for n in names)
    return f"SELECT {columns}, k::text FROM categories AS k WHERE k.code = %(category)s", names


@cache
def _insert_sql() -> str:
    """Return the statement that claims the keys, then numbers and inserts a case, its
    first timeline row, its audit row and its idempotency keys.

    ``g`` takes the keys' advisory locks without waiting (false when a request with one of
    them is in flight, null when there are no keys; ``taken``, which of them it took) and then reads the answers stored under
    them with a VOLATILE function (migration 0014), whose query takes a snapshot of its own:
    it sees a request with the same key that committed after this statement began (a report
    without keys skips it). Nothing is inserted when a lock is held or an answer is stored;
    the row returned says which (``free``, ``stored``, and the number, null when nothing was
    inserted). The unique constraints on the keys and on (reporter, client_id) remain the
    last guard.

    The number is taken here, last, from the county's counter row for the day: reports of
    one county and day queue on that row from this statement to the commit, and no longer.
    The answer and the audit summary were rendered before with a mark in place of the
    number (``%(mark)s``, random per report), replaced here and, in the answer sent, by the
    caller with the number returned.

    The case's columns come as one JSON object (``%(row)s``) read as a ``cases`` row, so
    that the statement stays under psycopg's limits for caching its parsed form (4 kB and
    50 parameters). Every column of the model is written: the values of ``new_case_row``
    and, for the others, the model's own defaults (``_defaults``); a column added to the
    model is written here too.
    """
    names = ", ".join(c.name for c in Case.__table__.columns if c.name not in _COMPUTED)
    return f"""
WITH g AS MATERIALIZED (
    SELECT l.free, l.taken, CASE WHEN l.free
                        THEN gridapi_stored_answers(%(caller)s, %(keys)s::text[]) END AS stored
    FROM (SELECT bool_and(t) AS free, array_agg(t ORDER BY o) AS taken
          FROM (SELECT pg_try_advisory_xact_lock(x) AS t, o
                FROM unnest(%(locks)s::bigint[]) WITH ORDINALITY AS u(x, o)) AS p) AS l
), n AS (
    INSERT INTO case_counters (county_code, day, last)
    SELECT %(county_code)s, %(day)s, 1 FROM g WHERE g.free IS NOT FALSE AND g.stored IS NULL
    ON CONFLICT (county_code, day) DO UPDATE SET last = case_counters.last + 1
    RETURNING %(prefix)s || lpad(last::text, greatest(4, length(last::text)), '0') AS number
), c AS (
    INSERT INTO cases (id, number, location, {names})
    SELECT %(id)s, n.number, ST_SetSRID(ST_MakePoint(lon, lat), 4326), {names}
    FROM n, json_populate_record(NULL::cases, %(row)s::json)
    RETURNING id, number
), e AS (
    INSERT INTO case_events (case_id, county_code, seq, action, from_status, to_status, actor,
                             actor_name, at, comment, responsible_region_code, data, evidence)
    SELECT c.id, %(county_code)s, 1, 'report', NULL, 'reported', %(reporter)s,
           %(reporter_name)s, %(now)s, '', %(responsible)s, %(event_data)s::json, '[]'::json
    FROM c
), a AS (
    INSERT INTO audit_log (at, actor_type, actor_id, actor_name, action, object_type,
                           object_id, region_code, summary, request_id, client_address)
    SELECT %(now)s, %(actor_type)s, %(actor_id)s, %(actor_name)s, 'case.report', 'case',
           c.id::text, %(region_code)s, replace(%(summary)s, %(mark)s, c.number)::json,
           %(request_id)s, %(client_address)s
    FROM c
), k AS (
    INSERT INTO idempotency_keys (caller, key, request_hash, method, path, status_code,
                                  response, resource_id, created_at, expires_at)
    SELECT %(actor_id)s, k, %(hash)s, 'POST', %(path)s, 201,
           replace(%(response)s, %(mark)s, c.number), c.id, %(now)s, %(expires)s
    FROM c, unnest(%(keys)s::text[]) AS k
)
SELECT g.free, g.stored::text, (SELECT number FROM c), g.taken FROM g"""


@cache
def _defaults() -> dict[str, Any]:
    """Return the scalar defaults of the model's columns (callables such as ``utcnow`` are
    given by ``new_case_row``)."""
    found: dict[str, Any] = {}
    for column in Case.__table__.columns:
        default = column.default
        if default is not None and default.is_scalar:
            found[column.name] = default.arg
        else:
            found[column.name] = None
    return found


def _array(items: Iterable[str]) -> str:
    """Return an array literal of ``items`` (PostgreSQL's text form, every element quoted):
    psycopg adapts a string at a fraction of what a list costs it, and the statements cast."""
    quoted = (item.replace("\\", "\\\\").replace('"', '\\"') for item in items)
    return "{" + ",".join(f'"{item}"' for item in quoted) + "}"


class Row:
    """A row as a plain object: its columns as attributes (a case as inserted, which
    ``case_view`` and ``allowed_actions`` read; a category as read). The attributes are the
    instance's own, so reading one costs what reading a model's loaded column does."""

    def __init__(self, values: dict[str, Any]) -> None:
        self.__dict__.update(values)

    @property
    def values(self) -> dict[str, Any]:
        return self.__dict__


@dataclass(frozen=True)
class _Candidate:
    """A possible duplicate as the first statement reads it (``DUPLICATE_COLUMNS``)."""

    id: int
    number: str
    status: str
    lon: float
    lat: float
    reported_at: datetime
    sensitive: bool
    reporter: str
    assignee_id: int | None
    department_id: int | None
    responsible_region_code: str
    region_code: str
    grid_code: str | None


class _TwoStatements:
    """One report on PostgreSQL in two statements, on a pooled connection outside the
    session (``outside``) or on the session's own."""

    def __init__(self, session: Session, request: _Request, alone: bool) -> None:
        self.r = request
        self.engine = session.get_bind()
        self.pooled: Any = None  # the pool's connection, when the session is not used
        self.connection: Any = None  # the session's connection, when it is
        self.raw: Any = None
        # The second statement writes everything and is a transaction by itself: when
        # nothing else will be, both run on a pooled connection in autocommit mode, outside
        # the session, which then has no transaction to begin, commit or close (a fifth of
        # a report's CPU in the worker went to that machinery). The connection is taken in
        # ``run``, where the driver's errors are handled.
        self.outside = alone and not session.in_transaction()
        if not self.outside:
            self.connection = session.connection()
            self.raw = self.connection.connection.driver_connection
        self.sql = ""  # the statement being sent, for the error

    def execute(self, sql: str, params: dict[str, Any]) -> Any:
        self.sql = sql
        return self.raw.execute(sql, params, prepare=True)

    def run(self, window_hours: float, keep_days: int, respond: Respond) -> Taken:
        from psycopg import Error

        try:
            if self.outside:
                self._borrow()
            return self._run(window_hours, keep_days, respond)
        except Error as error:
            raise self._wrapped(error) from error
        finally:
            if self.pooled is not None:
                self._give_back()

    def _borrow(self) -> None:
        """Take a connection from the pool, in autocommit mode. The pool raises the driver's
        own error when it cannot connect (unlike the engine's connections, it does not wrap
        it): ``run`` wraps it as a statement's, so that the answer is 503 with Retry-After."""
        self.pooled = self.engine.raw_connection()
        self.raw = self.pooled.driver_connection
        self.raw.autocommit = True

    def _give_back(self) -> None:
        """Return the pooled connection as the pool lent it (out of autocommit); one that
        cannot be is discarded (the pool connects afresh)."""
        pooled, self.pooled = self.pooled, None
        if pooled.is_valid:
            try:
                self.raw.autocommit = False
            except Exception as error:  # broken: not reusable
                pooled.invalidate(error)
        pooled.close()

    @staticmethod
    def _bounds(radius: float | None, lon: float, lat: float, since: datetime) -> dict[str, Any]:
        """Return the parameters of the duplicate search (nulls: no search)."""
        if not radius:
            return dict.fromkeys(("lon0", "lon1", "lat0", "lat1", "since"))
        return svc.duplicate_bounds(radius, lon, lat, since)

    def _run(self, window_hours: float, keep_days: int, respond: Respond) -> Taken:
        r = self.r
        caller = r.principal.actor_id
        keys = _array(r.keys)
        code = r.data["category"]
        try:
            located: svc.Located | None = svc.locate_report(r.data, r.principal, r.snapshot)
            unplaced = None
        except Unprocessable as error:  # answered after the checks, as the other path does
            located, unplaced = None, error
        day = r.now.astimezone(r.calendar.tz).date()
        since = r.now - timedelta(hours=window_hours)
        cached = _categories.get(code)
        radius = cached[1].duplicate_radius_m if cached and located is not None else None
        point = (located.routed.lon, located.routed.lat) if located is not None else (0.0, 0.0)
        # 1. the new id, stored answers, duplicates, the category: one statement, no writes.
        first = self.execute(
            _first_sql(),
            {
                "caller": caller,
                "keys": keys,
                "category": code,
                **self._bounds(radius, *point, since),
            },
        )
        case_id, stored, nearby, as_text = first.fetchone()
        if r.keys and (replayed := _answered(stored, r.body_hash)) is not None:
            return replayed
        category = self._category(code, as_text, cached)
        if category is None or not category.is_active:
            raise Unprocessable(
                "Unknown category.",
                errors={"json": {"category": [f"no active category {code}"]}},
            )
        if category.parent_code is None:  # a class: only when it has no subclasses
            sql = svc.SUBCLASS_SQL.replace(":c", "%(c)s")
            svc.refuse_a_class(category, self.execute(sql, {"c": code}).fetchone())
        if unplaced is not None:
            raise unplaced
        assert located is not None
        case = svc.new_case_row(
            r.data,
            category,  # type: ignore[arg-type]
            principal=r.principal,
            located=located,
            calendar=r.calendar,
            now=r.now,
        )
        mark = f"#number-{uuid.uuid4().hex}#"  # stands for the number until it is taken
        case["id"], case["number"] = case_id, mark
        lon, lat = case["lon"], case["lat"]
        if category.duplicate_radius_m != radius:  # first seen, or changed: search again
            radius = category.duplicate_radius_m
            nearby = None
            if radius:
                again = self.execute(
                    f"SELECT {_nearby_sql()}",
                    {"category": code, **self._bounds(radius, lon, lat, since)},
                )
                nearby = again.fetchone()[0]
        candidates = [
            _Candidate(i, n, st, x, y, datetime.fromisoformat(at).astimezone(UTC), *rest)
            for i, n, st, x, y, at, *rest in (orjson.loads(nearby) if nearby else ())
        ]
        # The reporter's department is not read (a query per report): a department member
        # is shown the duplicates its area, its reports and its assignments show.
        reader = svc.Caller(r.principal)
        duplicates = svc.nearest_duplicates(reader, candidates, lon, lat, radius or 0.0)
        new = Row({**_defaults(), **case})
        payload = respond(new, duplicates, category)  # type: ignore[arg-type]
        # 2. the keys' locks, then the number, the case, its first timeline row, its audit
        # row and its keys (unless a request with one of the keys is in flight or answered).
        actor = r.actor
        inserted = self.execute(
            _insert_sql(),
            {
                "id": case_id,
                "mark": mark,
                "prefix": f"{located.county_code}-{day:%Y%m%d}-",
                "day": day,
                "row": dumps_bytes({**new.values, "number": None}).decode(),
                "county_code": case["county_code"],
                "reporter": case["reporter"],
                "reporter_name": case["reporter_name"],
                "responsible": case["responsible_region_code"],
                "region_code": case["region_code"],
                "event_data": dumps_bytes(svc.first_event_data(case, category)).decode(),  # type: ignore[arg-type]
                "now": r.now,
                "actor_type": actor.type,
                "actor_id": actor.id,
                "actor_name": actor.name,
                "summary": dumps_bytes(clean_summary(r.summary(new))).decode(),
                "request_id": actor.request_id,
                "client_address": actor.address,
                "hash": r.body_hash.value,
                "path": r.path[:255],
                "response": payload,
                "expires": r.now + timedelta(days=keep_days),
                "keys": keys,
                "caller": caller,
                "locks": _array(str(idempotency.lock_id(caller, k)) for k in r.keys),
            },
        )
        free, stored, number, taken = inserted.fetchone()
        if free is False:
            # The keys whose locks another request holds, as the statement found them (read
            # again after it, they were free once that request had ended, and the 409 named
            # the Idempotency-Key of a request whose client_id alone was in flight).
            held = [k for k, ok in zip(r.keys, taken, strict=True) if not ok]
            idempotency.raise_in_flight(r.keys, held)
        if number is None:  # answered (and committed) while this one was being rendered
            replayed = _answered(stored, r.body_hash)
            assert replayed is not None
            return replayed
        return Taken(201, payload.replace(mark, number), False, case_id, etag(new))

    def _category(
        self, code: str, as_text: str | None, cached: tuple[str, Row] | None
    ) -> Row | None:
        """Return the category's row as it is now (None when there is none): the one cached
        when its text is ``as_text`` (what the first statement read), else read again and
        cached."""
        if as_text is None:
            _categories.pop(code, None)
            return None
        if cached is not None and cached[0] == as_text:
            return cached[1]
        sql, names = _category_sql()
        row = self.execute(sql, {"category": code}).fetchone()
        if row is None:  # deleted since the first statement
            _categories.pop(code, None)
            return None
        category = Row(dict(zip(names, row[:-1], strict=True)))
        _categories[code] = (row[-1], category)
        return category

    def _wrapped(self, error: Exception) -> sa_exc.DBAPIError:
        """Return the driver's error as SQLAlchemy raises it (the API's error handlers map
        those: 503 with Retry-After for a lost connection, which is then invalidated)."""
        dialect = self.engine.dialect
        lost = dialect.is_disconnect(error, self.raw, None)
        held = self.connection if self.pooled is None else self.pooled
        if lost and held is not None:
            held.invalidate(error)
        return sa_exc.DBAPIError.instance(
            self.sql,
            None,
            error,
            dialect.loaded_dbapi.Error,
            connection_invalidated=lost,
            dialect=dialect,
        )
