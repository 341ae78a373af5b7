"""Taking up what the previous daemon on this home left running (Nomad's RecoverTask): agreements
with their reservations and timers, networks, and activities whose container still runs, with
their batches. Activities whose container died meanwhile end with a reason."""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime
from typing import Protocol

from exeunit import errors
from exeunit.domain.clock import utcnow
from exeunit.domain.market import Agreement, AgreementState, Market
from exeunit.domain.records import Store
from exeunit.domain.settings import ProviderSettings
from exeunit.domain.states import ActivityState
from exeunit.runtime.storage import LoopStorage
from exeunit.services.activity import Activity
from exeunit.services.housekeeping import Housekeeping
from exeunit.services.images import ImageResolver
from exeunit.services.networks import Networks
from exeunit.services.payments import Payments

log = logging.getLogger(__name__)


class Recovering(Protocol):
    """What recovery fills and arms: the provider (exeunit.services.provider), as it opens."""

    settings: ProviderSettings
    market: Market
    networks: Networks
    images: ImageResolver
    storage: LoopStorage
    housekeeping: Housekeeping
    payments: Payments | None

    def new_activity(self, activity_id: str, agreement: Agreement) -> Activity: ...
    def all_activities(self) -> list[Activity]: ...
    def live_activities(self, agreement: Agreement) -> list[str]: ...
    def forget_activity_later(self, activity_id: str, delay: float) -> None: ...
    def forget_agreement_later(self, agreement: Agreement, delay: float) -> None: ...
    def arm_expiry(self, agreement: Agreement, now: datetime) -> None: ...
    def arm_idle(self, agreement: Agreement) -> None: ...
    async def expire(self, agreement: Agreement) -> None: ...


async def recover(provider: Recovering, store: Store) -> None:
    started = asyncio.get_running_loop().time()
    for agreement in store.agreements():
        provider.market.restore(agreement)
    for network in store.networks():
        provider.networks.restore(network)
    for record in store.activities():
        try:
            agreement = provider.market.get(record.agreement_id)
        except errors.NotFound:
            continue
        if record.network_id and record.state != ActivityState.TERMINATED.value:
            provider.networks.restore_member(agreement.requestor_id, record.network_id, record.activity_id,
                                             record.network_ip, attached=record.state == ActivityState.READY.value)
        activity = provider.new_activity(record.activity_id, agreement)
        try:
            await activity.recover(record)
        except errors.ExeUnitError as exc:  # its image is gone, say: it cannot go on
            log.warning("event=activity_unrecoverable %s error=%s", activity.log_ids, exc)
            await activity.terminate("ProviderRestart", f"the activity could not be taken up again: {exc}")
            continue
        if activity.state is ActivityState.NEW:
            await asyncio.to_thread(provider.storage.destroy, activity.activity_id)  # a deploy cut short
        elif activity.state is not ActivityState.TERMINATED:
            if not await provider.housekeeping.container_alive(activity):
                await activity.terminate("ContainerDied", "its container stopped while the provider was down")
            else:
                if activity.image is not None:
                    provider.images.claim(agreement, activity.image.id, record.image_loaded_here)
                await activity.recover_batches()
    await provider.networks.settle_after_restart()
    now = utcnow()
    retention = provider.settings.ended_retention_seconds
    for activity in provider.all_activities():
        if activity.state is ActivityState.TERMINATED and activity.ended_at is not None:
            provider.forget_activity_later(activity.activity_id, (activity.ended_at - now).total_seconds() + retention)
    recovered = 0
    for agreement in provider.market.all():
        if agreement.state is not AgreementState.APPROVED:
            provider.forget_agreement_later(agreement, retention)
            if provider.payments is not None:  # its invoice, if the daemon stopped before issuing it
                await provider.payments.agreement_ended(agreement)
            continue
        if agreement.expiration <= now:
            await provider.expire(agreement)
            continue
        provider.arm_expiry(agreement, now)
        if provider.payments is not None:  # its debit notes go on, and their deadlines
            provider.payments.agreement_started(agreement)
        if not provider.live_activities(agreement):
            provider.arm_idle(agreement)
        recovered += 1
    log.info("event=state_recovered agreements=%d activities=%d seconds=%.3f", recovered,
             sum(a.state is not ActivityState.TERMINATED for a in provider.all_activities()),
             asyncio.get_running_loop().time() - started)
