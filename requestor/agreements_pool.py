"""Agreements kept between activities, as yapapi's AgreementsPool keeps them.

A task worker whose activity ended normally gives its agreement back here instead of ending it,
and a later worker of any job of the same `Golem`, for the same payload, takes it up with a new
activity instead of signing a new agreement. Only agreements whose provider's offer states
`golem.srv.caps.multi-activity` (it then takes activities one after another, billed as one
agreement) come here; an agreement whose worker failed is ended as before. The engine
(requestor.engine) ends what is left here at Golem's shutdown.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

from requestor import events
from requestor.client import ProviderClient
from requestor.model import AgreementInfo, DemandSpec, Offer
from exeunit.v1.conventions import MULTI_ACTIVITY_CAPABILITY

REUSE_MARGIN = timedelta(seconds=60)  # an agreement this close to its expiration is not taken up again


def multi_activity(offer: Offer) -> bool:
    """Whether the provider takes activities one after another on one agreement."""
    return MULTI_ACTIVITY_CAPABILITY in offer.capabilities


@dataclass
class Reusable:
    """An agreement that may hold a next activity: while one of its activities runs, and while it
    waits in the pool."""

    client: ProviderClient
    offer: Offer
    agreement: events.Agreement
    info: AgreementInfo
    demand: DemandSpec  # what it was signed for
    job: events.Job  # the last job that used it (its AgreementTerminated names that job)
    spent: Decimal = Decimal(0)  # what its ended activities cost, as its provider counted them

    def serves(self, demand: DemandSpec) -> bool:
        """Whether it was signed for this demand, its expiration aside."""
        return dataclasses.replace(self.demand, expiration=demand.expiration) == demand


class AgreementsPool:
    """The agreements no activity runs on now, by agreement id."""

    def __init__(self) -> None:
        self._idle: dict[str, Reusable] = {}

    def __len__(self) -> int:
        return len(self._idle)

    def put(self, agreement: Reusable) -> None:
        self._idle[agreement.agreement.id] = agreement

    def take(self, demand: DemandSpec, avoid: set[str], only_provider: str | None) -> Reusable | None:
        """An agreement for this demand on a provider not in `avoid` (and `only_provider`, when
        given), the oldest first; None when there is none."""
        for agreement_id, agreement in self._idle.items():
            provider = agreement.offer.provider_id
            if (agreement.serves(demand) and provider not in avoid
                    and (only_provider is None or provider == only_provider)):
                return self._idle.pop(agreement_id)
        return None

    def expiring(self, now: datetime) -> list[Reusable]:
        """Takes out the agreements too close to their expiration to hold another activity."""
        late = [a for a in self._idle.values() if a.info.expiration - now < REUSE_MARGIN]
        for agreement in late:
            del self._idle[agreement.agreement.id]
        return late

    def drain(self) -> list[Reusable]:
        """Takes out every agreement (Golem is leaving)."""
        agreements, self._idle = list(self._idle.values()), {}
        return agreements
