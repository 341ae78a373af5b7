"""What an agreement reserves and what it costs: capacity in threads and bytes, linear pricing."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from exeunit.v1.conventions import GIB


@dataclass(frozen=True)
class LinearPricing:
    start_fee: float = 0.0
    per_cpu_second: float = 0.0
    per_duration_second: float = 0.0
    currency: str = "GLM"
    per_unit: dict[str, float] = field(default_factory=dict)  # other counters' prices, by name

    def cost(self, cpu_seconds: float, duration_seconds: float, counters: dict[str, float] | None = None,
             start_fee: bool = True) -> float:
        """The cost of this usage; without the start fee for a part of an agreement's usage that
        is not its first (an agreement pays its start fee once, however many activities it holds)."""
        extra = sum(self.per_unit.get(name, 0.0) * value for name, value in (counters or {}).items())
        fee = self.start_fee if start_fee else 0.0
        return fee + self.per_cpu_second * cpu_seconds + self.per_duration_second * duration_seconds + extra


@dataclass
class Spent:
    """What an agreement's ended activities used, summed: an agreement holding several activities
    one after another is billed as one. Each activity is counted once (`billed` names them)."""

    cpu_seconds: float = 0.0
    duration_seconds: float = 0.0
    counters: dict[str, float] = field(default_factory=dict)
    billed: list[str] = field(default_factory=list)
    last_ended: datetime | None = None  # the end of its last activity: its idle time counts from there

    def add(self, activity_id: str, cpu_seconds: float, duration_seconds: float, counters: dict[str, float],
            ended: datetime) -> bool:
        """Counts an ended activity's usage; False when it was counted already."""
        if activity_id in self.billed:
            return False
        self.billed.append(activity_id)
        self.cpu_seconds += cpu_seconds
        self.duration_seconds += duration_seconds
        for name, value in counters.items():
            self.counters[name] = self.counters.get(name, 0.0) + value
        self.last_ended = max(ended, self.last_ended) if self.last_ended else ended
        return True


@dataclass(frozen=True)
class Resources:
    cpu_threads: int
    memory_bytes: int
    storage_bytes: int

    def fits_in(self, other: Resources) -> bool:
        return (
            self.cpu_threads <= other.cpu_threads
            and self.memory_bytes <= other.memory_bytes
            and self.storage_bytes <= other.storage_bytes
        )

    def __add__(self, other: Resources) -> Resources:
        return Resources(
            self.cpu_threads + other.cpu_threads,
            self.memory_bytes + other.memory_bytes,
            self.storage_bytes + other.storage_bytes,
        )

    def __sub__(self, other: Resources) -> Resources:
        return Resources(
            self.cpu_threads - other.cpu_threads,
            self.memory_bytes - other.memory_bytes,
            self.storage_bytes - other.storage_bytes,
        )


def capped(wanted: Resources, capacity: Resources) -> Resources:
    """`wanted` with each field lowered to `capacity`'s (a preset never asks more than the host has)."""
    return Resources(
        min(wanted.cpu_threads, capacity.cpu_threads),
        min(wanted.memory_bytes, capacity.memory_bytes),
        min(wanted.storage_bytes, capacity.storage_bytes),
    )


def describe(resources: Resources) -> str:
    return (
        f"{resources.cpu_threads} cpu threads, {resources.memory_bytes / GIB:.2f} GiB memory, "
        f"{resources.storage_bytes / GIB:.2f} GiB storage"
    )
