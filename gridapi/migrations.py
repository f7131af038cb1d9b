"""Running the Alembic chain from the CLI and the tests, on either engine."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alembic.config import Config
from geoalchemy2 import alembic_helpers
from sqlalchemy.engine import Engine

from alembic import command

ALEMBIC_DIR = Path(__file__).resolve().parent.parent / "alembic"

# Tables SpatiaLite and PostGIS create for themselves; never part of our schema.
_SYSTEM_TABLE_PREFIXES = (
    "spatial_ref_sys",
    "geometry_columns",
    "views_geometry_columns",
    "virts_geometry_columns",
    "spatialite_history",
    "sql_statements_log",
    "idx_",
    "sqlite_",
    "vector_layers",
    "geom_cols_ref_sys",
    "spatial_ref_sys_aux",
    "spatialite_",
    "data_licenses",
    "ElementaryGeometries",
    "KNN",
    "SpatialIndex",
    "topology",
    "layer",
    "rl2map",
    "vector_coverages",
    "raster_coverages",
    "wms_",
    "SE_",
    "ISO_",
    "networks",
    "topologies",
    "stored_",
    "iso_",
    "se_",
    "geometry_columns_",
)


def include_object(
    obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any
) -> bool:
    """Return False for the spatial extensions' own tables and their spatial index tables."""
    if type_ == "table" and name and name.startswith(_SYSTEM_TABLE_PREFIXES):
        return False
    if type_ == "table" and name in {"KNN2", "alembic_version"}:
        return False
    return alembic_helpers.include_object(obj, name, type_, reflected, compare_to)


class MigrationRefused(RuntimeError):
    """A migration found data it cannot carry over and changed nothing; the message says
    what to do (e.g. 0031: usernames equal but for case)."""


def alembic_config(engine: Engine | None = None) -> Config:
    """Return an Alembic config bound to ``engine`` (or to GRIDAPI_DATABASE_URL)."""
    if not ALEMBIC_DIR.is_dir():
        raise RuntimeError(
            f"migrations not found at {ALEMBIC_DIR}: install gridapi from its "
            "source tree (pip install -e .)"
        )
    cfg = Config()
    cfg.set_main_option("script_location", str(ALEMBIC_DIR))
    if engine is not None:
        # Alembic's options are configparser values, where "%" starts an interpolation: a
        # URL's percent-escapes (a socket directory in ``?host=``, a password) are doubled.
        url = engine.url.render_as_string(hide_password=False)
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Migrate the database behind ``engine`` up to ``revision``. Raises MigrationRefused,
    changing nothing, when the database or ``revision`` is at a revision this code does
    not know."""
    _run(engine, command.upgrade, revision)


def downgrade(engine: Engine, revision: str) -> None:
    """Migrate the database behind ``engine`` down to ``revision`` ('base' empties it).
    Raises MigrationRefused as ``upgrade`` does."""
    _run(engine, command.downgrade, revision)


def head_revision() -> str | None:
    """Return the revision the code's migration chain ends at."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def known_revision(revision: str) -> bool:
    """Return whether ``revision`` is one of this code's migration chain."""
    from alembic.script import ScriptDirectory
    from alembic.util import CommandError

    try:
        return ScriptDirectory.from_config(alembic_config()).get_revision(revision) is not None
    except CommandError:  # "Can't locate revision", an ambiguous prefix
        return False


def _unknown_revision_problem(current: str) -> str:
    return (
        f"The database is at revision {current}, which this gridapi does not know (its "
        f"migrations end at {head_revision()}): a newer gridapi migrated it. Run that gridapi, "
        "or install it here; this one can neither upgrade nor downgrade the database."
    )


def _refuse_unknown(engine: Engine) -> None:
    # Alembic stopped with a traceback on either ("Can't locate revision identified by …"),
    # after serve and worker had told the operator to run `gridapi db upgrade`.
    current = current_revision(engine)
    if current is not None and not known_revision(current):
        raise MigrationRefused(_unknown_revision_problem(current))


def _run(engine: Engine, step: Any, revision: str) -> None:
    """Run the Alembic command ``step`` to ``revision`` in one transaction."""
    from alembic.util import CommandError

    _refuse_unknown(engine)
    with engine.begin() as conn:
        cfg = alembic_config(engine)
        cfg.attributes["connection"] = conn
        try:
            step(cfg, revision)
        except CommandError as exc:  # a revision given that is not in the chain
            raise MigrationRefused(
                f"{exc} (this gridapi's migrations go from 0001 to {head_revision()}; "
                "head, base and relative steps such as -1 are taken too)"
            ) from None


def schema_problem(engine: Engine) -> str | None:
    """Return why the database's schema is not the one this code needs (None when it is)."""
    current, head = current_revision(engine), head_revision()
    if current == head:
        return None
    if current is None:
        return "The database has no gridapi tables yet: run `gridapi db upgrade` first."
    if not known_revision(current):
        return _unknown_revision_problem(current)
    return (
        f"The database is at revision {current}, this gridapi needs {head}: run "
        "`gridapi db upgrade` (or run the gridapi the database was migrated by)."
    )


def current_revision(engine: Engine) -> str | None:
    """Return the revision the database is at, or None when it was never migrated."""
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()
