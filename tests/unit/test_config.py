"""Settings read from GRIDAPI_* variables: a value that cannot work stops start-up, naming
the variable, before anything runs on it."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from gridapi.cli import main
from gridapi.config import Settings


def _elsewhere(tmp_path) -> dict[str, str]:  # type: ignore[no-untyped-def]
    """A command that went on would write its database and keys here, not into ./var."""
    return {
        "GRIDAPI_DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
        "GRIDAPI_DATA_DIR": str(tmp_path / "data"),
    }


@pytest.mark.parametrize(
    ("name", "raw"),
    [
        ("PORT", "70000"),  # gunicorn crashed with a traceback at bind
        ("PORT", "0"),
        ("WORKERS", "-2"),
        ("MAX_BODY_MB", "-1"),  # every request with a body answered 413
        ("MAX_BODY_MB", "nan"),
        ("ATTACHMENT_MAX_MB", "0"),
        ("DB_POOL_SIZE", "0"),
        ("ACCESS_TOKEN_MINUTES", "0"),  # every token expired as it was issued
        ("REFRESH_TOKEN_DAYS", "-30"),
        ("AUTH_CACHE_SECONDS", "inf"),
        ("ARGON2_TIME_COST", "0"),  # every sign-in answered 500
        ("ARGON2_MEMORY_KIB", "8"),
        ("IDEMPOTENCY_DAYS", "-1"),
        ("WORKER_INTERVAL_SECONDS", "0"),  # the worker ran its jobs in a busy loop
        ("TRACK_RAW_DAYS", "-1"),
        ("TRACK_RETENTION_DAYS", "-1"),  # every patrol track deleted
        ("TRACK_RETENTION_DAYS", "1000000000"),  # the job overflowed, every round
        ("SYNC_PAGE_SIZE", "0"),  # pages of nothing, has_more for ever
        ("SYNC_RETENTION_DAYS", "0"),  # every cursor answered 410
        ("WEBHOOK_CONCURRENCY", "0"),
        ("WEBHOOK_MAX_ATTEMPTS", "0"),
        ("WEBHOOK_POLL_SECONDS", "-1"),
        ("WEBHOOK_RETENTION_DAYS", "-1"),
        ("WEBHOOK_SECRET_GRACE_HOURS", "-1"),
        ("OPEN311_ROUND_M", "0"),  # public answers gave exact locations
        ("OPEN311_ROUND_M", "nan"),  # every public answer was 500
        ("OPEN311_PAGE_SIZE", "5000"),
        ("EXPORT_RETENTION_HOURS", "-1"),  # export files deleted as they were written
        ("ROUTING_SNAP_METERS", "-50"),
        ("PRESENCE_MINUTES", "0"),
    ],
)
def test_a_number_out_of_its_range_stops_start_up_naming_the_variable(name, raw):
    with pytest.raises(ValueError, match=rf"^GRIDAPI_{name}={raw}: (at least|more than) "):
        Settings.from_env({f"GRIDAPI_{name}": raw})


@pytest.mark.parametrize(
    ("name", "raw", "value"),
    [
        ("PORT", "65535", 65535),
        ("WORKERS", "0", 0),  # automatic
        ("ROUTING_SNAP_METERS", "0", 0.0),  # no snapping, as the README says
        ("DB_STATEMENT_TIMEOUT_MS", "0", 0),  # PostgreSQL's "none"
        ("TRACK_RAW_DAYS", "0", 0),
        ("DUPLICATE_WINDOW_HOURS", "0", 0.0),
        ("MAX_BODY_MB", "0.5", 0.5),
    ],
)
def test_the_ends_of_the_ranges_are_taken(name, raw, value):
    assert getattr(Settings.from_env({f"GRIDAPI_{name}": raw}), name.lower()) == value


def test_serve_on_a_port_that_cannot_be_bound_exits_with_the_reason(tmp_path):
    env = {"GRIDAPI_PORT": "70000", **_elsewhere(tmp_path)}
    result = CliRunner().invoke(main, ["serve"], env=env, catch_exceptions=False)
    assert result.exit_code == 1
    assert result.output == "Error: GRIDAPI_PORT=70000: at least 1 and at most 65,535\n"


@pytest.mark.parametrize(
    "name",
    [
        "LOGIN_RATE_ACCOUNT",
        "LOGIN_RATE_ACCOUNT_ADDRESS",
        "LOGIN_RATE_ADDRESS",
        "CLIENT_RATE_LIMIT",
        "PERSON_LOOKUP_RATE",
    ],
)
@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        ("5 per quarter hour", "not a rate limit"),  # flask-limiter ignored it: no limit at all
        ("lots", "not a rate limit"),  # every exact ID or phone lookup answered 500
        ("0 per minute", "at least 1 per a period of at least 1"),
        ("5 per 0 minutes", "at least 1 per a period of at least 1"),
        ("5/minute;100/day", "one limit only"),  # only the first was counted
    ],
)
def test_a_rate_limit_that_cannot_be_read_stops_start_up_naming_the_variable(name, raw, problem):
    with pytest.raises(ValueError) as refused:
        Settings.from_env({f"GRIDAPI_{name}": raw})
    assert str(refused.value) == (
        f"GRIDAPI_{name}={raw!r}: {problem}, e.g. '30 per 15 minutes' or '10/second'"
    )


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        ("99999999999999999999 per second", "at most 1000000 requests per period"),
        ("1 per 99999999999999999999 second", "a period of at most 1000 of its unit"),
    ],
)
def test_a_default_app_limit_beyond_an_apps_bounds_stops_start_up(raw, problem):
    """Every POST /clients without a rate_limit would have answered 422 naming a field the
    caller did not send."""
    with pytest.raises(ValueError) as refused:
        Settings.from_env({"GRIDAPI_CLIENT_RATE_LIMIT": raw})
    assert str(refused.value) == f"GRIDAPI_CLIENT_RATE_LIMIT={raw!r}: {problem}"


@pytest.mark.parametrize("raw", ["5 per 15 minutes", "10/second", "100 per 1 hour"])
def test_rate_limits_as_the_readme_writes_them_are_taken(raw):
    assert Settings.from_env({"GRIDAPI_LOGIN_RATE_ACCOUNT": raw}).login_rate_account == raw


def test_sign_in_is_never_left_unthrottled_by_a_misspelt_limit(tmp_path):
    env = {
        "GRIDAPI_LOGIN_RATE_ACCOUNT": "5 per quarter hour",
        **_elsewhere(tmp_path),
    }
    result = CliRunner().invoke(main, ["serve"], env=env, catch_exceptions=False)
    assert result.exit_code == 1
    assert "GRIDAPI_LOGIN_RATE_ACCOUNT='5 per quarter hour': not a rate limit" in result.output


@pytest.mark.parametrize(
    ("name", "raw", "message"),
    [
        ("TIMEZONE", "Asia/Shangai", "='Asia/Shangai': not a time zone of the tz database"),
        ("TIMEZONE", "../../etc/passwd", "='../../etc/passwd': not a time zone"),
        ("LOG_LEVEL", "verbose", "='verbose': not a log level: DEBUG, INFO, WARNING, ERROR"),
        ("DATABASE_URL", "var/gridapi.sqlite3", ": not a database URL: sqlite:///PATH or"),
        ("DATABASE_URL", "mysql://root:pw@db/gridapi", ": a mysql database: gridapi runs on"),
        ("DATABASE_URL", "postgresql+psycopg2://u:pw@db/g", ": its driver (psycopg2) is not"),
        ("REDIS_URL", "127.0.0.1:6379", ": not a Redis URL: redis://HOST:6379/0"),
    ],
)
def test_a_text_setting_of_the_wrong_form_stops_every_command_with_the_reason(
    tmp_path, name, raw, message
):
    """Each stopped `gridapi db upgrade`, `worker` and `serve` with a traceback, or made
    every web worker fail as it booted (the Redis URL); a URL is not repeated (its
    password)."""
    env = {**_elsewhere(tmp_path), f"GRIDAPI_{name}": raw}
    for command in (["db", "upgrade"], ["worker", "--once"], ["serve"]):
        result = CliRunner().invoke(main, command, env=env, catch_exceptions=False)
        assert result.exit_code == 1, (command, result.output)
        assert result.output.startswith(f"Error: GRIDAPI_{name}{message}"), result.output
        assert "pw@" not in result.output
    assert not (tmp_path / "db.sqlite3").exists()  # nothing was begun


@pytest.mark.parametrize(
    ("name", "raw"),
    [
        ("TIMEZONE", "UTC"),
        ("LOG_LEVEL", "warning"),
        ("DATABASE_URL", "postgresql:///gridapi"),
        ("DATABASE_URL", "postgresql+psycopg://u:pw@db:5432/gridapi?sslmode=require"),
        ("DATABASE_URL", "sqlite:///var/county.sqlite3"),
        ("REDIS_URL", "rediss://:pw@cache:6380/1"),
        ("REDIS_URL", "redis+unix:///run/redis.sock"),
    ],
)
def test_text_settings_as_the_readme_writes_them_are_taken(name, raw):
    assert getattr(Settings.from_env({f"GRIDAPI_{name}": raw}), name.lower()) == raw


@pytest.mark.parametrize(
    ("option", "raw"),
    [("--port", "70000"), ("--port", "0"), ("--workers", "-1"), ("--port", "-5000")],
)
def test_serve_refuses_a_port_or_worker_count_out_of_range_given_as_an_option(
    tmp_path, option, raw
):
    """--port 70000 went past the settings' check to gunicorn, which crashed with a
    traceback at bind; --port 0 was ignored (GRIDAPI_PORT served); --workers -1 was taken."""
    result = CliRunner().invoke(main, ["serve", option, raw], env=_elsewhere(tmp_path))
    assert result.exit_code == 2, result.output
    assert f"Invalid value for '{option}': {raw} is not in the range" in result.output
    assert not (tmp_path / "db.sqlite3").exists()  # refused before anything was opened
