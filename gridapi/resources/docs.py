"""Interactive API documentation served from the installed swagger-ui-bundle (no CDN)."""

from __future__ import annotations

from pathlib import Path

from flask import Blueprint, Response, send_from_directory
from swagger_ui_bundle import swagger_ui_path  # type: ignore[import-untyped]

bp = Blueprint("docs", __name__)

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>gridapi — API documentation</title>
<link rel="stylesheet" href="/docs/static/swagger-ui.css"></head>
<body><div id="swagger-ui"></div>
<script src="/docs/static/swagger-ui-bundle.js"></script>
<script src="/docs/static/swagger-ui-standalone-preset.js"></script>
<script src="/docs/init.js"></script>
</body></html>"""

# validatorUrl null: Swagger UI's standalone layout otherwise loads a badge from
# validator.swagger.io (with the spec's address) wherever the host is not localhost.
_INIT = """window.ui = SwaggerUIBundle({url: "/openapi.json", dom_id: "#swagger-ui",
  deepLinking: true, presets: [SwaggerUIBundle.presets.apis, SwaggerUIStandalonePreset],
  layout: "StandaloneLayout", validatorUrl: null});"""


@bp.get("/docs")
@bp.get("/docs/")
def page() -> Response:
    return Response(_PAGE, mimetype="text/html")


@bp.get("/docs/init.js")
def init_js() -> Response:
    return Response(_INIT, mimetype="text/javascript")


@bp.get("/docs/static/<path:filename>")
def static(filename: str) -> Response:
    return send_from_directory(Path(swagger_ui_path), filename, max_age=86400)
