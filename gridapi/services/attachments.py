"""Evidence photos of cases: checked, re-encoded without metadata, stored by content hash.

An upload is refused (422, nothing stored) when it is too large, has too many pixels, is
more than ``MAX_ASPECT`` times longer than wide or would decode to more than
``MAX_EXPANSION`` times its compressed pixels, or than its compressed request took to send
(a decompression bomb; all three read from the header), is
a JPEG of more than ``MAX_JPEG_SCANS`` scans, is not a JPEG, PNG or WebP by its content, is
named or declared as another format, carries markup that can be read as it is (anywhere but
inside compressed data), or does not decode to all its pixels (a file cut or corrupt, a PNG
whose pixel data ends before its last row). What is kept is a fresh encoding of the decoded
pixels (EXIF orientation applied) with no EXIF, GPS, XMP, ICC profile, comment or text
chunk, and a thumbnail; nothing else of the upload is stored or served. So what passes
though not quite whole is dropped with the rest, harmlessly: markup inside compressed pixels
or a compressed text chunk (zTXt, iTXt), and a PNG whose rows are all there but whose end
(the IEND chunk, the last checksums) is missing. Both files live under
``<data_dir>/attachments/<sha[:2]>/<sha>.<ext>``, named by the SHA-256 of the stored bytes.
The capture time and position read from EXIF go into the row only.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import math
import os
import re
import tempfile
import unicodedata
import warnings
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from PIL import ExifTags, Image, ImageCms, ImageMath, ImageOps
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ..config import Settings, private_directory, sync_directory
from ..errors import NotFound, Unprocessable
from ..geo.crs import no_fix
from ..models import Case, CaseAttachment
from ..schemas.common import instant_problem

# format (Pillow's name) → (content type, stored extension, extensions a file may be named with)
FORMATS: dict[str, tuple[str, str, frozenset[str]]] = {
    "JPEG": ("image/jpeg", "jpg", frozenset({"jpg", "jpeg", "jpe", "jfif"})),
    "PNG": ("image/png", "png", frozenset({"png"})),
    "WEBP": ("image/webp", "webp", frozenset({"webp"})),
}
CONTENT_TYPES = {content_type: fmt for fmt, (content_type, _, _) in FORMATS.items()}
# Declared types that say nothing about the format (generic clients send these).
_UNSPECIFIC_TYPES = frozenset({"", "application/octet-stream", "binary/octet-stream"})
_TYPE_ALIASES = {"image/jpg": "image/jpeg", "image/pjpeg": "image/jpeg", "image/x-png": "image/png"}
# Markup that makes a file something a browser could run as a page, wherever it sits in it
# outside its compressed pixels (``_searched_parts``): the elements that run script or load
# something (an <img> with onerror, <meta http-equiv=refresh>, a link), also with a
# namespace prefix (<x:script xmlns:x="…xhtml">) or ended by a NUL as browsers read them.
# Five bytes at least (a tag and what ends it), so that a camera's binary maker notes,
# also searched, do not spell one by chance (one photo in hundreds of millions).
_MARKUP = re.compile(
    rb"<(?:[a-z][a-z0-9_.-]*:)?"
    rb"(?:script|html|svg|iframe|frame|frameset|body|object|embed|img|meta|math|form|link"
    rb"|style|base|!doctype\s+html|\?xml-stylesheet)[\s>/\x00]"
    rb"|<a\s+href\s*=",
    re.IGNORECASE,
)
# Chunks that hold compressed pixels (PNG, APNG; WebP's lossy, lossless and alpha data).
_PNG_PIXELS = frozenset({b"IDAT", b"fdAT"})
_WEBP_PIXELS = frozenset({b"VP8 ", b"VP8L", b"ALPH"})
# What ends a JPEG's entropy-coded data: 0xFF and a byte other than 0x00 (a stuffed 0xFF)
# or a restart marker (RSTn).
_JPEG_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7]")
# Where libjpeg finds the next marker between segments (``next_marker``): any bytes up to a
# 0xFF are skipped (a warning, "extraneous bytes"), then fill bytes (0xFF), and a 0xFF
# followed by 0x00; the marker is the byte after.
_JPEG_NEXT_MARKER = re.compile(rb"\xff+([^\x00\xff])")
THUMBNAIL_PX = 320
#: Scans a JPEG may have. Each scan of a progressive JPEG is one more pass of the decoder
#: over every pixel: a 600 kB file of a 40-megapixel grey picture with thousands of scans
#: held a worker past its 120 s timeout. Phones write one scan (baseline); progressive
#: encoders (libjpeg, mozjpeg) about ten. 32 scans of 40 megapixels decode in ≈ 1 s.
MAX_JPEG_SCANS = 32
#: How many times longer than wide (or wide than long) a photo may be. A phone's panorama is
#: 2:1 to about 10:1; a PNG of one pixel by 40 million rows is a few kB that take a worker
#: seconds to decode, row by row.
MAX_ASPECT = 20
#: Above this many pixels an image must not decode to more than ``MAX_EXPANSION`` times its
#: compressed pixels (``pixel_data_bytes``). Below it, any image is cheap (8 MP of RGB are 24 MB, decoded in well under a
#: second), and screenshots, scans and drawings compress far better than photos.
EXPANSION_FLOOR_PIXELS = 8_000_000
#: How many times its compressed pixels an image of more than ``EXPANSION_FLOOR_PIXELS`` may be
#: once decoded, counting 3 bytes (RGB) a pixel: at least 0.24 bits a pixel. Phones write
#: 1 to 5 bits a pixel (a 12 MP JPEG of 1.5 to 8 MB: ratios 5 to 25); even a 12 MP
#: featureless gradient with a sensor's faintest noise (one level), saved at quality 90,
#: has a ratio of 55. A 6300 × 6300 PNG of zeros, 16-bit RGBA, is 320 kB (a ratio of 370)
#: that took 4.3 s and 760 MB to decode; a WebP of it is 34 bytes. The pixel cap bounds
#: what one image costs; this, how cheaply it is sent (40 MP in no less than 1.2 MB).
MAX_EXPANSION = 100
JPEG_QUALITY = 85
WEBP_QUALITY = 85
_FIELD = "file"


@dataclass(frozen=True)
class AttachmentStore:
    """Where attachments are kept and what an upload may be."""

    root: Path
    max_bytes: int
    max_pixels: int
    timezone: ZoneInfo

    @classmethod
    def from_settings(cls, settings: Settings) -> AttachmentStore:
        return cls(
            root=Path(settings.data_dir) / "attachments",
            max_bytes=int(settings.attachment_max_mb * 1024 * 1024),
            # Rounded off before the cut: 0.0157 * 1_000_000 is 15699.999…, and int() made
            # the cap one pixel less than configured (an image of exactly that many refused).
            max_pixels=int(round(settings.attachment_max_megapixels * 1_000_000, 6)),
            timezone=ZoneInfo(settings.timezone),
        )

    def path(self, sha256: str, content_type: str) -> Path:
        """Return the file that holds the stored bytes with this hash."""
        return self.root / sha256[:2] / f"{sha256}.{FORMATS[CONTENT_TYPES[content_type]][1]}"


@dataclass(frozen=True)
class Photo:
    """An upload after checking: the stored encoding, its thumbnail, what EXIF said."""

    format: str
    data: bytes
    thumbnail: bytes
    width: int
    height: int
    taken_at: datetime | None
    gps_lon: float | None
    gps_lat: float | None


def _refuse(message: str) -> Unprocessable:
    return Unprocessable(message, errors={"files": {_FIELD: [message]}})


# --- checking an upload ---------------------------------------------------------------------


def sniff(data: bytes) -> str | None:
    """Return the format the bytes begin like ("JPEG", "PNG", "WEBP"), or None."""
    if data[:3] == b"\xff\xd8\xff":
        return "JPEG"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "PNG"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return None


def jpeg_scans(data: bytes, stop_at: int = MAX_JPEG_SCANS + 1) -> int:
    """Return how many scans (SOS segments) the first picture of a JPEG has, counting at
    most ``stop_at`` (``jpeg_layout``)."""
    return jpeg_layout(data, stop_at)[0]


def jpeg_layout(data: bytes, stop_at: int = MAX_JPEG_SCANS + 1) -> tuple[int, int]:
    """Return how many scans (SOS segments) the first picture of a JPEG has, counting at
    most ``stop_at``, and how many bytes of entropy-coded data (its compressed pixels)
    they hold.

    Walks the segments as libjpeg reads them (``_JPEG_NEXT_MARKER``), skipping their
    contents and the entropy-coded data (an SOS inside an APP segment, as in an EXIF
    thumbnail, is not counted); stops at the end of the picture. The walk stopped at the
    first byte between two segments that was not a marker's, where libjpeg skips it with a
    warning and goes on: one stray byte hid 2,000 scans, 17 s of a worker."""
    scans, coded, i, size = 0, 0, 2, len(data)
    while scans < stop_at:
        found = _JPEG_NEXT_MARKER.search(data, i)
        if found is None:
            break
        marker, i = found[1][0], found.end()
        if marker == 0xD9:  # end of the picture
            break
        if 0xD0 <= marker <= 0xD8 or marker == 0x01:  # markers without a length
            continue
        i += int.from_bytes(data[i : i + 2], "big")
        if marker != 0xDA:
            continue
        scans += 1
        # The entropy-coded data: up to a marker other than FF00 or RSTn.
        following = _JPEG_MARKER.search(data, i)
        stop = size if following is None else following.start()
        coded += max(0, stop - i)
        i = stop
    return scans, coded


def pixel_data_bytes(data: bytes, fmt: str) -> int:
    """Return how many bytes of an image's file are the compressed pixels of its first
    picture (what the decoder inflates): a JPEG's entropy-coded data, a PNG's IDAT chunks,
    a WebP's VP8, VP8L and ALPH chunks (of its first frame, when animated). Metadata,
    other chunks, later pictures and whatever follows the image are not: a bomb padded
    with any of them was taken for a photo of its file's size (``decode``)."""
    if fmt == "JPEG":
        return jpeg_layout(data, stop_at=1 << 30)[1]
    size = len(data)
    if fmt == "PNG":
        return sum(
            max(0, min(end - 4, size) - (start + 8))
            for kind, start, end in _png_chunks(data)
            if kind == b"IDAT"
        )
    return _webp_pixel_bytes(
        memoryview(data), 12, min(size, 8 + int.from_bytes(data[4:8], "little"))
    )


def _webp_pixel_bytes(view: memoryview, i: int, end: int) -> int:
    """Return the bytes of the pixel chunks of a WebP's first picture from ``i`` to ``end``:
    those of the file, or of its first animation frame (ANMF)."""
    total = 0
    while i + 8 <= end:
        kind = bytes(view[i : i + 4])
        length = int.from_bytes(view[i + 4 : i + 8], "little")
        stop = min(end, i + 8 + length + (length & 1))
        if kind == b"ANMF":
            return total + _webp_pixel_bytes(view, i + 24, stop)
        if kind in _WEBP_PIXELS:
            total += max(0, min(stop, i + 8 + length) - (i + 8))
        i = stop
    return total


def _searched_parts(data: bytes, fmt: str) -> Iterator[memoryview]:
    """Yield the parts of an upload searched for markup: all but its compressed pixels.

    Compressed pixels look like random bytes, in which "<svg>" and its like occur by chance
    (about once in 17 GB: one 4 MB photo in some 4,000 was refused as markup, each time it
    was sent); markup hidden there is harmless, as only a fresh encoding of the decoded
    pixels is ever kept and served. Headers, metadata (EXIF, XMP, comments, text chunks),
    unknown chunks and whatever follows the picture are searched, and the rest of a file
    from where its structure breaks."""
    if fmt == "JPEG":
        yield from _jpeg_parts(data)
    elif fmt == "PNG":
        yield from _png_parts(data)
    else:
        view = memoryview(data)
        end = min(len(data), 8 + int.from_bytes(data[4:8], "little"))
        yield view[:12]
        yield from _riff_parts(view, 12, end)
        yield view[end:]


def _jpeg_parts(data: bytes) -> Iterator[memoryview]:
    """Yield a JPEG's markers and segments (entropy-coded data left out) and what follows
    its pictures (the pictures after the first, as in MPO, walked alike)."""
    view, i, size = memoryview(data), 0, len(data)
    while i < size:
        if data[i : i + 2] != b"\xff\xd8":  # not a picture: trailing data
            yield view[i:]
            return
        i += 2
        while True:
            if i + 2 > size or data[i] != 0xFF:
                yield view[i:]
                return
            marker = data[i + 1]
            if marker == 0xFF:  # fill byte
                i += 1
                continue
            if marker == 0xD9:  # end of the picture
                i += 2
                break
            if 0xD0 <= marker <= 0xD7 or marker == 0x01:  # markers without a length
                i += 2
                continue
            end = i + 2 + int.from_bytes(data[i + 2 : i + 4], "big")
            yield view[i:end]
            i = end
            if marker == 0xDA:  # entropy-coded data: up to a marker but FF00 and RSTn
                following = _JPEG_MARKER.search(data, i)
                if following is None:
                    return
                i = following.start()


def _png_chunks(data: bytes) -> Iterator[tuple[bytes, int, int]]:
    """Yield (kind, start, end) of a PNG's chunks, IEND the last (the end of a chunk cut
    short lies beyond the data)."""
    i, size = 8, len(data)
    while i + 8 <= size:
        kind = data[i + 4 : i + 8]
        end = i + 12 + int.from_bytes(data[i : i + 4], "big")
        yield kind, i, end
        if kind == b"IEND":
            return
        i = end


def _png_parts(data: bytes) -> Iterator[memoryview]:
    """Yield a PNG's chunks but the pixel data (IDAT, fdAT), and what follows IEND."""
    view, rest = memoryview(data), 8
    for kind, start, end in _png_chunks(data):
        if kind not in _PNG_PIXELS:
            yield view[start:end]
        rest = end
    yield view[rest:]


# PNG colour type → samples per pixel
_PNG_SAMPLES = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
# Adam7's passes: (first column, first row, column step, row step)
_ADAM7 = (
    (0, 0, 8, 8),
    (4, 0, 8, 8),
    (0, 4, 4, 8),
    (2, 0, 4, 4),
    (0, 2, 2, 4),
    (1, 0, 2, 2),
    (0, 1, 1, 2),
)


def png_pixels_complete(data: bytes) -> bool:
    """Whether a PNG's pixel data (its IDAT chunks, the first picture) inflates to as many
    bytes as its header's rows need.

    Pillow takes a compressed stream that ends early as the whole picture and fills the rows
    it lacks with black, so a PNG cut short but for a proper end of its zlib stream would be
    stored as a photo. The stream is inflated a megabyte at a time, counted, not kept.
    """
    if len(data) < 33 or data[12:16] != b"IHDR":
        return False
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    depth, colour, interlaced = data[24], data[25], data[28]
    bits = _PNG_SAMPLES.get(colour, 0) * depth
    passes = _ADAM7 if interlaced else ((0, 0, 1, 1),)
    needed = 0
    for column, row, column_step, row_step in passes:
        columns = (width - column + column_step - 1) // column_step
        rows = (height - row + row_step - 1) // row_step
        if columns > 0 and rows > 0:
            needed += rows * (1 + (columns * bits + 7) // 8)
    inflate, got = zlib.decompressobj(), 0
    view = memoryview(data)
    try:
        for kind, start, end in _png_chunks(data):
            if got >= needed:
                break
            if kind == b"IDAT":
                pending = bytes(view[start + 8 : min(end - 4, len(data))])
                while pending and got < needed:
                    got += len(inflate.decompress(pending, 1 << 20))
                    pending = inflate.unconsumed_tail
        if got < needed:
            got += len(inflate.flush())  # what the last megabyte's limit held back
    except zlib.error:
        return False
    return got >= needed


def _riff_parts(view: memoryview, i: int, end: int) -> Iterator[memoryview]:
    """Yield a WebP's chunks from ``i`` to ``end`` but the pixel data, looking into each
    animation frame (ANMF: a 16-byte header, then the frame's chunks)."""
    while i + 8 <= end:
        kind = bytes(view[i : i + 4])
        length = int.from_bytes(view[i + 4 : i + 8], "little")
        stop = min(end, i + 8 + length + (length & 1))
        if kind == b"ANMF":
            yield view[i : i + 24]
            yield from _riff_parts(view, i + 24, stop)
        elif kind not in _WEBP_PIXELS:
            yield view[i:stop]
        i = stop
    yield view[i:end]


def safe_filename(name: str | None) -> str:
    """Return the last part of a client's file name without control characters (≤ 255),
    a long one shortened in its stem so that its extension is the one it was sent with
    (cut at 255, "….html" lost its extension and passed the extension check)."""
    name = (name or "").replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch for ch in name if unicodedata.category(ch)[0] != "C" and ch != '"')
    name = name.strip().strip(".")
    if len(name) <= 255:
        return name
    stem, dot, extension = name.rpartition(".")
    if not dot or len(extension) > 16:
        return name[:255]
    return f"{stem[: 254 - len(extension)]}.{extension}"


def check_upload(data: bytes, *, filename: str, content_type: str, store: AttachmentStore) -> str:
    """Return the format of an upload after the checks that need no decoding.

    Raises Unprocessable (``errors.files.file``) when the upload is empty or too large, is
    not a JPEG, PNG or WebP by its first bytes, contains HTML/SVG markup outside its
    compressed pixels (``_searched_parts``), is named or
    declared as another format, or is a JPEG of more than ``MAX_JPEG_SCANS`` scans.
    """
    if len(data) > store.max_bytes:
        raise _refuse(
            f"The file is larger than {store.max_bytes / (1024 * 1024):g} MB "
            "(GRIDAPI_ATTACHMENT_MAX_MB)."
        )
    if not data:
        raise _refuse("The file is empty.")
    fmt = sniff(data)
    if fmt is None:
        raise _refuse("Only JPEG, PNG and WebP photos are accepted.")
    if any(_MARKUP.search(part) for part in _searched_parts(data, fmt)):
        raise _refuse("The file contains HTML or SVG markup; send a plain photo.")
    real_type, _, extensions = FORMATS[fmt]
    extension = filename.rsplit(".", 1)[1].lower() if "." in filename else ""
    if extension and extension not in extensions:
        raise _refuse(
            f"The file is a {fmt} image but is named .{extension}; "
            f"name it .{FORMATS[fmt][1]} or send another file."
        )
    declared = content_type.split(";", 1)[0].strip().lower()
    declared = _TYPE_ALIASES.get(declared, declared)
    if declared not in _UNSPECIFIC_TYPES and declared != real_type:
        raise _refuse(f"The file is declared as {declared} but is a {fmt} image ({real_type}).")
    if fmt == "JPEG" and jpeg_scans(data) > MAX_JPEG_SCANS:
        raise _refuse(
            f"The JPEG has more than {MAX_JPEG_SCANS} scans; a photo has one, or about ten "
            "when progressive: re-save it."
        )
    return fmt


def decode(
    data: bytes, fmt: str, store: AttachmentStore, *, sent_bytes: int | None = None
) -> Image.Image:
    """Return the image fully decoded (its first frame), after checking its declared size.

    Raises Unprocessable when the header names more pixels than allowed, or a shape (more
    than ``MAX_ASPECT`` to one) or a size for its compressed pixels (more than
    ``MAX_EXPANSION`` times them, or ``sent_bytes``, what its request took to send when
    fewer, over ``EXPANSION_FLOOR_PIXELS``) no photo has (checked before any pixel is
    decoded), or the file is truncated or corrupt.
    """
    too_many = _refuse(
        f"The image has more than {store.max_pixels / 1_000_000:g} million pixels "
        "(GRIDAPI_ATTACHMENT_MAX_MEGAPIXELS)."
    )
    # Pillow's own guard (process-wide) stays as a second line behind the check below, which
    # is the tighter one; it is only raised, so that it never refuses what the cap allows.
    if Image.MAX_IMAGE_PIXELS is not None and store.max_pixels > Image.MAX_IMAGE_PIXELS:
        Image.MAX_IMAGE_PIXELS = store.max_pixels
    try:
        # Not thread-safe, like every change to the warning filters: the workers are sync.
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=[fmt])
            width, height = img.size
            if width * height > store.max_pixels:
                raise too_many
            if width < 1 or height < 1:
                raise _refuse("The image has no pixels.")
            if max(width, height) > MAX_ASPECT * min(width, height):
                raise _refuse(
                    f"The image is {width} × {height} pixels: a photo is at most "
                    f"{MAX_ASPECT} times longer than it is wide."
                )
            if width * height > EXPANSION_FLOOR_PIXELS:
                # Its compressed pixels, not its file (padding is free to add), and no more
                # than the request took to send (a body compressed with Content-Encoding: a
                # megabyte of padding or of stored zeros is a few kB gzipped).
                packed = min(pixel_data_bytes(data, fmt), sent_bytes or len(data))
                if width * height * 3 > MAX_EXPANSION * packed:
                    raise _refuse(
                        f"The image is {width} × {height} pixels in only {packed:,} bytes of "
                        f"compressed pixels as sent: decoded, it would be more than "
                        f"{MAX_EXPANSION} times its file, which no photo of that size is; "
                        "send the photo as the camera saved it."
                    )
            if fmt == "PNG" and not png_pixels_complete(data):
                raise _refuse("The image is truncated or corrupt.")
            img.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise too_many from None
    except Unprocessable:
        raise
    except Exception:  # Pillow reports broken input as OSError, SyntaxError, ValueError...
        raise _refuse("The image is truncated or corrupt.") from None
    # Phones write JPEGs with more pictures after the first (MPO); only the first is kept.
    if img.format != fmt and (fmt, img.format) != ("JPEG", "MPO"):
        raise _refuse("Only JPEG, PNG and WebP photos are accepted.")
    return img


# --- what EXIF says -------------------------------------------------------------------------


def _exif_datetime(exif_ifd: dict[int, Any], tz: ZoneInfo) -> datetime | None:
    """Return DateTimeOriginal as an aware datetime: its OffsetTimeOriginal when the camera
    wrote one, else local time in ``tz`` (EXIF times carry no zone). None when there is
    none, or when it lies outside the years every date here may (a camera clock never set
    wrote 0001:01:01, whose conversion to UTC overflowed: the photo was refused)."""
    raw = exif_ifd.get(ExifTags.Base.DateTimeOriginal)
    if not isinstance(raw, str):
        return None
    try:
        naive = datetime.strptime(raw.strip("\x00 ")[:19], "%Y:%m:%d %H:%M:%S")
    except ValueError:  # blank ("    :  :  ") or impossible dates
        return None
    zone: tzinfo = tz
    offset = exif_ifd.get(ExifTags.Base.OffsetTimeOriginal)
    if isinstance(offset, str):
        match = re.fullmatch(r"([+-])([0-9]{2}):([0-9]{2})", offset.strip("\x00 "))
        if match and int(match[2]) <= 14 and int(match[3]) < 60:
            delta = timedelta(hours=int(match[2]), minutes=int(match[3]))
            zone = timezone(-delta if match[1] == "-" else delta)
    taken = naive.replace(tzinfo=zone)
    return None if instant_problem(taken) else taken


def _degrees(value: Any, ref: Any, negative: str) -> float | None:
    """Return signed decimal degrees from EXIF (degrees, minutes, seconds) rationals, the
    sign from the reference; None when malformed. The parts are unsigned in EXIF: a writer
    that signed them anyway (-33° 52' 30" S) was read as 32.125° N (-33 + 52/60 + 30/3600,
    turned by the reference), a place that is not where the photo was taken."""
    try:
        d, m, s = (float(part) for part in value)
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    degrees = d + m / 60 + s / 3600
    # Minutes and seconds of 60 or more are malformed too: 31° 75' was read as 32.25°.
    if not math.isfinite(degrees) or min(d, m, s) < 0 or m >= 60 or s >= 60:
        return None
    if isinstance(ref, bytes):
        ref = ref.decode("ascii", "replace")
    if isinstance(ref, str) and ref.strip("\x00 ").upper() == negative:
        degrees = -degrees
    return degrees


def read_exif(img: Image.Image, tz: ZoneInfo) -> tuple[datetime | None, float | None, float | None]:
    """Return (taken_at, lon, lat) from the image's EXIF; None for what is missing or
    malformed (a photo is never refused for its metadata). A position at 0°, 0° is
    a camera without a fix (``no_fix``, as for a phone's check-in or visit): no place."""
    try:
        exif = img.getexif()
        taken_at = _exif_datetime(exif.get_ifd(ExifTags.IFD.Exif), tz)
        gps = exif.get_ifd(ExifTags.IFD.GPSInfo)
    except Exception:
        return None, None, None
    lat = _degrees(gps.get(ExifTags.GPS.GPSLatitude), gps.get(ExifTags.GPS.GPSLatitudeRef), "S")
    lon = _degrees(gps.get(ExifTags.GPS.GPSLongitude), gps.get(ExifTags.GPS.GPSLongitudeRef), "W")
    if lat is None or lon is None or not (-90 <= lat <= 90 and -180 <= lon <= 180):
        return taken_at, None, None
    if no_fix(lon, lat):  # a phone writes zeros before it has a fix: not the Gulf of Guinea
        return taken_at, None, None
    return taken_at, round(lon, 7), round(lat, 7)


# --- re-encoding ----------------------------------------------------------------------------


def _to_srgb(img: Image.Image, icc: bytes | None) -> Image.Image:
    """Return the pixels in sRGB (so that dropping the ICC profile keeps the colours)."""
    if img.mode == "CMYK" or (icc and img.mode in ("RGB", "RGBA")):
        out_mode = "RGBA" if img.mode == "RGBA" else "RGB"
        if icc:
            try:
                source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
                converted = ImageCms.profileToProfile(
                    img, source, ImageCms.createProfile("sRGB"), outputMode=out_mode
                )
                if converted is not None:
                    return converted
            except (ImageCms.PyCMSError, OSError, ValueError, TypeError):
                pass  # a broken profile: keep the numbers as they are
        return img.convert(out_mode) if img.mode != out_mode else img
    return img


def strip_metadata(img: Image.Image) -> Image.Image:
    """Return an upright copy of the image that carries pixels (and transparency) only."""
    icc = img.info.get("icc_profile")
    try:
        upright = ImageOps.exif_transpose(img) or img
    except Exception:  # a malformed orientation tag: keep the image as it was sent
        upright = img.copy()
    clean = _to_srgb(upright, icc)
    if clean is img:
        clean = img.copy()
    clean.info = {"transparency": img.info["transparency"]} if "transparency" in img.info else {}
    return clean


def encode(img: Image.Image, fmt: str) -> bytes:
    """Return the image encoded in ``fmt`` with nothing but pixels."""
    out = io.BytesIO()
    if fmt == "JPEG":
        if img.mode not in ("L", "RGB", "CMYK"):
            img = img.convert("RGB")
        img.save(out, "JPEG", quality=JPEG_QUALITY, optimize=True)
    elif fmt == "PNG":
        img.save(out, "PNG")
    else:
        if img.mode not in ("RGB", "RGBA"):
            img = img.convert("RGBA" if img.has_transparency_data else "RGB")
        img.save(out, "WEBP", quality=WEBP_QUALITY, method=4)
    return out.getvalue()


def thumbnail(img: Image.Image, fmt: str) -> bytes:
    """Return a copy at most THUMBNAIL_PX on its longer side, in the same format."""
    small = img.copy()
    if small.mode.startswith("I"):  # 16-bit grey (PNG): scaled to 8 bits, not clipped white
        grey = small.convert("I")
        key = small.info.get("transparency")
        small = grey.point(lambda v: v / 256).convert("L")
        if isinstance(key, int):
            # The colour key (tRNS) is a 16-bit level: kept as alpha, taken from the 16-bit
            # levels (compared with the 8-bit ones it matched nothing: an opaque thumbnail).
            opaque = ImageMath.lambda_eval(lambda a: a["notequal"](a["x"], key), x=grey)
            small.putalpha(opaque.convert("L").point(lambda v: 255 if v else 0))
    if small.mode not in ("LA", "RGBA") and small.has_transparency_data:
        # a palette, or a colour key (tRNS) on grey or RGB: kept as alpha, which resizing
        # keeps (the key was dropped with the info, and the thumbnail came out opaque)
        small = small.convert("RGBA")
    elif small.mode not in ("L", "LA", "RGB", "RGBA"):
        small = small.convert("RGB")
    small.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX))
    small.info = {}
    return encode(small, fmt)


def prepare_photo(
    data: bytes, fmt: str, store: AttachmentStore, *, sent_bytes: int | None = None
) -> Photo:
    """Return the cleaned photo of an upload ``check_upload`` found to be ``fmt``
    (``sent_bytes``: what its request took to send, when compressed).

    Raises Unprocessable when it has too many pixels or does not decode.
    """
    img = decode(data, fmt, store, sent_bytes=sent_bytes)
    try:
        taken_at, lon, lat = read_exif(img, store.timezone)
        clean = strip_metadata(img)
        return Photo(
            format=fmt,
            data=encode(clean, fmt),
            thumbnail=thumbnail(clean, fmt),
            width=clean.width,
            height=clean.height,
            taken_at=taken_at,
            gps_lon=lon,
            gps_lat=lat,
        )
    finally:
        img.close()


# --- storage --------------------------------------------------------------------------------


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_blob(store: AttachmentStore, data: bytes, content_type: str) -> str:
    """Store the bytes under their SHA-256 (an existing file is left alone); return the hash.

    Written to a temporary file and renamed, so a reader never sees half a file.
    """
    digest = sha256_hex(data)
    path = store.path(digest, content_type)
    if path.exists():
        # Touched, so that the removal of unreferenced files (which spares young ones)
        # cannot take it while the row that will use it again is being written.
        with contextlib.suppress(FileNotFoundError):
            os.utime(path)
            return digest
    # Evidence photos show people and homes: the service's user alone reads them (0700
    # directories, and mkstemp's 0600 files), as everything it keeps in GRIDAPI_DATA_DIR.
    private_directory(path.parent)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".upload-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        # The name too: the row that references the file commits next, and after a power
        # cut it pointed at a file the directory had lost (a 500 on every read).
        sync_directory(path.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return digest


#: How old an unreferenced stored file must be before it is removed: a request writes its
#: files before its row commits, so a younger one may be about to be referenced.
ORPHAN_GRACE = timedelta(hours=24)
_STORED_NAME = re.compile(r"^([0-9a-f]{64})\.(?:jpg|png|webp)\Z")


def remove_orphan_files(
    session: Session, root: Path, now: datetime, *, grace: timedelta = ORPHAN_GRACE
) -> int:
    """Delete the stored files older than ``grace`` that no attachment references (as
    photo or thumbnail), and the temporary files of writes that never finished; return
    how many. A request that fails after writing its files (the database refused the row,
    the commit failed, the worker was killed) leaves them behind: this is what removes
    them. Reads only; one query per thousand old files."""
    if not root.is_dir():
        return 0
    cutoff = (now - grace).timestamp()
    removed = 0
    old: dict[str, Path] = {}

    def sweep() -> int:
        hashes = list(old)
        referenced = set(
            session.scalars(select(CaseAttachment.sha256).where(CaseAttachment.sha256.in_(hashes)))
        ) | set(
            session.scalars(
                select(CaseAttachment.thumbnail_sha256).where(
                    CaseAttachment.thumbnail_sha256.in_(hashes)
                )
            )
        )
        count = sum(
            _remove_if_old(path, cutoff) for digest, path in old.items() if digest not in referenced
        )
        old.clear()
        return count

    for directory in sorted(root.iterdir()):
        if not directory.is_dir():
            continue
        for path in directory.iterdir():
            name = path.name
            if name.startswith(".upload-") and name.endswith(".tmp"):
                if _older(path, cutoff):
                    with contextlib.suppress(FileNotFoundError):
                        path.unlink()
                        removed += 1
                continue
            found = _STORED_NAME.match(name)
            if found and _older(path, cutoff):
                old[found.group(1)] = path
                if len(old) >= 1000:
                    removed += sweep()
    if old:
        removed += sweep()
    return removed


def _remove_if_old(path: Path, cutoff: float) -> bool:
    """Remove the stored file at ``path`` if it is still older than ``cutoff``; return
    whether it was removed.

    An upload of the same bytes reuses the file: it touches it under its name
    (``write_blob``), then commits its row. Judged old, then unlinked, the file was lost to
    an upload that touched it in between: its row pointed at no file (500 on every read).
    So the file is first taken from its name (renamed, which keeps its time), then judged:
    touched before, it is young and is put back; touched after, the upload found no file
    and wrote it again. A sweep killed in between leaves a temporary file, removed by a
    later sweep as any other."""
    claimed = path.with_name(f".upload-sweep-{path.name}.tmp")
    try:
        os.rename(path, claimed)
    except FileNotFoundError:
        return False
    if _older(claimed, cutoff):
        claimed.unlink(missing_ok=True)
        return True
    # Touched meanwhile: back under its name (an upload that wrote it again meanwhile
    # wrote the same bytes, its name says so).
    with contextlib.suppress(FileNotFoundError):  # another sweep took it as a leftover
        os.replace(claimed, path)
    return False


def _older(path: Path, cutoff: float) -> bool:
    try:
        return path.stat().st_mtime < cutoff
    except FileNotFoundError:
        return False


# --- the service ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Upload:
    """An upload that passed the checks: its bytes, safe file name, format and hash, and
    how many bytes its request took to send when it was compressed (Content-Encoding)."""

    data: bytes
    filename: str
    format: str
    sha256: str
    sent_bytes: int | None = None


@dataclass(frozen=True)
class StoredPhoto:
    """The stored copy and thumbnail of an upload, written to their files."""

    photo: Photo
    content_type: str
    sha256: str
    thumbnail_sha256: str


def check_file(
    data: bytes,
    *,
    filename: str | None,
    content_type: str | None,
    store: AttachmentStore,
    sent_bytes: int | None = None,
) -> Upload:
    """Return the upload once checked (``sent_bytes``: what the request took to send, when
    it was compressed). Raises Unprocessable (``errors.files.file``)."""
    name = safe_filename(filename)
    fmt = check_upload(data, filename=name, content_type=content_type or "", store=store)
    return Upload(data, name, fmt, sha256_hex(data), sent_bytes)


def find_upload(session: Session, case_obj: Case, upload: Upload) -> CaseAttachment | None:
    """Return the case's attachment of these same bytes sent before, or None."""
    return session.scalars(
        select(CaseAttachment).where(
            CaseAttachment.case_id == case_obj.id, CaseAttachment.upload_sha256 == upload.sha256
        )
    ).first()


def store_photo(upload: Upload, store: AttachmentStore) -> StoredPhoto:
    """Re-encode the upload and make its thumbnail, and write both files; return them.

    Up to seconds of CPU for a phone's large photo, and two fsyncs: run it outside any write
    transaction (on SQLite one holds the database's one write lock). Raises Unprocessable.
    """
    photo = prepare_photo(upload.data, upload.format, store, sent_bytes=upload.sent_bytes)
    stored_type = FORMATS[upload.format][0]
    digest = write_blob(store, photo.data, stored_type)
    thumb_digest = write_blob(store, photo.thumbnail, stored_type)
    return StoredPhoto(photo, stored_type, digest, thumb_digest)


def attach(
    session: Session,
    case_obj: Case,
    data: bytes,
    *,
    filename: str | None,
    content_type: str | None,
    uploaded_by: str,
    store: AttachmentStore,
) -> tuple[CaseAttachment, bool]:
    """Attach a photo to a case; return the attachment and whether it is new.

    The same bytes sent again to the same case return the first attachment and store
    nothing. Raises Unprocessable (``errors.files.file``) for an upload that is refused; then
    nothing is stored. Files are written before the row is flushed: a request that fails
    later leaves at most an unreferenced file, never a row without its file, and
    ``remove_orphan_files`` (``gridapi worker``, daily) removes such files.
    """
    upload = check_file(data, filename=filename, content_type=content_type, store=store)
    existing = find_upload(session, case_obj, upload)
    if existing is not None:
        return existing, False
    return add_attachment(session, case_obj, upload, store_photo(upload, store), uploaded_by)


def add_attachment(
    session: Session, case_obj: Case, upload: Upload, stored: StoredPhoto, uploaded_by: str
) -> tuple[CaseAttachment, bool]:
    """Add the row of a photo ``store_photo`` wrote; return it and whether it is new (the
    same bytes attached to the case meanwhile: that attachment, and False)."""
    existing = find_upload(session, case_obj, upload)
    if existing is not None:
        return existing, False
    photo = stored.photo
    attachment = CaseAttachment(
        case_id=case_obj.id,
        county_code=case_obj.county_code,
        upload_sha256=upload.sha256,
        sha256=stored.sha256,
        content_type=stored.content_type,
        width=photo.width,
        height=photo.height,
        size_bytes=len(photo.data),
        thumbnail_sha256=stored.thumbnail_sha256,
        filename=upload.filename,
        # In UTC like every stored time, so the first answer and a retry's read the same.
        taken_at=photo.taken_at.astimezone(UTC) if photo.taken_at else None,
        gps_lon=photo.gps_lon,
        gps_lat=photo.gps_lat,
        uploaded_by=uploaded_by,
    )
    try:
        with session.begin_nested():
            session.add(attachment)
    except IntegrityError:
        # The same upload, retried while the first was in flight, committed first (the
        # unique (case, upload hash) decided): answer its attachment, as a later retry gets.
        first = find_upload(session, case_obj, upload)
        if first is None:
            raise
        return first, False
    return attachment, True


def list_attachments(session: Session, case_obj: Case) -> list[CaseAttachment]:
    """Return the case's attachments, oldest first."""
    return list(
        session.scalars(
            select(CaseAttachment)
            .where(CaseAttachment.case_id == case_obj.id)
            .order_by(CaseAttachment.id)
        )
    )


def get_attachment(session: Session, case_obj: Case, attachment_id: int) -> CaseAttachment:
    """Return the attachment of the case; raises NotFound when the case has no such one."""
    found = session.scalars(
        select(CaseAttachment).where(
            CaseAttachment.id == attachment_id, CaseAttachment.case_id == case_obj.id
        )
    ).first()
    if found is None:
        raise NotFound("No such attachment.")
    return found


def check_evidence(session: Session, case_id: int, ids: Iterable[int]) -> list[int]:
    """Return the ids, each once in the order given, when all are attachments of the case.

    Raises Unprocessable (``errors.json.evidence``) naming every id that is not.
    """
    wanted = list(dict.fromkeys(ids))
    if not wanted:
        return []
    found = set(
        session.scalars(
            select(CaseAttachment.id).where(
                CaseAttachment.case_id == case_id, CaseAttachment.id.in_(wanted)
            )
        )
    )
    missing = [i for i in wanted if i not in found]
    if missing:
        raise Unprocessable(
            "Evidence must be attachments of this case.",
            errors={
                "json": {"evidence": [f"{i} is not an attachment of this case" for i in missing]}
            },
        )
    return wanted
