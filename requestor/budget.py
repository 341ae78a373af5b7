"""The budget: what agreements may cost at most, and what they did cost."""

from __future__ import annotations

import logging
from datetime import datetime

from requestor.errors import BudgetExceededError
from requestor.provider_client import Pricing

log = logging.getLogger(__name__)


def worst_case_cost(pricing: Pricing, cpu_threads: int, now: datetime, expiration: datetime) -> float:
    """The most an agreement can cost: every thread busy until it expires."""
    seconds = max((expiration - now).total_seconds(), 0.0)
    return pricing.cost(cpu_seconds=seconds * cpu_threads, duration_seconds=seconds)


class Budget:
    """Reserves the worst-case cost of each agreement until its real cost is known."""

    def __init__(self, amount: float) -> None:
        self.amount = amount
        self._reserved: dict[str, float] = {}
        self.spent = 0.0

    @property
    def remaining(self) -> float:
        return self.amount - self.spent - sum(self._reserved.values())

    def check(self, cost: float, provider: str) -> None:
        if cost > self.remaining:
            raise BudgetExceededError(
                f"an agreement with {provider} may cost up to {cost:.6f}, but only {self.remaining:.6f} "
                f"of the budget {self.amount:g} remains; raise Golem(budget=...) or shorten the expiration"
            )

    def reserve(self, agreement_id: str, cost: float) -> None:
        self._reserved[agreement_id] = cost

    def reserved_for(self, agreement_id: str) -> float:
        return self._reserved.get(agreement_id, 0.0)

    def settle(self, agreement_id: str, cost: float) -> None:
        """Replaces the agreement's reservation with what it really cost."""
        reserved = self._reserved.pop(agreement_id, 0.0)
        self.spent += cost
        log.debug("event=agreement_settled agreement=%s cost=%.6f reserved=%.6f spent=%.6f",
                 agreement_id, cost, reserved, self.spent)
