"""The documents a deployer follows agree with the code: every setting in the README's
table, and the nginx configuration of docs/deploy with the settings' defaults."""

from __future__ import annotations

import json
import re
from dataclasses import fields
from pathlib import Path

from gridapi.config import Settings
from gridapi.errors import BODY_TOO_LARGE, error_body

ROOT = Path(__file__).resolve().parent.parent


def _configuration_table() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    return "\n".join(line for line in section.splitlines() if line.startswith("| `GRIDAPI_"))


def test_every_setting_has_a_row_in_the_readmes_table():
    table = _configuration_table()
    documented = set(re.findall(r"`GRIDAPI_([A-Z0-9_]+)`", table))
    settings = {f.name.upper() for f in fields(Settings)}
    assert sorted(settings - documented) == []  # a setting nobody can find
    assert sorted(documented - settings) == []  # a row for a setting that is gone


NGINX = ROOT / "docs" / "deploy" / "nginx.conf"


def _directives(name: str) -> list[str]:
    text = re.sub(r"#.*", "", NGINX.read_text())
    return re.findall(rf"(?:^|[;{{\s]){name}\s+([^;]+);", text, flags=re.MULTILINE)


def test_nginx_takes_the_bodies_gridapi_takes():
    (size,) = _directives("client_max_body_size")
    assert size == f"{Settings().max_body_mb:g}m"


def test_nginx_buffers_uploads_and_answers():
    assert _directives("proxy_request_buffering") == ["on"]
    assert _directives("proxy_buffering") == ["on"]


def test_nginx_logs_no_query_strings():
    (log_format,) = _directives("log_format")
    for variable in ("$request ", '$request"', "$request_uri", "$args", "$query_string", "$arg_"):
        assert variable not in log_format
    assert "$uri" in log_format and "$request_id" in log_format
    logs = _directives("access_log")
    assert logs and all(line.split()[-1] == "gridapi" for line in logs)


def test_nginx_forwards_what_proxy_hops_reads():
    headers = dict(h.split(None, 1) for h in _directives("proxy_set_header"))
    assert headers["X-Forwarded-For"] == "$proxy_add_x_forwarded_for"
    assert headers["X-Forwarded-Proto"] == "$scheme"
    assert headers["X-Request-ID"] == "$request_id"
    assert headers["Host"] == "$http_host"  # with its port: Open311's discovery links


def _named_location(name: str) -> str:
    text = re.sub(r"#.*", "", NGINX.read_text())
    match = re.search(rf"location {name} {{(.*?)\n    }}", text, flags=re.DOTALL)
    assert match, name
    return match.group(1)


def _returned(location: str) -> tuple[int, dict]:
    status, body = re.search(r"return (\d+) '([^']*)';", location).groups()
    return int(status), json.loads(body)


def test_nginx_answers_its_own_errors_in_the_one_error_body():
    """A body over client_max_body_size got nginx's HTML 413, and gridapi down its HTML 502;
    phones read the one error body. nginx answers both as JSON itself."""
    pages = _directives("error_page")
    assert "413 @too_large" in pages and "502 503 504 =503 @unavailable" in pages
    assert _directives("proxy_intercept_errors") == []  # gridapi's own errors pass untouched

    too_large = _named_location("@too_large")
    assert _returned(too_large) == (413, error_body(413, BODY_TOO_LARGE))
    unavailable = _named_location("@unavailable")
    status, body = _returned(unavailable)
    assert (status, set(body)) == (503, {"code", "status", "message", "errors"})
    assert body == error_body(503, body["message"])
    assert re.search(r"add_header Retry-After \d+ always;", unavailable)
    for location in (too_large, unavailable):
        assert "default_type application/json;" in location


def test_nginx_keeps_personal_values_and_its_version_out():
    """At level "error" nginx writes the request line with its query string (an ID number
    searched for while gridapi was down): the servers log from "crit" up."""
    assert _directives("server_tokens") == ["off"]
    logs = _directives("error_log")
    assert len(logs) == 2 and all(line.split()[-1] == "crit" for line in logs)


def _paging_table() -> dict[str, tuple[str, str]]:
    """Return the rows of docs/integration.md's table of paged lists: path → (the parameter
    a page's place is sent back as, the member it is answered in)."""
    text = (ROOT / "docs" / "integration.md").read_text()
    rows = re.findall(r"^\| `GET (/api/v1/\S+)` \| `(\w+)` \| `(\w+)`", text, flags=re.MULTILINE)
    return {re.sub(r"\{[^}]+\}", "{}", path): (sent, answered) for path, sent, answered in rows}


def test_the_table_of_paged_lists_names_every_paged_list_as_the_spec_does():
    """The table a client pages by (cursor or after, next_cursor or next) is the spec's."""
    spec = json.loads((ROOT / "openapi" / "openapi.json").read_text())
    schemas = spec["components"]["schemas"]
    paged = {}
    for path, operations in spec["paths"].items():
        get = operations.get("get", {})
        query = {p["name"] for p in get.get("parameters", []) if p["in"] == "query"}
        sent = [name for name in ("cursor", "after", "before") if name in query]
        if not sent:
            continue
        body = get["responses"]["200"]["content"]["application/json"]["schema"]
        members = schemas[body["$ref"].rsplit("/", 1)[1]]["properties"]
        answered = [name for name in ("next_cursor", "next", "last_id") if name in members]
        paged[re.sub(r"\{[^}]+\}", "{}", path)] = (sent[0], answered[0])
    assert _paging_table() == paged
