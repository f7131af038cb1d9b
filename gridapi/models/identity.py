"""People and apps that use the API: roles, users, grid rosters, departments, clients."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    CheckConstraint,
    Date,
    ForeignKey,
    Index,
    Integer,
    String,
    func,
    literal_column,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from .base import Base, UTCDateTime, utcnow


class Role(Base):
    """A role and the permissions it carries (data, so a county can adjust them)."""

    __tablename__ = "roles"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    title: Mapped[str] = mapped_column(String(64))
    rank: Mapped[int] = mapped_column(Integer)
    permissions: Mapped[list[str]] = mapped_column(JSON)


class Department(Base):
    """A functional department (职能部门) that cases can be dispatched to."""

    __tablename__ = "departments"

    id: Mapped[int] = mapped_column(primary_key=True)
    code: Mapped[str] = mapped_column(String(32), unique=True)
    name: Mapped[str] = mapped_column(String(100))
    region_code: Mapped[str] = mapped_column(String(12), index=True)
    is_active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class User(Base):
    """A person who signs in. ``region_code`` is where the account lives in the tree: its
    scope region, or the community of its grids; every scope check on users uses it."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    display_name: Mapped[str] = mapped_column(String(100))
    # Staff phone numbers are personal data: only a keyed hash (for sign-in) and a mask.
    phone_hmac: Mapped[str | None] = mapped_column(String(64), unique=True)
    phone_masked: Mapped[str | None] = mapped_column(String(20))
    password_hash: Mapped[str] = mapped_column(String(200))
    role_name: Mapped[str] = mapped_column(ForeignKey("roles.name"))
    scope_region_code: Mapped[str | None] = mapped_column(String(12))
    region_code: Mapped[str | None] = mapped_column(String(12), index=True)
    department_id: Mapped[int | None] = mapped_column(ForeignKey("departments.id"))
    is_active: Mapped[bool] = mapped_column(Boolean, default=True)
    token_version: Mapped[int] = mapped_column(Integer, default=0)
    password_changed_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)

    # Usernames are one regardless of case (sign-in matches them so): "Alice" and "alice"
    # cannot both exist, also when two requests create them at once (migration 0031).
    __table_args__ = (Index("uq_users_username_lower", func.lower(username), unique=True),)


class GridAssignment(Base):
    """Who is responsible for a grid over which days (the roster, with history)."""

    __tablename__ = "grid_assignments"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    grid_code: Mapped[str] = mapped_column(String(15))
    county_code: Mapped[str] = mapped_column(String(6))
    is_primary: Mapped[bool] = mapped_column(Boolean, default=False)
    valid_from: Mapped[date] = mapped_column(Date)
    valid_to: Mapped[date | None] = mapped_column(Date)

    __table_args__ = (
        CheckConstraint("valid_to IS NULL OR valid_to >= valid_from", name="validity"),
        Index("ix_grid_assignments_user_id", "user_id"),
        Index("ix_grid_assignments_grid_code", "grid_code", "valid_from"),
    )


class RefreshToken(Base):
    """One refresh token of a rotation family; only its digest is stored."""

    __tablename__ = "refresh_tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    family_id: Mapped[str] = mapped_column(String(32), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    issued_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class ApiClient(Base):
    """A third-party app; its key is shown once and only a digest is kept."""

    __tablename__ = "api_clients"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    key_prefix: Mapped[str] = mapped_column(String(16), unique=True)
    key_hash: Mapped[str] = mapped_column(String(64))
    scopes: Mapped[list[str]] = mapped_column(JSON)
    scope_region_code: Mapped[str | None] = mapped_column(String(12))
    rate_limit: Mapped[str] = mapped_column(String(40))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    created_by: Mapped[str | None] = mapped_column(String(64))
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


#: The residents an audit row about several names (``summary.person_ids``), as jsonb, and
#: the rows that may name several: PostgreSQL's index on them and the query that reads them
#: (``services.audit.about_person``) are written with the same text, as a partial index
#: must be.
PERSON_IDS_SQL = "((summary -> 'person_ids')::jsonb)"
SHARED_ROWS_SQL = "object_id IS NULL AND action = 'person.lookup'"


class AuditEntry(Base):
    """One append-only audit row: a write, or a read of unmasked personal data.

    Database triggers refuse UPDATE and DELETE on this table on both engines.
    """

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    actor_type: Mapped[str] = mapped_column(String(16))
    actor_id: Mapped[str | None] = mapped_column(String(64))
    actor_name: Mapped[str | None] = mapped_column(String(100))
    action: Mapped[str] = mapped_column(String(64))
    object_type: Mapped[str] = mapped_column(String(32))
    object_id: Mapped[str | None] = mapped_column(String(64))
    region_code: Mapped[str | None] = mapped_column(String(12))
    summary: Mapped[dict[str, Any]] = mapped_column(JSON)
    request_id: Mapped[str | None] = mapped_column(String(64))
    client_address: Mapped[str | None] = mapped_column(String(64))

    __table_args__ = (
        Index("ix_audit_log_region_code_at", "region_code", "at"),
        Index("ix_audit_log_object", "object_type", "object_id"),
        Index("ix_audit_log_at", "at"),
        # The lookups that found several residents, by resident (``audit.about_person``):
        # without it a resident's history read every such row (PostgreSQL only; 0060).
        Index(
            "ix_audit_log_person_ids",
            literal_column(PERSON_IDS_SQL).label("person_ids"),
            postgresql_using="gin",
            postgresql_ops={"person_ids": "jsonb_path_ops"},
            postgresql_where=text(SHARED_ROWS_SQL),
        ).ddl_if(dialect="postgresql"),
    )
