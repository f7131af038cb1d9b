"""The audit log, for admins and for centres within their scope."""

from __future__ import annotations

from flask.views import MethodView

from ..auth import current_principal
from ..extensions import db_session
from ..schemas.identity import AuditPageSchema, AuditQueryArgsSchema
from ..services import audit as svc
from .blueprint import Blueprint

blp = Blueprint(
    "audit",
    __name__,
    url_prefix="/api/v1/audit",
    description="Append-only record of every change and every unmasked read.",
)


@blp.route("")
class Audit(MethodView):
    @blp.requires("audit:read")
    @blp.arguments(AuditQueryArgsSchema, location="query")
    @blp.response(200, AuditPageSchema)
    def get(self, args):
        """List audit entries in your scope, newest first"""
        limit = args.pop("limit")
        items = svc.list_entries(db_session(), current_principal().scope, limit=limit + 1, **args)
        return {"items": items[:limit], "next": items[limit - 1].id if len(items) > limit else None}
