"""The Blueprint every resource uses: unknown query parameters are refused like unknown fields."""

from __future__ import annotations

import flask_smorest
from webargs.flaskparser import FlaskParser


class StrictParser(FlaskParser):
    # webargs ignores unknown query parameters by default; None defers to the schema (RAISE).
    DEFAULT_UNKNOWN_BY_LOCATION = {
        **FlaskParser.DEFAULT_UNKNOWN_BY_LOCATION,
        "query": None,
        "querystring": None,
    }


class Blueprint(flask_smorest.Blueprint):
    ARGUMENTS_PARSER = StrictParser()
