"""The monthly bulletin (月度通报) over HTTP: child regions ranked, as JSON, CSV or XLSX."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime
from typing import Any

from flask import Response
from flask.views import MethodView

from ..auth import current_principal
from ..extensions import db_session
from ..schemas.indicators import BulletinArgsSchema, BulletinSchema
from ..services import indicators as svc
from ..services.cases import caller_of
from .blueprint import Blueprint
from .indicators import timezone, weights

blp = Blueprint(
    "bulletins",
    __name__,
    url_prefix="/api/v1/bulletins",
    description="The monthly bulletin (月度通报): a region's child regions ranked by the "
    "composite score, with every indicator and the change from the previous month.",
)

_MONTH = {
    "name": "month",
    "in": "path",
    "required": True,
    "description": "The month, YYYY-MM.",
    "schema": {"type": "string", "pattern": "^[0-9]{4}-(0[1-9]|1[0-2])$", "example": "2026-03"},
}
_FILES = {
    "200": {
        "description": "The bulletin as JSON, or as a file with Chinese headers",
        "content": {
            # The default format; listed here too, since these content types replace the
            # response's own (a JSON answer was otherwise undocumented).
            "application/json": {"schema": {"$ref": "#/components/schemas/Bulletin"}},
            "text/csv": {"schema": {"type": "string"}},
            "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet": {
                "schema": {"type": "string", "format": "binary"}
            },
        },
    }
}
XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"


def _csv(body: dict[str, Any]) -> bytes:
    headers, rows = svc.bulletin_rows(body)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(headers)
    writer.writerows(["" if v is None else v for v in row] for row in rows)
    # The BOM makes Excel read the Chinese headers as UTF-8.
    return ("\ufeff" + out.getvalue()).encode("utf-8")


def _xlsx(body: dict[str, Any]) -> bytes:
    from openpyxl import Workbook

    headers, rows = svc.bulletin_rows(body)
    book = Workbook()
    sheet = book.active
    sheet.title = f"{body['month']}月度通报"
    sheet.append(headers)
    for row in rows:
        sheet.append(row)
    sheet.freeze_panes = "D2"
    out = io.BytesIO()
    book.save(out)
    return out.getvalue()


def _filename(body: dict[str, Any], ext: str) -> str:
    return f"bulletin-{body['region']['code']}-{body['month']}.{ext}"


@blp.route("/<digits:region>/<month>")
class BulletinByRegionMonth(MethodView):
    @blp.requires("indicators:read")
    @blp.arguments(BulletinArgsSchema, location="query")
    @blp.doc(parameters=[_MONTH], responses=_FILES)
    @blp.response(200, BulletinSchema)
    def get(self, args, region, month):
        """The monthly bulletin of a region (月度通报)

        The region's child regions (townships of a county, counties of a city…) ranked by
        the composite score of the month, highest first, equal scores sharing a rank and
        regions without a score last; each with every indicator, last month's values and the
        change. The child regions and their names are those valid on the month's last day
        (this month: today), so a past month's bulletin keeps the townships it had. `total` is the whole region. `format=csv` (UTF-8 with BOM) or `format=xlsx`
        return a file with Chinese headers, one row per child region and a total row. A
        region outside your scope → 404; a bad month, or one that has not begun, → 422 (this
        month's bulletin is the month so far). A community has no child
        regions: its bulletin is its total alone.
        """
        principal = current_principal()
        assert principal is not None
        session = db_session()
        body = svc.bulletin(
            session,
            caller_of(session, principal),
            region,
            month,
            weights=weights(),
            tz=timezone(),
            now=datetime.now(UTC),
        )
        if args["format"] == "csv":
            return Response(
                _csv(body),
                mimetype="text/csv",
                headers={"Content-Disposition": f'attachment; filename="{_filename(body, "csv")}"'},
            )
        if args["format"] == "xlsx":
            return Response(
                _xlsx(body),
                mimetype=XLSX,
                headers={
                    "Content-Disposition": f'attachment; filename="{_filename(body, "xlsx")}"'
                },
            )
        return body
