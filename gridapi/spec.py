"""The OpenAPI document, generated from the code."""

from __future__ import annotations

import json

from .config import Settings


def spec_dict() -> dict:
    """Return the OpenAPI document of the application."""
    from .app import create_app

    app = create_app(Settings(database_url="sqlite://"), check_database=False)
    with app.app_context():
        return app.extensions["gridapi_api"].spec.to_dict()


def spec_json() -> str:
    """Return the OpenAPI document as stable, reviewable JSON text."""
    return json.dumps(spec_dict(), ensure_ascii=False, indent=2, sort_keys=True) + "\n"
