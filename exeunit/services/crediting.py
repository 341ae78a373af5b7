"""Payments read on the chain and credited to agreements (the chain side of
exeunit.services.payments).

A transaction counts only as the chain tells it (exeunit.runtime.chain): a success, transfers of
the agreed token from the agreement's payer to its payee, mined after the agreement was made, with
the agreed confirmations; once, to one agreement. The payer address is the requestor's only when it
proved so in its demand (a signature by that address: `payer_refusal`). What a requestor can make
the daemon do here is bounded while its agreements live: two NotifyPayment reads at a time, 16
named transactions waiting per agreement, each read again with a growing pause and dropped after
RECHECK_GIVE_UP seconds; the reads run on a pool of their own, not the threads Docker calls use.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import timedelta
from decimal import Decimal
from typing import Protocol

from exeunit import errors
from exeunit.domain.market import Agreement
from exeunit.domain.payments import ChainReader, CreditedPayment, PaymentChoice, PaymentStore, no_chain_error
from exeunit.services.fairness import ConcurrencyQuota
from exeunit.v1.conventions import payer_binding_text

log = logging.getLogger(__name__)

PENDING_PER_AGREEMENT = 16  # transactions named and not yet credited, per agreement
NOTIFY_PER_REQUESTOR = 2  # NotifyPayment reads of one requestor at once
RECHECK_FIRST_SECONDS = 2.0  # a named transaction not yet confirmed is read again after this, then less often
RECHECK_MAX_SECONDS = 30.0
RECHECK_GIVE_UP = 900.0  # a transaction the chain still does not know after this is dropped
MINED_BEFORE_SLACK = timedelta(seconds=60)  # a block's clock may be this far behind the daemon's


class Ledger(Protocol):
    """What crediting needs of an agreement's account (exeunit.services.payments)."""

    agreement: Agreement
    credits: list[CreditedPayment]
    paid: Decimal
    pending: list[str]


class Crediting:
    def __init__(self, chain: ChainReader | None, store: PaymentStore | None,
                 credited: Callable[[Ledger, CreditedPayment], None], alive: Callable[[Ledger], bool],
                 spawn: Callable[..., None]) -> None:
        self._chain = chain
        self._store = store
        self._credited = credited  # tells watchers, settles what the payment covers
        self._alive = alive  # whether the account is still known (rechecks stop when it is not)
        self._spawn = spawn
        self._reads = ConcurrencyQuota(NOTIFY_PER_REQUESTOR, "payment notifications")

    def payer_refusal(self, requestor_id: str, provider_id: str, choice: PaymentChoice | None) -> str | None:
        """Why a demand's payer is not the requestor's to name, or None (no platform: no payer)."""
        if choice is None or not choice.platform:
            return None
        if self._chain is None:
            return f"this provider reads no chain for {choice.platform!r}"
        text = payer_binding_text(requestor_id, provider_id, choice.platform)
        if not self._chain.signed_by(choice.payer_address, text, choice.payer_proof):
            return ("demand.payment.payer_proof is not a signature by the payer address over the payer binding "
                    "(exeunit/v1/conventions.py payer_binding_text): a requestor names only an address it holds")
        return None

    async def notify(self, requestor_id: str, account: Ledger, transaction_hash: str) -> bool:
        """Credits the transaction now if the chain says so; else keeps reading it in the background."""
        payment = account.agreement.payment
        if not payment.platform:
            raise errors.FailedPrecondition(f"agreement {account.agreement.agreement_id} has no payment platform: "
                                            "nothing is paid on a chain")
        if self._chain is None:
            raise no_chain_error(payment.platform)
        if any(c.transaction_hash == transaction_hash for c in account.credits):
            return True
        credited_to = self._store.credited_agreement(transaction_hash) if self._store is not None else None
        if credited_to is not None:
            raise errors.FailedPrecondition(f"transaction {transaction_hash} was credited to another agreement")
        with self._reads.hold(requestor_id, "this requestor"):
            if await self._try(account, transaction_hash):
                return True
        if transaction_hash not in account.pending:
            if len(account.pending) >= PENDING_PER_AGREEMENT:
                raise errors.ResourceExhausted(
                    f"agreement {account.agreement.agreement_id} has {PENDING_PER_AGREEMENT} transactions waiting "
                    "for confirmations; name more once they are credited")
            account.pending.append(transaction_hash)
            self._spawn(self._recheck(account, transaction_hash))
        return False

    async def _try(self, account: Ledger, transaction_hash: str) -> bool:
        assert self._chain is not None
        agreement = account.agreement
        transfer = await self._chain.transfer(agreement.payment, transaction_hash)
        if transfer is None or transfer.confirmations < agreement.payment.confirmations:
            return False
        if transfer.mined < agreement.created - MINED_BEFORE_SLACK:
            raise errors.FailedPrecondition(f"transaction {transaction_hash} was mined before agreement "
                                            f"{agreement.agreement_id} was made: it pays something else")
        credit = CreditedPayment(transaction_hash, agreement.agreement_id, transfer.amount, transfer.block_number)
        if any(c.transaction_hash == transaction_hash for c in account.credits):
            return True  # credited meanwhile, by another call naming it
        if self._store is not None and not self._store.credit_payment(credit):
            raise errors.FailedPrecondition(f"transaction {transaction_hash} was credited already")
        account.credits.append(credit)
        account.paid += credit.amount
        if transaction_hash in account.pending:
            account.pending.remove(transaction_hash)
        log.info("event=payment_credited agreement=%s transaction=%s amount=%s paid=%s", agreement.agreement_id,
                 transaction_hash, credit.amount, account.paid)
        self._credited(account, credit)
        return True

    async def _recheck(self, account: Ledger, transaction_hash: str) -> None:
        """Reads a named transaction again, less and less often, until it is credited, proves not
        to pay, the chain still lacks it after RECHECK_GIVE_UP, or the agreement is forgotten. An
        endpoint that does not answer is not a verdict: the transaction stays pending."""
        pause, waited = RECHECK_FIRST_SECONDS, 0.0
        try:
            while transaction_hash in account.pending and self._alive(account) and waited < RECHECK_GIVE_UP:
                await asyncio.sleep(pause)
                waited += pause
                pause = min(pause * 1.5, RECHECK_MAX_SECONDS)
                try:
                    if await self._try(account, transaction_hash):
                        return
                except errors.Unavailable as exc:
                    log.warning("event=chain_unavailable agreement=%s transaction=%s reason=%r",
                                account.agreement.agreement_id, transaction_hash, str(exc))
                except errors.ExeUnitError as exc:
                    log.warning("event=payment_not_credited agreement=%s transaction=%s reason=%r",
                                account.agreement.agreement_id, transaction_hash, str(exc))
                    return
        finally:
            if transaction_hash in account.pending:
                account.pending.remove(transaction_hash)
