"""The engine behind `Golem`: talks to the providers for every cluster.

It gathers offers, keeps the ones that match a payload, tries them cheapest first within the
budget, signs agreements, creates activities, and at the end settles each agreement's real cost.
Task workers' agreements on providers that take several activities one after another go back to
a pool when their worker ends normally, for a later worker to take up (requestor.agreements_pool).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace
from datetime import datetime, timezone
from decimal import Decimal
from typing import TypeVar

from requestor import events
from requestor.agreements_pool import AgreementsPool, Reusable, multi_activity
from requestor.budget import Budget, BudgetWatch, money
from requestor.client import ActivityHandle, ProviderClient
from requestor.errors import (
    ActivityTerminatedError,
    BudgetExceededError,
    NoMatchingProviderError,
    ProviderCallError,
    ProviderUnreachableError,
    RequestorError,
)
from requestor.leaving import log_given_up
from requestor.model import AgreementInfo, Offer, Refusal
from requestor.payload.vm import VmPackage
from requestor.payments import INVOICE_WAIT_SECONDS, Payments
from requestor.payments_model import max_rate
from requestor.placement import OfferBook, Spread, Unanswered, Waits
from requestor.proposing import Attempt, demand_for, said, worth_waiting
from requestor.settlement import Settlement
from requestor.strategy import MarketStrategy, mismatch, payment_choice, score

log = logging.getLogger(__name__)
T = TypeVar("T")
RELEASE_INVOICE_WAIT = 10.0  # how long an agreement's end waits for its invoice (the rest wait at Golem's end)


class Engine:
    def __init__(
        self,
        clients: list[ProviderClient],
        subnet_tag: str,
        budget: Budget,
        strategy: MarketStrategy,
        emit: Callable[[events.Event], None],
        unresponsive_after: float = 5.0,
        settlement: Settlement | None = None,
    ) -> None:
        self.clients = clients
        self.subnet_tag = subnet_tag
        self.budget = budget
        self.strategy = strategy
        self.emit = emit
        self.unresponsive_after = unresponsive_after
        self._live: dict[str, ActivityHandle] = {}  # by agreement id: what the budget watch reads
        self._budget_watch = BudgetWatch(budget, self._cost_of, self._end_all_for_budget)
        self._leave_by: float | None = None  # loop time by which releases end, once Golem is leaving
        self.pool = AgreementsPool()  # agreements waiting for a next activity
        self._reusable: dict[str, Reusable] = {}  # by agreement id: those an activity runs on now
        self.unpaid: set[str] = set()  # agreements whose invoice was not accepted (their provider gone, say)
        self.settlement = settlement  # paying on a chain (requestor.settlement), or None: accounted only
        self.payments = Payments(budget, emit, settlement)  # their debit notes and invoices (requestor.payments)
        self._book = OfferBook(clients)  # requestor.placement: offers read, slow providers asked again
        self._spread = Spread(lambda: [h.agreement.provider_id for h in self._live.values()])
        self._waits = Waits()

    def leave_by(self, deadline: float) -> None:
        """Golem is leaving: every release from now on ends by `deadline` (loop time), giving up
        the calls its provider has not answered by then (requestor.leaving)."""
        self._leave_by = deadline

    async def close(self) -> None:
        """Ends the agreements kept for a next activity ("Success", as yapapi ends them once the
        work is done), then the budget watch."""
        await asyncio.gather(*(self._end_agreement(a.client, a.agreement, a.job, "Success", a.spent,
                                                   "Successfully finished all work") for a in self.pool.drain()))
        await self._budget_watch.close()
        await self._book.close()
        loop = asyncio.get_running_loop()
        wait = INVOICE_WAIT_SECONDS if self._leave_by is None else self._leave_by - loop.time()
        self.unpaid |= await self.payments.close(wait)
        if self.unpaid:  # yapapi's warning, in its words: goth's power outage test waits for it
            log.warning("Unpaid agreements: %s", self.unpaid)

    async def _cost_of(self, agreement_id: str) -> Decimal:
        """The agreement's cost so far: its ended activities' and its live one's."""
        handle = self._live.get(agreement_id)
        if handle is None:  # released while the watch was reading the others
            raise RequestorError(f"agreement {agreement_id} has ended")
        reusable = self._reusable.get(agreement_id)
        earlier = reusable.spent if reusable is not None else Decimal(0)
        return earlier + money((await handle.client.usage(handle.activity.id)).cost)

    async def _end_all_for_budget(self, message: str) -> None:
        """Ends every live agreement; their instances learn it from their activities' end."""
        for agreement_id, handle in list(self._live.items()):
            try:
                await handle.client.terminate_agreement(agreement_id, "BudgetExceeded", message)
            except RequestorError as exc:
                log.warning("event=terminate_agreement_failed agreement=%s error=%s", agreement_id, exc)

    async def offers(self, job: events.Job, reasons: dict[str, str],
                     silent: list[Unanswered] | None = None) -> list[Offer]:
        """Current offers of the providers that answer; the others get a reason, and are added to
        `silent` (asked again after a backoff: requestor.placement.OfferBook)."""
        offers, unanswered = await self._book.read()
        for offer in offers:
            self.emit(events.ProposalReceived(job=job, proposal=offer))
        for quiet in unanswered:
            reasons[quiet.where] = quiet.reason
            self.emit(events.ProposalRejected(job=job, address=quiet.address, reason=quiet.reason))
        if silent is not None:
            silent.extend(unanswered)
        return offers

    async def acquire(self, job: events.Job, avoid: set[str], stop: asyncio.Event,
                      only_provider: str | None = None, why_only: str = "",
                      on_agreement: Callable[[events.Agreement], None] | None = None,
                      reuse: bool = False, exclude: Mapping[str, str] | None = None) -> ActivityHandle:
        """An activity on the best provider for the job's payload; providers in `avoid` (where
        the instance failed before) only when no other one takes it, those in `exclude` (provider
        id: why, as the error says it) never; with `only_provider`, on
        that provider or none (`why_only` says why, in the error). `on_agreement` is called with
        each agreement once confirmed, before its activity is created (a task worker starts there).
        With `reuse` (task workers), an agreement from the pool for the same demand is taken up
        first, and a new agreement on a multi-activity provider may go back to the pool at release.

        Waits while matching providers are only busy or slow to answer (having answered before;
        a job's placements say at INFO what they wait for), and, for task workers, while the market
        strategy turns them down (as yapapi's job waits for offers: a strategy may take an offer
        later, as scan's takes each provider once and then waits for new ones; the job's timeout
        bounds it); raises NoMatchingProviderError when none can ever take it,
        BudgetExceededError when the budget is what stands in the way.
        """
        payload: VmPackage = job.payload
        exclude = exclude or {}
        if reuse:
            taken = await self._take_up(job, avoid | set(exclude), only_provider, on_agreement)
            if taken is not None:
                return taken
        delay = 0.5
        with self._waits.placing(job.id, workers=reuse) as waits:
            while True:
                attempt = Attempt(reasons={}, on_agreement=on_agreement, reuse=reuse)
                handle = await self._try_providers(job, payload, avoid, attempt, only_provider, why_only, exclude)
                if handle is not None:
                    return handle
                if not worth_waiting(attempt):
                    break
                waits(attempt.reasons, attempt.silent)
                try:
                    await asyncio.wait_for(stop.wait(), delay)
                except TimeoutError:
                    pass
                if stop.is_set():
                    raise NoMatchingProviderError("stopped while waiting for a provider: " + said(attempt.reasons))
                delay = min(delay * 2, 5.0)
        if attempt.budget_error is not None and all("budget" in r for r in attempt.reasons.values()):
            raise attempt.budget_error
        raise NoMatchingProviderError(f"no provider can run {payload}: {said(attempt.reasons)}")

    async def _try_providers(self, job: events.Job, payload: VmPackage, avoid: set[str], attempt: Attempt,
                             only_provider: str | None, why_only: str,
                             exclude: Mapping[str, str]) -> ActivityHandle | None:
        candidates: list[tuple[bool, float, Offer]] = []
        for offer in await self.offers(job, attempt.reasons, attempt.silent):
            where = f"{offer.provider_name} ({offer.address})"
            why = None
            if only_provider is not None and offer.provider_id != only_provider:
                why = why_only or "not the provider this instance must run on"
            elif offer.provider_id in exclude:
                why = exclude[offer.provider_id]
            else:
                why = mismatch(offer, payload, self.subnet_tag)
                if why is None and self.settlement is not None:  # none of its platforms ours: yapapi's reason
                    why = self.settlement.mismatch(offer)
            value = None if why else await score(self.strategy, offer)
            if why is None and value is None:
                why = "rejected by the market strategy"
                attempt.strategy_refused = True
            if why:
                attempt.reasons[where] = why
                self.emit(events.ProposalRejected(job=job, proposal=offer, address=offer.address, reason=why))
                continue
            assert value is not None
            candidates.append((offer.provider_id in avoid, value, offer))
        for offer in self._spread.order(candidates):  # equal scores: the least loaded provider first
            with self._spread.making(offer.provider_id):
                handle = await self._agree(job, payload, offer, attempt)
            if handle is not None:
                return handle
        return None

    def _client(self, address: str) -> ProviderClient:
        return next(c for c in self.clients if c.address == address)

    async def _agree(self, job: events.Job, payload: VmPackage, offer: Offer, attempt: Attempt) -> ActivityHandle | None:
        where = f"{offer.provider_name} ({offer.address})"
        client = self._client(offer.address)
        try:
            self.budget.check(offer.pricing.start_fee, where)
        except BudgetExceededError as exc:
            attempt.reasons[where] = f"over budget: {exc}"
            attempt.budget_error = exc
            return None
        platform = (self.settlement.platform_for(offer) or "") if self.settlement else ""
        try:
            choice = payment_choice(self.strategy, offer, job.expiration, platform)
            if choice is not None and platform:
                assert self.settlement is not None
                choice = self.settlement.payer(choice, client.requestor_id, offer.provider_id)
            demand = replace(demand_for(payload, self.subnet_tag, job), payment=choice)
        except ValueError:  # a range of the strategy's that nothing is in (yapapi's reason)
            attempt.reasons[where] = "Could not accept provider's terms."
            return None
        try:
            outcome = await client.propose(demand)
        except ProviderCallError as exc:
            if exc.code == "RESOURCE_EXHAUSTED":
                attempt.capacity_busy = True
            attempt.reasons[where] = exc.details
            return None
        except RequestorError as exc:
            attempt.provider_slow = attempt.provider_slow or isinstance(exc, ProviderUnreachableError)
            attempt.reasons[where] = str(exc)
            return None
        if isinstance(outcome, Refusal):
            attempt.reasons[where] = f"refused ({outcome.reason}): {outcome.message}"
            self.emit(events.ProposalRejected(job=job, proposal=offer, address=offer.address, reason=outcome.message))
            return None
        return await self._activate(job, offer, outcome, attempt, demand.min_cpu_threads, datetime.now(timezone.utc))

    async def _activate(self, job: events.Job, offer: Offer, agreement_info: AgreementInfo, attempt: Attempt,
                        asked_threads: int, received: datetime) -> ActivityHandle | None:
        client = self._client(offer.address)
        agreement = events.Agreement(agreement_info.agreement_id, offer.provider_id, offer.provider_name, offer.address)
        self.budget.open(agreement.id, offer.pricing.start_fee)
        self.emit(events.AgreementCreated(job=job, agreement=agreement))
        self.emit(events.AgreementConfirmed(job=job, agreement=agreement))
        self.payments.track(client, agreement, job, offer, agreement_info, asked_threads, received)
        if attempt.on_agreement is not None:
            attempt.on_agreement(agreement)
        try:
            activity_id = await client.create_activity(agreement.id)
        except RequestorError as exc:
            attempt.reasons[f"{offer.provider_name} ({offer.address})"] = f"cannot create an activity: {exc}"
            self.emit(events.ActivityCreateFailed(job=job, agreement=agreement, exc_info=(type(exc), exc, exc.__traceback__)))
            await self._end_agreement(client, agreement, job, "ActivityCreateFailed", 0.0)
            return None
        if attempt.reuse and multi_activity(offer):
            demand = demand_for(job.payload, self.subnet_tag, job)
            self._reusable[agreement.id] = Reusable(client, offer, agreement, agreement_info, demand, job)
        return self._activated(job, ActivityHandle(client, offer, agreement, events.Activity(activity_id)),
                               agreement_info.cpu_threads)

    def _activated(self, job: events.Job, handle: ActivityHandle, cpu_threads: int) -> ActivityHandle:
        agreement = handle.agreement
        self._live[agreement.id] = handle
        self._budget_watch.add(agreement.id, max_rate(handle.offer.pricing, cpu_threads))
        self.emit(events.ActivityCreated(job=job, agreement=agreement, activity=handle.activity))
        log.debug("event=activity_ready job=%s provider=%s agreement=%s activity=%s",
                  job.id, handle.offer.provider_name, agreement.id, handle.activity.id)
        return handle

    async def _take_up(self, job: events.Job, avoid: set[str], only_provider: str | None,
                       on_agreement: Callable[[events.Agreement], None] | None) -> ActivityHandle | None:
        """A new activity on an agreement from the pool signed for the same demand, or None. An
        agreement that cannot take one (its provider ended it meanwhile, say) is ended."""
        for late in self.pool.expiring(datetime.now(timezone.utc)):
            await self._end_agreement(late.client, late.agreement, late.job, "Success", late.spent,
                                      "Successfully finished all work")
        demand = demand_for(job.payload, self.subnet_tag, job)
        while not self.budget.exhausted and (pooled := self.pool.take(demand, avoid, only_provider)) is not None:
            pooled.job, agreement = job, pooled.agreement
            log.debug("event=agreement_reused job=%s agreement=%s provider=%s", job.id, agreement.id,
                      agreement.provider_name)
            if on_agreement is not None:
                on_agreement(agreement)
            try:
                activity_id = await pooled.client.create_activity(agreement.id)
            except RequestorError as exc:
                self.emit(events.ActivityCreateFailed(job=job, agreement=agreement,
                                                      exc_info=(type(exc), exc, exc.__traceback__)))
                await self._end_agreement(pooled.client, agreement, job, "ActivityCreateFailed", pooled.spent)
                continue
            self._reusable[agreement.id] = pooled
            handle = ActivityHandle(pooled.client, pooled.offer, agreement, events.Activity(activity_id))
            return self._activated(job, handle, pooled.info.cpu_threads)
        return None

    async def resume(self, job: events.Job, provider: str | None, agreement_id: str, activity_id: str) -> ActivityHandle:
        """The activity a suspended instance left on `provider` (host:port[#id]; None: whichever
        configured provider has the agreement), counted against this budget from now on.
        RequestorError when it is gone, or is not this requestor's."""
        if provider is not None:
            address = provider.partition("#")[0]
            candidates = [c for c in self.clients if c.address == address]
            if not candidates:  # a provider not configured in this run: reached as serialized, pin and all
                candidates = [ProviderClient(provider, self.clients[0].identity, reconnect_for=self.unresponsive_after)]
                self.clients.extend(candidates)
        else:
            candidates = list(self.clients)
        errors: list[str] = []
        for client in candidates:
            try:
                agreement_info = await client.agreement(agreement_id)
                status = await client.state(activity_id)
                offer = await client.offer()
            except RequestorError as exc:
                errors.append(f"{client.address}: {exc}")
                continue
            if status.state == "Terminated":
                raise ActivityTerminatedError(status.reason, f"activity {activity_id} ended while suspended: "
                                                             f"{status.message}")
            agreement = events.Agreement(agreement_id, offer.provider_id, offer.provider_name, offer.address)
            handle = ActivityHandle(client, offer, agreement, events.Activity(activity_id))
            self.budget.open(agreement_id, 0.0)
            self._live[agreement_id] = handle
            self._budget_watch.add(agreement_id, max_rate(offer.pricing, agreement_info.cpu_threads))
            self.payments.track(client, agreement, job, offer, agreement_info)
            log.info("event=activity_resumed job=%s provider=%s agreement=%s activity=%s",
                     job.id, offer.provider_name, agreement_id, activity_id)
            return handle
        raise RequestorError(f"agreement {agreement_id} was not found to resume: " + "; ".join(errors or ["no provider"]))

    def suspend(self, handle: ActivityHandle) -> None:
        """Lets go of a suspended instance's activity without ending it: kept on its provider until
        the agreement expires, for a later `resume_service` by this requestor's identity."""
        self._live.pop(handle.agreement.id, None)
        self._budget_watch.discard(handle.agreement.id)
        self.payments.forget(handle.agreement.id)  # its notes are a later run's to accept
        spent = self.budget.settle(handle.agreement.id, self.budget.accrued_for(handle.agreement.id))
        log.info("event=activity_suspended agreement=%s activity=%s spent_so_far=%s", handle.agreement.id,
                 handle.activity.id, spent)

    async def release(self, handle: ActivityHandle, job: events.Job, error: BaseException | None,
                      ending: tuple[str, str] | None = None, keep: bool = False) -> None:
        """Reads the final cost, destroys the activity and ends the agreement. Never raises.
        `ending` is the agreement's (reason, message) as yapapi's task executor gives them
        (("Success", ...), ("Cancelled", ...)); by default "Finished", or "Failure" after `error`.
        With `keep` (a task worker that ended normally), an agreement that may hold a next
        activity goes to the pool instead, while Golem is not leaving and the budget lasts."""
        client = handle.client
        self._live.pop(handle.agreement.id, None)
        self._budget_watch.discard(handle.agreement.id)
        reusable = self._reusable.pop(handle.agreement.id, None)
        cost: Decimal = self.budget.accrued_for(handle.agreement.id)  # the last reading, unless read now
        usage_read = False
        try:  # each call gets a share of what is left when leaving: the agreement's end gets the most
            usage = await self._ending("usage", handle.agreement, client.usage(handle.activity.id), 4)
            cost = (reusable.spent if reusable is not None else Decimal(0)) + money(usage.cost)
            usage_read = True
        except RequestorError as exc:
            log.warning("event=usage_unknown agreement=%s error=%s counted=%s", handle.agreement.id, exc, cost)
        except TimeoutError:
            pass  # said by _ending
        destroyed = False
        try:
            await self._ending("destroy_activity", handle.agreement, client.destroy(handle.activity.id), 3)
            destroyed = True
        except RequestorError as exc:
            log.warning("event=destroy_failed activity=%s error=%s", handle.activity.id, exc)
        except TimeoutError:
            pass
        if (keep and error is None and destroyed and reusable is not None and self._leave_by is None
                and not self.budget.exhausted):
            reusable.spent = cost
            self.budget.accrue(handle.agreement.id, cost)
            self.pool.put(reusable)
            log.debug("event=agreement_pooled agreement=%s spent=%s", handle.agreement.id, cost)
            return
        reason, message = ending or ("Failure" if error is not None else "Finished", "")
        await self._end_agreement(client, handle.agreement, job, reason, cost, message, usage_read=usage_read)

    async def _ending(self, step: str, agreement: events.Agreement, call: Awaitable[T], share: int) -> T:
        """`call`, when Golem is leaving within 1/`share` of the time left for releases (else as it
        is); TimeoutError, said in a warning naming the step, provider and agreement, when that
        is not enough."""
        if self._leave_by is None:
            return await call
        seconds = max(self._leave_by - asyncio.get_running_loop().time(), 0.0) / share
        try:
            async with asyncio.timeout(seconds):
                return await call
        except TimeoutError:
            log_given_up(log, step, seconds, provider=agreement.provider_id, address=agreement.address,
                         agreement=agreement.id)
            raise

    async def _end_agreement(self, client: ProviderClient, agreement: events.Agreement, job: events.Job,
                             reason: str, cost: float | Decimal, message: str = "", usage_read: bool = True) -> None:
        """Ends the agreement, then waits a while for its invoice (requestor.payments accepts it, and
        the budget counts its amount; one still to come is waited for at Golem's end). When neither
        its final usage nor its end reached the provider (it died), nothing is waited for: the
        agreement stays unpaid (counted against the budget at its last reading) and Golem's end
        names it, as yapapi's does."""
        terminated = False
        try:
            await self._ending("terminate_agreement", agreement,
                               client.terminate_agreement(agreement.id, reason, message), 1)
            terminated = True
        except RequestorError as exc:
            log.warning("event=terminate_agreement_failed agreement=%s error=%s", agreement.id, exc)
        except TimeoutError:
            pass
        said = {"message": message, "golem.requestor.code": reason} if message else {"message": reason}
        if not (terminated or usage_read):
            final = self.budget.settle(agreement.id, cost)
            self.payments.forget(agreement.id)
            self.unpaid.add(agreement.id)
            self.emit(events.AgreementTerminated(job=job, agreement=agreement, reason={**said, "cost": str(final)}))
            return
        self.budget.accrue(agreement.id, cost)
        estimate = self.budget.accrued_for(agreement.id)  # the invoice's amount replaces it
        self.emit(events.AgreementTerminated(job=job, agreement=agreement, reason={**said, "cost": str(estimate)}))
        wait = RELEASE_INVOICE_WAIT
        if self._leave_by is not None:
            wait = min(wait, self._leave_by - asyncio.get_running_loop().time())
        await self.payments.ended(agreement.id, wait)
