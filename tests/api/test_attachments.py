"""Evidence photos: clean stored copies, EXIF kept apart, retries, hostile files, downloads."""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import hashlib
import io
import os
import struct
import time
import zlib
from pathlib import Path
from typing import Any

import pytest
from PIL import ExifTags, Image, ImageCms, PngImagePlugin
from PIL.TiffImagePlugin import IFDRational
from sqlalchemy import text

from gridapi.errors import BODY_TOO_LARGE, Unprocessable, error_body
from gridapi.models.base import utcnow
from gridapi.services.attachments import check_evidence

from ..factories import COMMUNITY_A, LAT0, LON0, STEP
from ..races import report_while_held
from .test_case_visibility import app_key
from .test_case_workflow import race

A1 = COMMUNITY_A + "001"
ROW_COLUMNS = "case_id, upload_sha256, sha256, thumbnail_sha256, taken_at, gps_lon, gps_lat"


def center(col: int) -> tuple[float, float]:
    return (round(LON0 + (col + 0.5) * STEP, 6), round(LAT0 + 0.5 * STEP, 6))


def report_body(lon: float, lat: float) -> dict[str, Any]:
    return {
        "category": "0101",
        "description": "小区门口垃圾堆放",
        "location": {"type": "Point", "coordinates": [lon, lat]},
    }


# --- images ---------------------------------------------------------------------------------


def exif_with_place(orientation: int | None = None) -> Image.Exif:
    """EXIF saying the photo was taken 2026-11-20 14:30:00 at 31°18'30"N 120°36'12.34"E."""
    exif = Image.Exif()
    exif[ExifTags.Base.Make] = "TestCam"
    if orientation:
        exif[ExifTags.Base.Orientation] = orientation
    exif.get_ifd(ExifTags.IFD.Exif)[ExifTags.Base.DateTimeOriginal] = "2026:11:20 14:30:00"
    gps = exif.get_ifd(ExifTags.IFD.GPSInfo)
    gps[ExifTags.GPS.GPSLatitudeRef] = "N"
    gps[ExifTags.GPS.GPSLatitude] = (IFDRational(31), IFDRational(18), IFDRational(3000, 100))
    gps[ExifTags.GPS.GPSLongitudeRef] = "E"
    gps[ExifTags.GPS.GPSLongitude] = (IFDRational(120), IFDRational(36), IFDRational(1234, 100))
    return exif


TAKEN_AT = "2026-11-20T06:30:00+00:00"  # 14:30 in Asia/Shanghai, the default GRIDAPI_TIMEZONE
GPS = (120 + 36 / 60 + 12.34 / 3600, 31 + 18 / 60 + 30 / 3600)


def picture(size: tuple[int, int] = (64, 48), mode: str = "RGB") -> Image.Image:
    """A picture whose left half is red and right half blue (so orientation shows)."""
    img = Image.new(mode, size, (20, 40, 220, 255)[: len(mode)])
    img.paste((220, 30, 30, 255)[: len(mode)], (0, 0, size[0] // 2, size[1]))
    return img


def jpeg(size: tuple[int, int] = (64, 48), **save: Any) -> bytes:
    out = io.BytesIO()
    picture(size).save(out, "JPEG", quality=90, **save)
    return out.getvalue()


def jpeg_with_metadata() -> bytes:
    """A JPEG lying on its side (orientation 6) with EXIF time and GPS, a comment, XMP and an
    ICC profile."""
    xmp = b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF/></x:xmpmeta>'
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    return jpeg(
        exif=exif_with_place(orientation=6), comment=b"secret note", xmp=xmp, icc_profile=icc
    )


def png(size: tuple[int, int] = (40, 30), **save: Any) -> bytes:
    out = io.BytesIO()
    picture(size, "RGBA").save(out, "PNG", **save)
    return out.getvalue()


def png_with_text() -> bytes:
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", "taken at home, 12 Elm Street")
    info.add_itxt("Author", "王某", lang="zh", tkey="作者")
    return png(pnginfo=info, exif=exif_with_place())


def webp_with_metadata() -> bytes:
    out = io.BytesIO()
    picture((50, 40), "RGBA").save(out, "WEBP", exif=exif_with_place(), quality=90)
    return out.getvalue()


def chunk(kind: bytes, body: bytes) -> bytes:
    """A PNG chunk: its length, kind, body and CRC."""
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def webp_of(**save: Any) -> bytes:
    out = io.BytesIO()
    picture((50, 40)).save(out, "WEBP", **save)
    return out.getvalue()


def png_bomb(side: int) -> bytes:
    """A valid 1-bit PNG of side × side white pixels: a few kB that decode to side² bytes."""
    compressor = zlib.compressobj(9)
    row = bytes(1 + (side + 7) // 8)  # filter byte 0 and the packed pixels
    idat = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def png_stored(rows: list[bytes]) -> bytes:
    """An 8-bit grey PNG of these rows of pixels (one width), stored uncompressed."""
    ihdr = struct.pack(">IIBBBBB", len(rows[0]), len(rows), 8, 0, 0, 0, 0)
    idat = zlib.compress(b"".join(b"\x00" + row for row in rows), 0)  # filter 0, level 0
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def png_rows_short(width: int, height: int, rows: int) -> bytes:
    """An 8-bit grey PNG whose header says width × height and whose zlib stream, properly
    ended, holds the first ``rows`` rows only (Pillow filled the rest with black)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress((b"\x00" + b"\x80" * width) * rows)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


ADAM7 = (
    (0, 0, 8, 8),
    (4, 0, 8, 8),
    (0, 4, 4, 8),
    (2, 0, 4, 4),
    (0, 2, 2, 4),
    (1, 0, 2, 2),
    (0, 1, 1, 2),
)


def png_interlaced(img: Image.Image, cut: int = 0) -> bytes:
    """An interlaced (Adam7) 8-bit RGB PNG of ``img``, which Pillow cannot write, its zlib
    stream holding all but the last ``cut`` bytes of the passes' rows."""
    raw = bytearray()
    for x0, y0, dx, dy in ADAM7:
        for y in range(y0, img.height, dy):
            columns = range(x0, img.width, dx)
            if columns:
                raw += b"\x00" + b"".join(bytes(img.getpixel((x, y))) for x in columns)
    ihdr = struct.pack(">IIBBBBB", img.width, img.height, 8, 2, 0, 0, 1)
    idat = zlib.compress(bytes(raw[: len(raw) - cut]))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def with_text(text: str) -> PngImagePlugin.PngInfo:
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", text)
    return info


def exif_made_by(make: str) -> Image.Exif:
    exif = Image.Exif()
    exif[ExifTags.Base.Make] = make
    return exif


SVG = (
    b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="10" height="10">'
    b"<script>alert(document.cookie)</script><rect width='10' height='10'/></svg>"
)
HTML = b"<!DOCTYPE html><html><body><script>alert(document.cookie)</script></body></html>"


# --- fixtures and helpers -------------------------------------------------------------------


@pytest.fixture
def overrides() -> dict[str, Any]:
    """Settings a test changes (parametrize ``overrides`` to change them)."""
    return {}


@pytest.fixture
def settings(settings, overrides):  # type: ignore[no-untyped-def]
    return dataclasses.replace(settings, **overrides)


@pytest.fixture
def case_id(client, world) -> int:
    """A case in grid A1, reported by the admin."""
    r = client.post("/api/v1/cases", json=report_body(*center(0)))
    assert r.status_code == 201, r.get_json()
    return r.get_json()["id"]


def upload(
    client: Any,
    case_id: int,
    data: bytes,
    filename: str = "photo.jpg",
    content_type: str | None = None,
) -> Any:
    part = (
        (io.BytesIO(data), filename, content_type) if content_type else (io.BytesIO(data), filename)
    )
    return client.post(
        f"/api/v1/cases/{case_id}/attachments",
        data={"file": part},
        content_type="multipart/form-data",
    )


def stored_files(settings: Any) -> list[Path]:
    root = Path(settings.data_dir) / "attachments"
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def rows(session: Any) -> list[tuple[Any, ...]]:
    session.rollback()  # end the read transaction: SQLite would go on showing its snapshot
    return [
        tuple(r)
        for r in session.execute(text(f"SELECT {ROW_COLUMNS} FROM case_attachments ORDER BY id"))
    ]


def audit_count(session: Any, action: str) -> int:
    session.rollback()
    return session.execute(
        text("SELECT count(*) FROM audit_log WHERE action = :a"), {"a": action}
    ).scalar()


def stored_path(settings: Any, sha: str, ext: str) -> Path:
    return Path(settings.data_dir) / "attachments" / sha[:2] / f"{sha}.{ext}"


def reopen(path: Path) -> Image.Image:
    img = Image.open(path)
    img.load()
    return img


def reopen_bytes(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


# --- clean copies, EXIF kept apart ----------------------------------------------------------


def test_a_jpeg_is_stored_upright_without_metadata_and_its_exif_kept_apart(
    client, case_id, settings, session
):
    data = jpeg_with_metadata()
    assert {"exif", "comment", "xmp", "icc_profile"} <= set(reopen_bytes(data).info)
    r = upload(client, case_id, data, "IMG_0001.JPG", "image/jpeg")
    assert r.status_code == 201, r.get_json()
    body = r.get_json()
    # Orientation 6 (rotated 90°): the 64×48 sensor image is 48 wide and 64 high upright.
    assert (body["width"], body["height"]) == (48, 64)
    assert body["case_id"] == case_id
    assert body["content_type"] == "image/jpeg"
    assert body["filename"] == "IMG_0001.JPG"
    assert body["uploaded_by"].startswith("user:")
    assert body["taken_at"] == TAKEN_AT
    lon, lat = body["gps"]["coordinates"]
    assert body["gps"]["type"] == "Point"
    assert abs(lon - GPS[0]) < 1e-6 and abs(lat - GPS[1]) < 1e-6
    base = f"/api/v1/cases/{case_id}/attachments/{body['id']}"
    assert body["links"] == {"content": f"{base}/content", "thumbnail": f"{base}/thumbnail"}

    path = stored_path(settings, body["sha256"], "jpg")
    stored = path.read_bytes()
    assert hashlib.sha256(stored).hexdigest() == body["sha256"]
    assert len(stored) == body["size_bytes"]
    assert b"secret note" not in stored and b"TestCam" not in stored and b"xmpmeta" not in stored
    img = reopen(path)
    assert img.format == "JPEG" and img.size == (48, 64)
    assert not img.getexif()
    assert not {"exif", "comment", "xmp", "icc_profile"} & set(img.info)
    # Upright: the red half of the picture is now on top.
    assert img.getpixel((24, 5))[0] > 150 and img.getpixel((24, 60))[2] > 150

    [row] = rows(session)
    assert row[0] == case_id
    assert row[1] == hashlib.sha256(data).hexdigest()  # of the upload, not of the stored copy
    assert row[2] == body["sha256"] != row[1]
    assert stored_path(settings, row[3], "jpg").exists()
    assert row[5] == pytest.approx(GPS[0]) and row[6] == pytest.approx(GPS[1])
    assert audit_count(session, "case.attach") == 1


def test_the_first_photo_makes_the_data_directory_and_its_files_the_services_alone(
    settings, tmp_path, usual_umask
):
    """Under umask 022 with the keys set (no key file made GRIDAPI_DATA_DIR first), the first
    upload created GRIDAPI_DATA_DIR itself and attachments/ 0755 (mkdir's parents take the
    umask's mode), attachments/xx/ 0750 and the photos 0640: evidence photos show people
    and homes. Every directory is 0700 and every file 0600, as the README says."""
    from gridapi import create_app
    from gridapi.security.fields import new_key_text

    from ..factories import Accounts, Factory

    srv = tmp_path / "srv"
    data = srv / "gridapi" / "data"
    app = create_app(
        dataclasses.replace(
            settings,
            data_dir=str(data),
            secret_key="s" * 32,
            blind_index_key="b" * 32,
            field_keys=new_key_text(1),
        )
    )
    try:
        client = Accounts(app).client("admin")
        world = Factory(client)
        world.regions()
        world.grid_version()
        assert not srv.exists()  # nothing made before the photo
        r = client.post("/api/v1/cases", json=report_body(*center(0)))
        r = upload(client, r.get_json()["id"], jpeg())
        assert r.status_code == 201, r.get_json()
    finally:
        app.extensions["gridapi"].engine.dispose()
    made = {
        str(p.relative_to(srv)): (p.is_dir(), oct(p.stat().st_mode & 0o777))
        for p in [srv, *srv.rglob("*")]
    }
    assert any(p.startswith("gridapi/data/attachments/") for p in made)
    assert {mode for is_dir, mode in made.values() if is_dir} == {"0o700"}, made
    assert {mode for is_dir, mode in made.values() if not is_dir} == {"0o600"}, made


@pytest.mark.parametrize(
    "make,filename,ext,fmt",
    [
        (png_with_text, "scene.png", "png", "PNG"),
        (webp_with_metadata, "scene.webp", "webp", "WEBP"),
    ],
)
def test_png_and_webp_keep_their_format_and_lose_their_metadata(
    client, case_id, settings, make, filename, ext, fmt
):
    data = make()
    before = reopen_bytes(data)
    assert before.getexif()  # the upload does carry metadata
    r = upload(client, case_id, data, filename)
    assert r.status_code == 201, r.get_json()
    body = r.get_json()
    assert body["content_type"] == f"image/{ext}"
    assert body["taken_at"] == TAKEN_AT
    img = reopen(stored_path(settings, body["sha256"], ext))
    assert img.format == fmt and img.mode == before.mode and img.size == before.size
    assert not img.getexif()
    assert not {"exif", "xmp", "icc_profile", "Comment", "Author"} & set(img.info)
    assert not getattr(img, "text", {})
    stored = stored_path(settings, body["sha256"], ext).read_bytes()
    assert b"Elm Street" not in stored and b"TestCam" not in stored


def test_a_multi_picture_jpeg_from_a_phone_keeps_its_first_picture_only(client, case_id, settings):
    out = io.BytesIO()
    second = Image.new("RGB", (32, 24), "green")
    picture((64, 48)).save(
        out, "MPO", save_all=True, append_images=[second], exif=exif_with_place()
    )
    assert Image.open(io.BytesIO(out.getvalue())).format == "MPO"
    r = upload(client, case_id, out.getvalue(), "IMG_0002.jpg", "image/jpeg")
    assert r.status_code == 201, r.get_json()
    body = r.get_json()
    assert (body["width"], body["height"], body["taken_at"]) == (64, 48, TAKEN_AT)
    img = reopen(stored_path(settings, body["sha256"], "jpg"))
    assert img.format == "JPEG" and getattr(img, "n_frames", 1) == 1 and not img.getexif()


@pytest.mark.parametrize(
    "taken,offset",
    [
        ("0001:01:01 00:00:00", "+14:00"),
        ("9999:12:31 23:59:59", "-14:00"),
        ("1800:01:01 08:00:00", None),
    ],
)
def test_a_photo_is_never_refused_for_its_capture_time(client, case_id, taken, offset):
    """A camera whose clock was never set: the photo was refused (422 "A number is too
    large.", converting 0001-01-01 +14:00 to UTC overflowed); it is kept, without a time."""
    exif = exif_with_place()
    exif.get_ifd(ExifTags.IFD.Exif)[ExifTags.Base.DateTimeOriginal] = taken
    if offset:
        exif.get_ifd(ExifTags.IFD.Exif)[ExifTags.Base.OffsetTimeOriginal] = offset
    r = upload(client, case_id, jpeg(exif=exif))
    assert r.status_code == 201, r.get_json()
    assert r.get_json()["taken_at"] is None and r.get_json()["gps"]["type"] == "Point"


def dms(degrees: int, minutes: int, seconds: IFDRational | int = 0) -> tuple[IFDRational, ...]:
    return (IFDRational(degrees), IFDRational(minutes), IFDRational(seconds))


GPS_FORMS = {
    "south and west": (dms(33, 52, 30), "S", dms(151, 12, 36), "W", [-151.21, -33.875]),
    "refs in lower case": (dms(33, 52, 30), "s", dms(151, 12, 36), "w", [-151.21, -33.875]),
    "no refs: north and east": (dms(31, 15), None, dms(120, 36), None, [120.6, 31.25]),
    "a zero denominator": (dms(31, 15, IFDRational(1, 0)), "N", dms(120, 36), "E", None),
    "latitude beyond 90": (dms(95, 0), "N", dms(120, 36), "E", None),
    "longitude beyond 180": (dms(31, 15), "N", dms(200, 0), "E", None),
    "degrees only": ((IFDRational(31),), "N", (IFDRational(120),), "E", None),
    "decimal minutes": (dms(31, IFDRational(63, 4)), "N", dms(120, 36), "E", [120.6, 31.2625]),
    # 31° 75' was read as 32.25°: minutes and seconds of 60 or more are no position
    "minutes of 60 or more": (dms(31, 75), "N", dms(120, 36), "E", None),
    "seconds of 60 or more": (dms(31, 15), "N", dms(120, 36, 60), "E", None),
}


@pytest.mark.parametrize("form", sorted(GPS_FORMS))
def test_gps_positions_in_odd_forms(client, case_id, form):
    """South and west are negative; what cannot be a position is none (never a refusal)."""
    lat, lat_ref, lon, lon_ref, expected = GPS_FORMS[form]
    exif = exif_with_place()
    gps = exif.get_ifd(ExifTags.IFD.GPSInfo)
    gps[ExifTags.GPS.GPSLatitude], gps[ExifTags.GPS.GPSLongitude] = lat, lon
    for tag, ref in (
        (ExifTags.GPS.GPSLatitudeRef, lat_ref),
        (ExifTags.GPS.GPSLongitudeRef, lon_ref),
    ):
        if ref is None:
            del gps[tag]
        else:
            gps[tag] = ref
    r = upload(client, case_id, jpeg(exif=exif))
    assert r.status_code == 201, r.get_json()
    assert r.get_json()["taken_at"] == TAKEN_AT
    place = r.get_json()["gps"]
    if expected is None:
        assert place is None
    else:
        assert place["coordinates"] == pytest.approx(expected)


def exif_with_signed_gps() -> bytes:
    """EXIF whose GPS parts are signed rationals (SRATIONAL), which EXIF does not allow:
    -33° 52' 30" S and -151° 12' 36" W. Big-endian TIFF: IFD0 at 8 points at the GPS IFD
    at 26, whose values follow it at 80."""

    def entry(tag: int, kind: int, count: int, value: bytes) -> bytes:
        return struct.pack(">HHI", tag, kind, count) + value

    ifd0 = struct.pack(">H", 1) + entry(0x8825, 4, 1, struct.pack(">I", 26)) + bytes(4)
    gps = (
        struct.pack(">H", 4)
        + entry(1, 2, 2, b"S\x00\x00\x00")
        + entry(2, 10, 3, struct.pack(">I", 80))
        + entry(3, 2, 2, b"W\x00\x00\x00")
        + entry(4, 10, 3, struct.pack(">I", 104))
        + bytes(4)
    )
    values = struct.pack(">12i", -33, 1, 52, 1, 30, 1, -151, 1, 12, 1, 36, 1)
    return b"Exif\x00\x00MM\x00*" + struct.pack(">I", 8) + ifd0 + gps + values


def test_gps_parts_written_signed_give_no_position(client, case_id, session):
    """Read as -33 + 52/60 + 30/3600 and turned by the reference S, the photo was shown
    as taken at 32.125° N, 150.79° E, nowhere near where it was; malformed, it has none."""
    data = jpeg(exif=exif_with_signed_gps())
    gps = reopen_bytes(data).getexif().get_ifd(ExifTags.IFD.GPSInfo)
    assert gps[ExifTags.GPS.GPSLatitude] == (-33, 52, 30)  # what the file holds
    r = upload(client, case_id, data)
    assert r.status_code == 201, r.get_json()
    assert r.get_json()["gps"] is None
    [row] = rows(session)
    assert row[5:] == (None, None)


@pytest.mark.parametrize(
    "offset,taken_at",
    [
        ("+02:00", "2026-11-20T12:30:00+00:00"),
        ("-05:30", "2026-11-20T20:00:00+00:00"),
        ("+00:00", "2026-11-20T14:30:00+00:00"),
        ("+0800", TAKEN_AT),  # not EXIF's form: local time
        ("+15:00", TAKEN_AT),  # no such offset: local time
        ("   :  ", TAKEN_AT),  # blank, as EXIF writes an unknown one
    ],
)
def test_the_capture_time_takes_the_offset_the_camera_wrote(client, case_id, offset, taken_at):
    exif = exif_with_place()
    exif.get_ifd(ExifTags.IFD.Exif)[ExifTags.Base.OffsetTimeOriginal] = offset
    r = upload(client, case_id, jpeg(exif=exif))
    assert r.status_code == 201, r.get_json()
    assert r.get_json()["taken_at"] == taken_at


@pytest.mark.parametrize("refs", [("N", "E"), ("S", "W")])
def test_a_position_of_zero_zero_is_no_place(client, case_id, session, refs):
    """A phone without a fix writes GPS zeros: the photo was shown as taken at 0°, 0°, in
    the Gulf of Guinea. It has no place now, as a check-in or a visit made there, and keeps
    its time."""
    exif = exif_with_place()
    gps = exif.get_ifd(ExifTags.IFD.GPSInfo)
    zero = (IFDRational(0), IFDRational(0), IFDRational(0))
    gps[ExifTags.GPS.GPSLatitudeRef], gps[ExifTags.GPS.GPSLongitudeRef] = refs
    gps[ExifTags.GPS.GPSLatitude] = gps[ExifTags.GPS.GPSLongitude] = zero
    r = upload(client, case_id, jpeg(exif=exif))
    assert r.status_code == 201, r.get_json()
    assert (r.get_json()["gps"], r.get_json()["taken_at"]) == (None, TAKEN_AT)
    [listed] = client.get(f"/api/v1/cases/{case_id}/attachments").get_json()["items"]
    assert listed["gps"] is None
    [row] = rows(session)
    assert row[5:] == (None, None)


def test_time_and_place_are_shown_only_with_evidence_location(client, accounts, case_id):
    worker = accounts.client("worker", "grid_worker", grids=[A1])
    r = upload(worker, case_id, jpeg_with_metadata())
    assert r.status_code == 201, r.get_json()
    assert "taken_at" not in r.get_json() and "gps" not in r.get_json()
    listed = worker.get(f"/api/v1/cases/{case_id}/attachments").get_json()["items"]
    assert len(listed) == 1 and "taken_at" not in listed[0] and "gps" not in listed[0]
    [seen] = client.get(f"/api/v1/cases/{case_id}/attachments").get_json()["items"]
    assert seen["taken_at"] == TAKEN_AT and seen["gps"]["type"] == "Point"
    # A photo without EXIF shows null time and place to those who may see them.
    plain = upload(client, case_id, png(), "plain.png").get_json()
    assert plain["taken_at"] is None and plain["gps"] is None


def test_a_retried_upload_returns_the_first_attachment_and_stores_nothing_new(
    client, case_id, settings, session
):
    data = jpeg((400, 300), exif=exif_with_place())
    first = upload(client, case_id, data)
    assert first.status_code == 201
    files = stored_files(settings)
    assert len(files) == 2  # the photo and its thumbnail
    again = upload(client, case_id, data, "renamed.jpg")
    assert again.status_code == 201
    assert again.get_json() == first.get_json()
    assert len(rows(session)) == 1
    assert stored_files(settings) == files
    assert audit_count(session, "case.attach") == 1
    # The same photo on another case is another attachment (sharing the stored file).
    other = client.post("/api/v1/cases", json=report_body(*center(1))).get_json()["id"]
    third = upload(client, other, data)
    assert third.status_code == 201 and third.get_json()["id"] != first.get_json()["id"]
    assert third.get_json()["sha256"] == first.get_json()["sha256"]
    assert len(rows(session)) == 2 and stored_files(settings) == files


def test_a_photo_is_made_once_by_its_bytes_not_by_an_idempotency_key(client, case_id, session):
    """docs/integration.md: a photo takes no Idempotency-Key (the header is ignored); its
    bytes make it once."""

    def send(data: bytes) -> Any:
        return client.post(
            f"/api/v1/cases/{case_id}/attachments",
            data={"file": (io.BytesIO(data), "photo.jpg")},
            content_type="multipart/form-data",
            headers={"Idempotency-Key": "photo-1"},
        )

    first, again = send(jpeg((60, 40))), send(jpeg((60, 40)))
    assert (first.status_code, again.status_code) == (201, 201)
    assert again.get_json() == first.get_json() and "Idempotent-Replayed" not in again.headers
    other = send(jpeg((61, 40)))
    assert other.status_code == 201 and other.get_json()["id"] != first.get_json()["id"]
    assert len(rows(session)) == 2


def test_the_same_upload_retried_at_once_answers_the_first_attachment(
    client, accounts, case_id, session
):
    """A phone's retries racing the first upload: one lost the race on the unique (case,
    upload hash) and answered an undocumented 409; every one gets the attachment now."""
    data = jpeg((400, 300), exif=exif_with_place())
    clients = [accounts.client("admin") for _ in range(8)]
    answers = race(clients, lambda c: upload(c, case_id, data))
    details = [(a.status_code, a.get_data(as_text=True)[:200]) for a in answers]
    assert [a.status_code for a in answers] == [201] * 8, details
    assert len({a.get_json()["id"] for a in answers}) == 1
    assert len(rows(session)) == 1
    assert audit_count(session, "case.attach") == 1


def test_a_report_does_not_wait_for_a_photo_being_processed(
    client, accounts, case_id, session, settings, monkeypatch
):
    """On SQLite an upload began as a writer (BEGIN IMMEDIATE, as every POST) and decoded,
    re-encoded and thumbnailed the photo (up to seconds of CPU for a phone's 12 MP JPEG)
    and wrote its files holding the database's one write lock: every report and step of
    every phone waited for each photo. The photo is prepared before the write begins now."""
    from gridapi.services import attachments as svc

    worker = accounts.client("admin")
    answer = report_while_held(
        client,
        monkeypatch,
        svc,
        "prepare_photo",
        lambda: upload(worker, case_id, jpeg((400, 300))),
    )
    assert answer.status_code == 201, answer.get_json()
    assert len(rows(session)) == 1
    assert audit_count(session, "case.attach") == 1
    assert len(stored_files(settings)) == 2


# --- hostile and wrong files ----------------------------------------------------------------


def jpeg_scan_bomb(extra_scans: int = 500) -> bytes:
    """A 600 kB progressive JPEG of 40 megapixels whose last scan (with its Huffman table)
    is repeated: each copy is one more pass over every pixel (≈ 25 ms each; 5,000 held a
    worker past gunicorn's 120 s timeout)."""
    out = io.BytesIO()
    Image.new("L", (8000, 5000), 128).save(out, "JPEG", progressive=True)
    data = out.getvalue()
    last = data[data.rindex(b"\xff\xc4", 0, data.rindex(b"\xff\xda")) : -2]  # DHT, SOS, data
    return data[:-2] + last * extra_scans + b"\xff\xd9"


def jpeg_scan_bomb_with_a_stray_byte() -> bytes:
    """The scan bomb of 8 MP (below the floor of the size check), with one byte that is no
    marker's between two of its segments: libjpeg skips it with a warning and decodes every
    scan, and the count of scans stopped there. 2,000 such scans held a worker 17 s."""
    out = io.BytesIO()
    Image.new("L", (2828, 2828), 128).save(out, "JPEG", progressive=True)
    data = out.getvalue()
    last = data[data.rindex(b"\xff\xc4", 0, data.rindex(b"\xff\xda")) : -2]
    data = data[:-2] + last * 500 + b"\xff\xd9"
    table = data.index(b"\xff\xc4", data.index(b"\xff\xda"))  # after the first scan
    cut = table + 2 + int.from_bytes(data[table + 2 : table + 4], "big")
    return data[:cut] + b"\x00" + data[cut:]


HOSTILE = {
    "progressive jpeg of 500 scans": (jpeg_scan_bomb, "photo.jpg", "scans"),
    "progressive jpeg of 500 scans behind a stray byte": (
        jpeg_scan_bomb_with_a_stray_byte,
        "photo.jpg",
        "scans",
    ),
    "truncated jpeg": (lambda: jpeg((400, 300))[:-2000], "photo.jpg", "truncated or corrupt"),
    "png bomb 20000x20000": (lambda: png_bomb(20_000), "photo.png", "million pixels"),
    "png bomb 7000x7000": (lambda: png_bomb(7_000), "photo.png", "million pixels"),
    "png of 1 x 39,999,999 pixels": (
        lambda: png_rows_short(1, 39_999_999, 1),
        "photo.png",
        "20 times longer",
    ),
    "png of 2,000,000 x 2 pixels": (
        lambda: png_rows_short(2_000_000, 2, 1),
        "tall.png",
        "20 times",
    ),
    "png whose rows end early": (
        lambda: png_rows_short(400, 3000, 100),
        "photo.png",
        "truncated or corrupt",
    ),
    "interlaced png whose last pass ends early": (
        lambda: png_interlaced(picture((60, 40)), cut=7),
        "photo.png",
        "truncated or corrupt",
    ),
    "svg": (lambda: SVG, "photo.svg", "Only JPEG, PNG and WebP"),
    "svg named jpg": (lambda: SVG, "photo.jpg", "Only JPEG, PNG and WebP"),
    "html then jpeg": (lambda: HTML + jpeg(), "photo.jpg", "Only JPEG, PNG and WebP"),
    "jpeg magic then html": (lambda: b"\xff\xd8\xff\xe0" + HTML, "photo.jpg", "markup"),
    "valid jpeg with a script comment": (
        lambda: jpeg(comment=b"<script>alert(1)</script>"),
        "photo.jpg",
        "markup",
    ),
    **{
        f"valid jpeg with {name} in a comment": (
            lambda markup=markup: jpeg(comment=markup),
            "photo.jpg",
            "markup",
        )
        for name, markup in {
            "an img's onerror": b"<img src=x onerror=alert(1)>",
            "a link to script": b"<a href=javascript:alert(1)>x</a>",
            "a refresh": b'<meta http-equiv="refresh" content="0;url=//x">',
            "a script of a namespace": b'<x:script xmlns:x="http://www.w3.org/1999/xhtml">',
            "a script tag ended by a nul": b"<script\x00>alert(1)</script>",
        }.items()
    },
    "pdf": (lambda: b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF", "photo.jpg", "Only"),
    "gif": (lambda: b"GIF89a\x01\x00\x01\x00\x00\x00\x00;", "photo.gif", "Only JPEG"),
    "png named jpg": (lambda: png(), "photo.jpg", "named .jpg"),
    "jpeg named html": (lambda: jpeg(), "photo.html", "named .html"),
    "empty": (lambda: b"", "photo.jpg", "empty"),
    "png with markup in a text chunk": (
        lambda: png(pnginfo=with_text("<script>alert(1)</script>")),
        "photo.png",
        "markup",
    ),
    "png with html after its end": (lambda: png() + HTML, "photo.png", "markup"),
    "webp with markup in its exif": (
        lambda: webp_of(exif=exif_made_by("<svg onload=alert(1)>")),
        "photo.webp",
        "markup",
    ),
    "random bytes after a png signature": (
        lambda: b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4,
        "photo.png",
        "truncated or corrupt",
    ),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_a_hostile_or_wrong_file_is_refused_quickly_and_nothing_is_stored(
    client, case_id, settings, session, name
):
    make, filename, message = HOSTILE[name]
    data = make()
    started = time.monotonic()
    r = upload(client, case_id, data, filename)
    elapsed = time.monotonic() - started
    assert r.status_code == 422, (r.status_code, r.get_json())
    body = r.get_json()
    assert set(body) == {"code", "status", "message", "errors"}
    assert message in body["message"]
    assert body["errors"] == {"files": {"file": [body["message"]]}}
    assert elapsed < 3, elapsed  # never decoded: a 20000² bitmap alone takes longer
    assert rows(session) == []
    assert stored_files(settings) == []
    assert audit_count(session, "case.attach") == 0


def png_of_zeros(side: int) -> bytes:
    """A valid 16-bit RGBA PNG of side × side transparent black pixels: 8 bytes a pixel that
    compress to almost nothing (6300² are 320 kB, decoded in seconds and 760 MB)."""
    compressor = zlib.compressobj(9)
    row = bytes(1 + side * 8)  # filter byte 0 and four 16-bit samples a pixel
    idat = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 16, 6, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def png_of_zeros_padded(side: int) -> bytes:
    """``png_of_zeros`` with 1.3 MB of zeros in a chunk of no meaning (ancillary, private):
    a file of more than a hundredth of its pixels, which was all the check of its size
    looked at."""
    data = png_of_zeros(side)
    end = data.index(b"IEND") - 4
    return data[:end] + chunk(b"paDd", bytes(1_300_000)) + data[end:]


def png_of_zeros_partly_stored(side: int) -> bytes:
    """``png_of_zeros`` whose compressed rows hold 27 rows stored as they are (1.3 MB of
    zeros a deflate stream may hold uncompressed): big enough a file, pixel data
    included, and a few kB once the request is gzipped."""
    row = bytes(1 + side * 8)
    stored, packed = zlib.compressobj(0, wbits=-15), zlib.compressobj(9, wbits=-15)
    body = b"".join(stored.compress(row) for _ in range(27)) + stored.flush(zlib.Z_FULL_FLUSH)
    body += b"".join(packed.compress(row) for _ in range(side - 27)) + packed.flush()
    adler = zlib.adler32(row * side)
    idat = b"\x78\x01" + body + struct.pack(">I", adler)
    assert zlib.decompress(idat) == row * side
    ihdr = struct.pack(">IIBBBBB", side, side, 16, 6, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def webp_of_zeros(side: int) -> bytes:
    """A lossless WebP of side × side black pixels: a few bytes."""
    out = io.BytesIO()
    Image.new("RGB", (side, side)).save(out, "WEBP", lossless=True, method=0)
    return out.getvalue()


BOMBS = {
    "png of 6300 x 6300 zeros, 16-bit rgba": (lambda: png_of_zeros(6300), "bomb.png"),
    "png of 6300 x 6300 zeros padded": (lambda: png_of_zeros_padded(6300), "bomb.png"),
    "png of 6300 x 6300 zeros after its end": (
        lambda: png_of_zeros(6300) + bytes(1_300_000),
        "bomb.png",
    ),
    "webp of 6300 x 6300 zeros": (lambda: webp_of_zeros(6300), "bomb.webp"),
}


@pytest.mark.parametrize("name", sorted(BOMBS))
def test_an_image_far_smaller_than_its_pixels_is_refused_and_nothing_stored(
    client, case_id, settings, session, name
):
    """Within the pixel cap (39.7 MP), a PNG of zeros of 320 kB took 4.3 s and 760 MB of a
    worker to decode and was stored; five at once held every worker. No photo of that many
    pixels is so small: such an image is refused from its header, before decoding."""
    make, filename = BOMBS[name]
    data = make()
    with never_decoded():  # 4.3 s and 760 MB when it was
        r = upload(client, case_id, data, filename)
    assert_refused_and_nothing_stored(r, "more than 100 times its file", settings, session)
    assert "6300 × 6300 pixels" in r.get_json()["message"]


@contextlib.contextmanager
def never_decoded() -> Any:
    """Make decoding an image's pixels fail the request (a 422 "truncated or corrupt",
    where the test expects another answer): what is refused from its header is refused
    before any pixel is decoded, as a duration could only roughly tell."""
    from PIL import ImageFile

    def load(self: Any) -> Any:
        raise AssertionError("decoded")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ImageFile.ImageFile, "load", load)
        yield


def test_an_upload_is_judged_by_what_its_compressed_request_took_to_send(
    client, case_id, settings, session
):
    """A PNG of 6300² zeros whose pixel data holds 1.3 MB stored as is passes the check of
    its size (a hundredth of its pixels), and gzips to a few kB: with Content-Encoding:
    gzip it was 2 kB sent for 4 s of a worker and 700 MB. It is judged by what it took to
    send; a photo (which gzip cannot shrink) sent so is taken."""
    from werkzeug.datastructures import FileStorage
    from werkzeug.test import encode_multipart

    def gzipped(data: bytes, filename: str) -> Any:
        part = FileStorage(io.BytesIO(data), filename=filename)
        boundary, body = encode_multipart({"file": part})
        return client.post(
            f"/api/v1/cases/{case_id}/attachments",
            data=gzip.compress(body),
            headers={
                "Content-Encoding": "gzip",
                "Content-Type": f"multipart/form-data; boundary={boundary}",
            },
        )

    data = png_of_zeros_partly_stored(6300)
    assert len(gzip.compress(data)) < 20_000 and len(data) * 100 > 6300 * 6300 * 3
    with never_decoded():
        r = gzipped(data, "bomb.png")
    assert_refused_and_nothing_stored(r, "more than 100 times its file", settings, session)
    noisy = Image.effect_noise((3500, 2500), 40).convert("RGB")  # 8.75 MP
    out = io.BytesIO()
    noisy.save(out, "JPEG", quality=85)
    r = gzipped(out.getvalue(), "street.jpg")
    assert r.status_code == 201, r.get_json()
    assert (r.get_json()["width"], r.get_json()["height"]) == (3500, 2500)


def test_a_noisy_photo_of_many_pixels_and_a_flat_image_of_few_are_taken(client, case_id):
    """The size a file must have for its pixels applies above 8 MP only, and a photo (noise
    compresses as badly as a camera's pictures) is well within it."""
    noisy = Image.effect_noise((3500, 2500), 40).convert("RGB")  # 8.75 MP
    out = io.BytesIO()
    noisy.save(out, "JPEG", quality=85)
    r = upload(client, case_id, out.getvalue(), "street.jpg")
    assert r.status_code == 201, r.get_json()
    assert (r.get_json()["width"], r.get_json()["height"]) == (3500, 2500)

    flat = png_bomb(2800)  # 7.84 MP of white in a few kB: a drawing, below the 8 MP floor
    r = upload(client, case_id, flat, "drawing.png")
    assert r.status_code == 201, r.get_json()
    assert (r.get_json()["width"], r.get_json()["height"]) == (2800, 2800)


def test_pixels_that_spell_markup_are_not_markup(client, case_id, settings, session):
    """Compressed pixels look like random bytes, in which "<svg>" and its like occur by
    chance (about once in 17 GB: one 4 MB photo in some 4,000), and such a photo was refused
    as markup however often it was sent. What is not pixel data is searched (metadata, the
    chunks, what follows the picture: the cases above); here the pixels, stored
    uncompressed, spell the markup."""
    width = 64
    lines = [b"<svg>".ljust(width, b"\x80"), b"<script src=x>".ljust(width, b"\x40")] * 8
    data = png_stored(lines)
    assert b"<svg>" in data and reopen_bytes(data).size == (width, 16)
    r = upload(client, case_id, data, "grey.png")
    assert r.status_code == 201, r.get_json()
    assert len(rows(session)) == 1 and audit_count(session, "case.attach") == 1
    photo = reopen_bytes(client.get(r.get_json()["links"]["content"]).data)
    assert bytes(photo.crop((0, 0, 5, 1)).tobytes()) == b"<svg>"  # the same pixels, kept


def test_a_progressive_jpeg_of_ordinary_scans_is_taken(client, case_id):
    data = jpeg((400, 300), progressive=True)
    assert data.count(b"\xff\xda") == 10  # libjpeg's progressive script
    r = upload(client, case_id, data)
    assert r.status_code == 201, r.get_json()


def test_a_declared_type_that_contradicts_the_content_is_refused(client, case_id, settings):
    r = upload(client, case_id, jpeg(), "photo", "image/png")
    assert r.status_code == 422
    assert r.get_json()["errors"]["files"]["file"] == [
        "The file is declared as image/png but is a JPEG image (image/jpeg)."
    ]
    # No extension and a generic type are fine: the content decides.
    ok = upload(client, case_id, jpeg(), "blob", "application/octet-stream")
    assert ok.status_code == 201, ok.get_json()
    assert stored_files(settings)


def test_a_request_without_a_file_names_the_field(client, case_id):
    r = client.post(
        f"/api/v1/cases/{case_id}/attachments", data={}, content_type="multipart/form-data"
    )
    assert r.status_code == 422
    assert "file" in r.get_json()["errors"]["files"]
    r = client.post(f"/api/v1/cases/{case_id}/attachments", json={"file": "x"})
    assert r.status_code == 422
    assert "file" in r.get_json()["errors"]["files"]


def assert_refused_and_nothing_stored(r: Any, message: str, settings: Any, session: Any) -> None:
    assert r.status_code == 422, (r.status_code, r.get_json())
    body = r.get_json()
    assert set(body) == {"code", "status", "message", "errors"}
    assert message in body["message"]
    assert body["errors"] == {"files": {"file": [body["message"]]}}
    assert rows(session) == []
    assert stored_files(settings) == []
    assert audit_count(session, "case.attach") == 0


@pytest.mark.parametrize("count", [2, 3, 300])
def test_several_files_in_one_request_are_refused_and_none_is_stored(
    client, case_id, settings, session, count
):
    """A phone that sends all its photos in one request must not be told 201 when only the
    first would be kept: it is told to send them one by one."""
    photos = [(io.BytesIO(jpeg((16 + i, 16))), f"photo{i}.jpg") for i in range(count)]
    r = client.post(
        f"/api/v1/cases/{case_id}/attachments",
        data={"file": photos},
        content_type="multipart/form-data",
    )
    assert_refused_and_nothing_stored(r, "Send one file per request", settings, session)
    assert client.get(f"/api/v1/cases/{case_id}/attachments").get_json() == {"items": []}
    # Sent one by one, they go.
    assert upload(client, case_id, jpeg((16, 16))).status_code == 201
    assert upload(client, case_id, jpeg((17, 16))).status_code == 201
    assert len(rows(session)) == 2


# Request bodies as keyword arguments of the test client, built afresh for each engine (a
# file part's stream is read once).
TEXT_NOT_FILE = {
    "multipart text field": lambda: dict(
        data={"file": "notafile"}, content_type="multipart/form-data"
    ),
    "urlencoded field": lambda: dict(data={"file": "notafile"}),
    "empty multipart text field": lambda: dict(
        data={"file": ""}, content_type="multipart/form-data"
    ),
    "text field next to a photo": lambda: dict(
        data={"file": ["notafile", (io.BytesIO(jpeg()), "photo.jpg")]},
        content_type="multipart/form-data",
    ),
}


@pytest.mark.parametrize("name", sorted(TEXT_NOT_FILE))
def test_a_text_field_named_file_is_refused_and_nothing_is_stored(
    client, case_id, settings, session, name
):
    r = client.post(f"/api/v1/cases/{case_id}/attachments", **TEXT_NOT_FILE[name]())
    assert_refused_and_nothing_stored(r, "must be a file", settings, session)


ODD_BODIES = {
    "no body": lambda: {},
    "json object": lambda: dict(json={"file": {"filename": "a.jpg", "data": "/9j/"}}),
    "json array": lambda: dict(json=[1, 2]),
    "broken json": lambda: dict(data=b"{", content_type="application/json"),
    "plain text": lambda: dict(data=b"file=notafile", content_type="text/plain"),
    "raw jpeg": lambda: dict(data=jpeg(), content_type="image/jpeg"),
    "multipart without a boundary": lambda: dict(
        data=b"--x\r\n", content_type="multipart/form-data"
    ),
    "multipart with a broken body": lambda: dict(
        data=b'--x\r\nContent-Disposition: form-data; name="file"; filename="a.jpg"\r\n',
        content_type="multipart/form-data; boundary=x",
    ),
    "multipart with no parts": lambda: dict(
        data=b"--x--\r\n", content_type="multipart/form-data; boundary=x"
    ),
    "another field only": lambda: dict(
        data={"photo": (io.BytesIO(jpeg()), "a.jpg")}, content_type="multipart/form-data"
    ),
}


@pytest.mark.parametrize("name", sorted(ODD_BODIES))
def test_a_body_without_one_file_is_a_client_error(client, case_id, settings, session, name):
    """Whatever else arrives in place of one file, the answer is a 422 naming the field in
    the one error body, never a 500, and nothing is stored."""
    r = client.post(f"/api/v1/cases/{case_id}/attachments", **ODD_BODIES[name]())
    assert r.status_code == 422, (r.status_code, r.get_json())
    body = r.get_json()
    assert set(body) == {"code", "status", "message", "errors"}
    assert body["errors"]["files"]["file"]
    assert rows(session) == [] and stored_files(settings) == []


@pytest.mark.parametrize("overrides", [{"attachment_max_mb": 0.01}])
def test_a_file_over_the_size_cap_is_refused(client, case_id, settings, session):
    noisy = Image.effect_noise((200, 200), 80).convert("RGB")
    out = io.BytesIO()
    noisy.save(out, "JPEG", quality=95)
    big = out.getvalue()
    assert len(big) > 0.01 * 1024 * 1024
    r = upload(client, case_id, big)
    assert r.status_code == 422
    assert "GRIDAPI_ATTACHMENT_MAX_MB" in r.get_json()["message"]
    assert r.get_json()["errors"] == {"files": {"file": [r.get_json()["message"]]}}
    assert rows(session) == [] and stored_files(settings) == []
    assert upload(client, case_id, jpeg()).status_code == 201  # a small one still goes


@pytest.mark.parametrize("overrides", [{"attachment_max_megapixels": 0.001}])
def test_a_photo_over_the_pixel_cap_is_refused(client, case_id, settings):
    r = upload(client, case_id, jpeg((40, 30)))  # 1,200 pixels
    assert r.status_code == 422
    assert "GRIDAPI_ATTACHMENT_MAX_MEGAPIXELS" in r.get_json()["message"]
    assert stored_files(settings) == []
    assert upload(client, case_id, jpeg((30, 30))).status_code == 201


@pytest.mark.parametrize("overrides", [{"attachment_max_megapixels": 0.0157}])
def test_a_photo_of_exactly_the_pixel_cap_is_taken(client, case_id, settings, session):
    """0.0157 million pixels were 15,699 (0.0157 × 1,000,000 is 15699.999… in floating
    point): a photo of exactly 15,700 was refused as having "more than 0.015699 million"."""
    r = upload(client, case_id, jpeg((157, 100)))
    assert r.status_code == 201, r.get_json()
    r = upload(client, case_id, jpeg((2243, 7)))  # 15,701: one pixel more
    assert r.status_code == 422
    assert r.get_json()["message"] == (
        "The image has more than 0.0157 million pixels (GRIDAPI_ATTACHMENT_MAX_MEGAPIXELS)."
    )
    assert len(rows(session)) == 1


def test_the_default_caps_give_422_at_12_mb_and_413_beyond_the_body_limit(
    client, case_id, settings, session
):
    """The 10 MB photo cap answers before Flask's 32 MB body limit (GRIDAPI_MAX_BODY_MB),
    which answers 413 in the same error body."""
    filler = b"\xff\xd8\xff\xe0" + bytes(12 * 1024 * 1024)
    r = upload(client, case_id, filler)
    assert r.status_code == 422
    assert r.get_json()["message"] == "The file is larger than 10 MB (GRIDAPI_ATTACHMENT_MAX_MB)."
    huge = upload(client, case_id, b"\xff\xd8\xff\xe0" + bytes(33 * 1024 * 1024))
    assert huge.status_code == 413
    body = huge.get_json()
    assert set(body) == {"code", "status", "message", "errors"} and body["code"] == 413
    assert body["message"] == BODY_TOO_LARGE
    assert rows(session) == [] and stored_files(settings) == []


def test_a_form_of_too_many_parts_is_not_told_its_body_is_too_large(
    client, case_id, settings, session
):
    """Werkzeug answers a form of more than 1,000 parts with the 413 of a body over its
    limit: a photo with 1,001 empty fields (a small body) was told the body was larger than
    GRIDAPI_MAX_BODY_MB."""
    fields: dict[str, Any] = {f"note{i}": "" for i in range(1001)}
    fields["file"] = (io.BytesIO(jpeg()), "photo.jpg")
    r = client.post(
        f"/api/v1/cases/{case_id}/attachments", data=fields, content_type="multipart/form-data"
    )
    assert r.status_code == 413
    body = r.get_json()
    assert body == error_body(
        413,
        "The form has too many parts (at most 1000) or a text field larger than 500000 bytes.",
    )
    assert rows(session) == [] and stored_files(settings) == []


# --- scope ----------------------------------------------------------------------------------


def test_a_case_out_of_scope_answers_like_a_missing_one(client, accounts, world, settings):
    worker = accounts.client("worker", "grid_worker", grids=[A1])
    elsewhere = client.post("/api/v1/cases", json=report_body(*center(2))).get_json()["id"]
    photo = upload(client, elsewhere, jpeg()).get_json()["id"]
    files = stored_files(settings)
    missing = 987_654
    for suffix in (
        "/attachments",
        f"/attachments/{photo}/content",
        f"/attachments/{photo}/thumbnail",
    ):
        out = worker.get(f"/api/v1/cases/{elsewhere}{suffix}")
        none = worker.get(f"/api/v1/cases/{missing}{suffix}")
        assert out.status_code == none.status_code == 404, suffix
        assert (
            out.get_json()
            == none.get_json()
            == {
                "code": 404,
                "status": "Not Found",
                "message": "No such case.",
                "errors": {},
            }
        )
    out = upload(worker, elsewhere, png(), "x.png")
    none = upload(worker, missing, png(), "x.png")
    assert (out.status_code, out.get_json()) == (none.status_code, none.get_json())
    assert out.status_code == 404
    assert stored_files(settings) == files


def test_an_attachment_of_another_case_is_not_found(client, world):
    first = client.post("/api/v1/cases", json=report_body(*center(0))).get_json()["id"]
    second = client.post("/api/v1/cases", json=report_body(*center(1))).get_json()["id"]
    photo = upload(client, first, jpeg()).get_json()["id"]
    r = client.get(f"/api/v1/cases/{second}/attachments/{photo}/content")
    assert r.status_code == 404 and r.get_json()["message"] == "No such attachment."
    assert client.get(f"/api/v1/cases/{second}/attachments").get_json() == {"items": []}


def test_an_app_that_only_reports_adds_photos_to_its_own_reports_only(app, client, case_id):
    """A key with cases:write and no cases:read added photos to any case of its area (and
    learnt which case ids exist)."""
    made = client.post(
        "/api/v1/clients",
        json={"name": "随手拍", "scopes": ["cases:write"], "scope_region": COMMUNITY_A},
    ).get_json()
    app_client = app.test_client()
    app_client.environ_base["HTTP_X_API_KEY"] = made["api_key"]
    own = app_client.post("/api/v1/cases", json=report_body(*center(0)))
    assert own.status_code == 201, own.get_json()
    assert upload(app_client, own.get_json()["id"], jpeg()).status_code == 201
    theirs = upload(app_client, case_id, png(), "x.png")
    missing = upload(app_client, 987_654, png(), "x.png")
    assert theirs.status_code == missing.status_code == 404
    assert theirs.get_json() == missing.get_json()
    assert client.get(f"/api/v1/cases/{case_id}/attachments").get_json() == {"items": []}


def test_evidence_is_added_by_those_who_work_the_case(app, client, accounts, case_id, settings):
    """A photo is evidence the office judges a case by: its reporter, handler and office
    add it, and the workers of its grid; a reader by area alone (an app of the community,
    a department role without a department) is refused, 403, and nothing is stored. It
    added photos to any case it could read."""
    area_app = app_key(app, client, ["cases:read", "cases:write"], COMMUNITY_A)
    reader = accounts.client("area-reader", "department", scope_region=COMMUNITY_A)
    assert area_app.get(f"/api/v1/cases/{case_id}").status_code == 200
    assert reader.get(f"/api/v1/cases/{case_id}").status_code == 200
    files = stored_files(settings)
    for outsider in (area_app, reader):
        r = upload(outsider, case_id, png(), "x.png")
        assert r.status_code == 403, r.get_json()
        assert "work the case" in r.get_json()["message"]
    assert stored_files(settings) == files
    assert client.get(f"/api/v1/cases/{case_id}/attachments").get_json() == {"items": []}
    grid_worker = accounts.client("a1-worker", "grid_worker", grids=[A1])
    officer = accounts.client("a-officer", "community_officer", scope_region=COMMUNITY_A)
    taken = [
        upload(who, case_id, jpeg((60 + i, 40)))
        for i, who in enumerate((grid_worker, officer, client))
    ]
    assert [r.status_code for r in taken] == [201, 201, 201], [r.get_json() for r in taken]
    listed = client.get(f"/api/v1/cases/{case_id}/attachments").get_json()["items"]
    assert len(listed) == 3
    # the app's own report takes its photos
    own = area_app.post("/api/v1/cases", json=report_body(*center(0))).get_json()["id"]
    assert upload(area_app, own, png(), "x.png").status_code == 201


def test_anonymous_and_apps_without_cases_write_may_not_upload(app, client, case_id):
    r = app.test_client().post(
        f"/api/v1/cases/{case_id}/attachments",
        data={"file": (io.BytesIO(jpeg()), "a.jpg")},
        content_type="multipart/form-data",
    )
    assert r.status_code == 401


# --- downloads ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data,filename,ext",
    [
        (lambda: jpeg((800, 600)), "现场照片.jpeg", "jpg"),
        (lambda: png((800, 600)), "scene.png", "png"),
        (webp_with_metadata, "scene.webp", "webp"),
    ],
)
def test_photo_and_thumbnail_downloads(client, case_id, data, filename, ext):
    body = upload(client, case_id, data(), filename).get_json()
    content = client.get(body["links"]["content"])
    assert content.status_code == 200
    assert content.headers["Content-Type"] == body["content_type"]
    assert content.headers["Cache-Control"].startswith("private, max-age=")
    assert content.headers["ETag"] == f'"{body["sha256"]}"'
    assert content.headers["X-Content-Type-Options"] == "nosniff"
    disposition = content.headers["Content-Disposition"]
    assert disposition.startswith("inline; filename=")
    assert disposition.split('"')[1].endswith(f".{ext}")
    assert hashlib.sha256(content.data).hexdigest() == body["sha256"]
    img = reopen_bytes(content.data)
    assert img.size == (body["width"], body["height"])
    assert f"image/{img.format.lower()}" == body["content_type"]

    thumb = client.get(body["links"]["thumbnail"])
    assert thumb.status_code == 200
    assert thumb.headers["Content-Type"] == body["content_type"]
    assert thumb.headers["X-Content-Type-Options"] == "nosniff"
    assert "thumbnail" in thumb.headers["Content-Disposition"]
    small = reopen_bytes(thumb.data)
    assert max(small.size) <= 320
    assert small.size == (320, 240) if body["width"] == 800 else small.size == (50, 40)

    again = client.get(body["links"]["content"], headers={"If-None-Match": content.headers["ETag"]})
    assert again.status_code == 304 and again.data == b""


def test_a_non_ascii_filename_is_offered_safely(client, case_id):
    body = upload(client, case_id, jpeg(), "..\\..\\现场\x07照片.jpg").get_json()
    assert body["filename"] == "现场照片.jpg"
    disposition = client.get(body["links"]["content"]).headers["Content-Disposition"]
    assert disposition.startswith('inline; filename="')
    assert "filename*=UTF-8''%E7%8E%B0%E5%9C%BA%E7%85%A7%E7%89%87.jpg" in disposition


def test_a_thumbnail_keeps_the_grey_levels_of_16_bits_and_a_colour_key(client, case_id):
    """A 16-bit grey PNG's thumbnail came out white (clipped, not scaled), and a colour-key
    (tRNS) PNG's opaque, while the photo kept both."""
    ramp = Image.new("I;16", (800, 600))
    ramp.putdata([x * 82 for _ in range(600) for x in range(800)])  # 0 … 65,518 left to right
    body = upload(client, case_id, png_of(ramp), "ramp.png").get_json()
    thumb = reopen_bytes(client.get(body["links"]["thumbnail"]).data).convert("L")
    levels = [thumb.getpixel((x, 100)) for x in range(0, 320, 40)]
    assert levels == sorted(levels) and levels[0] < 10 and 200 < levels[-1] < 250, levels
    assert levels[4] == pytest.approx(128, abs=6)

    keyed = Image.new("RGB", (200, 100), (10, 20, 30))
    keyed.paste((200, 0, 0), (100, 0, 200, 100))
    body = upload(client, case_id, png_of(keyed, transparency=(10, 20, 30)), "k.png").get_json()
    photo = reopen_bytes(client.get(body["links"]["content"]).data).convert("RGBA")
    thumb = reopen_bytes(client.get(body["links"]["thumbnail"]).data).convert("RGBA")
    assert photo.getpixel((10, 10))[3] == 0 and thumb.getpixel((10, 10))[3] == 0
    assert thumb.getpixel((thumb.width - 10, 10)) == (200, 0, 0, 255)


def test_a_thumbnail_keeps_the_colour_key_of_16_bit_grey(client, case_id):
    """A 16-bit grey PNG with a colour key (tRNS): the photo kept it, the thumbnail came out
    opaque (the 16-bit key was compared with the levels scaled to 8 bits)."""
    grey = Image.new("I;16", (200, 100), 1000)
    grey.paste(Image.new("I;16", (100, 100), 50_000), (100, 0))
    body = upload(client, case_id, png_of(grey, transparency=1000), "k16.png").get_json()
    photo = reopen_bytes(client.get(body["links"]["content"]).data)
    thumb = reopen_bytes(client.get(body["links"]["thumbnail"]).data).convert("RGBA")
    assert photo.mode == "I;16" and photo.info["transparency"] == 1000  # the key, kept
    assert thumb.size == (200, 100) and thumb.getpixel((10, 10))[3] == 0
    assert thumb.getpixel((190, 10)) == (195, 195, 195, 255)  # 50,000 / 256, opaque


def png_of(img: Image.Image, **save: Any) -> bytes:
    out = io.BytesIO()
    img.save(out, "PNG", **save)
    return out.getvalue()


def test_a_long_name_keeps_its_extension_and_its_check(client, case_id):
    """Names were cut at 255 before the extension check: "x…x.html" passed as a JPEG."""
    r = upload(client, case_id, jpeg(), "x" * 260 + ".html")
    assert r.status_code == 422 and "named .html" in r.get_json()["message"]
    body = upload(client, case_id, jpeg(), "x" * 252 + ".html.jpg").get_json()
    assert len(body["filename"]) == 255 and body["filename"].endswith("x.jpg")


def test_a_thumbnail_of_a_name_without_ascii_is_offered_as_attachment_thumbnail(client, case_id):
    body = upload(client, case_id, jpeg(), "现场照片.jpg").get_json()
    disposition = client.get(body["links"]["thumbnail"]).headers["Content-Disposition"]
    assert disposition.startswith('inline; filename="attachment-thumbnail.jpg"'), disposition
    assert "filename*=UTF-8''%E7%8E%B0%E5%9C%BA%E7%85%A7%E7%89%87-thumbnail.jpg" in disposition


def test_files_a_failed_request_left_are_removed_by_the_worker_after_a_day(
    app, client, world, case_id, settings
):
    """A request that failed after writing its photo (the row refused, the commit failed)
    left the photo and its thumbnail on disk for good."""
    from gridapi.models import Case
    from gridapi.services import attachments as svc
    from gridapi.services import jobs

    st = app.extensions["gridapi"]
    store = svc.AttachmentStore.from_settings(settings)
    kept = upload(client, case_id, jpeg((400, 300))).get_json()

    def failed_request(data: bytes) -> None:
        with st.sessions() as session:
            case_obj = session.get(Case, case_id)
            svc.attach(
                session,
                case_obj,
                data,
                filename="lost.jpg",
                content_type="image/jpeg",
                uploaded_by="user:1",
                store=store,
            )
            session.rollback()  # what a request that fails before its commit does

    failed_request(jpeg((420, 300)))
    (store.root / "ab").mkdir(parents=True, exist_ok=True)
    (store.root / "ab" / ".upload-x.tmp").write_bytes(b"half a photo")
    assert len(stored_files(settings)) == 2 + 2 + 1
    two_days_ago = time.time() - 2 * 86400
    for path in stored_files(settings):
        os.utime(path, (two_days_ago, two_days_ago))
    failed_request(jpeg((440, 300)))  # a young one: its row may be about to commit

    def removed() -> int:
        options = jobs.JobOptions.from_settings(settings)
        (result,) = jobs.run_jobs(st.sessions, utcnow(), options, jobs=["files"])
        assert result.errors == 0
        return result.counts["removed"]

    assert removed() == 3  # the old photo and thumbnail nobody references, the temporary file
    assert len(stored_files(settings)) == 2 + 2
    assert client.get(kept["links"]["content"]).status_code == 200
    assert client.get(kept["links"]["thumbnail"]).status_code == 200
    assert removed() == 0
    # the same photo sent to another case again: its old file is touched, not taken
    other = client.post("/api/v1/cases", json=report_body(*center(0))).get_json()["id"]
    path = stored_path(settings, kept["sha256"], "jpg")
    os.utime(path, (two_days_ago, two_days_ago))
    assert upload(client, other, jpeg((400, 300))).get_json()["sha256"] == kept["sha256"]
    assert path.stat().st_mtime > time.time() - 60


def _run_files_job(app: Any, settings: Any) -> int:
    from gridapi.services import jobs

    options = jobs.JobOptions.from_settings(settings)
    (result,) = jobs.run_jobs(app.extensions["gridapi"].sessions, utcnow(), options, jobs=["files"])
    assert result.errors == 0
    return result.counts["removed"]


def _add_row(app: Any, case_id: int, upload_: Any, stored: Any) -> dict[str, Any]:
    """Commit the row of a photo ``store_photo`` wrote (the second half of an upload)."""
    from gridapi.models import Case
    from gridapi.services import attachments as svc

    with app.extensions["gridapi"].sessions.begin() as session:
        attachment, new = svc.add_attachment(
            session, session.get(Case, case_id), upload_, stored, "user:1"
        )
        assert new
        return {"id": attachment.id, "sha256": attachment.sha256}


def test_an_upload_not_yet_committed_keeps_its_files_through_the_removal(
    app, client, world, case_id, settings
):
    """An upload writes its files, then commits its row; the removal of unreferenced files
    running in between must not take them (they are younger than a day)."""
    from gridapi.services import attachments as svc

    store = svc.AttachmentStore.from_settings(settings)
    checked = svc.check_file(jpeg((400, 300)), filename="a.jpg", content_type=None, store=store)
    stored = svc.store_photo(checked, store)  # the files are written, the row is not yet
    assert _run_files_job(app, settings) == 0
    row = _add_row(app, case_id, checked, stored)
    base = f"/api/v1/cases/{case_id}/attachments/{row['id']}"
    assert client.get(f"{base}/content").status_code == 200
    assert client.get(f"{base}/thumbnail").status_code == 200


def test_an_old_file_reused_by_an_upload_while_it_is_removed_stays(
    app, client, world, case_id, settings, monkeypatch
):
    """The removal judged an unreferenced file a day old, then unlinked it. An upload of the
    same photo touching it in between (write_blob: the file exists, touched, reused) then
    committed a row whose photo was gone: 500 on every read."""
    from gridapi.models import Case
    from gridapi.services import attachments as svc

    store = svc.AttachmentStore.from_settings(settings)
    data = jpeg((400, 300))
    with app.extensions["gridapi"].sessions() as session:  # a request that failed: files left
        svc.attach(
            session,
            session.get(Case, case_id),
            data,
            filename="lost.jpg",
            content_type="image/jpeg",
            uploaded_by="user:1",
            store=store,
        )
        session.rollback()
    two_days_ago = time.time() - 2 * 86400
    for path in stored_files(settings):
        os.utime(path, (two_days_ago, two_days_ago))
    checked = svc.check_file(data, filename="again.jpg", content_type=None, store=store)
    photo_sha = svc.sha256_hex(svc.prepare_photo(data, checked.format, store).data)

    # The upload reaches its files just after the removal's last judgement of the photo
    # (the first judgement is the listing): the moment an unlink could take it from it.
    judged = {"n": 0}
    uploaded: list[Any] = []
    older = svc._older

    def judge_then_upload(path: Path, cutoff: float) -> bool:
        old = older(path, cutoff)
        if old and photo_sha in path.name:
            judged["n"] += 1
            if judged["n"] == 2 and not uploaded:
                uploaded.append(svc.store_photo(checked, store))
        return old

    monkeypatch.setattr(svc, "_older", judge_then_upload)
    _run_files_job(app, settings)
    monkeypatch.undo()
    assert uploaded, "the upload did not run during the removal"
    row = _add_row(app, case_id, checked, uploaded[0])
    assert row["sha256"] == photo_sha
    assert stored_path(settings, photo_sha, "jpg").exists()
    base = f"/api/v1/cases/{case_id}/attachments/{row['id']}"
    assert client.get(f"{base}/content").status_code == 200
    assert client.get(f"{base}/thumbnail").status_code == 200
    # Referenced now: kept by later runs, however old.
    for path in stored_files(settings):
        os.utime(path, (two_days_ago, two_days_ago))
    assert _run_files_job(app, settings) == 0


# --- evidence on the timeline ---------------------------------------------------------------


def test_check_evidence_accepts_only_attachments_of_the_case(client, world, session):
    first = client.post("/api/v1/cases", json=report_body(*center(0))).get_json()["id"]
    second = client.post("/api/v1/cases", json=report_body(*center(1))).get_json()["id"]
    mine = upload(client, first, jpeg()).get_json()["id"]
    mine2 = upload(client, first, png(), "b.png").get_json()["id"]
    theirs = upload(client, second, jpeg()).get_json()["id"]
    assert check_evidence(session, first, [mine2, mine, mine2]) == [mine2, mine]
    assert check_evidence(session, first, []) == []
    with pytest.raises(Unprocessable) as raised:
        check_evidence(session, first, [mine, theirs, 999_999])
    assert raised.value.status == 422
    assert raised.value.errors == {
        "json": {
            "evidence": [
                f"{theirs} is not an attachment of this case",
                "999999 is not an attachment of this case",
            ]
        }
    }


def test_a_transition_cites_photos_of_its_case_as_evidence(client, world, session):
    """Feedback with photos: the timeline row lists them and each photo points at the step;
    a photo of another case is refused and the step does not happen."""
    r = client.post("/api/v1/cases", json=report_body(*center(0)))
    case, etag = r.get_json()["id"], r.headers["ETag"]
    other = client.post("/api/v1/cases", json=report_body(*center(1))).get_json()["id"]
    mine = upload(client, case, jpeg()).get_json()["id"]
    theirs = upload(client, other, png(), "p.png").get_json()["id"]
    for action in ("accept", "file"):
        step = client.post(
            f"/api/v1/cases/{case}/transitions",
            json={"action": action},
            headers={"If-Match": etag},
        )
        etag = step.headers["ETag"]
    refused = client.post(
        f"/api/v1/cases/{case}/transitions",
        json={"action": "feedback", "comment": "已清理", "evidence": [mine, theirs]},
        headers={"If-Match": etag},
    )
    assert refused.status_code == 422
    assert refused.get_json()["errors"]["json"]["evidence"] == [
        f"{theirs} is not an attachment of this case"
    ]
    assert client.get(f"/api/v1/cases/{case}").get_json()["status"] == "filed"
    done = client.post(
        f"/api/v1/cases/{case}/transitions",
        json={"action": "feedback", "comment": "已清理", "evidence": [mine]},
        headers={"If-Match": etag},
    )
    assert done.status_code == 200, done.get_json()
    timeline = client.get(f"/api/v1/cases/{case}/timeline").get_json()["items"]
    assert timeline[-1]["action"] == "feedback" and timeline[-1]["evidence"] == [mine]
    event_id = session.execute(
        text("SELECT event_id FROM case_attachments WHERE id = :id"), {"id": mine}
    ).scalar()
    last_event = session.execute(
        text("SELECT max(id) FROM case_events WHERE case_id = :id"), {"id": case}
    ).scalar()
    assert event_id == last_event


def test_a_category_can_ask_for_a_photo_with_every_feedback(client, world):
    """DOMAIN §4: the handler reports back with evidence. A category with
    ``feedback_evidence`` refuses feedback citing no photo (422 naming evidence; the case,
    its timeline and the audit log unchanged), and takes it with one; a category without
    the flag (the default) takes feedback without a photo."""
    categories = client.get("/api/v1/categories").get_json()["items"]
    assert {c["code"]: c["feedback_evidence"] for c in categories}["0101"] is False
    changed = client.patch("/api/v1/categories/0101", json={"feedback_evidence": True})
    assert changed.status_code == 200 and changed.get_json()["feedback_evidence"] is True

    def filed(col: int) -> tuple[int, str]:
        r = client.post("/api/v1/cases", json=report_body(*center(col)))
        case, etag = r.get_json()["id"], r.headers["ETag"]
        for action in ("accept", "file"):
            step = client.post(
                f"/api/v1/cases/{case}/transitions",
                json={"action": action},
                headers={"If-Match": etag},
            )
            assert step.status_code == 200, step.get_json()
            etag = step.headers["ETag"]
        return case, etag

    def feedback(case: int, etag: str, **extra: Any) -> Any:
        return client.post(
            f"/api/v1/cases/{case}/transitions",
            json={"action": "feedback", "comment": "已清理", **extra},
            headers={"If-Match": etag},
        )

    def audited() -> list[Any]:
        items = client.get("/api/v1/audit").get_json()["items"]
        return [e["object_id"] for e in items if e["action"] == "case.feedback"]

    case, etag = filed(0)
    for extra in ({}, {"evidence": []}):
        refused = feedback(case, etag, **extra)
        assert refused.status_code == 422
        body = refused.get_json()
        assert body["message"] == (
            "Feedback on a case of category 0101 (暴露垃圾) needs a photo of the result."
        )
        assert list(body["errors"]["json"]) == ["evidence"]
    assert client.get(f"/api/v1/cases/{case}").headers["ETag"] == etag
    timeline = client.get(f"/api/v1/cases/{case}/timeline").get_json()["items"]
    assert [e["action"] for e in timeline] == ["report", "accept", "file"]
    assert audited() == []
    photo = upload(client, case, jpeg()).get_json()["id"]
    done = feedback(case, etag, evidence=[photo])
    assert done.status_code == 200, done.get_json()
    assert done.get_json()["status"] == "feedback"
    assert audited() == [str(case)]

    unflagged = client.patch("/api/v1/categories/0101", json={"feedback_evidence": False})
    assert unflagged.status_code == 200
    other, other_etag = filed(1)
    assert feedback(other, other_etag).status_code == 200


def test_an_interlaced_png_and_a_panorama_are_taken_whole(client, case_id):
    """The check that a PNG's rows are all there counts Adam7's seven passes; a panorama
    within 20:1 is a photo."""
    img = picture((60, 40))
    body = upload(client, case_id, png_interlaced(img), "adam7.png").get_json()
    stored = reopen_bytes(client.get(body["links"]["content"]).data).convert("RGB")
    assert (body["width"], body["height"]) == (60, 40)
    assert stored.tobytes() == img.convert("RGB").tobytes()

    r = upload(client, case_id, png_of(Image.new("L", (2000, 100), 90)), "pano.png")
    assert r.status_code == 201, r.get_json()
    assert (r.get_json()["width"], r.get_json()["height"]) == (2000, 100)


@pytest.mark.parametrize("mode", ["1", "L", "LA", "P", "RGB", "RGBA", "I;16"])
@pytest.mark.parametrize("size", [(1, 1), (7, 3), (33, 9)])
def test_pngs_of_every_depth_and_colour_type_count_as_whole(client, case_id, mode, size):
    img = Image.new(mode, size)
    img.putdata([(i * 37) % 2 if mode == "1" else (i * 37) % 250 for i in range(size[0] * size[1])])
    r = upload(client, case_id, png_of(img), "p.png")
    assert r.status_code == 201, r.get_json()
