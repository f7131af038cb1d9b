"""Forcing a check-then-insert race deterministically (PostgreSQL).

Another transaction inserts a row with the key a request is about to register and does not
commit; the request looks (sees nothing), inserts, and waits for that transaction in the
unique index; only then does the other commit. SQLite serialises writers: there the request
simply runs after the commit, the sequential case the race must end like.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import text


def send_while_uncommitted(
    engine: Any, session: Any, table: str, send: Callable[[], Any], *, waits_in: str | None = None
) -> Any:
    """Run ``send`` (a request) in a thread while ``session`` holds an uncommitted insert
    into ``table``; commit ``session`` once the request's own insert waits for it (or the
    statement starting ``waits_in``: "UPDATE persons", "SELECT users."…), or once the
    request has answered without waiting; return the request's answer."""
    session.flush()
    answers: list = []
    thread = threading.Thread(target=lambda: answers.append(send()))
    thread.start()
    wait_until_waiting(engine, thread, f"INSERT INTO {table} " if waits_in is None else waits_in)
    session.commit()
    thread.join(30)
    return answers.pop()


def wait_until_waiting(engine: Any, thread: threading.Thread, waits_in: str) -> None:
    """Return once a statement starting ``waits_in`` ("" for any) waits for a lock
    (PostgreSQL), or once ``thread`` has ended; on SQLite, where a second writer waits for
    the first at BEGIN, after half a second."""
    deadline = time.monotonic() + 20
    while engine.dialect.name == "postgresql" and thread.is_alive() and time.monotonic() < deadline:
        with engine.connect() as conn:
            waiting = conn.execute(
                text(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                    "AND datname = current_database() AND query LIKE :insert"
                ),
                {"insert": waits_in.replace("%", r"\%").replace("_", r"\_") + "%"},
            ).scalar_one()
        if waiting:
            break
        time.sleep(0.05)
    else:
        if engine.dialect.name == "postgresql" and thread.is_alive():
            # Still running, and never in that statement: the race the test means to force
            # did not happen (it waits elsewhere now); silently going on made it 20 s slower.
            raise AssertionError(f"the request never waited for a lock in {waits_in!r}")
        time.sleep(0.5)


def report_while_held(
    client: Any, monkeypatch: Any, module: Any, name: str, request: Callable[[], Any]
) -> Any:
    """Send ``request`` in a thread, hold it in ``module.name`` (a slow step: a password
    check, a photo's re-encoding) until a case report sent meanwhile by ``client`` is
    answered, and return the request's answer. The report must be a 201 that did not wait
    for the held step: on SQLite it would wait when the step runs holding the write lock."""
    from .api.test_cases import center, report_body

    holding, reported = threading.Event(), threading.Event()
    step = getattr(module, name)

    def held(*args: Any, **kwargs: Any) -> Any:
        holding.set()
        reported.wait(10)  # as long as the report elsewhere takes, or 10 s
        return step(*args, **kwargs)

    monkeypatch.setattr(module, name, held)
    answers: list[Any] = []
    thread = threading.Thread(target=lambda: answers.append(request()))
    thread.start()
    try:
        assert holding.wait(10)
        began = time.monotonic()
        r = client.post("/api/v1/cases", json=report_body(*center(1)))
        waited = time.monotonic() - began
    finally:
        reported.set()
        thread.join(30)
    assert r.status_code == 201, r.get_json()
    assert waited < 5, f"the report waited {waited:.1f} s for {name}"
    return answers[0]
