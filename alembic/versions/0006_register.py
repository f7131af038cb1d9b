"""The register: houses, households, residents, visits, special-group records; permissions.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from geoalchemy2 import (
    Geometry,
    alembic_helpers,  # noqa: F401  (registers the geospatial operations)
)

import gridapi.models.base
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


# Frozen copy of the register permissions each stock role gains here (see
# gridapi.security.permissions): a county's own roles and changes are left alone.
_REGISTER = ["persons:read", "persons:write"]
_REGISTER_OFFICE = [
    *_REGISTER,
    "persons:import",
    "persons:unmask",
    "special_groups:read",
    "special_groups:write",
]
GRANTS = {
    "grid_worker": _REGISTER,
    "grid_chief": _REGISTER,
    "community_officer": _REGISTER_OFFICE,
    "township_office": _REGISTER_OFFICE,
    "county_centre": [*_REGISTER_OFFICE, "persons:erase"],
    "city_centre": [*_REGISTER_OFFICE, "persons:erase"],
    "admin": [*_REGISTER_OFFICE, "persons:erase"],
}


def _grant(grants: dict[str, list[str]], revoke: bool = False) -> None:
    roles = sa.table("roles", sa.column("name", sa.String), sa.column("permissions", sa.JSON))
    bind = op.get_bind()
    for name, current in bind.execute(sa.select(roles.c.name, roles.c.permissions)).all():
        extra = set(grants.get(name, []))
        if not extra:
            continue
        new = set(current) - extra if revoke else set(current) | extra
        bind.execute(roles.update().where(roles.c.name == name).values(permissions=sorted(new)))


def upgrade() -> None:
    op.create_geospatial_table(
        "houses",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("county_code", sa.String(length=6), nullable=False),
        sa.Column("region_code", sa.String(length=12), nullable=False),
        sa.Column("grid_code", sa.String(length=15), nullable=True),
        sa.Column("address", sa.String(length=300), nullable=False),
        sa.Column("use", sa.String(length=16), nullable=False),
        sa.Column("lon", sa.Float(), nullable=True),
        sa.Column("lat", sa.Float(), nullable=True),
        sa.Column(
            "location",
            Geometry(
                geometry_type="POINT",
                srid=4326,
                dimension=2,
                spatial_index=False,
                from_text="ST_GeomFromEWKT",
                name="geometry",
            ),
            nullable=True,
        ),
        sa.Column("routing_method", sa.String(length=10), nullable=False),
        sa.Column("created_by", sa.String(length=40), nullable=False),
        sa.Column("created_at", gridapi.models.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", gridapi.models.base.UTCDateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "use IN ('self_occupied', 'rented', 'vacant', 'commercial')", name=op.f("ck_houses_use")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_houses")),
    )
    op.create_geospatial_index(
        "idx_houses_location",
        "houses",
        ["location"],
        unique=False,
        postgresql_using="gist",
        postgresql_ops={},
    )
    op.create_index(
        "ix_houses_county_code_address", "houses", ["county_code", "address"], unique=False
    )
    op.create_index("ix_houses_grid_code", "houses", ["grid_code"], unique=False)
    op.create_index(
        "ix_houses_region_code_address", "houses", ["region_code", "address"], unique=False
    )

    op.create_table(
        "households",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("county_code", sa.String(length=6), nullable=False),
        sa.Column("region_code", sa.String(length=12), nullable=False),
        sa.Column("grid_code", sa.String(length=15), nullable=True),
        sa.Column("number", sa.String(length=32), nullable=False),
        sa.Column("house_id", sa.Integer(), nullable=True),
        sa.Column("type", sa.String(length=16), nullable=False),
        sa.Column("created_by", sa.String(length=40), nullable=False),
        sa.Column("created_at", gridapi.models.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", gridapi.models.base.UTCDateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "type IN ('registered', 'floating', 'rental')", name=op.f("ck_households_type")
        ),
        sa.ForeignKeyConstraint(
            ["house_id"], ["houses.id"], name=op.f("fk_households_house_id_houses")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_households")),
        sa.UniqueConstraint("county_code", "number", name=op.f("uq_households_county_code_number")),
    )
    op.create_index("ix_households_grid_code", "households", ["grid_code"], unique=False)
    op.create_index("ix_households_house_id", "households", ["house_id"], unique=False)
    op.create_index("ix_households_region_code", "households", ["region_code"], unique=False)

    op.create_table(
        "persons",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("uid", sa.String(length=32), nullable=False),
        sa.Column("county_code", sa.String(length=6), nullable=False),
        sa.Column("region_code", sa.String(length=12), nullable=False),
        sa.Column("grid_code", sa.String(length=15), nullable=True),
        sa.Column("household_id", sa.Integer(), nullable=True),
        sa.Column("house_id", sa.Integer(), nullable=True),
        sa.Column("relation", sa.String(length=16), nullable=True),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("id_number_enc", sa.Text(), nullable=True),
        sa.Column("id_number_hmac", sa.String(length=64), nullable=True),
        sa.Column("phone_enc", sa.Text(), nullable=True),
        sa.Column("phone_hmac", sa.String(length=64), nullable=True),
        sa.Column("gender", sa.String(length=8), nullable=True),
        sa.Column("birth_date", sa.Date(), nullable=True),
        sa.Column("ethnicity", sa.String(length=32), nullable=True),
        sa.Column("population_type", sa.String(length=16), nullable=False),
        sa.Column("current_address", sa.String(length=300), nullable=True),
        sa.Column("registered_address", sa.String(length=300), nullable=True),
        sa.Column("created_by", sa.String(length=40), nullable=False),
        sa.Column("created_at", gridapi.models.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", gridapi.models.base.UTCDateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "gender IS NULL OR gender IN ('male', 'female')", name=op.f("ck_persons_gender")
        ),
        sa.CheckConstraint(
            "population_type IN ('registered', 'floating', 'unregistered', 'foreign')",
            name=op.f("ck_persons_population_type"),
        ),
        sa.CheckConstraint(
            "relation IS NULL OR relation IN ('head', 'spouse', 'child', 'parent', 'grandchild', 'grandparent', 'sibling', 'child_in_law', 'tenant', 'other')",
            name=op.f("ck_persons_relation"),
        ),
        sa.ForeignKeyConstraint(
            ["house_id"], ["houses.id"], name=op.f("fk_persons_house_id_houses")
        ),
        sa.ForeignKeyConstraint(
            ["household_id"], ["households.id"], name=op.f("fk_persons_household_id_households")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_persons")),
        sa.UniqueConstraint(
            "county_code", "id_number_hmac", name=op.f("uq_persons_county_code_id_number_hmac")
        ),
        sa.UniqueConstraint("uid", name=op.f("uq_persons_uid")),
    )
    op.create_index("ix_persons_grid_code_name", "persons", ["grid_code", "name"], unique=False)
    op.create_index("ix_persons_house_id", "persons", ["house_id"], unique=False)
    op.create_index("ix_persons_household_id", "persons", ["household_id"], unique=False)
    op.create_index("ix_persons_name", "persons", ["name"], unique=False)
    op.create_index(
        "ix_persons_one_head",
        "persons",
        ["household_id"],
        unique=True,
        postgresql_where=sa.text("relation = 'head'"),
        sqlite_where=sa.text("relation = 'head'"),
    )
    op.create_index("ix_persons_phone_hmac", "persons", ["phone_hmac"], unique=False)
    op.create_index("ix_persons_region_code_name", "persons", ["region_code", "name"], unique=False)

    op.create_table(
        "special_group_records",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("uid", sa.String(length=32), nullable=False),
        sa.Column("county_code", sa.String(length=6), nullable=False),
        sa.Column("region_code", sa.String(length=12), nullable=False),
        sa.Column("grid_code", sa.String(length=15), nullable=True),
        sa.Column("person_id", sa.Integer(), nullable=False),
        sa.Column("type", sa.String(length=32), nullable=False),
        sa.Column("attention_level", sa.String(length=8), nullable=False),
        sa.Column("helper_id", sa.Integer(), nullable=True),
        sa.Column("status", sa.String(length=12), nullable=False),
        sa.Column("notes_enc", sa.Text(), nullable=True),
        sa.Column("started_on", sa.Date(), nullable=True),
        sa.Column("ended_on", sa.Date(), nullable=True),
        sa.Column("created_by", sa.String(length=40), nullable=False),
        sa.Column("created_at", gridapi.models.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", gridapi.models.base.UTCDateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "attention_level IN ('high', 'medium', 'low')",
            name=op.f("ck_special_group_records_attention_level"),
        ),
        sa.CheckConstraint(
            "status IN ('active', 'suspended', 'closed')",
            name=op.f("ck_special_group_records_status"),
        ),
        sa.CheckConstraint(
            "type IN ('released_prisoner', 'community_correction', 'drug_user', 'severe_mental_disorder', 'at_risk_youth', 'petitioner')",
            name=op.f("ck_special_group_records_type"),
        ),
        sa.ForeignKeyConstraint(
            ["helper_id"], ["users.id"], name=op.f("fk_special_group_records_helper_id_users")
        ),
        sa.ForeignKeyConstraint(
            ["person_id"],
            ["persons.id"],
            name=op.f("fk_special_group_records_person_id_persons"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_special_group_records")),
        sa.UniqueConstraint(
            "person_id", "type", name=op.f("uq_special_group_records_person_id_type")
        ),
        sa.UniqueConstraint("uid", name=op.f("uq_special_group_records_uid")),
    )
    op.create_index(
        "ix_special_group_records_grid_code", "special_group_records", ["grid_code"], unique=False
    )
    op.create_index(
        "ix_special_group_records_helper_id", "special_group_records", ["helper_id"], unique=False
    )
    op.create_index(
        "ix_special_group_records_region_code",
        "special_group_records",
        ["region_code", "type"],
        unique=False,
    )

    op.create_table(
        "visits",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("county_code", sa.String(length=6), nullable=False),
        sa.Column("region_code", sa.String(length=12), nullable=False),
        sa.Column("grid_code", sa.String(length=15), nullable=True),
        sa.Column("worker_id", sa.Integer(), nullable=True),
        sa.Column("visited_at", gridapi.models.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column("place", sa.String(length=300), nullable=False),
        sa.Column("lon", sa.Float(), nullable=True),
        sa.Column("lat", sa.Float(), nullable=True),
        sa.Column("household_id", sa.Integer(), nullable=True),
        sa.Column("person_id", sa.Integer(), nullable=True),
        sa.Column("findings", sa.Text(), nullable=False),
        sa.Column("follow_up", sa.Text(), nullable=False),
        sa.Column("case_id", sa.Integer(), nullable=True),
        sa.Column("created_by", sa.String(length=40), nullable=False),
        sa.Column("created_at", gridapi.models.base.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["case_id"], ["cases.id"], name=op.f("fk_visits_case_id_cases")),
        sa.ForeignKeyConstraint(
            ["household_id"], ["households.id"], name=op.f("fk_visits_household_id_households")
        ),
        sa.ForeignKeyConstraint(
            ["person_id"],
            ["persons.id"],
            name=op.f("fk_visits_person_id_persons"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["worker_id"], ["users.id"], name=op.f("fk_visits_worker_id_users")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_visits")),
    )
    op.create_index(
        "ix_visits_grid_code_visited_at", "visits", ["grid_code", "visited_at"], unique=False
    )
    op.create_index("ix_visits_household_id", "visits", ["household_id"], unique=False)
    op.create_index("ix_visits_person_id", "visits", ["person_id"], unique=False)
    op.create_index(
        "ix_visits_region_code_visited_at", "visits", ["region_code", "visited_at"], unique=False
    )
    op.create_index("ix_visits_worker_id", "visits", ["worker_id"], unique=False)

    _grant(GRANTS)


def downgrade() -> None:
    _grant(GRANTS, revoke=True)
    op.drop_index("ix_visits_worker_id", table_name="visits")
    op.drop_index("ix_visits_region_code_visited_at", table_name="visits")
    op.drop_index("ix_visits_person_id", table_name="visits")
    op.drop_index("ix_visits_household_id", table_name="visits")
    op.drop_index("ix_visits_grid_code_visited_at", table_name="visits")

    op.drop_table("visits")
    op.drop_index("ix_special_group_records_region_code", table_name="special_group_records")
    op.drop_index("ix_special_group_records_helper_id", table_name="special_group_records")
    op.drop_index("ix_special_group_records_grid_code", table_name="special_group_records")

    op.drop_table("special_group_records")
    op.drop_index("ix_persons_region_code_name", table_name="persons")
    op.drop_index("ix_persons_phone_hmac", table_name="persons")
    op.drop_index(
        "ix_persons_one_head",
        table_name="persons",
        postgresql_where=sa.text("relation = 'head'"),
        sqlite_where=sa.text("relation = 'head'"),
    )
    op.drop_index("ix_persons_name", table_name="persons")
    op.drop_index("ix_persons_household_id", table_name="persons")
    op.drop_index("ix_persons_house_id", table_name="persons")
    op.drop_index("ix_persons_grid_code_name", table_name="persons")

    op.drop_table("persons")
    op.drop_index("ix_households_region_code", table_name="households")
    op.drop_index("ix_households_house_id", table_name="households")
    op.drop_index("ix_households_grid_code", table_name="households")

    op.drop_table("households")
    op.drop_index("ix_houses_region_code_address", table_name="houses")
    op.drop_index("ix_houses_grid_code", table_name="houses")
    op.drop_index("ix_houses_county_code_address", table_name="houses")
    op.drop_geospatial_index(
        "idx_houses_location", table_name="houses", postgresql_using="gist", column_name="location"
    )

    op.drop_geospatial_table("houses")
