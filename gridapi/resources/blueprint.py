"""The Blueprint every resource uses: strict query parsing and declared permissions."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flask_smorest
from webargs.flaskparser import FlaskParser

from ..auth import requires_permission

SECURITY = [{"bearerAuth": []}, {"apiKey": []}]
ERROR_RESPONSES = {
    "UNAUTHORIZED": "Not authenticated: no, an invalid or an expired credential",
    "FORBIDDEN": "Authenticated, but the permission is missing",
    "NOT_FOUND": "Does not exist, or is outside the caller's scope (the two look the same)",
    "CONFLICT": "Conflicts with the current state",
    "TOO_MANY_REQUESTS": "Rate limit reached; see Retry-After",
}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/responses/{name}"}


class StrictParser(FlaskParser):
    # webargs ignores unknown query parameters by default; None defers to the schema (RAISE).
    DEFAULT_UNKNOWN_BY_LOCATION = {
        **FlaskParser.DEFAULT_UNKNOWN_BY_LOCATION,
        "query": None,
        "querystring": None,
    }

    def load_querystring(self, req: Any, schema: Any) -> Any:
        # ``fields`` (sparse fieldsets) applies to every GET and is handled after the view
        # (gridapi.phone), so operation schemas neither declare nor refuse it.
        args = req.args.copy()
        args.pop("fields", None)
        return self._makeproxy(args, schema)


class Blueprint(flask_smorest.Blueprint):
    ARGUMENTS_PARSER = StrictParser()

    def requires(self, permission: str) -> Callable[[Any], Any]:
        """Decorate an operation: the caller must hold ``permission`` (published as
        ``x-permission`` with the security requirement and the 401/403 answers)."""

        def decorator(func: Any) -> Any:
            wrapped = requires_permission(permission)(func)
            return self.doc(
                **{
                    "x-permission": permission,
                    "security": SECURITY,
                    "responses": {"401": _ref("UNAUTHORIZED"), "403": _ref("FORBIDDEN")},
                }
            )(wrapped)

        return decorator

    def public(self, func: Any) -> Any:
        """Decorate an operation that needs no credentials."""
        return self.doc(**{"x-permission": None, "security": []})(func)
