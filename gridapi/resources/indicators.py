"""Indicators (考核指标) over HTTP: any region or handling unit, any period, breakdowns, trends."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from flask.views import MethodView

from ..auth import current_principal
from ..extensions import db_session, state
from ..schemas.indicators import IndicatorArgsSchema, IndicatorsSchema
from ..services import indicators as svc
from ..services.cases import caller_of
from .blueprint import Blueprint

blp = Blueprint(
    "indicators",
    __name__,
    url_prefix="/api/v1/indicators",
    description="Indicators (考核指标) computed from the case timeline for a region (rolled up "
    "its tree) or a handling unit over any period: filed, due, closed, closure and on-time "
    "rates, rework, extensions, overdue, handling time, satisfaction and a weighted composite "
    "score. Definitions: docs/indicators.md.",
)

_EXAMPLE = {
    "region": {"code": "320508001000", "name": "平江街道", "level": "township"},
    "from": "2026-03-01",
    "to": "2026-04-01",
    "timezone": "Asia/Shanghai",
    "weights": {"closure_rate": 0.5, "on_time_closure_rate": 0.5},
    "indicators": {
        "filed": 4,
        "due": 4,
        "due_closed": 3,
        "closed_on_time": 2,
        "closure_rate": 0.75,
        "on_time_closure_rate": 0.5,
        "handled": 3,
        "handled_on_time": 2,
        "on_time_handling_rate": 0.6667,
        "closed": 3,
        "reworked": 1,
        "rework_rate": 0.3333,
        "extended": 1,
        "extension_rate": 0.25,
        "overdue_open": 1,
        "closed_late": 1,
        "avg_handling_hours": 9.5,
        "median_handling_hours": 7.0,
        "rated": 2,
        "satisfaction": 4.5,
        "satisfaction_rate": 1.0,
        "score": 62.5,
    },
}


def weights() -> dict[str, float]:
    """Return the composite score's weights from the settings (checked at start-up)."""
    return svc.parse_weights(state().settings.indicator_weights)


def timezone() -> ZoneInfo:
    return ZoneInfo(state().settings.timezone)


@blp.route("")
class Indicators(MethodView):
    @blp.requires("indicators:read")
    @blp.arguments(IndicatorArgsSchema, location="query")
    @blp.response(200, IndicatorsSchema, example=_EXAMPLE)
    @blp.alt_response(
        404,
        response="NOT_FOUND",
        description="The `region`, `unit` or `department` does not exist or is outside your "
        "scope (the two look the same).",
    )
    def get(self, args):
        """Indicators of a region or a handling unit for a period

        The period is `[from, to)` in local days (GRIDAPI_TIMEZONE). `region` counts the
        cases located in the region's subtree (a county's figures are the sum of its
        townships' counts), `unit` the cases held by exactly that unit, `department` those
        dispatched to a department; they combine. `by=category|source|unit` adds a breakdown,
        `by=day|week|month` a trend (at most 366 parts). Rates are fractions with their
        numerators and denominators alongside; a rate without a denominator is null. Every
        definition is in docs/indicators.md. A region or unit outside your scope → 404
        naming it; a period that begins after today → 422 naming `from`. A sensitive case
        counts only for the offices over the unit holding it.
        """
        principal = current_principal()
        assert principal is not None
        query = dict(args)
        query["from"] = query.pop("from_")
        session = db_session()
        return svc.indicators(
            session,
            caller_of(session, principal),
            query,
            weights=weights(),
            tz=timezone(),
            now=datetime.now(UTC),
        )
