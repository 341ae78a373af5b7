"""Payment documents in the contract's bytes (proto/exeunit/v1/payment.proto): a draft sealed as a
serialized, signed DebitNote or Invoice (`ProtoSealer`, the domain's `DocumentSealer`), a
requestor's acceptance checked against those bytes, a payee address bound to the provider, and the
domain's documents, credits and changes as the Payment service's records."""

from __future__ import annotations

from dataclasses import replace
from decimal import Decimal
from typing import Protocol

from cryptography.hazmat.primitives.asymmetric import ec

from exeunit.api.convert import duration, timestamp
from exeunit.domain.payments import (
    CreditedPayment, DocumentDraft, DocumentKind, DocumentState, PaymentDocument, PaymentPlatform, Sealed,
)
from exeunit.v1 import market_pb2 as mkt
from exeunit.v1 import payment_pb2 as pay
from exeunit.v1.payments import (
    acceptance_message, binding_message, document_message, format_amount, public_key_der, sign, verify,
)


class ProtoSealer:
    """Seals drafts with the provider's key: the DebitNote or Invoice serialized deterministically,
    and the provider's signature over it (payment.proto, "Documents")."""

    def __init__(self, key: ec.EllipticCurvePrivateKey, provider_id: str) -> None:
        self._key = key
        self._provider_id = provider_id
        self._public_key = public_key_der(key)

    def seal(self, draft: DocumentDraft) -> Sealed:
        body = self.message(draft).SerializeToString(deterministic=True)
        return Sealed(body=body, signature=sign(self._key, document_message(body)))

    def message(self, draft: DocumentDraft) -> pay.DebitNote | pay.Invoice:
        """The contract's message a draft states (unsigned)."""
        parties = pay.PaymentParties(
            provider_id=self._provider_id, provider_public_key=self._public_key, requestor_id=draft.requestor_id,
            platform=draft.payment.platform, payee_address=draft.payment.payee_address,
            payer_address=draft.payment.payer_address,
        )
        usage = mkt.AgreementUsage(
            cpu_seconds=draft.usage.cpu_seconds, duration=duration(draft.usage.duration_seconds),
            counters=draft.usage.counters, cost=float(draft.amount),
        )
        amount = format_amount(draft.amount)
        message: pay.DebitNote | pay.Invoice
        if draft.kind is DocumentKind.DEBIT_NOTE:
            message = pay.DebitNote(
                debit_note_id=draft.document_id, agreement_id=draft.agreement_id,
                activity_id=draft.activity_ids[0] if draft.activity_ids else "", sequence=draft.sequence,
                previous_debit_note_id=draft.previous_id, total_amount_due=amount, usage=usage,
                issued=timestamp(draft.issued), parties=parties,
            )
        else:
            message = pay.Invoice(
                invoice_id=draft.document_id, agreement_id=draft.agreement_id, activity_ids=draft.activity_ids,
                amount=amount, usage=usage, issued=timestamp(draft.issued), parties=parties,
            )
        if draft.payment_due is not None:
            message.payment_due.CopyFrom(timestamp(draft.payment_due))
        return message

    def acceptance_valid(self, sealed: Sealed, amount: str, signature: bytes, requestor_key: bytes,
                         requestor_id: str) -> bool:
        """Whether `signature` accepts this document for `amount`, by the key of `requestor_id`."""
        return verify(requestor_key, signature, acceptance_message(sealed.body, amount), requestor_id)


def bind_platform(key: ec.EllipticCurvePrivateKey, provider_id: str, platform: PaymentPlatform) -> PaymentPlatform:
    """`platform` with the provider's signature binding its payee address to `provider_id`."""
    message = binding_message(provider_id, platform.platform, platform.chain_id, platform.token_address,
                              platform.payee_address)
    return replace(platform, binding_signature=sign(key, message))


DOCUMENT_STATES = {
    DocumentState.ISSUED: pay.DOCUMENT_STATE_ISSUED,
    DocumentState.ACCEPTED: pay.DOCUMENT_STATE_ACCEPTED,
    DocumentState.REJECTED: pay.DOCUMENT_STATE_REJECTED,
    DocumentState.SETTLED: pay.DOCUMENT_STATE_SETTLED,
}


def _record_fields(document: PaymentDocument) -> dict:
    return {
        "document": pay.SignedDocument(body=document.sealed.body, signature=document.sealed.signature),
        "state": DOCUMENT_STATES[document.state],
        "acceptance_signature": document.acceptance_signature,
        "rejection_reason": document.rejection_reason,
    }


def debit_note_record(document: PaymentDocument) -> pay.DebitNoteRecord:
    return pay.DebitNoteRecord(**_record_fields(document))


def invoice_record(document: PaymentDocument) -> pay.InvoiceRecord:
    return pay.InvoiceRecord(**_record_fields(document))


def credit_to_proto(credit: CreditedPayment) -> pay.CreditedPayment:
    return pay.CreditedPayment(transaction_hash=credit.transaction_hash, amount=format_amount(credit.amount),
                               block_number=credit.block_number)


class PaymentsView(Protocol):
    """What exeunit.services.payments says of one agreement's payment."""

    agreement_id: str
    debit_notes: list[PaymentDocument]
    invoice: PaymentDocument | None
    accepted: Decimal
    paid: Decimal
    credits: list[CreditedPayment]
    pending: list[str]


class PaymentChange(Protocol):
    """One change the Payment service's watchers hear of: a document issued or changed, or a credit."""

    sequence: int
    agreement_id: str
    document: PaymentDocument | None
    credit: CreditedPayment | None


def agreement_payments_to_proto(view: PaymentsView) -> pay.AgreementPayments:
    message = pay.AgreementPayments(
        agreement_id=view.agreement_id,
        debit_notes=[debit_note_record(note) for note in view.debit_notes],
        amount_accepted=format_amount(view.accepted),
        amount_paid=format_amount(view.paid),
        payments=[credit_to_proto(credit) for credit in view.credits],
        pending_transactions=list(view.pending),
    )
    if view.invoice is not None:
        message.invoice.CopyFrom(invoice_record(view.invoice))
    return message


def payment_event(change: PaymentChange) -> pay.PaymentEvent:
    event = pay.PaymentEvent(sequence=change.sequence, agreement_id=change.agreement_id)
    if change.document is not None:
        if change.document.draft.kind is DocumentKind.DEBIT_NOTE:
            event.debit_note.CopyFrom(debit_note_record(change.document))
        else:
            event.invoice.CopyFrom(invoice_record(change.document))
    elif change.credit is not None:
        event.payment.CopyFrom(credit_to_proto(change.credit))
    return event
