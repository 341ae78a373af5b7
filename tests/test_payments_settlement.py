"""A requestor script paying its provider on a real chain (anvil, the test token), end to end:
Golem checks its account before proposing anything, proposes on the provider's platform, pays
the invoice (and, with mid-agreement payments, the payable debit notes) from its account, and
the provider credits each transfer it read on the chain."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import pytest

from exeunit.v1 import market_pb2 as mkt
from exeunit.v1 import payment_pb2 as pay
from exeunit.v1.payments import parse_amount
from requestor import Golem, events
from requestor.errors import NoPaymentAccountError
from requestor.log import log_summary
from requestor.budget import Budget
from requestor.model import AgreementInfo, Offer, PaymentTerms, Pricing
from requestor.payment_account import PaymentAccount, PaymentConfigError, PaymentNetwork
from requestor.payment_driver import Erc20Driver
from requestor.payload import vm
from requestor.services import Service, ServiceState
from requestor.settlement import Settlement, payment_names
from requestor.strategy import (
    PROP_DEBIT_NOTE_INTERVAL_SEC, PROP_PAYMENT_TIMEOUT_SEC, LeastExpensiveLinearPayuMS, PropValueRange,
)
from tests.client import ContractClient
from tests.conftest import BASE_IMAGE
from tests.daemon_process import Daemon
from tests.test_requestor_services import Recorder

PLATFORM = "erc20-anvil-tglm"
NETWORK = "anvil"  # Golem(payment_network="anvil"): the platform erc20-anvil-tglm
OFFER = Offer("127.0.0.1:1", "0xprovider", "p", "public", "docker-vm", 1, 1, 1, 1, 1, 1,
              Pricing(0.0, 0.0, 0.0, "GLM"), (), False, ())


class Sleeps(Service):
    SECONDS = 3

    @staticmethod
    async def get_payload():
        return await vm.repo(image_tag=BASE_IMAGE, min_mem_gib=0.25, min_storage_gib=0.5)

    async def run(self):
        script = self._ctx.new_script()
        script.run("/bin/sh", "-c", f"sleep {self.SECONDS}")
        yield script


class SleepsLonger(Sleeps):
    SECONDS = 9


class PaysMidway(LeastExpensiveLinearPayuMS):
    """Debit notes every 1-2 s, payable ones due 3-5 s after they come (the provider offers 3)."""

    acceptable_prop_value_range_overrides = {PROP_DEBIT_NOTE_INTERVAL_SEC: PropValueRange(1, 2),
                                             PROP_PAYMENT_TIMEOUT_SEC: PropValueRange(3, 5)}


def provider_flags(chain, payee: str, platform: str = PLATFORM) -> list[str]:
    return ["--payment-platform", platform, "--payment-address", payee,
            "--payment-token-address", chain.token.address, "--payment-chain-id", "31337",
            "--payment-rpc-url", chain.url, "--debit-note-interval", "1", "--min-debit-note-interval", "1",
            "--payment-timeout", "3", "--min-payment-timeout", "2", "--price-start", "0.5",
            "--price-duration-sec", "0.01"]


@pytest.fixture
def payee(chain) -> str:
    return chain.new_account()[0]


@pytest.fixture
def paid_daemon(chain, payee: str):
    daemon = Daemon(*provider_flags(chain, payee))
    yield daemon
    daemon.stop()


@pytest.fixture
def payer(chain, tmp_path: Path, monkeypatch) -> PaymentAccount:
    """The requestor's account (not funded yet), and the environment naming the chain."""
    key = tmp_path / "payer-key"
    monkeypatch.setenv("GOLEM_PAYMENT_RPC_URL", chain.url)
    monkeypatch.setenv("GOLEM_PAYMENT_CHAIN_ID", "31337")
    monkeypatch.setenv("GOLEM_PAYMENT_TOKEN_ADDRESS", chain.token.address)
    monkeypatch.setenv("GOLEM_PAYMENT_KEY_FILE", str(key))
    monkeypatch.delenv("GOLEM_PAYMENT_CONFIRMATIONS", raising=False)
    return PaymentAccount.load(key)


def golem_for(daemon: Daemon, recorder: Recorder, tmp_path: Path, **kw) -> Golem:
    return Golem(budget=10.0, providers=[f"127.0.0.1:{daemon.port}"], payment_network=NETWORK,
                 identity=tmp_path / "requestor-key.pem", event_consumer=log_summary(recorder), **kw)


def of(recorder: Recorder, *kinds: type) -> list:
    return [e for e in recorder.events if isinstance(e, kinds)]


async def provider_view(daemon: Daemon, golem: Golem, agreement_id: str) -> tuple[pay.AgreementPayments, mkt.Agreement]:
    async with ContractClient(f"127.0.0.1:{daemon.port}", None, identity=golem.identity) as client:
        payments = await client.payment.GetAgreementPayments(pay.GetAgreementPaymentsRequest(agreement_id=agreement_id),
                                                             metadata=client.metadata)
        agreement = await client.market.GetAgreement(mkt.GetAgreementRequest(agreement_id=agreement_id),
                                                     metadata=client.metadata)
    return payments, agreement.agreement


def approved(daemon: Daemon) -> list[str]:
    return [line for line in daemon.lines if "event=agreement_approved" in line]


async def test_a_service_is_paid_on_the_chain_and_the_provider_credits_it(chain, paid_daemon, payee, payer,
                                                                          tmp_path) -> None:
    chain.fund(payer.address, eth=1, glm=100)
    recorder = Recorder()
    golem = golem_for(paid_daemon, recorder, tmp_path)
    async with golem:
        assert (golem.payment_driver, golem.payment_network) == ("erc20", NETWORK)
        [instance] = (await golem.run_service(Sleeps)).instances
        await recorder.until(lambda: instance.state is ServiceState.terminated, timeout=60)
    assert not of(recorder, events.PaymentFailed), of(recorder, events.PaymentFailed)
    [accepted] = of(recorder, events.InvoiceAccepted)
    amount = accepted.amount
    assert amount >= Decimal("0.5"), amount  # the start fee at least
    payments, agreement = await provider_view(paid_daemon, golem, accepted.agreement.id)
    assert (agreement.payment.platform, agreement.payment.payer_address.lower()) == (PLATFORM, payer.address.lower())
    assert agreement.payment.payment_timeout.seconds == 0  # a 3 h service: no mid-agreement payments
    assert payments.invoice.state == pay.DOCUMENT_STATE_SETTLED, payments
    assert parse_amount(payments.amount_paid) == amount
    assert not payments.pending_transactions
    assert chain.glm_balance(payee) == int(amount.scaleb(18))  # a new account: all of it from this payment
    assert golem.budget.spent == amount
    assert len(approved(paid_daemon)) == 1


async def test_an_account_that_cannot_pay_the_budget_stops_golem_before_any_agreement(chain, paid_daemon, payer,
                                                                                     tmp_path) -> None:
    chain.fund(payer.address, eth=1, glm=5)  # less than the budget of 10
    recorder = Recorder()
    golem = golem_for(paid_daemon, recorder, tmp_path)
    with pytest.raises(NoPaymentAccountError) as raised:
        async with golem:
            await golem.run_service(Sleeps)
    assert (raised.value.required_driver, raised.value.required_network) == ("erc20", NETWORK)
    assert "holds 5 tglm, below the budget of 10" in raised.value.reason, raised.value.reason
    assert not golem.operative and not approved(paid_daemon)
    assert not of(recorder, events.AgreementCreated)


async def test_an_offer_on_another_platform_is_skipped_with_the_reason(chain, payee, payer, tmp_path, caplog) -> None:
    chain.fund(payer.address, eth=1, glm=100)
    daemon = Daemon(*provider_flags(chain, payee, platform="erc20-elsewhere-tglm"))
    try:
        recorder = Recorder()
        caplog.set_level(logging.INFO)
        async with golem_for(daemon, recorder, tmp_path) as golem:
            cluster = await golem.run_service(Sleeps, respawn_unstarted_instances=False)
            [instance] = cluster.instances
            await recorder.until(lambda: instance.state is ServiceState.terminated, timeout=30)
        failed = [e for e in of(recorder, events.ProposalRejected) if "No common payment platform" in e.reason]
        assert failed and PLATFORM in failed[0].reason and "erc20-elsewhere-tglm" in failed[0].reason
        assert not approved(daemon) and not of(recorder, events.AgreementCreated)
    finally:
        daemon.stop()


async def test_payable_debit_notes_are_paid_mid_agreement(chain, paid_daemon, payee, payer, tmp_path) -> None:
    chain.fund(payer.address, eth=1, glm=100)
    recorder = Recorder()
    golem = golem_for(paid_daemon, recorder, tmp_path, strategy=PaysMidway())
    async with golem:
        expiration = datetime.now(timezone.utc) + timedelta(hours=6)  # past yapapi's 5 h: mid-agreement payments
        [instance] = (await golem.run_service(SleepsLonger, expiration=expiration)).instances
        await recorder.until(lambda: instance.state is ServiceState.terminated, timeout=90)
    assert not of(recorder, events.PaymentFailed), of(recorder, events.PaymentFailed)
    [accepted] = of(recorder, events.InvoiceAccepted)
    payments, agreement = await provider_view(paid_daemon, golem, accepted.agreement.id)
    assert agreement.payment.payment_timeout.seconds == 3, agreement.payment
    assert agreement.termination_reason != "DebitNoteNotPaid", agreement
    payable = [r for r in payments.debit_notes if pay.DebitNote.FromString(r.document.body).HasField("payment_due")]
    assert payable and all(r.state == pay.DOCUMENT_STATE_SETTLED for r in payable), payments.debit_notes
    credited = [parse_amount(p.amount) for p in payments.payments]
    assert len(credited) >= 2, credited  # the payable notes' (mid-agreement), then the invoice's remainder
    assert sum(credited) == accepted.amount == parse_amount(payments.amount_paid)
    assert payments.invoice.state == pay.DOCUMENT_STATE_SETTLED
    assert chain.glm_balance(payee) == int(accepted.amount.scaleb(18))
    assert golem.budget.spent == accepted.amount


async def test_a_payment_that_fails_is_payment_failed_and_leaves_the_agreement_unpaid(chain, paid_daemon, payer,
                                                                                      tmp_path, caplog) -> None:
    chain.fund(payer.address, eth=1, glm=10)
    recorder = Recorder()
    golem = golem_for(paid_daemon, recorder, tmp_path)
    async with golem:  # checked: it holds the budget; then it is emptied behind Golem's back
        emptier = Erc20Driver(PaymentNetwork(NETWORK, chain.url, 31337, chain.token.address), payer,
                              tmp_path / "emptier-journal.jsonl")
        await emptier.wait_confirmed(await emptier.pay("empty-it", chain.new_account()[0], Decimal(10)))
        emptier.close()
        [instance] = (await golem.run_service(Sleeps)).instances
        await recorder.until(lambda: instance.state is ServiceState.terminated, timeout=60)
    [accepted] = of(recorder, events.InvoiceAccepted)
    [failed] = of(recorder, events.PaymentFailed)
    assert failed.agreement.id == accepted.agreement.id and "hold that much" in str(failed.exception), failed
    assert f"Unpaid agreements: {{'{accepted.agreement.id}'}}" in caplog.text
    payments, _ = await provider_view(paid_daemon, golem, accepted.agreement.id)
    assert payments.invoice.state == pay.DOCUMENT_STATE_ACCEPTED and parse_amount(payments.amount_paid) == 0


async def test_without_a_chain_configured_nothing_is_paid_and_a_partial_configuration_says_what_is_missing(
        monkeypatch) -> None:
    for name in ("GOLEM_PAYMENT_RPC_URL", "GOLEM_PAYMENT_CHAIN_ID", "GOLEM_PAYMENT_TOKEN_ADDRESS"):
        monkeypatch.delenv(name, raising=False)
    assert await Settlement.open(None, "holesky", Budget(1)) is None
    assert payment_names(None, None, None) == ("none", "none")
    monkeypatch.setenv("GOLEM_PAYMENT_RPC_URL", "http://127.0.0.1:1")
    with pytest.raises(PaymentConfigError, match="GOLEM_PAYMENT_CHAIN_ID"):
        await Settlement.open(None, "holesky", Budget(1))


def test_the_platform_an_offer_is_proposed_with() -> None:
    settlement = Settlement.__new__(Settlement)  # no driver: only the network matters here
    settlement.network = PaymentNetwork(NETWORK, "http://127.0.0.1:1", 31337, "0x" + "11" * 20)

    def offer(*platforms: str, payees: tuple[tuple[str, str], ...] = ((PLATFORM, "0x" + "22" * 20),)) -> Offer:
        return replace(OFFER, payment=PaymentTerms(platforms=platforms, payment_timeout=120.0, payees=payees))

    assert settlement.platform_for(offer(PLATFORM, "erc20-holesky-tglm")) == PLATFORM
    assert settlement.platform_for(offer(PLATFORM, payees=())) is None  # its payee not bound by its signature
    assert settlement.mismatch(offer(PLATFORM, payees=())) == f"No payee bound to {PLATFORM} by the provider's signature"
    assert settlement.platform_for(offer()) == "" and settlement.mismatch(offer()) is None  # not paid on a chain
    assert settlement.platform_for(replace(OFFER, payment=None)) == ""
    assert settlement.platform_for(offer("erc20-holesky-tglm")) is None
    assert settlement.mismatch(offer("erc20-holesky-tglm")) == (
        f"No common payment platform (ours: {PLATFORM}; offered: erc20-holesky-tglm)")


# What was paid for an agreement is the journal's (the attacker's review H3, L8), whoever sent it.

class _Notified:
    """A provider that credits every transaction named to it (NotifyPayment), recorded."""

    def __init__(self) -> None:
        self.named: list[str] = []

    async def notify_payment(self, agreement_id: str, tx_hash: str) -> tuple[bool, str]:
        self.named.append(tx_hash)
        return True, "0"


def _agreement_paid_to(chain, payee: str, agreement_id: str = "agreement-1") -> AgreementInfo:
    return AgreementInfo(agreement_id, 1, datetime.now(timezone.utc) + timedelta(hours=1), platform=PLATFORM,
                         payee_address=payee, chain_id=31337, token_address=chain.token.address, confirmations=1)


def _driver(chain, tmp_path: Path) -> Erc20Driver:
    return Erc20Driver(PaymentNetwork(NETWORK, chain.url, 31337, chain.token.address),
                       PaymentAccount.load(tmp_path / "payment-key"), poll_seconds=0.05)


async def test_what_an_agreement_was_paid_comes_from_the_journal_not_from_memory(chain, tmp_path, monkeypatch) -> None:
    from requestor.payment_driver import ChainUnavailableError

    driver = _driver(chain, tmp_path)
    chain.fund(driver.account.address, eth=1, glm=100)
    payee, _ = chain.new_account()
    info, calls, failures = _agreement_paid_to(chain, payee), _Notified(), []
    settlement = Settlement(driver)

    def down(raw: bytes) -> None:
        raise ChainUnavailableError("down")

    # A transfer journaled but not sent (the broadcast failed) counts as paid: the next note's
    # payment sends it first, then only what is left.
    monkeypatch.setattr(driver, "_broadcast", down)
    assert not await settlement.pay(calls, info, "debit-note", "n1", Decimal(10), failures.append, payee=payee)  # type: ignore[arg-type]
    monkeypatch.setattr(driver, "_broadcast", Erc20Driver._broadcast.__get__(driver))
    assert await settlement.pay(calls, info, "debit-note", "n2", Decimal(20), failures.append, payee=payee)  # type: ignore[arg-type]
    assert chain.glm_balance(payee) == 20 * 10**18 and len(failures) == 1
    # Another process taking the agreement up pays nothing that was paid; two payments at once,
    # from two processes, pay the larger due once.
    later = Settlement(_driver(chain, tmp_path))
    assert await later.pay(calls, info, "debit-note", "n3", Decimal(20), failures.append, payee=payee)  # type: ignore[arg-type]
    assert chain.glm_balance(payee) == 20 * 10**18
    both = await asyncio.gather(later.pay(calls, info, "debit-note", "n4", Decimal(25), failures.append, payee=payee),  # type: ignore[arg-type]
                                settlement.pay(calls, info, "debit-note", "n5", Decimal(26), failures.append, payee=payee))  # type: ignore[arg-type]
    assert all(both) and chain.glm_balance(payee) == 26 * 10**18 and len(failures) == 1
    later.driver.close()
    driver.close()


async def test_a_reverted_payment_is_not_counted_as_paid(chain, tmp_path, monkeypatch) -> None:
    driver = _driver(chain, tmp_path)
    chain.fund(driver.account.address, eth=1, glm=100)
    payee, _ = chain.new_account()
    info, calls, failures = _agreement_paid_to(chain, payee), _Notified(), []
    settlement = Settlement(driver)
    eth = driver._web3.eth
    monkeypatch.setattr(eth, "estimate_gas", lambda call: 20_000)  # too little gas: mined, and reverted
    assert not await settlement.pay(calls, info, "debit-note", "n1", Decimal(10), failures.append, payee=payee)  # type: ignore[arg-type]
    assert "reverted" in str(failures[0]) and chain.glm_balance(payee) == 0 and not calls.named
    monkeypatch.undo()
    assert await settlement.pay(calls, info, "debit-note", "n2", Decimal(10), failures.append, payee=payee)  # type: ignore[arg-type]
    assert chain.glm_balance(payee) == 10 * 10**18 and len(calls.named) == 1
    references = [e.reference for e in driver.journal.entries()]
    assert references == ["agreement-1/debit-note/n1", "agreement-1/debit-note/n1#reverted",
                          "agreement-1/debit-note/n2"]
    driver.close()
