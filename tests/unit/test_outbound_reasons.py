"""How a failed outbound request (a webhook delivery) is described in its log."""

from __future__ import annotations

import socket

import urllib3

from gridapi.outbound import _reason


def _refused() -> Exception:
    """The error urllib3 raises connecting to a port nobody listens on."""
    with socket.socket() as probe:  # a free port, closed again
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    pool = urllib3.HTTPConnectionPool("127.0.0.1", port, retries=False, timeout=2)
    try:
        pool.request("GET", "/")
    except urllib3.exceptions.HTTPError as exc:
        return exc
    raise AssertionError("connected")


def test_a_refused_connection_is_not_called_a_timeout():
    """urllib3 2 makes NewConnectionError a kind of ConnectTimeoutError: a receiver that was
    not listening was logged as "connect timeout", after 0 ms."""
    exc = _refused()
    assert isinstance(exc, urllib3.exceptions.NewConnectionError)
    assert _reason(exc) == "connection refused or unreachable"
    timeout = urllib3.exceptions.ConnectTimeoutError(None, "timed out")
    assert _reason(timeout) == "connect timeout"
