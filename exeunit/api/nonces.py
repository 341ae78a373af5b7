"""The nonces of accepted call proofs, remembered per requestor so that none is accepted twice.

A nonce is kept until its proof's time is out of the accepted window (exeunit.v1.identity), and
only while the daemon runs: proofs are bound to its boot epoch, so none made for this start is
accepted at the next. Memory is bounded three ways, each refusal RESOURCE_EXHAUSTED naming it:

- each requestor holds at most `per_requestor` (so one requestor filling its share refuses only
  itself);
- requestors without an agreement here ("strangers": anyone can make keys, and a signed GetOffer
  or ProposeAgreement needs nothing more) share `strangers` between them, so many keys fill that
  pool and no more;
- everybody holds at most `total`. Strangers can never take more than their pool, so the rest is
  only ever taken by requestors holding agreements, whose number the provider's capacity bounds.

Nobody is evicted: forgetting a nonce early would let its proof be replayed. A requestor that
reaches a bound waits for its own oldest proofs to fall out of the window.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from dataclasses import dataclass

from exeunit import errors

# An honest requestor rarely makes more than a few hundred calls a second to one provider (the
# bench's victim under attack: 250/s); a proof is kept at most 2 * MAX_CLOCK_SKEW_SECONDS (120 s)
# and ~60 s with a set clock, so 30,000 is ~250-500 calls/s held for the whole window.
MAX_NONCES_PER_REQUESTOR = 30_000
# All requestors with no agreement here together: enough for a few thousand newcomers' offers and
# proposals a minute, and a bound on what free keys can make the daemon remember.
MAX_STRANGER_NONCES = 100_000
# Everybody: ~200 bytes each (bench/run.py, the exec case: nonce_ledger_bytes_each), so at most ~100 MiB.
MAX_REMEMBERED_NONCES = 500_000


@dataclass(frozen=True)
class NonceBounds:
    """The ledger's bounds (see the module's docstring); tests make them small."""

    per_requestor: int = MAX_NONCES_PER_REQUESTOR
    strangers: int = MAX_STRANGER_NONCES
    total: int = MAX_REMEMBERED_NONCES


class _Account:
    """One requestor's nonces, each mapped to whether it was charged to the strangers' pool."""

    __slots__ = ("requestor_id", "nonces")

    def __init__(self, requestor_id: str) -> None:
        self.requestor_id = requestor_id
        self.nonces: dict[str, bool] = {}


class NonceLedger:
    """Records each accepted proof's nonce for its requestor until `expires`, within the bounds."""

    def __init__(self, bounds: NonceBounds = NonceBounds(),
                 holds_agreement: Callable[[str], bool] = lambda requestor_id: False) -> None:
        self.bounds = bounds
        self._holds_agreement = holds_agreement
        self._accounts: dict[str, _Account] = {}
        self._expiry: list[tuple[float, str, str]] = []  # a heap of (expires, requestor id, nonce)
        self._size = 0
        self._strangers = 0

    def record(self, requestor_id: str, nonce: str, expires: float, now: float) -> None:
        """Remembers `nonce` as `requestor_id`'s until `expires`; Unauthenticated when that
        requestor used it before, ResourceExhausted past a bound."""
        self._forget_expired(now)
        account = self._accounts.get(requestor_id)
        if account is not None and nonce in account.nonces:
            raise errors.Unauthenticated("this call's proof was used before: sign every call afresh")
        held = len(account.nonces) if account is not None else 0
        if held >= self.bounds.per_requestor:
            raise errors.ResourceExhausted(
                f"this requestor made {held} calls within the last proofs' window, the most one requestor may "
                f"(MAX_NONCES_PER_REQUESTOR); slow down")
        stranger = not self._holds_agreement(requestor_id)
        if stranger and self._strangers >= self.bounds.strangers:
            raise errors.ResourceExhausted(
                f"requestors without an agreement here made {self._strangers} calls within the last proofs' "
                "window, the most they may together (MAX_STRANGER_NONCES); retry in a minute")
        if self._size >= self.bounds.total:
            raise errors.ResourceExhausted(
                f"the provider remembers {self._size} recent calls, the most it may (MAX_REMEMBERED_NONCES); "
                "retry in a minute")
        if account is None:
            account = self._accounts[requestor_id] = _Account(requestor_id)
        account.nonces[nonce] = stranger
        heapq.heappush(self._expiry, (expires, account.requestor_id, nonce))
        self._size += 1
        self._strangers += stranger

    def _forget_expired(self, now: float) -> None:
        while self._expiry and self._expiry[0][0] <= now:
            _, requestor_id, nonce = heapq.heappop(self._expiry)
            account = self._accounts[requestor_id]
            self._strangers -= account.nonces.pop(nonce)
            self._size -= 1
            if not account.nonces:
                del self._accounts[requestor_id]

    def held_by(self, requestor_id: str) -> int:
        account = self._accounts.get(requestor_id)
        return len(account.nonces) if account is not None else 0

    @property
    def strangers(self) -> int:
        return self._strangers

    def __len__(self) -> int:
        return self._size
