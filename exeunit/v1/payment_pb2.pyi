import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from exeunit.v1 import market_pb2 as _market_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DocumentState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DOCUMENT_STATE_UNSPECIFIED: _ClassVar[DocumentState]
    DOCUMENT_STATE_ISSUED: _ClassVar[DocumentState]
    DOCUMENT_STATE_ACCEPTED: _ClassVar[DocumentState]
    DOCUMENT_STATE_REJECTED: _ClassVar[DocumentState]
    DOCUMENT_STATE_SETTLED: _ClassVar[DocumentState]
DOCUMENT_STATE_UNSPECIFIED: DocumentState
DOCUMENT_STATE_ISSUED: DocumentState
DOCUMENT_STATE_ACCEPTED: DocumentState
DOCUMENT_STATE_REJECTED: DocumentState
DOCUMENT_STATE_SETTLED: DocumentState

class SignedDocument(_message.Message):
    __slots__ = ("body", "signature")
    BODY_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    body: bytes
    signature: bytes
    def __init__(self, body: _Optional[bytes] = ..., signature: _Optional[bytes] = ...) -> None: ...

class DebitNote(_message.Message):
    __slots__ = ("debit_note_id", "agreement_id", "activity_id", "sequence", "previous_debit_note_id", "total_amount_due", "usage", "issued", "payment_due", "parties")
    DEBIT_NOTE_ID_FIELD_NUMBER: _ClassVar[int]
    AGREEMENT_ID_FIELD_NUMBER: _ClassVar[int]
    ACTIVITY_ID_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_DEBIT_NOTE_ID_FIELD_NUMBER: _ClassVar[int]
    TOTAL_AMOUNT_DUE_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    ISSUED_FIELD_NUMBER: _ClassVar[int]
    PAYMENT_DUE_FIELD_NUMBER: _ClassVar[int]
    PARTIES_FIELD_NUMBER: _ClassVar[int]
    debit_note_id: str
    agreement_id: str
    activity_id: str
    sequence: int
    previous_debit_note_id: str
    total_amount_due: str
    usage: _market_pb2.AgreementUsage
    issued: _timestamp_pb2.Timestamp
    payment_due: _timestamp_pb2.Timestamp
    parties: PaymentParties
    def __init__(self, debit_note_id: _Optional[str] = ..., agreement_id: _Optional[str] = ..., activity_id: _Optional[str] = ..., sequence: _Optional[int] = ..., previous_debit_note_id: _Optional[str] = ..., total_amount_due: _Optional[str] = ..., usage: _Optional[_Union[_market_pb2.AgreementUsage, _Mapping]] = ..., issued: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., payment_due: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., parties: _Optional[_Union[PaymentParties, _Mapping]] = ...) -> None: ...

class Invoice(_message.Message):
    __slots__ = ("invoice_id", "agreement_id", "activity_ids", "amount", "usage", "issued", "payment_due", "parties")
    INVOICE_ID_FIELD_NUMBER: _ClassVar[int]
    AGREEMENT_ID_FIELD_NUMBER: _ClassVar[int]
    ACTIVITY_IDS_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    ISSUED_FIELD_NUMBER: _ClassVar[int]
    PAYMENT_DUE_FIELD_NUMBER: _ClassVar[int]
    PARTIES_FIELD_NUMBER: _ClassVar[int]
    invoice_id: str
    agreement_id: str
    activity_ids: _containers.RepeatedScalarFieldContainer[str]
    amount: str
    usage: _market_pb2.AgreementUsage
    issued: _timestamp_pb2.Timestamp
    payment_due: _timestamp_pb2.Timestamp
    parties: PaymentParties
    def __init__(self, invoice_id: _Optional[str] = ..., agreement_id: _Optional[str] = ..., activity_ids: _Optional[_Iterable[str]] = ..., amount: _Optional[str] = ..., usage: _Optional[_Union[_market_pb2.AgreementUsage, _Mapping]] = ..., issued: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., payment_due: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., parties: _Optional[_Union[PaymentParties, _Mapping]] = ...) -> None: ...

class PaymentParties(_message.Message):
    __slots__ = ("provider_id", "provider_public_key", "requestor_id", "platform", "payee_address", "payer_address")
    PROVIDER_ID_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    REQUESTOR_ID_FIELD_NUMBER: _ClassVar[int]
    PLATFORM_FIELD_NUMBER: _ClassVar[int]
    PAYEE_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    PAYER_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    provider_id: str
    provider_public_key: bytes
    requestor_id: str
    platform: str
    payee_address: str
    payer_address: str
    def __init__(self, provider_id: _Optional[str] = ..., provider_public_key: _Optional[bytes] = ..., requestor_id: _Optional[str] = ..., platform: _Optional[str] = ..., payee_address: _Optional[str] = ..., payer_address: _Optional[str] = ...) -> None: ...

class DebitNoteRecord(_message.Message):
    __slots__ = ("document", "state", "acceptance_signature", "rejection_reason")
    DOCUMENT_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ACCEPTANCE_SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    REJECTION_REASON_FIELD_NUMBER: _ClassVar[int]
    document: SignedDocument
    state: DocumentState
    acceptance_signature: bytes
    rejection_reason: str
    def __init__(self, document: _Optional[_Union[SignedDocument, _Mapping]] = ..., state: _Optional[_Union[DocumentState, str]] = ..., acceptance_signature: _Optional[bytes] = ..., rejection_reason: _Optional[str] = ...) -> None: ...

class InvoiceRecord(_message.Message):
    __slots__ = ("document", "state", "acceptance_signature", "rejection_reason")
    DOCUMENT_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ACCEPTANCE_SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    REJECTION_REASON_FIELD_NUMBER: _ClassVar[int]
    document: SignedDocument
    state: DocumentState
    acceptance_signature: bytes
    rejection_reason: str
    def __init__(self, document: _Optional[_Union[SignedDocument, _Mapping]] = ..., state: _Optional[_Union[DocumentState, str]] = ..., acceptance_signature: _Optional[bytes] = ..., rejection_reason: _Optional[str] = ...) -> None: ...

class CreditedPayment(_message.Message):
    __slots__ = ("transaction_hash", "amount", "block_number")
    TRANSACTION_HASH_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    BLOCK_NUMBER_FIELD_NUMBER: _ClassVar[int]
    transaction_hash: str
    amount: str
    block_number: int
    def __init__(self, transaction_hash: _Optional[str] = ..., amount: _Optional[str] = ..., block_number: _Optional[int] = ...) -> None: ...

class AgreementPayments(_message.Message):
    __slots__ = ("agreement_id", "debit_notes", "invoice", "amount_accepted", "amount_paid", "payments", "pending_transactions")
    AGREEMENT_ID_FIELD_NUMBER: _ClassVar[int]
    DEBIT_NOTES_FIELD_NUMBER: _ClassVar[int]
    INVOICE_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_PAID_FIELD_NUMBER: _ClassVar[int]
    PAYMENTS_FIELD_NUMBER: _ClassVar[int]
    PENDING_TRANSACTIONS_FIELD_NUMBER: _ClassVar[int]
    agreement_id: str
    debit_notes: _containers.RepeatedCompositeFieldContainer[DebitNoteRecord]
    invoice: InvoiceRecord
    amount_accepted: str
    amount_paid: str
    payments: _containers.RepeatedCompositeFieldContainer[CreditedPayment]
    pending_transactions: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, agreement_id: _Optional[str] = ..., debit_notes: _Optional[_Iterable[_Union[DebitNoteRecord, _Mapping]]] = ..., invoice: _Optional[_Union[InvoiceRecord, _Mapping]] = ..., amount_accepted: _Optional[str] = ..., amount_paid: _Optional[str] = ..., payments: _Optional[_Iterable[_Union[CreditedPayment, _Mapping]]] = ..., pending_transactions: _Optional[_Iterable[str]] = ...) -> None: ...

class PaymentEvent(_message.Message):
    __slots__ = ("sequence", "debit_note", "invoice", "payment", "agreement_id")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    DEBIT_NOTE_FIELD_NUMBER: _ClassVar[int]
    INVOICE_FIELD_NUMBER: _ClassVar[int]
    PAYMENT_FIELD_NUMBER: _ClassVar[int]
    AGREEMENT_ID_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    debit_note: DebitNoteRecord
    invoice: InvoiceRecord
    payment: CreditedPayment
    agreement_id: str
    def __init__(self, sequence: _Optional[int] = ..., debit_note: _Optional[_Union[DebitNoteRecord, _Mapping]] = ..., invoice: _Optional[_Union[InvoiceRecord, _Mapping]] = ..., payment: _Optional[_Union[CreditedPayment, _Mapping]] = ..., agreement_id: _Optional[str] = ...) -> None: ...

class WatchPaymentsRequest(_message.Message):
    __slots__ = ("after_sequence",)
    AFTER_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    after_sequence: int
    def __init__(self, after_sequence: _Optional[int] = ...) -> None: ...

class GetAgreementPaymentsRequest(_message.Message):
    __slots__ = ("agreement_id",)
    AGREEMENT_ID_FIELD_NUMBER: _ClassVar[int]
    agreement_id: str
    def __init__(self, agreement_id: _Optional[str] = ...) -> None: ...

class AcceptDocumentRequest(_message.Message):
    __slots__ = ("document_id", "amount", "signature")
    DOCUMENT_ID_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    document_id: str
    amount: str
    signature: bytes
    def __init__(self, document_id: _Optional[str] = ..., amount: _Optional[str] = ..., signature: _Optional[bytes] = ...) -> None: ...

class AcceptDocumentResponse(_message.Message):
    __slots__ = ("state",)
    STATE_FIELD_NUMBER: _ClassVar[int]
    state: DocumentState
    def __init__(self, state: _Optional[_Union[DocumentState, str]] = ...) -> None: ...

class RejectDocumentRequest(_message.Message):
    __slots__ = ("document_id", "reason")
    DOCUMENT_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    document_id: str
    reason: str
    def __init__(self, document_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class RejectDocumentResponse(_message.Message):
    __slots__ = ("state",)
    STATE_FIELD_NUMBER: _ClassVar[int]
    state: DocumentState
    def __init__(self, state: _Optional[_Union[DocumentState, str]] = ...) -> None: ...

class NotifyPaymentRequest(_message.Message):
    __slots__ = ("agreement_id", "transaction_hash")
    AGREEMENT_ID_FIELD_NUMBER: _ClassVar[int]
    TRANSACTION_HASH_FIELD_NUMBER: _ClassVar[int]
    agreement_id: str
    transaction_hash: str
    def __init__(self, agreement_id: _Optional[str] = ..., transaction_hash: _Optional[str] = ...) -> None: ...

class NotifyPaymentResponse(_message.Message):
    __slots__ = ("credited", "amount_paid")
    CREDITED_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_PAID_FIELD_NUMBER: _ClassVar[int]
    credited: bool
    amount_paid: str
    def __init__(self, credited: _Optional[bool] = ..., amount_paid: _Optional[str] = ...) -> None: ...
