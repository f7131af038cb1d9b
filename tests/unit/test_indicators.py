"""Indicator weights, the composite score and the splitting of periods (no database)."""

from __future__ import annotations

from datetime import UTC, date, datetime
from zoneinfo import ZoneInfo

import pytest

from gridapi.config import Settings
from gridapi.errors import Unprocessable
from gridapi.services.indicators import (
    DEFAULT_WEIGHTS,
    composite_score,
    month_period,
    parse_weights,
    periods_between,
)

SH = ZoneInfo("Asia/Shanghai")
NOW = datetime(2026, 11, 28, tzinfo=UTC)


def test_weights_parse_and_the_default_is_valid():
    assert parse_weights(" closure_rate:0.5 , rework_rate:1 ") == {
        "closure_rate": 0.5,
        "rework_rate": 1.0,
    }
    assert sum(parse_weights(DEFAULT_WEIGHTS).values()) == pytest.approx(1.0)


@pytest.mark.parametrize(
    "text, message",
    [
        ("speed:1", "bad indicator weight 'speed:1'"),
        ("closure_rate", "bad indicator weight"),
        ("closure_rate:x", "'x' is not a number"),
        ("closure_rate:-1", "must be a number >= 0"),
        ("closure_rate:nan", "must be a number >= 0"),
        ("closure_rate:1,closure_rate:2", "weighted twice"),
        ("closure_rate:0", "at least one"),
        ("", "at least one"),
    ],
)
def test_bad_weights_stop_start_up_naming_the_variable(text, message):
    with pytest.raises(ValueError, match=message):
        parse_weights(text)
    with pytest.raises(ValueError, match="GRIDAPI_INDICATOR_WEIGHTS"):
        Settings.from_env({"GRIDAPI_INDICATOR_WEIGHTS": text or ","})


def test_the_composite_score_inverts_rework_and_skips_missing_rates():
    weights = {"closure_rate": 0.5, "rework_rate": 0.25, "satisfaction_rate": 0.25}
    values = {"closure_rate": 0.8, "rework_rate": 0.2, "satisfaction_rate": None}
    # (0.5 × 0.8 + 0.25 × (1 − 0.2)) / 0.75 = 0.8
    assert composite_score(values, weights) == 80.0
    assert composite_score({}, weights) is None


def test_periods_are_local_days_split_by_week_and_month():
    (whole,) = periods_between(date(2026, 3, 1), date(2026, 4, 1), SH, NOW)
    assert whole.start == datetime(2026, 2, 28, 16, tzinfo=UTC)  # 00:00 in Shanghai
    assert whole.end == whole.cut == datetime(2026, 3, 31, 16, tzinfo=UTC)
    weeks = periods_between(date(2026, 3, 1), date(2026, 3, 18), SH, NOW, "week")
    assert [p.key for p in weeks] == ["2026-03-01", "2026-03-02", "2026-03-09", "2026-03-16"]
    months = periods_between(date(2026, 1, 15), date(2026, 3, 2), SH, NOW, "month")
    assert [p.key for p in months] == ["2026-01", "2026-02", "2026-03"]
    current = periods_between(date(2026, 11, 1), date(2026, 12, 1), SH, NOW)[0]
    assert current.cut == NOW  # "still open" is judged now for a period not yet over
    with pytest.raises(Unprocessable):
        periods_between(date(2026, 3, 1), date(2026, 3, 1), SH, NOW)
    with pytest.raises(Unprocessable):
        periods_between(date(2020, 1, 1), date(2026, 1, 1), SH, NOW, "day")


def test_months_are_yyyy_mm():
    assert month_period("2026-12") == (date(2026, 12, 1), date(2027, 1, 1))
    # The years of every date of the API (schemas.common): 1900-2100.
    assert month_period("1900-01")[0] == date(1900, 1, 1)
    assert month_period("2100-12")[1] == date(2101, 1, 1)
    for bad in ("2026-13", "2026-3", "26-03", "1899-12", "2101-01", "9999-12", "2026-03-01"):
        with pytest.raises(Unprocessable) as refused:
            month_period(bad)
        assert list(refused.value.errors["path"]) == ["month"]


@pytest.mark.parametrize("weight", ["1e308", "1.7e308", "1e-320", "5e-324"])
def test_the_score_is_the_same_for_any_scale_of_valid_weights(weight):
    """Weights are any finite numbers >= 0: two near the largest float made the score
    inf / inf = NaN (and 0 for a half), subnormal ones lost the score to rounding."""
    weights = parse_weights(f"closure_rate:{weight},satisfaction_rate:{weight}")
    assert composite_score({"closure_rate": 1.0, "satisfaction_rate": 1.0}, weights) == 100.0
    assert composite_score({"closure_rate": 0.3, "satisfaction_rate": 0.9}, weights) == 60.0
    assert composite_score({"closure_rate": 0.5, "satisfaction_rate": None}, weights) == 50.0
