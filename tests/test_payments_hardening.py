"""The requestor against a provider that lies in its payment documents (issue 29, the attacker's
review: H2, M9, M11, L3, L5): documents sealed as a provider seals them, with a key of the test's,
handled by requestor.payments without a daemon."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta, timezone
from decimal import Decimal

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


# M9: nothing a provider sends grows the requestor's memory, evades the notes' rule or spends its gas.

class _Settling:
    """A settlement that records what it was asked to pay."""

    def __init__(self) -> None:
        self.paid: list[tuple[str, Decimal, Decimal]] = []

    def pays(self, info: AgreementInfo) -> bool:
        return True

    def pay(self, calls, info, kind, document_id, due, failed, least=Decimal(0), payee=""):
        self.paid.append((document_id, due, least))


async def test_long_ids_are_refused_and_handled_ids_are_kept_per_agreement_until_it_goes() -> None:
    lying = Lying()
    tracked = lying.agree()
    await lying.send(NOTE, "0.001", "x" * 65)
    await lying.send(NOTE, "0.001", "n1", activity="a" * 65)
    assert lying.accepted() == [] and all("longer than 64" in f for f in lying.failures())
    assert len(lying.failures()) == 2
    await lying.send(NOTE, "0.001", "n2")
    assert lying.accepted() == ["n2"] and tracked.seen == {"n2"}
    lying.payments.forget("agreement-1")
    assert "agreement-1" not in lying.payments._agreements and not hasattr(lying.watcher, "seen")


async def test_notes_are_counted_per_agreement_whatever_activity_they_name() -> None:
    lying = Lying()
    lying.agree(started=datetime.now(timezone.utc) - timedelta(seconds=10), rate=1.0, interval=10.0)
    for n in range(1, 7):  # the 6th in 10 s at a 10 s interval is too many, each naming a new activity
        await lying.send(NOTE, "0.01", f"n{n}", activity=f"invented-{n}")
    assert lying.client.terminated == [("agreement-1", "TooManyDebitNotes")] and len(lying.accepted()) == 5


async def test_a_payable_note_is_paid_at_most_once_per_payment_timeout_and_not_below_the_minimum() -> None:
    from requestor.payments import MIN_NOTE_TRANSFER

    lying = Lying()
    settling = _Settling()
    lying.payments.settlement = settling  # type: ignore[assignment]
    tracked = lying.agree(rate=1.0)
    tracked.info = replace(tracked.info, payment_timeout=60.0)  # type: ignore[arg-type]
    due = datetime.now(timezone.utc) + timedelta(seconds=60)
    await lying.send(NOTE, "0.01", "n1", due=due)
    await lying.send(NOTE, "0.02", "n2", due=due)  # a second payable note a moment later: accepted, not paid
    assert lying.accepted() == ["n1", "n2"]
    assert settling.paid == [("n1", Decimal("0.01"), MIN_NOTE_TRANSFER)] and MIN_NOTE_TRANSFER > 0
    other = lying.agree("agreement-2", rate=1.0)  # no mid-agreement payments agreed: a payable note is not paid
    assert other.info is not None and other.info.payment_timeout == 0
    await lying.send(NOTE, "0.01", "m1", "agreement-2", due=due)
    assert lying.accepted()[-1] == "m1" and len(settling.paid) == 1


# M11: the budget left for one agreement leaves out what the others accrued.

async def test_a_note_must_fit_the_budget_left_beside_every_other_live_agreement() -> None:
    lying = Lying(budget=Decimal(1))
    lying.agree(started=datetime.now(timezone.utc) - timedelta(days=1), rate=1.0)
    lying.agree("agreement-2", started=datetime.now(timezone.utc) - timedelta(days=1), rate=1.0)
    lying.budget.accrue("agreement-2", Decimal("0.5"))
    lying.budget.accrue("agreement-1", Decimal("0.3"))
    await lying.send(NOTE, "0.45", "n1")  # 1 - 0.5 - 0.3 left, plus this agreement's own 0.3
    await lying.send(NOTE, "0.6", "n2")
    assert lying.accepted() == ["n1"] and "more than the budget has left (0.50)" in lying.failures()[0]
    await lying.send(NOTE, "0.6", "m1", "agreement-2")  # 1 - 0.45 - 0.5 + 0.5 left
    assert lying.accepted() == ["n1"] and "(0.55)" in lying.failures()[1]


# L3: a document counts only from its agreement's provider.

async def test_another_provider_cannot_bill_an_agreement_it_is_not_party_to() -> None:
    lying, other = Lying(), Lying()
    tracked = lying.agree()
    other.identity = lying.identity
    other.client = _Client(other.provider_id, lying.identity)
    other.calls = _Calls(other.client)  # type: ignore[arg-type]
    intruder = _Watcher(other.calls)
    # Its own watcher (its client, pinned to its id): the agreement is not its provider's.
    await lying.payments._handle(intruder, other.update(NOTE, "0.001", "n1"))
    assert other.accepted() == [] and tracked.last_note == 0 and not lying.failures()
    # On the agreement's watcher, an unpinned client: signed by someone else than the agreement's provider.
    lying.client.provider_id = None
    await lying.payments._handle(lying.watcher, other.update(NOTE, "0.001", "n2"))
    assert lying.accepted() == [] and "not the agreement's provider" in lying.failures()[0]


# L5: the payee is the address the offer bound to the provider, in the agreement and in every document.

def test_an_offer_binds_a_payee_only_with_the_providers_signature() -> None:
    from exeunit.api.payments import bind_platform, public_key_der
    from exeunit.domain.payments import PaymentPlatform
    from exeunit.v1 import market_pb2 as mkt
    from requestor.client.convert import payment_terms_from

    key = ec.generate_private_key(ec.SECP256R1())
    provider_id = node_id_of(key.public_key())
    token, payee = "0x" + "11" * 20, "0x" + "AB" * 20
    signed = bind_platform(key, provider_id, PaymentPlatform("erc20-anvil-tglm", 31337, token, payee))
    other = bind_platform(ec.generate_private_key(ec.SECP256R1()), provider_id,
                          PaymentPlatform("erc20-holesky-tglm", 17000, token, payee))
    moved = replace(signed, platform="erc20-polygon-glm", payee_address="0x" + "22" * 20)  # the signature of another
    terms = mkt.PaymentTerms(provider_public_key=public_key_der(key), platforms=[
        mkt.PaymentPlatform(platform=p.platform, chain_id=p.chain_id, token_address=p.token_address,
                            payee_address=p.payee_address, binding_signature=p.binding_signature)
        for p in (signed, other, moved)])
    read = payment_terms_from(terms, provider_id)
    assert read.payee_for("erc20-anvil-tglm") == payee.lower()
    assert read.payee_for("erc20-holesky-tglm") == "" and read.payee_for("erc20-polygon-glm") == ""
    assert payment_terms_from(terms, "0x" + "33" * 20).payees == ()  # the key is not that provider's


async def test_a_document_or_agreement_naming_another_payee_than_the_offer_bound_is_not_paid() -> None:
    from exeunit.domain.payments import AgreedPayment as Agreed

    lying = Lying()
    settling = _Settling()
    lying.payments.settlement = settling  # type: ignore[assignment]
    bound, other = "0x" + "ab" * 20, "0x" + "cd" * 20
    tracked = lying.agree(rate=1.0)
    tracked.info = replace(tracked.info, platform="erc20-anvil-tglm", payee_address=other)  # type: ignore[arg-type]
    tracked.payee = bound
    sealer = ProtoSealer(lying.key, lying.provider_id)

    def on(payee: str, document_id: str):
        update = lying.update(INVOICE, "0.01", document_id)
        draft = DocumentDraft(kind=INVOICE, document_id=document_id, agreement_id="agreement-1",
                              requestor_id=lying.identity.requestor_id, amount=Decimal("0.01"),
                              usage=UsageFigures(1.0, 1.0, {}), issued=datetime.now(timezone.utc),
                              payment=Agreed(platform="erc20-anvil-tglm", payee_address=payee),
                              activity_ids=("activity-1",), sequence=1)
        event = pay.PaymentEvent(sequence=update.sequence, agreement_id="agreement-1")
        event.invoice.CopyFrom(invoice_record(PaymentDocument(draft, sealer.seal(draft))))
        return lying.calls._update(event)

    await lying.payments._handle(lying.watcher, on(other, "i1"))  # the agreement names another payee
    tracked.info = replace(tracked.info, payee_address=bound)
    await lying.payments._handle(lying.watcher, on(other, "i2"))  # the document does
    assert lying.accepted() == [] and settling.paid == []
    assert all("not the one the offer bound" in f for f in lying.failures()) and len(lying.failures()) == 2
