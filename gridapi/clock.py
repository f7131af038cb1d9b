"""Today's date where the county is (``GRIDAPI_TIMEZONE``), not where the server's clock is.

A roster, a region's validity, an assignment's start are dates of the county's calendar: on
a server running in UTC the two differ every day from 16:00 to 24:00 UTC, when a worker on
today's roster saw no task of their grid while a campaign's fan-out (which read the roster
for the local date) gave them one. ``create_app`` and the command line set the zone from the
settings; the default is the settings' default.
"""

from __future__ import annotations

from datetime import date, datetime, tzinfo
from zoneinfo import ZoneInfo

_zone: tzinfo = ZoneInfo("Asia/Shanghai")


def use(name: str) -> None:
    """Take ``name`` (an IANA zone) as the county's time zone for this process."""
    global _zone
    _zone = ZoneInfo(name)


def zone() -> tzinfo:
    """Return the county's time zone."""
    return _zone


def today() -> date:
    """Return today's date in the county's time zone."""
    return datetime.now(_zone).date()


def date_of(moment: datetime) -> date:
    """Return the county's date at ``moment`` (an aware datetime, in any zone)."""
    return moment.astimezone(_zone).date()
