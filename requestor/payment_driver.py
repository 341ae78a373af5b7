"""The requestor's payment driver: ERC-20 transfers to providers on a real chain.

    network = PaymentNetwork.from_env("holesky")             # endpoint, chain id, token: configured
    driver = Erc20Driver(network, PaymentAccount.load())
    await driver.check(budget)                               # NoPaymentAccountError when it cannot pay
    tx_hash = await driver.pay("invoice-7", provider_address, Decimal("1.5"))
    receipt = await driver.wait_confirmed(tx_hash)

Each payment is an ERC-20 `transfer(payee, units)` of the network's token, signed here with the
account's key and sent raw; the provider credits it only after reading its Transfer log on the
chain (exeunit.runtime.chain). `pay` is idempotent per reference: the signed transaction is
written to the journal (requestor.payment_journal) and put on disk before it is sent, and a later
`pay` with the same reference, from this process or one started after a crash, returns the
journaled hash (sending the journaled bytes again when the chain does not know them), never a new
transfer. Nonces come from the chain and the journal, under a lock, so concurrent payments never
share one.

web3.py's client blocks: each call runs in a thread, with a timeout on the endpoint; no proxy
from the environment is used for an endpoint on loopback.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, replace
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Callable, TypeVar

from exeunit.v1.conventions import TOKEN_DECIMALS
from requestor.errors import NoPaymentAccountError, RequestorError
from requestor.payment_account import PaymentAccount, PaymentConfigError, PaymentNetwork, is_address
from requestor.payment_journal import JOURNAL_FILE, JournalEntry, PaymentJournal, now_text

log = logging.getLogger(__name__)

DRIVER = "erc20"
RPC_TIMEOUT_SECONDS = 10.0
POLL_SECONDS = 0.5
DEFAULT_CONFIRMATION_TIMEOUT = 600.0
# ERC-20's selectors (the first 4 bytes of keccak256 of the signature) and its Transfer event.
TRANSFER = "a9059cbb"  # transfer(address,uint256)
BALANCE_OF = "70a08231"  # balanceOf(address)
DECIMALS = "313ce567"  # decimals()
TRANSFER_TOPIC = "ddf252ad1be2c89b69c2b068fc378daa952ba7f163c4a11628f55a4df523b3ef"
TRANSFER_GAS = 65_000  # about what one token transfer takes: the least gas money an account needs
FALLBACK_PRIORITY_FEE = 10**9  # 1 gwei, for an endpoint without eth_maxPriorityFeePerGas
MAX_REFERENCE = 256
REVERTED = "#reverted"  # a journal line taking back a reverted transfer: its reference + this, amount negated

T = TypeVar("T")


class PaymentDriverError(RequestorError):
    """A payment could not be made or confirmed; the message says why and what to do."""


class ChainUnavailableError(PaymentDriverError):
    """The chain's endpoint did not answer (or answered nonsense); the call may be repeated."""


class PaymentRevertedError(PaymentDriverError):
    """The payment's transaction was mined and failed: it moved nothing."""


class ConfirmationTimeoutError(PaymentDriverError, TimeoutError):
    """The payment did not reach its confirmations in time; it may still: wait again."""


@dataclass(frozen=True)
class TokenTransfer:
    """One ERC-20 Transfer log: `amount` of `token` from `sender` to `recipient` (addresses lowercase)."""

    token: str
    sender: str
    recipient: str
    units: int

    @property
    def amount(self) -> Decimal:
        return from_base_units(self.units)


@dataclass(frozen=True)
class PaymentReceipt:
    """A payment mined with success and confirmed: its block, how many blocks are on it (that one
    counted), the token transfers its logs hold, and web3's receipt."""

    tx_hash: str
    block_number: int
    confirmations: int
    transfers: tuple[TokenTransfer, ...]
    gas_used: int
    receipt: Any


def to_base_units(amount: Decimal) -> int:
    """Token units in base units (18 decimals); ValueError for an amount finer than one."""
    units = amount.scaleb(TOKEN_DECIMALS)
    if units != units.to_integral_value():
        raise ValueError(f"amount {amount} has more than {TOKEN_DECIMALS} decimals")
    return int(units)


def from_base_units(units: int) -> Decimal:
    return Decimal(units).scaleb(-TOKEN_DECIMALS)


def _amount(amount: Decimal | int | str) -> Decimal:
    try:
        value = amount if isinstance(amount, Decimal) else Decimal(str(amount))
    except InvalidOperation:
        raise ValueError(f"amount {amount!r} is not a number") from None
    if not value.is_finite() or value <= 0:
        raise ValueError(f"amount {amount!r} must be more than zero")
    to_base_units(value)
    return value


def _word(value: int | str) -> str:
    """One ABI word: an address or a uint256, 64 hex digits."""
    number = int(value, 16) if isinstance(value, str) else value
    return f"{number:064x}"


def _transfers(receipt: Any) -> tuple[TokenTransfer, ...]:
    found = []
    for entry in receipt["logs"]:
        topics = [bytes(t) for t in entry["topics"]]
        if len(topics) == 3 and topics[0].hex() == TRANSFER_TOPIC:
            found.append(TokenTransfer(str(entry["address"]).lower(), "0x" + topics[1][-20:].hex(),
                                       "0x" + topics[2][-20:].hex(), int.from_bytes(bytes(entry["data"]), "big")))
    return tuple(found)


class Erc20Driver:
    """Pays in the network's ERC-20 token from `account`, journaling at `journal_path` (default:
    beside the account's key file)."""

    def __init__(self, network: PaymentNetwork, account: PaymentAccount, journal_path: str | Path | None = None,
                 *, poll_seconds: float = POLL_SECONDS) -> None:
        from web3 import Web3  # slow to import: only with payments

        if network.driver != DRIVER:
            raise PaymentConfigError(f"network {network.name} is for driver {network.driver}, not {DRIVER}")
        if journal_path is None:
            if account.path is None:
                raise PaymentConfigError("an account kept in no file needs a journal_path")
            journal_path = account.path.parent / JOURNAL_FILE
        self.network = network
        self.account = account
        self.journal = PaymentJournal(Path(journal_path))
        self._poll_seconds = poll_seconds
        request: dict[str, Any] = {"timeout": RPC_TIMEOUT_SECONDS}
        if network.on_loopback:
            request["proxies"] = {"http": None, "https": None}  # None drops the environment's
        self._web3 = Web3(Web3.HTTPProvider(network.rpc_url, request_kwargs=request))
        self._token = Web3.to_checksum_address(network.token_address)
        self._payer = account.address
        self._lock = asyncio.Lock()
        self._chain_checked = False

    def __repr__(self) -> str:
        return f"Erc20Driver({self.network.platform}, {self._payer}, journal={self.journal.path})"

    def close(self) -> None:
        self.journal.close()

    # --- the chain, through web3's blocking client

    def _rpc(self, call: Callable[[], T], what: str) -> T:
        from web3.exceptions import ContractLogicError, TransactionNotFound, Web3Exception

        try:
            return call()
        except (TransactionNotFound, ContractLogicError):
            raise
        except (Web3Exception, OSError, ValueError) as exc:
            raise ChainUnavailableError(
                f"{what}: the chain's endpoint {self.network.rpc_url} failed: {exc}") from None

    def _call_token(self, data: str) -> int:
        call: Any = {"to": self._token, "data": "0x" + data}
        result = self._rpc(lambda: self._web3.eth.call(call), "reading the token")
        return int.from_bytes(bytes(result), "big") if result else 0

    def _chain_problem(self) -> str | None:
        actual = self._rpc(lambda: self._web3.eth.chain_id, "reading the chain id")
        if actual != self.network.chain_id:
            return (f"the endpoint {self.network.rpc_url} serves chain {actual}, not {self.network.chain_id}: "
                    "fix GOLEM_PAYMENT_RPC_URL or GOLEM_PAYMENT_CHAIN_ID")
        if not self._rpc(lambda: self._web3.eth.get_code(self._token), "reading the token's code"):
            return (f"there is no contract at the token address {self._token} on chain {actual}: "
                    "fix GOLEM_PAYMENT_TOKEN_ADDRESS")
        decimals = self._call_token(DECIMALS)
        if decimals != TOKEN_DECIMALS:
            return (f"the token {self._token} has {decimals} decimals, not GLM's {TOKEN_DECIMALS}: "
                    "fix GOLEM_PAYMENT_TOKEN_ADDRESS")
        return None

    def _account_problem(self, budget: Decimal) -> str | None:
        if problem := self._chain_problem():
            return problem
        token = self.network.token_name
        held = from_base_units(self._call_token(BALANCE_OF + _word(self._payer)))
        if held < budget:
            return (f"the account {self._payer} holds {held.normalize():f} {token}, below the budget of "
                    f"{budget.normalize():f}: send it at least {(budget - held).normalize():f} {token} "
                    f"(token {self._token})")
        coin = self._rpc(lambda: self._web3.eth.get_balance(self._payer), "reading the account's balance")
        price = self._rpc(lambda: self._web3.eth.gas_price, "reading the gas price")
        if coin < max(price, 1) * TRANSFER_GAS:
            return (f"the account {self._payer} has {coin} wei of chain {self.network.chain_id}'s coin, not "
                    f"enough gas for one transfer ({TRANSFER_GAS} gas at {price} wei): send it some")
        return None

    def _fees(self) -> dict[str, int]:
        block = self._rpc(lambda: self._web3.eth.get_block("latest"), "reading the latest block")
        base = block.get("baseFeePerGas")
        if base is None:  # no EIP-1559 on this chain: a legacy gas price
            return {"gasPrice": int(self._rpc(lambda: self._web3.eth.gas_price, "reading the gas price"))}
        try:
            tip = int(self._web3.eth.max_priority_fee)
        except Exception:  # an endpoint without eth_maxPriorityFeePerGas
            tip = FALLBACK_PRIORITY_FEE
        return {"type": 2, "maxPriorityFeePerGas": tip, "maxFeePerGas": 2 * int(base) + tip}

    def _known(self, tx_hash: str) -> bool:
        from web3.exceptions import TransactionNotFound

        try:
            self._rpc(lambda: self._web3.eth.get_transaction(tx_hash), "looking up a payment")  # type: ignore[arg-type]
        except TransactionNotFound:
            return False
        return True

    def _broadcast(self, raw: bytes) -> None:
        """Sends a signed transaction (the tests make it fail to play a crash before sending)."""
        self._rpc(lambda: self._web3.eth.send_raw_transaction(raw), "sending a payment")

    def _send(self, entry: JournalEntry) -> None:
        """Puts the journaled transaction on the chain, unless it is there already."""
        try:
            self._broadcast(entry.raw_bytes)
        except ChainUnavailableError as exc:
            if self._known(entry.tx_hash):  # "already known": sent before
                return
            if "nonce" in str(exc).lower():
                raise PaymentDriverError(
                    f"the payment {entry.reference!r} (transaction {entry.tx_hash}, nonce {entry.nonce}) cannot "
                    f"be sent: another transaction of {self._payer} took its nonce (was the key used elsewhere?). "
                    f"It is not replaced automatically: check what was paid, then settle the reference by hand "
                    f"in {self.journal.path}") from None
            raise PaymentDriverError(f"the payment {entry.reference!r} was signed and journaled as {entry.tx_hash} "
                                     f"but not sent: {exc}; paying the same reference again sends it") from None
        log.info("event=payment_sent reference=%s tx=%s nonce=%d payee=%s amount=%s platform=%s",
                 entry.reference, entry.tx_hash, entry.nonce, entry.payee, entry.amount, self.network.platform)

    def _ensure_sent(self, entry: JournalEntry) -> None:
        if not self._known(entry.tx_hash):
            log.warning("event=payment_resent reference=%s tx=%s nonce=%d", entry.reference, entry.tx_hash, entry.nonce)
            self._send(entry)

    def _ours(self, entry: JournalEntry) -> bool:
        return entry.chain_id == self.network.chain_id and entry.payer == self._payer.lower()

    def _pay(self, reference: str, payee: str, amount: Decimal) -> str:
        with self.journal.lock():
            entries = [e for e in self.journal.entries() if self._ours(e)]
            recorded = self._recorded(entries, reference)
            if recorded is not None:
                if recorded.payee != payee.lower() or Decimal(recorded.amount) != amount:
                    raise PaymentDriverError(
                        f"reference {reference!r} already paid {recorded.amount} to {recorded.payee} "
                        f"(transaction {recorded.tx_hash}), not {amount} to {payee.lower()}")
                self._ensure_sent(recorded)
                return recorded.tx_hash
            return self._sign_and_send(entries, reference, payee, amount)

    def _recorded(self, entries: list[JournalEntry], reference: str) -> JournalEntry | None:
        token = self._token.lower()
        return next((e for e in entries if e.token == token and e.reference == reference), None)

    def _paid(self, entries: list[JournalEntry], prefix: str, payee: str) -> Decimal:
        """What the journal says was sent to `payee` under references starting with `prefix`,
        reversals counted."""
        token, payee = self._token.lower(), payee.lower()
        return sum((Decimal(e.amount) for e in entries
                    if e.token == token and e.payee == payee and e.reference.startswith(prefix)), Decimal(0))

    def _pay_due(self, prefix: str, reference: str, payee: str, due: Decimal,
                 least: Decimal) -> tuple[str, Decimal] | None:
        with self.journal.lock():
            entries = [e for e in self.journal.entries() if self._ours(e)]
            recorded = self._recorded(entries, reference)
            if recorded is not None:
                if recorded.payee != payee.lower():
                    raise PaymentDriverError(f"reference {reference!r} already paid {recorded.amount} to "
                                             f"{recorded.payee} (transaction {recorded.tx_hash}), "
                                             f"not to {payee.lower()}")
                self._ensure_sent(recorded)
                return recorded.tx_hash, Decimal(recorded.amount)
            amount = due - self._paid(entries, prefix, payee)
            if amount <= 0 or amount < least:
                return None
            return self._sign_and_send(entries, reference, payee, amount), amount

    def _sign_and_send(self, entries: list[JournalEntry], reference: str, payee: str, amount: Decimal) -> str:
        """Signs the transfer, journals it and sends it (the journal's lock held)."""
        token = self._token.lower()
        if not self._chain_checked:  # once: the endpoint, the token and its decimals do not change
            if problem := self._chain_problem():
                raise PaymentDriverError(f"cannot pay on {self.network.platform}: {problem}")
            self._chain_checked = True
        mined = self._rpc(lambda: self._web3.eth.get_transaction_count(self._payer, "latest"), "reading the nonce")
        for earlier in entries:  # a journaled payment a crash kept from the chain: it goes first
            if earlier.nonce >= mined and Decimal(earlier.amount) > 0:
                self._ensure_sent(earlier)
        pending = self._rpc(lambda: self._web3.eth.get_transaction_count(self._payer, "pending"),
                            "reading the nonce")
        nonce = max([pending, *(e.nonce + 1 for e in entries)])
        data = "0x" + TRANSFER + _word(payee) + _word(to_base_units(amount))
        call: Any = {"from": self._payer, "to": self._token, "data": data, "value": 0}
        from web3.exceptions import ContractLogicError

        try:
            estimate = self._rpc(lambda: self._web3.eth.estimate_gas(call), "estimating gas")
        except ContractLogicError as exc:
            raise PaymentDriverError(f"the transfer of {amount} {self.network.token_name} to {payee} would fail "
                                     f"({exc}): does {self._payer} hold that much?") from None
        transaction = {**call, "chainId": self.network.chain_id, "nonce": nonce,
                       "gas": estimate * 6 // 5 + 5_000, **self._fees()}
        del transaction["from"]
        raw, tx_hash = self.account.sign_transaction(transaction)
        entry = JournalEntry(reference=reference, chain_id=self.network.chain_id, token=token,
                             payer=self._payer.lower(), payee=payee.lower(), amount=str(amount), nonce=nonce,
                             tx_hash=tx_hash, raw="0x" + raw.hex(), signed_at=now_text())
        self.journal.append(entry)
        self._send(entry)
        return tx_hash

    def _record_reverted(self, tx_hash: str) -> bool:
        with self.journal.lock():
            entries = [e for e in self.journal.entries() if self._ours(e)]
            sent = next((e for e in entries if e.tx_hash == tx_hash.lower() and Decimal(e.amount) > 0), None)
            if sent is None or any(e.reference == sent.reference + REVERTED for e in entries):
                return False
            found = self._receipt(tx_hash)
            if found is None or found[0]["status"] == 1:
                return False
            self.journal.append(replace(sent, reference=sent.reference + REVERTED, amount=str(-Decimal(sent.amount)),
                                        raw="0x", signed_at=now_text()))
            log.warning("event=payment_reverted reference=%s tx=%s amount=%s", sent.reference, tx_hash, sent.amount)
            return True

    def _receipt(self, tx_hash: str) -> tuple[Any, int] | None:
        from web3.exceptions import TransactionNotFound

        try:
            receipt = self._rpc(lambda: self._web3.eth.get_transaction_receipt(tx_hash),  # type: ignore[arg-type]
                                "reading a payment's receipt")
        except TransactionNotFound:
            return None
        return receipt, int(self._rpc(lambda: self._web3.eth.block_number, "reading the block number"))

    # --- the async API

    async def check(self, budget: Decimal) -> None:
        """Returns when the account can pay `budget` on the network; NoPaymentAccountError (after a
        logged line saying why and what to do) when the endpoint serves another chain, the token
        is not there, the token balance is below the budget or there is no coin for gas."""
        budget = Decimal(str(budget)) if not isinstance(budget, Decimal) else budget
        if not budget.is_finite() or budget < 0:
            raise ValueError(f"budget {budget} must be zero or more")
        problem = await asyncio.to_thread(self._account_problem, budget)
        if problem is not None:
            log.error("event=payment_account_unusable platform=%s address=%s reason=%s",
                      self.network.platform, self._payer, problem)
            raise NoPaymentAccountError(self.network.driver, self.network.name, reason=problem)

    async def pay(self, reference: str, payee: str, amount: Decimal) -> str:
        """Pays `amount` tokens to `payee` for `reference` and returns the transaction's hash
        (0x-hex) once the chain has it: the journaled one when `reference` was paid before."""
        if not isinstance(reference, str) or not reference or len(reference) > MAX_REFERENCE:
            raise ValueError(f"reference {reference!r} must be a non-empty string of at most {MAX_REFERENCE}")
        if not is_address(payee):
            raise ValueError(f"payee {payee!r} is not an address (0x and 40 hex digits)")
        value = _amount(amount)
        async with self._lock:
            return await asyncio.to_thread(self._pay, reference, payee, value)

    async def pay_due(self, prefix: str, reference: str, payee: str, due: Decimal,
                      least: Decimal = Decimal(0)) -> tuple[str, Decimal] | None:
        """Pays `payee` what `due` leaves beyond what the journal holds as sent to it under
        references starting with `prefix` (an agreement's "AGREEMENT/"), for `reference`: its transaction's
        hash and the amount, or None when nothing (or less than `least`) is left to pay. Read, signed
        and journaled under the journal's lock, so concurrent payments, and another process taking
        the agreement up, see what was sent. A transfer journaled but not sent counts (it goes to
        the chain before any later one); a reverted one once `record_reverted` says so. A
        `reference` journaled already is that transfer again, sent when the chain lacks it."""
        if not isinstance(reference, str) or not reference or len(reference) > MAX_REFERENCE:
            raise ValueError(f"reference {reference!r} must be a non-empty string of at most {MAX_REFERENCE}")
        if not prefix or not reference.startswith(prefix):
            raise ValueError(f"reference {reference!r} is not under {prefix!r}")
        if not is_address(payee):
            raise ValueError(f"payee {payee!r} is not an address (0x and 40 hex digits)")
        async with self._lock:
            return await asyncio.to_thread(self._pay_due, prefix, reference, payee, _amount(due), least)

    async def record_reverted(self, tx_hash: str) -> bool:
        """Journals that the journaled transfer `tx_hash` reverted on the chain (read again here):
        it no longer counts as sent for `pay_due`. False when it did not, or was recorded before."""
        async with self._lock:
            return await asyncio.to_thread(self._record_reverted, tx_hash)

    async def wait_confirmed(self, tx_hash: str, confirmations: int | None = None,
                             timeout: float = DEFAULT_CONFIRMATION_TIMEOUT) -> PaymentReceipt:
        """Waits until `tx_hash` is mined with success and has `confirmations` blocks on it (its
        own counted; default: the network's). PaymentRevertedError when it failed,
        ConfirmationTimeoutError after `timeout` seconds."""
        needed = self.network.confirmations if confirmations is None else confirmations
        if needed < 1:
            raise ValueError(f"confirmations {needed} must be at least 1")
        deadline = time.monotonic() + timeout
        while True:
            found = await asyncio.to_thread(self._receipt, tx_hash)
            if found is not None:
                receipt, latest = found
                if receipt["status"] != 1:
                    raise PaymentRevertedError(f"the payment {tx_hash} failed on chain {self.network.chain_id} "
                                               f"(reverted in block {receipt['blockNumber']}): it moved nothing")
                have = max(latest - int(receipt["blockNumber"]) + 1, 0)
                if have >= needed:
                    return PaymentReceipt(tx_hash, int(receipt["blockNumber"]), have, _transfers(receipt),
                                          int(receipt["gasUsed"]), receipt)
            if time.monotonic() >= deadline:
                state = "not mined" if found is None else f"{have} of {needed} confirmations"
                raise ConfirmationTimeoutError(f"the payment {tx_hash} is {state} after {timeout:g}s")
            await asyncio.sleep(self._poll_seconds)
