"""Offline sync: snapshot and change pages, tombstones, the cursor under concurrent writes,
and the batch of offline actions applied exactly once."""

from __future__ import annotations

import base64
import json
import random
import threading
import time
import uuid
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import select, text, update

from gridapi.personal import check_digit

from ..factories import COMMUNITY_A, COMMUNITY_B, LAT0, LON0, STEP, TOWNSHIP
from ..statements import statements_sent
from .test_case_workflow import race

A1, A2 = COMMUNITY_A + "001", COMMUNITY_A + "002"
B1 = COMMUNITY_B + "001"


def center(col: int) -> list[float]:
    return [round(LON0 + (col + 0.5) * STEP, 6), round(LAT0 + 0.5 * STEP, 6)]


def ok(response: Any, status: int = 200) -> Any:
    assert response.status_code == status, (response.status_code, response.get_json())
    return response.get_json()


def report(client: Any, col: int = 0, **extra: Any) -> dict:
    body = {
        "category": "0101",
        "description": "同步测试",
        "location": {"type": "Point", "coordinates": center(col)},
        **extra,
    }
    return ok(client.post("/api/v1/cases", json=body), 201)


def step(client: Any, case_id: int, action: str, **data: Any) -> dict:
    etag = client.get(f"/api/v1/cases/{case_id}").headers["ETag"]
    r = client.post(
        f"/api/v1/cases/{case_id}/transitions",
        json={"action": action, **data},
        headers={"If-Match": etag},
    )
    return ok(r)


_SERIAL = iter(range(100, 999))


def household(client: Any, grid: str) -> dict:
    return ok(
        client.post("/api/v1/households", json={"number": f"S{next(_SERIAL)}", "grid": grid}),
        201,
    )


def person(client: Any, household_id: int) -> dict:
    first = f"32050819800101{next(_SERIAL):03d}"
    body = {"name": "赵六", "id_number": first + check_digit(first), "household_id": household_id}
    return ok(client.post("/api/v1/persons", json=body), 201)


class Phone:
    """A phone's offline copy: applies sync pages, remembers what it was sent."""

    def __init__(self, client: Any, limit: int | None = None) -> None:
        self.client = client
        self.limit = limit
        self.cursor: str | None = None
        self.kept: dict[tuple[str, int], dict] = {}
        self.deliveries: Counter[tuple[str, int, str]] = Counter()
        self.references: dict[str, Any] = {}
        self.pages = 0

    def pull(self, patience: float = 60, *, settle: bool = True) -> list[dict]:
        """Sync until nothing more (waiting up to ``patience`` seconds while the answer says
        changes are pending); return every change received.

        The horizon is the whole server's (``pg_snapshot_xmin``): a transaction left open in
        another database, by another test of the run, holds deliveries back here too. Still
        pending past ``patience``, the pull fails and names the oldest open transactions
        (unless not ``settle``: then it returns what it got)."""
        received = []
        deadline = time.monotonic() + patience
        while True:
            query: dict[str, Any] = {}
            if self.cursor:
                query["cursor"] = self.cursor
            if self.limit:
                query["limit"] = self.limit
            body = ok(self.client.get("/api/v1/sync", query_string=query))
            self.pages += 1
            for change in body["changes"]:
                key = (change["type"], change["id"])
                if change["op"] == "upsert":
                    self.kept[key] = change["data"]
                else:
                    self.kept.pop(key, None)
                received.append(change)
            for name in ("categories", "calendar", "grids"):
                if name in body:
                    self.references[name] = body[name]
            self.cursor = body["next_cursor"]
            if body["pending"]:
                if time.monotonic() < deadline:
                    time.sleep(0.05)  # PostgreSQL: another transaction holds the horizon back
                    continue
                if settle:
                    raise AssertionError(f"still pending after {patience} s; {self._oldest()}")
            if not body["has_more"]:
                return received

    def _oldest(self) -> str:
        engine = self.client.application.extensions["gridapi"].engine
        with engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT datname, state, now() - xact_start AS open_for, left(query, 120) "
                    "FROM pg_stat_activity WHERE backend_xid IS NOT NULL "
                    "ORDER BY xact_start LIMIT 5"
                )
            ).all()
        return "open transactions: " + "; ".join(str(tuple(r)) for r in rows)

    def ids(self, kind: str) -> set[int]:
        return {i for t, i in self.kept if t == kind}


@pytest.fixture
def worker(accounts, world):  # type: ignore[no-untyped-def]
    return accounts.client("worker1", "grid_worker", grids=[A1])


def test_a_first_sync_is_a_snapshot_of_what_the_phone_keeps(client, worker, accounts):
    own = [report(worker)["id"] for _ in range(3)]
    other = report(client, 2)["id"]  # reported by the office elsewhere
    dispatched = report(client, 1)["id"]
    step(client, dispatched, "accept")
    step(client, dispatched, "file")
    step(client, dispatched, "dispatch", assignee_id=accounts.ids["worker1"])
    mine = household(client, A1)
    person(client, mine["id"])
    theirs = household(client, B1)
    phone = Phone(worker, limit=2)
    phone.pull()
    assert phone.pages >= 4  # paged
    assert phone.ids("case") == {*own, dispatched}
    assert other not in phone.ids("case")
    assert phone.ids("household") == {mine["id"]}
    assert theirs["id"] not in phone.ids("household")
    members = phone.kept[("household", mine["id"])]["members"]
    assert members[0]["name"] == "赵*"  # masked, like the household's own GET
    assert phone.kept[("case", dispatched)]["status"] == "dispatched"
    assert {f["properties"]["code"] for f in phone.references["grids"]["features"]} == {A1}
    assert any(c["code"] == "0101" for c in phone.references["categories"])
    assert "calendar" in phone.references
    # nothing new: an empty page without the reference sets
    body = ok(worker.get("/api/v1/sync", query_string={"cursor": phone.cursor}))
    assert body["changes"] == [] and body["has_more"] is False
    assert not {"categories", "calendar", "grids"} & set(body)


def test_changes_and_tombstones_follow(client, worker, accounts):
    case_id = report(worker)["id"]
    home = household(client, A1)
    phone = Phone(worker)
    phone.pull()
    assert phone.ids("household") == {home["id"]}
    # the office accepts the worker's case; a resident joins the household
    step(client, case_id, "accept")
    person(client, home["id"])
    changes = phone.pull()
    assert {(c["type"], c["id"], c["op"]) for c in changes} == {
        ("case", case_id, "upsert"),
        ("household", home["id"], "upsert"),
    }
    assert phone.kept[("case", case_id)]["status"] == "accepted"
    assert len(phone.kept[("household", home["id"])]["members"]) == 1
    # a case dispatched to the worker arrives; dispatched on to someone else, it leaves
    other = report(client, 1)["id"]
    for action in ("accept", "file"):
        step(client, other, action)
    step(client, other, "dispatch", assignee_id=accounts.ids["worker1"])
    assert ("case", other, "upsert") in {(c["type"], c["id"], c["op"]) for c in phone.pull()}
    someone = accounts.create("worker2", "grid_worker", grids=[A2])
    with client.application.extensions["gridapi"].engine.begin() as conn:
        conn.execute(
            text("UPDATE cases SET assignee_id = :u WHERE id = :i"), {"u": someone, "i": other}
        )
    assert [(c["type"], c["id"], c["op"]) for c in phone.pull()] == [("case", other, "delete")]
    assert other not in phone.ids("case")
    # the household's house moves to another grid: it leaves the phone
    house = ok(client.post("/api/v1/houses", json={"address": "平江路9号", "grid": A1}), 201)
    ok(client.patch(f"/api/v1/households/{home['id']}", json={"house_id": house["id"]}))
    phone.pull()
    ok(client.patch(f"/api/v1/houses/{house['id']}", json={"grid": B1}))
    assert [(c["type"], c["id"], c["op"]) for c in phone.pull()] == [
        ("household", home["id"], "delete")
    ]


def test_grids_are_sent_again_when_they_change(client, worker, world):
    phone = Phone(worker)
    phone.pull()
    first = phone.references.pop("grids")
    phone.pull()
    assert "grids" not in phone.references
    world.grid_version()  # a new version of the same grids
    phone.pull()
    assert (
        phone.references["grids"]["features"][0]["properties"]["version_id"]
        != (first["features"][0]["properties"]["version_id"])
    )


def test_a_cursor_belongs_to_its_caller_and_bad_ones_are_refused(worker, accounts):
    phone = Phone(worker)
    phone.pull()
    other = accounts.client("worker2", "grid_worker", grids=[A2])
    r = other.get("/api/v1/sync", query_string={"cursor": phone.cursor})
    assert r.status_code == 422 and r.get_json()["errors"]["query"]["cursor"]
    r = worker.get("/api/v1/sync", query_string={"cursor": "not-a-cursor"})
    assert r.status_code == 422


@pytest.mark.parametrize(
    "change",
    [
        {"refs": None},  # was 500 (AttributeError) on both engines
        {"txid": "x"},  # was 500 on PostgreSQL (bigint > varchar)
        {"id": -1},
        {"entity": 7},
        {"phase": "zzz"},
        {"v": 99},
        {"issued": 4102444800},  # 2100: would dodge the 410 of an expired cursor
        {"last": True},
        {"issued": 1},  # refreshed or aged by hand, under its MAC: forged
        {"txid": 0, "id": 0},  # replayed the log from its start
        {"actor": "user:999999"},  # another caller's
        {"keeps": 5},
        {"keeps": ""},  # would claim a cursor from before it named what the phone keeps
    ],
)
def test_a_cursor_edited_by_hand_is_422_not_500(worker, change):
    phone = Phone(worker)
    phone.pull()
    cursor = phone.cursor
    payload, _, mac = cursor.partition(".")
    raw = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    edited = base64.urlsafe_b64encode(json.dumps({**raw, **change}).encode()).decode()
    # edited, with the MAC it had, or with none: the cursors were not signed, and an edited
    # issued (or txid, or actor) was taken
    for forged in (f"{edited.rstrip('=')}.{mac}", edited):
        r = worker.get("/api/v1/sync", query_string={"cursor": forged})
        assert r.status_code == 422, r.get_json()
        assert r.get_json()["errors"]["query"]["cursor"] == ["not a cursor of ours"]
    assert worker.get("/api/v1/sync", query_string={"cursor": cursor}).status_code == 200


def test_an_old_cursor_is_gone(app, worker):
    phone = Phone(worker)
    phone.pull()
    app.extensions["gridapi"].settings.sync_retention_days = 0
    r = worker.get("/api/v1/sync", query_string={"cursor": phone.cursor})
    assert r.status_code == 410 and r.get_json()["code"] == 410


def test_a_first_sync_resumed_too_late_is_gone_and_unsigned_cursors_too(app, worker, client):
    """Only a cursor past its snapshot expired: a first sync resumed after the change log
    was pruned lost its tombstones. And a cursor of the unsigned kind is from before."""
    for _ in range(3):
        household(client, A1)
    first = worker.get("/api/v1/sync", query_string={"limit": 1}).get_json()
    assert first["has_more"] is True
    app.extensions["gridapi"].settings.sync_retention_days = 0
    r = worker.get("/api/v1/sync", query_string={"cursor": first["next_cursor"]})
    assert r.status_code == 410, r.get_json()
    app.extensions["gridapi"].settings.sync_retention_days = 30
    payload = first["next_cursor"].partition(".")[0]
    raw = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    unsigned = base64.urlsafe_b64encode(json.dumps({**raw, "v": 1}).encode()).decode()
    r = worker.get("/api/v1/sync", query_string={"cursor": unsigned})
    assert r.status_code == 410, r.get_json()


def test_a_roster_change_sends_the_phone_back_to_a_fresh_sync(client, worker, accounts):
    """A grid taken off a worker's roster left its households (names, addresses) on the
    phone: nothing in them changed, so the log had nothing to say; a grid added sent
    nothing until its households changed. Either makes the cursor gone (410), and the
    fresh sync is the new roster's."""
    mine, theirs = household(client, A1), household(client, A2)
    phone = Phone(worker)
    phone.pull()
    assert phone.ids("household") == {mine["id"]}
    user = accounts.ids["worker1"]

    def signed_in_again() -> None:  # a roster change ends the account's access tokens
        worker.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {accounts.token('worker1')}"

    ok(client.post(f"/api/v1/users/{user}/assignments", json={"grid": A2}), 201)
    signed_in_again()
    r = worker.get("/api/v1/sync", query_string={"cursor": phone.cursor})
    assert r.status_code == 410, r.get_json()
    assert "sync again without a cursor" in r.get_json()["message"]
    fresh = Phone(worker)
    fresh.pull()
    assert fresh.ids("household") == {mine["id"], theirs["id"]}
    ok(client.post(f"/api/v1/users/{user}/assignments/{A1}/end", json={}))
    signed_in_again()
    assert worker.get("/api/v1/sync", query_string={"cursor": fresh.cursor}).status_code == 410
    again = Phone(worker)
    again.pull()
    assert again.ids("household") == {theirs["id"]}
    # mid-snapshot too: the pages of one snapshot are of one roster
    first = ok(worker.get("/api/v1/sync", query_string={"limit": 1}))
    assert first["has_more"] is True
    ok(client.post(f"/api/v1/users/{user}/assignments", json={"grid": A1}), 201)
    signed_in_again()
    r = worker.get("/api/v1/sync", query_string={"cursor": first["next_cursor"], "limit": 1})
    assert r.status_code == 410, r.get_json()


def test_a_cursor_from_before_it_named_what_the_phone_keeps_is_gone(app, worker):
    """A cursor signed before cursors carried ``keeps`` cannot tell whether the roster
    changed since: the phone syncs again once."""
    from gridapi.resources.sync import _cursor_key
    from gridapi.services.sync import Cursor

    phone = Phone(worker)
    phone.pull()
    payload = phone.cursor.partition(".")[0]
    raw = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    assert raw.pop("v") == 2 and raw.pop("keeps")
    older = Cursor(**raw).encode(_cursor_key(app.extensions["gridapi"]))
    assert worker.get("/api/v1/sync", query_string={"cursor": older}).status_code == 410
    assert worker.get("/api/v1/sync", query_string={"cursor": phone.cursor}).status_code == 200


def test_only_ids_are_references_in_a_batch(worker, engine):
    """A description beginning with "ref:" was taken for a reference: the action failed on
    every resend, and never left the phone's queue."""
    action = offline_report("says-ref")
    action["payload"]["description"] = "ref: see the earlier report"
    (result,) = batch(worker, [action])
    assert result["status"] == 201, result
    with engine.connect() as conn:
        description = conn.execute(text("SELECT description FROM cases")).scalar()
    assert description == "ref: see the earlier report"


@pytest.mark.engines("postgis")
def test_a_late_commit_is_not_skipped(client, worker, engine):
    """A transaction that started before another and commits after it: the cursor must not
    move past its change. PostgreSQL only: SQLite serialises writers (BEGIN IMMEDIATE), so no
    transaction can commit out of order there."""
    phone = Phone(worker)
    phone.pull()
    slow = engine.connect()
    tx = slow.begin()
    slow.execute(
        text(
            "INSERT INTO households (county_code, region_code, grid_code, number, type, "
            "created_by, created_at, updated_at) VALUES ('320508', :r, :g, 'LATE', "
            "'registered', 'test', now(), now())"
        ),
        {"r": COMMUNITY_A, "g": A1},
    )
    fast = household(client, A1)
    # Pending for as long as the slow transaction is open: a short wait. The horizon is the
    # whole cluster's, so a long one held back every PostgreSQL sync test running beside
    # this one (in another xdist worker) until their own patience ran out.
    early = {c["id"] for c in phone.pull(patience=0.5, settle=False)}
    tx.commit()
    slow.close()
    late = {c["id"] for c in phone.pull()}
    with engine.connect() as conn:
        late_id = conn.execute(text("SELECT id FROM households WHERE number = 'LATE'")).scalar()
    assert late_id in late
    assert fast["id"] in early | late
    assert not early & late  # nothing twice


def test_the_cursor_under_concurrent_writes_skips_and_repeats_nothing(app, client, worker):
    phone = Phone(worker, limit=7)
    phone.pull()
    made: list[int] = []
    errors: list[Any] = []

    def write(n: int) -> None:
        try:
            c = app.test_client()
            c.environ_base.update(worker.environ_base)
            for _ in range(n):
                made.append(report(c)["id"])
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    writers = [threading.Thread(target=write, args=(8,)) for _ in range(3)]
    for t in writers:
        t.start()
    seen: Counter[int] = Counter()
    while any(t.is_alive() for t in writers):
        for change in phone.pull():
            seen[change["id"]] += 1
    for t in writers:
        t.join()
    for change in phone.pull():
        seen[change["id"]] += 1
    assert not errors
    assert sorted(seen) == sorted(made)  # none skipped
    assert set(seen.values()) == {1}  # none twice


# --- the batch --------------------------------------------------------------------------------


def batch(client: Any, actions: list[dict]) -> list[dict]:
    return ok(client.post("/api/v1/sync/batch", json={"actions": actions}))["results"]


def sending(actions: list[dict]) -> Any:
    """Return what sends a batch of ``actions`` from a client (for ``race``)."""
    return lambda c: c.post("/api/v1/sync/batch", json={"actions": actions})


def test_a_batch_applies_each_action_once_in_order_and_failures_stay_alone(client, worker, engine):
    home = household(client, A1)
    actions = [
        {
            "key": "k1",
            "type": "case.create",
            "payload": {
                "category": "0101",
                "description": "离线上报",
                "location": {"type": "Point", "coordinates": center(0)},
                "client_id": str(uuid.uuid4()),
            },
        },
        {
            "key": "k2",
            "type": "case.transition",
            "payload": {"case_id": "ref:k1", "action": "sign"},
        },
        {
            "key": "k3",
            "type": "visit.create",
            "payload": {"household_id": home["id"], "findings": "正常"},
        },
        {"key": "k4", "type": "visit.create", "payload": {"household_id": 999999}},
        {
            "key": "k5",
            "type": "case.transition",
            "payload": {"case_id": "ref:k4", "action": "sign"},
        },
    ]
    first = batch(worker, actions)
    assert [r["key"] for r in first] == ["k1", "k2", "k3", "k4", "k5"]
    assert first[0]["status"] == 201 and isinstance(first[0]["id"], int)
    assert first[1]["status"] == 409  # a reported case cannot be signed: the state machine says
    assert first[1]["error"]["errors"]["allowed_actions"] == []
    assert first[2]["status"] == 201
    assert first[3]["status"] == 422 and first[3]["error"]["errors"]["json"]["household_id"]
    assert first[4]["status"] == 422  # refers to an action that created nothing
    again = batch(worker, list(reversed(actions)))
    by_key = {r["key"]: r for r in again}
    assert by_key["k1"]["replayed"] and by_key["k1"]["id"] == first[0]["id"]
    assert by_key["k3"]["replayed"] and by_key["k3"]["id"] == first[2]["id"]
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM cases")).scalar() == 1
        assert conn.execute(text("SELECT count(*) FROM visits")).scalar() == 1
    # a key reused for another action is refused for that action only
    other = batch(
        worker, [{**actions[2], "payload": {"household_id": home["id"], "findings": "变了"}}]
    )
    assert other[0]["status"] == 422


def test_a_batch_reports_a_case_and_keeps_its_key_in_one_transaction(
    client, worker, engine, monkeypatch
):
    """The action's key is added to the report's own transaction: when it cannot be
    written, the case is not reported either, and the batch sent again reports it once."""
    from gridapi.resources import sync

    action = {
        "key": "offline-1",
        "type": "case.create",
        "payload": {
            "category": "0101",
            "description": "离线上报",
            "location": {"type": "Point", "coordinates": center(0)},
        },
    }

    def cannot_remember(session: Any, **kw: Any) -> None:
        raise RuntimeError("the key could not be written")

    earlier = report(worker)  # the first report of a process also loads the calendar
    monkeypatch.setattr(sync, "_remember_applied", cannot_remember)
    failed = batch(worker, [action])
    assert failed[0]["status"] == 500, failed
    with engine.connect() as conn:
        ids = conn.execute(text("SELECT id FROM cases")).scalars().all()
        assert ids == [earlier["id"]]
        keys = conn.execute(text("SELECT key FROM idempotency_keys")).scalars().all()
        assert not [k for k in keys if "offline-1" in k]
    monkeypatch.undo()
    first, again = batch(worker, [action]), batch(worker, [action])
    assert first[0]["status"] == 201 and not first[0]["replayed"]
    assert again[0]["replayed"] and again[0]["id"] == first[0]["id"]
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM cases")).scalar() == 2


def test_a_simulated_phone_queue_of_200_actions_lands_exactly_once(
    app, client, worker, accounts, engine
):
    """200 mixed offline actions — reports, case steps, visits, a patrol with its track,
    task completions — sent twice, then shuffled, while an office edits the same cases: the
    end state is what the queue meant, each action applied once."""
    from datetime import UTC, datetime, timedelta

    homes = [household(client, A1)["id"] for _ in range(5)]
    worker_id = accounts.ids["worker1"]
    dispatched = []
    for _ in range(20):
        case_id = report(client)["id"]
        for action in ("accept", "file"):
            step(client, case_id, action)
        step(client, case_id, "dispatch", assignee_id=worker_id)
        dispatched.append(case_id)
    due = {"amount": 3, "unit": "days"}
    tasks = [
        ok(
            client.post(
                "/api/v1/tasks",
                json={"title": f"任务{n}", "grid": A1, "assignee_id": worker_id, "due_in": due},
            ),
            201,
        )["id"]
        for n in range(8)
    ]
    actions: list[dict] = []
    for n in range(108):
        payload = {
            "category": "0101",
            "description": f"离线事件{n}",
            "location": {"type": "Point", "coordinates": center(n % 2)},
        }
        actions.append({"key": f"create-{n}", "type": "case.create", "payload": payload})
    for n, case_id in enumerate(dispatched):
        actions.append(
            {
                "key": f"sign-{n}",
                "type": "case.transition",
                "payload": {"case_id": case_id, "action": "sign"},
            }
        )
        actions.append(
            {
                "key": f"feedback-{n}",
                "type": "case.transition",
                "payload": {"case_id": case_id, "action": "feedback", "comment": "已处理"},
            }
        )
    for n in range(32):
        actions.append(
            {
                "key": f"visit-{n}",
                "type": "visit.create",
                "payload": {"household_id": homes[n % 5], "findings": f"走访{n}"},
            }
        )
    start = datetime.now(UTC) - timedelta(hours=1)
    actions.append(
        {"key": "patrol", "type": "patrol.start", "payload": {"started_at": start.isoformat()}}
    )
    track = [
        {
            "t": (start + timedelta(minutes=m)).isoformat(),
            "lon": center(0)[0] + 0.0001 * m,
            "lat": center(0)[1],
        }
        for m in range(1, 41)
    ]
    for n in range(10):  # overlapping batches: points 4n .. 4n+7, so most arrive twice
        actions.append(
            {
                "key": f"points-{n}",
                "type": "patrol.points",
                "payload": {"patrol_id": "ref:patrol", "points": track[4 * n : 4 * n + 8]},
            }
        )
    actions.append(
        {
            "key": "patrol-end",
            "type": "patrol.end",
            "payload": {
                "patrol_id": "ref:patrol",
                "ended_at": (start + timedelta(minutes=50)).isoformat(),
            },
        }
    )
    for n, task_id in enumerate(tasks):
        actions.append(
            {
                "key": f"task-{n}",
                "type": "task.complete",
                "payload": {"task_id": task_id, "comment": "已完成"},
            }
        )
    assert len(actions) == 200
    # the office supervises the dispatched cases meanwhile (a change that does not conflict)
    office_errors: list[Any] = []

    def office() -> None:
        # As an office's client does: a 412 (the phone's queue changed the case between the
        # office's read and its write) is answered by reading the case again and retrying.
        try:
            for case_id in dispatched[:10]:
                for _attempt in range(5):
                    etag = client.get(f"/api/v1/cases/{case_id}").headers["ETag"]
                    r = client.post(
                        f"/api/v1/cases/{case_id}/transitions",
                        json={"action": "supervise", "level": "yellow", "comment": "督办"},
                        headers={"If-Match": etag},
                    )
                    if r.status_code != 412:
                        break
                ok(r)
        except Exception as exc:  # noqa: BLE001
            office_errors.append(exc)

    t = threading.Thread(target=office)
    t.start()
    first = batch(worker, actions)
    t.join()
    assert not office_errors, office_errors
    failed = [r for r in first if not 200 <= r["status"] < 300]
    assert not failed, failed[:3]
    second = batch(worker, actions)
    assert [r for r in second if not r["replayed"]] == []
    shuffled = actions[:]
    random.Random(7).shuffle(shuffled)
    third = batch(worker, shuffled)
    assert all(r["replayed"] for r in third)
    patrol_id = next(r["id"] for r in first if r["key"] == "patrol")
    assert [r["id"] for r in third if r["key"] == "patrol"] == [patrol_id]
    with engine.connect() as conn:
        count = conn.execute(
            text("SELECT count(*) FROM cases WHERE description LIKE '离线事件%'")
        ).scalar()
        assert count == 108
        assert conn.execute(text("SELECT count(*) FROM visits")).scalar() == 32
        statuses = dict(
            conn.execute(
                text(f"SELECT id, status FROM cases WHERE id IN ({','.join(map(str, dispatched))})")
            ).all()
        )
        supervised = conn.execute(
            text("SELECT count(*) FROM cases WHERE supervision = 'yellow'")
        ).scalar()
        patrols = conn.execute(text("SELECT status, point_count FROM patrols")).all()
        points = conn.execute(text("SELECT count(*) FROM patrol_points")).scalar()
        done = conn.execute(text("SELECT status, count(*) FROM tasks GROUP BY status")).all()
    assert set(statuses.values()) == {"feedback"}
    assert supervised == 10
    assert [tuple(p) for p in patrols] == [("ended", 40)] and points == 40
    assert [tuple(d) for d in done] == [("completed", 8)]


def offline_report(key: str, col: int = 0) -> dict:
    payload = {
        "category": "0101",
        "description": "离线上报",
        "location": {"type": "Point", "coordinates": center(col)},
    }
    return {"key": key, "type": "case.create", "payload": payload}


def test_one_batch_sent_from_six_threads_at_once_answers_the_first_id_to_all(
    worker, accounts, engine
):
    """A phone that resends while its first send is still running (a time-out, two radios):
    one case per key, and every answer is that case's 201 and id (replayed but once)."""
    phones = [accounts.client("worker1") for _ in range(6)]
    ids = []
    for n in range(15):
        action = offline_report(f"storm-{n}")
        answers = race(phones, sending([action]))
        results = [ok(a)["results"][0] for a in answers]
        first = [r for r in results if not r["replayed"]]
        assert len(first) == 1, results
        ids.append(first[0]["id"])
        assert isinstance(ids[-1], int), results
        expected = {"key": action["key"], "status": 201, "id": ids[-1], "error": None}
        assert [{k: r[k] for k in expected} for r in results] == [expected] * 6, results
    with engine.connect() as conn:
        cases = conn.execute(text("SELECT id FROM cases ORDER BY id")).scalars().all()
        stored = conn.execute(
            text(
                "SELECT key, status_code, resource_id FROM idempotency_keys "
                "WHERE key LIKE 'batch:%' ORDER BY id"
            )
        ).all()
    assert cases == ids
    assert [tuple(s) for s in stored] == [(f"batch:storm-{n}", 201, i) for n, i in enumerate(ids)]


def test_a_mixed_batch_sent_from_six_threads_at_once_is_applied_once(
    client, worker, accounts, engine
):
    """Patrols, their points (by reference) and visits: actions with no key of their own at
    the endpoint wait for the first send too, instead of failing on its key or its patrol."""
    from datetime import UTC, datetime, timedelta

    home = household(client, A1)
    phones = [accounts.client("worker1") for _ in range(6)]
    for n in range(5):
        start = datetime.now(UTC) - timedelta(hours=6 - n)
        track = [
            {"t": (start + timedelta(minutes=m)).isoformat(), "lon": center(0)[0], "lat": LAT0}
            for m in range(1, 4)
        ]
        ended_at = (start + timedelta(minutes=30)).isoformat()
        actions = [
            {"key": f"p{n}", "type": "patrol.start", "payload": {"started_at": start.isoformat()}},
            {
                "key": f"p{n}-points",
                "type": "patrol.points",
                "payload": {"patrol_id": f"ref:p{n}", "points": track},
            },
            {
                "key": f"p{n}-end",
                "type": "patrol.end",
                "payload": {"patrol_id": f"ref:p{n}", "ended_at": ended_at},
            },
            {
                "key": f"v{n}",
                "type": "visit.create",
                "payload": {"household_id": home["id"], "findings": f"走访{n}"},
            },
        ]
        answers = race(phones, sending(actions))
        sends = [ok(a)["results"] for a in answers]
        for i, action in enumerate(actions):
            results = [send[i] for send in sends]
            assert sorted(r["replayed"] for r in results) == [False] + [True] * 5, results
            first = next(r for r in results if not r["replayed"])
            assert 200 <= first["status"] < 300, first
            for r in results:
                assert (r["key"], r["status"], r["id"], r["error"]) == (
                    action["key"],
                    first["status"],
                    first["id"],
                    None,
                ), results
    with engine.connect() as conn:
        patrols = conn.execute(text("SELECT status, point_count FROM patrols")).all()
        visits = conn.execute(text("SELECT count(*) FROM visits")).scalar()
    assert [tuple(p) for p in patrols] == [("ended", 3)] * 5
    assert visits == 5


def close(office: Any, worker: Any, case_id: int, worker_id: int) -> None:
    """Take a reported case to closed: the office dispatches it, the worker handles it."""
    for action in ("accept", "file"):
        step(office, case_id, action)
    step(office, case_id, "dispatch", assignee_id=worker_id)
    step(worker, case_id, "sign")
    step(worker, case_id, "feedback", comment="已处理")
    step(office, case_id, "verify_pass")
    step(office, case_id, "close")


def test_a_reference_reaches_an_action_of_an_earlier_batch(client, worker, accounts):
    """A phone resends only the failed tail of its queue: a rating of a case it reported
    offline, refused while the case was open, is sent alone once the case is closed."""
    first = batch(
        worker,
        [
            offline_report("report"),
            {
                "key": "rate",
                "type": "case.rating",
                "payload": {"case_id": "ref:report", "score": 5},
            },
        ],
    )
    assert [r["status"] for r in first] == [201, 409], first
    case_id = first[0]["id"]
    close(client, worker, case_id, accounts.ids["worker1"])
    tail = [
        {"key": "rate", "type": "case.rating", "payload": {"case_id": "ref:report", "score": 5}}
    ]
    rated = batch(worker, tail)
    assert rated == [
        {"key": "rate", "status": 200, "id": case_id, "error": None, "replayed": False}
    ]
    assert batch(worker, tail)[0] == {**rated[0], "replayed": True}
    assert ok(client.get(f"/api/v1/cases/{case_id}"))["satisfaction"]["score"] == 5


def test_a_reference_to_a_later_action_resolves_once_that_action_was_applied(worker, engine):
    """References follow what was applied, not where an action sits in the batch: a batch
    whose points come before their patrol refuses the points the first time (the patrol is
    not there yet) and applies them when the batch is sent again; sent once more, in any
    order, everything is a replay with the same ids."""
    from datetime import UTC, datetime, timedelta

    start = datetime.now(UTC) - timedelta(hours=1)
    points = {
        "key": "points",
        "type": "patrol.points",
        "payload": {
            "patrol_id": "ref:patrol",
            "points": [{"t": (start + timedelta(minutes=1)).isoformat(), "lon": LON0, "lat": LAT0}],
        },
    }
    patrol = {"key": "patrol", "type": "patrol.start", "payload": {"started_at": start.isoformat()}}
    first = batch(worker, [points, patrol])
    assert [r["status"] for r in first] == [422, 201], first
    assert first[0]["error"]["errors"] == {
        "json": {
            "payload": {"patrol_id": ["the action 'patrol' is not before this one in the batch"]}
        }
    }
    second = batch(worker, [points, patrol])
    assert second[0]["status"] == 200 and not second[0]["replayed"], second
    assert second[1] == {**first[1], "replayed": True}
    third = batch(worker, [patrol, points])
    assert [r["replayed"] for r in third] == [True, True]
    assert [(r["status"], r["id"]) for r in third] == [
        (first[1]["status"], first[1]["id"]),
        (second[0]["status"], second[0]["id"]),
    ]
    with engine.connect() as conn:
        assert conn.execute(text("SELECT point_count FROM patrols")).scalars().all() == [1]


def test_every_error_in_the_results_has_the_one_error_shape(client, worker):
    """The batch's own refusals (a key reused, a reference with no id, a path parameter
    missing) look like every other error of the API, and name the field of the action."""
    home = household(client, A1)
    visit = {"key": "visit", "type": "visit.create", "payload": {"household_id": home["id"]}}
    beat = {
        "key": "beat",
        "type": "presence.heartbeat",
        "payload": {"location": {"type": "Point", "coordinates": center(0)}},
    }
    assert [r["status"] for r in batch(worker, [visit, beat])] == [201, 200]
    results = batch(
        worker,
        [
            {**visit, "payload": {"household_id": home["id"], "findings": "变了"}},
            {"key": "points", "type": "patrol.points", "payload": {"patrol_id": "ref:nothing"}},
            {"key": "points-2", "type": "patrol.points", "payload": {"patrol_id": "ref:points"}},
            {"key": "end", "type": "patrol.end", "payload": {"patrol_id": "ref:beat"}},
            {"key": "sign", "type": "case.transition", "payload": {"action": "sign"}},
            {"key": "bad", "type": "visit.create", "payload": {"household_id": "x"}},
        ],
    )
    shape = {"code", "status", "message", "errors"}
    assert [(r["status"], set(r["error"])) for r in results] == [(422, shape)] * 6, results
    assert {(r["error"]["code"], r["error"]["status"]) for r in results} == {
        (422, "Unprocessable Entity")
    }
    assert [r["error"]["errors"] for r in results[:5]] == [
        {"json": {"key": ["reused"]}},
        {"json": {"payload": {"patrol_id": ["no action 'nothing' was applied"]}}},
        {
            "json": {
                "payload": {
                    "patrol_id": ["the action 'points' of this batch failed or created nothing"]
                }
            }
        },
        {"json": {"payload": {"patrol_id": ["the action 'beat' created nothing"]}}},
        {"json": {"payload": {"case_id": ["Missing data for required field."]}}},
    ]
    assert results[1]["error"]["message"] == "patrol_id: no action 'nothing' was applied"
    assert results[5]["error"]["errors"]["json"]["household_id"]  # the endpoint's own


def test_a_report_sent_online_first_is_a_replay_in_the_batch(client, worker, accounts, engine):
    """The phone tried to report online (Idempotency-Key), heard nothing and queued the
    report with the same key: the batch answers the case reported then, replayed, and a
    later batch may refer to it."""
    action = offline_report("online-then-offline")
    online = worker.post(
        "/api/v1/cases", json=action["payload"], headers={"Idempotency-Key": action["key"]}
    )
    assert online.status_code == 201
    case_id = online.get_json()["id"]
    replayed = {"key": action["key"], "status": 201, "id": case_id, "error": None, "replayed": True}
    assert batch(worker, [action]) == [replayed]
    assert batch(worker, [action]) == [replayed]
    close(client, worker, case_id, accounts.ids["worker1"])
    rating = {"case_id": f"ref:{action['key']}", "score": 4}
    rated = batch(worker, [{"key": "rate", "type": "case.rating", "payload": rating}])
    assert (rated[0]["status"], rated[0]["id"]) == (200, case_id), rated
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM cases")).scalar() == 1


def test_a_key_sent_as_a_report_s_header_is_not_taken_by_another_action(worker, engine):
    """A patrol.start with the key of a report sent online started a patrol (one key, two
    effects), and the phone's replay of its report was then refused."""
    action = offline_report("online-report")
    online = worker.post(
        "/api/v1/cases", json=action["payload"], headers={"Idempotency-Key": action["key"]}
    )
    assert online.status_code == 201
    (taken,) = batch(worker, [{"key": action["key"], "type": "patrol.start", "payload": {}}])
    assert (taken["status"], taken["error"]["errors"]) == (422, {"json": {"key": ["reused"]}})
    assert count_rows(engine, "patrols") == 0
    (replayed,) = batch(worker, [action])
    assert (replayed["status"], replayed["id"], replayed["replayed"]) == (
        201,
        online.get_json()["id"],
        True,
    )


def test_a_patrol_and_a_visit_tried_online_first_are_replays_in_the_batch(client, worker, engine):
    """The batch sent no Idempotency-Key to POST /patrols and /visits: a start tried online
    first answered 409 (a patrol is active), a visit was recorded twice."""
    online = worker.post("/api/v1/patrols", json={}, headers={"Idempotency-Key": "start-1"})
    assert online.status_code == 201
    (start,) = batch(worker, [{"key": "start-1", "type": "patrol.start", "payload": {}}])
    assert (start["status"], start["id"], start["replayed"]) == (
        201,
        online.get_json()["id"],
        True,
    )
    home = household(client, A1)
    body = {"household_id": home["id"], "findings": "独居老人，状况良好"}
    visited = worker.post("/api/v1/visits", json=body, headers={"Idempotency-Key": "visit-1"})
    assert visited.status_code == 201
    (visit,) = batch(worker, [{"key": "visit-1", "type": "visit.create", "payload": body}])
    assert (visit["status"], visit["id"]) == (201, visited.get_json()["id"]), visit
    assert count_rows(engine, "patrols") == count_rows(engine, "visits") == 1


@pytest.mark.engines("postgis")
@pytest.mark.parametrize("held", ["key", "client_id"])
def test_a_report_still_being_written_online_is_waited_for_in_the_batch(worker, engine, held):
    """A phone whose report timed out online queues it and sends its batch while the first
    request is still writing: the endpoint took the key (or the client_id) without waiting,
    and the action answered 409 "in flight". The action waits for it, then answers."""
    from gridapi.services import idempotency

    worker.post("/api/v1/sync/batch", json={"actions": [offline_report("probe")]})
    with engine.connect() as conn:
        caller = conn.execute(text("SELECT caller FROM idempotency_keys")).scalar()
    client_id = str(uuid.uuid4())
    action = offline_report("tried-online", 1)
    action["payload"]["client_id"] = client_id
    lock = "key:tried-online" if held == "key" else f"client_id:{client_id}"
    answers: list[Any] = []
    with engine.connect() as online:  # the request still writing holds its keys
        taken = online.execute(
            text("SELECT pg_try_advisory_xact_lock(:n)"),
            {"n": idempotency.lock_id(caller, lock)},
        )
        assert taken.scalar() is True
        sender = threading.Thread(target=lambda: answers.append(batch(worker, [action])))
        sender.start()
        time.sleep(1.0)
        online.rollback()  # it ends (here with nothing written): the action goes on
        sender.join(30)
    ((result,),) = answers
    assert (result["status"], result["replayed"]) == (201, False), result
    assert count_rows(engine, "cases") == 2


def count_rows(engine: Any, table: str) -> int:
    with engine.connect() as conn:
        return conn.execute(text(f"SELECT count(*) FROM {table}")).scalar()


def test_a_value_no_header_can_carry_fails_its_action_alone(worker, engine):
    """A key or an if_match with a line break (or another character a header cannot carry)
    is refused for its action, naming its field; the actions around it are applied, and the
    queue sent again replays them instead of answering 500 for ever."""
    actions = [
        offline_report("u-a", 0),
        offline_report("u-b\r\nX: 1", 1),
        offline_report("u-c", 2),
        {
            "key": "u-d",
            "type": "case.transition",
            "payload": {"case_id": "ref:u-a", "action": "sign", "if_match": '"1"\n'},
        },
        offline_report("u-e", 3),
    ]
    first = batch(worker, actions)
    assert [(r["key"], r["status"], r["replayed"]) for r in first] == [
        ("u-a", 201, False),
        ("u-b\r\nX: 1", 422, False),
        ("u-c", 201, False),
        ("u-d", 422, False),
        ("u-e", 201, False),
    ], first
    assert first[1]["error"]["errors"] == {"json": {"key": ["1 to 200 printable characters"]}}
    assert first[3]["error"]["errors"] == {
        "json": {"payload": {"if_match": ["an ETag as read, or *"]}}
    }
    assert count_rows(engine, "cases") == 3
    again = batch(worker, actions)
    assert [(r["status"], r["id"], r["replayed"]) for r in again] == [
        (201, first[0]["id"], True),
        (422, None, False),
        (201, first[2]["id"], True),
        (422, None, False),
        (201, first[4]["id"], True),
    ], again
    assert count_rows(engine, "cases") == 3


@pytest.mark.parametrize(
    "case_id", ["1/rating#", "1?x=", True, 1.5, "", "١", 0, -3, 2**31, "99999999999"]
)
def test_a_path_parameter_that_is_no_id_is_refused_for_its_action(worker, engine, case_id):
    """A path parameter is an id, nothing that would take the action to another path (and
    of the ids' range: one beyond it answered the router's "URL not found")."""
    results = batch(
        worker,
        [
            {
                "key": "t",
                "type": "case.transition",
                "payload": {"case_id": case_id, "action": "sign"},
            },
            offline_report("r"),
        ],
    )
    assert [r["status"] for r in results] == [422, 201], results
    assert results[0]["error"]["errors"] == {
        "json": {"payload": {"case_id": ["Not a valid integer."]}}
    }
    assert count_rows(engine, "cases") == 1


def test_a_reference_with_a_nul_is_no_id_on_both_engines(worker):
    """PostgreSQL cannot compare text with a NUL: the reference is answered before any query."""
    ref = {"key": "n", "type": "patrol.points", "payload": {"patrol_id": "ref:\x00"}}
    results = batch(worker, [ref, offline_report("r")])
    assert [r["status"] for r in results] == [422, 201], results
    assert results[0]["error"]["errors"] == {
        "json": {"payload": {"patrol_id": ["no action '\\x00' was applied"]}}
    }


def test_an_unexpected_error_in_one_action_is_that_actions_500(worker, engine, monkeypatch, caplog):
    """An error nobody foresaw, before the endpoint runs, answers its own action: a 500 in
    the one error body (no traceback), logged, with nothing of that action left behind;
    the others are applied, and the action applies when sent again."""
    import logging

    from gridapi.resources import sync

    dispatch = sync._dispatch

    def breaks_on_b(method: str, path: str, body: Any, *args: Any) -> Any:
        if body.get("description") == "坏":
            raise ValueError("Header values must not contain newline characters.")
        return dispatch(method, path, body, *args)

    actions = [offline_report("e-a", 0), offline_report("e-b", 1), offline_report("e-c", 2)]
    actions[1]["payload"]["description"] = "坏"
    monkeypatch.setattr(sync, "_dispatch", breaks_on_b)
    with caplog.at_level(logging.ERROR):
        first = batch(worker, actions)
    assert [r["status"] for r in first] == [201, 500, 201], first
    error = first[1]["error"]
    assert set(error) == {"code", "status", "message", "errors"}
    assert (error["code"], error["status"]) == (500, "Internal Server Error")
    assert "newline" not in error["message"] and "Traceback" not in error["message"]
    logged = [r for r in caplog.records if r.exc_info and r.exc_info[0] is ValueError]
    assert logged, caplog.records
    assert count_rows(engine, "cases") == 2
    with engine.connect() as conn:
        keys = conn.execute(text("SELECT key FROM idempotency_keys")).scalars().all()
    assert not [k for k in keys if "e-b" in k]
    monkeypatch.undo()
    again = batch(worker, actions)
    assert [(r["status"], r["replayed"]) for r in again] == [(201, True), (201, False), (201, True)]
    assert count_rows(engine, "cases") == 3


def test_a_database_out_of_reach_still_answers_the_whole_batch_503(worker, engine, monkeypatch):
    """A key's lock waited for too long (or no connection): the batch answers 503 and is
    sent again; what was applied before it replays."""
    from sqlalchemy.exc import OperationalError

    from gridapi.resources import sync

    claim = sync.idempotency.claim

    def times_out_on_slow(session: Any, caller: str, keys: list[str], **kw: Any) -> None:
        if "batch:slow" in keys:
            raise OperationalError("SELECT pg_advisory_xact_lock(1)", {}, Exception("timeout"))
        claim(session, caller, keys, **kw)

    actions = [offline_report("fast", 0), offline_report("slow", 1)]
    monkeypatch.setattr(sync.idempotency, "claim", times_out_on_slow)
    answer = worker.post("/api/v1/sync/batch", json={"actions": actions})
    assert answer.status_code == 503 and answer.headers["Retry-After"]
    monkeypatch.undo()
    again = batch(worker, actions)
    assert [(r["status"], r["replayed"]) for r in again] == [(201, True), (201, False)]
    assert count_rows(engine, "cases") == 2


def test_each_batch_key_is_its_own_key(worker, engine):
    """Keys that differ only by quotes or spaces around them are different keys, also for a
    case report (whose key is its Idempotency-Key); a key with a character no header can
    carry is refused for its action alone, whatever its type."""
    keys = ['"abc"', "abc", " abcx", "abcx", "   "]
    actions = [offline_report(key, col) for col, key in enumerate(keys)]
    for n, action in enumerate(actions):
        action["payload"]["description"] = f"离线上报 {n}"
    first = batch(worker, actions)
    assert [(r["key"], r["status"], r["replayed"]) for r in first] == [
        (key, 201, False) for key in keys
    ], first
    assert len({r["id"] for r in first}) == len(keys)
    again = batch(worker, list(reversed(actions)))
    assert [(r["key"], r["id"], r["replayed"]) for r in again] == [
        (r["key"], r["id"], True) for r in reversed(first)
    ], again
    assert count_rows(engine, "cases") == len(keys)
    refused = batch(
        worker,
        [
            offline_report("tab\there", 0),
            offline_report("line\u2028separator", 1),
            {"key": "bell\x07", "type": "patrol.start", "payload": {}},
        ],
    )
    assert [(r["status"], r["error"]["errors"]) for r in refused] == [
        (422, {"json": {"key": ["1 to 200 printable characters"]}})
    ] * 3, refused
    assert count_rows(engine, "cases") == len(keys)
    assert count_rows(engine, "patrols") == 0


def test_the_nil_uuid_is_no_client_id_in_a_batch(worker, engine):
    """As on POST /cases: two queued reports that both carry the nil UUID are two reports."""
    nil = "00000000-0000-0000-0000-000000000000"
    actions = [offline_report("nil-a"), offline_report("nil-b", 1)]
    for action in actions:
        action["payload"]["client_id"] = nil
    answers = batch(worker, actions)
    assert [a["status"] for a in answers] == [201, 201], answers
    assert batch(worker, actions) == [{**a, "replayed": True} for a in answers]
    assert count_rows(engine, "cases") == 2


def test_a_client_id_in_other_letter_case_is_the_same_report(worker, engine):
    """iOS writes a UUID in upper case: a resend with it in lower case is the same report,
    as POST /api/v1/cases says; a payload whose client_id was canonical keeps the hash
    earlier batches stored."""
    from datetime import UTC, datetime, timedelta

    from gridapi.resources.cases import REPORT_DEFAULTS
    from gridapi.services import idempotency

    client_id = uuid.uuid4()
    action = offline_report("cc-X")
    action["payload"]["client_id"] = str(client_id).upper()
    first = batch(worker, [action])
    assert first[0]["status"] == 201, first
    lower = {**action, "payload": {**action["payload"], "client_id": str(client_id)}}
    assert batch(worker, [lower]) == [{**first[0], "replayed": True}]
    assert batch(worker, [action]) == [{**first[0], "replayed": True}]
    # a finding of a patrol names its report the same way
    started = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    finding_id = uuid.uuid4()
    finding = {
        "key": "f-1",
        "type": "patrol.finding",
        "payload": {
            **offline_report("f-1", 1)["payload"],
            "patrol_id": "ref:p-1",
            "client_id": str(finding_id).upper(),
        },
    }
    found = batch(
        worker,
        [{"key": "p-1", "type": "patrol.start", "payload": {"started_at": started}}, finding],
    )
    assert [r["status"] for r in found] == [201, 201], found
    resent = {**finding, "payload": {**finding["payload"], "client_id": str(finding_id)}}
    assert batch(worker, [resent]) == [{**found[1], "replayed": True}]
    assert count_rows(engine, "cases") == 2
    canonical = offline_report("cc-Y", 2)
    canonical["payload"]["client_id"] = str(uuid.uuid4())
    assert batch(worker, [canonical])[0]["status"] == 201
    with engine.connect() as conn:
        stored = conn.execute(
            text("SELECT request_hash FROM idempotency_keys WHERE key = 'batch:cc-Y'")
        ).scalar()
    digest = idempotency.request_hash(
        "BATCH", "case.create", canonical["payload"], defaults=REPORT_DEFAULTS
    )
    assert stored == digest.value == digest.legacy  # nothing in it to write otherwise


def test_a_finding_s_result_is_the_id_of_its_case_and_may_be_referred_to(worker, engine):
    """A finding answered 201 with a null id: its answer nests the case it reported, and
    the batch read a top-level id only. The phone could not learn the case's id from its
    queue, and a transition of it by "ref:" was refused ("failed or created nothing").
    Its id is the case's, now and in a later batch, and a reference to it is a case_id."""
    from datetime import UTC, datetime, timedelta

    started = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    finding = {
        "key": "fd-1",
        "type": "patrol.finding",
        "payload": {**offline_report("fd-1", 1)["payload"], "patrol_id": "ref:ps-1"},
    }
    # A step the worker may not take on a reported case: its 409 is the case's answer, so
    # the reference reached the case (it was 422, "failed or created nothing").
    step = {
        "key": "fd-2",
        "type": "case.transition",
        "payload": {"case_id": "ref:fd-1", "action": "escalate", "comment": "需上级处理"},
    }
    start = {"key": "ps-1", "type": "patrol.start", "payload": {"started_at": started}}
    answers = batch(worker, [start, finding, step])
    assert [a["status"] for a in answers] == [201, 201, 409], answers
    case_id = answers[1]["id"]
    assert isinstance(case_id, int)
    assert "not allowed in state reported" in answers[2]["error"]["errors"]["action"][0]
    patrol = ok(worker.get(f"/api/v1/patrols/{answers[0]['id']}"))
    assert case_id in patrol["findings"], patrol
    # Sent again: the same ids; referred to from a later batch: the same case.
    assert batch(worker, [start, finding]) == [{**a, "replayed": True} for a in answers[:2]]
    [later] = batch(worker, [{**step, "key": "fd-3"}])
    assert later["status"] == 409, later
    # A finding is no patrol: a patrol_id by a reference to it is refused as such.
    points = {"key": "fd-4", "type": "patrol.end", "payload": {"patrol_id": "ref:fd-1"}}
    [refused] = batch(worker, [points])
    assert refused["status"] == 422
    assert "made a case id, not a patrol id" in refused["error"]["message"], refused
    assert count_rows(engine, "cases") == 1


def test_a_case_upsert_is_the_case_as_its_get_answers_it_with_its_duplicates(client, worker):
    original, copy = report(worker, 0)["id"], report(worker, 0)["id"]
    step(client, copy, "duplicate", duplicate_of=original, comment="重复上报")
    phone = Phone(worker)
    phone.pull()
    assert phone.kept[("case", original)]["duplicates"] == [copy]
    assert phone.kept[("case", copy)]["duplicates"] == []
    for case_id in (original, copy):
        assert phone.kept[("case", case_id)] == ok(worker.get(f"/api/v1/cases/{case_id}"))


def test_the_duplicates_of_a_page_of_cases_are_read_in_one_query(client, worker, engine):
    """No query per case: each page that carries cases reads their duplicates at once."""
    from sqlalchemy import event

    originals = [report(worker, col)["id"] for col in range(3)]
    copies = [report(worker, col)["id"] for col in range(3)]
    for original, copy in zip(originals, copies, strict=True):
        step(client, copy, "duplicate", duplicate_of=original, comment="重复上报")
    statements: list[str] = []

    def seen(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    kept: dict[int, dict] = {}
    pages = []  # (cases upserted on the page, queries of duplicates it made)
    query: dict[str, Any] = {}
    deadline = time.monotonic() + 20
    event.listen(engine, "before_cursor_execute", seen)
    try:
        while True:
            before = len(statements)
            body = ok(worker.get("/api/v1/sync", query_string=query))
            upserts = [c for c in body["changes"] if c["type"] == "case" and c["op"] == "upsert"]
            kept.update((c["id"], c["data"]) for c in upserts)
            made = [s for s in statements[before:] if "duplicate_of_id IN" in s]
            pages.append((len(upserts), len(made)))
            query = {"cursor": body["next_cursor"]}
            if body["pending"] and time.monotonic() < deadline:
                time.sleep(0.05)
            elif not body["has_more"]:
                break
    finally:
        event.remove(engine, "before_cursor_execute", seen)
    assert [kept[o]["duplicates"] for o in originals] == [[c] for c in copies]
    assert max(cases for cases, _ in pages) == 6, pages
    assert [made for _, made in pages] == [1 if cases else 0 for cases, _ in pages], pages


def test_the_worker_prunes_old_tombstones_but_keeps_live_rows(client, worker, app, engine):
    from datetime import UTC, datetime, timedelta

    from gridapi.services import jobs

    home = household(client, A1)
    house = ok(client.post("/api/v1/houses", json={"address": "平江路7号", "grid": A1}), 201)
    ok(client.patch(f"/api/v1/households/{home['id']}", json={"house_id": house["id"]}))
    ok(client.patch(f"/api/v1/houses/{house['id']}", json={"grid": B1}))  # a 'leave' row
    with engine.connect() as conn:
        ops = Counter(r[0] for r in conn.execute(text("SELECT op FROM sync_log")))
    assert ops["leave"] == 1 and ops["upsert"] == 1  # one live row per object
    # kept for the cursors' retention (30 days) and a day's margin for the clocks
    for days, pruned in ((30.5, 0), (31.5, 1)):
        later = datetime.now(UTC) + timedelta(days=days)
        results = {
            r.name: r for r in jobs.run_jobs(engine, later, jobs.JobOptions(), jobs=["sync"])
        }
        assert results["sync"].counts == {"pruned": pruned}
    with engine.connect() as conn:
        assert [r[0] for r in conn.execute(text("SELECT op FROM sync_log"))] == ["upsert"]


def test_tasks_come_and_go_with_their_assignee(client, worker, accounts):
    due = {"amount": 3, "unit": "days"}
    mine = ok(
        client.post(
            "/api/v1/tasks",
            json={
                "title": "排查",
                "grid": A1,
                "assignee_id": accounts.ids["worker1"],
                "due_in": due,
            },
        ),
        201,
    )
    open_in_grid = ok(
        client.post("/api/v1/tasks", json={"title": "巡查", "grid": A1, "due_in": due}), 201
    )
    elsewhere = ok(
        client.post("/api/v1/tasks", json={"title": "别处", "grid": B1, "due_in": due}), 201
    )
    phone = Phone(worker)
    phone.pull()
    assert phone.ids("task") == {mine["id"], open_in_grid["id"]}
    assert elsewhere["id"] not in phone.ids("task")
    assert phone.kept[("task", mine["id"])]["title"] == "排查"
    other = accounts.create("worker2", "grid_worker", grids=[A2])
    etag = client.get(f"/api/v1/tasks/{mine['id']}").headers["ETag"]
    r = client.post(
        f"/api/v1/tasks/{mine['id']}/reassign",
        json={"assignee_id": other},
        headers={"If-Match": etag},
    )
    ok(r)
    assert [(c["type"], c["id"], c["op"]) for c in phone.pull()] == [("task", mine["id"], "delete")]


def test_rows_added_by_one_statement_each_reach_the_phone_once(worker, engine):
    """A bulk load (one INSERT of many rows, as an import or a migration does) is logged
    row by row: PostgreSQL logs it with a statement trigger, SQLite with row triggers."""
    from sqlalchemy import insert

    from gridapi.models import Household

    phone = Phone(worker)
    phone.pull()
    county = COMMUNITY_A[:6]
    rows = [
        {
            "county_code": county,
            "region_code": code[:12],
            "grid_code": code,
            "number": f"B{i}",
            "created_by": "import:test",
        }
        for i, code in enumerate((A1, B1, A1))
    ]
    with engine.begin() as conn:
        conn.execute(insert(Household.__table__).values(rows))
        added = [
            r[0]
            for r in conn.execute(
                text("SELECT id FROM households WHERE number LIKE 'B%' ORDER BY id")
            )
        ]
        logged = conn.execute(
            text(
                "SELECT entity_id, op, county_code, region_code, grid_code FROM sync_log "
                "WHERE entity = 'household' ORDER BY id"
            )
        ).all()
    assert [tuple(r) for r in logged] == [
        (i, "upsert", county, row["region_code"], row["grid_code"])
        for i, row in zip(added, rows, strict=True)
    ]
    changes = phone.pull()
    assert [(c["type"], c["id"], c["op"]) for c in changes] == [
        ("household", added[0], "upsert"),
        ("household", added[2], "upsert"),
    ]


def test_a_tombstone_stamped_by_a_database_clock_behind_is_kept_while_its_cursor_is_taken(
    client, worker, app, engine
):
    """The log's rows carry the database's time, a cursor's age is the server's. With the
    database's clock two hours behind, a grid's tombstone written after the phone's last
    sync looked older than its cursor: the worker pruned it while the cursor was still taken,
    and the phone kept the household for good (a probe, with the clocks months apart)."""
    from datetime import UTC, datetime, timedelta

    from gridapi.services import jobs

    home = household(client, A1)
    phone = Phone(worker)
    phone.pull()
    assert ("household", home["id"]) in phone.kept
    house = ok(client.post("/api/v1/houses", json={"address": "平江路9号", "grid": A1}), 201)
    ok(client.patch(f"/api/v1/households/{home['id']}", json={"house_id": house["id"]}))
    ok(client.patch(f"/api/v1/houses/{house['id']}", json={"grid": B1}))  # leaves the grid
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE sync_log SET at = :at WHERE op = 'leave'"),
            {"at": datetime.now(UTC) - timedelta(hours=2)},
        )
    # a minute before the cursor is too old for the server
    almost = datetime.now(UTC) + timedelta(days=30) - timedelta(minutes=1)
    jobs.run_jobs(engine, almost, jobs.JobOptions(), jobs=["sync"])
    phone.pull()
    assert ("household", home["id"]) not in phone.kept


@pytest.mark.parametrize("phase", ["snapshot", "changes"])
def test_a_sync_paged_over_the_retention_is_gone_not_short_of_a_tombstone(
    client, worker, engine, monkeypatch, phase
):
    """A cursor's age was refreshed at every page. A first sync paged slowly (a page every
    twenty days), or pages of changes left with has_more, kept its place in the log while
    the tombstones after it were pruned: resumed after forty days it answered 200, and the
    phone kept a household that had left its grid. Its age is now that of the oldest row
    it still has to hand out: the sync's start, or the last page that left nothing more."""
    from datetime import UTC, datetime, timedelta
    from types import SimpleNamespace

    from gridapi.services import jobs
    from gridapi.services import sync as sync_svc

    base = time.time()
    clock = SimpleNamespace(time=lambda: base)
    monkeypatch.setattr(sync_svc, "time", clock)

    def at(days: float) -> None:
        clock.time = lambda: base + days * 86400

    gone, stays = household(client, A1), household(client, A1)
    kept: dict[tuple[str, int], dict] = {}
    cursor = None

    def pull_page() -> Any:
        nonlocal cursor, kept
        while True:
            query: dict[str, Any] = {"limit": 1, **({"cursor": cursor} if cursor else {})}
            r = worker.get("/api/v1/sync", query_string=query)
            if r.status_code == 410:  # as the docs say: sync again, replace the copy
                cursor, kept = None, {}
                continue
            body = ok(r)
            if body["pending"] and not body["changes"]:
                time.sleep(0.05)  # PostgreSQL: another test's transaction holds the horizon
                continue
            for change in body["changes"]:
                if change["op"] == "upsert":
                    kept[(change["type"], change["id"])] = change["data"]
                else:
                    kept.pop((change["type"], change["id"]), None)
            cursor = body["next_cursor"]
            return body

    def move_out(home: dict) -> None:
        house = ok(client.post("/api/v1/houses", json={"address": "平江路3号", "grid": A1}), 201)
        ok(client.patch(f"/api/v1/households/{home['id']}", json={"house_id": house["id"]}))
        ok(client.patch(f"/api/v1/houses/{house['id']}", json={"grid": B1}))

    if phase == "snapshot":
        assert pull_page()["has_more"]  # the first household of the snapshot
        assert ("household", gone["id"]) in kept
        move_out(gone)  # its tombstone is written now
        at(20)
        assert pull_page()["has_more"]  # the second, twenty days later
    else:
        while pull_page()["has_more"]:
            pass
        assert ("household", gone["id"]) in kept
        person(client, stays["id"])
        move_out(gone)
        at(20)
        assert pull_page()["has_more"]  # one change of two, twenty days later
    # forty days on, the worker prunes the tombstone (30 days and a day's margin)
    later = datetime.now(UTC) + timedelta(days=40)
    jobs.run_jobs(engine, later, jobs.JobOptions(), jobs=["sync"])
    at(40)
    while pull_page()["has_more"]:
        pass
    assert ("household", gone["id"]) not in kept
    assert ("household", stays["id"]) in kept


def test_an_app_s_reports_follow_its_snapshot(app, client, world):
    """An app (an API key) syncing kept the cases it reported: the snapshot sent them, but
    the log names only a reporting user, so no change of them ever followed."""
    created = ok(
        client.post(
            "/api/v1/clients", json={"name": "12345", "scopes": ["cases:read", "cases:write"]}
        ),
        201,
    )
    hotline = app.test_client()
    hotline.environ_base["HTTP_X_API_KEY"] = created["api_key"]
    case_id = report(hotline)["id"]
    phone = Phone(hotline)
    phone.pull()
    assert phone.kept[("case", case_id)]["status"] == "reported"
    step(client, case_id, "accept")
    assert [(c["type"], c["id"], c["op"]) for c in phone.pull()] == [("case", case_id, "upsert")]
    assert phone.kept[("case", case_id)]["status"] == "accepted"
    assert phone.kept[("case", case_id)] == ok(hotline.get(f"/api/v1/cases/{case_id}"))
    other = report(client, 1)["id"]  # another's report is none of the app's
    step(client, other, "accept")
    assert phone.pull() == [] and phone.ids("case") == {case_id}


def test_grids_rolled_back_to_an_older_version_are_sent_again(client, accounts, world):
    """The grids' digest was their count, highest version id and highest code: a community
    rolled back to its older version, while another community's later version still served,
    left all three alone, and the phone kept the boundaries taken out of service."""
    from ..factories import COMMUNITY_A, COMMUNITY_B, collection, feature, square

    worker = accounts.client("worker1", "grid_worker", grids=[A1, B1])

    def community_a(name: str) -> dict:
        fc = collection(feature(A1, square(0, 0), name=name), feature(A2, square(1, 0)))
        return world.grid_version(fc, region=COMMUNITY_A)

    older = community_a("甲网格")
    community_a("乙网格")  # replaces the older one
    b = collection(feature(B1, square(2, 0)), feature(COMMUNITY_B + "002", square(3, 0)))
    world.grid_version(b, region=COMMUNITY_B)  # the latest version id
    phone = Phone(worker)
    phone.pull()
    names = {
        f["properties"]["code"]: f["properties"]["name"]
        for f in phone.references["grids"]["features"]
    }
    assert names[A1] == "乙网格"
    # the community rolls back: its older version serves again
    ok(client.post(f"/api/v1/grid-versions/{older['id']}/activate", json={}))
    assert ok(client.get(f"/api/v1/grids/{A1}"))["name"] == "甲网格"
    phone.pull()
    features = phone.references["grids"]["features"]
    assert {f["properties"]["code"]: f["properties"]["version_id"] for f in features} == {
        A1: older["id"],
        B1: ok(client.get(f"/api/v1/grids/{B1}"))["version_id"],
    }


def test_a_sync_needs_one_connection_at_a_time(client, worker):
    """A page with cases names their regions from the routing snapshot, which (when due) is
    checked on a connection of its own: checked while the page's session held one, every
    request of a morning's syncs waited for a second, and with the pool taken by such
    requests nobody got one (a pool time-out, 500). It is taken before the session."""
    from sqlalchemy import event

    report(worker)
    household(client, A1)
    engine = client.application.extensions["gridapi"].engine
    held: list[int] = []

    def checkout(*_: Any) -> None:
        held.append(engine.pool.checkedout())

    event.listen(engine, "checkout", checkout)
    try:
        Phone(worker, limit=1).pull()
    finally:
        event.remove(engine, "checkout", checkout)
    assert held and max(held) == 1, held


def test_a_key_given_again_for_another_action_leaves_the_first_one_s_id(worker):
    """A key sent twice in one batch, the second time for another action (422, reused),
    made a later reference to it answer that the action had failed, though it was applied:
    a reference names the action applied with the key."""
    from datetime import UTC, datetime, timedelta

    start = datetime.now(UTC) - timedelta(hours=1)
    results = batch(
        worker,
        [
            {"key": "p", "type": "patrol.start", "payload": {"started_at": start.isoformat()}},
            {
                "key": "p",
                "type": "patrol.start",
                "payload": {"started_at": (start + timedelta(minutes=5)).isoformat()},
            },
            {"key": "end", "type": "patrol.end", "payload": {"patrol_id": "ref:p"}},
        ],
    )
    assert [r["status"] for r in results] == [201, 422, 200], results
    assert results[1]["error"]["errors"] == {"json": {"key": ["reused"]}}
    assert results[2]["id"] == results[0]["id"]


@pytest.mark.parametrize("if_match", ["", "  ", 0, False, [], 7])
def test_an_if_match_that_is_no_etag_is_not_taken_for_a_wildcard(
    client, worker, accounts, engine, if_match
):
    """An empty or non-text if_match was read as "*": a phone that kept no ETag changed the
    case whatever its version. It is refused for its action, and the case is untouched."""
    case_id = report(client, 1)["id"]
    step(client, case_id, "accept")
    step(client, case_id, "file")
    step(client, case_id, "dispatch", assignee_id=accounts.ids["worker1"])
    results = batch(
        worker,
        [
            {
                "key": "w-b",
                "type": "case.transition",
                "payload": {"case_id": case_id, "action": "sign", "if_match": if_match},
            },
        ],
    )
    assert (results[0]["status"], results[0]["error"]["errors"]) == (
        422,
        {"json": {"payload": {"if_match": ["an ETag as read, or *"]}}},
    ), results
    with engine.connect() as conn:
        status = conn.execute(
            text("SELECT status FROM cases WHERE id = :id"), {"id": case_id}
        ).scalar()
    assert status == "dispatched"


@pytest.mark.parametrize("kind", ["categories", "calendar"])
def test_a_reference_change_committed_after_a_newer_one_reaches_the_phone(
    client, worker, engine, kind
):
    """The categories and the calendar were resent when their row count or latest
    updated_at moved. An edit stamped by the app server before another edit, but committed
    after it (two admins at once), moved neither: phones kept the old row for good."""
    from datetime import timedelta

    from sqlalchemy import func

    from gridapi.models import CalendarDay, Category

    phone = Phone(worker)
    phone.pull()
    assert kind in phone.references
    model, key = (
        (Category, Category.code) if kind == "categories" else (CalendarDay, CalendarDay.day)
    )
    with engine.begin() as conn:
        keys = list(conn.execute(select(key).order_by(key)).scalars())
        newest, older = keys[-1], keys[-2]
        latest = conn.execute(select(func.max(model.updated_at))).scalar()
        # Two edits: the first stamped at +1 s, the second at +2 s. The second commits
        # first, and the phone is sent it.
        first_at, second_at = latest + timedelta(seconds=1), latest + timedelta(seconds=2)
        conn.execute(update(model).where(key == newest).values(name="x", updated_at=second_at))
    phone.pull()
    with engine.begin() as conn:
        # The first edit commits now, stamped before the second one.
        conn.execute(update(model).where(key == older).values(name="renamed", updated_at=first_at))
    phone.pull()
    names = {row.get("code") or row["date"]: row["name"] for row in phone.references[kind]}
    assert names[str(older)] == "renamed"


def test_a_first_sync_leaves_out_what_ended_long_ago(app, client, worker, accounts, engine):
    """A first sync (and every sync after a 410) sent every case the worker ever reported
    or handled and every task they ever completed: years of them, to a phone on a bad
    network. Cases and tasks that ended and have not changed for
    GRIDAPI_SYNC_HISTORY_DAYS stay out of the snapshot; open ones stay in however old."""
    old_closed, recent_closed, old_open = (report(worker)["id"] for _ in range(3))
    for case_id in (old_closed, recent_closed):
        step(client, case_id, "reject", comment="不属于受理范围")
    due = {"amount": 3, "unit": "days"}
    old_task, open_task = (
        ok(
            client.post(
                "/api/v1/tasks",
                json={
                    "title": t,
                    "grid": A1,
                    "assignee_id": accounts.ids["worker1"],
                    "due_in": due,
                },
            ),
            201,
        )["id"]
        for t in ("排查", "巡查")
    )
    with engine.begin() as conn:
        long_ago = "2020-01-01 00:00:00"
        conn.execute(
            text("UPDATE cases SET updated_at = :t WHERE id IN (:a, :b)"),
            {"t": long_ago, "a": old_closed, "b": old_open},
        )
        conn.execute(
            text(
                "UPDATE tasks SET status = 'cancelled', cancelled_at = :t, updated_at = :t "
                "WHERE id = :i"
            ),
            {"t": long_ago, "i": old_task},
        )
        conn.execute(
            text("UPDATE tasks SET updated_at = :t WHERE id = :i"), {"t": long_ago, "i": open_task}
        )
    phone = Phone(worker)
    phone.pull()
    assert phone.ids("case") == {recent_closed, old_open}
    assert phone.ids("task") == {open_task}
    # 0 keeps everything, as before the setting
    app.extensions["gridapi"].settings.sync_history_days = 0
    everything = Phone(worker)
    everything.pull()
    assert everything.ids("case") == {old_closed, recent_closed, old_open}
    assert everything.ids("task") == {old_task, open_task}
    # an ended case that changes again reaches the phone that synced without it
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE cases SET description = '已更正', updated_at = :t WHERE id = :i"),
            {"t": datetime.now(UTC), "i": old_closed},
        )
    assert ("case", old_closed, "upsert") in {(c["type"], c["id"], c["op"]) for c in phone.pull()}


def test_the_reference_digests_are_those_of_each_set_read_alone(worker, app, session):
    """A sync reads the stamps of the categories, the calendar and the worker's grids in one
    statement (it was one each). The digests that phones keep in their cursors must be the
    same as before, or every phone would download the three sets again: each set is read
    here as it was."""
    from gridapi.models import CalendarDay, Category
    from gridapi.scope import Scope
    from gridapi.services import grids as grids_svc
    from gridapi.services import sync as sync_svc

    phone = Phone(worker)
    phone.pull()
    engine = app.extensions["gridapi"].engine
    with statements_sent(engine, lambda s: "calendar_days" in s) as sent:
        ok(worker.get("/api/v1/sync", query_string={"cursor": phone.cursor}))
    assert len(sent) == 1 and "FROM categories" in sent[0], sent
    session.rollback()
    for scope in (Scope(grid_codes=frozenset({A1})), Scope(grid_codes=frozenset({A1, A2}))):
        grids = grids_svc.grids_query(scope=scope).subquery()
        alone = {
            "categories": [
                [code, str(at)]
                for code, at in session.execute(
                    select(Category.code, Category.updated_at).order_by(Category.code)
                )
            ],
            "calendar": [
                [str(day), str(at)]
                for day, at in session.execute(
                    select(CalendarDay.day, CalendarDay.updated_at).order_by(CalendarDay.day)
                )
            ],
            "grids": [
                list(row)
                for row in session.execute(
                    select(grids.c.code, grids.c.version_id).order_by(grids.c.code)
                )
            ],
        }
        assert all(alone.values()), alone
        stamps = sync_svc.reference_stamps(session, grids_svc.grids_query(scope=scope))
        assert stamps == alone


def test_a_reference_stands_only_for_what_its_action_made(worker, client, engine):
    """A "ref:" resolved to the id of any earlier action: a patrol's id given as a case_id
    rated the worker's closed case that had the same number, and in another batch a task
    of that number was accepted. A reference to an action that made another kind of object
    is refused (422 naming the field), in its batch and in a later one."""
    report(worker)  # a case of the worker, with the number the patrol will have
    patrol = {"key": "pt", "type": "patrol.start", "payload": {}}
    rate = {"key": "rt", "type": "case.rating", "payload": {"case_id": "ref:pt", "score": 5}}
    started, rated = batch(worker, [patrol, rate])
    assert started["status"] == 201, started
    message = "the action 'pt' made a patrol id, not a case id"
    assert rated["status"] == 422, rated
    assert rated["error"]["errors"] == {"json": {"payload": {"case_id": [message]}}}
    later = {"key": "ta", "type": "task.accept", "payload": {"task_id": "ref:pt"}}
    (accepted,) = batch(worker, [later])
    assert accepted["status"] == 422, accepted
    assert accepted["error"]["errors"] == {
        "json": {"payload": {"task_id": ["the action 'pt' made a patrol id, not a task id"]}}
    }
    with engine.connect() as conn:
        ratings = conn.execute(text("SELECT count(*) FROM cases WHERE satisfaction IS NOT NULL"))
        assert ratings.scalar() == 0
    # a reference of the right kind still resolves, in the batch and later
    ends = {"key": "pe", "type": "patrol.end", "payload": {"patrol_id": "ref:pt"}}
    (ended,) = batch(worker, [ends])
    assert ended["status"] == 200, ended


def test_a_task_given_to_a_region_reaches_the_unit_of_that_region(accounts, client, world):
    """An unassigned task for a community (no grid) reached nobody's phone nor list of
    work: its officer could accept it, and was sent its overdue notice, but had to look
    for it. Its officer holds it now; the township office (above) and the community's
    grid workers (below) do not; given to someone else, it leaves the officer's phone."""
    office = accounts.client("office_t", "township_office", scope_region=TOWNSHIP)
    officer = accounts.client("officer_a", "community_officer", scope_region=COMMUNITY_A)
    other = accounts.client("officer_b", "community_officer", scope_region=COMMUNITY_B)
    phones = {who: Phone(c) for who, c in (("officer", officer), ("other", other))}
    for phone in phones.values():
        phone.pull()
    r = office.post(
        "/api/v1/tasks",
        json={"title": "社区例会", "region": COMMUNITY_A, "due_in": {"amount": 3, "unit": "days"}},
    )
    assert r.status_code == 201, r.get_json()
    task = r.get_json()
    assert task["grid"] is None and task["assignee"] is None
    phones["officer"].pull()
    phones["other"].pull()
    assert ("task", task["id"]) in phones["officer"].kept
    assert ("task", task["id"]) not in phones["other"].kept
    listed = ok(officer.get("/api/v1/me/tasks"))["items"]
    assert [t["id"] for t in listed] == [task["id"]]
    assert ok(office.get("/api/v1/me/tasks"))["items"] == []
    fresh = Phone(officer)
    fresh.pull()
    assert ("task", task["id"]) in fresh.kept  # in a sync from empty too
    # given to the other community's officer? out of scope; to a worker of A1: it leaves
    worker = accounts.client("worker_a1", "grid_worker", grids=[A1])
    etag = office.get(f"/api/v1/tasks/{task['id']}").headers["ETag"]
    r = office.post(
        f"/api/v1/tasks/{task['id']}/reassign",
        json={"assignee_id": accounts.ids["worker_a1"]},
        headers={"If-Match": etag},
    )
    assert r.status_code == 200, r.get_json()
    phones["officer"].pull()
    assert ("task", task["id"]) not in phones["officer"].kept
    assert [t["id"] for t in ok(worker.get("/api/v1/me/tasks"))["items"]] == [task["id"]]


def test_an_offline_patrol_from_a_fast_phone_is_taken_with_the_batch_s_date(worker, world):
    """A phone an hour fast queued a patrol offline: its start, points and end by its own
    clock. The batch's Date goes to each action: the start keeps the clock's error, and the
    points and the end (which send no Date of their own here) are moved by it. Without it
    the start lay in the future and the whole walk was refused."""
    from datetime import timedelta

    from werkzeug.http import http_date

    ahead = timedelta(hours=1)
    now = datetime.now(UTC).replace(microsecond=0)
    began = now + ahead - timedelta(minutes=30)  # by the phone's clock
    track = [
        {
            "t": (began + timedelta(minutes=m)).isoformat(),
            "lon": center(0)[0] + 0.0001 * m,
            "lat": center(0)[1],
        }
        for m in range(1, 21)
    ]
    actions = [
        {"key": "p", "type": "patrol.start", "payload": {"started_at": began.isoformat()}},
        {"key": "pts", "type": "patrol.points", "payload": {"patrol_id": "ref:p", "points": track}},
        {
            "key": "end",
            "type": "patrol.end",
            "payload": {
                "patrol_id": "ref:p",
                "ended_at": (began + timedelta(minutes=25)).isoformat(),
            },
        },
    ]
    refused = batch(worker, actions[:1])
    assert refused[0]["status"] == 422, refused
    sent = worker.post(
        "/api/v1/sync/batch", json={"actions": actions}, headers={"Date": http_date(now + ahead)}
    )
    started, points, ended = ok(sent)["results"]
    assert [started["status"], points["status"], ended["status"]] == [201, 200, 200], (
        sent.get_json()
    )
    patrol = ok(worker.get(f"/api/v1/patrols/{started['id']}"))
    assert patrol["point_count"] == 20
    assert abs(patrol["clock_offset_s"] + 3600) <= 2
    assert datetime.fromisoformat(patrol["ended_at"]) < now
    assert patrol["duration_s"] == 25 * 60
