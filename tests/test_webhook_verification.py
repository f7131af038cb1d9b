"""The webhook verification code the docs give receivers, and the shipped receiver's, refuse
a malformed request as they refuse a forged one: they crashed (compare_digest on text that
is not ASCII, int() of "abc" or "²", a missing timestamp header)."""

from __future__ import annotations

import hashlib
import hmac
import importlib.machinery
import importlib.util
import re
import time
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
SECRET = "whsec_test"
BODY = b'{"type":"case.created"}'


def _documented(doc: str) -> Any:
    """The ``verify`` function of the Python block of ``doc`` that defines it."""
    text = (ROOT / "docs" / doc).read_text()
    (block,) = [b for b in re.findall(r"```python\n(.*?)```", text, re.S) if "def verify" in b]
    scope: dict[str, Any] = {}
    exec(compile(block, doc, "exec"), scope)  # noqa: S102 - the docs' own example
    return scope["verify"]


def _receiver() -> Any:
    path = str(ROOT / "scripts" / "webhook-receiver")
    loader = importlib.machinery.SourceFileLoader("webhook_receiver", path)
    spec = importlib.util.spec_from_loader("webhook_receiver", loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)

    def verify(secret: str, headers: dict[str, str], body: bytes) -> bool:
        return module.verify(
            secret,
            headers.get("Webhook-Timestamp", ""),
            headers.get("Webhook-Signature", ""),
            body,
        )

    return verify


def _signed(timestamp: str) -> str:
    digest = hmac.new(SECRET.encode(), timestamp.encode() + b"." + BODY, hashlib.sha256)
    return "v1=" + digest.hexdigest()


@pytest.mark.parametrize("which", ["webhooks.md", "integration.md", "webhook-receiver"])
def test_a_malformed_request_is_refused_not_a_crash(which):
    verify = _receiver() if which == "webhook-receiver" else _documented(which)
    now = str(int(time.time()))
    assert verify(SECRET, {"Webhook-Timestamp": now, "Webhook-Signature": _signed(now)}, BODY)
    for headers in (
        {"Webhook-Timestamp": now, "Webhook-Signature": "v1=é"},
        {"Webhook-Timestamp": "abc", "Webhook-Signature": _signed(now)},
        {"Webhook-Timestamp": "²", "Webhook-Signature": _signed(now)},
        {"Webhook-Signature": _signed(now)},
        {"Webhook-Timestamp": now, "Webhook-Signature": _signed(str(int(now) + 1))},
    ):
        assert verify(SECRET, headers, BODY) is False, headers
