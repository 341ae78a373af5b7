"""A provider's payment documents as the requestor reads them: debit notes and invoices, plain data
(requestor.client.payments converts and checks the contract's signed documents into these).

Amounts are Decimal, parsed from the documents' decimal strings; `amount_text` keeps the very
characters, and `body` the document's bytes as signed: an acceptance signs both (the provider
takes an acceptance of exactly the amount stated).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

from requestor.budget import money
from requestor.errors import RequestorError
from requestor.model import Pricing

# What an agreement can cost by a time (PaymentChecks.bound): every cpu thread busy all along, each
# other counter growing by one unit a second, for the time since it was made plus this slack
# (clocks apart, the reading behind a document made a moment after it was issued).
BOUND_SLACK_SECONDS = 5.0
# The longest id a document may carry (its own, its agreement's, an activity's): the provider's are
# 32 hex digits; anything longer is refused, not kept (the requestor remembers ids it handled).
MAX_ID = 64


class PaymentDocumentError(RequestorError):
    """A debit note or an invoice that is not taken: unsigned by its provider, not ours, an amount
    that cannot be right. `reject` says whether the provider is told so (RejectDebitNote)."""

    def __init__(self, message: str, reject: bool = False) -> None:
        super().__init__(message)
        self.reject = reject


@dataclass(frozen=True)
class Parties:
    provider_id: str
    requestor_id: str
    platform: str = ""
    payee_address: str = ""
    payer_address: str = ""


@dataclass(frozen=True, repr=False)
class DebitNote:
    """What the provider says an agreement owes so far (yapapi's `DebitNote`: `debit_note_id`,
    `agreement_id`, `activity_id`, `total_amount_due`)."""

    debit_note_id: str
    agreement_id: str
    activity_id: str
    sequence: int
    previous_debit_note_id: str
    total_amount_due: Decimal
    amount_text: str
    issued: datetime | None
    payment_due: datetime | None
    parties: Parties
    usage_cost: float = 0.0
    counters: dict[str, float] = field(default_factory=dict)
    body: bytes = b""

    @property
    def document_id(self) -> str:
        return self.debit_note_id

    @property
    def amount(self) -> Decimal:
        return self.total_amount_due

    @property
    def payable(self) -> bool:
        return self.payment_due is not None

    def __repr__(self) -> str:
        return f"DebitNote(id={self.debit_note_id}, amount={self.amount_text})"


@dataclass(frozen=True, repr=False)
class Invoice:
    """What an ended agreement owes in all (yapapi's `Invoice`: `invoice_id`, `agreement_id`, `amount`)."""

    invoice_id: str
    agreement_id: str
    activity_ids: tuple[str, ...]
    amount: Decimal
    amount_text: str
    issued: datetime | None
    payment_due: datetime | None
    parties: Parties
    usage_cost: float = 0.0
    counters: dict[str, float] = field(default_factory=dict)
    body: bytes = b""

    @property
    def document_id(self) -> str:
        return self.invoice_id

    def __repr__(self) -> str:
        return f"Invoice(id={self.invoice_id}, amount={self.amount_text})"


Document = DebitNote | Invoice


@dataclass(frozen=True)
class PaymentUpdate:
    """One change a provider's payment stream tells of: a document in its state now ("Issued",
    "Accepted", "Rejected", "Settled"), or one that could not be read (`error`), or a payment
    credited (`paid`, neither document nor error)."""

    sequence: int
    agreement_id: str
    document: Document | None = None
    state: str = ""
    error: PaymentDocumentError | None = None
    signature: bytes = b""  # the provider's, over `document.body`
    public_key: bytes = b""  # the key it says signed (DER SubjectPublicKeyInfo)
    paid: Decimal | None = None


@dataclass(frozen=True)
class AgreementPayments:
    """Everything one agreement's provider says of its payment (GetAgreementPayments)."""

    agreement_id: str
    debit_notes: list[tuple[DebitNote, str]]  # each with its state
    invoice: tuple[Invoice, str] | None
    amount_accepted: Decimal
    amount_paid: Decimal
    pending_transactions: list[str]


def max_rate(pricing: Pricing, cpu_threads: int) -> Decimal:
    """The most an agreement can spend per second: every thread busy, and each other counter
    growing by one unit a second (the test runtime's grows by at most that)."""
    per_second = (pricing.per_cpu_second * max(cpu_threads, 1) + pricing.per_duration_second
                  + sum(pricing.per_unit.values()))
    return money(max(per_second, 0.0))


def cost_bound(pricing: Pricing, cpu_threads: int, seconds: float) -> Decimal:
    """The most an agreement at `pricing` with `cpu_threads` can cost after `seconds`, slack included."""
    return money(pricing.start_fee) + max_rate(pricing, cpu_threads) * money(max(seconds, 0.0) + BOUND_SLACK_SECONDS)
