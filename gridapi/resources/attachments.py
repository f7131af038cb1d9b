"""Evidence photos of cases over HTTP: upload (multipart), list, download a photo or thumbnail."""

from __future__ import annotations

import re
import unicodedata
from typing import Any
from urllib.parse import quote

from flask import Response, request, url_for
from flask.views import MethodView
from sqlalchemy.orm import Session

from ..auditing import audit
from ..auth import Forbidden, current_principal
from ..errors import NotFound
from ..extensions import commit, db_session, reading_session, state
from ..geo.shapes import geojson_point
from ..models import Case, CaseAttachment
from ..phone import SENT_BODY_BYTES
from ..schemas.attachments import AttachmentListSchema, AttachmentSchema, AttachmentUploadSchema
from ..services import attachments as svc
from ..services import cases as cases_svc
from .blueprint import Blueprint, one_file

blp = Blueprint(
    "attachments",
    __name__,
    url_prefix="/api/v1",
    description="Evidence photos of cases: JPEG, PNG or WebP, checked and stored re-encoded "
    "without metadata (no EXIF, GPS, XMP, ICC profile or text); the capture time and place "
    "read from EXIF are shown only to callers with `cases:evidence_location`.",
)

# Photos never change (they are named by their hash), but access to them can be withdrawn.
MAX_AGE_SECONDS = 3600
_LOCATION_PERMISSION = "cases:evidence_location"
_BINARY = {"schema": {"type": "string", "format": "binary"}}
_FILE_HEADERS = {
    "ETag": {"description": "The SHA-256 of the bytes, quoted.", "schema": {"type": "string"}},
    "Cache-Control": {
        "schema": {"type": "string", "example": f"private, max-age={MAX_AGE_SECONDS}"}
    },
    "Content-Disposition": {
        "schema": {"type": "string", "example": 'inline; filename="photo.jpg"'}
    },
    "X-Content-Type-Options": {"schema": {"type": "string", "example": "nosniff"}},
    "Content-Security-Policy": {
        "description": "The photo is shown, never run: nothing it links to or embeds loads.",
        "schema": {"type": "string", "example": "default-src 'none'; sandbox"},
    },
}


def _file_doc(what: str) -> dict[str, Any]:
    return {
        "responses": {
            "200": {
                "description": what,
                "headers": _FILE_HEADERS,
                "content": {ct: _BINARY for ct in ("image/jpeg", "image/png", "image/webp")},
            },
            # If-None-Match with the photo's ETag (its SHA-256): the photo's headers, no body.
            "304": {
                "description": "Not modified: the `If-None-Match` ETag is current (no body).",
                "headers": _FILE_HEADERS,
            },
        }
    }


def attachment_view(att: CaseAttachment, caller: cases_svc.Caller) -> dict[str, Any]:
    """Return the API representation of an attachment for ``caller`` (where and when it was
    taken only with ``cases:evidence_location``)."""
    ids = {"case_id": att.case_id, "attachment_id": att.id}
    view: dict[str, Any] = {
        "id": att.id,
        "case_id": att.case_id,
        "content_type": att.content_type,
        "width": att.width,
        "height": att.height,
        "size_bytes": att.size_bytes,
        "sha256": att.sha256,
        "filename": att.filename,
        "created_at": att.created_at,
        "uploaded_by": att.uploaded_by,
        "links": {
            "content": url_for("attachments.AttachmentContent", **ids),
            "thumbnail": url_for("attachments.AttachmentThumbnail", **ids),
        },
    }
    if caller.principal.can(_LOCATION_PERMISSION):
        view["taken_at"] = att.taken_at
        located = att.gps_lon is not None and att.gps_lat is not None
        view["gps"] = geojson_point(att.gps_lon, att.gps_lat) if located else None
    return view


def _download_name(att: CaseAttachment) -> tuple[str, str]:
    """Return the name to offer, as (stem, extension): the uploaded one with the stored
    format's extension."""
    fmt = svc.CONTENT_TYPES[att.content_type]
    _, ext, extensions = svc.FORMATS[fmt]
    stem, _, given_ext = att.filename.rpartition(".")
    if not stem or given_ext.lower() not in extensions:
        stem = att.filename or f"attachment-{att.id}"
    return stem, ext


def _content_disposition(stem: str, ext: str, suffix: str = "") -> str:
    """Return ``inline`` with a plain ASCII name, and the real name (RFC 6266) when it is not.
    ``suffix`` ("-thumbnail") follows the stem in both (a name with no ASCII letter offered
    a thumbnail as "-thumbnail.jpg")."""
    name = f"{stem}{suffix}.{ext}"
    ascii_stem = unicodedata.normalize("NFKD", stem).encode("ascii", "ignore").decode()
    ascii_stem = re.sub(r"[^A-Za-z0-9._-]", "_", ascii_stem).strip("._-") or "attachment"
    ascii_name = f"{ascii_stem}{suffix}.{ext}"
    value = f'inline; filename="{ascii_name}"'
    if ascii_name != name:
        value += f"; filename*=UTF-8''{quote(name, safe='')}"
    return value


def _send(case_id: int, attachment_id: int, *, thumbnail: bool) -> Response:
    """Answer with the stored bytes of the photo or its thumbnail (304 on a matching ETag)."""
    session = db_session()
    caller = cases_svc.caller_of(session, current_principal())
    case_obj = cases_svc.get_case(session, case_id, caller)
    att = svc.get_attachment(session, case_obj, attachment_id)
    digest = att.thumbnail_sha256 if thumbnail else att.sha256
    store = svc.AttachmentStore.from_settings(state().settings)
    # A missing file is the server's fault (storage lost): it answers 500 and is logged.
    data = store.path(digest, att.content_type).read_bytes()
    response = Response(data, mimetype=att.content_type)
    response.set_etag(digest)
    response.headers["Cache-Control"] = f"private, max-age={MAX_AGE_SECONDS}"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Content-Security-Policy"] = "default-src 'none'; sandbox"
    response.headers["Content-Disposition"] = _content_disposition(
        *_download_name(att), "-thumbnail" if thumbnail else ""
    )
    return response.make_conditional(request)


def _case_to_attach_to(session: Session, case_id: int, caller: cases_svc.Caller) -> Case:
    """Return the case the caller may attach a photo to; NotFound otherwise. A caller without
    `cases:read` (an app that only reports) attaches to the cases it reported."""
    case_obj = cases_svc.get_case(session, case_id, caller)
    principal = caller.principal
    if not principal.can("cases:read") and case_obj.reporter != principal.actor_id:
        # Another case answers as a missing one (it added photos to any in its area).
        raise NotFound("No such case.")
    if not cases_svc.may_attach(caller, case_obj):
        raise Forbidden(
            "Evidence is added by those who work the case: its reporter, its handler, its "
            "office, or a worker of its grid."
        )
    return case_obj


@blp.route("/cases/<id:case_id>/attachments")
class Attachments(MethodView):
    @blp.requires("cases:write")
    @blp.arguments(AttachmentUploadSchema, location="files")
    @blp.response(201, AttachmentSchema)
    @blp.alt_response(413, response="CONTENT_TOO_LARGE")
    def post(self, data, case_id):
        """Attach a photo to a case

        `multipart/form-data` with the photo in the field `file`, one photo per request.
        Refused with 422 (nothing stored; `errors.files.file` says why) when `file` is a
        text field rather than a file or is sent more than once, when the photo is too large
        or has too many pixels, is more than 20 times longer than it is wide, has more than
        8 megapixels packed in less than a hundredth of their decoded size (a decompression
        bomb, not a photo: its compressed pixels are counted, as sent), is a JPEG of more
        than 32 scans, is not a JPEG, PNG or WebP by its content (SVG, HTML, PDF,
        polyglots), is truncated or corrupt, or its file name or declared type names another
        format. The stored copy is re-encoded in the same format, upright, with no metadata;
        EXIF capture time and position are kept apart (shown only with
        `cases:evidence_location`).

        Safe to retry: the same bytes sent to the same case again answer the first
        attachment (201, same body) and store nothing. Those who work the case attach to it
        (its reporter, handler and office, the workers of its grid); another reader gets 403.
        A caller without `cases:read` (an app that only reports) attaches to the cases it
        reported; another answers 404.
        """
        upload = one_file()
        principal = current_principal()
        assert principal is not None
        store = svc.AttachmentStore.from_settings(state().settings)
        # The photo is checked, re-encoded and written before the request's transaction
        # begins: on SQLite a POST begins as a writer (BEGIN IMMEDIATE), and every report and
        # step of every phone waited for each photo (seconds of CPU for a 12 MP JPEG).
        with reading_session() as reading:
            caller = cases_svc.caller_of(reading, principal)
            case_obj = _case_to_attach_to(reading, case_id, caller)
            # One byte more than allowed is enough to tell an upload is too large.
            checked = svc.check_file(
                upload.stream.read(store.max_bytes + 1),
                filename=upload.filename,
                content_type=upload.content_type,
                store=store,
                sent_bytes=request.environ.get(SENT_BODY_BYTES),
            )
            earlier = svc.find_upload(reading, case_obj, checked)
            if earlier is not None:  # a retry: nothing to store
                return attachment_view(earlier, caller)
        stored = svc.store_photo(checked, store)
        session = db_session()
        case_obj = _case_to_attach_to(session, case_id, caller)  # the caller read above
        att, created = svc.add_attachment(
            session, case_obj, checked, stored, uploaded_by=principal.actor_id
        )
        view = attachment_view(att, caller)
        if created:
            audit(
                "case.attach",
                "case",
                case_obj.id,
                summary={"attachment_id": att.id, "sha256": att.sha256, "bytes": att.size_bytes},
                region_code=case_obj.region_code,
            )
            commit()
        return view

    @blp.requires("cases:read")
    @blp.response(200, AttachmentListSchema)
    def get(self, case_id):
        """List a case's photos, oldest first

        Returns the photos attached to the case with their type, size in pixels and bytes, SHA-256,
        file name, upload time, uploader and the links to the photo and its thumbnail. Where and
        when each photo was taken (from its EXIF data) is included only for callers with
        `cases:evidence_location`. Needs `cases:read`; a case the caller may not see answers 404.
        Not paged.
        """
        session = db_session()
        caller = cases_svc.caller_of(session, current_principal())
        case_obj = cases_svc.get_case(session, case_id, caller)
        rows = svc.list_attachments(session, case_obj)
        return {"items": [attachment_view(att, caller) for att in rows]}


@blp.route("/cases/<id:case_id>/attachments/<id:attachment_id>/content")
class AttachmentContent(MethodView):
    @blp.requires("cases:read")
    @blp.response(200)
    @blp.doc(**_file_doc("The stored photo (no metadata), in its own format."))
    def get(self, case_id, attachment_id):
        """Download a photo

        Served inline with `X-Content-Type-Options: nosniff`, a private cache lifetime and
        the SHA-256 as ETag (`If-None-Match` answers 304).
        """
        return _send(case_id, attachment_id, thumbnail=False)


@blp.route("/cases/<id:case_id>/attachments/<id:attachment_id>/thumbnail")
class AttachmentThumbnail(MethodView):
    @blp.requires("cases:read")
    @blp.response(200)
    @blp.doc(**_file_doc("The thumbnail: at most 320 px on its longer side, same format."))
    def get(self, case_id, attachment_id):
        """Download a photo's thumbnail

        Returns a small copy of the photo (at most 320 px on its longer side, same format, no
        metadata), for lists and timelines on phones. Served inline with `X-Content-Type-Options:
        nosniff`, a private cache lifetime and the thumbnail's SHA-256 as ETag (`If-None-Match`
        answers 304). Needs `cases:read`; a case the caller may not see, or a photo that is not of
        that case, answers 404.
        """
        return _send(case_id, attachment_id, thumbnail=True)
