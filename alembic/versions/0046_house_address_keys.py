"""Houses are compared by their address as normalised; register rows of a city lie in a county.

**Addresses as compared.** 0039 made a house one per address and place, the address
compared exactly (but for the spaces around it): "3号楼" and "３号楼" (full-width digits,
typed with a Chinese input method), doubled spaces or a full-width space made another house.
``houses.address_key`` holds the address as compared (Unicode NFKC, runs of whitespace one
space, none around); the address stays as typed, for display. The unique indexes hold the
key. Houses this reveals as registered twice are merged as 0039 merges them: the lowest id
is kept, the households, residents, task items and patrol check-ins of the others move to
it, the others are deleted, and a ``house.merge`` audit row on the kept house names them.

**Rows of a city.** Before the register placed a row held only by a city's (or a province's)
boundary in the county nearest it, houses and households placed at a city carried the
city's code as their county code ("320500", no county's), and their residents, visits and
special-group records took it along. Such a house with a point goes to the county whose
boundary covers the point, else to the county of the grid in service under the city nearest
the point (as ``IndexSnapshot.nearest_county`` chooses), else to the lowest county code
under the city; its households go along, and their residents, visits and records. Rows with
no point to choose by (a household placed at a city without a house, and what is theirs)
stay, as does a house whose 户号 or ID numbers are registered in the county it would go to
(each is printed); a city without counties (东莞) keeps its code, as the register does.
Houses, households and residents moved get a new version (their place is shown). A house
moved onto the address of a house at the county is merged into it, as above.

Revision ID: 0046
Revises: 0045
Create Date: 2026-12-01
"""

from __future__ import annotations

import logging
import re
import unicodedata
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from alembic import op

revision = "0046"
down_revision = "0045"
branch_labels = None
depends_on = None

_AUDIT = sa.table(
    "audit_log",
    sa.column("at", sa.DateTime(timezone=True)),
    sa.column("actor_type", sa.String),
    sa.column("actor_id", sa.String),
    sa.column("actor_name", sa.String),
    sa.column("action", sa.String),
    sa.column("object_type", sa.String),
    sa.column("object_id", sa.String),
    sa.column("region_code", sa.String),
    sa.column("summary", sa.JSON),
)

log = logging.getLogger("alembic.runtime.migration")
_WHITESPACE = re.compile(r"\s+")
_KEY_MAX = 300
_BATCH = 5000


def _address_key(address: str) -> str:
    # As gridapi.models.register.address_key at this revision (a migration keeps its own).
    return _WHITESPACE.sub(" ", unicodedata.normalize("NFKC", address)).strip()


def _fill_address_keys(conn: Any) -> None:
    conn.execute(sa.text("UPDATE houses SET address_key = address"))
    last = 0
    while True:
        rows = conn.execute(
            sa.text("SELECT id, address FROM houses WHERE id > :last ORDER BY id LIMIT :n"),
            {"last": last, "n": _BATCH},
        ).all()
        if not rows:
            return
        last = rows[-1].id
        # A key longer than the column (compatibility characters spelt out) keeps the
        # address itself: that house is compared exactly, as before.
        changed = [
            {"id": r.id, "key": key}
            for r in rows
            if (key := _address_key(r.address)) != r.address and len(key) <= _KEY_MAX
        ]
        if changed:
            conn.execute(sa.text("UPDATE houses SET address_key = :key WHERE id = :id"), changed)


# --- rows of a city ---------------------------------------------------------------------------


def _prefix(city: str) -> str:
    """The prefix of the codes under a city's (or a province's) six-digit code."""
    return city[:2] if city[2:4] == "00" else city[:4]


class _Counties:
    """The counties under each city, their boundaries and the grids in service under them."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.cache: dict[str, tuple[list[tuple[str, Any]], list[str], Any, Any]] = {}

    def under(self, city: str) -> tuple[list[tuple[str, Any]], list[str], Any, Any]:
        """The counties under ``city`` (code, boundary), and the counties of the grids in
        service under them with the grids' shapes and a tree of them (by grid code)."""
        import numpy as np
        import shapely

        if city not in self.cache:
            like = {"p": _prefix(city) + "%"}
            counties = [
                (r.code[:6], shapely.from_wkb(bytes(r.wkb)) if r.wkb is not None else None)
                for r in self.conn.execute(
                    sa.text(
                        "SELECT code, ST_AsBinary(boundary) AS wkb FROM regions WHERE level ="
                        " 'county' AND valid_to IS NULL AND code LIKE :p ORDER BY code"
                    ),
                    like,
                )
            ]
            known = {c for c, _ in counties}
            rows = [
                r
                for r in self.conn.execute(
                    sa.text(
                        "SELECT code, community_code, ST_AsBinary(geom) AS wkb FROM grids"
                        " WHERE in_service = :yes AND community_code LIKE :p ORDER BY code"
                    ),
                    {**like, "yes": True},
                )
                if r.community_code[:6] in known
            ]
            shapes = np.array([shapely.from_wkb(bytes(r.wkb)) for r in rows], dtype=object)
            tree = shapely.STRtree(shapes) if rows else None
            self.cache[city] = (counties, [r.community_code[:6] for r in rows], shapes, tree)
        return self.cache[city]

    def of_point(self, city: str, lon: float, lat: float) -> str | None:
        """The county under ``city`` for a point: the one covering it (the lowest code on a
        shared edge), else the county of the grid in service under the city nearest on the
        ground (ties to the lowest grid code), else the lowest county code; None when no
        county is under the city. As ``IndexSnapshot.nearest_county`` measures: the grid
        nearest in degrees bounds the distance, and the grids within it are measured in a
        local plane of metres."""
        import numpy as np
        import shapely

        from gridapi.geo.geodesy import metres_per_degree, metres_to_degrees

        counties, grid_counties, shapes, tree = self.under(city)
        if not counties:
            return None
        point = shapely.points(lon, lat)
        for code, boundary in counties:
            if boundary is not None and shapely.covers(boundary, point):
                return code
        if tree is None:
            return counties[0][0]
        kx, ky = metres_per_degree(lat)

        def to_plane(c: np.ndarray) -> np.ndarray:
            return np.column_stack([(c[:, 0] - lon) * kx, (c[:, 1] - lat) * ky])

        origin = shapely.points(0.0, 0.0)
        first = int(tree.nearest(point))
        reach = float(shapely.distance(shapely.transform(shapes[first], to_plane), origin))
        near = tree.query(point, predicate="dwithin", distance=metres_to_degrees(reach, lat))
        candidates = np.sort(near) if near.size else np.array([first])
        planar = shapely.transform(shapes[candidates], to_plane)
        return grid_counties[int(candidates[int(np.argmin(shapely.distance(planar, origin)))])]


def _ids(conn: Any, sql: str, **params: Any) -> list[int]:
    stmt = sa.text(sql)
    for name, value in params.items():
        if isinstance(value, list):
            stmt = stmt.bindparams(sa.bindparam(name, expanding=True))
    return [r[0] for r in conn.execute(stmt, params)]


def _move_city_rows() -> None:
    conn = op.get_bind()
    counties = _Counties(conn)
    houses = conn.execute(
        sa.text(
            "SELECT id, county_code, lon, lat FROM houses WHERE substr(county_code, 5, 2) = '00'"
            " AND lon IS NOT NULL AND lat IS NOT NULL ORDER BY id"
        )
    ).all()
    for house in houses:
        city = house.county_code
        county = counties.of_point(city, house.lon, house.lat)
        if county is None:
            continue
        households = _ids(
            conn,
            "SELECT id FROM households WHERE house_id = :h AND county_code = :city",
            h=house.id,
            city=city,
        )
        persons = _ids(
            conn,
            "SELECT id FROM persons WHERE county_code = :city AND (house_id = :h"
            + (" OR household_id IN :households)" if households else ")"),
            h=house.id,
            city=city,
            **({"households": households} if households else {}),
        )
        if (
            households
            and conn.execute(
                sa.text(
                    "SELECT count(*) FROM households WHERE county_code = :county AND number IN"
                    " (SELECT number FROM households WHERE id IN :ids)"
                ).bindparams(sa.bindparam("ids", expanding=True)),
                {"county": county, "ids": households},
            ).scalar_one()
        ):
            log.warning(
                "house %s stays in %s: a 户号 of it is registered in %s", house.id, city, county
            )
            continue
        if (
            persons
            and conn.execute(
                sa.text(
                    "SELECT count(*) FROM persons WHERE county_code = :county AND id_number_hmac IN"
                    " (SELECT id_number_hmac FROM persons WHERE id IN :ids)"
                ).bindparams(sa.bindparam("ids", expanding=True)),
                {"county": county, "ids": persons},
            ).scalar_one()
        ):
            log.warning("house %s stays in %s: an ID number of it is in %s", house.id, city, county)
            continue
        visits = []
        if persons:
            visits += _ids(
                conn,
                "SELECT id FROM visits WHERE county_code = :city AND person_id IN :p",
                city=city,
                p=persons,
            )
        if households:
            visits += _ids(
                conn,
                "SELECT id FROM visits WHERE county_code = :city AND person_id IS NULL"
                " AND household_id IN :hh",
                city=city,
                hh=households,
            )
        records = (
            _ids(
                conn,
                "SELECT id FROM special_group_records WHERE county_code = :city"
                " AND person_id IN :p",
                city=city,
                p=persons,
            )
            if persons
            else []
        )
        place = {"county": county, "region": county.ljust(12, "0")}
        for table, ids, versioned in (
            ("houses", [house.id], True),
            ("households", households, True),
            ("persons", persons, True),
            ("visits", visits, False),
            ("special_group_records", records, False),
        ):
            if not ids:
                continue
            bump = ", version = version + 1" if versioned else ""
            conn.execute(
                sa.text(
                    f"UPDATE {table} SET county_code = :county, region_code = :region{bump}"
                    " WHERE id IN :ids"
                ).bindparams(sa.bindparam("ids", expanding=True)),
                {**place, "ids": ids},
            )


# --- houses registered twice ------------------------------------------------------------------


def _merge_duplicates() -> None:
    conn = op.get_bind()
    rows = conn.execute(
        sa.text(
            "SELECT id, county_code, region_code, grid, address_key FROM ("
            " SELECT id, county_code, region_code, coalesce(grid_code, '') AS grid, address_key,"
            " count(*) OVER (PARTITION BY county_code, region_code, coalesce(grid_code, ''),"
            " address_key) AS n FROM houses) AS h "
            "WHERE n > 1 ORDER BY county_code, region_code, grid, address_key, id"
        )
    ).all()
    keeper: dict[tuple[str, str, str, str], int] = {}
    merged: dict[int, list[int]] = {}
    regions: dict[int, str] = {}
    for row in rows:
        key = (row.county_code, row.region_code, row.grid, row.address_key)
        if key not in keeper:
            keeper[key] = row.id
            regions[row.id] = row.region_code
        else:
            merged.setdefault(keeper[key], []).append(row.id)
    now = datetime.now(UTC)
    expanding = sa.bindparam("others", expanding=True)
    for kept, others in merged.items():
        params = {"kept": kept, "others": others}
        for table, versioned in (
            ("households", True),
            ("persons", True),
            ("task_items", False),
            ("patrol_checkins", False),
        ):
            bump = ", version = version + 1" if versioned else ""
            conn.execute(
                sa.text(
                    f"UPDATE {table} SET house_id = :kept{bump} WHERE house_id IN :others"
                ).bindparams(expanding),
                params,
            )
        conn.execute(
            sa.text("DELETE FROM houses WHERE id IN :others").bindparams(expanding), params
        )
        op.bulk_insert(
            _AUDIT,
            [
                {
                    "at": now,
                    "actor_type": "system",
                    "actor_id": f"migration:{revision}",
                    "actor_name": f"migration {revision}",
                    "action": "house.merge",
                    "object_type": "house",
                    "object_id": str(kept),
                    "region_code": regions[kept],
                    "summary": {
                        "merged": others,
                        "reason": "registered again at the same address (as compared) and place",
                    },
                }
            ],
        )


def upgrade() -> None:
    conn = op.get_bind()
    op.add_column(
        "houses",
        sa.Column("address_key", sa.String(300), server_default="", nullable=False),
    )
    if conn.dialect.name == "postgresql":  # SQLite would rebuild the table to drop it
        op.alter_column("houses", "address_key", server_default=None)
    _fill_address_keys(conn)
    op.drop_index("ix_houses_one_per_address_in_region", table_name="houses")
    op.drop_index("ix_houses_one_per_address_in_grid", table_name="houses")
    _move_city_rows()
    _merge_duplicates()
    op.create_index(
        "ix_houses_one_per_address_key_in_grid",
        "houses",
        ["county_code", "region_code", "grid_code", "address_key"],
        unique=True,
        postgresql_where=sa.text("grid_code IS NOT NULL"),
        sqlite_where=sa.text("grid_code IS NOT NULL"),
    )
    op.create_index(
        "ix_houses_one_per_address_key_in_region",
        "houses",
        ["county_code", "region_code", "address_key"],
        unique=True,
        postgresql_where=sa.text("grid_code IS NULL"),
        sqlite_where=sa.text("grid_code IS NULL"),
    )


def downgrade() -> None:
    # Merged houses are not split again, nor are moved rows given back a city's code (no
    # county's). Addresses unique as compared are unique as typed: 0039's indexes hold.
    op.drop_index("ix_houses_one_per_address_key_in_region", table_name="houses")
    op.drop_index("ix_houses_one_per_address_key_in_grid", table_name="houses")
    op.create_index(
        "ix_houses_one_per_address_in_grid",
        "houses",
        ["county_code", "region_code", "grid_code", "address"],
        unique=True,
        postgresql_where=sa.text("grid_code IS NOT NULL"),
        sqlite_where=sa.text("grid_code IS NOT NULL"),
    )
    op.create_index(
        "ix_houses_one_per_address_in_region",
        "houses",
        ["county_code", "region_code", "address"],
        unique=True,
        postgresql_where=sa.text("grid_code IS NULL"),
        sqlite_where=sa.text("grid_code IS NULL"),
    )
    # Not batch mode: SQLite (3.35+) drops a column in place, keeping the table's triggers
    # and SpatiaLite's registration of its geometry.
    op.drop_column("houses", "address_key")
