"""Paying providers: the debit notes and invoices of this run's agreements, checked and accepted.

One watcher per provider while it has agreements of this run (requestor.client.payments'
WatchPayments stream, taken up after the last sequence it saw when it drops). Each document of a
known agreement, when first seen as issued:

- a debit note: DebitNoteReceived; it must verify (PaymentCalls.check), come from the agreement's
  provider (on its watcher, its parties' provider id the agreement's; on a chain, naming the payee
  the offer bound to the provider, as the agreement must), state no less than the agreement's
  previous note, no more than the agreement can cost by now (`cost_bound`: the offer's prices at
  the cpu threads granted, no more than the demand asked or the offer's floor, every thread busy
  and every other counter growing by one a second, since the agreement came back to the requestor,
  plus BOUND_SLACK_SECONDS) and no more than the budget has left beside the other live agreements
  (`remaining` plus this agreement's own accrued cost). Too many notes for the interval agreed
  (yapapi's rule: `duration + DEBIT_NOTE_INTERVAL_GRACE_PERIOD < (notes - 1) * interval`, counted
  per agreement whatever activity a note names, the duration from the agreement's start) ends the
  agreement ("TooManyDebitNotes"). Otherwise it is accepted for exactly its amount: DebitNoteAccepted.
- an invoice: InvoiceReceived; it must pass the same checks but the interval, and state no less
  than the last accepted note; it is accepted: InvoiceAccepted, and the budget counts its amount once the
  engine has ended the agreement.

A document that fails a check: PaymentFailed (with why), not accepted; one above what the
agreement can cost is also rejected with the reason (the provider ends the agreement). Any other
failure is left unanswered, as yapapi leaves it, and the provider's accept deadline decides.

A document id is handled once per agreement (ids longer than MAX_ID are refused when read), and
forgotten with its agreement.

With a Settlement (a chain configured: requestor.settlement), an accepted payable debit note and
an accepted invoice of an agreement made on its platform are also paid, in the background (a
payable note only with mid-agreement payments agreed, at most once per payment timeout less
PAYABLE_SLACK_SECONDS, for no less than MIN_NOTE_TRANSFER: a later one covers it); an
ended agreement counts as paid (and Golem's end stops waiting for it) once its invoice's payment
is credited, and stays unpaid when that payment fails or is still under way at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal

from requestor import events
from requestor.budget import Budget
from requestor.client import ProviderClient
from requestor.client.payments import PaymentCalls
from requestor.errors import RequestorError
from requestor.model import AgreementInfo, Offer, Pricing
from requestor.payments_model import DebitNote, Document, Invoice, PaymentDocumentError, PaymentUpdate, cost_bound
from requestor.settlement import Settlement
from requestor.strategy import DEBIT_NOTE_INTERVAL_GRACE_PERIOD

log = logging.getLogger(__name__)
engine_log = logging.getLogger("requestor.engine")  # yapapi logs the notes' counts, the wait, on its engine's

# A payable note's transfer is made at most once per payment timeout less this slack (a provider
# issues them a payment timeout apart; its clock and the network's delays differ from ours), and
# not for less than MIN_NOTE_TRANSFER tokens: a provider may not spend the requestor's gas.
PAYABLE_SLACK_SECONDS = 5.0
MIN_NOTE_TRANSFER = Decimal("0.0001")
INVOICE_WAIT_SECONDS = 30.0  # yapapi's wait for invoices at the end
# An invoice comes as its agreement ends, often before the engine has heard the end it asked for:
# it waits this long for the engine's AgreementTerminated, so that the events come in yapapi's order.
END_BEFORE_INVOICE_SECONDS = 5.0
RETRY_SECONDS = 1.0  # between two watches of a provider whose stream failed


@dataclass
class _Agreement:
    """One agreement of this run, as its payment goes."""

    client: ProviderClient
    agreement: events.Agreement
    job: events.Job
    pricing: Pricing
    cpu_threads: int
    started: datetime
    interval: float
    info: AgreementInfo | None = None  # as its provider stated it: where it is paid (requestor.settlement)
    last_note: Decimal = Decimal(0)
    accepted: Decimal = Decimal(0)
    notes: int = 0  # debit notes counted for the interval rule: per agreement, whatever activity a note names
    seen: set[str] = field(default_factory=set)  # its documents handled (ids of at most MAX_ID characters)
    last_payment: float | None = None  # the loop's time a payable note of it was last paid
    payee: str = ""  # the address its offer bound to the provider on its platform (PaymentTerms.payee_for)
    ended: bool = False  # by the engine: its invoice settles the budget
    outcome: Decimal | None = None  # the invoice's amount, accepted
    failed: bool = False  # its invoice came and was not accepted
    paying: asyncio.Task[bool] | None = None  # its invoice's payment on the chain
    done: asyncio.Event = field(default_factory=asyncio.Event)
    ended_here: asyncio.Event = field(default_factory=asyncio.Event)  # set with `ended`

    @property
    def unpaid(self) -> bool:
        """Its invoice is not accepted, or its payment failed or is still under way."""
        if self.outcome is None:
            return True
        paying = self.paying
        return paying is not None and (not paying.done() or paying.cancelled() or not paying.result())


@dataclass
class _Watcher:
    calls: PaymentCalls
    after: int = 0  # the last sequence seen
    task: asyncio.Task[None] | None = None


class Payments:
    """The payment side of one Golem run: its agreements' documents, checked and answered."""

    def __init__(self, budget: Budget, emit: Callable[[events.Event], None],
                 settlement: Settlement | None = None) -> None:
        self.budget = budget
        self.emit = emit
        self.settlement = settlement
        self.unpaid: set[str] = set()  # agreements ended whose invoice was not accepted
        self._agreements: dict[str, _Agreement] = {}
        self._watchers: dict[int, _Watcher] = {}  # by id() of the client

    def track(self, client: ProviderClient, agreement: events.Agreement, job: events.Job, offer: Offer,
              info: AgreementInfo, asked_threads: int = 0, received: datetime | None = None) -> None:
        """From now on the agreement's documents are answered; its provider is watched. What it can
        cost rests on the requestor's facts, not the provider's word: the time the agreement came
        back to us (`received`; for a resumed one, with no such time here, its stated creation, never
        later than now), and the threads granted no more than `asked_threads` or the
        offer's floor (`activity_cpu_threads`), whichever is higher."""
        now = datetime.now(timezone.utc)
        started = received or min(info.created or now, now)
        threads = max(min(info.cpu_threads, max(asked_threads, offer.activity_cpu_threads, 1)), 1)
        payee = offer.payment.payee_for(info.platform) if offer.payment is not None and info.platform else ""
        self._agreements[agreement.id] = _Agreement(client, agreement, job, offer.pricing, threads, started,
                                                    info.debit_note_interval, info, payee=payee)
        watcher = self._watchers.setdefault(id(client), _Watcher(PaymentCalls(client)))
        if watcher.task is None or watcher.task.done():
            watcher.task = asyncio.get_running_loop().create_task(self._watch(watcher))

    def forget(self, agreement_id: str) -> None:
        """No longer answered here (suspended: a later run takes it up), nor counted."""
        tracked = self._agreements.pop(agreement_id, None)
        if tracked is not None:
            tracked.done.set()
            self._stop_idle(tracked.client)

    async def ended(self, agreement_id: str, wait: float) -> bool:
        """The engine ended the agreement: once its invoice is handled, the budget settles it (with
        the invoice's amount when accepted). Waits up to `wait` seconds for that; False when it is
        still to come."""
        tracked = self._agreements.get(agreement_id)
        if tracked is None:  # not watched (or settled already: then nothing is left to count)
            self.budget.settle(agreement_id, 0)
            return True
        tracked.ended = True
        tracked.ended_here.set()
        if (tracked.outcome is not None and not self._paying(tracked)) or tracked.failed:
            self._settle(tracked)
            return True
        try:
            await asyncio.wait_for(tracked.done.wait(), max(wait, 0.0))
        except TimeoutError:
            return False
        return True

    async def close(self, wait: float) -> set[str]:
        """Waits up to `wait` seconds (at most INVOICE_WAIT_SECONDS) for the invoices of ended
        agreements still to come, settles the rest at their last reading, and stops watching.
        Returns the agreements left unpaid."""
        loop = asyncio.get_running_loop()
        until = loop.time() + max(min(wait, INVOICE_WAIT_SECONDS), 0.0)
        pending = [t for t in self._agreements.values() if t.ended]
        if pending:
            engine_log.info("%d agreement(s) still unpaid, waiting for invoices...", len(pending))
            waits = [asyncio.ensure_future(t.done.wait()) for t in pending]
            _, late = await asyncio.wait(waits, timeout=max(until - loop.time(), 0.0))
            for future in late:
                future.cancel()
        if self.settlement is not None:  # the debit notes' payments still under way, with the time left
            await self.settlement.close(until - loop.time())
        for tracked in [t for t in self._agreements.values() if t.ended]:
            tracked.failed = True
            self._settle(tracked)
        for watcher in self._watchers.values():
            if watcher.task is not None:
                watcher.task.cancel()
        await asyncio.gather(*(w.task for w in self._watchers.values() if w.task), return_exceptions=True)
        self._watchers.clear()
        return self.unpaid

    def _paid_here(self, tracked: _Agreement) -> bool:
        """The agreement is paid on the settlement's chain (not only accounted)."""
        return self.settlement is not None and tracked.info is not None and self.settlement.pays(tracked.info)

    def _paying(self, tracked: _Agreement) -> bool:
        return tracked.paying is not None and not tracked.paying.done()

    def _settle(self, tracked: _Agreement) -> None:
        agreement_id = tracked.agreement.id
        if self._agreements.get(agreement_id) is not tracked:
            return  # settled already
        if tracked.outcome is not None:
            self.budget.settle_invoiced(agreement_id, tracked.outcome)
        else:
            self.budget.settle(agreement_id, 0)  # its last reading
        if tracked.unpaid:
            self.unpaid.add(agreement_id)
        self._agreements.pop(agreement_id, None)
        tracked.done.set()
        self._stop_idle(tracked.client)

    def _stop_idle(self, client: ProviderClient) -> None:
        if not any(t.client is client for t in self._agreements.values()):
            watcher = self._watchers.get(id(client))
            if watcher is not None and watcher.task is not None and watcher.task is not asyncio.current_task():
                watcher.task.cancel()
                watcher.task = None

    def _watching(self, client: ProviderClient) -> bool:
        return any(t.client is client for t in self._agreements.values())

    async def _watch(self, watcher: _Watcher) -> None:
        client = watcher.calls.client
        while self._watching(client):
            try:
                async for update in watcher.calls.watch_payments(watcher.after):
                    watcher.after = update.sequence
                    await self._handle(watcher, update)
                    if not self._watching(client):
                        return
            except RequestorError as exc:
                log.debug("event=payments_watch_failed provider=%s after=%d error=%s", client.address, watcher.after,
                          exc)
            await asyncio.sleep(RETRY_SECONDS)

    async def _handle(self, watcher: _Watcher, update: PaymentUpdate) -> None:
        tracked = self._agreements.get(update.agreement_id)
        if tracked is None or update.state != "Issued" or update.paid is not None:
            return  # another run's, an answer of ours coming back, or a payment credited
        if tracked.client is not watcher.calls.client:  # another provider naming this agreement
            log.warning("event=payment_document_foreign agreement=%s provider=%s", tracked.agreement.id,
                        watcher.calls.client.address)
            return
        if update.document is not None:  # its id is at most MAX_ID long (requestor.client.payments.parse)
            if update.document.document_id in tracked.seen:
                return
            tracked.seen.add(update.document.document_id)
        if update.error is None and isinstance(update.document, Invoice):
            await self._invoice(watcher.calls, tracked, update)
        else:
            await self._debit_note(watcher.calls, tracked, update)

    def _failed(self, tracked: _Agreement, exc: BaseException) -> None:
        self.emit(events.PaymentFailed(job=tracked.job, agreement=tracked.agreement,
                                       exc_info=(type(exc), exc, exc.__traceback__)))

    async def _debit_note(self, calls: PaymentCalls, tracked: _Agreement, update: PaymentUpdate) -> None:
        note = update.document
        if isinstance(note, DebitNote):
            self.emit(events.DebitNoteReceived(job=tracked.job, agreement=tracked.agreement, debit_note=note))
        try:
            checked = self._check(calls, tracked, update)
            assert isinstance(checked, DebitNote)
            if self._too_many(tracked, checked):
                await self._terminate(tracked, checked)
                return
            self._amount_fits(tracked, checked, tracked.last_note, "the previous debit note's")
            self._budget_fits(tracked, checked)
            await calls.accept(checked)
        except (RequestorError, AssertionError) as exc:
            await self._refuse(calls, tracked, note, exc)
            return
        tracked.last_note = checked.total_amount_due
        tracked.accepted = max(tracked.accepted, checked.total_amount_due)
        self.budget.accrue(tracked.agreement.id, checked.total_amount_due)
        self.emit(events.DebitNoteAccepted(job=tracked.job, agreement=tracked.agreement, debit_note=checked))
        if checked.payable and self._paid_here(tracked) and self._payable_now(tracked, checked):
            assert self.settlement is not None and tracked.info is not None
            self.settlement.pay(calls, tracked.info, "debit-note", checked.debit_note_id, checked.total_amount_due,
                                lambda exc: self._failed(tracked, exc), least=MIN_NOTE_TRANSFER, payee=tracked.payee)

    def _payable_now(self, tracked: _Agreement, note: DebitNote) -> bool:
        """Whether a payable note is paid: only with mid-agreement payments agreed, and at most once
        per payment timeout (less PAYABLE_SLACK_SECONDS) as the requestor's clock counts; one
        coming sooner is accepted, not paid (a later note's or the invoice's payment covers it)."""
        timeout = tracked.info.payment_timeout if tracked.info is not None else 0.0
        now = asyncio.get_running_loop().time()
        last = tracked.last_payment
        if timeout <= 0 or (last is not None and now - last < timeout - min(PAYABLE_SLACK_SECONDS, timeout / 2)):
            log.warning("event=payable_note_not_paid agreement=%s note=%s payment_timeout=%s reason=%r",
                        tracked.agreement.id, note.debit_note_id, timeout,
                        "no mid-agreement payments agreed" if timeout <= 0 else "sooner than the payment timeout")
            return False
        tracked.last_payment = now
        return True

    def _check(self, calls: PaymentCalls, tracked: _Agreement, update: PaymentUpdate) -> Document:
        """The document once it counts (PaymentCalls.check) and comes from the agreement's provider."""
        document = calls.check(update)
        if document.parties.provider_id.lower() != tracked.agreement.provider_id.lower():
            raise PaymentDocumentError(f"{document.document_id} is {document.parties.provider_id}'s, not the "
                                       f"agreement's provider {tracked.agreement.provider_id}")
        if tracked.info is not None and tracked.info.platform:  # paid on a chain: to the address bound in the offer
            named = {tracked.info.payee_address.lower(), document.parties.payee_address.lower()}
            if not tracked.payee or named != {tracked.payee}:
                raise PaymentDocumentError(f"{document.document_id} and its agreement name payee "
                                           f"{' and '.join(sorted(named))}, not the one the offer bound to the "
                                           f"provider ({tracked.payee or 'none verified'})")
        return document

    async def _invoice(self, calls: PaymentCalls, tracked: _Agreement, update: PaymentUpdate) -> None:
        invoice = update.document
        assert isinstance(invoice, Invoice)
        if not tracked.ended:  # AgreementTerminated first, as yapapi has it (bounded: the engine may never end it)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(tracked.ended_here.wait(), END_BEFORE_INVOICE_SECONDS)
        self.emit(events.InvoiceReceived(job=tracked.job, agreement=tracked.agreement, invoice=invoice))
        try:
            checked = self._check(calls, tracked, update)
            self._amount_fits(tracked, checked, tracked.accepted, "the debit notes accepted")
            self._budget_fits(tracked, checked)
            await calls.accept(checked)
        except RequestorError as exc:
            await self._refuse(calls, tracked, invoice, exc)
            tracked.failed = True
        else:
            tracked.outcome = invoice.amount
            self.emit(events.InvoiceAccepted(job=tracked.job, agreement=tracked.agreement, invoice=invoice,
                                             amount=invoice.amount))
            if self._paid_here(tracked):
                assert self.settlement is not None and tracked.info is not None
                tracked.paying = self.settlement.pay(calls, tracked.info, "invoice", invoice.invoice_id,
                                                     invoice.amount, lambda exc: self._failed(tracked, exc),
                                                     payee=tracked.payee)
                tracked.paying.add_done_callback(lambda _: self._settle(tracked) if tracked.ended else None)
                return
        if tracked.ended:
            self._settle(tracked)

    def _amount_fits(self, tracked: _Agreement, document: Document, least: Decimal, what: str) -> None:
        """PaymentDocumentError unless `least` <= its amount <= what the agreement can cost by now."""
        kind = "debit note" if isinstance(document, DebitNote) else "invoice"
        amount = document.total_amount_due if isinstance(document, DebitNote) else document.amount
        if amount < least:
            raise PaymentDocumentError(f"{kind} {document.document_id} states {document.amount_text}, less than "
                                       f"{what} ({least})")
        seconds = (datetime.now(timezone.utc) - tracked.started).total_seconds()
        bound = cost_bound(tracked.pricing, tracked.cpu_threads, seconds)
        if amount > bound:
            raise PaymentDocumentError(f"{kind} {document.document_id} states {document.amount_text}, more than the "
                                       f"agreement can cost after {seconds:.0f}s ({bound.normalize()})", reject=True)

    def _budget_fits(self, tracked: _Agreement, document: Document) -> None:
        """PaymentDocumentError unless its amount fits what the budget has left for the agreement."""
        remaining = self.budget.remaining + self.budget.accrued_for(tracked.agreement.id)
        if document.amount > remaining:
            kind = "debit note" if isinstance(document, DebitNote) else "invoice"
            raise PaymentDocumentError(f"{kind} {document.document_id} states {document.amount_text}, more than the "
                                       f"budget has left ({remaining})")

    async def _refuse(self, calls: PaymentCalls, tracked: _Agreement, document: Document | None,
                      exc: BaseException) -> None:
        self._failed(tracked, exc)
        if isinstance(exc, PaymentDocumentError) and exc.reject and document is not None:
            try:
                await calls.reject(document, str(exc))
            except RequestorError as error:
                log.warning("event=payment_reject_failed agreement=%s document=%s error=%s", tracked.agreement.id,
                            document.document_id, error)

    def _too_many(self, tracked: _Agreement, note: DebitNote) -> bool:
        """yapapi's check of the notes' frequency, logged as its engine logs it."""
        if tracked.interval <= 0:
            return False
        tracked.notes += 1
        count = tracked.notes
        duration = (datetime.now(timezone.utc) - tracked.started).total_seconds()
        engine_log.debug("Debit notes interval: %ss", round(tracked.interval))
        engine_log.debug(f"Debit notes for activity {note.activity_id}: {count} notes/{duration}s")
        return duration + DEBIT_NOTE_INTERVAL_GRACE_PERIOD < (count - 1) * tracked.interval

    async def _terminate(self, tracked: _Agreement, note: DebitNote) -> None:
        message = f"Too many debit notes received: {note.sequence} in {tracked.interval:g}s intervals"
        self._failed(tracked, PaymentDocumentError(f"debit note {note.debit_note_id}: {message}"))
        try:
            await tracked.client.terminate_agreement(tracked.agreement.id, "TooManyDebitNotes", message)
        except RequestorError as exc:
            log.warning("event=terminate_agreement_failed agreement=%s error=%s", tracked.agreement.id, exc)
