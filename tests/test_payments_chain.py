"""Payments settled on a real chain (anvil, the compiled test token): the provider credits a
transaction only from what it reads on the chain itself, each transaction once, and ends an
agreement whose payable debit note went unpaid."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from pathlib import Path

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration

from exeunit.v1 import market_pb2 as mkt
from exeunit.v1 import payment_pb2 as pay
from exeunit.v1.conventions import payer_binding_text
from exeunit.v1.payments import acceptance_message, parse_amount, sign
from requestor.payment_account import PaymentAccount, PaymentNetwork
from requestor.payment_driver import Erc20Driver
from tests.client import ContractClient
from tests.daemon_process import Daemon

PLATFORM = "erc20-anvil-tglm"


def seconds(value: float) -> Duration:
    duration = Duration()
    duration.FromNanoseconds(int(value * 1e9))
    return duration


@pytest.fixture
def payee(chain) -> str:
    return chain.new_account()[0]


@pytest.fixture
def paid_daemon(chain, payee: str):
    daemon = Daemon("--payment-platform", PLATFORM, "--payment-address", payee,
                    "--payment-token-address", chain.token.address, "--payment-chain-id", "31337",
                    "--payment-rpc-url", chain.url, "--debit-note-interval", "1", "--min-debit-note-interval", "1",
                    "--payment-timeout", "3", "--min-payment-timeout", "2", "--price-start", "0.5")
    yield daemon
    daemon.stop()


@pytest.fixture
def driver(chain, tmp_path: Path) -> Erc20Driver:
    account = PaymentAccount.load(tmp_path / "payer-key")
    chain.fund(account.address, eth=1, glm=100)
    network = PaymentNetwork("anvil", chain.url, 31337, chain.token.address, confirmations=1)
    return Erc20Driver(network, account, tmp_path / "journal.jsonl")


async def first_note(client: ContractClient, agreement_id: str, payable: bool = False) -> pay.DebitNoteRecord:
    async with asyncio.timeout(15):
        async for event in client.payment.WatchPayments(pay.WatchPaymentsRequest(), metadata=client.metadata):
            if event.WhichOneof("event") == "debit_note" and event.agreement_id == agreement_id \
                    and event.debit_note.state == pay.DOCUMENT_STATE_ISSUED:
                note = pay.DebitNote.FromString(event.debit_note.document.body)
                if note.HasField("payment_due") or not payable:
                    return event.debit_note
    raise AssertionError("no debit note came")


async def agreement_state(client: ContractClient, agreement_id: str) -> mkt.Agreement:
    return (await client.market.GetAgreement(mkt.GetAgreementRequest(agreement_id=agreement_id),
                                             metadata=client.metadata)).agreement


def binding(client: ContractClient) -> str:
    return payer_binding_text(client.requestor_id, client.provider_id, PLATFORM)


async def test_the_provider_credits_a_payment_it_read_on_the_chain_once(chain, paid_daemon, payee, driver,
                                                                       tmp_path: Path) -> None:
    async with ContractClient(f"127.0.0.1:{paid_daemon.port}", "chain-payer") as client:
        offer = (await client.market.GetOffer(mkt.GetOfferRequest(), metadata=client.metadata)).offer
        [platform] = offer.payment.platforms
        assert (platform.platform, platform.payee_address.lower(), platform.chain_id) == (PLATFORM, payee.lower(), 31337)
        refused = await client.propose(client.demand("exeunit-base:latest"))  # no platform chosen: refused
        assert refused.refusal.reason == mkt.REFUSAL_REASON_PAYMENT_TERMS, refused
        unproven = mkt.PaymentChoice(platform=PLATFORM, payer_address=driver.account.address)
        refused = await client.propose(client.demand("exeunit-base:latest", payment=unproven))
        assert refused.refusal.reason == mkt.REFUSAL_REASON_PAYMENT_TERMS and "payer_proof" in refused.refusal.message
        stranger = PaymentAccount.load(tmp_path / "stranger-key")  # someone else's address: its proof is not ours
        claimed = mkt.PaymentChoice(platform=PLATFORM, payer_address=driver.account.address,
                                    payer_proof=stranger.sign_text(binding(client)))
        refused = await client.propose(client.demand("exeunit-base:latest", payment=claimed))
        assert refused.refusal.reason == mkt.REFUSAL_REASON_PAYMENT_TERMS, refused
        choice = mkt.PaymentChoice(platform=PLATFORM, payer_address=driver.account.address,
                                   payer_proof=driver.account.sign_text(binding(client)))
        agreement_id = await client.agreement("exeunit-base:latest", payment=choice)
        record = await first_note(client, agreement_id)
        note = pay.DebitNote.FromString(record.document.body)
        amount = note.total_amount_due
        accepted = await client.payment.AcceptDebitNote(pay.AcceptDocumentRequest(
            document_id=note.debit_note_id, amount=amount,
            signature=sign(client.identity._key, acceptance_message(record.document.body, amount))),  # type: ignore[union-attr]
            metadata=client.metadata)
        assert accepted.state == pay.DOCUMENT_STATE_ACCEPTED  # on a chain: settled once paid

        async def notify(agreement: str, tx: str) -> pay.NotifyPaymentResponse:
            return await client.payment.NotifyPayment(pay.NotifyPaymentRequest(agreement_id=agreement,
                                                                               transaction_hash=tx),
                                                      metadata=client.metadata)

        stray = await driver.pay("to-someone-else", chain.new_account()[0], Decimal("1"))
        await driver.wait_confirmed(stray)
        with pytest.raises(grpc.aio.AioRpcError) as not_ours:  # a real transfer, not to this provider
            await notify(agreement_id, stray)
        assert not_ours.value.code() == grpc.StatusCode.FAILED_PRECONDITION, not_ours.value.details()

        tx = await driver.pay(f"{agreement_id}/{note.debit_note_id}", payee, parse_amount(amount))
        await driver.wait_confirmed(tx)
        answer = await notify(agreement_id, tx)
        assert answer.credited and parse_amount(answer.amount_paid) == parse_amount(amount)
        again = await notify(agreement_id, tx)  # named again: credited once
        assert parse_amount(again.amount_paid) == parse_amount(amount)
        other = await client.agreement("exeunit-base:latest", payment=choice)
        with pytest.raises(grpc.aio.AioRpcError) as reused:  # one transaction pays one agreement
            await notify(other, tx)
        assert reused.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "another agreement" in reused.value.details()
        payments = await client.payment.GetAgreementPayments(pay.GetAgreementPaymentsRequest(agreement_id=agreement_id),
                                                             metadata=client.metadata)
        assert [p.transaction_hash for p in payments.payments] == [tx.lower()]
        settled = next(r for r in payments.debit_notes
                       if pay.DebitNote.FromString(r.document.body).debit_note_id == note.debit_note_id)
        assert settled.state == pay.DOCUMENT_STATE_SETTLED


async def test_an_unpaid_payable_debit_note_ends_its_agreement(chain, paid_daemon, driver) -> None:
    async with ContractClient(f"127.0.0.1:{paid_daemon.port}", "chain-debtor") as client:
        choice = mkt.PaymentChoice(platform=PLATFORM, payer_address=driver.account.address,
                                   payment_timeout=seconds(2), payer_proof=driver.account.sign_text(binding(client)))
        agreement_id = await client.agreement("exeunit-base:latest", payment=choice)
        agreement = await agreement_state(client, agreement_id)
        assert agreement.payment.payment_timeout.seconds == 2
        async with asyncio.timeout(20):
            async for event in client.payment.WatchPayments(pay.WatchPaymentsRequest(), metadata=client.metadata):
                if event.WhichOneof("event") == "debit_note" and event.debit_note.state == pay.DOCUMENT_STATE_ISSUED:
                    record = event.debit_note
                    body = record.document.body
                    note = pay.DebitNote.FromString(body)
                    await client.payment.AcceptDebitNote(pay.AcceptDocumentRequest(  # accepted, never paid
                        document_id=note.debit_note_id, amount=note.total_amount_due,
                        signature=sign(client.identity._key, acceptance_message(body, note.total_amount_due))),  # type: ignore[union-attr]
                        metadata=client.metadata)
                agreement = await agreement_state(client, agreement_id)
                if agreement.state == mkt.AGREEMENT_STATE_TERMINATED:
                    break
        assert agreement.termination_reason == "DebitNoteNotPaid", agreement
        assert "didn't pay for DebitNote in time (2s)" in agreement.termination_message
