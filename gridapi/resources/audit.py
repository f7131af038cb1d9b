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
        """List audit entries in your scope, newest first

        Entries about special-group records are listed only to callers holding
        `special_groups:read`: to everyone else they do not exist. A resident's history
        (`object_type=person&object_id=…`) includes the lookups that found them among
        several (`person_ids`; such an entry has no `object_id`).
        """
        limit = args.pop("limit")
        principal = current_principal()
        hidden = () if principal.can("special_groups:read") else ("special_group",)
        items = svc.list_entries(
            db_session(), principal.scope, limit=limit + 1, hidden_types=hidden, **args
        )
        return {"items": items[:limit], "next": items[limit - 1].id if len(items) > limit else None}
