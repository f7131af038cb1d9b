"""Running the API under gunicorn with settings suited to the engine."""

from __future__ import annotations

import gc
import ipaddress
import os
import subprocess
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any
from urllib.parse import unquote_plus

from gunicorn import util as gunicorn_util
from gunicorn.app.base import BaseApplication
from gunicorn.glogging import Logger
from sqlalchemy.exc import DBAPIError

from .config import KEY_FILES, Settings
from .db import make_engine, spatial_extension_version
from .errors import error_body
from .jsonio import dumps_bytes
from .limits import storage_warning


def default_workers(settings: Settings) -> int:
    """Return the worker count: 2 × cores + 1 on PostGIS (at most 9); cores on SQLite.

    SQLite serialises writers, so more processes only add lock waits.
    """
    cores = os.cpu_count() or 1
    if settings.engine_name == "sqlite":
        return max(1, min(cores, 4))
    return min(2 * cores + 1, 9)


# Query parameters whose values are personal data, free text or secrets: they must not be
# left in access logs (the request line is logged with its query string). Free text
# (``q``; the deprecated ``purpose`` and erasure ``reason``) can name anyone; ``number`` is
# a household's 户号; ``lon``/``lat`` (``/locate``) are where the caller stands, which the
# tracks keep only 30 days; Open311 takes its API key as ``api_key``; ``reference`` (of a
# purpose or an erasure) is typed by people, and a refused one (422: an ID or phone number)
# is logged all the same. Every query parameter of the spec is either here or named harmless
# in tests/test_serve.py.
PERSONAL_QUERY_PARAMETERS = frozenset(
    {
        "id_number",
        "phone",
        "name",
        "address",
        "q",
        "purpose",
        "reason",
        "number",
        "lon",
        "lat",
        "api_key",
        "reference",
    }
)


def redact_query(query: str) -> str:
    """Return ``query`` with the values of personal parameters replaced by ``***``."""
    if not query:
        return query
    parts = []
    for part in query.split("&"):
        key, sep, _ = part.partition("=")
        if sep and unquote_plus(key) in PERSONAL_QUERY_PARAMETERS:
            part = f"{key}=***"
        parts.append(part)
    return "&".join(parts)


#: gunicorn's default access log line, then the request id gridapi answered with
#: (X-Request-ID; behind nginx, nginx's $request_id), so that one id follows a request through
#: nginx's log, this log and the audit trail.
ACCESS_LOG_FORMAT = (
    '%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s" %({x-request-id}o)s'
)


class RedactingLogger(Logger):
    """gunicorn's logger, with personal values cut out of logged URLs."""

    def atoms(self, resp, req, environ, request_time):  # type: ignore[no-untyped-def]
        atoms = super().atoms(resp, req, environ, request_time)
        query = environ.get("QUERY_STRING") or ""
        if query:
            safe = redact_query(query)
            atoms["q"] = safe
            path, _, _ = (environ.get("RAW_URI") or "").partition("?")
            atoms["r"] = f"{environ['REQUEST_METHOD']} {path}?{safe} {environ['SERVER_PROTOCOL']}"
        referer = environ.get("HTTP_REFERER") or ""
        if "?" in referer:  # a page of a search carries its values too
            page, _, query = referer.partition("?")
            atoms["f"] = f"{page}?{redact_query(query)}"
        return atoms


class _Gunicorn(BaseApplication):
    def __init__(self, settings: Settings, options: dict[str, Any]) -> None:
        self.settings = settings
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)
        if "control_socket_disable" in self.cfg.settings:  # gunicorn 25.1 and later
            # No gunicornc socket under ~/.gunicorn: a service user without a home logged an
            # error at every start, and two servers of one user took each other's socket.
            self.cfg.set("control_socket_disable", True)

    def load(self):  # type: ignore[no-untyped-def]
        from .app import create_app

        # run() checked the spatial extension before starting; a worker respawned while the
        # database restarts must boot without it (see _post_worker_init).
        return create_app(self.settings, check_database=False)


def freeze_long_lived() -> None:
    """Collect garbage once, then move every object alive now out of the garbage
    collector's reach (``gc.freeze``): the routing index (20,000 grids: ≈ 290,000 tracked
    objects) lives as long as the worker, and each full collection walked all of it,
    ≈ 150 ms during some request every few hundred (a list's p99 went from ≈ 20 to
    120-160 ms). Frozen objects are still freed when their last reference goes."""
    gc.collect()
    gc.freeze()


def write_json_error(sock: Any, status_int: int, reason: str, mesg: str) -> None:
    """Write the answer to a request gunicorn refuses before the app sees it (a control
    character in a header: 400; a request line too long: 414; headers too large: 431; an
    unsupported transfer coding: 501) in the one error format, where gunicorn writes HTML.
    Takes the place of ``gunicorn.util.write_error`` in the workers (``_post_worker_init``)."""
    body = dumps_bytes(error_body(status_int, mesg or None))
    head = (
        f"HTTP/1.1 {status_int} {reason}\r\n"
        "Connection: close\r\n"
        "Content-Type: application/json\r\n"
        "Cache-Control: no-store\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    gunicorn_util.write_nonblock(sock, head.encode("latin-1") + body)


def _post_worker_init(worker: Any) -> None:
    # Requests gunicorn refuses itself are answered in the one error format too.
    gunicorn_util.write_error = write_json_error
    # Build the routing index before the first request, not during it, and keep it (and
    # whatever the app holds for good) out of the full collections' walk, after a rebuild
    # too.
    app = worker.wsgi
    routing = app.extensions["gridapi"].routing
    routing.after_rebuild = freeze_long_lived
    try:
        with app.app_context():
            routing.snapshot()
        # Frozen even when it was built before (no rebuild to call after_rebuild); after a
        # build the collection finds almost nothing left to walk.
        freeze_long_lived()
    except DBAPIError as exc:
        # A worker respawned while the database restarts: raising here is gunicorn's "Worker
        # failed to boot", which halts the master and the API with it. The first request
        # builds the index instead (and answers 503 until the database is back).
        reason = str(exc.orig or exc).strip().splitlines() or [type(exc).__name__]
        worker.log.warning(
            "routing index not built at worker start, the database cannot be reached: %s",
            reason[0],
        )


def jobs_in_serve(settings: Settings) -> bool:
    """Return whether `gridapi serve` runs the background jobs (GRIDAPI_WORKER_IN_SERVE).

    ``auto``: with SQLite, the embedded default, yes; with PostgreSQL run `gridapi worker`
    as its own service. Raises ValueError for another value.
    """
    mode = settings.worker_in_serve.strip().lower()
    if mode not in ("auto", "on", "off"):
        raise ValueError(f"GRIDAPI_WORKER_IN_SERVE={settings.worker_in_serve!r}: auto, on or off")
    return mode == "on" or (mode == "auto" and settings.engine_name == "sqlite")


class JobsProcess:
    """The one `gridapi worker` beside a server: started and stopped by the gunicorn master.

    A separate process, not a thread in the master (which forks the web workers) nor one
    per web worker (which would run the jobs N times). It gets the server's settings and
    stops by itself when the master is gone.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, arbiter: Any) -> None:
        env = dict(os.environ)
        for f in fields(self.settings):
            env[f"GRIDAPI_{f.name.upper()}"] = str(getattr(self.settings, f.name))
        command = [sys.executable, "-m", "gridapi.cli", "worker", "--parent-pid", str(os.getpid())]
        self.process = subprocess.Popen(command, env=env)
        arbiter.log.info("Background jobs: gridapi worker (pid: %s)", self.process.pid)

    def stop(self, arbiter: Any) -> None:
        process = self.process
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()


def exposure_warning(host: str, settings: Settings) -> str | None:
    """Return what is wrong with serving on ``host`` with no proxy in front (None when the
    address is this machine's own, or proxies are declared)."""
    if settings.proxy_hops or host == "localhost":
        return None
    try:
        if ipaddress.ip_address(host.strip("[]")).is_loopback:
            return None
    except ValueError:  # a host name
        pass
    return (
        f"Serving on {host} with GRIDAPI_PROXY_HOPS=0: clients reach gunicorn's sync workers "
        "directly, and a few phones uploading slowly hold every worker. Put nginx (or another "
        "buffering proxy) in front and set GRIDAPI_PROXY_HOPS (docs/deploy.md)."
    )


def limits_warning(workers: int, settings: Settings) -> str | None:
    """Return what several worker processes do to the rate limits of API keys, which they
    count in process memory (None with GRIDAPI_REDIS_URL, or one process)."""
    if workers <= 1 or settings.redis_url:
        return None
    return (
        f"{workers} worker processes and no GRIDAPI_REDIS_URL: sign-in failures and exact ID "
        "and phone lookups are counted in the database, shared, but each process counts the "
        f"request limits of API keys on its own, so a key may make up to {workers} times its "
        "limit. Set GRIDAPI_REDIS_URL to share those too (docs/deploy.md)."
    )


def keys_warning(settings: Settings) -> str | None:
    """Return which keys come from files in GRIDAPI_DATA_DIR on PostgreSQL (None when all
    three are set, and on SQLite, whose zero-set-up default keeps them there)."""
    if settings.engine_name == "sqlite":
        return None
    unset = [name for name in KEY_FILES if not getattr(settings, name)]
    if not unset:
        return None
    data_dir = Path(settings.data_dir).resolve()
    return (
        f"{', '.join(f'GRIDAPI_{name.upper()}' for name in unset)} not set: the keys are kept "
        f"in files in GRIDAPI_DATA_DIR ({', '.join(str(data_dir / KEY_FILES[n]) for n in unset)})"
        ", beside the photos and exports that are backed up and shared, where the field key "
        "must never be. Set them in the service's environment file (docs/deploy.md)."
    )


#: How far the database's clock may be from this server's before ``serve`` warns.
CLOCK_SKEW_WARN_SECONDS = 5


def clock_warning(engine: Any, now: Any = None) -> str | None:
    """Return how far PostgreSQL's clock is from this server's, when that is more than a few
    seconds (None on SQLite, which runs on this server's clock). The change log, webhook
    events and case timelines are stamped by the database's triggers, deadlines and tokens
    by the servers: clocks apart make them disagree."""
    if engine.dialect.name != "postgresql":
        return None
    from datetime import UTC, datetime

    from sqlalchemy import text

    now = now or (lambda: datetime.now(UTC))  # this server's clock
    before = now()
    with engine.connect() as conn:
        theirs = conn.execute(text("SELECT clock_timestamp()")).scalar_one()
    after = now()
    skew = (theirs - (before + (after - before) / 2)).total_seconds()
    if abs(skew) <= CLOCK_SKEW_WARN_SECONDS:
        return None
    return (
        f"the database's clock is {abs(skew):.0f} s {'ahead of' if skew > 0 else 'behind'} "
        "this server's: keep both synchronised (NTP); the change log, webhook events and "
        "timelines take the database's time, deadlines and access tokens the server's."
    )


def calendar_warning(engine: Any) -> str | None:
    """Return what is wrong with the working calendar where deadlines counted from today may
    reach (a year that is not the State Council's arrangement), or None."""
    from sqlalchemy.orm import Session

    from . import clock
    from .services.calendar import calendar_problem

    with Session(engine) as session:
        return calendar_problem(session, clock.today())


class StartupRefused(RuntimeError):
    """The database is not one this server may serve as it is; the message says why."""


def preflight(engine: Any, settings: Settings) -> str | None:
    """Return why the server must not start on this database (None: it may): a schema of
    another revision (requests failed as 503 "retry shortly" on a missing column), or keys
    that are not the database's (a moved GRIDAPI_DATA_DIR made new ones silently)."""
    from sqlalchemy.orm import Session

    from .app import field_cipher
    from .migrations import schema_problem
    from .services.keys import keys_problem
    from .services.register import Keys

    problem = schema_problem(engine)
    if problem:
        return problem
    keys = Keys(field_cipher(settings), settings.key_bytes("blind_index_key"))
    with Session(engine) as session:
        return keys_problem(session, keys)


def run(settings: Settings, *, host: str, port: int, workers: int = 0) -> None:
    """Serve until interrupted. Raises SpatialExtensionMissing before starting, ValueError
    for an invalid GRIDAPI_WORKER_IN_SERVE, StartupRefused for a key too short to be a
    secret, a key file other users may read, or as ``preflight`` says."""
    with_jobs = jobs_in_serve(settings)
    weak = settings.short_key_problem() or settings.key_file_problem()
    if weak:  # a token signed with "x" by anyone was an admin's; a key 0644, anyone's
        raise StartupRefused(weak)
    engine = make_engine(settings.database_url, spatialite_path=settings.spatialite_path)
    try:
        spatial_extension_version(engine)
        problem = preflight(engine, settings)
        clock = None if problem else clock_warning(engine)
        calendar = None if problem else calendar_warning(engine)
    finally:
        engine.dispose()
    if problem:
        raise StartupRefused(problem)
    workers = workers or default_workers(settings)
    warnings = (
        exposure_warning(host, settings),
        limits_warning(workers, settings),
        keys_warning(settings),
        storage_warning(settings.redis_url),
        clock,
        calendar,
    )
    for warning in warnings:
        if warning:
            print(f"WARNING: {warning}", file=sys.stderr, flush=True)
    options = {
        "bind": f"{host}:{port}",
        "workers": workers,
        "worker_class": "sync",
        "timeout": 120,
        "graceful_timeout": 20,
        "keepalive": 5,
        # gunicorn's most (default 4094): an Open311 read of up to 1000 comma-separated ids
        # is a request line of up to 8,000 bytes (docs/open311.md), as nginx's default
        # buffers take (8k). Longer answers 414 in the one error format.
        "limit_request_line": 8190,
        "accesslog": "-",
        "access_log_format": ACCESS_LOG_FORMAT,
        "errorlog": "-",
        "logger_class": RedactingLogger,
        "loglevel": settings.log_level.lower(),
        "post_worker_init": _post_worker_init,
    }
    if with_jobs:
        jobs = JobsProcess(settings)
        options.update(when_ready=jobs.start, on_exit=jobs.stop)
    _Gunicorn(settings, options).run()
