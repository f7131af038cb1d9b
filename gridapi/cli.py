"""The `gridapi` command: serve, migrate, import regions and grids, demo data, the spec."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from . import clock
from .config import Settings
from .db import SpatialExtensionMissing
from .scope import Scope
from .services.audit import Actor, record


def _settings() -> Settings:
    try:
        settings = Settings.from_env()
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    # Every command refuses a key file other users may read (serve, worker, keys status…):
    # one copied in 0644 was used silently.
    exposed = settings.key_file_problem()
    if exposed:
        raise click.ClickException(exposed)
    clock.use(settings.timezone)
    return settings


def _engine(settings: Settings, *, immediate: bool = True):  # type: ignore[no-untyped-def]
    from .db import make_engine

    # Commands read, then write: on SQLite they begin as writers. The job runner does not
    # (immediate=False): it reads while it writes export files and, beside that read, renews
    # the job's lease and runs the other jobs on connections of its own; each of its write
    # transactions begins IMMEDIATE by saying so (sqlite_write_intent), its reads hold no lock.
    return make_engine(
        settings.database_url, spatialite_path=settings.spatialite_path, sqlite_immediate=immediate
    )


EVERYTHING = Scope.everything()  # the command line acts for the operator of the machine


def _cli_actor() -> Actor:
    import getpass

    return Actor("cli", f"cli:{getpass.getuser()}", "gridapi command line")


def _bump_generation_note() -> None:
    click.echo(
        "Routing in running servers picks the change up within GRIDAPI_ROUTING_REFRESH_SECONDS."
    )


class _Commands(click.Group):
    """The command group; a database that cannot be reached is reported, not a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        from sqlalchemy.exc import OperationalError

        try:
            return super().invoke(ctx)
        except OperationalError as exc:
            # Every command stopped with SQLAlchemy's traceback when the server was down,
            # the database not created yet, or the password wrong.
            from sqlalchemy.engine import make_url

            url = make_url(Settings.from_env().database_url).render_as_string(hide_password=True)
            reason = (str(exc.orig or exc).strip().splitlines() or [type(exc).__name__])[0]
            raise click.ClickException(f"the database {url} cannot be used: {reason}") from exc


@click.group(cls=_Commands)
@click.version_option(package_name="gridapi")
def main() -> None:
    """gridapi: grid-based community governance API."""


# --- database -------------------------------------------------------------------------------


@main.group()
def db() -> None:
    """Database schema migrations (the same chain for SpatiaLite and PostGIS)."""


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True)
def db_upgrade(revision: str) -> None:
    """Migrate the database up (creates it and the spatial extension if needed)."""
    from . import migrations

    settings = _settings()
    engine = _engine(settings)
    try:
        migrations.upgrade(engine, revision)
    except (SpatialExtensionMissing, migrations.MigrationRefused) as exc:
        raise click.ClickException(str(exc)) from exc
    except Exception as exc:
        if "postgis" in str(exc).lower() and "extension" in str(exc).lower():
            raise click.ClickException(
                "PostGIS could not be enabled: install it on the server (apt-get install "
                f"postgresql-15-postgis-3) and run as a role that may create extensions. ({exc})"
            ) from exc
        raise
    click.echo(
        f"database at revision {migrations.current_revision(engine)} ({settings.engine_name})"
    )


@db.command("downgrade")
@click.argument("revision")
def db_downgrade(revision: str) -> None:
    """Migrate the database down to REVISION ('base' removes every table)."""
    from . import migrations

    engine = _engine(_settings())
    try:
        migrations.downgrade(engine, revision)
    except migrations.MigrationRefused as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"database at revision {migrations.current_revision(engine)}")


@db.command("current")
def db_current() -> None:
    """Print the database's revision."""
    from . import migrations

    click.echo(migrations.current_revision(_engine(_settings())) or "none")


# --- regions --------------------------------------------------------------------------------


@main.group()
def regions() -> None:
    """The administrative tree."""


@regions.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--code-field",
    default="code",
    show_default=True,
    help="Column or property holding the 12-digit code (e.g. QHDM).",
)
@click.option(
    "--name-field",
    default="name",
    show_default=True,
    help="Column or property holding the name (e.g. MC).",
)
def regions_import(file: Path, code_field: str, name_field: str) -> None:
    """Import regions from FILE: CSV (code,name), a JSON list or a GeoJSON FeatureCollection.

    Parents are derived from the codes; ancestors must exist or be in the same file. All or
    nothing: a file with any bad row imports nothing.
    """
    from .errors import Unprocessable
    from .services.regions import import_regions, parse_region_file

    sessions = _sessions()
    try:
        rows = parse_region_file(
            file.read_bytes(), file.name, code_field=code_field, name_field=name_field
        )
    except Unprocessable as exc:
        raise click.ClickException(exc.message) from exc
    with sessions.begin() as session:
        result = import_regions(session, rows, scope=EVERYTHING)
        if not result.errors:
            record(
                session,
                _cli_actor(),
                "region.import",
                "region",
                None,
                summary={**result.as_dict(), "file": file.name},
            )
        if result.errors:
            session.rollback()
            for err in result.errors[:50]:
                click.echo(f"row {err['row']} ({err['code']}): {err['message']}", err=True)
            raise click.ClickException(
                f"{len(result.errors)} row(s) have errors; nothing was imported."
            )
    summary = result.as_dict()
    click.echo(
        f"regions: {summary['created']} created, {summary['updated']} updated, "
        f"{summary['unchanged']} unchanged"
    )


def job_runner_engine(settings: Settings):  # type: ignore[no-untyped-def]
    """Return the engine of `gridapi worker` (and of the worker `gridapi serve` starts)."""
    return _engine(settings, immediate=False)


def _sessions(*, immediate: bool = True):  # type: ignore[no-untyped-def]
    from .db import make_sessionmaker
    from .security.passwords import configure

    settings = _settings()
    configure(settings.argon2_time_cost, settings.argon2_memory_kib)
    engine = _engine(settings) if immediate else job_runner_engine(settings)
    try:
        from .db import spatial_extension_version

        spatial_extension_version(engine)
    except SpatialExtensionMissing as exc:
        raise click.ClickException(str(exc)) from exc
    return make_sessionmaker(engine)


# --- grids ----------------------------------------------------------------------------------


@main.group()
def grids() -> None:
    """Grid versions: import, validation report, activation."""


@grids.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--region", help="The region whose grid set this is (default: derived).")
@click.option("--label", help="A label for the version.")
@click.option("--activate", is_flag=True, help="Activate the version if it has no errors.")
@click.option("--force", is_flag=True, help="With --activate: activate despite errors.")
@click.option(
    "--report",
    "report_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the full validation report (JSON) here.",
)
@click.option(
    "--code-field",
    default="code",
    show_default=True,
    help="Property holding the 15-digit grid code (e.g. WGBM).",
)
@click.option(
    "--name-field",
    default="name",
    show_default=True,
    help="Property holding the grid name (e.g. WGMC).",
)
def grids_import(
    file: Path,
    region: str | None,
    label: str | None,
    activate: bool,
    force: bool,
    report_path: Path | None,
    code_field: str,
    name_field: str,
) -> None:
    """Import a GeoJSON FeatureCollection of grids (properties code, name[, type])."""
    from .errors import DomainError
    from .services.grids import activate_version, import_grid_version

    settings = _settings()
    if report_path is not None:
        # Checked before the import commits: writing the report failed after it, with a
        # traceback, and --activate was never reached.
        _check_writable(report_path, "--report")
    sessions = _sessions()
    try:
        collection = json.loads(file.read_bytes())
    except ValueError as exc:
        raise click.ClickException(f"{file} is not valid JSON: {exc}") from exc
    _rename_properties(collection, {code_field: "code", name_field: "name"})
    try:
        with sessions.begin() as session:
            version = import_grid_version(
                session,
                collection,
                region_code=region,
                label=label,
                source=file.name,
                tolerance_m2=settings.grid_tolerance_m2,
                scope=EVERYTHING,
            )
            record(
                session,
                _cli_actor(),
                "grid_version.import",
                "grid_version",
                version.id,
                region_code=version.region_code,
                summary={
                    "grids": version.grid_count,
                    "errors": version.error_count,
                    "file": file.name,
                },
            )
            vid, errors, warnings = version.id, version.error_count, version.warning_count
            report = version.report
    except DomainError as exc:
        detail = f" {json.dumps(exc.errors, ensure_ascii=False)}" if exc.errors else ""
        raise click.ClickException(exc.message + detail) from exc
    click.echo(
        f"version {vid} (region {version.region_code}): {version.grid_count} grids, "
        f"{errors} error(s), {warnings} warning(s)"
    )
    _print_report(report)
    if report_path:
        report_path.write_text(json.dumps(report, ensure_ascii=False, indent=2))
    if activate:
        if errors and not force:
            raise click.ClickException(
                f"version {vid} has errors and was not activated; fix the file or pass --force"
            )
        with sessions.begin() as session:
            activated = activate_version(session, vid, force=force, scope=EVERYTHING)
            record(
                session,
                _cli_actor(),
                "grid_version.activate",
                "grid_version",
                vid,
                region_code=activated.region_code,
                summary={"force": force},
            )
        click.echo(f"version {vid} activated")
        _bump_generation_note()


def _check_writable(path: Path, option: str) -> None:
    """Raise ClickException unless a file can be written at ``path`` (its directory exists
    and may be written in; the file, if it exists, may be replaced)."""
    import os

    directory = path.parent
    if not directory.is_dir():
        raise click.ClickException(f"{option} {path}: the directory {directory} does not exist")
    if not os.access(directory, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise click.ClickException(f"{option} {path}: not writable")


def _rename_properties(collection: Any, names: dict[str, str]) -> None:
    names = {src: dst for src, dst in names.items() if src != dst}
    if not names or not isinstance(collection, dict):
        return
    for feature in collection.get("features") or []:
        props = feature.get("properties") if isinstance(feature, dict) else None
        if isinstance(props, dict):
            for src, dst in names.items():
                if src in props:
                    props[dst] = props.pop(src)


def _print_report(report: dict[str, Any], limit: int = 30) -> None:
    lines: list[str] = []
    for problem in report.get("feature_problems", []):
        lines.append(
            f"  feature {problem.get('index')} ({problem.get('code')}): {problem.get('message')}"
        )
    for grid in report.get("grids", []):
        for problem in grid.get("problems", []):
            lines.append(
                f"  grid {grid.get('code')}: [{problem.get('severity')}] {problem.get('message')}"
            )
    for community in report.get("communities", []):
        for problem in community.get("problems", []):
            lines.append(
                f"  community {community.get('code')}: [{problem.get('severity')}] "
                f"{problem.get('message')}"
            )
    for line in lines[:limit]:
        click.echo(line)
    if len(lines) > limit:
        click.echo(f"  … and {len(lines) - limit} more (use --report FILE for all)")


@grids.command("activate")
@click.argument("version_id", type=int)
@click.option("--force", is_flag=True, help="Activate despite validation errors.")
def grids_activate(version_id: int, force: bool) -> None:
    """Activate a grid version."""
    from .errors import DomainError
    from .services.grids import activate_version

    try:
        with _sessions().begin() as session:
            activated = activate_version(session, version_id, force=force, scope=EVERYTHING)
            record(
                session,
                _cli_actor(),
                "grid_version.activate",
                "grid_version",
                version_id,
                region_code=activated.region_code,
                summary={"force": force},
            )
    except DomainError as exc:
        raise click.ClickException(exc.message) from exc
    click.echo(f"version {version_id} activated")
    _bump_generation_note()


@grids.command("versions")
def grids_versions() -> None:
    """List grid versions."""
    from .services.grids import list_versions

    with _sessions().begin() as session:
        for v in list_versions(session, limit=1000, scope=EVERYTHING):
            click.echo(
                f"{v.id}\t{v.region_code}\t{v.status}\t{v.grid_count} grids\t"
                f"{v.error_count} errors\t{v.label or ''}"
            )


# --- calendar -------------------------------------------------------------------------------


@main.group()
def calendar() -> None:
    """The working calendar: holidays and weekend days worked in exchange (调休)."""


@calendar.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def calendar_import(file: Path) -> None:
    """Import a year's arrangement (the holidays_cn.json format), replacing those years."""
    from datetime import UTC, datetime

    from .errors import DomainError
    from .services.calendar import calendar_for_edit, import_days, recount_after_edit
    from .services.tasks import recount_tasks_after_edit

    settings = _settings()
    try:
        data = json.loads(file.read_bytes())
    except ValueError as exc:
        raise click.ClickException(f"{file} is not valid JSON: {exc}") from exc
    try:
        with _sessions().begin() as session:
            before = calendar_for_edit(session, settings.working_hours, settings.timezone)
            result = import_days(session, data, settings.working_hours, settings.timezone)
            record(
                session,
                _cli_actor(),
                "calendar.import",
                "calendar",
                None,
                summary={**result, "file": file.name},
            )
            moved = recount_after_edit(
                session,
                before,
                settings.working_hours,
                settings.timezone,
                datetime.now(UTC),
                _cli_actor(),
                cache_seconds=settings.calendar_cache_seconds,
            )
            given = recount_tasks_after_edit(
                session,
                before,
                settings.working_hours,
                settings.timezone,
                datetime.now(UTC),
                _cli_actor(),
            )
    except DomainError as exc:
        raise click.ClickException(_describe(exc)) from exc
    click.echo(
        f"calendar: {result['years']} year(s), {result['holidays']} holidays, "
        f"{result['workdays']} workdays"
        + (f"; {len(moved)} open case deadline(s) moved" if moved else "")
        + (f"; {len(given.tasks)} open task deadline(s) moved" if given.tasks else "")
        + (f"; {len(given.campaigns)} campaign deadline(s) moved" if given.campaigns else "")
    )


# --- users and clients ----------------------------------------------------------------------


@main.group()
def users() -> None:
    """User accounts."""


def password_options(command: Any) -> Any:
    """Give ``command`` the options a password comes by (read with ``_read_password``)."""
    command = click.option(
        "--password-stdin",
        is_flag=True,
        help="Read the password from the first line of standard input.",
    )(command)
    return click.option(
        "--password",
        help="The password itself: other accounts see it in ps, and shell history keeps it. "
        "Without it the password is asked for twice, hidden, or read from standard input "
        "when that is not a terminal. Must meet the password policy.",
    )(command)


def _read_password(password: str | None, password_stdin: bool) -> str:
    """Return the password given with --password; else the first line of standard input
    (--password-stdin, or standard input that is not a terminal); else the one typed twice
    at a hidden prompt. Raises UsageError for both options or an empty line."""
    if password is not None and password_stdin:
        raise click.UsageError("Give --password or --password-stdin, not both.")
    if password is not None:
        return password
    stdin = sys.stdin
    if password_stdin or not stdin.isatty():
        line = stdin.readline().rstrip("\r\n")
        if not line:
            raise click.UsageError("No password on the first line of standard input.")
        return line
    return click.prompt("Password", hide_input=True, confirmation_prompt=True)


@users.command("create")
@click.option("--username", required=True)
@password_options
@click.option(
    "--role",
    required=True,
    help="grid_worker, grid_chief, community_officer, "
    "township_office, county_centre, city_centre, department or admin.",
)
@click.option("--scope", "scope_region", help="Region code: the account sees its subtree.")
@click.option("--grids", help="Comma-separated grid codes (a worker's roster, from today).")
@click.option("--phone", help="Mainland mobile number (sign-in by phone).")
@click.option("--name", "display_name", help="Display name.")
def users_create(
    username: str,
    password: str | None,
    password_stdin: bool,
    role: str,
    scope_region: str | None,
    grids: str | None,
    phone: str | None,
    display_name: str | None,
) -> None:
    """Create a user account."""
    from .errors import DomainError
    from .services.identity import create_user, hash_password

    settings = _settings()
    password = _read_password(password, password_stdin)
    grid_list = [g.strip() for g in grids.split(",") if g.strip()] if grids else None
    sessions = _sessions()
    # Hashed before the transaction: on SQLite it begins holding the one write lock.
    password_hash = hash_password(password)
    try:
        with sessions.begin() as session:
            user = create_user(
                session,
                password_hash=password_hash,
                scope=EVERYTHING,
                actor_rank=None,
                username=username,
                password=password,
                role=role,
                display_name=display_name,
                phone=phone,
                scope_region=scope_region,
                grids=grid_list,
                phone_key=settings.key_bytes("blind_index_key"),
            )
            record(
                session,
                _cli_actor(),
                "user.create",
                "user",
                user.id,
                region_code=user.region_code,
                summary={
                    "username": username,
                    "role": role,
                    "scope": scope_region,
                    "grids": grid_list,
                },
            )
            user_id = user.id
    except DomainError as exc:
        raise click.ClickException(_describe(exc)) from exc
    click.echo(f"user {user_id} {username} ({role}) created")


def _describe(exc: Any) -> str:
    detail = f" {json.dumps(exc.errors, ensure_ascii=False)}" if exc.errors else ""
    return exc.message + detail


@users.command("list")
def users_list() -> None:
    """List user accounts."""
    from .services.identity import current_grids, list_users

    with _sessions().begin() as session:
        for user in list_users(session, EVERYTHING, limit=100_000):
            where = user.scope_region_code or ",".join(current_grids(session, user.id)) or "-"
            state_ = "active" if user.is_active else "disabled"
            click.echo(f"{user.id}\t{user.username}\t{user.role_name}\t{where}\t{state_}")


@users.command("reset-password")
@click.option("--username", required=True)
@password_options
def users_reset_password(username: str, password: str | None, password_stdin: bool) -> None:
    """Set a new password for an account (its sessions end)."""
    from sqlalchemy import select

    from .errors import DomainError
    from .models import User
    from .services.identity import hash_password, set_password

    password = _read_password(password, password_stdin)
    sessions = _sessions()
    new_hash = hash_password(password)  # before the transaction (SQLite's one write lock)
    try:
        with sessions.begin() as session:
            user = session.scalars(select(User).where(User.username == username)).first()
            if user is None:
                raise click.ClickException(f"no user {username!r}")
            set_password(
                session,
                user,
                password,
                field_name="password",
                phone_key=_settings().key_bytes("blind_index_key"),
                new_hash=new_hash,
            )
            record(
                session,
                _cli_actor(),
                "user.password_reset",
                "user",
                user.id,
                region_code=user.region_code,
            )
    except DomainError as exc:
        raise click.ClickException(_describe(exc)) from exc
    click.echo(f"password of {username} reset")


@users.command("rename")
@click.option("--username", required=True, help="The account's username, exactly as stored.")
@click.option("--to", "new_username", required=True, help="Its new username.")
def users_rename(username: str, new_username: str) -> None:
    """Give an account a new username (no other account may have it, in any case).

    Its sessions go on; the person signs in with the new name from now on. Migration 0031
    asks for this when two accounts' usernames differ only in case."""
    from sqlalchemy import select

    from .errors import DomainError
    from .models import User
    from .services.identity import rename_user

    try:
        with _sessions().begin() as session:
            user = session.scalars(select(User).where(User.username == username)).first()
            if user is None:
                raise click.ClickException(f"no user {username!r}")
            rename_user(session, user, new_username)
            record(
                session,
                _cli_actor(),
                "user.rename",
                "user",
                user.id,
                region_code=user.region_code,
                summary={"from": username, "to": new_username},
            )
    except DomainError as exc:
        raise click.ClickException(_describe(exc)) from exc
    click.echo(f"user {username} renamed {new_username}")


@main.group()
def clients() -> None:
    """Third-party API clients."""


@clients.command("create")
@click.option("--name", required=True)
@click.option("--scopes", required=True, help="Comma-separated, e.g. cases:read,cases:write.")
@click.option("--scope", "scope_region", help="Region code the client may see (default all).")
@click.option("--rate-limit", help="e.g. '600 per minute' (default GRIDAPI_CLIENT_RATE_LIMIT).")
def clients_create(
    name: str, scopes: str, scope_region: str | None, rate_limit: str | None
) -> None:
    """Register a client; its API key is printed once, alone on the last line."""
    from .errors import DomainError
    from .services.identity import create_client

    settings = _settings()
    try:
        with _sessions().begin() as session:
            client, key = create_client(
                session,
                name=name,
                scopes=[s.strip() for s in scopes.split(",") if s.strip()],
                scope_region=scope_region,
                rate_limit=rate_limit or settings.client_rate_limit,
                created_by="cli",
            )
            record(
                session,
                _cli_actor(),
                "client.create",
                "client",
                client.id,
                region_code=scope_region,
                summary={"name": name, "scopes": client.scopes},
            )
            client_id, prefix = client.id, client.key_prefix
    except DomainError as exc:
        raise click.ClickException(_describe(exc)) from exc
    click.echo(f"client {client_id} {name} (key prefix {prefix}); the key is shown once:")
    click.echo(key)


# --- the register ---------------------------------------------------------------------------


@main.group()
def persons() -> None:
    """The register of residents (实有人口)."""


@persons.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--mode",
    type=click.Choice(["all", "valid"]),
    default="all",
    show_default=True,
    help="all: any row error imports nothing. valid: import the valid rows, report the rest.",
)
@click.option("--dry-run", is_flag=True, help="Check every row and report; write nothing.")
@click.option("--region", help="Act with this region's scope (default: unrestricted).")
@click.option(
    "--crs",
    type=click.Choice(["wgs84", "cgcs2000", "gcj02", "bd09"]),
    default="wgs84",
    show_default=True,
    help="The system of the file's 经度 and 纬度 (gcj02: AMap, Tencent; bd09: Baidu).",
)
def persons_import(file: Path, mode: str, dry_run: bool, region: str | None, crs: str) -> None:
    """Import residents from a CSV or XLSX FILE (one row per person); print the report (JSON).

    Exits 1 when rows have errors in mode all (nothing was imported). See
    docs/register-import.md for the columns.
    """
    from .app import field_cipher
    from .codes import InvalidCode, region_level
    from .db import sqlite_write_intent
    from .errors import DomainError
    from .services.keys import keys_problem
    from .services.person_import import import_persons
    from .services.register import Keys
    from .services.routing import build_snapshot, current_generation

    settings = _settings()
    if region is not None:
        try:
            region_level(region)
        except InvalidCode as exc:
            raise click.ClickException(f"--region {region}: {exc}") from exc
    scope = Scope.of_region(region) if region else EVERYTHING
    sessions = _sessions()
    engine = sessions.kw["bind"]
    snapshot = build_snapshot(engine, current_generation(engine), settings.routing_snap_meters)
    protect = Keys(field_cipher(settings), settings.key_bytes("blind_index_key"))
    with sessions() as session:  # residents sealed under keys not the database's: unreadable
        problem = keys_problem(session, protect)
    if problem:
        raise click.ClickException(problem)
    actor = _cli_actor()
    token = sqlite_write_intent.set(True)  # the import writes: take SQLite's lock at BEGIN
    try:
        with sessions() as session:
            try:
                report = import_persons(
                    session,
                    file.read_bytes(),
                    file.name,
                    scope=scope,
                    keys=protect,
                    snapshot=snapshot,
                    actor=actor.id or "cli",
                    mode=mode,
                    dry_run=dry_run,
                    max_rows=settings.import_max_rows,
                    crs=crs,
                )
            except DomainError as exc:
                raise click.ClickException(_describe(exc)) from exc
            if not report.committed:
                session.rollback()
            record(
                session,
                actor,
                "person.import",
                "person_import",
                None,
                summary=report.audit_summary(),
                region_code=report.region_code(scope),
            )
            session.commit()
    finally:
        sqlite_write_intent.reset(token)
    click.echo(json.dumps(report.as_dict(), ensure_ascii=False, indent=2))
    if mode == "all" and report.failed:
        sys.exit(1)


# --- patrols --------------------------------------------------------------------------------


@main.group()
def patrols() -> None:
    """Patrols (巡查): their stored statistics."""


@patrols.command("recompute")
@click.option("--region", help="Only the patrols of this region's subtree (12-digit code).")
@click.option(
    "--since",
    type=click.DateTime(formats=["%Y-%m-%d"]),
    help="Only the patrols started on or after this day (YYYY-MM-DD, in GRIDAPI_TIMEZONE).",
)
@click.option(
    "--batch",
    default=200,
    show_default=True,
    type=click.IntRange(min=1),
    help="Patrols per transaction.",
)
@click.option("--dry-run", is_flag=True, help="Compute and report; write nothing.")
def patrols_recompute(region: str | None, since: Any, batch: int, dry_run: bool) -> None:
    """Recompute the stored length, line and grids crossed of patrols from their raw points.

    Patrols recorded before GPS jitter was taken out (or outliers left out) keep the figures
    of the code of their day until their next batch of points; this brings them to the
    current computation, as a new batch would. The grids crossed are routed with today's
    routing index. Patrols whose raw points were thinned (GRIDAPI_TRACK_RAW_DAYS) keep
    theirs: nothing is left to recompute them from.

    One transaction per batch of patrols, by id: an interrupted run is continued by running
    it again, and a second run changes nothing. Prints how many patrols changed and their
    total length before and after; writes one audit row `patrol.recompute` (counts and
    totals, no coordinates). A dry run writes nothing.
    """
    from datetime import UTC, datetime
    from zoneinfo import ZoneInfo

    from .codes import InvalidCode, subtree_prefix
    from .schemas.common import instant_problem
    from .services.patrols import Recomputed, recompute_patrols
    from .services.routing import build_snapshot, current_generation

    settings = _settings()
    if region is not None:
        try:
            subtree_prefix(region)
        except InvalidCode as exc:
            raise click.ClickException(f"--region {region}: {exc}") from exc
    start: datetime | None = None
    if since is not None:
        if problem := instant_problem(since.date()):
            raise click.ClickException(f"--since {since.date()}: {problem}")
        start = since.replace(tzinfo=ZoneInfo(settings.timezone)).astimezone(UTC)
    sessions = _sessions()
    engine = sessions.kw["bind"]
    snapshot = build_snapshot(engine, current_generation(engine), settings.routing_snap_meters)
    verb = "would change" if dry_run else "changed"
    total = Recomputed()
    after = 0
    while True:
        with sessions() as session:
            done = recompute_patrols(
                session,
                snapshot,
                after=after,
                limit=batch,
                region=region,
                since=start,
                write=not dry_run,
            )
            if dry_run:
                session.rollback()
            else:
                session.commit()
        if done.last_id is None:
            break
        total.add(done)
        after = done.last_id
        if done.changed:
            click.echo(f"  up to patrol {after}: {done.changed} of {done.read} {verb}")
    if not dry_run:
        with sessions.begin() as session:
            record(
                session,
                _cli_actor(),
                "patrol.recompute",
                "patrol",
                None,
                summary={
                    "patrols": total.read,
                    "changed": total.changed,
                    "thinned": total.thinned,
                    "length_before_m": round(total.length_before_m, 1),
                    "length_after_m": round(total.length_after_m, 1),
                    "region": region,
                    "since": since.date().isoformat() if since is not None else None,
                },
                region_code=region,
            )
    click.echo(
        f"patrols: {total.read} recomputed, {total.changed} {verb}"
        + (f"; {total.thinned} thinned, kept as they were" if total.thinned else "")
    )
    click.echo(f"length: {total.length_before_m:.1f} m before, {total.length_after_m:.1f} m after")
    if dry_run:
        click.echo("dry run: nothing was written")


# --- demo -----------------------------------------------------------------------------------


def _keys(settings: Settings):  # type: ignore[no-untyped-def]
    """Return the register's keys (field cipher and blind-index key) from the settings."""
    from .app import field_cipher
    from .services.register import Keys

    return Keys(field_cipher(settings), settings.key_bytes("blind_index_key"))


@main.command("demo-data")
@click.option("--seed", default=2024, show_default=True)
def demo_data(seed: int) -> None:
    """Build a deterministic demo county (10 townships, ~95 communities, ~940 grids)."""
    from .demo import build_demo_county
    from .services.demo import (
        DEMO_PASSWORD,
        activate_demo_grids,
        demo_county_summary,
        demo_password_problem,
        load_demo_grids,
        load_demo_regions,
        load_demo_users,
    )

    settings = _settings()
    # Checked before the county is built: a password the policy refuses stopped the command
    # with a traceback, after a minute of building.
    if settings.demo_password and (problem := demo_password_problem(settings.demo_password)):
        raise click.ClickException(
            f"GRIDAPI_DEMO_PASSWORD does not meet the password policy, {problem}"
        )
    from .services import identity

    password = settings.demo_password or DEMO_PASSWORD
    # Hashed once, before any transaction: on SQLite a write transaction holds the one write
    # lock, and a running server's reports waited for argon2 (as for `users create`).
    password_hash = identity.hash_password(password)
    # Built before any transaction (pure computing, seconds), then loaded in short
    # transactions of their own: the county in one held SQLite's write lock for about a
    # minute, and a server started beside it waited. Each step leaves the database whole
    # (a draft grid version, a batch of cases, ...) and a run cut between two is resumed by
    # running it again: each step skips what an earlier run loaded.
    county = build_demo_county(seed=seed)
    sessions = _sessions()
    with sessions.begin() as session:
        created = load_demo_regions(session, county)
    with sessions.begin() as session:
        version_id = load_demo_grids(
            session, county, seed=seed, tolerance_m2=settings.grid_tolerance_m2
        ).id
    with sessions.begin() as session:
        summary = demo_county_summary(county, created, activate_demo_grids(session, version_id))
    with sessions.begin() as session:
        accounts = load_demo_users(
            session,
            password,
            settings.key_bytes("blind_index_key"),
            password_hash=password_hash,
        )
        record(
            session,
            _cli_actor(),
            "demo.load",
            "region",
            "320508000000",
            region_code="320508000000",
            summary={"seed": seed, "accounts": len(accounts)},
        )

    # Cases after the grids are in service (routing reads them), a few per transaction.
    from datetime import UTC, datetime

    from .services.calendar import working_calendar
    from .services.demo import demo_case_batches, load_demo_cases, load_demo_register
    from .services.routing import build_snapshot, current_generation

    engine = sessions.kw["bind"]
    snapshot = build_snapshot(engine, current_generation(engine), settings.routing_snap_meters)
    now = datetime.now(UTC)
    cases = 0
    for batch in demo_case_batches():
        with sessions.begin() as session:
            calendar = working_calendar(session, settings.working_hours, settings.timezone)
            cases += load_demo_cases(
                session, snapshot=snapshot, calendar=calendar, now=now, only=batch
            )
    with sessions.begin() as session:  # the register whole, or not at all
        residents = load_demo_register(session, snapshot=snapshot, keys=_keys(settings))
    click.echo(summary)
    click.echo(f"{cases} demo cases reported and carried along the workflow")
    click.echo(f"{residents} demo residents registered (ID and phone numbers encrypted)")
    hint = "" if settings.demo_password else "; set GRIDAPI_DEMO_PASSWORD to choose another"
    # Accounts made by an earlier run keep their password: printing this run's as theirs
    # sent whoever set GRIDAPI_DEMO_PASSWORD after the first run to a sign-in that failed.
    if any(created for *_, created in accounts):
        click.echo(f"Demo accounts, password {settings.demo_password or DEMO_PASSWORD}{hint}:")
    else:
        click.echo(
            "Demo accounts, made before: each keeps the password it had (`gridapi users "
            "reset-password --username NAME` sets another):"
        )
    kept = len({created for *_, created in accounts}) > 1
    for username, role, where, created in accounts:
        note = "  (made before: its password is unchanged)" if kept and not created else ""
        click.echo(f"  {username:<18} {role:<18} {where}{note}")


# --- spec -----------------------------------------------------------------------------------


@main.group()
def openapi() -> None:
    """The OpenAPI document."""


@openapi.command("write")
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
def openapi_write(path: Path) -> None:
    """Write the OpenAPI document generated from the code to PATH."""
    from .spec import spec_json

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(spec_json())
    click.echo(f"wrote {path}")


# --- serving --------------------------------------------------------------------------------


@main.command("serve")
@click.option("--host", default=None, help="Default GRIDAPI_HOST (127.0.0.1).")
# Ranges as GRIDAPI_PORT's and GRIDAPI_WORKERS' (config._RANGES): --port 70000 crashed
# gunicorn with a traceback, --port 0 and --workers -1 were taken.
@click.option(
    "--port", default=None, type=click.IntRange(1, 65_535), help="Default GRIDAPI_PORT (5000)."
)
@click.option(
    "--workers",
    default=None,
    type=click.IntRange(0, 1_000),
    help="Default GRIDAPI_WORKERS or automatic (0).",
)
def serve(host: str | None, port: int | None, workers: int | None) -> None:
    """Run the API under gunicorn (several workers on PostGIS; WAL mode on SQLite)."""
    from .serving import StartupRefused, jobs_in_serve, run

    settings = _settings()
    try:
        jobs_in_serve(settings)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    try:
        run(
            settings,
            host=host or settings.host,
            port=settings.port if port is None else port,
            workers=settings.workers if workers is None else workers,
        )
    except (SpatialExtensionMissing, StartupRefused) as exc:
        raise click.ClickException(str(exc)) from exc


@main.command("worker")
@click.option("--once", is_flag=True, help="Run every job once, print a line per job, exit.")
@click.option("--parent-pid", type=int, hidden=True, help="Stop when this process is gone.")
def worker(once: bool, parent_pid: int | None) -> None:
    """Run the background jobs: overdue cases, supervision, escalation, expired keys.

    Without --once, runs them every GRIDAPI_WORKER_INTERVAL_SECONDS until SIGTERM or SIGINT,
    and delivers webhooks every GRIDAPI_WEBHOOK_POLL_SECONDS and runs export jobs beside
    them. --once runs each job once, then one webhook round and the queued export jobs.
    Several workers may run at once.
    """
    import logging
    import os
    import signal
    import threading

    from .services import jobs

    settings = _settings()
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    from sqlalchemy.exc import SQLAlchemyError

    from .app import field_cipher
    from .services import exports, webhooks
    from .services.register import Keys

    sessions = _sessions(immediate=False)  # the jobs declare their write transactions
    from .migrations import schema_problem

    # Export jobs look residents up under the blind-index key (the worker signs no tokens).
    weak = settings.short_key_problem("blind_index_key")
    if weak:
        raise click.ClickException(weak)
    problem = schema_problem(sessions.kw["bind"])
    if problem:  # every job would fail on a missing column, round after round
        raise click.ClickException(problem)
    options = jobs.JobOptions.from_settings(settings)
    cipher = field_cipher(settings)
    delivery_options = webhooks.DeliveryOptions.from_settings(settings)
    export_options = exports.JobOptions(
        settings.data_dir,
        settings.export_retention_hours,
        Keys(cipher, settings.key_bytes("blind_index_key")),
    )
    if once:
        # The overdue and supervision jobs count on the calendar (the loop says it daily).
        jobs.warn_of_calendar(sessions, jobs.utcnow(), settings.timezone)
        results = jobs.run_jobs(sessions, jobs.utcnow(), options)
        for result in results:
            click.echo(result.summary())
        failed = any(r.errors for r in results)
        # One round of what the looping worker does continuously beside the jobs, so that a
        # worker run from cron delivers webhooks and writes export files too.
        try:
            click.echo(webhooks.deliver_round(sessions, cipher, delivery_options).summary())
        except SQLAlchemyError:
            click.echo("webhooks: errors=1")
            failed = True
        try:
            counts = exports.run_export_jobs(sessions, export_options)
            click.echo("exports: " + " ".join(f"{k}={v}" for k, v in counts.items()))
        except SQLAlchemyError:
            click.echo("exports: errors=1")
            failed = True
        if failed:
            sys.exit(1)
        return
    stop = threading.Event()
    handlers = {
        sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)
    }
    if parent_pid:  # started by `gridapi serve`: end with it, even if it was killed

        def watch_parent() -> None:
            while not stop.wait(1.0):
                if os.getppid() != parent_pid:
                    stop.set()

        threading.Thread(target=watch_parent, daemon=True).start()
    # Webhooks go out within seconds, on their own loop beside the jobs.
    delivery = threading.Thread(
        target=webhooks.run_forever,
        args=(sessions, cipher, delivery_options),
        kwargs={"stop": stop},
        name="webhook-delivery",
        daemon=True,
    )
    delivery.start()
    # Export jobs too: a large export is written to a file while the other jobs go on.
    export_jobs = threading.Thread(
        target=exports.run_forever,
        args=(sessions, export_options),
        kwargs={"stop": stop},
        name="export-jobs",
        daemon=True,
    )
    export_jobs.start()
    try:
        jobs.run_forever(sessions, options, interval=settings.worker_interval_seconds, stop=stop)
    finally:
        stop.set()
        delivery.join(timeout=60)
        export_jobs.join(timeout=60)
        for sig, handler in handlers.items():
            signal.signal(sig, handler)


# --- field keys -----------------------------------------------------------------------------


@main.group()
def keys() -> None:
    """Field-encryption keys (GRIDAPI_FIELD_KEYS): generate, status, rotate.

    ID numbers, phone numbers and special-group notes are stored encrypted, each value
    prefixed with the version of the key that wrote it. To rotate: `gridapi keys generate`,
    append the line to GRIDAPI_FIELD_KEYS ("1:…,2:…"), restart the servers (they now write
    under the new key and still read the old), run `gridapi keys rotate`, check
    `gridapi keys status`, then drop the old key from the configuration.
    """


def _field_keys(settings: Settings) -> dict[int, bytes]:
    """The configured field keys (or the data directory's key file); never a new one: a key
    made by a command that reads or rotates the data opens nothing and is no server's."""
    from .config import MissingKey
    from .security.fields import KeyConfigError, parse_keys

    try:
        return parse_keys(settings.field_key_text(create=False))
    except KeyConfigError as exc:
        raise click.ClickException(f"GRIDAPI_FIELD_KEYS: {exc}") from None
    except MissingKey as exc:
        raise click.ClickException(str(exc)) from None


def _blind_index_key(settings: Settings) -> bytes:
    """The configured blind-index key (or the data directory's key file), never a new one:
    rotating under a key no server has re-indexed every resident so that no search found
    them, and let duplicate ID numbers in."""
    from .config import MissingKey

    try:
        return settings.key_bytes("blind_index_key", create=False)
    except MissingKey as exc:
        raise click.ClickException(str(exc)) from None


@keys.command("generate")
@click.option(
    "--version",
    "version",
    type=click.IntRange(min=1),
    help="Key version (default: 1 + the highest configured).",
)
def keys_generate(version: int | None) -> None:
    """Print a fresh key line VERSION:BASE64 to add to GRIDAPI_FIELD_KEYS.

    Only the key line goes to standard output; keep it out of the database, its backups
    and version control.
    """
    from .security.fields import KeyConfigError, new_key_text, parse_keys

    settings = _settings()
    configured: dict[int, bytes] = {}
    if settings.field_keys:
        configured = _field_keys(settings)
    else:  # the development key file, if the application created one (never created here)
        path = Path(settings.data_dir) / "field.key"
        if path.exists():
            try:
                configured = parse_keys(path.read_text().strip())
            except KeyConfigError as exc:
                raise click.ClickException(f"{path}: {exc}") from None
    if version is None:
        version = max(configured, default=0) + 1
    elif version in configured:
        raise click.ClickException(f"key version {version} is configured already")
    click.echo(new_key_text(version))
    click.echo(
        f"Append it to GRIDAPI_FIELD_KEYS (comma-separated); version {version} then writes "
        "new values. Run `gridapi keys rotate` to re-encrypt the old ones.",
        err=True,
    )


@keys.command("status")
def keys_status() -> None:
    """Print, per encrypted column, how many values are under each key version."""
    from .services.keys import NOT_A_CIPHERTEXT, key_status

    settings = _settings()
    configured = _field_keys(settings)
    current = max(configured)
    with _sessions().begin() as session:
        statuses = key_status(session)
    click.echo(
        f"current key version {current}; configured: {', '.join(map(str, sorted(configured)))}"
    )
    behind = missing = 0
    for status in statuses:
        parts = []
        for version, n in sorted(status.counts.items(), key=_version_order):
            if version == NOT_A_CIPHERTEXT:
                missing += n
                parts.append(f"{NOT_A_CIPHERTEXT}: {n}")
                continue
            if version not in configured:
                missing += n
                parts.append(f"v{version}: {n} (no key configured!)")
                continue
            if version != current:
                behind += n
            parts.append(f"v{version}: {n}")
        click.echo(f"{status.table}.{status.column}: {', '.join(parts) or 'no values'}")
    if missing:
        click.echo(f"{missing} value(s) cannot be decrypted with the configured keys")
    elif behind:
        click.echo(f"{behind} value(s) under older keys: run `gridapi keys rotate`")
    else:
        click.echo(f"every value is under key version {current}")


def _version_order(item: tuple[int | str, int]) -> tuple[int, int]:
    version = item[0]
    return (1, 0) if isinstance(version, str) else (0, version)


@keys.command("rotate")
@click.option(
    "--batch",
    default=500,
    show_default=True,
    type=click.IntRange(min=1),
    help="Rows per transaction.",
)
def keys_rotate(batch: int) -> None:
    """Re-encrypt every value under the current (highest) key version.

    Values under older versions (persons.id_number_enc, persons.phone_enc,
    special_group_records.notes_enc) are decrypted with their key and encrypted under the
    newest, bound to the same table, column and row. The residents' blind indexes
    (persons.id_number_hmac, persons.phone_hmac) are recomputed under the current
    GRIDAPI_BLIND_INDEX_KEY, so a new blind-index key can be rolled out this way: run this
    command with the new key configured, restart the servers with it, then run this command
    once more. Residents written between the two by servers still on the old key carry
    hashes of the old key (nobody would find them by ID or phone number); the second run
    re-hashes them, and re-encrypts nothing already under the newest key.

    Accounts' phone numbers (users.phone_hmac, for sign-in by phone) cannot be recomputed:
    accounts keep no ciphertext of their number, only its keyed hash. After a change of
    GRIDAPI_BLIND_INDEX_KEY, set each account's phone number again (or sign in by name).

    One transaction per batch of rows, by id: an interrupted rotation is continued by
    running it again. A value that fails to decrypt stops the rotation, naming its table,
    column and row id; the audit row `keys.rotate` counts what was done, and where a
    rotation stopped. A key neither set nor kept in GRIDAPI_DATA_DIR is refused, never
    generated: the residents would be re-indexed under a key no server has.

    Nothing anyone sees changes: a rewritten row keeps its version (ETag) and updated_at,
    and phones do not download the residents again.
    """
    from .security.fields import FieldCipher
    from .services.keys import BLIND_INDEXES, RotationError, rotate_all
    from .services.register import Keys

    settings = _settings()
    protect = Keys(FieldCipher(_field_keys(settings)), _blind_index_key(settings))
    sessions = _sessions()
    click.echo(f"re-encrypting under key version {protect.cipher.current_version}")

    def progress(result: Any) -> None:
        if result.rows:
            click.echo(
                f"  {result.table}: {result.rows} row(s), {result.reencrypted} value(s) "
                f"re-encrypted, {result.reindexed} blind index(es) recomputed"
            )

    def audit(totals: dict[str, Any], stopped: str | None = None) -> None:
        summary: dict[str, Any] = {table: total.as_dict() for table, total in totals.items()}
        if stopped is not None:
            summary["stopped"] = stopped  # where (table, column, row id), never a value
        with sessions.begin() as session:
            record(
                session,
                _cli_actor(),
                "keys.rotate",
                "field_keys",
                protect.cipher.current_version,
                summary=summary,
            )

    try:
        totals = rotate_all(sessions, protect, batch=batch, on_batch=progress)
    except RotationError as exc:
        # The batches before it were committed: rewritten rows, audited as any change.
        audit(exc.totals, str(exc))
        raise click.ClickException(str(exc)) from None
    audit(totals)
    for table, total in totals.items():
        line = f"{table}: {total.rows} row(s) read, {total.reencrypted} value(s) re-encrypted"
        if any(t == table for t, _ in BLIND_INDEXES):
            line += f", {total.reindexed} blind index(es) recomputed"
        if total.changed_meanwhile:
            line += f"; {total.changed_meanwhile} row(s) changed meanwhile: run again"
        click.echo(line)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
