"""Reading payments on an Ethereum chain (a `ChainReader`, exeunit.domain.payments), through the
JSON-RPC endpoint the operator names (`--payment-rpc-url`), with web3.py.

The provider credits a payment only from what the chain says: the transaction's receipt must show
it succeeded, and its logs must hold ERC-20 Transfer events of the agreed token from the payer to
the payee; their values are summed. The requestor's word (the transaction it names) only says
where to look. Calls block, so each runs in a thread, with a timeout on the endpoint.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from decimal import Decimal

from exeunit import errors
from exeunit.domain.payments import AgreedPayment, ChainTransfer
from exeunit.v1.conventions import TOKEN_DECIMALS

log = logging.getLogger(__name__)

RPC_TIMEOUT_SECONDS = 10.0
CHAIN_THREADS = 2  # reads of the chain wait on a pool of their own, never on the threads Docker calls use
# keccak256("Transfer(address,address,uint256)"): the ERC-20 Transfer event's first topic
TRANSFER_TOPIC = "ddf252ad1be2c89b69c2b068fc378daa952ba7f163c4a11628f55a4df523b3ef"


def _topic_address(topic: bytes) -> str:
    """The address an indexed address topic holds (its last 20 bytes), lowercase 0x-hex."""
    return "0x" + bytes(topic)[-20:].hex()


class Web3ChainReader:
    """Token transfers on one chain, read through its JSON-RPC endpoint."""

    def __init__(self, rpc_url: str, chain_id: int) -> None:
        from web3 import Web3  # loaded with a payment platform only: web3 is slow to import

        self._web3 = Web3(Web3.HTTPProvider(rpc_url, request_kwargs={"timeout": RPC_TIMEOUT_SECONDS}))
        self._rpc_url = rpc_url
        self._chain_id = chain_id
        self._chain_checked = False
        self._pool = ThreadPoolExecutor(CHAIN_THREADS, thread_name_prefix="chain")

    async def transfer(self, payment: AgreedPayment, transaction_hash: str) -> ChainTransfer | None:
        return await asyncio.get_running_loop().run_in_executor(self._pool, self._transfer, payment, transaction_hash)

    def signed_by(self, address: str, text: str, signature: bytes) -> bool:
        """Whether `signature` (65 bytes, EIP-191 personal message) over `text` recovers to `address`."""
        from eth_account import Account
        from eth_account.messages import encode_defunct

        if len(signature) != 65:
            return False
        try:
            signer = Account.recover_message(encode_defunct(text=text), signature=signature)
        except Exception:  # noqa: BLE001 - any malformed signature is simply not the payer's
            return False
        return str(signer).lower() == address.lower()

    def _transfer(self, payment: AgreedPayment, transaction_hash: str) -> ChainTransfer | None:
        from web3.exceptions import TransactionNotFound, Web3Exception

        try:
            self._check_chain()
            try:
                receipt = self._web3.eth.get_transaction_receipt(transaction_hash)  # type: ignore[arg-type]
            except TransactionNotFound:
                return None  # not mined yet (or never sent): the caller asks again later
            latest = self._web3.eth.block_number
        except (Web3Exception, OSError, ValueError) as exc:
            raise errors.Unavailable(f"the chain's endpoint {self._rpc_url} did not answer: {exc}") from None
        if receipt["status"] != 1:
            raise errors.FailedPrecondition(f"transaction {transaction_hash} failed on the chain: it paid nothing")
        units = 0
        token, payer, payee = (a.lower() for a in (payment.token_address, payment.payer_address, payment.payee_address))
        for entry in receipt["logs"]:
            topics = entry["topics"]
            if (entry["address"].lower() != token or len(topics) != 3 or bytes(topics[0]).hex() != TRANSFER_TOPIC
                    or _topic_address(topics[1]) != payer or _topic_address(topics[2]) != payee):
                continue
            units += int.from_bytes(bytes(entry["data"]), "big")
        if units == 0:
            raise errors.FailedPrecondition(
                f"transaction {transaction_hash} moves none of token {payment.token_address} from the payer "
                f"{payment.payer_address} to this provider's {payment.payee_address}")
        block = int(receipt["blockNumber"])
        try:
            mined = datetime.fromtimestamp(int(self._web3.eth.get_block(block)["timestamp"]), timezone.utc)
        except (Web3Exception, OSError, ValueError) as exc:
            raise errors.Unavailable(f"the chain's endpoint {self._rpc_url} did not answer: {exc}") from None
        return ChainTransfer(Decimal(units).scaleb(-TOKEN_DECIMALS), block, max(int(latest) - block + 1, 0), mined)

    def _check_chain(self) -> None:
        """The endpoint must serve the chain the offer names: credits read on another are worth nothing."""
        if self._chain_checked:
            return
        actual = self._web3.eth.chain_id
        if actual != self._chain_id:
            raise errors.FailedPrecondition(
                f"the endpoint {self._rpc_url} serves chain {actual}, not {self._chain_id} as this provider's offer "
                "says: fix --payment-rpc-url or --payment-chain-id")
        self._chain_checked = True
