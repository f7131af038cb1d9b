"""The counts of the rate limits shared by every process when there is no Redis."""

from __future__ import annotations

from sqlalchemy import Double, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from .base import Base


class RateLimitCounter(Base):
    """One fixed window of one rate limit: sign-in failures (per name typed from an address,
    per address, per account from an address, per account) and exact lookups of personal
    data (per caller). Written and read by ``gridapi.limits.DatabaseStorage``, one
    statement each; a window past ``expires_at`` counts as none and is deleted later. Keys carry keyed hashes (of the name typed, of
    the client's address) and ids, never a name, a number or an address typed or seen.
    Rows live one window (15 minutes, an hour): the table holds the callers of the last
    hour, not people or cases, and has no county code."""

    __tablename__ = "rate_limit_counters"

    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    hits: Mapped[int] = mapped_column(Integer)
    expires_at: Mapped[float] = mapped_column(Double)  # Unix time

    __table_args__ = (Index("ix_rate_limit_counters_expires_at", "expires_at"),)
