"""Request ids name one request: they go into the logs and every audit row it writes."""

from __future__ import annotations

import os

from gridapi import app as app_module


def _in_a_forked_child() -> str:
    """Return the request id a child forked now gives its first request."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: answer and leave at once
        try:
            os.write(write, app_module._next_request_id().encode())
        finally:
            os._exit(0)
    os.close(write)
    try:
        return os.read(read, 100).decode()
    finally:
        os.close(read)
        os.waitpid(pid, 0)


def test_every_forked_worker_numbers_requests_with_its_own_prefix() -> None:
    """gunicorn forks its workers from a master that imported the app: every worker
    numbered its requests with the master's prefix, and audit rows of unrelated requests
    (a sign-in, two reads of patrol tracks by others) shared one id."""
    parent = app_module._next_request_id()
    children = {_in_a_forked_child() for _ in range(3)}
    assert len(children) == 3
    prefixes = {child[:12] for child in children} | {parent[:12]}
    assert len(prefixes) == 4
    assert app_module._next_request_id()[:12] == parent[:12]  # the parent's stay its own
