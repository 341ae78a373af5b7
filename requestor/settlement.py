"""Paying providers on a chain: what Golem's payment driver and network make of the requestor's
account, and the transfers that settle the documents requestor.payments accepts.

`Settlement.open` reads the configuration: `payment_network` given as a PaymentNetwork is used
as it is; otherwise, when the environment names a chain (GOLEM_PAYMENT_RPC_URL,
GOLEM_PAYMENT_CHAIN_ID, GOLEM_PAYMENT_TOKEN_ADDRESS: requestor.payment_account), the network is
`PaymentNetwork.from_env(payment_network, driver=payment_driver)`. With neither, nothing is paid
on a chain (documents are accepted and accounted; demands name no platform). With one, an
Erc20Driver pays from `PaymentAccount.load()` (GOLEM_PAYMENT_KEY_FILE), and `check(budget)` runs
before any agreement is proposed: NoPaymentAccountError when the account cannot pay.

An offer is proposed to with the network's platform when it lists it, without one when it lists
no platform (a provider that is not paid on a chain); one listing others is skipped ("No common
payment platform"). Once requestor.payments has accepted a payable debit note, or an invoice,
of an agreement paid on our platform, `pay` transfers what the document states beyond what the
payment journal holds as sent for the agreement (Erc20Driver.pay_due: every reference under
f"{agreement}/", summed under the journal's lock, whichever process sent it; a transfer signed but
not sent yet counts, one that reverted does not once it is read as reverted; the provider's
word on what was paid never counts), for reference f"{agreement}/debit-note/{id}" or
f"{agreement}/invoice/{id}"; waits for the agreement's confirmations and names the transaction
to the provider (NotifyPayment; asked again a few times while it is not credited yet). A failure
is a PaymentFailed event, never an error of the engine's.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from decimal import Decimal

from exeunit.v1.conventions import payer_binding_text
from requestor.budget import Budget
from requestor.client.payments import PaymentCalls
from requestor.errors import RequestorError
from requestor.model import AgreementInfo, Offer, PaymentChoice
from requestor.payment_account import (
    CHAIN_ID_ENV, RPC_URL_ENV, TOKEN_ADDRESS_ENV, PaymentAccount, PaymentConfigError, PaymentNetwork,
)
from requestor.payment_driver import Erc20Driver, PaymentRevertedError

log = logging.getLogger(__name__)

AGREEMENT_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
NOTIFY_TRIES = 5  # NotifyPayment calls while the provider has not credited the transaction yet
NOTIFY_RETRY_SECONDS = 1.0


def configured_network(payment_driver: str | None, payment_network: str | PaymentNetwork | None) -> PaymentNetwork | None:
    """The network Golem pays on, or None when no chain is configured (see the top)."""
    if isinstance(payment_network, PaymentNetwork):
        return payment_network
    if not any(os.environ.get(env) for env in (RPC_URL_ENV, CHAIN_ID_ENV, TOKEN_ADDRESS_ENV)):
        return None
    return PaymentNetwork.from_env(payment_network, driver=payment_driver)


def payment_names(settlement: Settlement | None, driver: str | None,
                  network: str | PaymentNetwork | None) -> tuple[str, str]:
    """Golem's `payment_driver` and `payment_network`: the settlement's, else as given ("none")."""
    if settlement is not None:
        return settlement.network.driver, settlement.network.name
    return driver or "none", (network.name if isinstance(network, PaymentNetwork) else network) or "none"


@dataclass
class _Paid:
    """One agreement's transfers, serialized by `lock` (what was sent is the journal's: Erc20Driver.pay_due)."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    sending: str = ""  # the reference being paid now
    tx_hash: str = ""  # ... its transaction, once sent


class Settlement:
    """Pays the documents of one Golem run on `driver`'s network."""

    def __init__(self, driver: Erc20Driver) -> None:
        self.driver = driver
        self.network: PaymentNetwork = driver.network
        self.payer_address: str = driver.account.address
        self._paid: dict[str, _Paid] = {}  # by agreement id
        self._tasks: set[asyncio.Task[bool]] = set()
        self._proofs: dict[tuple[str, str], bytes] = {}  # by (requestor id, provider id)

    @classmethod
    async def open(cls, payment_driver: str | None, payment_network: str | PaymentNetwork | None,
                   budget: Budget) -> Settlement | None:
        """The run's settlement once its account is checked for `budget`; None with no chain configured."""
        network = configured_network(payment_driver, payment_network)
        if network is None:
            return None
        if network.driver != "erc20":
            raise PaymentConfigError(f"payment driver {network.driver!r} is not supported: only erc20")
        driver = Erc20Driver(network, await asyncio.to_thread(PaymentAccount.load))
        try:
            await driver.check(budget.amount)
        except BaseException:
            driver.close()
            raise
        log.info("event=payments_on_chain platform=%s payer=%s rpc=%s", network.platform, driver.account.address,
                 network.rpc_url)
        return cls(driver)

    @property
    def platform(self) -> str:
        return self.network.platform

    def platform_for(self, offer: Offer) -> str | None:
        """The platform to propose with: ours when the offer lists it with a payee the provider bound
        to it (its signature verified: PaymentTerms.payee_for), "" when it lists none, None otherwise."""
        platforms = offer.payment.platforms if offer.payment is not None else ()
        if not platforms:
            return ""
        assert offer.payment is not None
        return self.platform if self.platform in platforms and offer.payment.payee_for(self.platform) else None

    def mismatch(self, offer: Offer) -> str | None:
        """Why the offer cannot be paid by this run (yapapi's reason), or None."""
        if self.platform_for(offer) is not None:
            return None
        assert offer.payment is not None
        if self.platform in offer.payment.platforms:
            return f"No payee bound to {self.platform} by the provider's signature"
        return f"No common payment platform (ours: {self.platform}; offered: {', '.join(offer.payment.platforms)})"

    def payer(self, choice: PaymentChoice, requestor_id: str, provider_id: str) -> PaymentChoice:
        """`choice` (on our platform) naming our account as the payer, with the account's proof
        that the requestor holds it (conventions.payer_binding_text, signed: a provider credits
        only payments from an address its requestor proved to hold)."""
        key = (requestor_id.lower(), provider_id.lower())
        if key not in self._proofs:
            text = payer_binding_text(requestor_id, provider_id, self.platform)
            self._proofs[key] = self.driver.account.sign_text(text)
        return replace(choice, payer_address=self.payer_address, payer_proof=self._proofs[key])

    def pays(self, info: AgreementInfo) -> bool:
        """Whether the agreement is paid here (made on our platform), not only accounted."""
        return bool(info.platform) and info.platform == self.platform

    def pay(self, calls: PaymentCalls, info: AgreementInfo, kind: str, document_id: str, due: Decimal,
            failed: Callable[[BaseException], None], least: Decimal = Decimal(0),
            payee: str = "") -> asyncio.Task[bool]:
        """Starts paying what `due` (the document's total) leaves beyond what was paid for the
        agreement, when that is at least `least`, to the agreement's payee once it is `payee` (the
        address the offer bound to the provider: requestor.client.convert); the task's result says
        whether it is paid (True with nothing to pay)."""
        task = asyncio.get_running_loop().create_task(
            self._pay(calls, info, f"{info.agreement_id}/{kind}/{document_id}", due, failed, least, payee),
            name=f"pay-{info.agreement_id}-{kind}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _pay(self, calls: PaymentCalls, info: AgreementInfo, reference: str, due: Decimal,
                   failed: Callable[[BaseException], None], least: Decimal, payee: str) -> bool:
        paid = self._paid.setdefault(info.agreement_id, _Paid())
        async with paid.lock:
            paid.sending, paid.tx_hash = reference, ""
            try:
                if problem := self._agreement_problem(info, payee):
                    raise PaymentConfigError(f"agreement {info.agreement_id} cannot be paid here: {problem}")
                if due <= 0:
                    return True
                sent = await self.driver.pay_due(f"{info.agreement_id}/", reference, info.payee_address, due, least)
                if sent is None:  # the journal holds it all as sent already
                    return True
                paid.tx_hash, amount = sent
                try:
                    await self.driver.wait_confirmed(paid.tx_hash, info.confirmations or None)
                except PaymentRevertedError:
                    await self.driver.record_reverted(paid.tx_hash)  # the next document's payment makes it up
                    raise
                await self._notify(calls, info.agreement_id, paid.tx_hash, amount)
                return True
            except (RequestorError, ValueError, TimeoutError) as exc:
                log.warning("event=payment_failed reference=%s due=%s tx=%s error=%s", reference, due,
                            paid.tx_hash or "-", exc)
                failed(exc)
                return False
            finally:
                paid.sending = ""

    def _agreement_problem(self, info: AgreementInfo, payee: str) -> str:
        if not AGREEMENT_ID.fullmatch(info.agreement_id):  # its journal references start with it and a slash
            return f"its id {info.agreement_id[:80]!r} is not 1-64 letters, digits, '-' or '_'"
        if not self.pays(info):
            return f"its platform {info.platform!r} is not ours ({self.platform})"
        if info.chain_id and info.chain_id != self.network.chain_id:
            return f"chain {info.chain_id}, not ours ({self.network.chain_id})"
        if info.token_address and info.token_address.lower() != self.network.token_address.lower():
            return f"token {info.token_address}, not ours ({self.network.token_address})"
        if info.payer_address and info.payer_address.lower() != self.payer_address.lower():
            return f"payer {info.payer_address}, not our account ({self.payer_address})"
        if not info.payee_address:
            return "the provider named no payee address"
        if info.payee_address.lower() != payee.lower():
            return f"its payee {info.payee_address} is not the one the offer bound to the provider ({payee or 'none'})"
        return ""

    async def _notify(self, calls: PaymentCalls, agreement_id: str, tx_hash: str, amount: Decimal) -> None:
        for attempt in range(NOTIFY_TRIES):
            credited, total = await calls.notify_payment(agreement_id, tx_hash)
            if credited:
                log.info("event=payment_credited agreement=%s tx=%s amount=%s paid=%s", agreement_id, tx_hash,
                         amount, total)
                return
            if attempt + 1 < NOTIFY_TRIES:
                await asyncio.sleep(NOTIFY_RETRY_SECONDS)
        log.info("event=payment_not_credited_yet agreement=%s tx=%s amount=%s hint=%r", agreement_id, tx_hash, amount,
                 "the provider reads the transaction again by itself")

    async def close(self, wait: float) -> None:
        """Waits up to `wait` seconds for the payments under way; those still under way then are
        left (their transactions stay on the chain and in the journal), each logged."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=max(wait, 0.0))
        for agreement_id, paid in self._paid.items():
            if paid.sending:
                log.warning("event=payment_in_flight agreement=%s reference=%s tx=%s", agreement_id, paid.sending,
                            paid.tx_hash or "(not sent)")
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.driver.close()
