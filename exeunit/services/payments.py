"""The provider's payment side: it issues debit notes while an agreement runs and an invoice when
it ends, takes the requestor's acceptances, enforces the deadlines, and credits payments it read
on the chain itself (exeunit.domain.payments says what each of these is).

Every change to a document gets the next number of one sequence, kept with the document, so a
requestor that watches its documents (`watch`) and reconnects later, even to a restarted daemon,
asks for what came after the last number it saw and misses nothing. In memory are only the
agreements this daemon still knows, and of each only its latest debit notes (older ones are in
the store): an agreement running for a day at the shortest interval does not grow the daemon.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal

from exeunit import errors
from exeunit.domain.clock import utcnow
from exeunit.domain.market import Agreement, AgreementState
from exeunit.domain.payments import (ChainReader, CreditedPayment, DocumentDraft, DocumentKind, DocumentSealer,
                                     DocumentState, PaymentChange, PaymentDocument, PaymentStore, PaymentsView,
                                     AgreementMoney, PaymentChoice, UsageFigures, amount_of, money_of)
from exeunit.domain.reports import Usage
from exeunit.services.crediting import Crediting

log = logging.getLogger(__name__)

NOTES_IN_MEMORY = 32  # an agreement's latest debit notes kept in memory (all are in the store)
NOTES_LISTED = 256  # GetAgreementPayments lists the latest this many debit notes (the rest stay on disk)
CHANGES_KEPT = 1024  # changes per requestor a watcher can ask for again (GetAgreementPayments has all)
INVOICE_DUE_SECONDS = 24 * 3600.0  # an invoice's payment due without mid-agreement payments (yagna's)


def _duration(seconds: float) -> str:
    """As yagna prints a deadline in its termination messages ("4m", "30s")."""
    return f"{seconds / 60:g}m" if seconds >= 60 and seconds % 60 == 0 else f"{seconds:g}s"


@dataclass
class _Account:
    """What this daemon holds in memory of one agreement's payment."""

    agreement: Agreement
    notes: list[PaymentDocument] = field(default_factory=list)  # the latest NOTES_IN_MEMORY
    notes_issued: int = 0
    invoice: PaymentDocument | None = None
    paid: Decimal = Decimal(0)
    credits: list[CreditedPayment] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)
    last_payable: datetime | None = None
    issuer: asyncio.Task[None] | None = None
    timers: dict[tuple[str, str], asyncio.TimerHandle] = field(default_factory=dict)  # (note, deadline) -> timer

    @property
    def due(self) -> Decimal:
        """What the latest document states the agreement owes."""
        if self.invoice is not None:
            return self.invoice.draft.amount
        return self.notes[-1].draft.amount if self.notes else Decimal(0)

    @property
    def accepted(self) -> Decimal:
        documents = [*self.notes, *([self.invoice] if self.invoice else [])]
        amounts = [d.draft.amount for d in documents if d.state in (DocumentState.ACCEPTED, DocumentState.SETTLED)]
        return max(amounts, default=Decimal(0))


class Payments:
    """Debit notes, invoices, acceptances and payments of one provider's agreements."""

    def __init__(self, sealer: DocumentSealer, store: PaymentStore | None, chain: ChainReader | None,
                 usage_of: Callable[[Agreement], Awaitable[Usage]],
                 terminate: Callable[[Agreement, str, str], Awaitable[None]]) -> None:
        self._sealer = sealer
        self._store = store
        self._usage_of = usage_of
        self._terminate = terminate
        self._accounts: dict[str, _Account] = {}
        self._by_document: dict[str, PaymentDocument] = {}  # documents of the accounts in memory
        self._sequence = store.last_payment_sequence() if store is not None else 0
        self._changes: dict[str, list[PaymentChange]] = {}  # no store: each requestor's, for watchers
        self._changed = asyncio.Condition()
        self._tasks: set[asyncio.Task[None]] = set()
        self._crediting = Crediting(chain, store, self._credited,
                                    lambda account: account.agreement.agreement_id in self._accounts, self._spawn)

    # Agreements coming and going

    def agreement_started(self, agreement: Agreement) -> None:
        """Starts issuing its debit notes (also for an agreement a restarted daemon took up)."""
        account = self._accounts.get(agreement.agreement_id)
        if account is None:
            account = self._accounts[agreement.agreement_id] = _Account(agreement)
            self._load(account)
        if agreement.state is AgreementState.APPROVED and account.issuer is None:
            account.issuer = asyncio.get_running_loop().create_task(self._issue_notes(account))
        for document in account.notes:
            self._arm(account, document, restarted=True)

    def _load(self, account: _Account) -> None:
        """What the store has of an agreement a previous daemon on this home served."""
        if self._store is None:
            return
        for sequence, document in self._store.payment_documents(account.agreement.agreement_id, NOTES_IN_MEMORY):
            self._remember(account, document)
            self._publish(account, PaymentChange(sequence, account.agreement.agreement_id, document=document))
        account.credits = self._store.credited_payments(account.agreement.agreement_id)
        account.paid = sum((c.amount for c in account.credits), Decimal(0))

    def _remember(self, account: _Account, document: PaymentDocument) -> None:
        self._by_document[document.document_id] = document
        if document.draft.kind is DocumentKind.INVOICE:
            account.invoice = document
            return
        account.notes.append(document)
        account.notes_issued = max(account.notes_issued, document.draft.sequence)
        if document.draft.payment_due is not None:
            account.last_payable = document.draft.issued
        while len(account.notes) > NOTES_IN_MEMORY:
            self._by_document.pop(account.notes.pop(0).document_id, None)

    async def agreement_ended(self, agreement: Agreement) -> None:
        """Issues its invoice (once) with what it used in all."""
        account = self._accounts.get(agreement.agreement_id)
        if account is None:
            account = self._accounts[agreement.agreement_id] = _Account(agreement)
            self._load(account)
        self._stop(account)
        if account.invoice is not None:
            return
        usage = await self._usage_of(agreement)
        now = utcnow()
        due_in = agreement.payment.payment_timeout_seconds or INVOICE_DUE_SECONDS
        draft = DocumentDraft(
            kind=DocumentKind.INVOICE, document_id=uuid.uuid4().hex, agreement_id=agreement.agreement_id,
            requestor_id=agreement.requestor_id, amount=max(amount_of(usage.cost), account.due),
            usage=UsageFigures(usage.cpu_seconds, usage.duration_seconds, dict(usage.counters)), issued=now,
            payment=agreement.payment, activity_ids=tuple(agreement.activity_ids),
            payment_due=now + timedelta(seconds=due_in),
        )
        invoice = self._issue(account, draft)
        log.info("event=invoice_issued agreement=%s invoice=%s amount=%s", agreement.agreement_id,
                 invoice.document_id, draft.amount)

    def forget(self, agreement_id: str) -> None:
        """Drops an ended agreement from memory (the store keeps its documents)."""
        account = self._accounts.pop(agreement_id, None)
        if account is not None:
            self._stop(account)
            for document in [*account.notes, *([account.invoice] if account.invoice else [])]:
                self._by_document.pop(document.document_id, None)
            requestor_id = account.agreement.requestor_id
            if not any(a.agreement.requestor_id == requestor_id for a in self._accounts.values()):
                self._changes.pop(requestor_id, None)  # a requestor gone from here leaves nothing behind
                self._spawn(self._notify())  # and its watchers end

    def _stop(self, account: _Account) -> None:
        if account.issuer is not None:
            account.issuer.cancel()
            account.issuer = None
        for timer in account.timers.values():
            timer.cancel()
        account.timers.clear()

    async def close(self) -> None:
        for account in self._accounts.values():
            self._stop(account)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # Issuing

    async def _issue_notes(self, account: _Account) -> None:
        """A debit note every interval, counted from the agreement's start, while it is approved."""
        agreement = account.agreement
        interval = agreement.payment.debit_note_interval_seconds
        try:
            while agreement.state is AgreementState.APPROVED:
                due = agreement.created + timedelta(seconds=interval * (account.notes_issued + 1))
                if account.notes:  # after a restart, one note for the time it was down, not a burst
                    due = max(due, account.notes[-1].draft.issued + timedelta(seconds=interval))
                await asyncio.sleep(max((due - utcnow()).total_seconds(), 0.0))
                if agreement.state is not AgreementState.APPROVED:
                    return
                await self._issue_note(account)
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - a failed note must not end the agreement's billing silently
            log.exception("event=debit_notes_failed agreement=%s", agreement.agreement_id)

    async def _issue_note(self, account: _Account) -> None:
        agreement = account.agreement
        usage = await self._usage_of(agreement)
        now = utcnow()
        payment_due = None
        timeout = agreement.payment.payment_timeout_seconds
        if timeout and now >= (account.last_payable or agreement.created) + timedelta(seconds=timeout):
            payment_due = now + timedelta(seconds=timeout)  # a payable note (mid-agreement payments)
        live = [a for a in agreement.activity_ids if a not in agreement.spent.billed][-1:]
        previous = account.notes[-1].document_id if account.notes else ""
        draft = DocumentDraft(
            kind=DocumentKind.DEBIT_NOTE, document_id=uuid.uuid4().hex, agreement_id=agreement.agreement_id,
            requestor_id=agreement.requestor_id, amount=max(amount_of(usage.cost), account.due),
            usage=UsageFigures(usage.cpu_seconds, usage.duration_seconds, dict(usage.counters)), issued=now,
            payment=agreement.payment, activity_ids=tuple(live), sequence=account.notes_issued + 1,
            previous_id=previous, payment_due=payment_due,
        )
        note = self._issue(account, draft)
        log.info("event=debit_note_issued agreement=%s note=%s sequence=%d amount=%s payable=%s",
                 agreement.agreement_id, note.document_id, draft.sequence, draft.amount, payment_due is not None)
        self._arm(account, note)

    def _issue(self, account: _Account, draft: DocumentDraft) -> PaymentDocument:
        document = PaymentDocument(draft, self._sealer.seal(draft))
        self._remember(account, document)
        self._changed_document(account, document)
        return document

    def _arm(self, account: _Account, note: PaymentDocument, restarted: bool = False) -> None:
        """The note's deadlines: accepted by its accept deadline, and paid by its due time (after a
        restart of the daemon, a whole accept timeout from now: nobody could accept meanwhile)."""
        if note.state is not DocumentState.ISSUED and note.draft.payment_due is None:
            return
        now = utcnow()
        if note.state is DocumentState.ISSUED:
            delay = max((note.accept_deadline - now).total_seconds(), 0.0)
            if restarted:
                delay = max(delay, note.draft.payment.accept_timeout_seconds)
            self._timer(account, note, "accept", delay, self._accept_deadline)
        if note.draft.payment_due is not None:
            delay = max((note.draft.payment_due - now).total_seconds(), 0.0)
            if restarted:  # a payment made while the daemon was down is named again by its requestor
                delay = max(delay, note.draft.payment.payment_timeout_seconds)
            self._timer(account, note, "payment", delay, self._payment_deadline)

    def _timer(self, account: _Account, note: PaymentDocument, which: str, delay: float,
               deadline: Callable[[_Account, PaymentDocument], Awaitable[None]]) -> None:
        """A deadline of the note, forgotten once it fired (a fired timer must not keep the note)."""
        key = (note.document_id, which)

        def fire() -> None:
            account.timers.pop(key, None)
            self._spawn(deadline(account, note))

        account.timers[key] = asyncio.get_running_loop().call_later(delay, fire)

    async def _accept_deadline(self, account: _Account, note: PaymentDocument) -> None:
        if note.state is not DocumentState.ISSUED or account.agreement.state is not AgreementState.APPROVED:
            return
        timeout = note.draft.payment.accept_timeout_seconds
        log.warning("event=debit_note_deadline agreement=%s note=%s", account.agreement.agreement_id, note.document_id)
        await self._terminate(account.agreement, "DebitNotesDeadline",
                              f"Requestor isn't accepting DebitNotes in time ({_duration(timeout)})")

    async def _payment_deadline(self, account: _Account, note: PaymentDocument) -> None:
        if account.paid >= note.draft.amount or account.agreement.state is not AgreementState.APPROVED:
            return
        timeout = note.draft.payment.payment_timeout_seconds
        log.warning("event=debit_note_unpaid agreement=%s note=%s due=%s paid=%s", account.agreement.agreement_id,
                    note.document_id, note.draft.amount, account.paid)
        await self._terminate(account.agreement, "DebitNoteNotPaid",
                              f"Requestor didn't pay for DebitNote in time ({_duration(timeout)}): "
                              f"{note.draft.amount} due, {account.paid} paid")

    def _spawn(self, coroutine: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)  # type: ignore[arg-type]
        task.add_done_callback(self._tasks.discard)  # type: ignore[arg-type]

    # What changed, for watchers

    def _changed_document(self, account: _Account, document: PaymentDocument) -> None:
        self._sequence += 1
        if self._store is not None:
            self._store.put_payment_document(document, self._sequence)
        self._publish(account, PaymentChange(self._sequence, account.agreement.agreement_id, document=document))

    def _publish(self, account: _Account, change: PaymentChange) -> None:
        changes = self._changes.setdefault(account.agreement.requestor_id, [])
        changes.append(change)
        changes.sort(key=lambda c: c.sequence)  # those a restart loads come in per agreement
        del changes[:-CHANGES_KEPT]  # watchers that fell further behind read the store's view (GetAgreementPayments)
        self._spawn(self._notify())

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def watch(self, requestor_id: str, after_sequence: int) -> AsyncIterator[PaymentChange]:
        """The requestor's changes after `after_sequence`, then new ones as they come. Only for a
        requestor with an agreement here: a key costs nothing, an agreement holds capacity."""
        if not any(a.agreement.requestor_id == requestor_id for a in self._accounts.values()):
            raise errors.FailedPrecondition("no agreement of this requestor is known here: nothing to watch")
        seen = after_sequence
        while True:
            for change in list(self._changes.get(requestor_id, ())):
                if change.sequence > seen:
                    seen = change.sequence
                    yield change
            async with self._changed:
                if not any(c.sequence > seen for c in self._changes.get(requestor_id, ())):
                    await self._changed.wait()
            if not any(a.agreement.requestor_id == requestor_id for a in self._accounts.values()):
                return  # its agreements are forgotten here: nothing more will come

    def agreement_payments(self, requestor_id: str, agreement_id: str) -> PaymentsView:
        account = self._owned(requestor_id, agreement_id)
        notes = list(account.notes)  # the latest, in memory; a longer agreement's earlier ones are on disk
        if self._store is not None and account.notes_issued > len(notes):
            stored = self._store.payment_documents(agreement_id, NOTES_LISTED)
            notes = [d for _, d in stored if d.draft.kind is DocumentKind.DEBIT_NOTE]
        return PaymentsView(agreement_id, notes, account.invoice, account.accepted, account.paid,
                            list(account.credits), list(account.pending))

    def money(self) -> list[AgreementMoney]:
        """Each known agreement's figures, for the operator (exeunit ps, metrics)."""
        now = utcnow()
        return [money_of(agreement_id, [*account.notes, *([account.invoice] if account.invoice else [])],
                         account.paid, now) for agreement_id, account in list(self._accounts.items())]

    def _owned(self, requestor_id: str, agreement_id: str) -> _Account:
        account = self._accounts.get(agreement_id)
        if account is None:
            raise errors.NotFound(f"agreement {agreement_id!r} has no payments here (unknown, or forgotten)")
        if account.agreement.requestor_id != requestor_id:
            raise errors.PermissionDenied(f"agreement {agreement_id} belongs to another requestor")
        return account

    def _document(self, requestor_id: str, document_id: str, kind: DocumentKind) -> tuple[_Account, PaymentDocument]:
        document = self._by_document.get(document_id)
        if document is None or document.draft.kind is not kind or document.draft.requestor_id != requestor_id:
            raise errors.NotFound(f"{kind.value.replace('_', ' ')} {document_id!r} not found (unknown, another "
                                  "requestor's, or superseded by a later one: accept the latest)")
        return self._owned(requestor_id, document.draft.agreement_id), document

    # The requestor's answers

    async def accept(self, requestor_id: str, document_id: str, kind: DocumentKind, amount: str, signature: bytes,
                     requestor_key: bytes) -> DocumentState:
        """Takes the requestor's signed acceptance of exactly the document's amount; again: no change."""
        account, document = self._document(requestor_id, document_id, kind)
        if document.state in (DocumentState.ACCEPTED, DocumentState.SETTLED):
            return document.state
        if document.state is DocumentState.REJECTED:
            raise errors.FailedPrecondition(f"{kind.value} {document_id} was rejected; it cannot be accepted now")
        stated = document.draft.amount
        if Decimal(amount) != stated:  # the skin parsed it (exeunit.v1.payments.parse_amount)
            raise errors.InvalidArgument(f"{kind.value} {document_id} is for {stated:f}: accept exactly that amount")
        if not self._sealer.acceptance_valid(document.sealed, amount, signature, requestor_key, requestor_id):
            raise errors.InvalidArgument("the acceptance's signature does not verify: sign the acceptance message "
                                         "(exeunit/v1/payments.py) with the agreement's requestor key")
        document.acceptance_signature = signature
        timer = account.timers.pop((document_id, "accept"), None)
        if timer is not None:
            timer.cancel()
        document.state = self._settled_or(account, document, DocumentState.ACCEPTED)
        self._changed_document(account, document)
        log.info("event=payment_document_accepted agreement=%s %s=%s amount=%s", account.agreement.agreement_id,
                 kind.value, document_id, stated)
        return document.state

    def _settled_or(self, account: _Account, document: PaymentDocument, state: DocumentState) -> DocumentState:
        """SETTLED for an accepted document paid in full (or with no platform to pay on)."""
        if not document.draft.payment.platform or account.paid >= document.draft.amount:
            return DocumentState.SETTLED
        return state

    async def reject(self, requestor_id: str, document_id: str, kind: DocumentKind, reason: str) -> DocumentState:
        account, document = self._document(requestor_id, document_id, kind)
        if document.state is not DocumentState.ISSUED:
            return document.state
        document.state = DocumentState.REJECTED
        document.rejection_reason = reason
        self._changed_document(account, document)
        log.warning("event=payment_document_rejected agreement=%s %s=%s reason=%r", account.agreement.agreement_id,
                    kind.value, document_id, reason)
        if kind is DocumentKind.DEBIT_NOTE:
            await self._terminate(account.agreement, "DebitNoteRejected",
                                  f"Requestor rejected the debit note: {reason}")
        return document.state

    # Payments on the chain (exeunit.services.crediting)

    def payer_refusal(self, requestor_id: str, provider_id: str, choice: PaymentChoice | None) -> str | None:
        return self._crediting.payer_refusal(requestor_id, provider_id, choice)

    async def notify_payment(self, requestor_id: str, agreement_id: str, transaction_hash: str) -> tuple[bool, Decimal]:
        """Credits the transaction once the chain says it pays this agreement (read again in the
        background until then); returns whether it is credited, and what the agreement has been paid."""
        account = self._owned(requestor_id, agreement_id)
        credited = await self._crediting.notify(requestor_id, account, transaction_hash.lower())
        return credited, account.paid

    def _credited(self, account: _Account, credit: CreditedPayment) -> None:
        """Tells watchers of a credit (its number kept with it), and settles what it paid in full."""
        self._sequence += 1
        if self._store is not None:
            self._store.number_credit(credit.transaction_hash, self._sequence)
        self._publish(account, PaymentChange(self._sequence, account.agreement.agreement_id, credit=credit))
        for document in [*account.notes, *([account.invoice] if account.invoice else [])]:
            if document.state is DocumentState.ACCEPTED and account.paid >= document.draft.amount:
                document.state = DocumentState.SETTLED
                self._changed_document(account, document)
