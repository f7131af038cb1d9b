"""Domain errors with an HTTP status, and the one error body every response uses."""

from __future__ import annotations

import logging
import re
from http import HTTPStatus
from typing import Any

from flask import Flask, g, has_request_context, jsonify, request
from limits.errors import StorageError
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from werkzeug.exceptions import HTTPException, default_exceptions

from .codes import InvalidCode
from .db import SpatialExtensionMissing, spatial_extension_version
from .security.fields import CiphertextError

log = logging.getLogger(__name__)

#: SQLite's error for a function of SpatiaLite (geoalchemy2 writes ST_AsBinary as AsBinary,
#: ST_GeomFromEWKB as GeomFromEWKB… on SQLite) that no extension loaded defines.
_NO_SPATIAL_FUNCTION = re.compile(
    r"no such function: (ST_|Geom|AsBinary|AsEWKB|AsText|AsGeoJSON|Mbr|RTree|Spatial|"
    r"CreateSpatialIndex|RecoverGeometryColumn|DisableSpatialIndex|Gpkg)",
    re.IGNORECASE,
)

#: PostgreSQL's errors for a function, type or column that is not there (undefined_function,
#: undefined_object, undefined_column) and for a library it cannot load (undefined_file):
#: what PostGIS dropped (``DROP EXTENSION postgis CASCADE`` takes the geometry columns with
#: it) or half-upgraded (its functions pointing at a library no longer installed) gives.
_UNDEFINED_SQLSTATES = frozenset({"42883", "42704", "42703", "58P01"})
_POSTGIS_NAME = re.compile(r"\b(st_\w+|geometry|geography|box[23]d|postgis[\w.-]*)\b", re.I)


def postgis_problem(exc: DBAPIError, engine: Any) -> str | None:
    """Return what is wrong with PostGIS when ``exc`` (raised on ``engine``) comes of its
    loss, else None: an undefined function, type or column answered while the extension is
    not installed, or one of PostGIS's own while it is (its functions fail). Any other
    undefined function is a bug, not an outage."""
    sqlstate = getattr(exc.orig, "sqlstate", None)
    if sqlstate not in _UNDEFINED_SQLSTATES or engine.dialect.name != "postgresql":
        return None
    error = str(exc.orig).splitlines()[0]
    try:
        version = spatial_extension_version(engine)
    except SpatialExtensionMissing as missing:
        return (
            f"{error} ({missing} If it was dropped with CASCADE, its geometry columns went "
            "with it: restore the database from a backup.)"
        )
    except DBAPIError:  # postgis_lib_version() fails too: the library is gone
        version = "PostGIS"
    if not _POSTGIS_NAME.search(error):
        return None
    return (
        f"{error} ({version} is installed but its functions fail: install the PostGIS "
        "package matching it (apt-get install postgresql-15-postgis-3, for your PostgreSQL "
        "version), then run ALTER EXTENSION postgis UPDATE.)"
    )


class DomainError(Exception):
    """An error a client can act on; ``status`` is the HTTP status it answers with."""

    status: int = 400

    def __init__(
        self,
        message: str,
        *,
        errors: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.errors = errors
        self.headers = headers or {}


class NotFound(DomainError):
    status = 404


class Conflict(DomainError):
    status = 409


class Unprocessable(DomainError):
    """Input that parsed but makes no sense; ``errors`` maps field paths to messages."""

    status = 422


class ServiceUnavailable(DomainError):
    status = 503


#: Seconds a client is asked to wait when the rate-limit storage cannot be reached.
LIMITS_RETRY_AFTER = 5

#: Seconds a client is asked to wait when the spatial extension cannot be used: someone has
#: to put it back (a package removed or upgraded under a running server), which takes longer
#: than a database restart.
SPATIAL_RETRY_AFTER = 30

#: The message of a 413; nginx answers a body over its client_max_body_size with the same
#: error body (docs/deploy/nginx.conf).
BODY_TOO_LARGE = "The request body is larger than the configured limit (GRIDAPI_MAX_BODY_MB)."


def too_large_message() -> str:
    """Return the message of a 413 for the current request: ``BODY_TOO_LARGE``, or, for a
    body its Content-Length puts within the limit, what else werkzeug answers 413 for.

    Werkzeug raises the same bare 413 for a multipart form of more parts than
    ``MAX_FORM_PARTS`` or a text field longer than ``MAX_FORM_MEMORY_SIZE``: a photo sent
    with 1,001 empty fields was told its body was over GRIDAPI_MAX_BODY_MB. Without a
    Content-Length (chunked) the cause cannot be told: the body limit is named, as before.
    """
    if not has_request_context():
        return BODY_TOO_LARGE
    length, limit = request.content_length, request.max_content_length
    if length is None or (limit is not None and length > limit):
        return BODY_TOO_LARGE
    parts, field = request.max_form_parts, request.max_form_memory_size
    return (
        f"The form has too many parts (at most {parts}) or a text field larger than {field} bytes."
    )


def error_body(
    status: int, message: str | None = None, errors: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Return the error body: ``{"code", "status", "message", "errors"}`` (errors may be {})."""
    return {
        "code": status,
        "status": HTTPStatus(status).phrase,
        "message": message or _default_message(status),
        "errors": errors or {},
    }


def _default_message(status: int) -> str:
    """The sentence werkzeug answers for ``status`` (Python's own is empty for some, 422
    among them), else the reason phrase: a message is never empty."""
    exception = default_exceptions.get(status)
    return (
        (exception.description if exception else None)
        or HTTPStatus(status).description
        or HTTPStatus(status).phrase
    )


def register_error_handlers(app: Flask) -> None:
    """Answer every failure with the one error body; never a traceback or SQL."""

    @app.errorhandler(DomainError)
    def _domain(exc: DomainError):  # type: ignore[no-untyped-def]
        return jsonify(error_body(exc.status, exc.message, exc.errors)), exc.status, exc.headers

    @app.errorhandler(IntegrityError)
    def _integrity(exc: IntegrityError):  # type: ignore[no-untyped-def]
        log.info("integrity error: %s", exc.orig)
        return jsonify(error_body(409, "The change conflicts with existing data.")), 409

    @app.errorhandler(InvalidCode)
    def _invalid_code(exc: InvalidCode):  # type: ignore[no-untyped-def]
        # An ill-formed region or grid code reached a service through a lenient argument.
        return jsonify(error_body(422, f"Invalid code: {exc}")), 422

    @app.errorhandler(DataError)
    def _data_error(exc: DataError):  # type: ignore[no-untyped-def]
        # The database refused a value (out of range for its column, not a valid date…).
        log.info("data error: %s", exc.orig)
        return jsonify(error_body(422, "A value is out of range for what can be stored.")), 422

    @app.errorhandler(OverflowError)
    def _overflow(exc: OverflowError):  # type: ignore[no-untyped-def]
        log.info("overflow: %s", exc)
        return jsonify(error_body(422, "A number is too large.")), 422

    def _spatial_unavailable(reason: object):  # type: ignore[no-untyped-def]
        # Operators act on this, not on a traceback: it says what is missing and what to do.
        log.error("spatial extension unavailable (request %s): %s", g.get("request_id"), reason)
        body = error_body(503, "The spatial extension of the database is unavailable; retry.")
        return jsonify(body), 503, {"Retry-After": str(SPATIAL_RETRY_AFTER)}

    @app.errorhandler(SpatialExtensionMissing)
    def _spatial_missing(exc: SpatialExtensionMissing):  # type: ignore[no-untyped-def]
        # Raised when a new connection cannot load SpatiaLite (checked at start-up, so it was
        # there then): the server is up, but nothing spatial can be answered until it is back.
        return _spatial_unavailable(exc)

    def _postgis_lost(exc: DBAPIError) -> str | None:
        from .extensions import state

        try:
            return postgis_problem(exc, state().engine)
        except Exception:  # the check must not hide the error it was asked about
            log.warning("the state of PostGIS could not be checked", exc_info=True)
            return None

    @app.errorhandler(OperationalError)
    def _operational(exc: OperationalError):  # type: ignore[no-untyped-def]
        problem = _postgis_lost(exc)
        if problem:
            return _spatial_unavailable(problem)
        if _NO_SPATIAL_FUNCTION.match(str(exc.orig)):
            return _spatial_unavailable(
                f"{exc.orig} (SpatiaLite is not loaded on this connection; check "
                "GRIDAPI_SPATIALITE_PATH and libsqlite3-mod-spatialite)"
            )
        log.warning("database unavailable: %s", exc.orig)
        body = error_body(503, "The database is unavailable; retry shortly.")
        return jsonify(body), 503, {"Retry-After": "2"}

    @app.errorhandler(StorageError)
    def _limits_storage(exc: StorageError):  # type: ignore[no-untyped-def]
        # Redis (GRIDAPI_REDIS_URL) keeps the counts of sign-in failures, lookups and API
        # keys: without it they cannot be counted, and are refused rather than let through.
        log.warning("rate-limit storage unavailable: %s", exc.storage_error)
        body = error_body(503, "The rate-limit storage is unavailable; retry shortly.")
        return jsonify(body), 503, {"Retry-After": str(LIMITS_RETRY_AFTER)}

    @app.errorhandler(CiphertextError)
    def _ciphertext(exc: CiphertextError):  # type: ignore[no-untyped-def]
        # Where, never what: the message names the table, column and row only.
        log.error("stored value rejected (request %s): %s", g.get("request_id"), exc)
        message = (
            "A stored personal value failed its integrity check and was not returned "
            f"(request id {g.get('request_id', '-')}); the incident is logged."
        )
        return jsonify(error_body(500, message)), 500

    @app.errorhandler(PoolTimeout)
    def _pool_exhausted(exc: PoolTimeout):  # type: ignore[no-untyped-def]
        log.warning("no database connection free: %s", exc)
        body = error_body(503, "The server is busy; retry shortly.")
        return jsonify(body), 503, {"Retry-After": "2"}

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):  # type: ignore[no-untyped-def]
        if isinstance(exc, HTTPException):
            return _http(exc)
        if isinstance(exc, DBAPIError) and exc.connection_invalidated:
            return (
                jsonify(error_body(503, "The database connection was lost; retry.")),
                503,
                {"Retry-After": "2"},
            )
        if isinstance(exc, DBAPIError):
            problem = _postgis_lost(exc)
            if problem:
                return _spatial_unavailable(problem)
        log.exception("unhandled error (request %s)", g.get("request_id"))
        message = f"An unexpected error occurred (request id {g.get('request_id', '-')})."
        return jsonify(error_body(500, message)), 500

    def _http(exc: HTTPException):  # type: ignore[no-untyped-def]
        status = exc.code or 500
        original = getattr(exc, "original_exception", None)
        if isinstance(original, StorageError):  # counted after the answer (a failed sign-in)
            return _limits_storage(original)
        data = getattr(exc, "data", None) or {}
        errors = data.get("messages")
        message = data.get("message") or (exc.description if status != 500 else None)
        if status == 413:
            message = too_large_message()
        if status == 400 and errors and "json" in errors and isinstance(errors["json"], list):
            message = "The request body is not valid JSON."
        response = jsonify(error_body(status, message, errors))
        response.status_code = status
        headers = data.get("headers") or {}
        if hasattr(exc, "get_headers"):
            for key, value in exc.get_headers():
                if key.lower() != "content-type":
                    headers.setdefault(key, value)
        return response, status, headers

    app.register_error_handler(HTTPException, _http)
