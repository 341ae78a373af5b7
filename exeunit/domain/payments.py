"""How a provider is paid: its payment terms, a demand's choice within them, what an agreement
agreed to, and the documents (debit notes, invoices) that say what it owes.

Golem's scheme ("payu"): while an agreement runs the provider issues a debit note every interval
with the cost so far; the requestor must accept each within the accept timeout. With mid-agreement
payments on (a payment timeout agreed), some notes are payable: what they state must be paid on
the chain by their due time. When the agreement ends, an invoice states the whole cost. Amounts
are Decimal, computed from the agreement's pricing and usage and rounded down to the token's base
unit; the documents themselves are sealed (serialized and signed) by a `DocumentSealer`, since
their bytes are what is signed and kept.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from decimal import ROUND_DOWN, Decimal
from enum import Enum
from typing import Protocol

from exeunit import errors
from exeunit.v1.conventions import MIN_ACCEPT_TIMEOUT_SECONDS, TOKEN_DECIMALS, is_chain_address

BASE_UNIT = Decimal(1).scaleb(-TOKEN_DECIMALS)
# The longest debit note interval or payment timeout a demand may ask (yagna's bound): no longer
# than an agreement lives here (a day at most), so every agreement gets its notes.
MAX_INTERVAL_SECONDS = 24 * 3600.0


def amount_of(cost: float) -> Decimal:
    """A cost (float, from the pricing) as the amount a document states: the decimal it prints
    as, rounded down to the token's base unit."""
    return max(Decimal(repr(cost)), Decimal(0)).quantize(BASE_UNIT, rounding=ROUND_DOWN)


@dataclass(frozen=True)
class PaymentPlatform:
    """One chain and token the provider is paid in, and its address there (signed: the binding)."""

    platform: str  # "erc20-<network>-<token>"
    chain_id: int
    token_address: str
    payee_address: str
    confirmations: int = 1
    binding_signature: bytes = b""


@dataclass(frozen=True)
class PaymentSettings:
    """The operator's payment terms (`exeunit serve --payment-*`); yagna's defaults."""

    platforms: tuple[PaymentPlatform, ...] = ()
    debit_note_interval_seconds: float = 120.0
    min_debit_note_interval_seconds: float = 10.0  # a note costs a signature and a write: not every second
    payment_timeout_seconds: float = 120.0
    min_payment_timeout_seconds: float = 30.0
    accept_timeout_seconds: float = 240.0
    public_key: bytes = b""  # the provider's (DER SubjectPublicKeyInfo): it signs the documents

    def platform(self, name: str) -> PaymentPlatform | None:
        return next((p for p in self.platforms if p.platform == name), None)


@dataclass(frozen=True)
class PaymentChoice:
    """A demand's choice within the offer's terms; zero durations take the offer's."""

    platform: str = ""
    payer_address: str = ""
    debit_note_interval_seconds: float = 0.0
    payment_timeout_seconds: float = 0.0  # zero: no mid-agreement payments
    accept_timeout_seconds: float = 0.0
    payer_proof: bytes = b""  # the payer address's signature over payer_binding_text (conventions)


@dataclass(frozen=True)
class AgreedPayment:
    """What an agreement agreed to about its payment."""

    platform: str = ""  # empty: its documents are accounted, not paid on a chain
    chain_id: int = 0
    token_address: str = ""
    payee_address: str = ""
    payer_address: str = ""
    confirmations: int = 0
    debit_note_interval_seconds: float = 120.0
    payment_timeout_seconds: float = 0.0
    accept_timeout_seconds: float = 240.0

    @property
    def mid_agreement_payments(self) -> bool:
        return self.payment_timeout_seconds > 0


def agree(choice: PaymentChoice | None, settings: PaymentSettings) -> AgreedPayment | str:
    """The terms an agreement gets for a demand's choice, or why the choice is outside the offer."""
    choice = choice or PaymentChoice()
    agreed = AgreedPayment(debit_note_interval_seconds=settings.debit_note_interval_seconds,
                           accept_timeout_seconds=settings.accept_timeout_seconds)
    if choice.platform:
        platform = settings.platform(choice.platform)
        if platform is None:
            offered = ", ".join(p.platform for p in settings.platforms) or "none"
            return f"demand.payment.platform {choice.platform!r} is not offered (offered: {offered})"
        if not is_chain_address(choice.payer_address):
            return f"demand.payment.payer_address {choice.payer_address[:50]!r} is not 0x and 40 hex digits"
        agreed = replace(agreed, platform=platform.platform, chain_id=platform.chain_id,
                         token_address=platform.token_address, payee_address=platform.payee_address,
                         payer_address=choice.payer_address, confirmations=platform.confirmations)
    elif settings.platforms:
        return ("this provider is paid on " + ", ".join(p.platform for p in settings.platforms)
                + ": choose one in demand.payment.platform, with the payer address")
    interval = choice.debit_note_interval_seconds
    if interval:
        if interval > MAX_INTERVAL_SECONDS:
            return f"demand.payment.debit_note_interval {interval:g}s is above {MAX_INTERVAL_SECONDS:g}s"
        if interval < settings.min_debit_note_interval_seconds:
            return (f"demand.payment.debit_note_interval {interval:g}s is below this provider's minimum "
                    f"{settings.min_debit_note_interval_seconds:g}s")
        agreed = replace(agreed, debit_note_interval_seconds=interval)
    timeout = choice.payment_timeout_seconds
    if timeout:
        if timeout > MAX_INTERVAL_SECONDS:
            return f"demand.payment.payment_timeout {timeout:g}s is above {MAX_INTERVAL_SECONDS:g}s"
        if not agreed.platform:
            return "mid-agreement payments (demand.payment.payment_timeout) need a payment platform"
        if timeout < settings.min_payment_timeout_seconds:
            return (f"demand.payment.payment_timeout {timeout:g}s is below this provider's minimum "
                    f"{settings.min_payment_timeout_seconds:g}s")
        agreed = replace(agreed, payment_timeout_seconds=timeout)
    accept = choice.accept_timeout_seconds
    if accept:
        if not MIN_ACCEPT_TIMEOUT_SECONDS <= accept <= settings.accept_timeout_seconds:
            return (f"demand.payment.debit_note_accept_timeout {accept:g}s is outside "
                    f"{MIN_ACCEPT_TIMEOUT_SECONDS:g}-{settings.accept_timeout_seconds:g}s")
        agreed = replace(agreed, accept_timeout_seconds=accept)
    return agreed


class DocumentKind(Enum):
    DEBIT_NOTE = "debit_note"
    INVOICE = "invoice"


class DocumentState(Enum):
    ISSUED = "Issued"
    ACCEPTED = "Accepted"
    REJECTED = "Rejected"
    SETTLED = "Settled"  # paid in full on the chain (or accepted, with no platform to pay on)


@dataclass(frozen=True)
class UsageFigures:
    """The usage a document's amount comes from (what AgreementUsage carries on the wire)."""

    cpu_seconds: float
    duration_seconds: float
    counters: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class DocumentDraft:
    """What the provider states in a document before it is sealed."""

    kind: DocumentKind
    document_id: str
    agreement_id: str
    requestor_id: str
    amount: Decimal
    usage: UsageFigures
    issued: datetime
    payment: AgreedPayment
    activity_ids: tuple[str, ...] = ()  # a debit note: the live one; an invoice: all of them
    sequence: int = 0  # debit notes: 1, 2, ... within the agreement
    previous_id: str = ""
    payment_due: datetime | None = None  # a payable debit note's, and an invoice's


@dataclass(frozen=True)
class Sealed:
    """A document's bytes as issued, and the provider's signature over them."""

    body: bytes
    signature: bytes


class DocumentSealer(Protocol):
    """Serializes and signs a document (exeunit.api.payments: the contract's bytes)."""

    def seal(self, draft: DocumentDraft) -> Sealed: ...

    def acceptance_valid(self, sealed: Sealed, amount: str, signature: bytes, requestor_key: bytes,
                         requestor_id: str) -> bool: ...


@dataclass
class PaymentDocument:
    """A document the provider issued, and what became of it."""

    draft: DocumentDraft
    sealed: Sealed
    state: DocumentState = DocumentState.ISSUED
    acceptance_signature: bytes = b""
    rejection_reason: str = ""

    @property
    def document_id(self) -> str:
        return self.draft.document_id

    @property
    def accept_deadline(self) -> datetime:
        return self.draft.issued + timedelta(seconds=self.draft.payment.accept_timeout_seconds)


@dataclass(frozen=True)
class CreditedPayment:
    """A transaction read on the chain and credited to one agreement."""

    transaction_hash: str
    agreement_id: str
    amount: Decimal
    block_number: int


@dataclass(frozen=True)
class ChainTransfer:
    """What a transaction did with the token, as the chain says: the sum of its transfers from the
    payer to the payee, and how deep it is."""

    amount: Decimal
    block_number: int
    confirmations: int
    mined: datetime  # its block's time


class ChainReader(Protocol):
    """Reads token transfers on a chain (exeunit.runtime.chain: JSON-RPC)."""

    async def transfer(self, payment: AgreedPayment, transaction_hash: str) -> ChainTransfer | None:
        """None while the transaction is not mined; errors.FailedPrecondition when it failed or
        moved none of the token from the payer to the payee."""
        ...

    def signed_by(self, address: str, text: str, signature: bytes) -> bool:
        """Whether `signature` is `address`'s over `text` (an EIP-191 personal message)."""
        ...


def no_chain_error(platform: str) -> errors.FailedPrecondition:
    return errors.FailedPrecondition(f"this provider reads no chain for platform {platform!r}; its operator "
                                     "must give --payment-rpc-url")


@dataclass(frozen=True)
class PaymentChange:
    """One change a watcher is told of: a document as it is now, or a payment credited."""

    sequence: int
    agreement_id: str
    document: PaymentDocument | None = None
    credit: CreditedPayment | None = None


@dataclass(frozen=True)
class PaymentsView:
    """Everything about one agreement's payment (GetAgreementPayments)."""

    agreement_id: str
    debit_notes: list[PaymentDocument]
    invoice: PaymentDocument | None
    accepted: Decimal
    paid: Decimal
    credits: list[CreditedPayment]
    pending: list[str]


@dataclass(frozen=True)
class AgreementMoney:
    """What an operator sees of one agreement's payment: what it owes so far (its latest
    document), what its invoice says, what the requestor accepted, what the chain paid, and what
    is past its due time unpaid."""

    agreement_id: str
    due: Decimal
    invoiced: Decimal
    accepted: Decimal
    paid: Decimal
    overdue: Decimal


def money_of(agreement_id: str, documents: list[PaymentDocument], paid: Decimal, now: datetime) -> AgreementMoney:
    """The figures of one agreement from its documents (debit notes then invoice) and its credits."""
    notes = [d for d in documents if d.draft.kind is DocumentKind.DEBIT_NOTE]
    invoice = next((d for d in documents if d.draft.kind is DocumentKind.INVOICE), None)
    latest = invoice or (notes[-1] if notes else None)
    accepted = max((d.draft.amount for d in documents
                    if d.state in (DocumentState.ACCEPTED, DocumentState.SETTLED)), default=Decimal(0))
    owed_by_now = max((d.draft.amount for d in documents if d.draft.payment.platform and d.draft.payment_due is not None
                       and d.draft.payment_due <= now), default=Decimal(0))
    return AgreementMoney(agreement_id, latest.draft.amount if latest else Decimal(0),
                          invoice.draft.amount if invoice else Decimal(0), accepted, paid,
                          max(owed_by_now - paid, Decimal(0)))


class PaymentStore(Protocol):
    """Where documents and credited payments outlive the daemon (exeunit.persistence.store)."""

    def put_payment_document(self, document: PaymentDocument, sequence: int) -> None:
        """Keeps the document as it is now; `sequence` orders its changes among all documents."""
        ...

    def payment_documents(self, agreement_id: str, latest: int | None = None) -> list[tuple[int, PaymentDocument]]:
        """The agreement's documents, as last put, in the order they were issued (its `latest`
        debit notes only, when given, and its invoice)."""
        ...

    def last_payment_sequence(self) -> int: ...

    def number_credit(self, transaction_hash: str, sequence: int) -> None:
        """Keeps the sequence number a credit was told under (last_payment_sequence counts it)."""
        ...

    def credit_payment(self, payment: CreditedPayment) -> bool:
        """Records the credit; False, and nothing recorded, when its transaction was credited already
        (to whatever agreement): one transaction pays once."""
        ...

    def credited_payments(self, agreement_id: str) -> list[CreditedPayment]: ...

    def credited_agreement(self, transaction_hash: str) -> str | None:
        """The agreement a transaction was credited to, if any."""
        ...
