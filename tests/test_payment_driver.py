"""The requestor's payment driver (requestor.payment_driver, issue 29) on a real chain: anvil on
loopback with the test token (the `chain` fixture). An account is checked before it is used, a
payment moves exactly its amount in one Transfer log, a reference is paid once whatever happens
(again, from a new driver, after a crash between journaling and sending), and concurrent payments
take distinct nonces. Plus the account's key file and the network's configuration.
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace

import pytest
from eth_account import Account

from exeunit.testing.chain import CHAIN_ID, LocalChain
from requestor import NoPaymentAccountError
from requestor.payment_account import PaymentAccount, PaymentConfigError, PaymentNetwork, default_key_path
from requestor.payment_driver import (
    BALANCE_OF, DECIMALS, TRANSFER, TRANSFER_TOPIC, ChainUnavailableError, ConfirmationTimeoutError, Erc20Driver,
    PaymentDriverError, PaymentRevertedError,
)
from requestor.payment_journal import JOURNAL_FILE, PaymentJournal

WEI = 10**18


def network_of(chain: LocalChain, **overrides: object) -> PaymentNetwork:
    assert chain.token is not None
    fields: dict = {"name": "anvil", "rpc_url": chain.url, "chain_id": CHAIN_ID,
                    "token_address": chain.token.address, **overrides}
    return PaymentNetwork(**fields)


def driver_for(chain: LocalChain, directory: Path, **overrides: object) -> Erc20Driver:
    return Erc20Driver(network_of(chain, **overrides), PaymentAccount.load(directory / "payment-key"),
                       poll_seconds=0.05)


@pytest.fixture
def funded(chain: LocalChain, tmp_path: Path) -> Erc20Driver:
    driver = driver_for(chain, tmp_path)
    chain.fund(driver.account.address, eth=1, glm=100)
    return driver


# --- the account and the network


def test_the_key_file_is_made_once_private_and_never_through_a_link(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.delenv("GOLEM_PAYMENT_KEY_FILE", raising=False)
    assert default_key_path() == tmp_path / "config" / "golem" / "requestor-payment-key"
    first = PaymentAccount.load()
    assert first.path == default_key_path()
    assert stat.S_IMODE(os.stat(first.path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(first.path.parent).st_mode) == 0o700
    assert PaymentAccount.load().address == first.address  # kept
    assert first.path.read_text().strip().lower().removeprefix("0x") not in repr(first).lower()

    monkeypatch.setenv("GOLEM_PAYMENT_KEY_FILE", str(tmp_path / "other-key"))
    assert PaymentAccount.load().address != first.address
    assert (tmp_path / "other-key").exists()

    # A link where the key goes is neither followed to read a planted key nor written through.
    planted = tmp_path / "planted"
    planted.write_text("0x" + "11" * 32 + "\n")
    (tmp_path / "linked-key").symlink_to(planted)
    with pytest.raises(Exception, match="linked-key"):
        PaymentAccount.load(tmp_path / "linked-key")
    assert planted.read_text() == "0x" + "11" * 32 + "\n"

    # A key file others may read is made private when used.
    loose = tmp_path / "loose-key"
    loose.write_text("0x" + "22" * 32)
    loose.chmod(0o644)
    assert PaymentAccount.load(loose).address == Account.from_key("0x" + "22" * 32).address
    assert stat.S_IMODE(os.stat(loose).st_mode) == 0o600


def test_the_network_comes_from_arguments_or_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    token = "0x" + "ab" * 20
    for name in ("GOLEM_PAYMENT_RPC_URL", "GOLEM_PAYMENT_CHAIN_ID", "GOLEM_PAYMENT_TOKEN_ADDRESS",
                 "GOLEM_PAYMENT_CONFIRMATIONS", "YAGNA_PAYMENT_NETWORK", "YAGNA_PAYMENT_DRIVER"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(PaymentConfigError, match="GOLEM_PAYMENT_RPC_URL"):
        PaymentNetwork.from_env()
    monkeypatch.setenv("GOLEM_PAYMENT_RPC_URL", "http://127.0.0.1:8545")
    monkeypatch.setenv("GOLEM_PAYMENT_CHAIN_ID", "17000")
    with pytest.raises(PaymentConfigError, match="GOLEM_PAYMENT_TOKEN_ADDRESS"):
        PaymentNetwork.from_env()
    monkeypatch.setenv("GOLEM_PAYMENT_TOKEN_ADDRESS", token)
    monkeypatch.setenv("GOLEM_PAYMENT_CONFIRMATIONS", "3")
    network = PaymentNetwork.from_env()
    assert (network.name, network.rpc_url, network.chain_id, network.token_address, network.confirmations) \
        == ("holesky", "http://127.0.0.1:8545", 17000, token, 3)
    assert network.platform == "erc20-holesky-tglm" and network.on_loopback
    assert PaymentNetwork.from_env("Polygon", chain_id=137, rpc_url="https://polygon.example").platform \
        == "erc20-polygon-glm"
    assert not PaymentNetwork.from_env("polygon", rpc_url="https://polygon.example").on_loopback
    assert PaymentNetwork.from_env("mainnet").platform == "erc20-mainnet-glm"
    monkeypatch.setenv("GOLEM_PAYMENT_CHAIN_ID", "seventeen")
    with pytest.raises(PaymentConfigError, match="GOLEM_PAYMENT_CHAIN_ID"):
        PaymentNetwork.from_env()
    with pytest.raises(PaymentConfigError, match="token address"):
        PaymentNetwork("holesky", "http://127.0.0.1:8545", 17000, "0x1234")
    with pytest.raises(PaymentConfigError, match="http"):
        PaymentNetwork("holesky", "ws://127.0.0.1:8545", 17000, token)


def test_the_abi_constants_are_erc20s() -> None:
    from web3 import Web3

    for selector, signature in ((TRANSFER, "transfer(address,uint256)"), (BALANCE_OF, "balanceOf(address)"),
                                (DECIMALS, "decimals()")):
        assert Web3.keccak(text=signature)[:4].hex() == selector
    assert Web3.keccak(text="Transfer(address,address,uint256)").hex() == TRANSFER_TOPIC


def test_fees_are_eip1559_with_a_base_fee_and_a_legacy_price_without(tmp_path: Path) -> None:
    network = PaymentNetwork("holesky", "http://127.0.0.1:9", 17000, "0x" + "ab" * 20)
    driver = Erc20Driver(network, PaymentAccount("0x" + "33" * 32), tmp_path / "journal")

    class Legacy:
        gas_price = 7

        def get_block(self, which: str) -> dict:
            return {"number": 1}

    class WithBaseFee(Legacy):
        def get_block(self, which: str) -> dict:
            return {"number": 1, "baseFeePerGas": 100}

        @property
        def max_priority_fee(self) -> int:
            raise ValueError("the method eth_maxPriorityFeePerGas does not exist")

    driver._web3 = SimpleNamespace(eth=Legacy())  # type: ignore[assignment]
    assert driver._fees() == {"gasPrice": 7}
    driver._web3 = SimpleNamespace(eth=WithBaseFee())  # type: ignore[assignment]
    assert driver._fees() == {"type": 2, "maxPriorityFeePerGas": 10**9, "maxFeePerGas": 200 + 10**9}


# --- check


async def test_check_refuses_an_empty_account_a_short_balance_and_another_chain(
        chain: LocalChain, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    driver = driver_for(chain, tmp_path)
    with pytest.raises(NoPaymentAccountError) as empty:
        await driver.check(Decimal(1))
    assert str(empty.value) == "No payment account available for driver `erc20` and network `anvil`"
    assert (empty.value.required_driver, empty.value.required_network) == ("erc20", "anvil")
    assert "below the budget" in empty.value.reason and driver.account.address in caplog.text

    chain.fund(driver.account.address, glm=100)  # tokens, but no coin for gas
    with pytest.raises(NoPaymentAccountError) as no_gas:
        await driver.check(Decimal(1))
    assert "gas" in no_gas.value.reason

    chain.fund(driver.account.address, eth=1)
    await driver.check(Decimal(100))
    await driver.check(Decimal("0"))
    with pytest.raises(NoPaymentAccountError) as short:
        await driver.check(Decimal("100.5"))
    assert "send it at least 0.5" in short.value.reason

    elsewhere = driver_for(chain, tmp_path, chain_id=17000)
    with pytest.raises(NoPaymentAccountError) as other_chain:
        await elsewhere.check(Decimal(1))
    assert f"serves chain {CHAIN_ID}, not 17000" in other_chain.value.reason
    not_a_token = driver_for(chain, tmp_path, token_address="0x" + "00" * 19 + "01")
    with pytest.raises(NoPaymentAccountError) as no_token:
        await not_a_token.check(Decimal(1))
    assert "no contract" in no_token.value.reason


# --- pay


async def test_pay_moves_exactly_the_amount_once_per_reference(chain: LocalChain, funded: Erc20Driver,
                                                               tmp_path: Path) -> None:
    payer = funded.account.address
    payee, _ = chain.new_account()
    tx_hash = await funded.pay("invoice-1", payee, Decimal("12.345"))
    assert tx_hash.startswith("0x") and len(tx_hash) == 66

    receipt = await funded.wait_confirmed(tx_hash, confirmations=1, timeout=10)
    units = 12_345 * WEI // 1000
    assert chain.glm_balance(payee) == units
    assert chain.glm_balance(payer) == 100 * WEI - units
    assert [(t.token, t.sender, t.recipient, t.units) for t in receipt.transfers] \
        == [(funded.network.token_address.lower(), payer.lower(), payee.lower(), units)]
    assert receipt.transfers[0].amount == Decimal("12.345")

    # The same reference again: the same transaction, nothing more moved; also from a new driver
    # on the same journal (a restart).
    assert await funded.pay("invoice-1", payee, Decimal("12.345")) == tx_hash
    restarted = driver_for(chain, tmp_path)
    assert restarted.journal.path == funded.journal.path == tmp_path / JOURNAL_FILE
    assert await restarted.pay("invoice-1", payee, Decimal("12.345")) == tx_hash
    assert chain.glm_balance(payee) == units
    with pytest.raises(PaymentDriverError, match="already paid"):
        await restarted.pay("invoice-1", payee, Decimal("13"))

    # The journal: one private JSON line with everything needed to send it again.
    assert stat.S_IMODE(os.stat(funded.journal.path).st_mode) == 0o600
    [line] = funded.journal.path.read_text().splitlines()
    record = json.loads(line)
    assert record["reference"] == "invoice-1" and record["tx_hash"] == tx_hash and record["amount"] == "12.345"
    assert record["nonce"] == 0 and record["payee"] == payee.lower() and record["chain_id"] == CHAIN_ID
    assert record["raw"].startswith("0x02")  # EIP-1559: anvil has a base fee


async def test_concurrent_payments_take_distinct_nonces_and_all_land(chain: LocalChain, funded: Erc20Driver,
                                                                     tmp_path: Path) -> None:
    payees = [chain.new_account()[0] for _ in range(3)]
    other = driver_for(chain, tmp_path)  # a second driver on the same journal and account
    hashes = await asyncio.gather(
        funded.pay("a", payees[0], Decimal(1)), funded.pay("b", payees[1], Decimal(2)),
        other.pay("c", payees[2], Decimal(3)))
    assert len(set(hashes)) == 3
    for tx_hash in hashes:
        await funded.wait_confirmed(tx_hash, timeout=10)
    assert [chain.glm_balance(p) for p in payees] == [WEI, 2 * WEI, 3 * WEI]
    nonces = sorted(e.nonce for e in PaymentJournal(funded.journal.path).entries())
    assert nonces == [0, 1, 2]


async def test_a_journaled_payment_never_sent_is_sent_again_not_replaced(
        chain: LocalChain, funded: Erc20Driver, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    payee, _ = chain.new_account()

    def crash(raw: bytes) -> None:
        raise ChainUnavailableError("the process died before sending")

    monkeypatch.setattr(funded, "_broadcast", crash)
    with pytest.raises(PaymentDriverError, match="journaled"):
        await funded.pay("invoice-9", payee, Decimal(5))
    [entry] = PaymentJournal(funded.journal.path).entries()
    assert not funded._known(entry.tx_hash) and chain.glm_balance(payee) == 0

    # After the "restart", paying another reference sends the journaled one first (its nonce
    # comes first), then the new one on the next nonce; the first reference keeps its hash.
    restarted = driver_for(chain, tmp_path)
    second = await restarted.pay("invoice-10", payee, Decimal(1))
    for tx_hash in (entry.tx_hash, second):  # the new one is not stuck behind a gap
        await restarted.wait_confirmed(tx_hash, timeout=5)
    assert chain.glm_balance(payee) == 6 * WEI
    assert await restarted.pay("invoice-9", payee, Decimal(5)) == entry.tx_hash
    assert chain.glm_balance(payee) == 6 * WEI
    assert sorted(e.nonce for e in restarted.journal.entries()) == [0, 1]


async def test_a_crash_on_the_only_payment_is_resent_by_paying_it_again(
        chain: LocalChain, funded: Erc20Driver, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    payee, _ = chain.new_account()
    monkeypatch.setattr(funded, "_broadcast", lambda raw: (_ for _ in ()).throw(ChainUnavailableError("down")))
    with pytest.raises(PaymentDriverError):
        await funded.pay("note-1", payee, Decimal("0.5"))
    # A torn line after it (a crash while appending) is skipped, and the next line stands alone.
    with open(funded.journal.path, "ab") as journal:
        journal.write(b'{"v":1,"reference":"torn')
    restarted = driver_for(chain, tmp_path)
    [entry] = restarted.journal.entries()
    assert await restarted.pay("note-1", payee, Decimal("0.5")) == entry.tx_hash
    await restarted.wait_confirmed(entry.tx_hash, timeout=10)
    assert chain.glm_balance(payee) == WEI // 2
    await restarted.pay("note-2", payee, Decimal("0.5"))
    assert [e.reference for e in restarted.journal.entries()] == ["note-1", "note-2"]


async def test_pay_refuses_bad_amounts_and_payees(chain: LocalChain, tmp_path: Path) -> None:
    driver = driver_for(chain, tmp_path)
    payee = "0x" + "12" * 20
    for amount in (Decimal(0), Decimal(-1), Decimal("NaN"), Decimal("1e-19")):
        with pytest.raises(ValueError):
            await driver.pay("r", payee, amount)
    for bad in ("0x" + "12" * 19, "12" * 20, "0x" + "zz" * 20, ""):
        with pytest.raises(ValueError, match="payee"):
            await driver.pay("r", bad, Decimal(1))
    with pytest.raises(ValueError, match="reference"):
        await driver.pay("", payee, Decimal(1))
    with pytest.raises(PaymentDriverError, match="hold that much"):  # an empty account
        await driver.pay("r", payee, Decimal(1))
    assert driver.journal.entries() == []


# --- confirmations


async def test_wait_confirmed_counts_blocks_and_reports_a_reverted_payment(chain: LocalChain,
                                                                           funded: Erc20Driver) -> None:
    payee, _ = chain.new_account()
    tx_hash = await funded.pay("deep", payee, Decimal(1))
    waiting = asyncio.create_task(funded.wait_confirmed(tx_hash, confirmations=4, timeout=10))
    await asyncio.sleep(0.2)
    assert not waiting.done()
    chain.mine(3)
    receipt = await waiting
    assert receipt.confirmations >= 4 and receipt.tx_hash == tx_hash
    with pytest.raises(ConfirmationTimeoutError, match="confirmations"):
        await funded.wait_confirmed(tx_hash, confirmations=1000, timeout=0.2)

    # A transfer beyond the balance, sent with a fixed gas (no estimate to stop it), is mined failed.
    assert chain.token is not None
    reverted = chain.token.functions.transfer(payee, 10**30).transact({"from": chain.deployer,
                                                                         "gas": 100_000})
    with pytest.raises(PaymentRevertedError, match="moved nothing"):
        await funded.wait_confirmed("0x" + bytes(reverted).hex(), timeout=10)
