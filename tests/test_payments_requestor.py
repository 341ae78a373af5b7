"""The requestor's side of debit notes and invoices (issue 29), against real provider daemons and no
chain: notes accepted as they come and the invoice at the end, the budget counting the invoice;
documents whose signer is not the provider they name refused; a requestor that accepts nothing
loses its agreement to the provider's accept deadline."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from decimal import Decimal

from exeunit.domain.payments import PaymentSettings
from exeunit.domain.resources import LinearPricing
from exeunit.v1 import market_pb2 as mkt
from exeunit.v1 import payment_pb2 as pay
from requestor import Golem, events
from requestor.client.payments import PaymentCalls
from requestor.log import log_summary
from requestor.model import Offer, PaymentTerms, Pricing
from requestor.payload import vm
from requestor.services import Service, ServiceState
from requestor.strategy import (
    PROP_DEBIT_NOTE_ACCEPTANCE_TIMEOUT, PROP_DEBIT_NOTE_INTERVAL_SEC, LeastExpensiveLinearPayuMS, MarketStrategy,
    PropValueRange, payment_choice,
)
from tests.client import ContractClient
from tests.conftest import BASE_IMAGE, Daemons
from tests.test_requestor_services import Recorder

FAST_NOTES = PaymentSettings(debit_note_interval_seconds=1.0, min_debit_note_interval_seconds=1.0)
PRICING = LinearPricing(start_fee=0.01, per_cpu_second=0.001, per_duration_second=0.002)


class Sleeps(Service):
    """Runs ~5 s on its provider, then returns."""

    @staticmethod
    async def get_payload():
        return await vm.repo(image_tag=BASE_IMAGE, min_mem_gib=0.25, min_storage_gib=0.5)

    async def run(self):
        script = self._ctx.new_script()
        script.run("/bin/sh", "-c", "sleep 5")
        yield script


def golem_for(server, recorder: Recorder, **kw) -> Golem:
    return Golem(budget=10.0, subnet_tag="public", providers=[f"127.0.0.1:{server.port}"],
                 event_consumer=log_summary(recorder), **kw)


def of(recorder: Recorder, *kinds: type) -> list:
    return [e for e in recorder.events if isinstance(e, kinds)]


async def test_debit_notes_and_the_invoice_are_accepted_and_the_budget_counts_the_invoice(daemons: Daemons) -> None:
    server = await daemons.start("pays", payment=FAST_NOTES, pricing=PRICING)
    recorder = Recorder()
    async with golem_for(server, recorder) as golem:
        [instance] = (await golem.run_service(Sleeps)).instances
        await recorder.until(lambda: instance.state is ServiceState.terminated, timeout=60)
        await recorder.until(lambda: bool(of(recorder, events.InvoiceAccepted)), timeout=20)
        [accepted] = of(recorder, events.InvoiceAccepted)
        agreement_id = accepted.agreement.id
        client = next(c for c in golem._engine.clients)  # the requestor's own client of that provider
        payments = await PaymentCalls(client).agreement_payments(agreement_id)
    assert not of(recorder, events.PaymentFailed), of(recorder, events.PaymentFailed)
    received = of(recorder, events.DebitNoteReceived)
    notes = of(recorder, events.DebitNoteAccepted)
    assert len(notes) >= 3, f"a ~5 s service at a 1 s interval: {len(notes)} notes accepted"
    assert [e.debit_note.debit_note_id for e in notes] == [e.debit_note.debit_note_id for e in received]
    amounts = [e.amount for e in notes]
    assert amounts == sorted(amounts) and amounts[-1] > 0, amounts
    paying = [type(e).__name__ for e in recorder.events if isinstance(e, (
        events.DebitNoteEvent, events.InvoiceEvent, events.AgreementTerminated, events.PaymentFailed))]
    notes_seen = [n for n in paying if n.startswith("DebitNote")]
    assert notes_seen == ["DebitNoteReceived", "DebitNoteAccepted"] * len(notes), notes_seen  # each, then the next
    assert paying[-2:] == ["InvoiceReceived", "InvoiceAccepted"] and "AgreementTerminated" in paying, paying
    assert paying.index("AgreementTerminated") < paying.index("InvoiceReceived")
    assert accepted.amount >= amounts[-1]
    assert payments.invoice is not None and payments.invoice[1] == "Settled"  # accepted; no platform to pay on
    assert payments.invoice[0].amount == accepted.amount == golem.budget.spent
    assert payments.amount_accepted == accepted.amount
    assert {state for _, state in payments.debit_notes} == {"Settled"}, payments.debit_notes  # every one accepted
    assert len(payments.debit_notes) == len(notes)
    assert accepted.amount < Decimal("0.01") + Decimal("0.004") * 30  # start fee and at most ~30 s of time


async def test_documents_not_signed_by_the_provider_they_name_are_refused(daemons: Daemons, caplog) -> None:
    # A provider id that is not its key's: its documents' signatures verify under a key of another id.
    server = await daemons.start("forger", provider_id="test-forger-0001", payment=FAST_NOTES, pricing=PRICING)
    recorder = Recorder()
    caplog.set_level(logging.INFO, logger="requestor")
    async with golem_for(server, recorder, shutdown_timeout=10) as golem:
        [instance] = (await golem.run_service(Sleeps)).instances
        await recorder.until(lambda: bool(of(recorder, events.PaymentFailed)), timeout=30)
        await recorder.until(lambda: instance.state is ServiceState.terminated, timeout=60)
    failures = of(recorder, events.PaymentFailed)
    assert "does not verify" in str(failures[0].exception), failures[0].exception
    assert not of(recorder, events.DebitNoteAccepted) and not of(recorder, events.InvoiceAccepted)
    assert of(recorder, events.DebitNoteReceived)
    agreement_id = failures[0].agreement.id
    records = server.provider.payments.agreement_payments(golem.identity.requestor_id, agreement_id)
    assert records.accepted == 0 and all(d.acceptance_signature == b"" for d in records.debit_notes)
    lines = [r.getMessage() for r in caplog.records]
    assert any(line.startswith("Failed to accept an invoice or a debit note from 'forger', reason: ")
               for line in lines)
    assert any(line.startswith("Unpaid agreements: ") and agreement_id in line for line in lines)


async def test_a_requestor_that_accepts_no_debit_note_loses_the_agreement_at_the_deadline(daemons: Daemons) -> None:
    settings = PaymentSettings(debit_note_interval_seconds=1.0, min_debit_note_interval_seconds=1.0,
                               accept_timeout_seconds=5.0)
    server = await daemons.start("strict", payment=settings)
    async with ContractClient(f"127.0.0.1:{server.port}", "silent-requestor") as client:
        agreement_id = await client.agreement(BASE_IMAGE)
        request = mkt.GetAgreementRequest(agreement_id=agreement_id)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 15
        while True:
            agreement = (await client.market.GetAgreement(request, metadata=client.metadata)).agreement
            if agreement.state == mkt.AGREEMENT_STATE_TERMINATED or loop.time() > deadline:
                break
            await asyncio.sleep(0.3)
        assert agreement.state == mkt.AGREEMENT_STATE_TERMINATED, "still running 15 s after a 5 s deadline"
        assert agreement.termination_reason == "DebitNotesDeadline", agreement.termination_reason
        payments = await client.payment.GetAgreementPayments(pay.GetAgreementPaymentsRequest(agreement_id=agreement_id),
                                                              metadata=client.metadata)
        assert payments.debit_notes and payments.debit_notes[0].state == pay.DOCUMENT_STATE_ISSUED


def offer_with(terms: PaymentTerms) -> Offer:
    return Offer("127.0.0.1:1", "0xprovider", "p", "public", "docker-vm", 1, 1, 1, 1, 1, 1,
                 Pricing(0.0, 0.0, 0.0, "GLM"), (), False, (), payment=terms)


def test_the_demand_takes_the_offers_terms_within_the_strategys_ranges(caplog) -> None:
    caplog.set_level(logging.DEBUG, logger="requestor.strategy")
    terms = PaymentTerms(debit_note_interval=120, min_debit_note_interval=1, payment_timeout=120,
                         min_payment_timeout=1, debit_note_accept_timeout=240)
    short = datetime.now(timezone.utc) + timedelta(hours=3)
    long = datetime.now(timezone.utc) + timedelta(hours=24)
    plain = payment_choice(MarketStrategy(), offer_with(terms), short)
    assert plain is not None and (plain.debit_note_interval, plain.payment_timeout) == (0, 0)
    assert plain.debit_note_accept_timeout == 240  # in (30, None): the offer's
    assert plain.platform == ""

    class Short(LeastExpensiveLinearPayuMS):
        acceptable_prop_value_range_overrides = {PROP_DEBIT_NOTE_INTERVAL_SEC: PropValueRange(25, 30),
                                                 PROP_DEBIT_NOTE_ACCEPTANCE_TIMEOUT: PropValueRange(10, 60)}

    ranges = Short().acceptable_prop_value_ranges
    assert ranges[PROP_DEBIT_NOTE_INTERVAL_SEC] == PropValueRange(25, 30)
    # No platform: no mid-agreement payments, so neither the interval nor a payment timeout is asked.
    chosen = payment_choice(Short(), offer_with(terms), long)
    assert chosen is not None and (chosen.debit_note_interval, chosen.payment_timeout) == (0, 0)
    assert chosen.debit_note_accept_timeout == 60  # clamped into (10, 60)
    assert not any("Enabling mid-agreement payments" in r.getMessage() for r in caplog.records)
    # With a platform and a long expiration they are, clamped into the ranges.
    chosen = payment_choice(Short(), offer_with(terms), long, platform="erc20-holesky-tglm")
    assert chosen is not None and chosen.debit_note_interval == 30 and chosen.payment_timeout == 18000
    assert any(r.getMessage().startswith("Enabling mid-agreement payments mechanism as the expiration set to ")
               and r.getMessage().endswith("s (more than 18000s). provider=0xprovider") for r in caplog.records)
    assert payment_choice(MarketStrategy(), offer_with(None), long) is None  # type: ignore[arg-type]
    assert str(PropValueRange(25, 30)) == "(25, 30)" and str(PropValueRange(60)) == "(60, None)"


# The processing rules, on documents sealed as a provider seals them, without a daemon.

class _Calls(PaymentCalls):
    """The Payment service's answers recorded, not sent."""

    def __init__(self, client) -> None:
        super().__init__(client)
        self.accepted: list[tuple[str, str, bytes]] = []
        self.rejected: list[tuple[str, str]] = []

    async def accept(self, document) -> str:
        self.accepted.append((document.document_id, document.amount_text,
                              self._acceptance(document).signature))
        return "Settled"

    async def reject(self, document, reason: str) -> str:
        self.rejected.append((document.document_id, reason))
        return "Rejected"


class _Client:
    def __init__(self, provider_id: str, identity) -> None:
        self.provider_id, self.identity, self.address = provider_id, identity, "127.0.0.1:1"
        self.requestor_id = identity.requestor_id
        self.terminated: list[tuple[str, str]] = []

    async def terminate_agreement(self, agreement_id: str, reason: str, message: str = "") -> None:
        self.terminated.append((agreement_id, reason))


async def test_processing_accepts_what_checks_out_and_refuses_the_rest() -> None:
    from cryptography.hazmat.primitives.asymmetric import ec

    from exeunit.api.payments import ProtoSealer, debit_note_record, invoice_record
    from exeunit.domain.payments import AgreedPayment, DocumentDraft, DocumentKind, PaymentDocument, UsageFigures
    from exeunit.v1.identity import node_id_of
    from exeunit.v1.payments import acceptance_message, verify
    from requestor.budget import Budget
    from requestor.client.identity import RequestorIdentity
    from requestor.model import Agreement, Job
    from requestor.payments import Payments, _Agreement, _Watcher

    key = ec.generate_private_key(ec.SECP256R1())
    provider_id = node_id_of(key.public_key())
    identity = RequestorIdentity.ephemeral()
    client = _Client(provider_id, identity)
    calls = _Calls(client)  # type: ignore[arg-type]
    seen: list[events.Event] = []
    budget = Budget(Decimal(1))
    payments = Payments(budget, seen.append)
    agreement = Agreement("agreement-1", provider_id, "p", client.address)
    job = Job("1", None, datetime.now(timezone.utc))
    started = datetime.now(timezone.utc) - timedelta(seconds=10)
    # 0.01 start fee, 0.001/cpu s (1 thread), 0.002/s: at most about 0.01 + 0.003 * 15 by now
    payments._agreements["agreement-1"] = _Agreement(client, agreement, job, Pricing(0.01, 0.001, 0.002, "GLM"),  # type: ignore[arg-type]
                                                     1, started, interval=10.0)
    budget.open("agreement-1")
    watcher = _Watcher(calls)
    sequence = iter(range(1, 100))

    def change(kind: DocumentKind, amount: str, document_id: str, sealer: ProtoSealer | None = None):
        d = DocumentDraft(kind=kind, document_id=document_id, agreement_id="agreement-1",
                          requestor_id=identity.requestor_id, amount=Decimal(amount),
                          usage=UsageFigures(1.0, 10.0, {}), issued=datetime.now(timezone.utc),
                          payment=AgreedPayment(), activity_ids=("activity-1",), sequence=1)
        document = PaymentDocument(d, (sealer or ProtoSealer(key, provider_id)).seal(d))
        event = pay.PaymentEvent(sequence=next(sequence), agreement_id="agreement-1")
        if kind is DocumentKind.DEBIT_NOTE:
            event.debit_note.CopyFrom(debit_note_record(document))
        else:
            event.invoice.CopyFrom(invoice_record(document))
        return calls._update(event)

    note = DocumentKind.DEBIT_NOTE
    first = change(note, "0.02", "n1")
    await payments._handle(watcher, first)
    [(_, amount, signature)] = calls.accepted
    body = first.document.body  # type: ignore[union-attr]
    assert verify(identity._spki, signature, acceptance_message(body, "0.02"), identity.requestor_id)
    assert [type(e).__name__ for e in seen] == ["DebitNoteReceived", "DebitNoteAccepted"]
    assert seen[-1].amount == Decimal("0.02")
    await payments._handle(watcher, first)  # seen already: nothing
    await payments._handle(watcher, replace(first, state="Settled"))  # our acceptance coming back: nothing
    assert len(calls.accepted) == 1
    forged = ProtoSealer(ec.generate_private_key(ec.SECP256R1()), provider_id)  # a key not the provider's
    await payments._handle(watcher, change(note, "0.03", "n2", forged))
    await payments._handle(watcher, change(note, "0.01", "n3"))  # less than the previous note
    await payments._handle(watcher, change(note, "5", "n4"))  # more than the agreement can cost by now
    failures = [e for e in seen if isinstance(e, events.PaymentFailed)]
    assert len(failures) == 3 and len(calls.accepted) == 1
    assert "does not verify" in str(failures[0].exception) and "less than" in str(failures[1].exception)
    assert calls.rejected == [("n4", str(failures[2].exception))] and "more than the agreement can cost" in \
        calls.rejected[0][1]
    for n in (5, 6):  # the 4th and 5th notes counted: 10 s + 30 s of grace is not less than 3, 4 intervals
        await payments._handle(watcher, change(note, "0.03", f"n{n}"))
    assert not client.terminated and len(calls.accepted) == 3
    await payments._handle(watcher, change(note, "0.03", "n7"))  # the 6th in 10 s at a 10 s interval: too many
    assert client.terminated == [("agreement-1", "TooManyDebitNotes")] and len(calls.accepted) == 3
    ending = asyncio.ensure_future(payments.ended("agreement-1", 5))
    await asyncio.sleep(0)
    await payments._handle(watcher, change(DocumentKind.INVOICE, "0.031", "i1"))
    assert await ending
    assert [type(e).__name__ for e in seen][-2:] == ["InvoiceReceived", "InvoiceAccepted"]
    assert seen[-1].amount == Decimal("0.031") == budget.spent and not payments.unpaid
