"""Special-group records (特殊人群/重点人员): released prisoners, community-corrections
subjects, drug users, people with severe mental disorders, at-risk youth, petitioners.

Their own table, read only behind ``special_groups:read``; nothing else in the API joins,
counts, lists or exports them for a caller without it (the person views never mention them,
the audit log hides their rows). The resource audits every record it returns.
"""

from __future__ import annotations

from datetime import date
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from .. import clock
from ..errors import Conflict, NotFound, Unprocessable
from ..models import Role, User
from ..models.register import Person, SpecialGroupRecord, new_uid
from ..personal import mask_name
from ..scope import Scope
from .cursors import one_page, page_by_id
from .register import Keys, _area_filters, get_person, in_scope
from .uniques import add_or_conflict

TYPE_NAMES = {
    "released_prisoner": "刑满释放人员",
    "community_correction": "社区矫正对象",
    "drug_user": "吸毒人员",
    "severe_mental_disorder": "严重精神障碍患者",
    "at_risk_youth": "重点青少年",
    "petitioner": "信访重点人员",
}
READ_PERMISSION = "special_groups:read"


def _not_found() -> NotFound:
    return NotFound("The special-group record does not exist or is outside your scope.")


def _check_helper(session: Session, helper_id: int | None, scope: Scope) -> None:
    """A responsible helper must be an active account in scope that may read the record."""
    if helper_id is None:
        return
    from .identity import users_query

    user = session.scalars(users_query(scope).where(User.id == helper_id)).first()
    permissions = set(session.get(Role, user.role_name).permissions) if user else set()
    if user is None or not user.is_active or READ_PERMISSION not in permissions:
        raise Unprocessable(
            "Unknown helper.",
            errors={
                "json": {
                    "helper_id": [
                        "must be an active account in your scope holding special_groups:read"
                    ]
                }
            },
        )


def _check_dates(started_on: date | None, ended_on: date | None) -> None:
    """Refuse (422 naming ``ended_on``) a record that ends before it starts."""
    if started_on and ended_on and ended_on < started_on:
        raise Unprocessable(
            "The record ends before it starts.",
            errors={"json": {"ended_on": ["must not be before started_on"]}},
        )


def create_record(
    session: Session, data: dict[str, Any], *, scope: Scope, keys: Keys, actor: str
) -> SpecialGroupRecord:
    # The resident is locked as a move locks them (as for a visit): a record opened while
    # they move takes their new place, never the old one (PostgreSQL; SQLite serialises
    # writers), since the move takes along only the records it can see.
    person = get_person(session, data["person_id"], scope, field="person_id", for_update=True)
    _check_helper(session, data.get("helper_id"), scope)

    def taken() -> Conflict | None:
        found = session.scalar(
            select(SpecialGroupRecord.id).where(
                SpecialGroupRecord.person_id == person.id, SpecialGroupRecord.type == data["type"]
            )
        )
        if found is None:
            return None
        return Conflict(
            "The resident has a record of this type already.",
            errors={"json": {"type": ["the resident has a record of this type already"]}},
        )

    started_on = data.get("started_on") or clock.today()
    # A change was checked, a create not: records were opened (active) ending before they
    # started.
    _check_dates(started_on, data.get("ended_on"))
    if (error := taken()) is not None:
        raise error
    record = SpecialGroupRecord(
        uid=new_uid(),
        county_code=person.county_code,
        region_code=person.region_code,
        grid_code=person.grid_code,
        person_id=person.id,
        type=data["type"],
        attention_level=data.get("attention_level", "medium"),
        helper_id=data.get("helper_id"),
        status=data.get("status", "active"),
        started_on=started_on,
        ended_on=data.get("ended_on"),
        created_by=actor,
    )
    record.notes_enc = keys.seal("special_group_records", "notes", record.uid, data.get("notes"))
    # One made by another request between the look-up and the insert: the same answer.
    add_or_conflict(session, record, taken)
    return record


def get_record(session: Session, record_id: int, scope: Scope) -> SpecialGroupRecord:
    record = session.scalars(
        select(SpecialGroupRecord).where(
            SpecialGroupRecord.id == record_id, in_scope(scope, SpecialGroupRecord)
        )
    ).first()
    if record is None:
        raise _not_found()
    return record


def update_record(
    session: Session, record_id: int, data: dict[str, Any], *, scope: Scope, keys: Keys
) -> tuple[SpecialGroupRecord, list[str]]:
    record = get_record(session, record_id, scope)
    if "helper_id" in data:
        _check_helper(session, data["helper_id"], scope)
    for key in ("attention_level", "helper_id", "status", "started_on", "ended_on"):
        if key in data:
            setattr(record, key, data[key])
    if "notes" in data:
        record.notes_enc = keys.seal("special_group_records", "notes", record.uid, data["notes"])
    _check_dates(record.started_on, record.ended_on)  # the date not sent as stored
    session.flush()
    return record, sorted(data)


def list_records(session: Session, scope: Scope, args: dict[str, Any]) -> list[SpecialGroupRecord]:
    stmt = _area_filters(
        select(SpecialGroupRecord).where(in_scope(scope, SpecialGroupRecord)),
        SpecialGroupRecord,
        args,
    )
    for key in ("type", "attention_level", "status", "person_id", "helper_id"):
        if args.get(key) is not None:  # person_id=0 names no one, not everyone
            stmt = stmt.where(getattr(SpecialGroupRecord, key) == args[key])
    limit = args.get("limit", 50)
    page = page_by_id(stmt, SpecialGroupRecord.id, args.get("after"), limit)
    return one_page(session.scalars(page), limit)


def record_views(
    session: Session, records: list[SpecialGroupRecord], keys: Keys
) -> list[dict[str, Any]]:
    ids = sorted({r.person_id for r in records})
    names = (
        dict(session.execute(select(Person.id, Person.name).where(Person.id.in_(ids))).all())
        if ids
        else {}
    )
    return [
        {
            "id": r.id,
            "person": {"id": r.person_id, "name": mask_name(names.get(r.person_id, ""))},
            "type": r.type,
            "type_name": TYPE_NAMES[r.type],
            "attention_level": r.attention_level,
            "helper_id": r.helper_id,
            "status": r.status,
            "notes": keys.open("special_group_records", "notes", r.uid, r.notes_enc),
            "started_on": r.started_on,
            "ended_on": r.ended_on,
            "grid": r.grid_code,
            "region_code": r.region_code,
            "created_at": r.created_at,
            "updated_at": r.updated_at,
        }
        for r in records
    ]
