"""Indicators (考核指标) of a region or a handling unit over a period, and the monthly bulletin.

Every indicator is defined in ``docs/indicators.md`` exactly as computed here. They are
aggregated in the database over the case columns the workflow keeps in step with the
timeline in the same transaction: ``filed_at``, ``handle_due_at`` (the deadline in force,
moved by extensions), ``feedback_at``, ``closed_at`` (cleared by a reopen),
``rework_count``, ``extension_count``, ``satisfaction`` and ``handling_hours`` (working
hours from filing to closing, stored at closing). On PostgreSQL that is one grouped query
(the median and, for a breakdown, the totals included) fed by an index-only scan of
``ix_cases_indicators``; on SQLite one grouped query plus one for the median.
``tests/api/test_indicators.py`` proves the result equal to a direct replay of the
timelines. A sensitive case counts only for the offices over the unit holding it
(``counted``), as only they read it.

Services take a Session and never commit.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import (
    Integer,
    and_,
    case,
    cast,
    func,
    literal,
    or_,
    select,
    true,
    tuple_,
    union_all,
)
from sqlalchemy.orm import Session
from sqlalchemy.sql import ColumnElement

from .. import clock
from ..codes import InvalidCode, region_level, subtree_prefix
from ..errors import NotFound, Unprocessable
from ..models import Case, Category, Department, Region
from ..models.base import UTCDateTime
from ..schemas.common import FIRST_YEAR, LAST_YEAR
from ..scope import Scope, starts_with
from .cases import Caller, reads_every_case, reads_sensitive_by_unit, with_departments
from .regions import valid_on

# The rates a composite score may weigh; the "lower is better" ones count as (1 - rate).
WEIGHABLE = (
    "closure_rate",
    "on_time_closure_rate",
    "on_time_handling_rate",
    "rework_rate",
    "extension_rate",
    "satisfaction_rate",
)
LOWER_IS_BETTER = frozenset({"rework_rate", "extension_rate"})
DEFAULT_WEIGHTS = (
    "closure_rate:0.25,on_time_closure_rate:0.25,on_time_handling_rate:0.2,"
    "rework_rate:0.1,satisfaction_rate:0.2"
)

# (key, Chinese header) of every indicator, in the order of the bulletin's columns.
INDICATORS: tuple[tuple[str, str], ...] = (
    ("filed", "立案数"),
    ("due", "应结案数"),
    ("due_closed", "应结已结数"),
    ("closed_on_time", "按期结案数"),
    ("closure_rate", "结案率"),
    ("on_time_closure_rate", "按期结案率"),
    ("handled", "处置反馈数"),
    ("handled_on_time", "按期处置数"),
    ("on_time_handling_rate", "按期处置率"),
    ("closed", "结案数"),
    ("reworked", "返工案件数"),
    ("rework_rate", "返工率"),
    ("extended", "延期案件数"),
    ("extension_rate", "延期率"),
    ("overdue_open", "超期在办数"),
    ("closed_late", "超期办结数"),
    ("avg_handling_hours", "平均处置时长(工作小时)"),
    ("median_handling_hours", "处置时长中位数(工作小时)"),
    ("rated", "评价数"),
    ("satisfaction", "平均满意度"),
    ("satisfaction_rate", "满意率"),
    ("score", "综合得分"),
)
INDICATOR_NAMES = dict(INDICATORS)
COUNTS = (
    "filed",
    "due",
    "due_closed",
    "closed_on_time",
    "handled",
    "handled_on_time",
    "closed",
    "reworked",
    "extended",
    "overdue_open",
    "closed_late",
    "rated",
    "satisfied",
    "satisfaction_sum",
    "timed",
    "hours_sum",
)
BREAKDOWNS = ("category", "source", "unit", "day", "week", "month")
MAX_BUCKETS = 366
#: Why a region, unit or department is a 404: the same words, naming nothing but the
#: parameter, whether it does not exist or lies outside the caller's scope (the two must
#: answer alike, to the byte).
NO_REGION = "no region of this code in your scope"
NO_DEPARTMENT = "no department you dispatch cases to has this id"
_CHILD_PREFIX = {"province": 4, "city": 6, "county": 9, "township": 12}


# --- weights ----------------------------------------------------------------------------------


def parse_weights(text: str) -> dict[str, float]:
    """Parse ``GRIDAPI_INDICATOR_WEIGHTS`` (``"closure_rate:0.3,on_time_closure_rate:0.3"``).

    Returns the weights by indicator. Raises ValueError naming the item for an unknown
    indicator, a repeated one, a weight that is not a finite number >= 0, or weights that
    are all zero.
    """
    weights: dict[str, float] = {}
    for item in (part.strip() for part in str(text).split(",")):
        if not item:
            continue
        name, sep, raw = item.partition(":")
        name = name.strip()
        if not sep or name not in WEIGHABLE:
            raise ValueError(
                f"bad indicator weight {item!r}: expected name:weight with name one of "
                + ", ".join(WEIGHABLE)
            )
        if name in weights:
            raise ValueError(f"indicator {name} is weighted twice")
        try:
            value = float(raw)
        except ValueError:
            raise ValueError(f"bad indicator weight {item!r}: {raw.strip()!r} is not a number")
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"bad indicator weight {item!r}: must be a number >= 0")
        weights[name] = value
    if not weights or sum(weights.values()) <= 0:
        raise ValueError("indicator weights must give at least one indicator a weight above 0")
    return weights


def composite_score(
    values: Mapping[str, float | None], weights: Mapping[str, float]
) -> float | None:
    """Return 100 × Σ wᵢvᵢ / Σ wᵢ over the weighted rates that have a value, or None.

    ``vᵢ`` is the rate itself, or ``1 − rate`` for a rate where lower is better (rework,
    extension). A rate without a value (no denominator) is left out with its weight.
    """
    # The weights relative to the largest: the same score, and no overflow to inf / inf
    # (NaN) for weights near the largest float, nor underflow to 0 for subnormal ones.
    largest = max(weights.values(), default=0.0)
    total = weight_sum = 0.0
    for name, weight in weights.items():
        value = values.get(name)
        if value is None or weight <= 0:
            continue
        weight = weight / largest
        total += weight * (1.0 - value if name in LOWER_IS_BETTER else value)
        weight_sum += weight
    if weight_sum <= 0:
        return None
    return round(100.0 * total / weight_sum, 2)


# --- periods ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Period:
    """[start, end) in UTC; ``cut`` = min(end, now), the moment 'still open' is judged at."""

    key: str
    start: datetime
    end: datetime
    cut: datetime


def local_midnight(day: date, tz: ZoneInfo) -> datetime:
    return datetime.combine(day, datetime.min.time(), tzinfo=tz).astimezone(UTC)


def _month_start(day: date) -> date:
    return day.replace(day=1)


def _next_month(day: date) -> date:
    return (day.replace(day=28) + timedelta(days=4)).replace(day=1)


def periods_between(
    start: date, end: date, tz: ZoneInfo, now: datetime, by: str | None = None
) -> list[Period]:
    """Return the period [start, end) (local days in ``tz``), split by day, week or month.

    Weeks start on Monday and months on the 1st; the first and last are clipped to the
    range. Raises Unprocessable if ``end`` is not after ``start`` or there would be more
    than MAX_BUCKETS parts.
    """
    if end <= start:
        raise Unprocessable(
            "The period is empty.", errors={"query": {"to": ["must be after from"]}}
        )
    if by in ("day", "week", "month"):
        bounds = [start]
        cursor = start
        while cursor < end:
            if by == "day":
                cursor = cursor + timedelta(days=1)
            elif by == "week":
                cursor = cursor + timedelta(days=7 - cursor.weekday())
            else:
                cursor = _next_month(cursor)
            bounds.append(min(cursor, end))
            if len(bounds) > MAX_BUCKETS + 1:
                raise Unprocessable(
                    "Too many parts in the trend.",
                    errors={"query": {"by": [f"at most {MAX_BUCKETS} {by}s in one request"]}},
                )
    else:
        bounds = [start, end]
    result = []
    for a, b in zip(bounds, bounds[1:], strict=False):
        s, e = local_midnight(a, tz), local_midnight(b, tz)
        key = a.strftime("%Y-%m") if by == "month" else a.isoformat()
        result.append(Period(key, s, e, min(e, now)))
    return result


_MONTH = re.compile(r"[0-9]{4}-(0[1-9]|1[0-2])")


def month_period(month: str) -> tuple[date, date]:
    """Return the first day of ``month`` ("YYYY-MM") and of the month after it.

    Raises Unprocessable naming the path's ``month`` for anything else than a month of the
    years every date of the API lies in (``schemas.common``: 1900-2100; 9999-12 was a 422
    "A number is too large." naming nothing, its next month beyond what Python holds).
    """
    if not _MONTH.fullmatch(month) or not FIRST_YEAR <= int(month[:4]) <= LAST_YEAR:
        reason = f"a month as YYYY-MM of the years {FIRST_YEAR}-{LAST_YEAR}, e.g. 2026-03"
        raise Unprocessable("Invalid month.", errors={"path": {"month": [reason]}})
    first = date(int(month[:4]), int(month[5:]), 1)
    return first, _next_month(first)


def _periods_table(periods: Sequence[Period], dialect: str) -> Any:
    def ts(value: datetime) -> ColumnElement[Any]:
        lit = literal(value, UTCDateTime())
        # PostgreSQL needs the type of a bare parameter in a UNION; SQLite must not get a
        # CAST (its DATETIME affinity is numeric and would mangle the text).
        return cast(lit, UTCDateTime()) if dialect == "postgresql" else lit

    selects = [
        select(
            literal(i, Integer).label("bucket"),
            ts(p.start).label("p_from"),
            ts(p.end).label("p_to"),
            ts(p.cut).label("p_cut"),
        )
        for i, p in enumerate(periods)
    ]
    if len(selects) == 1:
        return selects[0].subquery("periods")
    return union_all(*selects).subquery("periods")


# --- where the cases are ----------------------------------------------------------------------


def located_in(code: str) -> ColumnElement[bool]:
    """Return 'the case is located in the subtree of region ``code``' (index-friendly)."""
    level = region_level(code)
    prefix = subtree_prefix(code)
    if level == "village":
        return Case.region_code == code
    if level == "township":
        return Case.township_code == code
    if level == "county":
        return Case.county_code == code[:6]
    return starts_with(Case.county_code, prefix)


def check_region(
    session: Session,
    scope: Scope,
    code: str,
    name: str = "region",
    *,
    start: date | None = None,
    end: date | None = None,
    location: str = "query",
) -> Region:
    """Return the region ``code`` as it was in the period [``start``, ``end``) if the scope
    covers it; NotFound otherwise.

    The period of the region is the latest one valid on some day of the asked period up to
    today: a township merged away since still answers for the months it existed, and a
    rename planned for later is not its name yet. Without a period, the one valid today.
    Out of scope answers as a region that does not exist. Either error names the parameter
    ``name`` in its ``location`` (``query``, or ``path`` for a bulletin's region).
    """
    try:
        region_level(code)
    except InvalidCode as exc:
        raise Unprocessable("Invalid region.", errors={location: {name: [str(exc)]}}) from None
    # The same answer for a region outside the scope and one that does not exist.
    missing = NotFound("No such region.", errors={location: {name: [NO_REGION]}})
    if not scope.covers_region(code):
        raise missing
    today = clock.today()
    last = today if end is None else min(end - timedelta(days=1), today)
    first = last if start is None else min(start, last)
    region = session.scalar(
        select(Region)
        .where(
            Region.code == code,
            or_(Region.valid_from.is_(None), Region.valid_from <= last),
            or_(Region.valid_to.is_(None), Region.valid_to >= first),
        )
        .order_by(func.coalesce(Region.valid_from, date.min).desc())
        .limit(1)
    )
    if region is None:
        raise missing
    return region


def counted(caller: Caller) -> ColumnElement[bool] | None:
    """Return the condition 'the case counts in the caller's indicators', or None for all.

    A sensitive case (special groups, petitions, family disputes) counts only for an office
    over the unit holding it (``services.cases.visible_condition``: such a case is not seen
    by where it is): a community officer's figures counted the special-group case the
    township holds in its community, which answered the officer 404. A caller that reads
    every case counts every case; one that is no office (no ``cases:dispatch``) counts no
    sensitive case, not even one it reported or handles: those are no unit's figures.
    """
    if reads_every_case(caller):
        return None
    plain = Case.sensitive.is_(False)
    if not reads_sensitive_by_unit(caller):
        return plain
    return or_(plain, caller.scope.region_condition(Case.responsible_region_code))


def dispatched_to(scope: Scope) -> ColumnElement[bool]:
    """Return 'a department the caller dispatches cases to': one of its area, or one of a
    unit above it up to its county, as the workflow decides (``services.cases``, the
    ``dispatch`` step: a township dispatches to the county's fire brigade; a city's or a
    province's department is reached by escalating). Deactivated ones too: they had cases.
    """
    above = with_departments(scope.ancestors)
    return or_(scope.region_condition(Department.region_code), Department.region_code.in_(above))


# --- the computation --------------------------------------------------------------------------


def _conditions(p: Any) -> dict[str, ColumnElement[bool]]:
    """The per-case conditions of every count, against the period columns of ``p``."""
    live = Case.status != "cancelled"
    due = and_(
        live,
        or_(
            # A deadline still ahead of the cut-off (a period not yet over) is not due yet,
            # unless the case is already closed: the month so far held against a unit a
            # case due next week, and closed early counts as closed on time.
            and_(
                Case.handle_due_at >= p.c.p_from,
                Case.handle_due_at < p.c.p_to,
                or_(Case.handle_due_at < p.c.p_cut, Case.closed_at < p.c.p_cut),
            ),
            and_(
                Case.handle_due_at < p.c.p_from,
                or_(Case.closed_at.is_(None), Case.closed_at >= p.c.p_from),
            ),
        ),
    )
    due_closed = and_(due, Case.closed_at < p.c.p_to)
    closed = and_(Case.closed_at >= p.c.p_from, Case.closed_at < p.c.p_to)
    handled = and_(
        live,
        Case.dispatched_at.is_not(None),
        Case.feedback_at >= p.c.p_from,
        Case.feedback_at < p.c.p_to,
    )
    rated = and_(closed, Case.satisfaction.is_not(None))
    return {
        "filed": and_(Case.filed_at >= p.c.p_from, Case.filed_at < p.c.p_to),
        "due": due,
        "due_closed": due_closed,
        "closed_on_time": and_(due_closed, Case.closed_at <= Case.handle_due_at),
        "handled": handled,
        "handled_on_time": and_(handled, Case.feedback_at <= Case.handle_due_at),
        "closed": closed,
        "reworked": and_(closed, Case.rework_count > 0),
        "extended": and_(due, Case.extension_count > 0),
        "overdue_open": and_(
            live,
            Case.filed_at < p.c.p_cut,
            or_(Case.closed_at.is_(None), Case.closed_at >= p.c.p_cut),
            Case.handle_due_at < p.c.p_cut,
        ),
        "closed_late": and_(closed, Case.closed_at > Case.handle_due_at),
        "rated": rated,
        "satisfied": and_(rated, Case.satisfaction >= 4),
        "timed": and_(closed, Case.handling_hours.is_not(None)),
    }


def _candidates(p: Any) -> ColumnElement[bool]:
    """Cases that can count in the period: filed before its end and not finished before it."""
    return and_(
        Case.filed_at.is_not(None),
        Case.filed_at < p.c.p_to,
        or_(
            Case.filed_at >= p.c.p_from,
            Case.closed_at.is_(None),
            Case.closed_at >= p.c.p_from,
            Case.handle_due_at >= p.c.p_from,
            Case.feedback_at >= p.c.p_from,
        ),
    )


def _range_candidates(periods: Sequence[Period]) -> ColumnElement[bool]:
    """``_candidates`` of the span of all the periods: every case that can count in one of
    them passes it. A constant filter, so the cases are read once, not once per period."""
    start = min(x.start for x in periods)
    end = max(x.end for x in periods)
    lo, hi = literal(start, UTCDateTime()), literal(end, UTCDateTime())
    return and_(
        Case.filed_at.is_not(None),
        Case.filed_at < hi,
        or_(
            Case.filed_at >= lo,
            Case.closed_at.is_(None),
            Case.closed_at >= lo,
            Case.handle_due_at >= lo,
            Case.feedback_at >= lo,
        ),
    )


def _count(condition: ColumnElement[bool]) -> Any:
    return func.coalesce(func.sum(case((condition, 1), else_=0)), 0)


def _count_columns(cond: Mapping[str, ColumnElement[bool]]) -> list[Any]:
    columns = [_count(cond[name]).label(name) for name in COUNTS if name in cond]
    columns.append(
        func.coalesce(func.sum(case((cond["rated"], Case.satisfaction), else_=0)), 0).label(
            "satisfaction_sum"
        )
    )
    columns.append(
        func.sum(case((cond["timed"], Case.handling_hours), else_=None)).label("hours_sum")
    )
    return columns


def _values(row: Mapping[str, Any]) -> dict[str, Any]:
    values = {name: int(row[name] or 0) for name in COUNTS if name != "hours_sum"}
    values["hours_sum"] = float(row["hours_sum"]) if row["hours_sum"] is not None else 0.0
    values["median_handling_hours"] = None
    return values


def aggregate(
    session: Session,
    where: Iterable[ColumnElement[bool]],
    periods: Sequence[Period],
    group: Sequence[ColumnElement[Any]] = (),
) -> dict[tuple[Any, ...], dict[str, Any]]:
    """Return the counts and sums of every indicator by (period index, *group values).

    Groups with no candidate case are absent (every count of theirs is 0).
    """
    if session.get_bind().dialect.name == "postgresql":
        return _aggregate_postgresql(session, where, periods, group, total=False)[0]
    return _aggregate_generic(session, where, periods, group)


def aggregate_with_total(
    session: Session,
    where: Iterable[ColumnElement[bool]],
    periods: Sequence[Period],
    group: Sequence[ColumnElement[Any]],
) -> tuple[dict[tuple[Any, ...], dict[str, Any]], dict[tuple[Any, ...], dict[str, Any]]]:
    """Return ``aggregate`` by group and ``aggregate`` without a group (the totals by period
    index), in one reading of the cases on PostgreSQL."""
    where = list(where)
    if session.get_bind().dialect.name == "postgresql":
        return _aggregate_postgresql(session, where, periods, group, total=True)
    return (
        _aggregate_generic(session, where, periods, group),
        _aggregate_generic(session, where, periods),
    )


def _aggregate_postgresql(
    session: Session,
    where: Iterable[ColumnElement[bool]],
    periods: Sequence[Period],
    group: Sequence[ColumnElement[Any]],
    *,
    total: bool,
) -> tuple[dict[tuple[Any, ...], dict[str, Any]], dict[tuple[Any, ...], dict[str, Any]]]:
    """``aggregate`` in one query: the median from the two middle values (percentile_disc
    of the handling times in ascending and descending order: the same one or two values the
    generic query ranks), and with ``total`` the totals too (GROUPING SETS)."""
    p = _periods_table(periods, "postgresql")
    cond = _conditions(p)
    keys = [p.c.bucket, *group]
    timed = cond["timed"]
    columns = _count_columns(cond)
    columns.append(
        func.percentile_disc(0.5).within_group(Case.handling_hours).filter(timed).label("lo")
    )
    columns.append(
        func.percentile_disc(0.5).within_group(Case.handling_hours.desc()).filter(timed).label("hi")
    )
    labelled = [k.label(f"g{i}") for i, k in enumerate(keys)]
    if total and group:
        columns.append(func.grouping(*group).label("gset"))
        grouping: list[Any] = [func.grouping_sets(tuple_(*keys), tuple_(p.c.bucket))]
    else:
        grouping = list(keys)
    where = list(where)
    if len(periods) > 1:
        where.append(_range_candidates(periods))
    stmt = (
        select(*labelled, *columns)
        .select_from(p)
        .join(Case, true())
        .where(*where, _candidates(p))
        .group_by(*grouping)
    )
    found: dict[tuple[Any, ...], dict[str, Any]] = {}
    whole: dict[tuple[Any, ...], dict[str, Any]] = {}
    for row in session.execute(stmt).mappings():
        values = _values(row)
        if row["lo"] is not None and values["timed"]:
            values["median_handling_hours"] = (float(row["lo"]) + float(row["hi"])) / 2
        if total and (not group or row["gset"]):
            whole[(row["g0"],)] = values
        if not (total and group and row["gset"]):
            found[tuple(row[f"g{i}"] for i in range(len(keys)))] = values
    return found, whole


def _aggregate_generic(
    session: Session,
    where: Iterable[ColumnElement[bool]],
    periods: Sequence[Period],
    group: Sequence[ColumnElement[Any]] = (),
) -> dict[tuple[Any, ...], dict[str, Any]]:
    """``aggregate`` in two portable queries (SQLite): the counts, then the median."""
    dialect = session.get_bind().dialect.name
    p = _periods_table(periods, dialect)
    cond = _conditions(p)
    keys = [p.c.bucket, *group]
    where = list(where)
    if len(periods) > 1:
        where.append(_range_candidates(periods))
    columns = _count_columns(cond)
    labelled = [k.label(f"g{i}") for i, k in enumerate(keys)]
    stmt = (
        select(*labelled, *columns)
        .select_from(p)
        .join(Case, true())
        .where(*where, _candidates(p))
        .group_by(*keys)
    )
    result: dict[tuple[Any, ...], dict[str, Any]] = {}
    for row in session.execute(stmt).mappings():
        key = tuple(row[f"g{i}"] for i in range(len(keys)))
        result[key] = _values(row)
    # The median: rank the handling times of each group and average the middle one or two.
    timed = cond["timed"]
    ranked = (
        select(
            *labelled,
            Case.handling_hours.label("h"),
            func.row_number()
            .over(partition_by=keys, order_by=(Case.handling_hours, Case.id))
            .label("rn"),
            func.count().over(partition_by=keys).label("n"),
        )
        .select_from(p)
        .join(Case, true())
        .where(*where, _candidates(p), timed)
        .subquery("ranked")
    )
    gcols = [ranked.c[f"g{i}"] for i in range(len(keys))]
    middle = (
        select(*gcols, func.avg(ranked.c.h).label("median"))
        .where(or_(ranked.c.rn == (ranked.c.n + 1) // 2, ranked.c.rn == (ranked.c.n + 2) // 2))
        .group_by(*gcols)
    )
    for row in session.execute(middle).all():
        key = tuple(row[: len(keys)])
        if key in result:
            result[key]["median_handling_hours"] = float(row[-1])
    return result


def _ratio(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def derive(counts: Mapping[str, Any] | None, weights: Mapping[str, float]) -> dict[str, Any]:
    """Return every indicator from the counts of one group (None for an undefined rate)."""
    c = dict(counts or {})
    n = {name: int(c.get(name, 0)) for name in COUNTS if name != "hours_sum"}
    timed = n["timed"]
    median = c.get("median_handling_hours")
    out: dict[str, Any] = {
        "filed": n["filed"],
        "due": n["due"],
        "due_closed": n["due_closed"],
        "closed_on_time": n["closed_on_time"],
        "closure_rate": _ratio(n["due_closed"], n["due"]),
        "on_time_closure_rate": _ratio(n["closed_on_time"], n["due"]),
        "handled": n["handled"],
        "handled_on_time": n["handled_on_time"],
        "on_time_handling_rate": _ratio(n["handled_on_time"], n["handled"]),
        "closed": n["closed"],
        "reworked": n["reworked"],
        "rework_rate": _ratio(n["reworked"], n["closed"]),
        "extended": n["extended"],
        "extension_rate": _ratio(n["extended"], n["due"]),
        "overdue_open": n["overdue_open"],
        "closed_late": n["closed_late"],
        "avg_handling_hours": round(float(c.get("hours_sum") or 0.0) / timed, 2) if timed else None,
        "median_handling_hours": round(median, 2) if median is not None and timed else None,
        "rated": n["rated"],
        "satisfaction": round(n["satisfaction_sum"] / n["rated"], 2) if n["rated"] else None,
        "satisfaction_rate": _ratio(n["satisfied"], n["rated"]),
    }
    # The score from the exact fractions, not the rounded ones shown.
    exact = {
        "closure_rate": (n["due_closed"], n["due"]),
        "on_time_closure_rate": (n["closed_on_time"], n["due"]),
        "on_time_handling_rate": (n["handled_on_time"], n["handled"]),
        "rework_rate": (n["reworked"], n["closed"]),
        "extension_rate": (n["extended"], n["due"]),
        "satisfaction_rate": (n["satisfied"], n["rated"]),
    }
    out["score"] = composite_score(
        {k: (a / b if b else None) for k, (a, b) in exact.items()}, weights
    )
    return out


def add_counts(parts: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Return the sum of the counts of several disjoint groups (the median is not additive)."""
    total: dict[str, Any] = {name: 0 for name in COUNTS}
    total["hours_sum"] = 0.0
    for part in parts:
        for name in COUNTS:
            total[name] += part.get(name, 0)
    total["median_handling_hours"] = None
    return total


# --- the API's questions ----------------------------------------------------------------------


def _group_for(by: str | None) -> list[ColumnElement[Any]]:
    if by == "category":
        return [Case.category_code]
    if by == "source":
        return [Case.source]
    if by == "unit":
        return [Case.responsible_region_code, Case.department_id]
    return []


def _labels(
    session: Session, by: str, keys: Iterable[tuple[Any, ...]], day: date
) -> dict[Any, str]:
    keys = list(keys)
    if by == "category":
        codes = sorted({k[0] for k in keys})
        rows = session.execute(select(Category.code, Category.name).where(Category.code.in_(codes)))
        return {code: name for code, name in rows}
    if by == "unit":
        regions = sorted({k[0] for k in keys if k[0]})
        depts = sorted({k[1] for k in keys if k[1] is not None})
        names: dict[Any, str] = {}
        if regions:
            rows = session.execute(
                select(Region.code, Region.name).where(Region.code.in_(regions), valid_on(day))
            )
            names.update({code: name for code, name in rows})
        if depts:
            rows = session.execute(
                select(Department.id, Department.name).where(Department.id.in_(depts))
            )
            names.update({("department", i): name for i, name in rows})
        return names
    return {}


def indicators(
    session: Session,
    caller: Caller,
    args: Mapping[str, Any],
    *,
    weights: Mapping[str, float],
    tz: ZoneInfo,
    now: datetime,
) -> dict[str, Any]:
    """Answer GET /indicators: the totals of the period and, with ``by``, the breakdown.

    ``region`` selects cases by where they are (its subtree); ``unit`` by the unit holding
    them (exactly that unit); ``department`` by the department they were dispatched to (one
    the caller dispatches to). Only the cases that count for the caller (``counted``).
    Raises NotFound naming the parameter for a region, unit or department outside the scope,
    Unprocessable for bad input or a period that has not begun.
    """
    scope = caller.scope
    region_code, unit = args.get("region"), args.get("unit")
    if not region_code and not unit:
        raise Unprocessable(
            "Say whose indicators: a region or a handling unit.",
            errors={"query": {"region": ["region or unit is required"]}},
        )
    where: list[ColumnElement[bool]] = []
    subject: dict[str, Any] = {}
    if region_code:
        region = check_region(session, scope, region_code, start=args["from"], end=args["to"])
        where.append(located_in(region_code))
        subject["region"] = {"code": region.code, "name": region.name, "level": region.level}
    if unit:
        held = check_region(session, scope, unit, "unit", start=args["from"], end=args["to"])
        where.append(Case.responsible_region_code == unit)
        subject["unit"] = {"code": held.code, "name": held.name, "level": held.level}
    if args.get("department") is not None:
        dept = session.scalar(
            select(Department).where(Department.id == args["department"], dispatched_to(scope))
        )
        if dept is None:
            raise NotFound("No such department.", errors={"query": {"department": [NO_DEPARTMENT]}})
        where.append(Case.department_id == dept.id)
        subject["department"] = {"id": dept.id, "name": dept.name}
    by = args.get("by")
    start, end = args["from"], args["to"]
    if local_midnight(start, tz) > now:  # every open case counted overdue, the score 0
        raise Unprocessable(
            "The period has not begun.",
            errors={"query": {"from": ["a day that has begun (today or earlier)"]}},
        )
    if (sensitive := counted(caller)) is not None:
        where.append(sensitive)
    total_period = periods_between(start, end, tz, now)
    group = _group_for(by)
    found: dict[tuple[Any, ...], dict[str, Any]] = {}
    if group:  # the breakdown and the totals from one reading of the cases
        found, totals = aggregate_with_total(session, where, total_period, group)
    else:
        totals = aggregate(session, where, total_period)
    body: dict[str, Any] = {
        **subject,
        "from": start.isoformat(),
        "to": end.isoformat(),
        "timezone": str(tz),
        "weights": dict(weights),
        "indicators": derive(totals.get((0,)), weights),
        "by": by,
        "items": [],
    }
    if by in ("day", "week", "month"):
        parts = periods_between(start, end, tz, now, by)
        found = aggregate(session, where, parts)
        body["by"] = by
        body["items"] = [
            {
                "key": p.key,
                "from": p.start.astimezone(tz).date().isoformat(),
                "to": p.end.astimezone(tz).date().isoformat(),
                "indicators": derive(found.get((i,)), weights),
            }
            for i, p in enumerate(parts)
        ]
    elif by:
        # The units' names on the period's last day (up to today): one merged since has its own.
        day = min(end - timedelta(days=1), clock.today())
        labels = _labels(session, by, [k[1:] for k in found], day)
        items = []
        for key in sorted(found, key=lambda k: tuple("" if v is None else str(v) for v in k)):
            item: dict[str, Any]
            if by == "unit":
                region, dept_id = key[1], key[2]
                item = {
                    "key": region if dept_id is None else f"{region}/department:{dept_id}",
                    "name": labels.get(("department", dept_id))
                    if dept_id is not None
                    else labels.get(region, ""),
                    "unit": region,
                    "department_id": dept_id,
                }
            else:
                item = {"key": key[1], "name": labels.get(key[1], key[1] if by == "source" else "")}
            item["indicators"] = derive(found[key], weights)
            items.append(item)
        body["by"] = by
        body["items"] = items
    return body


# --- the monthly bulletin ---------------------------------------------------------------------


def _rank(items: list[dict[str, Any]]) -> None:
    """Order by score (highest first, no score last, then by code) and number the ranks;
    equal scores share a rank (1, 1, 3)."""
    items.sort(
        key=lambda i: (
            i["indicators"]["score"] is None,
            -(i["indicators"]["score"] or 0),
            i["code"],
        )
    )
    previous: tuple[Any, int] | None = None
    for position, item in enumerate(items, start=1):
        score = item["indicators"]["score"]
        if score is None:
            item["rank"] = None
            continue
        if previous is not None and previous[0] == score:
            item["rank"] = previous[1]
        else:
            item["rank"] = position
            previous = (score, position)


def _change(now: Mapping[str, Any], before: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, _ in INDICATORS:
        a, b = now.get(key), before.get(key)
        if a is None or b is None:
            out[key] = None
        else:
            out[key] = round(a - b, 4) if isinstance(a, float) or isinstance(b, float) else a - b
    return out


def _child_key(prefixes: Sequence[str]) -> ColumnElement[Any]:
    """Return the SQL key of a case's child region: the prefix of its ``region_code`` that
    is one of the children's subtree ``prefixes`` (NULL for none of them).

    The children of a region are not all one level below it: the townships of a city
    without counties (东莞 4419) have 9-digit prefixes, a province-administered county-level
    city right under its province (仙桃 429004) a 6-digit one. Usually every child has a
    prefix of the same length, and the key is the case's prefix of that length.
    """
    by_length: dict[int, list[str]] = {}
    for prefix in prefixes:
        by_length.setdefault(len(prefix), []).append(prefix)
    if len(by_length) == 1:
        (length,) = by_length
        return func.substr(Case.region_code, 1, length)
    # The longest first: the most specific child holds the case.
    whens = [
        (
            func.substr(Case.region_code, 1, length).in_(sorted(codes)),
            func.substr(Case.region_code, 1, length),
        )
        for length, codes in sorted(by_length.items(), reverse=True)
    ]
    return case(*whens, else_=None)


def bulletin(
    session: Session,
    caller: Caller,
    region_code: str,
    month: str,
    *,
    weights: Mapping[str, float],
    tz: ZoneInfo,
    now: datetime,
) -> dict[str, Any]:
    """Return the monthly bulletin (月度通报) of a region: its child regions ranked by the
    composite score, with every indicator, last month's and the change, counting only the
    cases that count for the caller (``counted``).

    A community has no child regions: its bulletin has the total and no rows. Raises
    NotFound for an unknown or out-of-scope region, Unprocessable for a malformed month or
    one that has not begun (this month's is the month so far); both name the path's
    parameter.
    """
    first, after = month_period(month)
    region = check_region(
        session, caller.scope, region_code, "region", start=first, end=after, location="path"
    )
    if first > now.astimezone(tz).date():  # it ranked every child region 0 of 0
        raise Unprocessable(
            "The month has not begun.",
            errors={"path": {"month": ["a month that has begun (this month or earlier)"]}},
        )
    # The regions as they were in the month (this month's: up to today): a past month's
    # bulletin showed a township renamed since by its new name, left out one merged away
    # since, and ranked one created since.
    day = min(after - timedelta(days=1), clock.today())
    region = (
        session.scalar(select(Region).where(Region.code == region_code, valid_on(day))) or region
    )
    level = region_level(region_code)
    # A community has no child regions: its bulletin is its total alone. The children are
    # those valid on any day of the month up to ``day``, each by its latest period in it: a
    # township merged or ended mid-month had cases that month, and was left out of the
    # ranking when only those valid on the month's last day were ranked.
    children: list[tuple[str, str]] = []
    if level in _CHILD_PREFIX:
        rows = session.execute(
            select(Region.code, Region.name)
            .where(
                Region.parent_code == region_code,
                or_(Region.valid_from.is_(None), Region.valid_from <= day),
                or_(Region.valid_to.is_(None), Region.valid_to >= first),
            )
            .order_by(Region.code, func.coalesce(Region.valid_from, date.min).desc())
        )
        for code, name in rows:
            if not children or children[-1][0] != code:
                children.append((code, name))
    previous_first = _month_start(first - timedelta(days=1))
    bounds = [(month, first, after), (previous_first.strftime("%Y-%m"), previous_first, first)]
    periods = []
    for key, a, b in bounds:
        start, end = local_midnight(a, tz), local_midnight(b, tz)
        periods.append(Period(key, start, end, min(end, now)))
    where = [located_in(region_code)]
    if (sensitive := counted(caller)) is not None:
        where.append(sensitive)
    found: dict[tuple[Any, ...], dict[str, Any]] = {}
    if children:
        child_key = _child_key([subtree_prefix(code) for code, _ in children])
        found, whole = aggregate_with_total(session, where, periods, [child_key])
    else:
        whole = aggregate(session, where, periods)
    items = []
    for code, name in children:
        prefix = subtree_prefix(code)
        current = derive(found.get((0, prefix)), weights)
        before = derive(found.get((1, prefix)), weights)
        items.append(
            {
                "code": code,
                "name": name,
                "indicators": current,
                "previous": before,
                "change": _change(current, before),
            }
        )
    _rank(items)
    return {
        "region": {"code": region.code, "name": region.name, "level": region.level},
        "month": month,
        "previous_month": periods[1].key,
        "timezone": str(tz),
        "weights": dict(weights),
        "total": derive(whole.get((0,)), weights),
        "previous_total": derive(whole.get((1,)), weights),
        "items": items,
    }


# A cell starting with one of these is a formula to Excel (CSV injection); as in the
# exports (gridapi/services/exports.py), such a name is written with a leading apostrophe.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _text_cell(value: str) -> str:
    return "'" + value if value.startswith(_FORMULA_START) else value


def bulletin_rows(body: Mapping[str, Any]) -> tuple[list[str], list[list[Any]]]:
    """Return the Chinese headers and the rows of a bulletin for CSV and XLSX (a region's
    name that Excel would run as a formula prefixed with an apostrophe)."""
    headers = ["排名", "区划代码", "名称"]
    headers += [title for _, title in INDICATORS]
    headers += [f"{title}较上月" for _, title in INDICATORS]
    rows: list[list[Any]] = []
    for item in body["items"]:
        row: list[Any] = [item["rank"], item["code"], _text_cell(item["name"])]
        row += [item["indicators"][key] for key, _ in INDICATORS]
        row += [item["change"][key] for key, _ in INDICATORS]
        rows.append(row)
    total: list[Any] = [None, body["region"]["code"], _text_cell(f"{body['region']['name']}(合计)")]
    total += [body["total"][key] for key, _ in INDICATORS]
    change = _change(body["total"], body["previous_total"])
    total += [change[key] for key, _ in INDICATORS]
    rows.append(total)
    return headers, rows
