"""What the daemon reports of an activity: its status, its usage, and its line in `exeunit ps`."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from exeunit.domain.market import Agreement
from exeunit.domain.states import ActivityState


@dataclass(frozen=True)
class ActivityStatus:
    activity_id: str
    agreement_id: str
    state: ActivityState
    reason: str
    message: str
    changed: datetime
    executor: str = ""  # how commands run once Ready: "agent" or "docker-exec"


@dataclass(frozen=True)
class ActivitySummary:
    """One line of `exeunit ps`: who runs what, since when, using how much."""

    status: ActivityStatus
    requestor_id: str
    image: str
    created: datetime
    started: datetime | None
    usage: Usage
    network_id: str
    ip: str


@dataclass(frozen=True)
class Usage:
    cpu_seconds: float
    duration_seconds: float
    cost: float
    memory_bytes: int
    measured: datetime
    storage_bytes: int = 0
    counters: dict[str, float] = field(default_factory=dict)  # the runtime's own (test-counters)


def agreement_usage(agreement: Agreement, live: dict[str, Usage], now: datetime) -> Usage:
    """An agreement's usage: its ended activities' (billed) and its live ones' (by id; one that
    ended meanwhile is counted among the billed), summed, and its cost with one start fee."""
    spent = agreement.spent
    counted = [usage for activity_id, usage in live.items() if activity_id not in spent.billed]
    counters = dict(spent.counters)
    for usage in counted:
        for name, value in usage.counters.items():
            counters[name] = counters.get(name, 0.0) + value
    cpu = spent.cpu_seconds + sum(u.cpu_seconds for u in counted)
    duration = spent.duration_seconds + sum(u.duration_seconds for u in counted)
    return Usage(cpu_seconds=cpu, duration_seconds=duration, cost=agreement.pricing.cost(cpu, duration, counters),
                 memory_bytes=sum(u.memory_bytes for u in counted), measured=now,
                 storage_bytes=sum(u.storage_bytes for u in counted), counters=counters)
