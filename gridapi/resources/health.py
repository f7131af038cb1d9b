"""Health: liveness (no I/O) and readiness with the engine, spatial extension and the
rate-limit storage."""

from __future__ import annotations

from flask.views import MethodView
from marshmallow import fields

from ..db import spatial_extension_version
from ..errors import LIMITS_RETRY_AFTER, ServiceUnavailable
from ..extensions import state
from ..limits import storage_reachable
from ..schemas.common import StrictSchema
from .blueprint import Blueprint

blp = Blueprint(
    "health",
    __name__,
    url_prefix="/api/v1/health",
    description="Is the service up, and on which database?",
    strict_query=False,  # monitors may add query parameters of their own
)


class HealthSchema(StrictSchema):
    status = fields.String(required=True, metadata={"example": "ok"})
    engine = fields.String(required=True, metadata={"example": "postgis"})
    spatial = fields.String(required=True, metadata={"example": "PostGIS 3.3.2"})
    database = fields.String(required=True, metadata={"example": "PostgreSQL 15.19"})
    grids_in_service = fields.Integer(required=True)
    index_generation = fields.Integer(required=True)
    rate_limits = fields.String(
        required=True,
        metadata={
            "example": "redis",
            "description": "Where rate limits are counted: `redis` (GRIDAPI_REDIS_URL, "
            "shared by every process) or `memory` (each process on its own).",
        },
    )


class LiveSchema(StrictSchema):
    status = fields.String(required=True, metadata={"example": "ok"})


@blp.route("")
class Health(MethodView):
    @blp.public
    @blp.response(200, HealthSchema)
    @blp.alt_response(503, response="SERVICE_UNAVAILABLE")
    def get(self):
        """Readiness: database engine, spatial extension version, grids in service

        Touches the database, and Redis when GRIDAPI_REDIS_URL is set; answers 503 with
        Retry-After when either cannot be reached (sign-in, exact lookups and API keys
        answer 503 meanwhile). Use `/api/v1/health/live` for a check without I/O.
        """
        st = state()
        if st.settings.redis_url and not storage_reachable():
            raise ServiceUnavailable(
                "The rate-limit storage (GRIDAPI_REDIS_URL) cannot be reached.",
                headers={"Retry-After": str(LIMITS_RETRY_AFTER)},
            )
        spatial = spatial_extension_version(st.engine)
        with st.engine.connect() as conn:
            if st.engine.dialect.name == "sqlite":
                database = "SQLite " + conn.exec_driver_sql("SELECT sqlite_version()").scalar()
            else:
                database = "PostgreSQL " + conn.exec_driver_sql("SHOW server_version").scalar()
        snap = st.routing.snapshot()
        return {
            "status": "ok",
            "engine": st.settings.engine_name,
            "spatial": spatial,
            "database": database,
            "grids_in_service": len(snap),
            "index_generation": snap.generation,
            "rate_limits": "redis" if st.settings.redis_url else "memory",
        }


@blp.route("/live")
class Live(MethodView):
    @blp.public
    @blp.response(200, LiveSchema)
    def get(self):
        """Liveness: the process answers (no database access)

        Answers `{"status": "ok"}` as long as the server process can serve a request; it touches
        neither the database nor the routing index, so it stays cheap enough for a load balancer or
        container probe to call every few seconds. Public: needs no credentials. Use
        `/api/v1/health` for readiness (database engine, spatial extension, grids in service).
        """
        return {"status": "ok"}
