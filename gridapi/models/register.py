"""The register of houses, households and residents (实有房屋/户/实有人口), visits (走访) and
special-group records (特殊人群).

ID numbers, phone numbers and special-group notes are stored only encrypted (columns ending
``_enc``, see ``gridapi.security.fields``), bound to the row by its ``uid``; exact-match search
goes through the keyed hashes in the ``_hmac`` columns. Every table carries ``county_code``
(the Citus distribution key, and the unit ID numbers are unique within) and the community
(``region_code``) and grid it belongs to, which is what area scope is checked against.
"""

from __future__ import annotations

import re
import unicodedata
import uuid
from datetime import date, datetime

from geoalchemy2 import Geometry
from sqlalchemy import (
    CheckConstraint,
    Date,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column, validates

from .base import Base, UTCDateTime, utcnow

HOUSE_USES = ("self_occupied", "rented", "vacant", "commercial")
HOUSEHOLD_TYPES = ("registered", "floating", "rental")
POPULATION_TYPES = ("registered", "floating", "unregistered", "foreign")
RELATIONS = (
    "head",
    "spouse",
    "child",
    "parent",
    "grandchild",
    "grandparent",
    "sibling",
    "child_in_law",
    "tenant",
    "other",
)
SPECIAL_GROUP_TYPES = (
    "released_prisoner",
    "community_correction",
    "drug_user",
    "severe_mental_disorder",
    "at_risk_youth",
    "petitioner",
)
ATTENTION_LEVELS = ("high", "medium", "low")
SPECIAL_GROUP_STATUSES = ("active", "suspended", "closed")

#: Why a resident is erased: the codes the audit log keeps (``reason_code``).
ERASE_REASONS = (
    "moved_away",  # 迁出
    "deceased",  # 死亡
    "subject_request",  # 本人申请删除 (PIPL art. 47)
    "duplicate",  # 重复登记
    "entered_in_error",  # 误登记
    "retention_expired",  # 保存期限届满
    "other",
)


def new_uid() -> str:
    return uuid.uuid4().hex


_WHITESPACE = re.compile(r"\s+")


def address_key(address: str) -> str:
    """Return the form in which house addresses are compared: Unicode NFKC (full-width
    digits, letters and spaces typed with a Chinese input method are the ASCII ones: ３号楼
    is 3号楼), case-folded ("A座" is "a座"), without whitespace ("3号楼 2单元" is
    "3号楼2单元"). The model, the API's look-ups and search, and the import compare by it;
    migrations keep a frozen copy (0047 this one, 0046 the one before)."""
    return _WHITESPACE.sub("", unicodedata.normalize("NFKC", address).casefold())


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class House(Base):
    """A house or building unit (实有房屋), routed to a grid by its location like a case."""

    __tablename__ = "houses"

    id: Mapped[int] = mapped_column(primary_key=True)
    county_code: Mapped[str] = mapped_column(String(6))
    region_code: Mapped[str] = mapped_column(String(12))
    grid_code: Mapped[str | None] = mapped_column(String(15))
    address: Mapped[str] = mapped_column(String(300))  # as typed (but for spaces around it)
    # The address as compared (``address_key``), set with the address: what the unique
    # indexes hold, so "３号楼" and "3号楼", "A座" and "a座", "3号楼 2单元" and "3号楼2单元"
    # are one house.
    address_key: Mapped[str] = mapped_column(String(300))
    use: Mapped[str] = mapped_column(String(16), default="self_occupied")
    lon: Mapped[float | None] = mapped_column(Float)
    lat: Mapped[float | None] = mapped_column(Float)
    location = mapped_column(Geometry("POINT", srid=4326, spatial_index=True), nullable=True)
    routing_method: Mapped[str] = mapped_column(String(10), default="given")
    created_by: Mapped[str] = mapped_column(String(40))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    version: Mapped[int] = mapped_column(Integer, default=1, server_default=text("1"))

    __mapper_args__ = {"version_id_col": version}

    __table_args__ = (
        CheckConstraint(_in("use", HOUSE_USES), name="use"),
        Index("ix_houses_region_code_address", "region_code", "address"),
        Index("ix_houses_grid_code", "grid_code"),
        Index("ix_houses_county_code_address", "county_code", "address"),
        # A house is its address (as compared: ``address_key``) at its place (community and
        # grid): registered once, by the API and the import alike (services.register.house_at).
        # Two partial indexes, since NULLs are distinct in a unique index on both engines:
        # houses of a grid, and houses placed in a region without a grid.
        Index(
            "ix_houses_one_per_address_key_in_grid",
            "county_code",  # a unique index of a table distributed by county holds the key
            "region_code",
            "grid_code",
            "address_key",
            unique=True,
            postgresql_where=text("grid_code IS NOT NULL"),
            sqlite_where=text("grid_code IS NOT NULL"),
        ),
        Index(
            "ix_houses_one_per_address_key_in_region",
            "county_code",  # a unique index of a table distributed by county holds the key
            "region_code",
            "address_key",
            unique=True,
            postgresql_where=text("grid_code IS NULL"),
            sqlite_where=text("grid_code IS NULL"),
        ),
    )

    @validates("address")
    def _keep_address_key(self, _key: str, address: str) -> str:
        self.address_key = address_key(address)
        return address


class Household(Base):
    """A household (户): its number (户号, unique in the county), house and type. Its head
    (户长) is the member whose relation is ``head`` (at most one, by a partial index)."""

    __tablename__ = "households"

    id: Mapped[int] = mapped_column(primary_key=True)
    county_code: Mapped[str] = mapped_column(String(6))
    region_code: Mapped[str] = mapped_column(String(12))
    grid_code: Mapped[str | None] = mapped_column(String(15))
    number: Mapped[str] = mapped_column(String(32))
    house_id: Mapped[int | None] = mapped_column(ForeignKey("houses.id"))
    type: Mapped[str] = mapped_column(String(16), default="registered")
    created_by: Mapped[str] = mapped_column(String(40))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    version: Mapped[int] = mapped_column(Integer, default=1, server_default=text("1"))

    __mapper_args__ = {"version_id_col": version}

    __table_args__ = (
        CheckConstraint(_in("type", HOUSEHOLD_TYPES), name="type"),
        UniqueConstraint("county_code", "number"),
        Index("ix_households_region_code", "region_code"),
        Index("ix_households_grid_code", "grid_code"),
        Index("ix_households_house_id", "house_id"),
    )


class Person(Base):
    """A resident (实有人口). Gender and birth date derive from the ID number."""

    __tablename__ = "persons"

    id: Mapped[int] = mapped_column(primary_key=True)
    # The row identity bound into every ciphertext of the row (known before the insert).
    uid: Mapped[str] = mapped_column(String(32), unique=True, default=new_uid)
    county_code: Mapped[str] = mapped_column(String(6))
    region_code: Mapped[str] = mapped_column(String(12))
    grid_code: Mapped[str | None] = mapped_column(String(15))
    household_id: Mapped[int | None] = mapped_column(ForeignKey("households.id"))
    house_id: Mapped[int | None] = mapped_column(ForeignKey("houses.id"))
    relation: Mapped[str | None] = mapped_column(String(16))
    name: Mapped[str] = mapped_column(String(100))
    id_number_enc: Mapped[str | None] = mapped_column(Text)
    id_number_hmac: Mapped[str | None] = mapped_column(String(64))
    phone_enc: Mapped[str | None] = mapped_column(Text)
    phone_hmac: Mapped[str | None] = mapped_column(String(64))
    gender: Mapped[str | None] = mapped_column(String(8))
    birth_date: Mapped[date | None] = mapped_column(Date)
    ethnicity: Mapped[str | None] = mapped_column(String(32))
    population_type: Mapped[str] = mapped_column(String(16), default="registered")
    current_address: Mapped[str | None] = mapped_column(String(300))
    registered_address: Mapped[str | None] = mapped_column(String(300))
    # The addresses as compared (``address_key``), set with them: what the search matches,
    # so "3号楼 2单元" finds "3号楼2单元", "a座" finds "A座", "３号楼" finds "3号楼", as
    # houses are found. Text: a key may outgrow the address (compatibility characters
    # spelt out).
    current_address_key: Mapped[str | None] = mapped_column(Text)
    registered_address_key: Mapped[str | None] = mapped_column(Text)
    created_by: Mapped[str] = mapped_column(String(40))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    version: Mapped[int] = mapped_column(Integer, default=1, server_default=text("1"))

    __mapper_args__ = {"version_id_col": version}

    __table_args__ = (
        CheckConstraint(_in("population_type", POPULATION_TYPES), name="population_type"),
        CheckConstraint(f"relation IS NULL OR {_in('relation', RELATIONS)}", name="relation"),
        CheckConstraint("gender IS NULL OR gender IN ('male', 'female')", name="gender"),
        # One record of a person per county (registered at home, floating where they live).
        UniqueConstraint("county_code", "id_number_hmac"),
        Index("ix_persons_phone_hmac", "phone_hmac"),
        Index("ix_persons_region_code_name", "region_code", "name"),
        Index("ix_persons_grid_code_name", "grid_code", "name"),
        Index("ix_persons_household_id", "household_id"),
        Index(
            "ix_persons_one_head",
            "household_id",
            unique=True,
            postgresql_where=text("relation = 'head'"),
            sqlite_where=text("relation = 'head'"),
        ),
        Index("ix_persons_house_id", "house_id"),
        Index("ix_persons_name", "name"),
    )

    @validates("current_address", "registered_address")
    def _keep_address_keys(self, key: str, address: str | None) -> str | None:
        setattr(self, f"{key}_key", None if address is None else address_key(address))
        return address


class Visit(Base):
    """A home visit (走访): who, when, where, whom, what was found, what follows."""

    __tablename__ = "visits"

    id: Mapped[int] = mapped_column(primary_key=True)
    county_code: Mapped[str] = mapped_column(String(6))
    region_code: Mapped[str] = mapped_column(String(12))
    grid_code: Mapped[str | None] = mapped_column(String(15))
    worker_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    visited_at: Mapped[datetime] = mapped_column(UTCDateTime)
    place: Mapped[str] = mapped_column(String(300), default="")
    lon: Mapped[float | None] = mapped_column(Float)
    lat: Mapped[float | None] = mapped_column(Float)
    household_id: Mapped[int | None] = mapped_column(ForeignKey("households.id"))
    person_id: Mapped[int | None] = mapped_column(ForeignKey("persons.id", ondelete="SET NULL"))
    findings: Mapped[str] = mapped_column(Text, default="")
    follow_up: Mapped[str] = mapped_column(Text, default="")
    case_id: Mapped[int | None] = mapped_column(ForeignKey("cases.id"))
    created_by: Mapped[str] = mapped_column(String(40))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (
        Index("ix_visits_region_code_visited_at", "region_code", "visited_at"),
        Index("ix_visits_grid_code_visited_at", "grid_code", "visited_at"),
        Index("ix_visits_household_id", "household_id"),
        Index("ix_visits_person_id", "person_id"),
        Index("ix_visits_worker_id", "worker_id"),
    )


class SpecialGroupRecord(Base):
    """A special-group record (特殊人群/重点人员): its own table, behind its own permission,
    never joined into anything a caller without that permission can read."""

    __tablename__ = "special_group_records"

    id: Mapped[int] = mapped_column(primary_key=True)
    uid: Mapped[str] = mapped_column(String(32), unique=True, default=new_uid)
    county_code: Mapped[str] = mapped_column(String(6))
    region_code: Mapped[str] = mapped_column(String(12))
    grid_code: Mapped[str | None] = mapped_column(String(15))
    person_id: Mapped[int] = mapped_column(ForeignKey("persons.id", ondelete="CASCADE"))
    type: Mapped[str] = mapped_column(String(32))
    attention_level: Mapped[str] = mapped_column(String(8), default="medium")
    helper_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    status: Mapped[str] = mapped_column(String(12), default="active")
    notes_enc: Mapped[str | None] = mapped_column(Text)
    started_on: Mapped[date | None] = mapped_column(Date)
    ended_on: Mapped[date | None] = mapped_column(Date)
    created_by: Mapped[str] = mapped_column(String(40))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)

    __table_args__ = (
        CheckConstraint(_in("type", SPECIAL_GROUP_TYPES), name="type"),
        CheckConstraint(_in("attention_level", ATTENTION_LEVELS), name="attention_level"),
        CheckConstraint(_in("status", SPECIAL_GROUP_STATUSES), name="status"),
        UniqueConstraint("person_id", "type"),
        Index("ix_special_group_records_region_code", "region_code", "type"),
        Index("ix_special_group_records_grid_code", "grid_code"),
        Index("ix_special_group_records_helper_id", "helper_id"),
    )


# Which columns hold ciphertexts, for encryption, key rotation and the plaintext scan tests.
ENCRYPTED_COLUMNS = {
    "persons": ("id_number", "phone"),
    "special_group_records": ("notes",),
    "webhook_subscriptions": ("secret", "previous_secret"),
}

__all__ = [
    "ATTENTION_LEVELS",
    "ENCRYPTED_COLUMNS",
    "HOUSEHOLD_TYPES",
    "HOUSE_USES",
    "House",
    "Household",
    "POPULATION_TYPES",
    "Person",
    "RELATIONS",
    "SPECIAL_GROUP_STATUSES",
    "SPECIAL_GROUP_TYPES",
    "SpecialGroupRecord",
    "Visit",
    "address_key",
]
