"""The provider's payment side through the raw contract: debit notes issued at the agreed interval,
signed by the provider's key; acceptances signed by the requestor; the deadlines that end an
agreement; the invoice at its end; and the documents kept through a restart of the daemon."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from decimal import Decimal

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration

from exeunit.domain.payments import PaymentSettings
from exeunit.v1 import market_pb2 as mkt
from exeunit.v1 import payment_pb2 as pay
from exeunit.v1.payments import acceptance_message, document_message, parse_amount, sign, verify
from tests.client import ContractClient
from tests.daemon_process import Daemon

FAST = PaymentSettings(debit_note_interval_seconds=1, min_debit_note_interval_seconds=1, accept_timeout_seconds=30)


def seconds(value: float) -> Duration:
    duration = Duration()
    duration.FromNanoseconds(int(value * 1e9))
    return duration


async def events_of(client: ContractClient, after: int = 0) -> AsyncIterator[pay.PaymentEvent]:
    async for event in client.payment.WatchPayments(pay.WatchPaymentsRequest(after_sequence=after),
                                                    metadata=client.metadata):
        yield event


def note_of(record: pay.DebitNoteRecord) -> pay.DebitNote:
    note = pay.DebitNote.FromString(record.document.body)
    parties = note.parties
    assert verify(parties.provider_public_key, record.document.signature, document_message(record.document.body),
                  parties.provider_id), "the note's signature does not verify against its provider's key"
    return note


async def accept(client: ContractClient, record: pay.DebitNoteRecord | pay.InvoiceRecord, amount: str,
                 invoice: bool = False) -> pay.AcceptDocumentResponse:
    body = record.document.body
    document = (pay.Invoice if invoice else pay.DebitNote).FromString(body)
    request = pay.AcceptDocumentRequest(
        document_id=document.invoice_id if invoice else document.debit_note_id, amount=amount,
        signature=sign(client.identity._key, acceptance_message(body, amount)))  # type: ignore[union-attr]
    call = client.payment.AcceptInvoice if invoice else client.payment.AcceptDebitNote
    return await call(request, metadata=client.metadata)


async def test_debit_notes_come_at_the_interval_signed_and_chained_and_accepted(daemons) -> None:
    running = await daemons.start(payment=FAST)
    async with ContractClient(f"127.0.0.1:{running.port}", "payer") as client:
        agreement_id = await client.agreement("exeunit-base:latest")
        notes: list[pay.DebitNote] = []
        async with asyncio.timeout(20):
            async for event in events_of(client):
                if event.WhichOneof("event") != "debit_note" or event.agreement_id != agreement_id:
                    continue
                note = note_of(event.debit_note)
                if event.debit_note.state != pay.DOCUMENT_STATE_ISSUED:
                    continue  # our own acceptance, told back
                notes.append(note)
                accepted = await accept(client, event.debit_note, note.total_amount_due)
                assert accepted.state == pay.DOCUMENT_STATE_SETTLED  # no platform: accepted is all there is
                if len(notes) == 3:
                    break
        assert [n.sequence for n in notes] == [1, 2, 3]
        assert [n.previous_debit_note_id for n in notes] == ["", notes[0].debit_note_id, notes[1].debit_note_id]
        amounts = [parse_amount(n.total_amount_due) for n in notes]
        assert amounts == sorted(amounts) and amounts[0] >= Decimal("0.01")  # the start fee at least
        assert all(n.parties.requestor_id == client.requestor_id and n.parties.provider_id == client.provider_id
                   for n in notes)
        payments = await client.payment.GetAgreementPayments(
            pay.GetAgreementPaymentsRequest(agreement_id=agreement_id), metadata=client.metadata)
        assert len(payments.debit_notes) >= 3 and payments.amount_accepted == notes[-1].total_amount_due


async def test_an_acceptance_must_be_the_requestors_for_the_exact_amount(daemons) -> None:
    running = await daemons.start(payment=FAST)
    async with (ContractClient(f"127.0.0.1:{running.port}", "payer") as client,
                ContractClient(f"127.0.0.1:{running.port}", "stranger") as stranger):
        agreement_id = await client.agreement("exeunit-base:latest")
        async with asyncio.timeout(10):
            async for event in events_of(client):
                if event.WhichOneof("event") == "debit_note" and event.agreement_id == agreement_id:
                    record = event.debit_note
                    break
        note = note_of(record)
        more = str(parse_amount(note.total_amount_due) + 1)
        with pytest.raises(grpc.aio.AioRpcError) as wrong_amount:
            await accept(client, record, more)
        assert wrong_amount.value.code() == grpc.StatusCode.INVALID_ARGUMENT, wrong_amount.value.details()
        with pytest.raises(grpc.aio.AioRpcError) as forged:  # signed over another amount than it states
            await client.payment.AcceptDebitNote(pay.AcceptDocumentRequest(
                document_id=note.debit_note_id, amount=note.total_amount_due,
                signature=sign(client.identity._key, acceptance_message(record.document.body, more))),  # type: ignore[union-attr]
                metadata=client.metadata)
        assert forged.value.code() == grpc.StatusCode.INVALID_ARGUMENT, forged.value.details()
        with pytest.raises(grpc.aio.AioRpcError) as foreign:
            await accept(stranger, record, note.total_amount_due)
        assert foreign.value.code() == grpc.StatusCode.NOT_FOUND, foreign.value.details()
        assert (await accept(client, record, note.total_amount_due)).state == pay.DOCUMENT_STATE_SETTLED
        assert (await accept(client, record, note.total_amount_due)).state == pay.DOCUMENT_STATE_SETTLED  # again: no change


async def test_a_debit_note_left_unaccepted_ends_its_agreement(daemons) -> None:
    running = await daemons.start(payment=PaymentSettings(debit_note_interval_seconds=1, min_debit_note_interval_seconds=1,
                                                          accept_timeout_seconds=30))
    async with ContractClient(f"127.0.0.1:{running.port}", "silent") as client:
        payment = mkt.PaymentChoice(debit_note_accept_timeout=seconds(5))  # asks for less than offered: taken
        agreement_id = await client.agreement("exeunit-base:latest", payment=payment)
        agreement = (await client.market.GetAgreement(mkt.GetAgreementRequest(agreement_id=agreement_id),
                                                      metadata=client.metadata)).agreement
        assert agreement.payment.debit_note_accept_timeout.seconds == 5
        for _ in range(100):
            agreement = (await client.market.GetAgreement(mkt.GetAgreementRequest(agreement_id=agreement_id),
                                                          metadata=client.metadata)).agreement
            if agreement.state == mkt.AGREEMENT_STATE_TERMINATED:
                break
            await asyncio.sleep(0.1)
        assert agreement.termination_reason == "DebitNotesDeadline", agreement
        assert agreement.termination_message == "Requestor isn't accepting DebitNotes in time (5s)"
        payments = await client.payment.GetAgreementPayments(
            pay.GetAgreementPaymentsRequest(agreement_id=agreement_id), metadata=client.metadata)
        assert payments.HasField("invoice")  # it ended: its invoice states what it cost in all
        invoice = pay.Invoice.FromString(payments.invoice.document.body)
        last_note = pay.DebitNote.FromString(payments.debit_notes[-1].document.body)
        assert parse_amount(invoice.amount) >= parse_amount(last_note.total_amount_due)
        assert (await accept(client, payments.invoice, invoice.amount, invoice=True)).state == pay.DOCUMENT_STATE_SETTLED


async def test_a_rejected_debit_note_ends_its_agreement_with_the_reason(daemons) -> None:
    running = await daemons.start(payment=FAST)
    async with ContractClient(f"127.0.0.1:{running.port}", "payer") as client:
        agreement_id = await client.agreement("exeunit-base:latest")
        async with asyncio.timeout(10):
            async for event in events_of(client):
                if event.WhichOneof("event") == "debit_note" and event.agreement_id == agreement_id:
                    break
        note = note_of(event.debit_note)
        await client.payment.RejectDebitNote(pay.RejectDocumentRequest(document_id=note.debit_note_id,
                                                                       reason="too dear"), metadata=client.metadata)
        agreement = (await client.market.GetAgreement(mkt.GetAgreementRequest(agreement_id=agreement_id),
                                                      metadata=client.metadata)).agreement
        assert (agreement.termination_reason, agreement.termination_message) == (
            "DebitNoteRejected", "Requestor rejected the debit note: too dear")


async def test_payment_terms_outside_the_offer_are_refused(daemons) -> None:
    running = await daemons.start(payment=FAST)
    async with ContractClient(f"127.0.0.1:{running.port}", "payer") as client:
        cases = {
            "erc20-holesky-tglm": mkt.PaymentChoice(platform="erc20-holesky-tglm", payer_address="0x" + "1" * 40),
            "below this provider's minimum": mkt.PaymentChoice(debit_note_interval=seconds(0.5)),
            "need a payment platform": mkt.PaymentChoice(payment_timeout=seconds(60)),
            "outside 5-30s": mkt.PaymentChoice(debit_note_accept_timeout=seconds(31)),
        }
        for said, choice in cases.items():
            response = await client.propose(client.demand("exeunit-base:latest", payment=choice))
            assert response.WhichOneof("outcome") == "refusal", response
            assert response.refusal.reason == mkt.REFUSAL_REASON_PAYMENT_TERMS and said in response.refusal.message


async def test_documents_and_acceptances_outlive_a_restart() -> None:
    daemon = Daemon("--debit-note-interval", "1", "--min-debit-note-interval", "1")
    try:
        async with ContractClient(f"127.0.0.1:{daemon.port}", "payer") as client:
            agreement_id = await client.agreement("exeunit-base:latest")
            last = 0
            async with asyncio.timeout(10):
                async for event in events_of(client):
                    if event.WhichOneof("event") == "debit_note" and event.debit_note.state == pay.DOCUMENT_STATE_ISSUED:
                        await accept(client, event.debit_note, note_of(event.debit_note).total_amount_due)
                    last = event.sequence
                    if last >= 4:
                        break
        daemon.process.send_signal(9)  # SIGKILL: nothing is written on the way out
        daemon.process.wait()
        daemon = Daemon("--debit-note-interval", "1", "--min-debit-note-interval", "1", state_dir=daemon.state_dir)
        async with ContractClient(f"127.0.0.1:{daemon.port}", "payer") as client:
            payments = await client.payment.GetAgreementPayments(
                pay.GetAgreementPaymentsRequest(agreement_id=agreement_id), metadata=client.metadata)
            assert sum(r.state == pay.DOCUMENT_STATE_SETTLED for r in payments.debit_notes) >= 2
            before = max(pay.DebitNote.FromString(r.document.body).sequence for r in payments.debit_notes)
            async with asyncio.timeout(10):  # what came after `last` (the killed daemon's too), then new notes
                async for event in events_of(client, after=last):
                    assert event.sequence > last
                    if event.WhichOneof("event") == "debit_note" and note_of(event.debit_note).sequence > before:
                        break
    finally:
        daemon.own_home = True
        daemon.stop()
