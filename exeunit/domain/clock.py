"""The daemon's one clock: aware UTC times, as the contract's Timestamps and the records carry."""

from __future__ import annotations

from datetime import datetime, timezone


def utcnow() -> datetime:
    return datetime.now(timezone.utc)
