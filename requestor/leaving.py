"""Leaving Golem within a stated time, whatever the providers do.

`Golem.stop()` (and so `async with Golem(...)`) ends within `Golem(shutdown_timeout=...)` seconds
(DEFAULT_SHUTDOWN_TIMEOUT): a provider that answers slowly, holds its connection without
answering, or is gone, costs at most that. The time is shared out in steps, each with a deadline
(a `ShutdownPlan`):

1. the instances' handlers (`shutdown`, or a handler still reacting to its stop): until
   `handlers_until`, the time minus a reserve (half of it, at most RESERVE_SECONDS);
2. each agreement's end (final usage, DestroyActivity, TerminateAgreement): until `release_until`,
   two thirds of the reserve later;
3. the rest (networks removed on their providers, the relay's streams, the budget watch, the
   channels, the event consumers): until `ends_at`.

What is not done by its step's deadline is given up, with a warning that names the step, the
provider and the agreement (`event=shutdown_gave_up`); the provider ends such an agreement itself
when it expires. Why a deadline per step rather than gRPC's keepalive alone: a provider whose
process holds the connection but whose handlers never run (an event loop starved or blocked)
acknowledges keepalive pings, so a call without a deadline waits for it forever.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

DEFAULT_SHUTDOWN_TIMEOUT = 60.0  # seconds
RESERVE_SECONDS = 15.0  # at most this much of it is kept from the handlers for ending agreements and closing


@dataclass(frozen=True)
class ShutdownPlan:
    """The deadlines of leaving, in the running loop's time (`loop.time()`)."""

    started: float
    total: float

    @classmethod
    def starting_now(cls, total: float) -> ShutdownPlan:
        return cls(asyncio.get_running_loop().time(), total)

    @property
    def reserve(self) -> float:
        return min(self.total / 2, RESERVE_SECONDS)

    @property
    def handlers_until(self) -> float:
        return self.started + self.total - self.reserve

    @property
    def release_until(self) -> float:
        return self.started + self.total - self.reserve / 3

    @property
    def ends_at(self) -> float:
        return self.started + self.total

    def left(self, until: float | None = None) -> float:
        """Seconds from now until `until` (default: the end), never negative."""
        return max((self.ends_at if until is None else until) - asyncio.get_running_loop().time(), 0.0)

    def elapsed(self) -> float:
        return asyncio.get_running_loop().time() - self.started


def log_given_up(logger: logging.Logger, step: str, waited: float, **ids: object) -> None:
    """The one shape of a give-up warning: the step, then who it was with (provider, agreement...)."""
    named = " ".join(f"{key}={value}" for key, value in ids.items())
    logger.warning("event=shutdown_gave_up step=%s %s waited=%.1fs hint=%r", step, named, waited,
                   "leaving Golem is bounded by Golem(shutdown_timeout=...)")
