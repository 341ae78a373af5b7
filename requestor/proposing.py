"""What the engine's search for a provider goes by: the demand it proposes for a job's payload,
and what one round of trying the providers found (why each one did not take it, and whether
waiting may help)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from requestor import events
from requestor.errors import BudgetExceededError
from requestor.model import DemandSpec
from requestor.payload.vm import GIB, VmPackage
from requestor.placement import Unanswered


@dataclass
class Attempt:
    """What happened with each provider while looking for one."""

    reasons: dict[str, str]
    capacity_busy: bool = False
    strategy_refused: bool = False  # the market strategy turned an offer down (it may take it later)
    silent: list[Unanswered] = field(default_factory=list)  # providers whose offer is not at hand
    provider_slow: bool = False  # a provider did not answer in time while an agreement was being made
    budget_error: BudgetExceededError | None = None
    on_agreement: Callable[[events.Agreement], None] | None = None  # told before the activity is made
    reuse: bool = False  # a task worker's: its agreement may hold a next activity


def worth_waiting(attempt: Attempt) -> bool:
    """Whether what stood in the way may pass: a provider only busy, or slow to answer (one heard
    from before), or for a task worker a market strategy that may take an offer later."""
    return (attempt.capacity_busy or attempt.provider_slow or any(s.worth_waiting for s in attempt.silent)
            or (attempt.reuse and attempt.strategy_refused))


def said(reasons: dict[str, str]) -> str:
    return "; ".join(f"{where}: {why}" for where, why in reasons.items()) or "no providers configured"


def demand_for(payload: VmPackage, subnet_tag: str, job: events.Job) -> DemandSpec:
    return DemandSpec(
        image_hash=payload.image_hash,
        image_tag=payload.image_tag,
        image_url=payload.image_url,
        min_memory_bytes=int(payload.min_mem_gib * GIB),
        min_storage_bytes=int(payload.min_storage_gib * GIB),
        min_cpu_threads=payload.min_cpu_threads,
        capabilities=payload.capabilities,
        subnet_tag=subnet_tag,
        expiration=job.expiration,
        runtime=payload.runtime,
    )
