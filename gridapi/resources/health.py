"""Health: liveness (no I/O) and readiness with the engine, spatial extension and the
rate-limit storage."""

from __future__ import annotations

from flask.views import MethodView
from marshmallow import fields

from ..db import spatial_extension_version
from ..errors import LIMITS_RETRY_AFTER, ServiceUnavailable
from ..extensions import db_session, state
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
            "shared by every process) or `database` (sign-in and exact lookups shared by "
            "every process through the database, API keys' request limits by each process "
            "on its own).",
        },
    )


class LiveSchema(StrictSchema):
    status = fields.String(required=True, metadata={"example": "ok"})


class BacklogSchema(StrictSchema):
    job = fields.String(required=True, metadata={"example": "overdue"})
    description = fields.String(required=True)
    due = fields.Integer(
        required=True, metadata={"description": "Items due that the job has not handled yet."}
    )
    oldest_due_at = fields.DateTime(
        required=True,
        allow_none=True,
        metadata={"description": "Since when the oldest of them is due (null: none)."},
    )
    waited_seconds = fields.Float(
        required=True,
        allow_none=True,
        metadata={"description": "How long the oldest has waited (null: nothing is due)."},
    )
    expected_within_seconds = fields.Float(
        required=True,
        metadata={"description": "How long an item waits at most while the worker keeps up."},
    )
    behind = fields.Boolean(
        required=True, metadata={"description": "The oldest has waited longer than that."}
    )


class JobsSchema(StrictSchema):
    status = fields.String(
        required=True,
        metadata={
            "example": "ok",
            "description": "`ok`, or `behind` when any job is: the worker is down or cannot "
            "keep up.",
        },
    )
    checked_at = fields.DateTime(required=True)
    jobs = fields.List(fields.Nested(BacklogSchema), required=True)


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
            "rate_limits": "redis" if st.settings.redis_url else "database",
        }


@blp.route("/jobs")
class Jobs(MethodView):
    @blp.requires("system:read")
    @blp.response(200, JobsSchema)
    def get(self):
        """The background worker's backlog: what is due and not done, job by job

        For each job of `gridapi worker` (overdue cases, overdue tasks, expired idempotency
        keys, track thinning, webhook deliveries, export jobs): how many items are due that it
        has not handled, since when the oldest is due, and whether it has waited longer than
        a worker that keeps up lets it (`behind`). `status` is `behind` when any job is: the
        worker is not running, or cannot keep up. Counted over every county; reads only.
        Needs `system:read` (admins).
        """
        from ..models.base import utcnow
        from ..services.backlog import Expectations, backlogs

        st = state()
        now = utcnow()
        found = backlogs(db_session(), now, Expectations.from_settings(st.settings))
        jobs = [
            {
                "job": b.job,
                "description": b.description,
                "due": b.due,
                "oldest_due_at": b.oldest_due_at,
                "waited_seconds": b.waited(now),
                "expected_within_seconds": b.expected_within,
                "behind": b.behind(now),
            }
            for b in found
        ]
        status = "behind" if any(j["behind"] for j in jobs) else "ok"
        return {"status": status, "checked_at": now, "jobs": jobs}


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
