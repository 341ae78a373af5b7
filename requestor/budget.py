"""The budget: money is spent as the work is done, as yapapi spends from its allocation.

An agreement is made while the budget has more left than the provider's start fee; from then on
the cost of every live activity is read from its provider's usage counters (`BudgetWatch`) and
counted as accrued. When what is spent and accrued, plus what the running activities are about
to spend before the next reading, would pass the budget, the agreements are ended, with that as
their reason. Amounts are Decimal, as yapapi's; providers' prices and costs arrive as floats and
are converted by their decimal representation.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from decimal import Decimal

from requestor.errors import BudgetExceededError, RequestorError

log = logging.getLogger(__name__)

WARN_AT = Decimal("0.9")  # a warning once this share of the budget is spent or accrued
POLL_SECONDS = 2.0  # readings are at least this far apart...
MAX_POLL_SECONDS = 30.0  # ...and at most this far, however far the budget is from its end


def money(value: float | int | str | Decimal) -> Decimal:
    """A float from a provider as the decimal number it prints as (0.1 -> Decimal('0.1'))."""
    return value if isinstance(value, Decimal) else Decimal(str(value))


class Budget:
    """What may be spent, what agreements have accrued so far, and what ended ones cost."""

    def __init__(self, amount: float | Decimal) -> None:
        self.amount = money(amount)
        self.spent = Decimal(0)
        self._accrued: dict[str, Decimal] = {}  # live agreements: cost so far
        self.warned = False
        self.exhausted = False  # set when agreements were ended for it: no new one is made

    @property
    def accrued(self) -> Decimal:
        return sum(self._accrued.values(), Decimal(0))

    @property
    def remaining(self) -> Decimal:
        return self.amount - self.spent - self.accrued

    def check(self, start_fee: float | Decimal, provider: str) -> None:
        """BudgetExceededError unless an agreement with this start fee leaves something to spend."""
        fee = money(start_fee)
        if self.exhausted:
            raise BudgetExceededError(f"the budget {self.amount} is spent; raise Golem(budget=...)")
        if self.remaining <= fee:
            raise BudgetExceededError(
                f"the budget {self.amount} has {self.remaining} left, not more than the start fee {fee} of "
                f"{provider}; raise Golem(budget=...)"
            )

    def open(self, agreement_id: str, start_fee: float | Decimal = 0) -> None:
        self._accrued[agreement_id] = money(start_fee)

    def accrue(self, agreement_id: str, cost: float | Decimal) -> None:
        """The agreement's cost so far, as its provider counts it (never counted down)."""
        if agreement_id in self._accrued:
            self._accrued[agreement_id] = max(self._accrued[agreement_id], money(cost))

    def accrued_for(self, agreement_id: str) -> Decimal:
        return self._accrued.get(agreement_id, Decimal(0))

    def settle(self, agreement_id: str, cost: float | Decimal) -> Decimal:
        """The agreement ended: its final cost moves from accrued to spent. Returns it."""
        final = max(money(cost), self._accrued.pop(agreement_id, Decimal(0)))
        self.spent += final
        log.debug("event=agreement_settled agreement=%s cost=%s spent=%s", agreement_id, final, self.spent)
        return final

    def settle_invoiced(self, agreement_id: str, amount: Decimal) -> Decimal:
        """The agreement's invoice was accepted: exactly its amount is spent, whatever was read before."""
        self._accrued.pop(agreement_id, None)
        self.spent += amount
        log.debug("event=agreement_invoiced agreement=%s amount=%s spent=%s", agreement_id, amount, self.spent)
        return amount

    def would_pass(self, coming: Decimal) -> bool:
        """Whether spending `coming` more passes the budget."""
        return self.spent + self.accrued + coming > self.amount


class BudgetWatch:
    """Reads every live agreement's cost, warns near the limit and ends every live agreement
    before the budget would be passed. Readings come as often as the budget needs: at the
    agreements' fastest possible spending (their prices, every thread busy), the time to the
    budget's end is split in two, between POLL_SECONDS and MAX_POLL_SECONDS; so a budget far
    from its end costs the providers almost no readings."""

    def __init__(self, budget: Budget, read_cost: Callable[[str], Awaitable[float | Decimal]],
                 end_all: Callable[[str], Awaitable[None]], interval: float = POLL_SECONDS) -> None:
        self._budget = budget
        self._read_cost = read_cost  # agreement id -> its cost now (its activities' so far)
        self._end_all = end_all  # ends every live agreement, with the message given
        self._interval = interval  # the shortest time between readings
        self._live: dict[str, Decimal] = {}  # agreement id -> the most it can spend per second
        self._added = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def add(self, agreement_id: str, max_rate: Decimal = Decimal("Infinity")) -> None:
        self._live[agreement_id] = max_rate
        self._added.set()  # a reading may be due sooner now
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._watch(), name="budget-watch")

    def discard(self, agreement_id: str) -> None:
        self._live.pop(agreement_id, None)

    def next_reading_in(self) -> float:
        """Seconds until the next reading: half the time the live agreements need, at most, to
        spend what is left, within [interval, MAX_POLL_SECONDS]."""
        fastest = sum(self._live.values(), Decimal(0))
        if fastest <= 0:
            return MAX_POLL_SECONDS
        if fastest == Decimal("Infinity"):
            return self._interval
        seconds = float(max(self._budget.remaining, Decimal(0)) / fastest) / 2
        return min(max(seconds, self._interval), MAX_POLL_SECONDS)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            except Exception:  # a bug in the watch must not break the script's shutdown
                log.exception("event=budget_watch_failed")

    async def _watch(self) -> None:
        loop = asyncio.get_running_loop()
        last_total, last_time = self._budget.accrued + self._budget.spent, loop.time()
        while self._live:
            deadline = loop.time() + self.next_reading_in()
            while self._live and loop.time() < deadline:  # an agreement that comes may bring it closer
                self._added.clear()
                try:
                    await asyncio.wait_for(self._added.wait(), deadline - loop.time())
                except TimeoutError:
                    break
                deadline = min(deadline, loop.time() + self.next_reading_in())
            for agreement_id in list(self._live):
                if agreement_id not in self._live:  # ended while others were read
                    continue
                try:
                    self._budget.accrue(agreement_id, await self._read_cost(agreement_id))
                except RequestorError:
                    continue  # its provider will say more when the instance notices
            total, now = self._budget.accrued + self._budget.spent, loop.time()
            rate = (total - last_total) / money(max(now - last_time, 1e-3))
            last_total, last_time = total, now
            coming = max(rate, Decimal(0)) * money(self.next_reading_in()) * 2  # until the reading after next
            budget = self._budget
            if not budget.warned and total >= budget.amount * WARN_AT:
                budget.warned = True
                log.warning("Budget nearly spent: %s of %s (spent and accrued)", total.normalize(), budget.amount)
            if self._live and budget.would_pass(coming):
                log.warning("Budget of %s would be passed (%s spent and accrued, about %s more before the next "
                            "reading): ending %d agreements", budget.amount, total.normalize(),
                            coming.normalize(), len(self._live))
                budget.exhausted = True
                await self._end_all(f"the requestor's budget of {budget.amount} is spent")
