"""The requestor against a provider that lies in its payment documents (issue 29, the attacker's
review: H2, M9, M11, L3, L5): documents sealed as a provider seals them, with a key of the test's,
handled by requestor.payments without a daemon."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from exeunit.api.payments import ProtoSealer, debit_note_record, invoice_record
from exeunit.domain.payments import AgreedPayment, DocumentDraft, DocumentKind, PaymentDocument, UsageFigures
from exeunit.v1 import payment_pb2 as pay
from exeunit.v1.identity import node_id_of
from requestor import events
from requestor.budget import Budget
from requestor.client.identity import RequestorIdentity
from requestor.model import Agreement, AgreementInfo, Job, Offer, Pricing
from requestor.payments import Payments, _Agreement, _Watcher
from tests.test_payments_requestor import _Calls, _Client

NOTE, INVOICE = DocumentKind.DEBIT_NOTE, DocumentKind.INVOICE
OFFER = Offer("127.0.0.1:1", "0xprovider", "p", "public", "docker-vm", 4, 1, 1, 4, 1, 1,
              Pricing(0.0, 0.001, 0.0, "GLM"), (), False, (), activity_cpu_threads=1)


class Lying:
    """One provider (a key of ours) and the requestor's Payments answering its documents."""

    def __init__(self, budget: Decimal = Decimal(10)) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.provider_id = node_id_of(self.key.public_key())
        self.identity = RequestorIdentity.ephemeral()
        self.client = _Client(self.provider_id, self.identity)
        self.calls = _Calls(self.client)  # type: ignore[arg-type]
        self.events: list[events.Event] = []
        self.budget = Budget(budget)
        self.payments = Payments(self.budget, self.events.append)
        self.watcher = _Watcher(self.calls)
        self.sequence = 0
        self.job = Job("1", None, datetime.now(timezone.utc))

    def agree(self, agreement_id: str = "agreement-1", *, started: datetime | None = None, rate: float = 0.001,
              threads: int = 1, interval: float = 0.0) -> _Agreement:
        agreement = Agreement(agreement_id, self.provider_id, "p", self.client.address)
        tracked = _Agreement(self.client, agreement, self.job, Pricing(0.0, rate, 0.0, "GLM"), threads,  # type: ignore[arg-type]
                             started or datetime.now(timezone.utc), interval,
                             AgreementInfo(agreement_id, threads, datetime.now(timezone.utc)))
        self.payments._agreements[agreement_id] = tracked
        self.budget.open(agreement_id)
        return tracked

    def update(self, kind: DocumentKind, amount: str, document_id: str, agreement_id: str = "agreement-1", *,
               activity: str = "activity-1", due: datetime | None = None, sealer: ProtoSealer | None = None):
        draft = DocumentDraft(kind=kind, document_id=document_id, agreement_id=agreement_id,
                              requestor_id=self.identity.requestor_id, amount=Decimal(amount),
                              usage=UsageFigures(1.0, 1.0, {}), issued=datetime.now(timezone.utc),
                              payment=AgreedPayment(), activity_ids=(activity,), sequence=1, payment_due=due)
        document = PaymentDocument(draft, (sealer or ProtoSealer(self.key, self.provider_id)).seal(draft))
        self.sequence += 1
        event = pay.PaymentEvent(sequence=self.sequence, agreement_id=agreement_id)
        if kind is NOTE:
            event.debit_note.CopyFrom(debit_note_record(document))
        else:
            event.invoice.CopyFrom(invoice_record(document))
        return self.calls._update(event)

    async def send(self, *args, **kw) -> None:
        await self.payments._handle(self.watcher, self.update(*args, **kw))

    def failures(self) -> list[str]:
        return [str(e.exception) for e in self.events if isinstance(e, events.PaymentFailed)]

    def accepted(self) -> list[str]:
        return [document_id for document_id, _, _ in self.calls.accepted]


# H2: the bound rests on the requestor's facts; invoices are held to the budget.

async def test_the_bound_counts_from_when_the_requestor_got_the_agreement_and_the_threads_it_asked_for() -> None:
    lying = Lying()
    stated = AgreementInfo("agreement-1", 2**32 - 1, datetime.now(timezone.utc) + timedelta(hours=1),
                           created=datetime(1970, 1, 1, tzinfo=timezone.utc))
    agreement = Agreement("agreement-1", lying.provider_id, "p", lying.client.address)
    lying.budget.open("agreement-1")
    lying.payments.track(lying.client, agreement, lying.job, OFFER, stated, asked_threads=1,  # type: ignore[arg-type]
                         received=datetime.now(timezone.utc))
    tracked = lying.payments._agreements["agreement-1"]
    assert tracked.cpu_threads == 1 and datetime.now(timezone.utc) - tracked.started < timedelta(seconds=5)
    # 1 thread at 0.001/s for ~0 s (+5 s of slack) is about 0.005: 0.5 is more than it can cost.
    await lying.send(NOTE, "0.5", "n1")
    await lying.send(INVOICE, "0.5", "i1")
    assert lying.accepted() == [] and len(lying.failures()) == 2
    assert all("more than the agreement can cost" in f for f in lying.failures())
    await lying.payments.close(0)


async def test_an_invoice_above_what_the_budget_has_left_is_not_accepted() -> None:
    lying = Lying(budget=Decimal(1))
    lying.agree(started=datetime.now(timezone.utc) - timedelta(days=1), rate=1.0)  # a bound far above the budget
    await lying.send(INVOICE, "2", "i1")
    assert lying.accepted() == [] and "more than the budget has left" in lying.failures()[0]
    assert lying.payments._agreements["agreement-1"].failed
