"""The local chain the payment tests run on (exeunit.testing.chain, issue 29): anvil answers on
loopback only, the test token is the ERC-20 it claims to be, funding moves real balances, and a
transfer signed by an account's own key is mined with the Transfer log a payment check reads.

Missing anvil or compiled token is a failure, not a skip: run scripts/setup.sh.
"""

from __future__ import annotations

from pathlib import Path

import psutil
import pytest
from eth_account import Account

from exeunit.testing.chain import CHAIN_ID, ChainError, LocalChain, base_units, token_artifact

WEI = 10**18


def test_anvil_answers_on_loopback_with_the_fixed_chain_id(chain: LocalChain) -> None:
    assert chain.url == f"http://127.0.0.1:{chain.port}"
    assert chain.web3.eth.chain_id == CHAIN_ID == 31337
    # anvil's deterministic dev accounts: the first is the well-known one every tool knows.
    assert chain.deployer == "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"
    assert chain.web3.eth.get_balance(chain.deployer) > 0
    # Bound to loopback only: every socket anvil listens on is 127.0.0.1's.
    listening = [c.laddr for c in psutil.Process(chain.pid).net_connections(kind="inet")
                 if c.status == psutil.CONN_LISTEN]
    assert listening and {(a.ip, a.port) for a in listening} == {("127.0.0.1", chain.port)}


def test_the_token_is_tglm_with_its_supply_at_the_deployer(chain: LocalChain) -> None:
    assert chain.token is not None
    token = chain.token.functions
    assert token.name().call() == "Test Golem Network Token"
    assert token.symbol().call() == "tGLM"
    assert token.decimals().call() == 18
    assert token.totalSupply().call() == 1_000_000 * WEI
    # Minted to the deployer alone (other tests may have funded accounts from it since).
    assert 0 < chain.glm_balance(chain.deployer) <= 1_000_000 * WEI
    assert all(chain.glm_balance(a) == 0 for a in chain.web3.eth.accounts[1:])


def test_fund_moves_eth_and_tglm_to_a_new_account(chain: LocalChain) -> None:
    address, key = chain.new_account()
    assert Account.from_key(key).address == address
    assert chain.web3.eth.get_balance(address) == 0 and chain.glm_balance(address) == 0
    deployer_glm = chain.glm_balance(chain.deployer)

    chain.fund(address, eth="0.5", glm=250)

    assert chain.web3.eth.get_balance(address) == WEI // 2
    assert chain.glm_balance(address) == 250 * WEI
    assert chain.glm_balance(chain.deployer) == deployer_glm - 250 * WEI


def test_a_transfer_signed_by_an_account_lands_with_its_transfer_log(chain: LocalChain) -> None:
    payer, key = chain.new_account()
    payee, _ = chain.new_account()
    chain.fund(payer, eth=1, glm=10)
    assert chain.token is not None
    value = base_units("1.25")

    tx = chain.token.functions.transfer(payee, value).build_transaction({
        "from": payer, "chainId": CHAIN_ID, "nonce": chain.web3.eth.get_transaction_count(payer)})
    signed = Account.sign_transaction(tx, key)
    tx_hash = chain.web3.eth.send_raw_transaction(signed.raw_transaction)
    receipt = chain.web3.eth.wait_for_transaction_receipt(tx_hash, timeout=10)

    assert receipt["status"] == 1
    logs = chain.token.events.Transfer().process_receipt(receipt)
    assert [(log["address"], log["args"]["from"], log["args"]["to"], log["args"]["value"]) for log in logs] \
        == [(chain.token.address, payer, payee, value)]
    assert chain.glm_balance(payee) == value
    assert chain.glm_balance(payer) == 10 * WEI - value
    # Confirmations: blocks mined on top of the one holding the payment.
    before = chain.web3.eth.block_number
    assert chain.mine(3) == before + 3
    assert chain.web3.eth.block_number - receipt["blockNumber"] >= 3


def test_a_transfer_beyond_the_balance_is_refused(chain: LocalChain) -> None:
    payer, key = chain.new_account()
    payee, _ = chain.new_account()
    chain.fund(payer, eth=1, glm=1)
    assert chain.token is not None
    tx = chain.token.functions.transfer(payee, 2 * WEI).build_transaction({
        "from": payer, "chainId": CHAIN_ID, "nonce": 0, "gas": 100_000})
    tx_hash = chain.web3.eth.send_raw_transaction(Account.sign_transaction(tx, key).raw_transaction)
    receipt = chain.web3.eth.wait_for_transaction_receipt(tx_hash, timeout=10)
    assert receipt["status"] == 0
    assert chain.glm_balance(payee) == 0 and chain.glm_balance(payer) == WEI


def test_amounts_are_whole_units_at_18_decimals() -> None:
    assert base_units(1) == WEI
    assert base_units("0.000000000000000001") == 1
    with pytest.raises(ValueError):
        base_units("0.0000000000000000001")
    with pytest.raises(ValueError):
        base_units(-1)


def test_missing_anvil_or_token_names_the_fix(tmp_path: Path) -> None:
    with pytest.raises(ChainError, match="anvil is not installed.*run scripts/setup.sh"):
        LocalChain(chain_dir=tmp_path)
    with pytest.raises(ChainError, match="compiled token .* is missing: run scripts/setup.sh"):
        token_artifact(tmp_path / "TestGLM.json")
