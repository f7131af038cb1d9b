"""Files the service cannot lose are on disk, content and name, before they are used.

A key file generated at first start and an evidence photo whose row commits next were
written without flushing the directory that names them (and the key file without flushing
its content): after a power cut, data encrypted under a key that was gone, or a case
pointing at a photo the directory had lost. What is flushed is read off ``os.fsync``'s
calls (the real one still runs); a power cut itself cannot be made in a test.
"""

from __future__ import annotations

import os
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from gridapi.config import _write_once
from gridapi.services.attachments import AttachmentStore, write_blob


@pytest.fixture
def flushed(monkeypatch):  # type: ignore[no-untyped-def]
    """The paths ``os.fsync`` flushed, in order (files by the name they had then)."""
    seen: list[Path] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        seen.append(Path(os.readlink(f"/proc/self/fd/{fd}")))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return seen


def test_a_generated_key_file_is_flushed_with_its_name(tmp_path, flushed):
    key = tmp_path / "keys" / "secret.key"
    _write_once(key, "k" * 64)
    assert key.read_text() == "k" * 64
    tmp = key.with_suffix(f".{os.getpid()}.tmp")
    assert flushed == [tmp_path, tmp, key.parent]  # the new directory's name, the content, its name


def test_a_stored_photo_is_flushed_with_its_name_before_its_row(tmp_path, flushed):
    store = AttachmentStore(tmp_path / "attachments", 10**7, 10**7, ZoneInfo("Asia/Shanghai"))
    digest = write_blob(store, b"photo bytes", "image/jpeg")
    path = store.path(digest, "image/jpeg")
    assert path.read_bytes() == b"photo bytes"
    assert flushed[:2] == [tmp_path, tmp_path / "attachments"]  # directories made
    assert flushed[2].parent == path.parent and flushed[2].name.startswith(".upload-")
    assert flushed[3:] == [path.parent]
    flushed.clear()
    assert write_blob(store, b"photo bytes", "image/jpeg") == digest  # stored: nothing to do
    assert flushed == []
