"""Payments in the contract's bytes and on disk (issue 29), without Docker: documents kept through a
restart of the store, one credit per transaction, documents sealed as the contract's DebitNote and
Invoice and signed by the provider, acceptances checked against the requestor's key, the payment
fields of demands, offers and agreements converted, and the Payment service's validation."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from exeunit import errors
from exeunit.api import convert
from exeunit.api.auth import Caller, ProofCheck, Proven, _proven
from exeunit.api.payment_servicer import PaymentServicer
from exeunit.api.payments import ProtoSealer, agreement_payments_to_proto, bind_platform, payment_event
from exeunit.domain.market import Agreement, Demand, ImageRef, Offer, Refusal, RefusalReason
from exeunit.domain.payments import (
    AgreedPayment, CreditedPayment, DocumentDraft, DocumentKind, DocumentState, PaymentChoice, PaymentDocument,
    PaymentPlatform, PaymentSettings, UsageFigures,
)
from exeunit.domain.resources import LinearPricing, Resources
from exeunit.persistence.store import StateStore
from exeunit.v1 import identity
from exeunit.v1 import market_pb2 as mkt
from exeunit.v1 import payment_pb2 as pay
from exeunit.v1.payments import acceptance_message, binding_message, document_message, public_key_der, sign, verify
from tests.conftest import settings_for

NOW = datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=timezone.utc)
PAYEE = "0x" + "ab" * 20
PAYER = "0x" + "cd" * 20
TOKEN = "0x" + "ef" * 20
TX = "0x" + "12" * 32
AGREED = AgreedPayment(platform="erc20-holesky-tglm", chain_id=17000, token_address=TOKEN, payee_address=PAYEE,
                       payer_address=PAYER, confirmations=3, debit_note_interval_seconds=25.0,
                       payment_timeout_seconds=60.0, accept_timeout_seconds=30.0)


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def id_of(key: ec.EllipticCurvePrivateKey) -> str:
    return identity.node_id_of(key.public_key())


PROVIDER_KEY, REQUESTOR_KEY = new_key(), new_key()
PROVIDER_ID, REQUESTOR_ID = id_of(PROVIDER_KEY), id_of(REQUESTOR_KEY)


def draft(kind: DocumentKind = DocumentKind.DEBIT_NOTE, **fields: object) -> DocumentDraft:
    values: dict[str, object] = dict(
        kind=kind, document_id="note-2", agreement_id="agreement-1", requestor_id=REQUESTOR_ID,
        amount=Decimal("0.123456789012345678"), usage=UsageFigures(12.5, 60.25, {"golem.usage.custom": 3.0}),
        issued=NOW, payment=AGREED, activity_ids=("activity-1",), sequence=2, previous_id="note-1",
        payment_due=NOW + timedelta(seconds=60),
    )
    values.update(fields)
    return DocumentDraft(**values)  # type: ignore[arg-type]


def document(sealer: ProtoSealer, **fields: object) -> PaymentDocument:
    d = draft(**fields)
    return PaymentDocument(draft=d, sealed=sealer.seal(d))


@pytest.fixture
def store(tmp_path: Path):
    db = StateStore(tmp_path / "state.sqlite3")
    yield db
    db.close()


def agreement(payment: AgreedPayment = AGREED, choice: PaymentChoice | None = None) -> Agreement:
    return Agreement(
        agreement_id="agreement-1", provider_id=PROVIDER_ID, requestor_id=REQUESTOR_ID,
        demand=Demand(image=ImageRef(tag="img:1"), min_memory_bytes=0, min_storage_bytes=0, min_cpu_threads=0,
                      capabilities=(), subnet_tag="public", expiration=NOW + timedelta(hours=1), payment=choice),
        pricing=LinearPricing(0.01, 0.1, 0.001), reserved=Resources(1, 1 << 30, 2 << 30), created=NOW,
        payment=payment,
    )


class TestStore:
    def test_documents_round_trip_in_the_order_they_were_issued(self, store: StateStore, tmp_path: Path) -> None:
        sealer = ProtoSealer(PROVIDER_KEY, PROVIDER_ID)
        invoice = document(sealer, kind=DocumentKind.INVOICE, document_id="invoice-1", sequence=0, previous_id="",
                           activity_ids=("activity-1", "activity-2"))
        first = document(sealer, document_id="note-1", sequence=1, previous_id="", payment_due=None, activity_ids=())
        second = document(sealer)
        store.put_payment_document(second, 5)
        store.put_payment_document(first, 4)
        store.put_payment_document(invoice, 6)
        second.state, second.acceptance_signature = DocumentState.ACCEPTED, b"\x01\x02"
        store.put_payment_document(second, 7)  # a change: the row is updated, not added
        invoice.state, invoice.rejection_reason = DocumentState.REJECTED, "too much"
        store.put_payment_document(invoice, 8)
        store.put_payment_document(document(sealer, agreement_id="agreement-2", document_id="other"), 9)
        store.close()
        reopened = StateStore(tmp_path / "state.sqlite3")
        try:
            kept = reopened.payment_documents("agreement-1")
            assert [(sequence, d.document_id) for sequence, d in kept] == [(4, "note-1"), (7, "note-2"), (8, "invoice-1")]
            assert [d for _, d in kept] == [first, second, invoice]
            assert kept[0][1].draft.payment_due is None and kept[1][1].draft.payment_due == NOW + timedelta(seconds=60)
            assert kept[2][1].draft.activity_ids == ("activity-1", "activity-2")
            assert reopened.last_payment_sequence() == 9
        finally:
            reopened.close()

    def test_an_empty_store_has_sequence_zero(self, store: StateStore) -> None:
        assert store.last_payment_sequence() == 0
        assert store.payment_documents("agreement-1") == []

    def test_a_transaction_is_credited_once_to_one_agreement(self, store: StateStore) -> None:
        credit = CreditedPayment(TX, "agreement-1", Decimal("0.5"), 1234)
        assert store.credit_payment(credit)
        assert not store.credit_payment(credit)
        assert not store.credit_payment(replace(credit, agreement_id="agreement-2", amount=Decimal(1)))
        assert store.credited_payments("agreement-1") == [credit]
        assert store.credited_payments("agreement-2") == []
        assert store.credited_agreement(TX) == "agreement-1"
        assert store.credited_agreement("0x" + "00" * 32) is None

    def test_agreements_keep_their_payment_and_forgetting_them_keeps_the_documents(self, store: StateStore) -> None:
        choice = PaymentChoice(AGREED.platform, PAYER, 25.0, 60.0, 30.0)
        store.put_agreement(agreement(choice=choice))
        (kept,) = store.agreements()
        assert kept.payment == AGREED and kept.demand.payment == choice
        store.put_agreement(agreement(AgreedPayment()))
        assert store.agreements()[0].demand.payment is None
        store.put_payment_document(document(ProtoSealer(PROVIDER_KEY, PROVIDER_ID)), 1)
        store.credit_payment(CreditedPayment(TX, "agreement-1", Decimal("0.5"), 1))
        store.forget_agreement("agreement-1")
        assert store.agreements() == []
        assert len(store.payment_documents("agreement-1")) == 1 and store.credited_agreement(TX) == "agreement-1"

    def test_an_agreement_recorded_before_payments_reads_as_accounted_only(self, store: StateStore) -> None:
        store.put_agreement(agreement())
        store._db.execute("UPDATE agreements SET record = json_remove(json_remove(record, '$.payment'), "
                          "'$.demand.payment')")
        (kept,) = store.agreements()
        assert kept.payment == AgreedPayment() and kept.demand.payment is None


class TestSealer:
    def test_a_debit_note_is_the_contracts_message_signed_by_the_provider(self) -> None:
        sealer = ProtoSealer(PROVIDER_KEY, PROVIDER_ID)
        sealed = sealer.seal(draft())
        note = pay.DebitNote.FromString(sealed.body)
        assert (note.debit_note_id, note.agreement_id, note.activity_id, note.sequence, note.previous_debit_note_id) \
            == ("note-2", "agreement-1", "activity-1", 2, "note-1")
        assert note.total_amount_due == "0.123456789012345678"
        assert note.usage.cpu_seconds == 12.5 and note.usage.duration.ToTimedelta() == timedelta(seconds=60.25)
        assert dict(note.usage.counters) == {"golem.usage.custom": 3.0}
        assert note.usage.cost == pytest.approx(0.123456789012345678)
        assert note.issued.ToDatetime(tzinfo=timezone.utc) == NOW
        assert note.payment_due.ToDatetime(tzinfo=timezone.utc) == NOW + timedelta(seconds=60)
        parties = note.parties
        assert (parties.provider_id, parties.requestor_id, parties.platform, parties.payee_address,
                parties.payer_address) == (PROVIDER_ID, REQUESTOR_ID, AGREED.platform, PAYEE, PAYER)
        assert parties.provider_public_key == public_key_der(PROVIDER_KEY)
        assert verify(parties.provider_public_key, sealed.signature, document_message(sealed.body), PROVIDER_ID)
        assert not verify(parties.provider_public_key, sealed.signature, document_message(sealed.body + b"x"),
                          PROVIDER_ID)
        assert sealer.seal(draft()).body == sealed.body  # deterministic: the same draft, the same bytes

    def test_a_note_between_activities_and_without_payment_due(self) -> None:
        note = pay.DebitNote.FromString(ProtoSealer(PROVIDER_KEY, PROVIDER_ID).seal(
            draft(activity_ids=(), payment_due=None)).body)
        assert note.activity_id == "" and not note.HasField("payment_due")

    def test_an_invoice(self) -> None:
        sealed = ProtoSealer(PROVIDER_KEY, PROVIDER_ID).seal(
            draft(DocumentKind.INVOICE, document_id="invoice-1", activity_ids=("a-1", "a-2"), amount=Decimal("2.50")))
        invoice = pay.Invoice.FromString(sealed.body)
        assert (invoice.invoice_id, invoice.agreement_id, list(invoice.activity_ids), invoice.amount) \
            == ("invoice-1", "agreement-1", ["a-1", "a-2"], "2.5")
        assert invoice.parties.provider_id == PROVIDER_ID and invoice.HasField("payment_due")
        assert verify(invoice.parties.provider_public_key, sealed.signature, document_message(sealed.body), PROVIDER_ID)

    def test_an_acceptance_verifies_only_by_the_requestor_for_the_amount(self) -> None:
        sealer = ProtoSealer(PROVIDER_KEY, PROVIDER_ID)
        sealed = sealer.seal(draft())
        amount = "0.123456789012345678"
        requestor_key = public_key_der(REQUESTOR_KEY)
        signature = sign(REQUESTOR_KEY, acceptance_message(sealed.body, amount))
        assert sealer.acceptance_valid(sealed, amount, signature, requestor_key, REQUESTOR_ID)
        assert not sealer.acceptance_valid(sealed, "1", signature, requestor_key, REQUESTOR_ID)
        stranger = new_key()
        forged = sign(stranger, acceptance_message(sealed.body, amount))
        assert not sealer.acceptance_valid(sealed, amount, forged, requestor_key, REQUESTOR_ID)
        assert not sealer.acceptance_valid(sealed, amount, forged, public_key_der(stranger), REQUESTOR_ID)
        other = sealer.seal(draft(document_id="note-3", sequence=3))
        assert not sealer.acceptance_valid(other, amount, signature, requestor_key, REQUESTOR_ID)

    def test_a_bound_platform_verifies_for_the_provider(self) -> None:
        platform = bind_platform(PROVIDER_KEY, PROVIDER_ID, PaymentPlatform(AGREED.platform, 17000, TOKEN, PAYEE, 3))
        message = binding_message(PROVIDER_ID, AGREED.platform, 17000, TOKEN, PAYEE)
        assert verify(public_key_der(PROVIDER_KEY), platform.binding_signature, message, PROVIDER_ID)
        assert not verify(public_key_der(PROVIDER_KEY), platform.binding_signature,
                          binding_message(PROVIDER_ID, AGREED.platform, 17000, TOKEN, PAYER), PROVIDER_ID)


class TestConvert:
    def test_a_demands_payment_round_trips(self) -> None:
        choice = PaymentChoice(AGREED.platform, PAYER, 25.0, 60.5, 30.0)
        demand = agreement(choice=choice).demand
        wire = mkt.Demand.FromString(convert.demand_to_proto(demand).SerializeToString())
        assert convert.demand_from_proto(wire).payment == choice
        wire.ClearField("payment")
        assert convert.demand_from_proto(wire).payment is None
        wire.payment.SetInParent()  # present, all zero: the offer's deadlines, no platform
        assert convert.demand_from_proto(wire).payment == PaymentChoice()

    def test_a_negative_duration_is_refused_by_name(self) -> None:
        wire = convert.demand_to_proto(agreement(choice=PaymentChoice()).demand)
        wire.payment.payment_timeout.seconds = -1
        with pytest.raises(errors.InvalidArgument, match="demand.payment.payment_timeout must be a non-negative"):
            convert.demand_from_proto(wire)

    def test_the_offer_states_the_payment_terms(self) -> None:
        platform = bind_platform(PROVIDER_KEY, PROVIDER_ID, PaymentPlatform(AGREED.platform, 17000, TOKEN, PAYEE, 3))
        terms = PaymentSettings(platforms=(platform,), debit_note_interval_seconds=30.0,
                                min_debit_note_interval_seconds=5.0, payment_timeout_seconds=90.0,
                                min_payment_timeout_seconds=20.0, accept_timeout_seconds=120.0,
                                public_key=public_key_der(PROVIDER_KEY))
        settings = settings_for("payer", payment=terms)
        offer = Offer(settings=settings, free=settings.capacity, images=())
        wire = mkt.Offer.FromString(convert.offer_to_proto(offer).SerializeToString()).payment
        (stated,) = wire.platforms
        assert PaymentPlatform(stated.platform, stated.chain_id, stated.token_address, stated.payee_address,
                               stated.confirmations, stated.binding_signature) == platform
        assert PaymentSettings(
            platforms=(platform,), debit_note_interval_seconds=wire.debit_note_interval.ToTimedelta().total_seconds(),
            min_debit_note_interval_seconds=wire.min_debit_note_interval.ToTimedelta().total_seconds(),
            payment_timeout_seconds=wire.payment_timeout.ToTimedelta().total_seconds(),
            min_payment_timeout_seconds=wire.min_payment_timeout.ToTimedelta().total_seconds(),
            accept_timeout_seconds=wire.debit_note_accept_timeout.ToTimedelta().total_seconds(),
            public_key=wire.provider_public_key,
        ) == terms

    def test_the_agreement_states_its_payment_and_refusals_their_reason(self) -> None:
        stated = convert.agreement_to_proto(agreement()).payment
        assert (stated.platform, stated.chain_id, stated.token_address, stated.payee_address, stated.payer_address,
                stated.confirmations) == (AGREED.platform, 17000, TOKEN, PAYEE, PAYER, 3)
        assert stated.debit_note_interval.seconds == 25 and stated.payment_timeout.seconds == 60
        assert stated.debit_note_accept_timeout.seconds == 30
        refusal = convert.refusal_to_proto(Refusal(RefusalReason.PAYMENT_TERMS, "no platform"))
        assert refusal.reason == mkt.REFUSAL_REASON_PAYMENT_TERMS

    def test_records_and_events(self) -> None:
        sealer = ProtoSealer(PROVIDER_KEY, PROVIDER_ID)
        note = document(sealer)
        note.state, note.acceptance_signature = DocumentState.ACCEPTED, b"sig"
        invoice = document(sealer, kind=DocumentKind.INVOICE, document_id="invoice-1")
        credit = CreditedPayment(TX, "agreement-1", Decimal("0.1"), 77)
        view = SimpleNamespace(agreement_id="agreement-1", debit_notes=[note], invoice=invoice,
                               accepted=Decimal("0.123456789012345678"), paid=Decimal("0.1"), credits=[credit],
                               pending=["0x" + "34" * 32])
        message = agreement_payments_to_proto(view)
        assert message.debit_notes[0].state == pay.DOCUMENT_STATE_ACCEPTED
        assert message.debit_notes[0].document.body == note.sealed.body
        assert message.debit_notes[0].acceptance_signature == b"sig"
        assert message.invoice.state == pay.DOCUMENT_STATE_ISSUED
        assert (message.amount_accepted, message.amount_paid) == ("0.123456789012345678", "0.1")
        assert message.payments[0].transaction_hash == TX and message.payments[0].block_number == 77
        assert list(message.pending_transactions) == ["0x" + "34" * 32]
        assert not agreement_payments_to_proto(replace_view(view, invoice=None)).HasField("invoice")
        changes = [SimpleNamespace(sequence=1, agreement_id="agreement-1", document=note, credit=None),
                   SimpleNamespace(sequence=2, agreement_id="agreement-1", document=invoice, credit=None),
                   SimpleNamespace(sequence=3, agreement_id="agreement-1", document=None, credit=credit)]
        events = [payment_event(change) for change in changes]
        assert [e.WhichOneof("event") for e in events] == ["debit_note", "invoice", "payment"]
        assert [e.sequence for e in events] == [1, 2, 3] and events[2].payment.amount == "0.1"


def replace_view(view: SimpleNamespace, **fields: object) -> SimpleNamespace:
    return SimpleNamespace(**{**vars(view), **fields})


class FakeContext:
    async def abort(self, code: grpc.StatusCode, details: str, trailing: tuple = ()) -> None:
        self.code, self.details = code, details
        raise grpc.aio.AbortError()


class FakePayments:
    def __init__(self) -> None:
        self.calls: list[tuple] = []

    async def accept(self, *args: object) -> DocumentState:
        self.calls.append(("accept", *args))
        return DocumentState.ACCEPTED

    async def reject(self, *args: object) -> DocumentState:
        self.calls.append(("reject", *args))
        return DocumentState.REJECTED

    async def notify_payment(self, *args: object) -> tuple[bool, Decimal]:
        self.calls.append(("notify", *args))
        return False, Decimal("0.25")


class TestServicer:
    def servicer(self, key: bytes = b"requestor-key") -> tuple[PaymentServicer, FakePayments]:
        payments = FakePayments()
        caller = SimpleNamespace(identify=lambda context, anonymous_ok=False: REQUESTOR_ID, public_key=lambda: key)
        return PaymentServicer(SimpleNamespace(payments=payments), caller), payments  # type: ignore[arg-type]

    async def refused(self, call) -> FakeContext:
        context = FakeContext()
        with pytest.raises(grpc.aio.AbortError):
            await call(context)
        return context

    async def test_an_acceptance_passes_the_amount_as_signed_and_the_callers_key(self) -> None:
        servicer, payments = self.servicer()
        request = pay.AcceptDocumentRequest(document_id="note-1", amount="0.5", signature=b"sig")
        response = await servicer.AcceptInvoice(request, FakeContext())
        assert response.state == pay.DOCUMENT_STATE_ACCEPTED
        assert payments.calls == [("accept", REQUESTOR_ID, "note-1", DocumentKind.INVOICE, "0.5", b"sig",
                                   b"requestor-key")]

    @pytest.mark.parametrize(("request_fields", "message"), [
        (dict(amount="1", signature=b"s"), "document_id is required"),
        (dict(document_id="n", amount="-1", signature=b"s"), "amount: "),
        (dict(document_id="n", amount="1e3", signature=b"s"), "amount: "),
        (dict(document_id="n", amount="0.50", signature=b"s"), "write it as the document does, '0.5'"),
        (dict(document_id="n", amount="5\n", signature=b"s"), "amount: "),
        (dict(document_id="n", amount="1"), "signature is required"),
    ])
    async def test_a_malformed_acceptance_is_invalid(self, request_fields: dict, message: str) -> None:
        servicer, payments = self.servicer()
        request = pay.AcceptDocumentRequest(**request_fields)
        context = await self.refused(lambda ctx: servicer.AcceptDebitNote(request, ctx))
        assert context.code == grpc.StatusCode.INVALID_ARGUMENT and message in context.details
        assert payments.calls == []

    async def test_no_acceptance_without_the_callers_key(self) -> None:
        servicer, payments = self.servicer(key=b"")
        request = pay.AcceptDocumentRequest(document_id="n", amount="1", signature=b"s")
        context = await self.refused(lambda ctx: servicer.AcceptDebitNote(request, ctx))
        assert context.code == grpc.StatusCode.UNAUTHENTICATED and payments.calls == []

    async def test_rejections_and_notifications(self) -> None:
        servicer, payments = self.servicer()
        response = await servicer.RejectDebitNote(pay.RejectDocumentRequest(document_id="n", reason="too much"),
                                                  FakeContext())
        assert response.state == pay.DOCUMENT_STATE_REJECTED
        context = await self.refused(lambda ctx: servicer.RejectInvoice(
            pay.RejectDocumentRequest(document_id="n", reason="x" * 1001), ctx))
        assert context.code == grpc.StatusCode.INVALID_ARGUMENT and "at most 1000" in context.details
        notified = await servicer.NotifyPayment(pay.NotifyPaymentRequest(agreement_id="a", transaction_hash=TX),
                                                FakeContext())
        assert (notified.credited, notified.amount_paid) == (False, "0.25")
        context = await self.refused(lambda ctx: servicer.NotifyPayment(
            pay.NotifyPaymentRequest(agreement_id="a", transaction_hash="0x12"), ctx))
        assert context.code == grpc.StatusCode.INVALID_ARGUMENT
        assert payments.calls == [("reject", REQUESTOR_ID, "n", DocumentKind.DEBIT_NOTE, "too much"),
                                  ("notify", REQUESTOR_ID, "a", TX)]


async def test_a_handler_sees_the_key_the_gate_proved() -> None:
    caller = Caller(ProofCheck(PROVIDER_ID))
    key = public_key_der(REQUESTOR_KEY)

    async def behaviour(request: object, context: object) -> tuple[str, bytes]:
        return caller.identify(context), caller.public_key()  # type: ignore[arg-type]

    handler = _proven(grpc.unary_unary_rpc_method_handler(behaviour), Proven(REQUESTOR_ID, "0" * 64, key), bound=False)
    assert await asyncio.create_task(handler.unary_unary(b"", FakeContext())) == (REQUESTOR_ID, key)
    assert Caller().public_key() == b""  # no gate: no key
