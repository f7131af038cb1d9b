"""Schemas of case attachments: the multipart upload and the attachment as answered."""

from __future__ import annotations

from flask_smorest.fields import Upload
from marshmallow import fields

from .common import PointSchema, StrictSchema


class AttachmentUploadSchema(StrictSchema):
    file = Upload(
        required=True,
        metadata={
            "description": "The photo: JPEG, PNG or WebP, at most GRIDAPI_ATTACHMENT_MAX_MB (10) "
            "MB and GRIDAPI_ATTACHMENT_MAX_MEGAPIXELS (40) million pixels. Its file name's "
            "extension and its declared type, when given, must match its content."
        },
    )


class AttachmentLinksSchema(StrictSchema):
    content = fields.String(required=True, metadata={"description": "The stored photo."})
    thumbnail = fields.String(
        required=True, metadata={"description": "At most 320 px on its longer side."}
    )


class AttachmentSchema(StrictSchema):
    id = fields.Integer(required=True)
    case_id = fields.Integer(required=True)
    content_type = fields.String(
        required=True, metadata={"enum": ["image/jpeg", "image/png", "image/webp"]}
    )
    width = fields.Integer(required=True, metadata={"description": "Pixels, upright."})
    height = fields.Integer(required=True, metadata={"description": "Pixels, upright."})
    size_bytes = fields.Integer(required=True, metadata={"description": "Of the stored photo."})
    sha256 = fields.String(
        required=True,
        metadata={"description": "SHA-256 of the stored photo (its ETag), not of the upload."},
    )
    filename = fields.String(required=True, metadata={"description": "As uploaded (last part)."})
    created_at = fields.DateTime(required=True)
    uploaded_by = fields.String(required=True, metadata={"example": "user:42"})
    links = fields.Nested(AttachmentLinksSchema, required=True)
    taken_at = fields.DateTime(
        allow_none=True,
        metadata={
            "description": "EXIF capture time (local time in GRIDAPI_TIMEZONE unless the camera "
            "wrote an offset). Only for callers with `cases:evidence_location`: absent "
            "otherwise."
        },
    )
    gps = fields.Nested(
        PointSchema,
        allow_none=True,
        metadata={
            "description": "EXIF position, [lon, lat] as the camera wrote it (usually WGS-84); "
            "null without one, or at 0°, 0° (a camera without a fix). Only for "
            "callers with `cases:evidence_location`: absent otherwise."
        },
    )


class AttachmentListSchema(StrictSchema):
    items = fields.List(fields.Nested(AttachmentSchema), required=True)
