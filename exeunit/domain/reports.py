"""What the daemon reports of an activity: its status, its usage, and its line in `exeunit ps`."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

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
