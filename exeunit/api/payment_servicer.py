"""The Payment service (proto/exeunit/v1/payment.proto): validate, call the provider's payments,
convert. The documents' rules live in exeunit.services.payments."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from exeunit import errors
from exeunit.api import payments
from exeunit.api.auth import Caller
from exeunit.api.status import streaming, unary
from exeunit.domain.payments import DocumentKind
from exeunit.services.provider import Provider
from exeunit.v1 import payment_pb2 as pay
from exeunit.v1 import payment_pb2_grpc as pay_grpc
from exeunit.v1.payments import format_amount, is_transaction_hash, parse_amount

Context = grpc.aio.ServicerContext

MAX_ID_CHARS = 200  # ids are uuids; a bound on what a caller makes the provider look up
MAX_REASON_CHARS = 1000
MAX_SIGNATURE_BYTES = 256  # a DER ECDSA P-256 signature is at most 72


def _required(value: str, name: str) -> str:
    if not value:
        raise errors.InvalidArgument(f"{name} is required")
    if len(value) > MAX_ID_CHARS:
        raise errors.InvalidArgument(f"{name} is {len(value)} characters long; at most {MAX_ID_CHARS}")
    return value


def _amount(text: str) -> str:
    """The amount as given (the acceptance signs these very characters), once it parses and is
    written as the documents write amounts: the kept signature then verifies against the document."""
    try:
        canonical = format_amount(parse_amount(text))
    except ValueError as exc:
        raise errors.InvalidArgument(f"amount: {exc}") from None
    if text != canonical:
        raise errors.InvalidArgument(f"amount {text!r}: write it as the document does, {canonical!r}")
    return text


def _signature(signature: bytes) -> bytes:
    if not signature:
        raise errors.InvalidArgument("signature is required: the requestor's over the document and the amount "
                                     "(see exeunit/v1/payments.py acceptance_message)")
    if len(signature) > MAX_SIGNATURE_BYTES:
        raise errors.InvalidArgument(f"signature is {len(signature)} bytes long; a P-256 one is at most 72")
    return signature


def _reason(reason: str) -> str:
    if len(reason) > MAX_REASON_CHARS:
        raise errors.InvalidArgument(f"reason is {len(reason)} characters long; at most {MAX_REASON_CHARS}")
    return reason


class PaymentServicer(pay_grpc.PaymentServicer):
    def __init__(self, provider: Provider, caller: Caller) -> None:
        self.provider = provider
        self.caller = caller

    @streaming
    async def WatchPayments(self, request: pay.WatchPaymentsRequest, context: Context,
                            requestor_id: str) -> AsyncIterator[pay.PaymentEvent]:
        changes = self.provider.payments.watch(requestor_id, request.after_sequence)
        async for change in self.provider.counted(requestor_id, changes):  # one of its --streams-per-requestor
            yield payments.payment_event(change)

    @unary
    async def GetAgreementPayments(self, request: pay.GetAgreementPaymentsRequest, context: Context,
                                   requestor_id: str) -> pay.AgreementPayments:
        view = self.provider.payments.agreement_payments(requestor_id, _required(request.agreement_id, "agreement_id"))
        return payments.agreement_payments_to_proto(view)

    @unary
    async def AcceptDebitNote(self, request: pay.AcceptDocumentRequest, context: Context,
                              requestor_id: str) -> pay.AcceptDocumentResponse:
        return await self._accept(request, requestor_id, DocumentKind.DEBIT_NOTE)

    @unary
    async def AcceptInvoice(self, request: pay.AcceptDocumentRequest, context: Context,
                            requestor_id: str) -> pay.AcceptDocumentResponse:
        return await self._accept(request, requestor_id, DocumentKind.INVOICE)

    @unary
    async def RejectDebitNote(self, request: pay.RejectDocumentRequest, context: Context,
                              requestor_id: str) -> pay.RejectDocumentResponse:
        return await self._reject(request, requestor_id, DocumentKind.DEBIT_NOTE)

    @unary
    async def RejectInvoice(self, request: pay.RejectDocumentRequest, context: Context,
                            requestor_id: str) -> pay.RejectDocumentResponse:
        return await self._reject(request, requestor_id, DocumentKind.INVOICE)

    @unary
    async def NotifyPayment(self, request: pay.NotifyPaymentRequest, context: Context,
                            requestor_id: str) -> pay.NotifyPaymentResponse:
        agreement_id = _required(request.agreement_id, "agreement_id")
        if not is_transaction_hash(request.transaction_hash):
            raise errors.InvalidArgument(f"transaction_hash {request.transaction_hash[:80]!r} is not 0x and 64 hex digits")
        credited, paid = await self.provider.payments.notify_payment(requestor_id, agreement_id,
                                                                     request.transaction_hash)
        return pay.NotifyPaymentResponse(credited=credited, amount_paid=format_amount(paid))

    async def _accept(self, request: pay.AcceptDocumentRequest, requestor_id: str,
                      kind: DocumentKind) -> pay.AcceptDocumentResponse:
        document_id = _required(request.document_id, "document_id")
        amount = _amount(request.amount)
        signature = _signature(request.signature)
        key = self.caller.public_key()
        if not key:  # identify() proved a caller, so its key is there; never accept without one
            raise errors.Unauthenticated("an acceptance needs a call signed with the requestor's key")
        state = await self.provider.payments.accept(requestor_id, document_id, kind, amount, signature, key)
        return pay.AcceptDocumentResponse(state=payments.DOCUMENT_STATES[state])

    async def _reject(self, request: pay.RejectDocumentRequest, requestor_id: str,
                      kind: DocumentKind) -> pay.RejectDocumentResponse:
        document_id = _required(request.document_id, "document_id")
        state = await self.provider.payments.reject(requestor_id, document_id, kind, _reason(request.reason))
        return pay.RejectDocumentResponse(state=payments.DOCUMENT_STATES[state])
