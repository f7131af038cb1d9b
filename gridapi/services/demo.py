"""Loading the deterministic demo county through the same services as real imports."""

from __future__ import annotations

from datetime import UTC, datetime

from shapely.geometry import mapping
from sqlalchemy import select
from sqlalchemy.orm import Session

from ..demo import DemoCounty, build_demo_county
from ..errors import Unprocessable
from ..geo.shapes import geojson_point
from ..models import GridVersion
from ..scope import Scope
from .grids import activate_version, import_grid_version
from .regions import import_regions

EVERYTHING = Scope.everything()


def load_demo_county(session: Session, *, seed: int = 2024, tolerance_m2: float = 1.0) -> str:
    """Import the demo county's regions and grids and activate them, in ``session``; return a
    summary line. `gridapi demo-data` runs the same steps in transactions of their own
    (:func:`load_demo_regions`, :func:`load_demo_grids`, :func:`activate_demo_grids`).

    Loading the same seed again changes nothing.
    """
    county = build_demo_county(seed=seed)
    created = load_demo_regions(session, county)
    version = load_demo_grids(session, county, seed=seed, tolerance_m2=tolerance_m2)
    activate_demo_grids(session, version.id)
    return demo_county_summary(county, created, version)


def load_demo_regions(session: Session, county: DemoCounty) -> int:
    """Import the demo county's regions (those there already are left alone); return how
    many were new."""
    rows = [
        {
            "code": r["code"],
            "name": r["name"],
            "level": r["level"],
            "boundary": None if r.get("boundary") is None else mapping(r["boundary"]),
        }
        for r in county.regions
    ]
    result = import_regions(session, rows, scope=EVERYTHING)
    if result.errors:
        raise Unprocessable(f"demo regions failed: {result.errors[:3]}")
    return len(result.created)


def load_demo_grids(
    session: Session, county: DemoCounty, *, seed: int, tolerance_m2: float = 1.0
) -> GridVersion:
    """Return the demo grid version of ``seed``, imported as a draft unless an earlier run
    imported it (a version is imported whole, in one transaction: one found is complete)."""
    label = f"demo county (seed {seed})"
    existing = session.scalars(
        select(GridVersion).where(GridVersion.label == label).order_by(GridVersion.id.desc())
    ).first()
    if existing is not None:
        return existing
    return import_grid_version(
        session,
        county.grids,
        label=label,
        source="demo",
        tolerance_m2=tolerance_m2,
        scope=EVERYTHING,
    )


def activate_demo_grids(session: Session, version_id: int) -> GridVersion:
    """Put the demo grid version in service (again: it changes nothing)."""
    activate_version(session, version_id, scope=EVERYTHING)
    version = session.get(GridVersion, version_id)
    assert version is not None
    return version


def demo_county_summary(county: DemoCounty, created: int, version: GridVersion) -> str:
    return (
        f"demo county {county.regions[2]['name']} ({county.regions[2]['code']}): "
        f"{len(county.regions)} regions ({created} new), grid version "
        f"{version.id} with {version.grid_count} grids, {version.error_count} errors, active"
    )


DEMO_PASSWORD = "Gridapi-Demo-2026"

#: The demo accounts, one of every role (``load_demo_users``).
DEMO_USERNAMES = (
    "admin", "city", "county", "township", "officer", "chief", "worker", "worker2", "worker3",
    "fire",
)  # fmt: skip


def demo_password_problem(password: str) -> str | None:
    """Return why ``password`` cannot be the demo accounts' (the password policy, which
    also refuses a password containing the username), or None."""
    from ..security.passwords import password_problems

    for username in DEMO_USERNAMES:
        problems = password_problems(password, username=username)
        if problems:
            return f"for the account {username!r}: {'; '.join(problems)}"
    return None


def load_demo_users(
    session: Session, password: str, phone_key: bytes, *, password_hash: str | None = None
) -> list[tuple[str, str, str, bool]]:
    """Create one account of every role with a realistic scope; return (username, role,
    where, whether it was created now).

    Existing accounts are left alone, their passwords too, so loading twice changes nothing.
    ``password_hash`` is ``hash_password(password)`` made before the caller's transaction
    began (as for ``create_user``): hashed here, argon2 ran once per account holding
    SQLite's one write lock.
    """
    from sqlalchemy import select as _select

    from ..models import Department, Grid, Region, User
    from .identity import create_department, create_user

    county = "320508000000"
    township = session.scalars(
        _select(Region.code)
        .where(Region.level == "township", Region.parent_code == county)
        .order_by(Region.code)
    ).first()
    communities = list(
        session.scalars(
            _select(Region.code)
            .where(Region.level == "village", Region.parent_code == township)
            .order_by(Region.code)
        )
    )
    other_township = session.scalars(
        _select(Region.code)
        .where(Region.level == "township", Region.parent_code == county)
        .order_by(Region.code.desc())
    ).first()
    other_community = session.scalars(
        _select(Region.code).where(Region.parent_code == other_township).order_by(Region.code)
    ).first()

    def grids_of(community: str, n: int) -> list[str]:
        return list(
            session.scalars(
                _select(Grid.code)
                .where(Grid.community_code == community, Grid.in_service.is_(True))
                .order_by(Grid.code)
                .limit(n)
            )
        )

    # "fire": the code the seeded category 5301 (消防安全隐患) names as its handler; demo
    # databases made before it was chosen have "demo-fire".
    dept = session.scalars(
        _select(Department).where(Department.code.in_(("fire", "demo-fire")))
    ).first()
    if dept is None:
        dept = create_department(
            session,
            scope=EVERYTHING,
            code="fire",
            name="姑苏区消防救援大队",
            region_code=county,
        )
    plan = [
        ("admin", "admin", {}),
        ("city", "city_centre", {"scope_region": "320500000000"}),
        ("county", "county_centre", {"scope_region": county}),
        ("township", "township_office", {"scope_region": township}),
        ("officer", "community_officer", {"scope_region": communities[0]}),
        ("chief", "grid_chief", {"grids": grids_of(communities[0], 4)}),
        ("worker", "grid_worker", {"grids": grids_of(communities[0], 1)}),
        ("worker2", "grid_worker", {"grids": grids_of(communities[1], 1)}),
        ("worker3", "grid_worker", {"grids": grids_of(other_community, 1)}),
        ("fire", "department", {"scope_region": county, "department_id": dept.id}),
    ]
    out = []
    for username, role, kwargs in plan:
        exists = session.scalars(_select(User.id).where(User.username == username)).first()
        created = exists is None
        if created:
            create_user(
                session,
                scope=EVERYTHING,
                actor_rank=None,
                username=username,
                password=password,
                password_hash=password_hash,
                role=role,
                phone_key=phone_key,
                display_name=f"演示{username}",
                **kwargs,
            )
        where = kwargs.get("scope_region") or ",".join(kwargs.get("grids", [])) or "everything"
        out.append((username, role, where, created))
    return out


# Demo cases: (category, description, how far along the workflow, days ago reported).
_DEMO_ATTRIBUTES = {
    "5102": {"parties_count": 2, "mediated": "否"},
    "5301": {"hazard": ["电动车违规充电"], "place_type": "出租房"},
}
_DEMO_CASES = [
    ("0101", "小区门口生活垃圾堆放，未及时清运", "closed", 12),
    ("0103", "路边绿化带内有建筑垃圾", "closed", 10),
    ("0501", "人行道上占道经营摊点", "verified", 6),
    ("0104", "背街小巷乱堆物料", "feedback", 5),
    ("5301", "出租屋楼道堆放电动车充电", "handling", 4),
    ("5302", "沿街商铺灭火器过期", "dispatched", 3),
    ("5102", "邻里因噪音发生纠纷", "filed", 2),
    ("0101", "垃圾桶满溢", "accepted", 1),
    ("0201", "小广告张贴在公交站牌", "reported", 0),
    ("5304", "路口信号灯故障", "reported", 0),
    ("0101", "菜场门口垃圾未清", "cancelled", 3),
]
_STEPS = ["accept", "file", "dispatch", "sign", "feedback", "verify_pass", "close"]
_STOP_AFTER = {
    "reported": 0,
    "accepted": 1,
    "filed": 2,
    "dispatched": 3,
    "handling": 4,
    "feedback": 5,
    "verified": 6,
    "closed": 7,
}


#: How many demo cases `gridapi demo-data` reports per transaction.
DEMO_CASE_BATCH = 4


def demo_case_batches() -> list[range]:
    """The demo cases in the batches `gridapi demo-data` loads each in a transaction."""
    total = len(_DEMO_CASES)
    return [range(i, min(i + DEMO_CASE_BATCH, total)) for i in range(0, total, DEMO_CASE_BATCH)]


def load_demo_cases(session: Session, *, snapshot, calendar, now, only: range | None = None) -> int:  # type: ignore[no-untyped-def]
    """Report demo cases in the first township and carry them along the workflow.

    Each goes through the real services (routing, numbering, deadlines, timeline), reported
    by the demo worker and handled by the township office, backdated so that deadlines and
    overdue flags look like a working week. Cases already there (by their client_id) are
    left alone, so a run cut between batches (``only``: those of one batch) resumes where it
    stopped; returns how many were added.
    """
    import uuid
    from datetime import timedelta

    from ..models import Case, User
    from .cases import caller_of, report, transition
    from .identity import user_principal

    def principal(username: str):  # type: ignore[no-untyped-def]
        user = session.scalars(select(User).where(User.username == username)).one()
        return user, user_principal(session, user.id, user.token_version)

    worker, worker_p = principal("worker")
    _, office_p = principal("township")
    grids = sorted(worker_p.scope.grid_codes)
    if not grids:
        return 0
    index = next(i for i, g in enumerate(snapshot.grids) if g["code"] == grids[0])
    point = snapshot.geoms[index].representative_point()
    office = caller_of(session, office_p)
    handler = caller_of(session, worker_p)
    added = 0
    for n, (category, text, status, days_ago) in enumerate(_DEMO_CASES):
        if only is not None and n not in only:
            continue
        client_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"gridapi-demo-case-{n}"))
        if session.scalar(select(Case.id).where(Case.client_id == client_id)) is not None:
            continue
        at = now - timedelta(days=days_ago, hours=n % 5)
        body = {
            "category": category,
            "description": text,
            "location": geojson_point(point.x + 0.0001 * (n % 3), point.y + 0.0001 * (n % 2)),
            "address": "演示地址",
            "source": "phone",
            "client_id": client_id,
            "attributes": _DEMO_ATTRIBUTES.get(category, {}),
        }
        case = report(
            session, body, principal=worker_p, snapshot=snapshot, calendar=calendar, now=at
        ).case
        added += 1
        if status == "cancelled":
            steps = [("cancel", office, {"comment": "重复上报，已撤销"})]
        else:
            steps = []
            for action in _STEPS[: _STOP_AFTER[status]]:
                who = handler if action in ("sign", "feedback") else office
                extra: dict = {}
                if action == "dispatch":
                    extra = {"assignee_id": worker.id}
                if action == "feedback":
                    extra = {"comment": "已现场处置完毕"}
                steps.append((action, who, extra))
        for i, (action, who, extra) in enumerate(steps):
            step_at = min(at + timedelta(hours=3 * (i + 1)), now)
            case = transition(
                session,
                case.id,
                {"action": action, **extra},
                caller=who,
                calendar=calendar,
                now=step_at,
                if_match="*",
            ).case
    session.flush()
    return added


# Households of the demo: (户号, address, use, type, [(name, born, seq, phone, relation, ...)]).
# The ID numbers are synthetic (valid check digits, invented birth dates and sequences).
_DEMO_HOUSEHOLDS = [
    (
        "320508D0001",
        "平江路18号1幢101室",
        "self_occupied",
        "registered",
        [
            ("王建国", "19620315", "031", "13951110001", "head"),
            ("李秀英", "19640822", "042", "13951110002", "spouse"),
            ("王磊", "19900105", "057", "13951110003", "child"),
        ],
    ),
    (
        "320508D0002",
        "平江路18号1幢202室",
        "rented",
        "rental",
        [
            ("陈志强", "19880611", "013", "15862220001", "head"),
            ("周敏", "19910930", "028", None, "spouse"),
        ],
    ),
    (
        "320508D0003",
        "平江路20号",
        "self_occupied",
        "registered",
        [("赵桂兰", "19410718", "064", None, "head")],
    ),
]


def load_demo_register(session: Session, *, snapshot, keys) -> int:  # type: ignore[no-untyped-def]
    """Register a few houses, households and residents in the demo worker's first grid, a
    visit and one special-group record; return how many residents were added (0 when the
    demo register exists already)."""
    from ..models import User
    from ..models.register import Household
    from ..personal import check_digit
    from .identity import user_principal
    from .register import create_house, create_household, create_person, create_visit
    from .special_groups import create_record

    worker = session.scalars(select(User).where(User.username == "worker")).first()
    if worker is None:
        return 0
    principal = user_principal(session, worker.id, worker.token_version)
    grids = sorted(principal.scope.grid_codes)
    if not grids or session.scalar(
        select(Household.id).where(Household.number == _DEMO_HOUSEHOLDS[0][0])
    ):
        return 0
    index = next(i for i, g in enumerate(snapshot.grids) if g["code"] == grids[0])
    point = snapshot.geoms[index].representative_point()
    everywhere = Scope.everything()
    actor = "system:demo"
    added = 0
    first_person = None
    for n, (number, address, use, kind, people) in enumerate(_DEMO_HOUSEHOLDS):
        location = geojson_point(point.x + 0.0002 * n, point.y)
        house = create_house(
            session,
            {"address": address, "use": use, "location": location, "grid": grids[0]},
            scope=everywhere,
            snapshot=snapshot,
            actor=actor,
        )
        household = create_household(
            session,
            {"number": number, "house_id": house.id, "type": kind},
            scope=everywhere,
            snapshot=snapshot,
            actor=actor,
        )
        for name, born, seq, phone, relation in people:
            first17 = "320508" + born + seq
            person = create_person(
                session,
                {
                    "name": name,
                    "id_number": first17 + check_digit(first17),
                    "phone": phone,
                    "household_id": household.id,
                    "relation": relation,
                    "ethnicity": "汉族",
                    "population_type": "floating" if kind == "rental" else "registered",
                    "current_address": address,
                },
                scope=everywhere,
                keys=keys,
                actor=actor,
            )
            first_person = first_person or person
            added += 1
        create_visit(
            session,
            {"household_id": household.id, "findings": "家庭情况稳定", "place": address},
            scope=everywhere,
            snapshot=snapshot,
            actor=actor,
            worker_id=worker.id,
            now=datetime.now(UTC),
        )
    create_record(
        session,
        {"person_id": first_person.id, "type": "petitioner", "attention_level": "low"},
        scope=everywhere,
        keys=keys,
        actor=actor,
    )
    session.flush()
    return added
