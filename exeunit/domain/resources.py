"""What an agreement reserves and what it costs: capacity in threads and bytes, linear pricing."""

from __future__ import annotations

from dataclasses import dataclass, field

from exeunit.v1.conventions import GIB


@dataclass(frozen=True)
class LinearPricing:
    start_fee: float = 0.0
    per_cpu_second: float = 0.0
    per_duration_second: float = 0.0
    currency: str = "GLM"
    per_unit: dict[str, float] = field(default_factory=dict)  # other counters' prices, by name

    def cost(self, cpu_seconds: float, duration_seconds: float, counters: dict[str, float] | None = None) -> float:
        extra = sum(self.per_unit.get(name, 0.0) * value for name, value in (counters or {}).items())
        return self.start_fee + self.per_cpu_second * cpu_seconds + self.per_duration_second * duration_seconds + extra


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


def describe(resources: Resources) -> str:
    return (
        f"{resources.cpu_threads} cpu threads, {resources.memory_bytes / GIB:.2f} GiB memory, "
        f"{resources.storage_bytes / GIB:.2f} GiB storage"
    )
