"""The application factory."""

from __future__ import annotations

import itertools
import logging
import os
import re
import uuid
from typing import Any

from flask import Flask, Response, current_app, g, request
from werkzeug.middleware.proxy_fix import ProxyFix

from . import __version__, clock, phone
from .auth import LocalRateLimiter, PrincipalCache
from .config import Settings
from .db import (
    make_engine,
    make_sessionmaker,
    spatial_extension_version,
    sqlite_write_intent,
    view_writes_now,
)
from .errors import register_error_handlers
from .extensions import AppState, close_session
from .jsonio import ApiRequest, OrjsonProvider
from .limits import (
    DATABASE_STORAGE_URI,
    limiter,
    rate_limit_headers,
    retry_after_only_when_waiting,
    storage_options,
)
from .outbound import policy_from_settings
from .phone import NOT_MODIFIED, FieldsPlugin
from .security.fields import FieldCipher, KeyConfigError, parse_keys
from .security.passwords import configure as configure_password_hashing
from .security.tokens import TokenSigner
from .services.routing import RoutingIndex
from .spec import Api

API_DESCRIPTION = """
gridapi maps the administrative tree (province → city → county → township → village/community)
and the grids (网格) that tile it, and answers the question asked thousands of times a day:
*which grid, and which offices, are responsible for this point?*

Coordinates are GeoJSON order, `[lon, lat]`, in WGS-84 unless a `crs` says otherwise.
Every error has the same body: `{"code", "status", "message", "errors"}`, where `errors`
maps the request location and field path to messages (`{"json": {"points": {"3": [...]}}}`).
"""

_WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


class ApiFlask(Flask):
    """Flask whose automatic answer to OPTIONS is the API's: 204 with ``Allow``, no body.

    Flask's own was a 200 with an empty ``text/html`` body on every path, the one answer of
    the API that was neither JSON nor documented as something else.
    """

    def make_default_options_response(self) -> Response:
        response = super().make_default_options_response()
        response.status_code = 204
        del response.headers["Content-Type"]
        return response


def _view_writes() -> bool:
    """Whether the view about to answer is marked as one that writes (``db.writes``)."""
    view = current_app.view_functions.get(request.endpoint) if request.endpoint else None
    cls = getattr(view, "view_class", None)
    if cls is not None:
        method = "get" if request.method == "HEAD" else request.method.lower()
        view = getattr(cls, method, None)
    return view is not None and view_writes_now(view)


# Request ids: a random per-process prefix and a counter. uuid4 reads the kernel's random
# source on every request, which costs tens of microseconds on some virtual machines.
_REQUEST_ID_RE = re.compile(r"[A-Za-z0-9._\-]{1,64}")


def _new_request_ids() -> None:
    """Start this process's request ids afresh. Run again in every forked child: gunicorn's
    workers are forked from a master that imported this module, and all of them numbered
    requests with the master's prefix, so audit rows of unrelated requests shared an id."""
    global _REQUEST_ID_PREFIX, _request_counter
    _REQUEST_ID_PREFIX = uuid.uuid4().hex[:12]
    _request_counter = itertools.count(1)


_new_request_ids()
os.register_at_fork(after_in_child=_new_request_ids)


def _next_request_id() -> str:
    return f"{_REQUEST_ID_PREFIX}{next(_request_counter):012x}"


def _document_security(api: Api) -> None:
    from .resources.blueprint import (
        ERROR_HEADERS,
        ERROR_RESPONSES,
        RETRY_AFTER_HEADER,
        WAIT_RESPONSES,
    )

    api.spec.components.security_scheme(
        "bearerAuth",
        {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "JWT",
            "description": "Access token from POST /api/v1/auth/token (15 minutes).",
        },
    )
    api.spec.components.security_scheme(
        "apiKey",
        {
            "type": "apiKey",
            "in": "header",
            "name": "X-API-Key",
            "description": "A third-party client's key (also accepted as 'Authorization: "
            "Bearer gk_…'). Not read when the request carries an Authorization header: that "
            "header alone is then the credential (an empty or malformed one is 401).",
        },
    )
    api.spec.components.responses_lazy.pop("NOT_MODIFIED", None)
    api.spec.components.response("NOT_MODIFIED", NOT_MODIFIED)
    for name, description in ERROR_RESPONSES.items():
        response = {
            "description": description,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
        }
        if name in WAIT_RESPONSES:
            response["headers"] = {"Retry-After": RETRY_AFTER_HEADER}
        if name in ERROR_HEADERS:
            response["headers"] = ERROR_HEADERS[name]
        # flask-smorest registers a lazy default per status name ("Too Many Requests", no
        # headers) that replaced this one once an operation named it (response="…").
        api.spec.components.responses_lazy.pop(name, None)
        api.spec.components.response(name, response)


def field_cipher(settings: Settings) -> FieldCipher:
    """Return the field cipher of the configured keys; a bad GRIDAPI_FIELD_KEYS stops start-up
    with the reason (never the key)."""
    try:
        return FieldCipher(parse_keys(settings.field_key_text()))
    except KeyConfigError as exc:
        raise SystemExit(f"GRIDAPI_FIELD_KEYS: {exc}") from None


def create_app(
    config: Settings | dict[str, Any] | None = None, *, check_database: bool = True
) -> Flask:
    """Return a configured application.

    ``config`` is a Settings, or a dict of overrides on top of the GRIDAPI_* environment.
    With ``check_database`` the spatial extension is checked at once, so a missing SpatiaLite
    or PostGIS stops start-up with a message saying what to install.
    """
    settings = config if isinstance(config, Settings) else Settings.from_env(**(config or {}))
    clock.use(settings.timezone)
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    app = ApiFlask(__name__)
    if settings.proxy_hops:
        # Behind proxies the peer is the nearest proxy: the client's address (audit rows,
        # rate limits by address) and the scheme it used (links in answers) are what the
        # proxies forward. Only X-Forwarded-For and -Proto are read, only as many entries as
        # there are proxies (a client's own entries before them are ignored), and only when
        # this is set: without a proxy anyone could send the headers.
        hops = settings.proxy_hops
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops)  # type: ignore[method-assign]
    app.json = OrjsonProvider(app)
    app.request_class = ApiRequest
    app.config.update(
        MAX_CONTENT_LENGTH=int(settings.max_body_mb * 1024 * 1024),
        API_TITLE="gridapi",
        API_VERSION=__version__,
        OPENAPI_VERSION="3.0.3",
        OPENAPI_URL_PREFIX="/",
        OPENAPI_JSON_PATH="openapi.json",
        API_SPEC_OPTIONS={
            "info": {"description": API_DESCRIPTION, "license": {"name": "Apache-2.0"}},
            "servers": [{"url": "/", "description": "This server"}],
        },
    )
    configure_password_hashing(settings.argon2_time_cost, settings.argon2_memory_kib)
    policy_from_settings(settings)  # a bad GRIDAPI_WEBHOOK_ALLOW_PRIVATE stops start-up
    engine = make_engine(
        settings.database_url,
        spatialite_path=settings.spatialite_path,
        pool_size=settings.db_pool_size,
        statement_timeout_ms=settings.db_statement_timeout_ms,
    )
    if check_database:
        spatial_extension_version(engine)
    app.extensions["gridapi"] = AppState(
        settings=settings,
        engine=engine,
        sessions=make_sessionmaker(engine),
        routing=RoutingIndex(
            engine, settings.routing_snap_meters, settings.routing_refresh_seconds
        ),
        tokens=TokenSigner(
            key=settings.key_bytes("secret_key"),
            issuer=settings.jwt_issuer,
            audience=settings.jwt_audience,
            lifetime_seconds=settings.access_token_minutes * 60,
        ),
        principals=PrincipalCache(settings.auth_cache_seconds),
        phone_key=settings.key_bytes("blind_index_key"),
        client_limits=LocalRateLimiter(),
        cipher=field_cipher(settings),
    )
    # One Api per application: flask-smorest keeps the spec on the Api object.
    api = Api(app, spec_kwargs={"extra_plugins": [FieldsPlugin()]})
    app.extensions["gridapi_api"] = api
    api.defer(lambda: _document_security(api))
    from .resources.blueprint import install_converters
    from .spec import install as install_spec

    api.defer(lambda: install_spec(api))
    install_converters(app, api)
    app.config.update(
        RATELIMIT_STORAGE_URI=settings.redis_url or DATABASE_STORAGE_URI,
        RATELIMIT_STORAGE_OPTIONS=storage_options(settings.redis_url),
        RATELIMIT_HEADERS_ENABLED=True,
        RATELIMIT_ENABLED=True,
    )
    # Flask runs after-request functions in reverse order: these see the limiter's headers.
    app.after_request(retry_after_only_when_waiting)
    app.after_request(rate_limit_headers)
    limiter.init_app(app)
    register_error_handlers(app)
    phone.init_app(app)
    from .resources import register_blueprints

    register_blueprints(app, api)

    @app.before_request
    def _request_context() -> None:
        sent = request.headers.get("X-Request-ID", "")
        # A caller's id is kept only when it is short and plain: it goes into logs and rows.
        g.request_id = sent if _REQUEST_ID_RE.fullmatch(sent) else _next_request_id()
        g.write_intent_token = sqlite_write_intent.set(
            request.method in _WRITE_METHODS or _view_writes()
        )

    @app.after_request
    def _request_id_header(response):  # type: ignore[no-untyped-def]
        response.headers["X-Request-ID"] = g.get("request_id", "")
        return response

    @app.teardown_request
    def _reset_write_intent(_exc: BaseException | None) -> None:
        token = g.pop("write_intent_token", None)
        if token is not None:
            sqlite_write_intent.reset(token)

    app.teardown_appcontext(close_session)
    api.built()
    return app
