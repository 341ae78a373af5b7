"""A provider's Payment service (proto/exeunit/v1/payment.proto) as the requestor calls it, over
the channel of its ProviderClient, with the same proofs and error mapping.

Documents come as the provider signed them; `check` is what makes one count: its body parses as
the kind it claims, its signature verifies under the key it carries, that key's id is the
document's provider and the provider this client proved it reached, and it names this requestor
and the agreement the change was about. Only then are its fields read as the requestor's records
(requestor.payments_model), with Decimal amounts and the body kept for the acceptance's signature.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from datetime import datetime, timezone
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from exeunit.v1 import payment_pb2 as pay
from exeunit.v1.payments import acceptance_message, document_message, parse_amount, verify
from requestor.client.provider import ProviderClient
from requestor.payments_model import (
    MAX_ID, AgreementPayments, DebitNote, Document, Invoice, Parties, PaymentDocumentError, PaymentUpdate,
)

log = logging.getLogger(__name__)

STATES = {pay.DOCUMENT_STATE_ISSUED: "Issued", pay.DOCUMENT_STATE_ACCEPTED: "Accepted",
          pay.DOCUMENT_STATE_REJECTED: "Rejected", pay.DOCUMENT_STATE_SETTLED: "Settled"}


class PaymentCalls:
    """The Payment service of the provider `client` reaches, as this requestor's identity."""

    def __init__(self, client: ProviderClient) -> None:
        self.client = client

    async def _call(self, method: str, request: Any) -> Any:
        return await self.client._call("payment", method, request)

    async def watch_payments(self, after_sequence: int = 0, reconnect_for: float | None = None) -> AsyncIterator[PaymentUpdate]:
        """This requestor's payment changes after `after_sequence`, then each new one, for as long
        as the caller reads. A dropped connection is made again (resuming after the last sequence
        yielded) when the provider is back within `reconnect_for` seconds; ProviderUnreachableError
        when it is not, any other error as the provider said it."""
        client = self.client
        reconnect_for = client.reconnect_for if reconnect_for is None else reconnect_for
        loop = asyncio.get_running_loop()
        deadline: float | None = None
        seen = after_sequence
        await client.connect()
        while True:
            request = pay.WatchPaymentsRequest(after_sequence=seen)
            sent = client.signed("payment", "WatchPayments", request)
            try:
                async for event in client._payment.WatchPayments(request, metadata=sent):
                    deadline = None
                    if event.sequence <= seen:
                        continue
                    seen = event.sequence
                    yield self._update(event)
                return
            except grpc.aio.AioRpcError as exc:
                if await client._renewed(exc, sent):
                    continue
                deadline = deadline or loop.time() + reconnect_for
                if await client._reconnected("WatchPayments", exc, deadline):
                    deadline = None
                log.info("event=payments_reconnect provider=%s after=%d", client.address, seen)

    def _update(self, event: pay.PaymentEvent) -> PaymentUpdate:
        which = event.WhichOneof("event")
        if which == "payment":
            return PaymentUpdate(event.sequence, event.agreement_id, paid=_amount(event.payment.amount, "payment"))
        record = event.debit_note if which == "debit_note" else event.invoice
        signed = record.document
        state = STATES.get(record.state, "")
        try:
            document = parse(signed.body, which == "debit_note")
        except PaymentDocumentError as exc:
            return PaymentUpdate(event.sequence, event.agreement_id, state=state, error=exc)
        key = _message(which, signed.body).parties.provider_public_key
        return PaymentUpdate(event.sequence, event.agreement_id, document=document, state=state,
                             signature=signed.signature, public_key=key)

    def check(self, update: PaymentUpdate) -> Document:
        """The update's document once it counts (see the top); PaymentDocumentError saying why not."""
        if update.error is not None:
            raise update.error
        document = update.document
        assert document is not None, "a payment credited carries no document"
        kind = "debit note" if isinstance(document, DebitNote) else "invoice"
        parties = document.parties
        if not verify(update.public_key, update.signature, document_message(document.body), parties.provider_id):
            raise PaymentDocumentError(f"{kind} {document.document_id}: its signature does not verify as provider "
                                       f"{parties.provider_id}'s (a key not its id's, or a forged signature)")
        if self.client.provider_id is not None and parties.provider_id.lower() != self.client.provider_id.lower():
            raise PaymentDocumentError(f"{kind} {document.document_id} is signed by {parties.provider_id}, not by "
                                       f"the provider at {self.client.address} ({self.client.provider_id})")
        if parties.requestor_id.lower() != self.client.requestor_id.lower():
            raise PaymentDocumentError(f"{kind} {document.document_id} is addressed to {parties.requestor_id}, "
                                       "not to this requestor")
        if document.agreement_id != update.agreement_id:
            raise PaymentDocumentError(f"{kind} {document.document_id} names agreement {document.agreement_id}, "
                                       f"sent as {update.agreement_id}'s")
        return document

    def _acceptance(self, document: Document) -> pay.AcceptDocumentRequest:
        signature = self.client.identity.sign(acceptance_message(document.body, document.amount_text))
        return pay.AcceptDocumentRequest(document_id=document.document_id, amount=document.amount_text,
                                         signature=signature)

    async def accept(self, document: Document) -> str:
        """Accepts the document for exactly its amount, signed by this requestor's key; the state now."""
        method = "AcceptDebitNote" if isinstance(document, DebitNote) else "AcceptInvoice"
        response = await self._call(method, self._acceptance(document))
        return STATES.get(response.state, "")

    async def accept_debit_note(self, document_id: str, amount: str, signature: bytes) -> str:
        request = pay.AcceptDocumentRequest(document_id=document_id, amount=amount, signature=signature)
        return STATES.get((await self._call("AcceptDebitNote", request)).state, "")

    async def accept_invoice(self, document_id: str, amount: str, signature: bytes) -> str:
        request = pay.AcceptDocumentRequest(document_id=document_id, amount=amount, signature=signature)
        return STATES.get((await self._call("AcceptInvoice", request)).state, "")

    async def reject_debit_note(self, document_id: str, reason: str) -> str:
        request = pay.RejectDocumentRequest(document_id=document_id, reason=reason[:1000])
        return STATES.get((await self._call("RejectDebitNote", request)).state, "")

    async def reject_invoice(self, document_id: str, reason: str) -> str:
        request = pay.RejectDocumentRequest(document_id=document_id, reason=reason[:1000])
        return STATES.get((await self._call("RejectInvoice", request)).state, "")

    async def reject(self, document: Document, reason: str) -> str:
        if isinstance(document, DebitNote):
            return await self.reject_debit_note(document.document_id, reason)
        return await self.reject_invoice(document.document_id, reason)

    async def agreement_payments(self, agreement_id: str) -> AgreementPayments:
        """What the provider says of the agreement's payment; its documents parsed (not checked)."""
        response = await self._call("GetAgreementPayments", pay.GetAgreementPaymentsRequest(agreement_id=agreement_id))
        notes = [(parse(r.document.body, True), STATES.get(r.state, "")) for r in response.debit_notes]
        invoice = None
        if response.HasField("invoice"):
            invoice = (parse(response.invoice.document.body, False), STATES.get(response.invoice.state, ""))
        return AgreementPayments(response.agreement_id, notes, invoice,  # type: ignore[arg-type]
                                 _amount(response.amount_accepted or "0", "amount_accepted"),
                                 _amount(response.amount_paid or "0", "amount_paid"),
                                 list(response.pending_transactions))

    async def notify_payment(self, agreement_id: str, tx_hash: str) -> tuple[bool, str]:
        """Names a transaction paying the agreement: (credited now, amount paid so far)."""
        request = pay.NotifyPaymentRequest(agreement_id=agreement_id, transaction_hash=tx_hash)
        response = await self._call("NotifyPayment", request)
        return response.credited, response.amount_paid


def _message(which: str | None, body: bytes) -> Any:
    return (pay.DebitNote if which == "debit_note" else pay.Invoice).FromString(body)


def _amount(text: str, what: str) -> Any:
    try:
        return parse_amount(text)
    except ValueError as exc:
        raise PaymentDocumentError(f"{what}: {exc}") from None


def _time(message: Any, name: str) -> datetime | None:
    return getattr(message, name).ToDatetime(tzinfo=timezone.utc) if message.HasField(name) else None


def parse(body: bytes, debit_note: bool) -> Document:
    """A document's body as the requestor's record (not yet checked: see PaymentCalls.check)."""
    try:
        message = (pay.DebitNote if debit_note else pay.Invoice).FromString(body)
    except DecodeError as exc:
        raise PaymentDocumentError(f"a {'debit note' if debit_note else 'invoice'} that does not parse: {exc}") from None
    kind = "debit note" if debit_note else "invoice"
    if debit_note:
        ids = [message.agreement_id, message.debit_note_id, message.activity_id, message.previous_debit_note_id]
    else:
        ids = [message.agreement_id, message.invoice_id, *message.activity_ids]
    if any(len(i) > MAX_ID for i in ids):
        raise PaymentDocumentError(f"a {kind} with an id longer than {MAX_ID} characters")
    p = message.parties
    parties = Parties(p.provider_id, p.requestor_id, p.platform, p.payee_address, p.payer_address)
    usage = dict(cost=message.usage.cost, counters=dict(message.usage.counters))
    if debit_note:
        return DebitNote(
            debit_note_id=message.debit_note_id, agreement_id=message.agreement_id, activity_id=message.activity_id,
            sequence=message.sequence, previous_debit_note_id=message.previous_debit_note_id,
            total_amount_due=_amount(message.total_amount_due, "total_amount_due"),
            amount_text=message.total_amount_due, issued=_time(message, "issued"),
            payment_due=_time(message, "payment_due"), parties=parties, usage_cost=usage["cost"],
            counters=usage["counters"], body=body,
        )
    return Invoice(
        invoice_id=message.invoice_id, agreement_id=message.agreement_id, activity_ids=tuple(message.activity_ids),
        amount=_amount(message.amount, "amount"), amount_text=message.amount, issued=_time(message, "issued"),
        payment_due=_time(message, "payment_due"), parties=parties, usage_cost=usage["cost"],
        counters=usage["counters"], body=body,
    )
