"""Configuration from GRIDAPI_* environment variables (documented in the README's table)."""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field, fields
from pathlib import Path


def _default_database_url() -> str:
    return f"sqlite:///{Path('var') / 'gridapi.sqlite3'}"


def private_directory(path: Path | str) -> Path:
    """Create the directory ``path`` and each of its missing parents as 0700 (the service's
    user alone); return it. ``mkdir(parents=True, mode=…)`` gives the parents the umask's
    mode instead: under umask 022 the first photo made GRIDAPI_DATA_DIR itself 0755."""
    path = Path(path)
    missing = []
    parent = path
    while not parent.is_dir():
        missing.append(parent)
        if parent.parent == parent:
            break
        parent = parent.parent
    for directory in reversed(missing):
        try:
            directory.mkdir(mode=0o700)
        except FileExistsError:  # another process made it meanwhile
            if not directory.is_dir():
                raise
        sync_directory(directory.parent)  # its name, as a file's (``sync_directory``)
    return path


def sync_directory(path: Path | str) -> None:
    """Flush the directory ``path`` itself to disk: the names created, renamed or removed in
    it survive a power cut (a file's own fsync does not cover its name)."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_once(path: Path, content: str) -> None:
    """Write a key file (mode 0600) unless it exists: the first writer wins, so workers
    starting together read the same key. Flushed to disk, content and name, before the
    key is used: data encrypted or signed under a key lost to a power cut is lost too."""
    private_directory(path.parent)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(content)
        fh.flush()
        os.fsync(fh.fileno())
    try:
        os.link(tmp, path)
    except FileExistsError:
        pass
    finally:
        os.unlink(tmp)
        sync_directory(path.parent)


class MissingKey(LookupError):
    """A key is neither set nor kept in the data directory (where it would be generated)."""

    def __init__(self, variable: str, path: Path) -> None:
        super().__init__(
            f"{variable} is not set and {path} does not exist: a key made now would be one "
            "no server has. Set the variable as the servers have it, or point "
            "GRIDAPI_DATA_DIR at the directory holding their key files."
        )


class ExposedKeyFile(ValueError):
    """A key file other users than the service's may read or change (group or other bits)."""

    def __init__(self, variable: str, path: Path, mode: int) -> None:
        super().__init__(
            f"{variable} is not set and its key file {path} is open to other users than the "
            f"service's (mode {mode:04o}): anyone of them could read the key. Run "
            f"`chmod 600 {path}` (and replace the key if someone may have read it)."
        )


#: The key file of each key setting left empty, under GRIDAPI_DATA_DIR.
KEY_FILES = {
    "secret_key": "secret.key",
    "blind_index_key": "blind_index.key",
    "field_keys": "field.key",
}


def read_key_file(path: Path, variable: str) -> str:
    """Return the key kept in ``path`` (stripped). Raises ExposedKeyFile when the file's mode
    lets the group or others in: a key copied in with 0644 was used silently."""
    with path.open() as fh:
        mode = os.fstat(fh.fileno()).st_mode & 0o777
        if mode & 0o077:
            raise ExposedKeyFile(variable, path, mode)
        return fh.read().strip()


def _parse_bool(raw: str) -> bool:
    """Return a boolean setting: 1/true/yes/on or 0/false/no/off (any case)."""
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(raw)


# "5 per 0 minute", "3/0minute": a period of none, which limits reads as one.
_ZERO_PERIOD = re.compile(r"(?:per|/)\s*0+\s*[A-Za-z]")


def rate_limit_problem(text: str) -> str | None:
    """Return why ``text`` is not one rate limit a person means ("600 per minute",
    "10/second"), or None. limits reads "0 per minute" (every request refused) and "5 per 0
    minute" (read as per minute): neither is a limit anyone means. Of several
    ("10/second;1/day") only the first was ever counted."""
    from limits import parse, parse_many

    try:
        item = parse(text)
        several = len(parse_many(text)) > 1
    except ValueError:
        return "not a rate limit"
    if several:
        return "one limit only"
    if item.amount < 1 or _ZERO_PERIOD.search(text):
        return "at least 1 per a period of at least 1"
    return None


#: The settings that are rate limits; flask-limiter ignored one it could not read, so a typo
#: in GRIDAPI_LOGIN_RATE_ACCOUNT let anyone guess passwords without limit, and one in
#: GRIDAPI_PERSON_LOOKUP_RATE answered every exact ID or phone lookup 500.
_RATE_LIMITS = (
    "login_rate_account",
    "login_rate_account_address",
    "login_rate_address",
    "client_rate_limit",
    "person_lookup_rate",
)


#: The log levels GRIDAPI_LOG_LEVEL may name (Python's, which gunicorn takes too).
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

#: The storages GRIDAPI_REDIS_URL may name: Redis, over TCP, TLS or a socket, or through
#: Sentinel or a cluster.
_REDIS_SCHEMES = ("redis", "rediss", "redis+unix", "redis+sentinel", "redis+cluster")


def text_problem(name: str, value: str) -> str | None:
    """Return why ``value`` cannot be the setting ``name`` (one whose text has a form:
    the database and Redis URLs, the log level, the time zone), or None. Such a value made
    every command stop with a traceback (a zone unknown, a level misspelt, a URL that does
    not parse), or every web worker fail as it booted (a Redis URL of another scheme).
    A URL is never repeated: it may hold a password."""
    if name == "database_url":
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        try:
            url = make_url(value)
        except (ArgumentError, ValueError):
            return "not a database URL: sqlite:///PATH or postgresql+psycopg://USER@HOST/DB"
        if url.get_backend_name() not in ("sqlite", "postgresql"):
            return (
                f"a {url.get_backend_name()} database: gridapi runs on sqlite:///PATH "
                "(SpatiaLite) or postgresql+psycopg://USER@HOST/DB (PostGIS)"
            )
        if url.get_backend_name() == "postgresql" and url.drivername != "postgresql":
            try:
                url.get_dialect().import_dbapi()
            except (ImportError, ArgumentError):  # ArgumentError: no such dialect
                return (
                    f"its driver ({url.get_driver_name()}) is not installed: "
                    "postgresql+psycopg://USER@HOST/DB"
                )
    elif name == "redis_url" and value:
        from urllib.parse import urlsplit

        if urlsplit(value).scheme.lower() not in _REDIS_SCHEMES:
            return "not a Redis URL: redis://HOST:6379/0 (or rediss://, redis+unix://…)"
    elif name == "log_level":
        if value.strip().upper() not in LOG_LEVELS:
            return f"not a log level: {', '.join(LOG_LEVELS)}"
    elif name == "timezone":
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            return "not a time zone of the tz database, e.g. Asia/Shanghai"
    return None


#: The shortest GRIDAPI_SECRET_KEY and GRIDAPI_BLIND_INDEX_KEY taken, in bytes: as long as the
#: HMAC-SHA256 they key. The generated key files hold 64 characters.
MIN_KEY_BYTES = 32

#: What a key too short to be a secret gives away.
_SHORT_KEY_RISKS = {
    "secret_key": "anyone can find it from one access token and sign tokens as any account",
    "blind_index_key": "anyone with a copy of the database can find it and test ID and phone "
    "numbers against the stored hashes",
}


#: The largest supervision threshold, in working hours (ten working years): a level one
#: wants off is set this high.
MAX_SUPERVISION_HOURS = 20_000.0


#: Longest retention, lifetime or wait a setting may give, in days (a hundred years): past
#: about 2.7 million years a date computed from it overflowed, and the job using it failed.
_CENTURY_DAYS = 36_500

#: The range of each numeric setting: (lowest, highest, whether the lowest itself is allowed).
#: Out of range, a value did harm without a word: GRIDAPI_TRACK_RETENTION_DAYS=-1 made the
#: worker delete every patrol track (those still walked too), GRIDAPI_MAX_BODY_MB=-1 refused
#: every request with a body as 413, GRIDAPI_PORT=70000 crashed gunicorn with a traceback.
_RANGES: dict[str, tuple[float, float, bool]] = {
    "port": (1, 65_535, True),
    "workers": (0, 1_000, True),  # 0: automatic
    "max_body_mb": (0, 1_048_576, False),
    "proxy_hops": (0, 100, True),
    "attachment_max_mb": (0, 1_048_576, False),
    "attachment_max_megapixels": (0, 10_000, False),
    "routing_snap_meters": (0, 100_000, True),  # 0: no snapping
    "routing_refresh_seconds": (0, 86_400, True),
    "grid_tolerance_m2": (0, 1e12, True),
    "db_pool_size": (1, 1_000, True),
    "db_statement_timeout_ms": (0, 86_400_000, True),  # 0: PostgreSQL's "no timeout"
    "access_token_minutes": (1, _CENTURY_DAYS * 1_440, True),
    "refresh_token_days": (1, _CENTURY_DAYS, True),
    "auth_cache_seconds": (0, 86_400, True),
    "argon2_time_cost": (1, 1_000, True),
    "argon2_memory_kib": (32, 16_777_216, True),  # argon2's least: 8 × its 4 lanes
    "idempotency_days": (1, _CENTURY_DAYS, True),
    "duplicate_window_hours": (0, _CENTURY_DAYS * 24, True),
    "calendar_cache_seconds": (0, 86_400, True),
    "worker_interval_seconds": (0, 86_400, False),
    "import_max_rows": (1, 100_000_000, True),
    "track_raw_days": (0, _CENTURY_DAYS, True),
    "track_retention_days": (1, _CENTURY_DAYS, True),
    "presence_minutes": (0, 1_440, False),
    "sync_page_size": (1, 2_000, True),  # as the `limit` a client may ask for
    "sync_retention_days": (1, _CENTURY_DAYS, True),
    "sync_history_days": (0, _CENTURY_DAYS, True),
    "webhook_connect_timeout_seconds": (0, 3_600, False),
    "webhook_timeout_seconds": (0, 3_600, False),
    "webhook_max_response_kb": (1, 1_048_576, True),
    "webhook_max_attempts": (1, 1_000, True),
    "webhook_backoff_base_seconds": (0, 86_400 * 30, True),
    "webhook_backoff_max_seconds": (0, 86_400 * 30, True),
    "webhook_poll_seconds": (0, 3_600, False),
    "webhook_concurrency": (1, 256, True),
    "webhook_retention_days": (1, _CENTURY_DAYS, True),
    "webhook_secret_grace_hours": (0, 24 * 30, True),  # 0: a rotation is a hard cut-over
    "open311_round_m": (0, 100_000, False),  # public maps need locations snapped
    "open311_page_size": (1, 1_000, True),  # as the `page_size` a client may ask for
    "export_retention_hours": (0, _CENTURY_DAYS * 24, False),
}


def range_problem(name: str, value: float) -> str | None:
    """Return why ``value`` is out of the range of the numeric setting ``name`` (None when it
    is in it, or ``name`` has no range)."""
    if name not in _RANGES:
        return None
    low, high, low_allowed = _RANGES[name]
    if math.isfinite(value) and (low <= value if low_allowed else low < value) and value <= high:
        return None
    least = f"at least {low:g}" if low_allowed else f"more than {low:g}"
    shown = f"{value:g}" if isinstance(value, float) else value
    return f"GRIDAPI_{name.upper()}={shown}: {least} and at most {high:,.0f}"


@dataclass
class Settings:
    """Every setting the application reads; each maps to GRIDAPI_<NAME>."""

    database_url: str = field(default_factory=_default_database_url)
    data_dir: str = "var"
    host: str = "127.0.0.1"
    port: int = 5000
    workers: int = 0  # 0 = chosen from the engine and the number of cores
    log_level: str = "INFO"
    max_body_mb: float = 32.0
    # Reverse proxies (nginx, a load balancer) in front that each add an X-Forwarded-For
    # entry: the client's address and scheme are read from the last this many entries.
    proxy_hops: int = 0
    attachment_max_mb: float = 10.0
    attachment_max_megapixels: float = 40.0
    routing_snap_meters: float = 50.0
    routing_refresh_seconds: float = 2.0
    grid_tolerance_m2: float = 1.0
    spatialite_path: str = "mod_spatialite"
    db_pool_size: int = 5
    db_statement_timeout_ms: int = 30000
    secret_key: str = ""  # empty: a key is generated once and kept in <data_dir>/secret.key
    blind_index_key: str = ""  # empty: generated once into <data_dir>/blind_index.key
    field_keys: str = ""  # "1:<base64>,2:<base64>"; empty: generated into <data_dir>/field.key
    jwt_issuer: str = "gridapi"
    jwt_audience: str = "gridapi"
    access_token_minutes: int = 15
    refresh_token_days: int = 30
    redis_url: str = ""
    # Failed sign-ins are counted per account and client address, so that someone elsewhere
    # who knows a name cannot lock its owner out; an account's count over every address is
    # ten times higher, to bound guessing spread over many addresses (docs: README).
    login_rate_account_address: str = "5 per 15 minutes"
    login_rate_account: str = "50 per 15 minutes"
    login_rate_address: str = "100 per 15 minutes"
    client_rate_limit: str = "600 per minute"
    auth_cache_seconds: float = 5.0
    demo_password: str = ""
    working_hours: str = "08:30-12:00,13:30-17:30"
    timezone: str = "Asia/Shanghai"
    argon2_time_cost: int = 3
    argon2_memory_kib: int = 65536
    idempotency_days: int = 7
    duplicate_window_hours: float = 72.0
    calendar_cache_seconds: float = 10.0
    worker_interval_seconds: float = 60.0
    worker_in_serve: str = "auto"  # auto: on with SQLite, off with PostgreSQL; on; off
    supervision_yellow_hours: float = 0.0
    supervision_red_hours: float = 24.0
    person_lookup_rate: str = "60 per hour"
    import_max_rows: int = 100000
    track_raw_days: int = 30
    track_retention_days: int = 180
    presence_minutes: float = 15.0
    sync_page_size: int = 500
    sync_retention_days: int = 30
    sync_history_days: int = 90
    # name:weight,… of the composite score (docs/indicators.md); checked at start-up.
    indicator_weights: str = (
        "closure_rate:0.25,on_time_closure_rate:0.25,on_time_handling_rate:0.2,"
        "rework_rate:0.1,satisfaction_rate:0.2"
    )
    webhook_allow_private: str = ""  # CIDRs webhooks may reach despite being private
    webhook_connect_timeout_seconds: float = 5.0
    webhook_timeout_seconds: float = 10.0
    webhook_max_response_kb: int = 64
    webhook_max_attempts: int = 12
    webhook_backoff_base_seconds: float = 10.0
    webhook_backoff_max_seconds: float = 3600.0
    webhook_poll_seconds: float = 1.0
    webhook_concurrency: int = 4
    webhook_retention_days: int = 30
    # How long a rotated-out webhook secret still signs deliveries (beside the new one).
    webhook_secret_grace_hours: float = 24.0
    open311_public_read: bool = False  # answer GET requests without an api_key (anonymised)
    open311_round_m: float = 50.0  # public answers snap locations to a grid this coarse
    open311_page_size: int = 100  # default page_size of GET requests (at most 1000)
    export_retention_hours: float = 72.0  # export-job files are deleted this long after

    def __post_init__(self) -> None:
        """Check the settings that can be checked without the database; ValueError names it.
        A relative ``data_dir`` is made absolute (against the working directory)."""
        from .outbound import parse_allowlist
        from .services.indicators import parse_weights
        from .workcalendar import parse_periods

        # Absolute once, here, for every use: Flask's send_file reads a relative path against
        # the package, not the working directory, so with the README's GRIDAPI_DATA_DIR=var
        # every export-job file the worker wrote under ./var answered 500.
        self.data_dir = os.path.abspath(self.data_dir)

        for name in _RANGES:
            problem = range_problem(name, getattr(self, name))
            if problem:
                raise ValueError(problem)
        for name in ("database_url", "redis_url", "log_level", "timezone"):
            problem = text_problem(name, getattr(self, name))
            if problem:
                shown = "" if name.endswith("_url") else f"={getattr(self, name)!r}"
                raise ValueError(f"GRIDAPI_{name.upper()}{shown}: {problem}")
        for name in _RATE_LIMITS:
            problem = rate_limit_problem(getattr(self, name))
            if problem:
                raise ValueError(
                    f"GRIDAPI_{name.upper()}={getattr(self, name)!r}: {problem}, "
                    "e.g. '30 per 15 minutes' or '10/second'"
                )
        from .services.identity import client_rate_limit_beyond_bounds

        # The default of every new app's limit: beyond an app's bounds, each POST /clients
        # without rate_limit answered 422 naming a field the caller did not send.
        if problem := client_rate_limit_beyond_bounds(self.client_rate_limit):
            raise ValueError(f"GRIDAPI_CLIENT_RATE_LIMIT={self.client_rate_limit!r}: {problem}")
        try:
            parse_weights(self.indicator_weights)
        except ValueError as exc:
            raise ValueError(f"GRIDAPI_INDICATOR_WEIGHTS: {exc}") from None
        try:
            parse_periods(self.working_hours)
        except ValueError as exc:  # every report answered 500; the worker died
            raise ValueError(f"GRIDAPI_WORKING_HOURS: {exc}") from None
        for name in ("supervision_yellow_hours", "supervision_red_hours"):
            value = getattr(self, name)
            if not 0 <= value <= MAX_SUPERVISION_HOURS:  # inf, nan, 1e9: the job overflowed
                raise ValueError(
                    f"GRIDAPI_{name.upper()}={value}: 0 to {MAX_SUPERVISION_HOURS:g} working hours"
                )
        for name in ("routing_snap_meters", "routing_refresh_seconds", "grid_tolerance_m2"):
            value = getattr(self, name)
            # nan or inf: every point near no grid (the snap search), or every grid import
            # (the tolerance), answered 500; the index never (inf) or always (nan) refreshed.
            if not math.isfinite(value):
                raise ValueError(f"GRIDAPI_{name.upper()}={value}: a finite number")
        # Checked here, before gunicorn forks: a bad entry made every web worker fail as it
        # booted, and gunicorn boot them again and again, listening all the while.
        try:
            parse_allowlist(self.webhook_allow_private)
        except ValueError as exc:
            raise ValueError(f"GRIDAPI_WEBHOOK_ALLOW_PRIVATE: {exc}") from None

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None, **overrides: object) -> Settings:
        """Return settings read from GRIDAPI_* variables; ``overrides`` win over the environment.

        Raises ValueError naming the variable when a value has the wrong type.
        """
        env = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for f in fields(cls):
            key = f"GRIDAPI_{f.name.upper()}"
            if key not in env or env[key] == "":
                continue
            raw = env[key]
            kind = type(f.default) if f.default is not f.default_factory else str  # type: ignore[comparison-overlap]
            try:
                if f.type in ("bool", bool) or kind is bool:
                    values[f.name] = _parse_bool(raw)
                elif f.type in ("int", int) or kind is int:
                    values[f.name] = int(raw)
                elif f.type in ("float", float) or kind is float:
                    values[f.name] = float(raw)
                else:
                    values[f.name] = raw
            except ValueError as exc:
                raise ValueError(f"{key}={raw!r} is not a valid {f.type}") from exc
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)  # type: ignore[arg-type]

    def key_bytes(self, name: str, *, create: bool = True) -> bytes:
        """Return the key ``secret_key`` or ``blind_index_key`` as bytes.

        An empty setting means a development key, generated once and kept (mode 0600) under
        ``data_dir``; production deployments set both variables. Without ``create``, a key
        neither set nor in ``data_dir`` raises MissingKey instead of being generated.
        """
        value = getattr(self, name)
        if value:
            return value.encode()
        import secrets

        path = Path(self.data_dir) / f"{name.removesuffix('_key')}.key"
        if not path.exists():
            if not create:
                raise MissingKey(f"GRIDAPI_{name.upper()}", path)
            _write_once(path, secrets.token_urlsafe(48))
        return read_key_file(path, f"GRIDAPI_{name.upper()}").encode()

    def key_file_problem(self) -> str | None:
        """Return why a key file in ``data_dir`` that a key setting left empty may not be
        used (group or others may read it), or None."""
        for name, file_name in KEY_FILES.items():
            path = Path(self.data_dir) / file_name
            if getattr(self, name) or not path.is_file():
                continue
            try:
                read_key_file(path, f"GRIDAPI_{name.upper()}")
            except ExposedKeyFile as exc:
                return str(exc)
        return None

    def short_key_problem(self, *names: str) -> str | None:
        """Return why a key among ``names`` (default ``secret_key`` and ``blind_index_key``)
        is too short to be a secret, or None. An empty setting means the key file in
        ``data_dir``: one generated there is long enough, one an operator wrote may not be."""
        for name in names or tuple(_SHORT_KEY_RISKS):
            value = getattr(self, name)
            what = f"GRIDAPI_{name.upper()} is"
            if not value:
                path = Path(self.data_dir) / f"{name.removesuffix('_key')}.key"
                if not path.is_file():
                    continue  # generated when first needed, long enough
                value = path.read_text().strip()  # as key_bytes reads it
                what = f"GRIDAPI_{name.upper()} is not set and {path} holds a key"
            if len(value.encode()) < MIN_KEY_BYTES:
                return (
                    f"{what} too short to be a secret (length "
                    f"{len(value.encode())}; at least {MIN_KEY_BYTES} bytes): "
                    f"{_SHORT_KEY_RISKS[name]}. Set a random one, e.g. the line "
                    "python3 -c 'import secrets; print(secrets.token_urlsafe(48))' prints."
                )
        return None

    def field_key_text(self, *, create: bool = True) -> str:
        """Return the field-encryption keys (GRIDAPI_FIELD_KEYS, ``version:base64,…``).

        Empty means a development key, generated once (version 1) and kept (mode 0600) under
        ``data_dir``, like the other keys; production deployments set the variable and keep
        the keys out of the database and its backups. Without ``create``, as ``key_bytes``.
        """
        if self.field_keys:
            return self.field_keys
        from .security.fields import new_key_text

        path = Path(self.data_dir) / "field.key"
        if not path.exists():
            if not create:
                raise MissingKey("GRIDAPI_FIELD_KEYS", path)
            _write_once(path, new_key_text(1))
        return read_key_file(path, "GRIDAPI_FIELD_KEYS")

    @property
    def engine_name(self) -> str:
        """'sqlite' or 'postgis', from the database URL."""
        return "sqlite" if self.database_url.startswith("sqlite") else "postgis"
