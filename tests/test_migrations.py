"""The one migration chain builds both engines, goes down and up, and matches the models."""

from __future__ import annotations

import json
from datetime import datetime, timedelta

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect
from sqlalchemy.engine import make_url

from gridapi import migrations
from gridapi.db import make_engine
from gridapi.models import Base

from .factories import CITY, COMMUNITY_A, COMMUNITY_B, COUNTY, TOWNSHIP

HEAD = ScriptDirectory.from_config(migrations.alembic_config()).get_current_head()
OUR_TABLES = {
    "regions",
    "grid_versions",
    "grids",
    "index_generations",
    "roles",
    "users",
    "grid_assignments",
    "departments",
    "api_clients",
    "refresh_tokens",
    "audit_log",
    "categories",
    "calendar_days",
    "cases",
    "case_events",
    "case_attachments",
    "case_counters",
    "idempotency_keys",
    "notifications",
    "notification_read_marks",
}


@pytest.mark.filterwarnings(
    # SQLite's reflection cannot read an index on an expression (lower(username), 0031);
    # PostgreSQL's can, and compares it.
    "ignore:Skipped unsupported reflection of expression-based index:sqlalchemy.exc.SAWarning",
    "ignore:autogenerate skipping metadata-specified expression-based index:UserWarning",
)
def test_models_and_migrations_agree(database_url):
    engine = make_engine(database_url)
    with engine.connect() as conn:
        ctx = MigrationContext.configure(
            conn, opts={"include_object": migrations.include_object, "compare_type": True}
        )
        diff = compare_metadata(ctx, Base.metadata)
        if engine.dialect.name == "sqlite":  # what autogenerate could not compare
            assert conn.exec_driver_sql(
                "SELECT sql FROM sqlite_master WHERE name = 'uq_users_username_lower'"
            ).scalar_one() == (
                "CREATE UNIQUE INDEX uq_users_username_lower ON users (lower(username))"
            )
    engine.dispose()
    assert diff == []


def test_downgrade_to_base_and_upgrade_again(database_url):
    engine = make_engine(database_url)
    assert migrations.current_revision(engine) == HEAD
    migrations.downgrade(engine, "base")
    assert migrations.current_revision(engine) is None
    assert not OUR_TABLES & set(inspect(engine).get_table_names())
    migrations.upgrade(engine)
    assert migrations.current_revision(engine) == HEAD
    assert set(inspect(engine).get_table_names()) >= OUR_TABLES
    indexes = {ix["name"] for ix in inspect(engine).get_indexes("grids")}
    assert {"idx_grids_geom", "ix_grids_community_code"} <= indexes
    engine.dispose()


def test_upgrade_takes_a_url_with_percent_escapes(database_url, tmp_path):
    """A socket directory (``?host=%2Fvar%2Frun%2Fpostgresql``), a password or a path with a
    percent sign: Alembic's config once read the "%" as an interpolation and refused."""
    if database_url.startswith("sqlite"):
        path = tmp_path / "100% dir" / "gridapi.sqlite3"
        path.parent.mkdir()
        url = f"sqlite:///{path}"
    else:
        with_name = make_url(database_url).update_query_dict({"application_name": "gridapi 100%"})
        url = with_name.render_as_string(hide_password=False)
    engine = make_engine(url)
    assert "%" in engine.url.render_as_string(hide_password=False)
    assert migrations.alembic_config(engine).get_main_option("sqlalchemy.url") == (
        engine.url.render_as_string(hide_password=False)
    )
    migrations.upgrade(engine)
    assert migrations.current_revision(engine) == HEAD
    engine.dispose()


def test_ratings_given_before_a_reopen_are_cleared(app, accounts, factory, client, engine):
    """Cases reopened before the workflow cleared the rating kept the earlier one (the next
    closure could not be rated, the indicators counted it): migration 0027 clears it; a
    rating of the current closure stays."""
    from sqlalchemy import text

    from tests.api.test_case_workflow import Desk

    factory.regions()
    factory.grid_version()
    d = Desk(app, accounts, client)
    undone, current = d.report(d.worker)["id"], d.report(d.worker, col=1)["id"]
    for cid in (undone, current):
        d.to_closed(cid)
        rating = d.worker.post(f"/api/v1/cases/{cid}/rating", json={"score": 2})
        assert rating.status_code == 200, rating.get_json()
    d.act(d.office, undone, "reopen", comment="问题复发")
    with engine.begin() as conn:  # as the earlier reopen left it
        conn.execute(
            text("UPDATE cases SET satisfaction = 2, rated_at = reported_at WHERE id = :id"),
            {"id": undone},
        )
    versions = {cid: d.get(cid)["version"] for cid in (undone, current)}
    migrations.downgrade(engine, "0026")
    migrations.upgrade(engine)
    assert migrations.current_revision(engine) == HEAD
    after = {cid: d.get(cid) for cid in (undone, current)}
    assert after[undone]["satisfaction"] is None
    assert after[undone]["version"] == versions[undone] + 1
    assert after[current]["satisfaction"]["score"] == 2
    assert after[current]["version"] == versions[current]
    assert [e["data"] for e in d.timeline(undone) if e["action"] == "rate"] == [{"score": 2}]


def test_dispatch_and_supervision_of_an_ended_life_are_cleared(
    app, accounts, factory, client, engine
):
    """Cases returned or reopened before the workflow cleared them kept ``dispatched_at``
    (the indicators counted on-the-spot feedback as a handler's) and the first life's
    supervision level: migration 0038 clears both; a dispatch or a card given since stays."""
    from sqlalchemy import text

    from tests.api.test_case_workflow import Desk

    factory.regions()
    factory.grid_version()
    d = Desk(app, accounts, client)
    returned, redispatched, reopened, carded = (d.report(col=c)["id"] for c in range(4))
    for cid in (returned, redispatched):
        d.to_filed(cid)
        d.act(d.office, cid, "dispatch", assignee_id=d.id("worker"))
        d.act(d.worker, cid, "return", comment="不属于本网格")
    d.act(d.office, redispatched, "dispatch", assignee_id=d.id("worker"))
    for cid in (reopened, carded):
        d.to_handling(cid)
        d.act(d.county, cid, "supervise", level="red", comment="严重超期")
        d.act(d.worker, cid, "feedback", comment="已清理")
        d.act(d.office, cid, "verify_pass")
        d.act(d.office, cid, "close")
        d.act(d.office, cid, "reopen", comment="问题复发")
    d.act(d.county, carded, "supervise", level="yellow", comment="请加快")
    d.act(d.office, carded, "dispatch", assignee_id=d.id("worker"))
    dispatched = "SELECT id, dispatched_at IS NOT NULL FROM cases WHERE id IN (:a, :b, :c, :d)"
    ids = {"a": returned, "b": redispatched, "c": reopened, "d": carded}
    with engine.begin() as conn:  # as the earlier workflow left them
        conn.execute(
            text("UPDATE cases SET dispatched_at = reported_at WHERE id IN (:a, :b, :c, :d)"),
            ids,
        )
        conn.execute(text("UPDATE cases SET supervision = 'red' WHERE id = :id"), {"id": reopened})
    versions = {cid: d.get(cid)["version"] for cid in ids.values()}
    migrations.downgrade(engine, "0037")
    migrations.upgrade(engine)
    assert migrations.current_revision(engine) == HEAD
    with engine.connect() as conn:
        assert dict(conn.execute(text(dispatched), ids).all()) == {
            returned: False,
            redispatched: True,
            reopened: False,
            carded: True,
        }
    after = {cid: d.get(cid) for cid in ids.values()}
    assert after[reopened]["supervision"] == "normal"
    assert after[reopened]["version"] == versions[reopened] + 1
    assert after[carded]["supervision"] == "yellow"
    assert after[carded]["version"] == versions[carded]
    assert [e["data"]["level"] for e in d.timeline(reopened) if e["action"] == "supervise"] == [
        "red"
    ]


def test_feedback_of_an_ended_life_is_cleared(app, accounts, factory, client, engine):
    """Cases reopened before the workflow cleared it kept the earlier life's ``feedback_at``
    (the indicators counted them handled once dispatched again): migration 0040 clears it;
    a feedback given since the reopen stays."""
    from sqlalchemy import text

    from tests.api.test_case_workflow import Desk

    factory.regions()
    factory.grid_version()
    d = Desk(app, accounts, client)
    reopened, fed_back, closed = (d.report(col=c)["id"] for c in range(3))
    for cid in (reopened, fed_back, closed):
        d.to_closed(cid)
    for cid in (reopened, fed_back):
        d.act(d.office, cid, "reopen", comment="问题复发")
        d.act(d.office, cid, "dispatch", assignee_id=d.id("worker"))
        d.act(d.worker, cid, "sign")
    d.act(d.worker, fed_back, "feedback", comment="已清理")
    ids = {"a": reopened, "b": fed_back, "c": closed}
    with engine.begin() as conn:  # as the earlier reopen left it
        conn.execute(text("UPDATE cases SET feedback_at = reported_at WHERE id = :a"), ids)
    versions = {cid: d.get(cid)["version"] for cid in ids.values()}
    migrations.downgrade(engine, "0039")
    migrations.upgrade(engine)
    assert migrations.current_revision(engine) == HEAD
    fed = "SELECT id, feedback_at IS NOT NULL FROM cases WHERE id IN (:a, :b, :c)"
    with engine.connect() as conn:
        assert dict(conn.execute(text(fed), ids).all()) == {
            reopened: False,
            fed_back: True,
            closed: True,
        }
    assert {cid: d.get(cid)["version"] for cid in ids.values()} == versions


def test_cases_held_by_a_unit_they_were_handed_down_to_may_be_returned(
    app, accounts, factory, client, engine
):
    """Cases handed down (交办) before the unit that handed them down was kept: migration
    0040 finds it in the timeline for the open cases still held where they were handed
    down, so those may be returned; not for a case moved on since, nor one never handed."""
    from tests.api.test_case_workflow import Desk, ok

    factory.regions()
    factory.grid_version()
    d = Desk(app, accounts, client)
    handed, moved_on, filed = (d.report(col=c)["id"] for c in range(3))
    for cid in (handed, moved_on, filed):
        d.to_filed(cid)
    for cid in (handed, moved_on):
        d.act(d.office, cid, "dispatch", unit=COMMUNITY_A)
    d.act(d.officer, handed, "dispatch", assignee_id=d.id("worker"))
    d.act(d.worker, handed, "return", comment="不属于本网格")  # back to the community
    d.act(d.office, moved_on, "transfer", unit=COMMUNITY_B, comment="属观前社区")
    migrations.downgrade(engine, "0039")  # as the earlier workflow left them
    migrations.upgrade(engine)
    assert migrations.current_revision(engine) == HEAD
    officer_b = accounts.client("officer_b", "community_officer", scope_region=COMMUNITY_B)
    assert "return" in ok(d.officer.get(f"/api/v1/cases/{handed}"))["allowed_actions"]
    assert "return" not in ok(officer_b.get(f"/api/v1/cases/{moved_on}"))["allowed_actions"]
    assert "return" not in ok(d.office.get(f"/api/v1/cases/{filed}"))["allowed_actions"]
    back = d.act(d.officer, handed, "return", comment="不属于本社区")
    assert back["responsible"]["unit"]["code"] == TOWNSHIP


def test_a_case_handed_down_twice_and_returned_once_may_be_returned_again(
    app, accounts, factory, client, engine
):
    """Handed down county → township → community and returned by the community before the
    chain was kept: the township had nobody to return it to. Migration 0045 reads the
    county's hand-down from the timeline; not for a case moved on since by a transfer."""
    from sqlalchemy import text

    from tests.api.test_case_workflow import Desk, ok

    factory.regions()
    factory.grid_version()
    d = Desk(app, accounts, client)
    chained, moved_on = (d.report(col=c)["id"] for c in range(2))
    for cid in (chained, moved_on):
        d.to_filed(cid)
        d.act(d.office, cid, "escalate", comment="需区级协调")
        d.act(d.county, cid, "dispatch", unit=TOWNSHIP, comment="交办平江街道")
        d.act(d.office, cid, "dispatch", unit=COMMUNITY_A, comment="交办平江社区")
        d.act(d.officer, cid, "return", comment="不属于本社区")
    d.act(d.office, moved_on, "transfer", unit=COMMUNITY_B, comment="属观前社区")
    d.act(d.office, moved_on, "transfer", unit=TOWNSHIP, comment="收回街道")
    versions = {cid: d.get(cid)["version"] for cid in (chained, moved_on)}
    with engine.begin() as conn:  # as the earlier return left it
        conn.execute(text("UPDATE cases SET handed_down_from = NULL"))
    assert "return" not in ok(d.office.get(f"/api/v1/cases/{chained}"))["allowed_actions"]
    migrations.downgrade(engine, "0044")
    migrations.upgrade(engine)
    assert migrations.current_revision(engine) == HEAD
    assert "return" in ok(d.office.get(f"/api/v1/cases/{chained}"))["allowed_actions"]
    assert "return" not in ok(d.office.get(f"/api/v1/cases/{moved_on}"))["allowed_actions"]
    assert {cid: d.get(cid)["version"] for cid in (chained, moved_on)} == versions
    up = d.act(d.office, chained, "return", comment="不属于本街道")
    assert up["responsible"]["unit"]["code"] == COUNTY


def test_a_city_wide_campaign_and_its_items_are_moved_into_counties(
    app, accounts, factory, client, engine
):
    """A campaign over a city carried the city's code as its county, its items the
    campaign's: migration 0040 gives the items their task's county and the campaign its
    first grid's (a new version: it is shown); a township's campaign stays as it was."""
    from sqlalchemy import text

    from tests.api.test_tasks import test_work_over_a_city_lies_in_counties as city_campaign

    factory.regions()
    factory.grid_version()
    people = {
        "ids": accounts.ids,
        "office": accounts.client("office", "township_office", scope_region=TOWNSHIP),
    }
    city_campaign(client, factory, people, accounts, engine)
    with engine.begin() as conn:  # as the earlier fan-out left them
        conn.execute(text("UPDATE campaigns SET county_code = '320500'"))
        conn.execute(text("UPDATE task_items SET county_code = '320500'"))
        before = conn.execute(text("SELECT id, version FROM campaigns")).one()
    migrations.downgrade(engine, "0039")
    migrations.upgrade(engine)
    with engine.connect() as conn:
        after = conn.execute(text("SELECT id, version, county_code FROM campaigns")).one()
        items = conn.execute(text("SELECT DISTINCT county_code FROM task_items")).scalars()
        assert sorted(items) == ["320506", "320508"]
    assert tuple(after) == (before[0], before[1] + 1, "320506")


def test_grids_of_communities_not_in_the_tree_leave_service(factory, client, engine):
    """A grid of a community missing from the tree, put in service by a forced activation
    before imports left such grids out, kept answering for the county's own points:
    migration 0028 takes it out of service."""
    from sqlalchemy import text

    from tests.api.test_grid_versions import A1, STRAY, _copy_grid
    from tests.factories import LAT0, LON0, STEP

    factory.regions()
    version = factory.grid_version()
    routing = client.application.extensions["gridapi"].routing
    _copy_grid(engine, A1, version["id"], STRAY, in_service=True)
    routing.refresh()  # changed behind the app's back: it would rebuild in the background
    in_a1 = (LON0 + 0.5 * STEP, LAT0 + 0.5 * STEP)
    assert factory.locate(*in_a1)["grid"]["code"] == STRAY  # the lowest code wins
    migrations.downgrade(engine, "0027")
    migrations.upgrade(engine)
    assert migrations.current_revision(engine) == HEAD
    routing.refresh()
    assert factory.locate(*in_a1)["grid"]["code"] == A1
    assert client.get(f"/api/v1/grids/{STRAY}").status_code == 404
    with engine.connect() as conn:
        kept = conn.execute(text("SELECT count(*) FROM grids WHERE in_service")).scalar()
    assert kept == 4


def test_versions_retired_before_know_who_retired_them(factory, client, engine):
    """Migration 0029 finds, for versions retired before it, the version whose activation
    retired them, so activating one of them again still rolls that one back."""
    from tests.api.test_grid_versions import A1, B1, B2, _in_service
    from tests.factories import collection, feature, rectangle, square

    factory.regions()
    first = factory.grid_version()
    community = factory.grid_version(collection(feature(A1, rectangle(0, 0, 2, 1))))
    factory.grid_version(
        collection(feature(A1, square(0, 0)), feature(B1, rectangle(2, 0, 4, 1))), force=True
    )
    migrations.downgrade(engine, "0028")
    migrations.upgrade(engine)
    assert migrations.current_revision(engine) == HEAD
    r = client.post(f"/api/v1/grid-versions/{community['id']}/activate", json={})
    assert r.status_code == 200, r.get_json()
    assert _in_service(client) == [(A1, community["id"]), (B1, first["id"]), (B2, first["id"])]


def test_a_database_migrated_by_a_newer_gridapi_is_named_so_and_left_alone(database_url, tmp_path):
    """A database at a revision this code does not know (a newer gridapi migrated it, then
    the older one was deployed again): `serve` and `worker` said "run `gridapi db
    upgrade`", which then stopped with Alembic's traceback ("Can't locate revision")."""
    from click.testing import CliRunner

    from gridapi.cli import main

    engine = make_engine(database_url)
    env = {"GRIDAPI_DATABASE_URL": database_url, "GRIDAPI_DATA_DIR": str(tmp_path / "data")}

    def run(*args: str):  # type: ignore[no-untyped-def]
        return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)

    with engine.begin() as conn:
        conn.exec_driver_sql("UPDATE alembic_version SET version_num = '0099'")
    try:
        tables = set(inspect(engine).get_table_names())
        expected = (
            f"Error: The database is at revision 0099, which this gridapi does not know (its "
            f"migrations end at {HEAD}): a newer gridapi migrated it. Run that gridapi, or "
            "install it here; this one can neither upgrade nor downgrade the database.\n"
        )
        for command in (("db", "upgrade"), ("db", "downgrade", "base"), ("worker", "--once")):
            result = run(*command)
            assert (result.exit_code, result.output) == (1, expected), command
        assert migrations.schema_problem(engine) == expected.removeprefix("Error: ").strip()
        assert migrations.current_revision(engine) == "0099"  # untouched
        assert set(inspect(engine).get_table_names()) == tables
    finally:
        with engine.begin() as conn:
            conn.exec_driver_sql(f"UPDATE alembic_version SET version_num = '{HEAD}'")

    refused = run("db", "upgrade", "--revision", "00355")
    assert refused.exit_code == 1
    assert refused.output == (
        "Error: Can't locate revision identified by '00355' (this gridapi's migrations go "
        f"from 0001 to {HEAD}; head, base and relative steps such as -1 are taken too)\n"
    )
    assert migrations.current_revision(engine) == HEAD
    engine.dispose()


def test_houses_registered_twice_are_merged_into_the_first(factory, client, engine):
    """Nothing kept a house from being registered twice at one address and place before
    migration 0039: it merges such houses into the first (their households, residents and
    task items move to it, with new versions where they have them), leaves an audit row
    naming the ids merged, and the unique indexes then refuse another."""
    from sqlalchemy import text

    from tests.api.test_register import A1, add_person, created

    factory.regions()
    factory.grid_version()
    first = created(client.post("/api/v1/houses", json={"address": "平江路1号", "grid": A1}))
    twin = created(client.post("/api/v1/houses", json={"address": "平江路1号 twin", "grid": A1}))
    other = created(client.post("/api/v1/houses", json={"address": "平江路2号", "grid": A1}))
    household = created(
        client.post("/api/v1/households", json={"number": "0001", "house_id": twin["id"]})
    )
    person = add_person(client, household["id"])
    migrations.downgrade(engine, "0038")
    with engine.begin() as conn:  # as two requests at once registered it
        conn.execute(
            text("UPDATE houses SET address = '平江路1号' WHERE id = :id"), {"id": twin["id"]}
        )
    migrations.upgrade(engine)
    assert migrations.current_revision(engine) == HEAD
    houses = client.get("/api/v1/houses").get_json()["items"]
    assert sorted(h["id"] for h in houses) == [first["id"], other["id"]]
    moved = client.get(f"/api/v1/households/{household['id']}").get_json()
    assert (moved["house_id"], moved["version"]) == (first["id"], household["version"] + 1)
    assert client.get(f"/api/v1/persons/{person['id']}").get_json()["house_id"] == first["id"]
    with engine.connect() as conn:
        (merge,) = conn.execute(
            text("SELECT object_id, summary FROM audit_log WHERE action = 'house.merge'")
        ).all()
    summary = merge.summary if isinstance(merge.summary, dict) else json.loads(merge.summary)
    assert (merge.object_id, summary["merged"]) == (str(first["id"]), [twin["id"]])
    r = client.post("/api/v1/houses", json={"address": "平江路1号", "grid": A1})
    assert r.status_code == 409, r.get_json()


def test_tasks_given_to_a_city_are_moved_into_a_county(accounts, factory, client, engine):
    """A task given to a city itself carried the city's code as its county ("320500")
    before the last stop, and 0040 moved only campaigns and their items: migration 0042
    gives such a task the county a task given there now gets (the county under the city of
    the lowest code, a new version: it is shown), and its notices their task's county; a
    task given to a township stays as it was."""
    from sqlalchemy import text

    from tests.api.test_tasks import SOON, WUZHONG, new_task

    factory.regions()
    factory.grid_version()
    wuzhong = client.post("/api/v1/regions/import", json=[{"code": WUZHONG, "name": "吴中区"}])
    assert wuzhong.status_code == 200, wuzhong.get_json()
    city = accounts.client("city", "city_centre", scope_region=CITY)
    accounts.client("worker", "grid_worker", grids=[COMMUNITY_A + "001"])
    given = new_task(city, region=CITY, assignee_id=accounts.ids["worker"], due_in=SOON)
    assert given["county_code"] == "320506"  # as a task given to the city now is
    township = new_task(city, region=TOWNSHIP)
    with engine.begin() as conn:  # as a task given to the city before the last stop
        conn.execute(
            text("UPDATE tasks SET county_code = '320500' WHERE id = :id"), {"id": given["id"]}
        )
        conn.execute(
            text("UPDATE notifications SET county_code = '320500' WHERE task_id = :id"),
            {"id": given["id"]},
        )
    migrations.downgrade(engine, "0041")
    migrations.upgrade(engine)
    assert migrations.current_revision(engine) == HEAD
    moved = client.get(f"/api/v1/tasks/{given['id']}").get_json()
    assert (moved["county_code"], moved["version"]) == ("320506", given["version"] + 1)
    stayed = client.get(f"/api/v1/tasks/{township['id']}").get_json()
    assert (stayed["county_code"], stayed["version"]) == ("320508", township["version"])
    with engine.connect() as conn:
        notices = conn.execute(
            text("SELECT county_code FROM notifications WHERE task_id = :id"), {"id": given["id"]}
        ).scalars()
        assert list(notices) == ["320506"]


def test_houses_whose_addresses_differ_in_width_or_spaces_are_merged(factory, client, engine):
    """0039 compared addresses exactly: "3号楼" and "３号楼" (full-width) at one place were two
    houses. Migration 0046 compares them normalised (NFKC, runs of whitespace one space),
    merges such twins into the first (their households move to it, with a new version),
    leaves a ``house.merge`` audit row naming the ids, and the unique indexes then refuse
    another; the kept house keeps its address as typed."""
    from sqlalchemy import text

    from tests.api.test_register import A1, created

    factory.regions()
    factory.grid_version()
    first = created(client.post("/api/v1/houses", json={"address": "平江路 3号楼", "grid": A1}))
    twins = [
        created(client.post("/api/v1/houses", json={"address": f"平江路 3号楼 {n}", "grid": A1}))
        for n in (1, 2)
    ]
    other = created(
        client.post("/api/v1/houses", json={"address": "平江路 3号楼", "grid": A1[:-1] + "2"})
    )
    household = created(
        client.post("/api/v1/households", json={"number": "0001", "house_id": twins[1]["id"]})
    )
    migrations.downgrade(engine, "0045")
    with engine.begin() as conn:  # as they were registered before 0046
        for twin, address in zip(twins, ("平江路　３号楼", "平江路  3号楼 "), strict=True):
            conn.execute(
                text("UPDATE houses SET address = :a WHERE id = :id"),
                {"a": address, "id": twin["id"]},
            )
    migrations.upgrade(engine)
    assert migrations.current_revision(engine) == HEAD
    houses = client.get("/api/v1/houses").get_json()["items"]
    assert sorted((h["id"], h["address"]) for h in houses) == [
        (first["id"], "平江路 3号楼"),
        (other["id"], "平江路 3号楼"),
    ]
    moved = client.get(f"/api/v1/households/{household['id']}").get_json()
    assert (moved["house_id"], moved["version"]) == (first["id"], household["version"] + 1)
    with engine.connect() as conn:
        (merge,) = conn.execute(
            text("SELECT object_id, actor_id, summary FROM audit_log WHERE action = 'house.merge'")
        ).all()
    summary = merge.summary if isinstance(merge.summary, dict) else json.loads(merge.summary)
    assert merge.object_id == str(first["id"]) and merge.actor_id.startswith("migration:")
    assert summary["merged"] == [t["id"] for t in twins]
    for address in ("平江路 ３号楼", "平江路３号楼"):  # no space: the same since 0048
        r = client.post("/api/v1/houses", json={"address": address, "grid": A1})
        assert r.status_code == 409, r.get_json()


def test_houses_whose_addresses_differ_by_a_space_or_case_are_merged(factory, client, engine):
    """0046 compared addresses with runs of whitespace as one space and case kept: "3号楼
    2单元" and "3号楼2单元", "A座" and "a座", at one place were two houses. Migration 0048
    compares them without whitespace and case-folded, merges such twins into the first
    (their households move to it, with a new version), leaves a ``house.merge`` audit row
    naming the ids, and the unique indexes then refuse another. Downgrade computes 0046's
    keys again and leaves the merged houses merged."""
    from sqlalchemy import text

    from tests.api.test_register import A1, created

    factory.regions()
    factory.grid_version()

    def house(address: str, grid: str = A1) -> dict:
        return created(client.post("/api/v1/houses", json={"address": address, "grid": grid}))

    spaced, lettered = house("平江路 3号楼 2单元"), house("平江路9号A座")
    twins = [house("平江路 3号楼 2单元 x"), house("平江路9号A座 x"), house("平江路 3号楼 2单元 y")]
    other = house("平江路3号楼2单元", A1[:-1] + "2")
    household = created(
        client.post("/api/v1/households", json={"number": "0001", "house_id": twins[0]["id"]})
    )
    migrations.downgrade(engine, "0047")
    with engine.begin() as conn:  # as they were registered before 0048 (0046's keys)
        for twin, address in zip(
            twins, ("平江路3号楼2单元", "平江路9号a座", "平江路 3号楼2单元"), strict=True
        ):
            conn.execute(
                text("UPDATE houses SET address = :a, address_key = :a WHERE id = :id"),
                {"a": address, "id": twin["id"]},
            )
    migrations.upgrade(engine)
    assert migrations.current_revision(engine) == HEAD
    houses = client.get("/api/v1/houses").get_json()["items"]
    assert sorted((h["id"], h["address"]) for h in houses) == [
        (spaced["id"], "平江路 3号楼 2单元"),
        (lettered["id"], "平江路9号A座"),
        (other["id"], "平江路3号楼2单元"),
    ]
    moved = client.get(f"/api/v1/households/{household['id']}").get_json()
    assert (moved["house_id"], moved["version"]) == (spaced["id"], household["version"] + 1)
    with engine.connect() as conn:
        merges = conn.execute(
            text(
                "SELECT object_id, actor_id, summary FROM audit_log WHERE action = 'house.merge'"
                " ORDER BY object_id"
            )
        ).all()
    summaries = [
        m.summary if isinstance(m.summary, dict) else json.loads(m.summary) for m in merges
    ]
    assert sorted(
        (m.object_id, s["merged"]) for m, s in zip(merges, summaries, strict=True)
    ) == sorted(
        [
            (str(spaced["id"]), [twins[0]["id"], twins[2]["id"]]),
            (str(lettered["id"]), [twins[1]["id"]]),
        ]
    )
    (actor,) = {m.actor_id for m in merges}  # this migration's, not 0046's (it merged none)
    assert actor.startswith("migration:") and actor != "migration:0046"
    for address, kept in (("平江路3号楼 2单元", spaced), ("平江路 9号a座", lettered)):
        r = client.post("/api/v1/houses", json={"address": address, "grid": A1})
        assert r.status_code == 409, r.get_json()
        assert r.get_json()["errors"]["json"]["address"] == [
            f"already registered at this place: house {kept['id']}"
        ]
    migrations.downgrade(engine, "0047")  # 0046's keys again; merged houses stay merged
    with engine.connect() as conn:
        keys = conn.execute(text("SELECT id, address_key FROM houses ORDER BY id")).all()
    assert [tuple(k) for k in keys] == [
        (spaced["id"], "平江路 3号楼 2单元"),
        (lettered["id"], "平江路9号A座"),
        (other["id"], "平江路3号楼2单元"),
    ]
    migrations.upgrade(engine)


def test_register_rows_of_a_city_are_moved_into_a_county(factory, client, engine):
    """Houses and households placed at a city before the register placed them in a county
    carried the city's code as their county code ("320600"), their residents and visits
    with them. Migration 0046 moves a house with a point into the county whose boundary
    covers it, else into the county of the nearest grid in service (not the lowest code
    under the city), with its households, residents and visits (new versions); a house
    without a point, and one whose 户号 is registered in the county it would go to, stay."""
    from sqlalchemy import text

    from tests.api.test_register import add_person, created

    from .factories import LAT0 as Y0
    from .factories import LON0 as X0
    from .factories import STEP, collection, feature, rectangle, square

    factory.regions()
    factory.grid_version()
    chongchuan, tongzhou = "320602000000", "320612000000"
    rows = [
        {"code": "320600000000", "name": "南通市", "boundary": rectangle(20, 0, 30, 5)},
        {"code": chongchuan, "name": "崇川区"},  # no boundary: only its community's
        {"code": "320602001000", "name": "和平桥街道", "boundary": rectangle(28, 0, 29, 1)},
        {"code": "320602001001", "name": "和平桥社区", "boundary": rectangle(28, 0, 29, 1)},
        # two parts: the north-east, and its township's (24, 0) away from it
        {
            "code": tongzhou,
            "name": "通州区",
            "boundary": {
                "type": "MultiPolygon",
                "coordinates": [
                    rectangle(26, 3, 30, 5)["coordinates"],
                    rectangle(24, 0, 25, 1)["coordinates"],
                ],
            },
        },
        {"code": "320612001000", "name": "金沙街道", "boundary": rectangle(24, 0, 25, 1)},
        {"code": "320612001001", "name": "金沙社区", "boundary": rectangle(24, 0, 25, 1)},
    ]
    assert client.post("/api/v1/regions/import", json=rows).status_code == 200
    factory.grid_version(collection(feature("320602001001001", square(28, 0))))
    factory.grid_version(collection(feature("320612001001001", square(24, 0))))

    def at(col: float, row: float) -> dict:
        return {"type": "Point", "coordinates": [X0 + col * STEP, Y0 + row * STEP]}

    def house(address: str, **where) -> dict:  # type: ignore[no-untyped-def]
        return created(client.post("/api/v1/houses", json={"address": address, **where}))

    # covered by 通州区's boundary, though 崇川区's grid is the nearest
    in_tongzhou = house("通州1号", location=at(28.5, 3.5))
    # held by the city alone: 通州区's grid is the nearest (崇川区 has the lowest code)
    only_the_city = house("人民路2号", location=at(24.5, 2.5))
    without_point = house("人民路3号", region=chongchuan)
    taken = house("人民路4号", location=at(24.5, 1.5))
    household = created(
        client.post("/api/v1/households", json={"number": "NT-1", "house_id": only_the_city["id"]})
    )
    person = add_person(client, household["id"], relation="head")
    visit = created(client.post("/api/v1/visits", json={"household_id": household["id"]}))
    stays = created(
        client.post("/api/v1/households", json={"number": "NT-2", "house_id": taken["id"]})
    )
    with engine.begin() as conn:  # as the register placed them at the city before
        for table in ("houses", "households", "persons", "visits"):
            conn.execute(
                text(
                    f"UPDATE {table} SET county_code = '320600', region_code = '320600000000'"
                    " WHERE county_code IN ('320602', '320612')"
                )
            )
    # 户号 NT-2 registered in 通州区 since: the house holding the city's NT-2 stays
    created(client.post("/api/v1/households", json={"number": "NT-2", "region": tongzhou}))
    migrations.downgrade(engine, "0045")
    migrations.upgrade(engine)

    def place(table: str, row_id: int) -> tuple:
        with engine.connect() as conn:
            return tuple(
                conn.execute(
                    text(f"SELECT county_code, region_code, version FROM {table} WHERE id = :id"),
                    {"id": row_id},
                ).one()
            )

    assert place("houses", in_tongzhou["id"]) == ("320612", tongzhou, in_tongzhou["version"] + 1)
    assert place("houses", only_the_city["id"]) == ("320612", tongzhou, 2)
    assert place("households", household["id"]) == ("320612", tongzhou, household["version"] + 1)
    assert place("persons", person["id"]) == ("320612", tongzhou, person["version"] + 1)
    with engine.connect() as conn:
        assert conn.execute(
            text("SELECT county_code, region_code FROM visits WHERE id = :id"), {"id": visit["id"]}
        ).one() == ("320612", tongzhou)
    assert place("houses", without_point["id"])[:2] == ("320600", "320600000000")
    assert place("houses", taken["id"])[:2] == ("320600", "320600000000")
    assert place("households", stays["id"])[:2] == ("320600", "320600000000")
    got = client.get(f"/api/v1/persons/{person['id']}").get_json()
    assert (got["county_code"], got["region_code"]) == ("320612", tongzhou)


def test_export_jobs_keep_no_free_text_purpose(factory, client, engine):
    """Export jobs queued before purposes were codes kept the purpose as typed, which could
    name a resident. Migration 0047 rewrites every stored purpose that is not ``code`` or
    ``code reference`` to ``other``; codes, codes with a reference and no purpose stay."""
    from sqlalchemy import text

    factory.regions()
    stored = [
        "核查张三（身份证320508199001011234）低保资格",
        "audit 2026-审-17",  # a code, but not a reference: free text after it
        "subject_access 320508199001011234",  # an ID number is no reference
        "case_handling",
        "legal_request JS-2026/17",
        None,
    ]
    ids = []
    for _ in stored:
        r = client.post("/api/v1/exports/cases/jobs", json={"format": "csv", "filters": {}})
        assert r.status_code == 202, r.get_json()
        ids.append(r.get_json()["id"])
    migrations.downgrade(engine, "0046")
    with engine.begin() as conn:  # as jobs queued before purposes were codes kept them
        for job_id, purpose in zip(ids, stored, strict=True):
            conn.execute(
                text("UPDATE export_jobs SET purpose = :p WHERE id = :id"),
                {"p": purpose, "id": job_id},
            )
    migrations.upgrade(engine)
    assert migrations.current_revision(engine) == HEAD
    with engine.connect() as conn:
        after = dict(conn.execute(text("SELECT id, purpose FROM export_jobs")).all())
    assert [after[i] for i in ids] == [
        "other",
        "other",
        "other",
        "case_handling",
        "legal_request JS-2026/17",
        None,
    ]


def test_residents_registered_before_0051_are_found_by_their_addresses_as_compared(
    factory, client, engine
):
    """Migration 0051 keys the addresses of the residents already registered (NFKC,
    case-folded, without whitespace), so the search finds "3号楼 2单元" by "3号楼2单元" and
    "A座" by "a座" for them too; computing the keys is no change a phone syncs."""
    from sqlalchemy import text

    from tests.api.test_register import A1, add_person, created

    factory.regions()
    factory.grid_version()
    household = created(client.post("/api/v1/households", json={"number": "0001", "grid": A1}))
    person = add_person(
        client,
        household["id"],
        current_address="平江路 3号楼 2单元",
        registered_address="干将路9号A座",
    )
    migrations.downgrade(engine, "0050")
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM sync_log"))
    migrations.upgrade(engine)
    assert migrations.current_revision(engine) == HEAD
    with engine.connect() as conn:
        keys = conn.execute(
            text("SELECT current_address_key, registered_address_key FROM persons WHERE id = :i"),
            {"i": person["id"]},
        ).one()
        assert conn.execute(text("SELECT count(*) FROM sync_log")).scalar_one() == 0
    assert tuple(keys) == ("平江路3号楼2单元", "干将路9号a座")
    for address in ("3号楼2单元", "９号ａ座"):
        found = client.get("/api/v1/persons", query_string={"address": address}).get_json()
        assert [p["id"] for p in found["items"]] == [person["id"]], address


def test_campaigns_made_before_0054_keep_the_working_time_their_tasks_agree_on(
    accounts, factory, client, engine
):
    """Migration 0054 gives a campaign the working time every task of it kept (its tasks
    were made with it), so an edit of the calendar moves it with them; one whose tasks
    differ (one reassigned with another deadline), or one given a moment, keeps its
    deadline as it is. An active campaign whose open tasks a calendar edit moved before
    (and not it) takes their deadline, with a new version; the others are left alone."""
    from sqlalchemy import text

    def when(value: str) -> datetime:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))

    factory.regions()
    factory.grid_version()
    office = accounts.client("office", "township_office", scope_region=TOWNSHIP)
    worker = accounts.client("worker", "grid_worker", grids=[COMMUNITY_B + "001"])
    week = {"amount": 7, "unit": "days"}

    def campaign(region: str, **deadline: object) -> dict:
        r = office.post("/api/v1/campaigns", json={"title": "排查", "region": region, **deadline})
        assert r.status_code == 201, r.get_json()
        return r.get_json()

    def tasks(campaign_id: int) -> dict[str, dict]:
        r = office.get(f"/api/v1/tasks?campaign_id={campaign_id}")
        return {t["grid"]["code"]: t for t in r.get_json()["items"]}

    agreed = campaign(COMMUNITY_A, due_in=week)
    moved = campaign(COMMUNITY_B, due_in=week)
    differ = campaign(COMMUNITY_A, due_in=week)
    moment = campaign(COMMUNITY_A, due_at=agreed["due_at"])
    a2 = tasks(differ["id"])[COMMUNITY_A + "002"]
    etag = office.get(f"/api/v1/tasks/{a2['id']}").headers["ETag"]
    r = office.post(
        f"/api/v1/tasks/{a2['id']}/reassign",
        json={"assignee_id": accounts.ids["worker"], "due_in": {"amount": 3, "unit": "days"}},
        headers={"If-Match": etag},
    )
    assert r.status_code == 200, r.get_json()
    # A calendar edit moved the open tasks of ``moved`` (not the one completed: it keeps
    # the deadline it had), and not the campaign, as before 0054.
    b1 = tasks(moved["id"])[COMMUNITY_B + "001"]
    etag = worker.get(f"/api/v1/tasks/{b1['id']}").headers["ETag"]
    done = worker.post(f"/api/v1/tasks/{b1['id']}/complete", json={}, headers={"If-Match": etag})
    assert done.status_code == 200, done.get_json()
    later = (when(moved["due_at"]) + timedelta(days=1)).isoformat()
    with engine.begin() as conn:
        conn.execute(
            text(
                "UPDATE tasks SET due_at = :d, version = version + 1"
                " WHERE campaign_id = :c AND status = 'pending'"
            ),
            {"d": when(later), "c": moved["id"]},
        )
    views = {
        c["id"]: office.get(f"/api/v1/campaigns/{c['id']}").get_json()
        for c in (agreed, moved, differ, moment)
    }

    migrations.downgrade(engine, "0053")
    migrations.upgrade(engine)
    assert migrations.current_revision(engine) == HEAD
    after = {c: office.get(f"/api/v1/campaigns/{c}").get_json() for c in views}
    for c in (agreed, differ, moment):
        assert after[c["id"]]["due_at"] == views[c["id"]]["due_at"]
        assert after[c["id"]]["version"] == views[c["id"]]["version"]
    assert [after[c["id"]]["due_in"] for c in (agreed, moved, differ, moment)] == [
        week,
        week,
        None,
        None,
    ]
    assert when(after[moved["id"]]["due_at"]) == when(later)
    assert after[moved["id"]]["version"] == views[moved["id"]]["version"] + 1


def test_the_seeded_counts_are_bounded_by_0056_where_no_admin_bounded_them(client, engine, factory):
    """Migration 0056 makes 邻里纠纷's parties_count and 劳资纠纷's workers whole numbers of
    at least 1 and its amount at least 0, each category with a new version; bounds an admin
    gave stay as they are, and a downgrade takes off only what 0056 added."""
    import sqlalchemy as sa

    table = sa.table(
        "categories",
        sa.column("code", sa.String),
        sa.column("attributes", sa.JSON),
        sa.column("version", sa.Integer),
    )

    def attributes(code: str) -> dict[str, dict]:
        body = client.get(f"/api/v1/categories/{code}").get_json()
        return {a["code"]: a for a in body["attributes"]}

    migrations.downgrade(engine, "0055")
    assert "minimum" not in attributes("5102")["parties_count"]
    with engine.begin() as conn:  # an admin bounded the amount (up to 10,000 元)
        found = conn.execute(sa.select(table.c.attributes).where(table.c.code == "5104"))
        form = [{**a, "maximum": 10000} if a["code"] == "amount" else a for a in found.scalar_one()]
        conn.execute(table.update().where(table.c.code == "5104").values(attributes=form))
    before = {
        c: client.get(f"/api/v1/categories/{c}").get_json()["version"]
        for c in ("5102", "5104", "0101")
    }
    migrations.upgrade(engine)
    assert migrations.current_revision(engine) == HEAD
    parties, labour = attributes("5102"), attributes("5104")
    assert (parties["parties_count"]["minimum"], parties["parties_count"]["integer"]) == (1, True)
    assert (labour["workers"]["minimum"], labour["workers"]["integer"]) == (1, True)
    assert labour["amount"]["maximum"] == 10000 and "minimum" not in labour["amount"]
    after = {c: client.get(f"/api/v1/categories/{c}").get_json()["version"] for c in before}
    assert after == {"5102": before["5102"] + 1, "5104": before["5104"] + 1, "0101": before["0101"]}
    from .api.test_cases import center, report_body

    factory.regions()
    factory.grid_version()
    body = report_body(*center(0), category="5102", attributes={"parties_count": -5})
    refused = client.post("/api/v1/cases", json=body)
    assert refused.status_code == 422, refused.get_json()
    assert refused.get_json()["errors"]["json"]["attributes"] == {
        "parties_count": ["must be at least 1"]
    }
    migrations.downgrade(engine, "0055")
    assert "minimum" not in attributes("5102")["parties_count"]
    assert attributes("5104")["amount"]["maximum"] == 10000
    assert "integer" not in attributes("5104")["workers"]
    migrations.upgrade(engine)


def test_notices_to_departments_are_addressed_to_them_by_0057(app, accounts, client, factory):
    """Migration 0057 moves a department's notices of before (addressed to its region, the
    county office's too) to the department: a dispatch naming it, and rework of a case it
    holds with nobody signed; other notices of the region stay the office's. A downgrade
    addresses them to the region again, as the code before reads them."""
    from sqlalchemy import text

    from .api.test_case_workflow import Desk

    factory.regions()
    factory.grid_version()
    d = Desk(app, accounts, client)
    engine = app.extensions["gridapi"].engine
    cid = d.report()["id"]
    d.to_filed(cid)
    d.act(d.office, cid, "dispatch", department_id=d.dept)
    d.act(d.office, cid, "sign")
    d.act(d.member, cid, "feedback", comment="已整改")
    d.act(d.office, cid, "verify_fail", comment="仍未整改")
    d.act(d.office, cid, "request_extension", amount=1, unit_of_time="days", comment="材料未到")

    def addressed() -> list[tuple[str, str | None, int | None]]:
        with engine.connect() as conn:
            return [
                (kind.split(":", 1)[0], region, department)
                for kind, region, department in conn.execute(
                    text(
                        "SELECT kind, region_code, department_id FROM notifications"
                        " WHERE case_id = :c ORDER BY id"
                    ),
                    {"c": cid},
                )
            ]

    now = [
        ("dispatched", None, d.dept),
        ("rework", None, d.dept),
        ("extension_requested", TOWNSHIP, None),
    ]
    assert addressed() == now
    migrations.downgrade(engine, "0056")
    with engine.connect() as conn:
        before = conn.execute(
            text("SELECT kind, region_code FROM notifications WHERE case_id = :c ORDER BY id"),
            {"c": cid},
        ).all()
    assert [(k.split(":", 1)[0], r) for k, r in before] == [
        ("dispatched", COMMUNITY_A),
        ("rework", COMMUNITY_A),
        ("extension_requested", TOWNSHIP),
    ]
    migrations.upgrade(engine)
    assert migrations.current_revision(engine) == HEAD
    assert addressed() == now
