"""The provider: market, activities, networks and transfers of one host, behind one facade.

This is what the gRPC servicers call. It owns ownership checks (a requestor reaches only its own
agreements and activities), agreement expiry and idleness, and a shutdown that leaves no container
behind. Taking up a previous daemon's work is exeunit.services.recovery; noticing dead and
expired containers, exeunit.services.housekeeping; moving bytes, exeunit.services.transfers.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from exeunit import errors
from exeunit.domain.batch import Batch, BatchEvent
from exeunit.domain.clock import utcnow
from exeunit.domain.commands import Command, Deploy
from exeunit.domain.market import Agreement, AgreementState, Demand, ImageRef, Market, Offer, Refusal, RefusalReason
from exeunit.domain.payments import ChainReader, DocumentSealer
from exeunit.domain.networks import NetworkOverlay, NetworkPlumbing, NetworkRecord, PrivateNetwork
from exeunit.domain.event_log import MemoryPool
from exeunit.domain.records import Journals, Store
from exeunit.domain.reports import ActivityStatus, ActivitySummary, Usage, agreement_usage
from exeunit.domain.settings import TEST_COUNTERS_IMAGE, ActivityLimits, ProviderSettings
from exeunit.domain.states import ActivityState
from exeunit.runtime.protocols import ExecutorFactory, Runtime
from exeunit.runtime.storage import LoopStorage
from exeunit.services.activity import Activity, ActivityHost
from exeunit.services.fairness import ConcurrencyQuota
from exeunit.services.housekeeping import Housekeeping
from exeunit.services.images import ImageResolver
from exeunit.services.networks import Networks
from exeunit.services.relay import RelayHub
from exeunit.services.pacing import Pacer
from exeunit.services.payments import Payments
from exeunit.services.recovery import recover
from exeunit.services.transfers import Transfers
from exeunit.v1.conventions import MULTI_ACTIVITY_CAPABILITY, TEST_COUNTERS_RUNTIME, VPN_CAPABILITY

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class Machinery:
    """The host-side parts a provider runs on, chosen by the assembly (exeunit.app.assembly)."""

    runtime: Runtime
    executors: ExecutorFactory
    storage: LoopStorage
    plumbing: NetworkPlumbing
    journals: Journals
    # Starts the data plane of networks that span providers, given where it sends frames to relay.
    overlay: Callable[[Callable[[str, str, bytes], None]], NetworkOverlay] | None = None
    sealer: DocumentSealer | None = None  # signs payment documents (None: none are issued)
    chain: ChainReader | None = None  # reads payments on the chain (None: none are credited)


class Provider:
    def __init__(self, settings: ProviderSettings, machinery: Machinery, limits: ActivityLimits,
                 store: Store | None = None) -> None:
        self.storage = machinery.storage
        self._store = store  # None: nothing survives this daemon (the embedded provider, tests)
        self.closing = False
        self.networks = Networks(machinery.plumbing, limits.networks_per_requestor, self._persist_network,
                                 settings.provider_id, limits.peers_per_network)
        self.relays = RelayHub(self.networks, limits.relay_queue_bytes)
        self._start_overlay = machinery.overlay
        if self.networks.unavailable is None and VPN_CAPABILITY not in settings.capabilities:
            settings = dataclasses.replace(settings, capabilities=(*settings.capabilities, VPN_CAPABILITY))
        elif self.networks.unavailable is not None:
            log.warning("event=networks_unavailable reason=%r", self.networks.unavailable)
        if MULTI_ACTIVITY_CAPABILITY not in settings.capabilities:  # activities one after another
            settings = dataclasses.replace(settings, capabilities=(*settings.capabilities, MULTI_ACTIVITY_CAPABILITY))
        self.settings = settings
        self.market = Market(settings)
        self._runtime = machinery.runtime
        self.images = ImageResolver(machinery.runtime, settings.images)
        self._limits = limits
        self._journals = machinery.journals
        self._pools: dict[str, MemoryPool] = {}  # by requestor
        self.pacer = Pacer()  # one for all bulk data: it measures the one event loop they share
        self._streams = ConcurrencyQuota(limits.streams_per_requestor, "event streams and watches",
                                         "--streams-per-requestor")
        self._host = ActivityHost(machinery.runtime, machinery.executors, self.images, machinery.storage,
                                  self.networks, limits, settings.home_id, machinery.journals, self.memory_pool,
                                  self.pacer, store)
        self._activities: dict[str, Activity] = {}
        self._expiry: dict[str, asyncio.TimerHandle] = {}
        self._idle: dict[str, asyncio.TimerHandle] = {}  # agreements with no live activity
        self._tasks: set[asyncio.Future[None]] = set()
        self.housekeeping = Housekeeping(machinery.runtime, machinery.storage, machinery.journals, settings.home_id,
                                         lambda: list(self._activities.values()), self._spawn)
        self.transfers = Transfers(machinery.runtime, machinery.storage, limits, self.activity, self.pacer)
        self.payments = (Payments(machinery.sealer, store, machinery.chain, self.agreement_usage, self.terminate)
                         if machinery.sealer is not None else None)

    # Life of the daemon

    async def open(self) -> None:
        """Checks the engine, takes up what a previous run of this home left running, removes
        what it left behind and any container whose agreement expired, and starts watching."""
        await self._runtime.ping()
        if self.storage.owner == (0, 0):
            log.warning("event=engine_without_userns_remap message=%r", "root in a container is root on this host; "
                        "start dockerd with --userns-remap=default so that it is not")
        if self._start_overlay is not None and self.networks.unavailable is None:
            self.relays.bind(asyncio.get_running_loop())
            self.networks.overlay = await asyncio.to_thread(self._start_overlay, self.relays.from_agent)
        if self._store is not None:
            await recover(self, self._store)
        self.networks.rejoin_overlay()
        await self.housekeeping.sweep_leftovers()
        self.housekeeping.start()

    async def close(self, keep_activities: bool = False) -> None:
        """Terminates every activity and agreement (reason ProviderShutdown), so that no container
        of this provider survives; or, with `keep_activities`, lets go of them as they are: their
        containers run on and their records stay, for the next daemon on this home to take up."""
        self.closing = True
        for handle in (*self._expiry.values(), *self._idle.values()):
            handle.cancel()
        if keep_activities:
            await asyncio.gather(*(a.detach() for a in self._activities.values()))
            log.info("event=activities_kept count=%d", sum(
                a.state is not ActivityState.TERMINATED for a in self._activities.values()))
        else:
            agreements = [a for a in self.market.all() if a.state is AgreementState.APPROVED]
            await asyncio.gather(
                *(self.terminate(a, "ProviderShutdown", "the provider daemon is shutting down") for a in agreements)
            )
            await asyncio.gather(*(a.close() for a in self._activities.values()))
            await self.networks.close()
            if self.networks.overlay is not None:
                await asyncio.to_thread(self.networks.overlay.close)
            await asyncio.to_thread(self.storage.close)
            await asyncio.to_thread(self._journals.close)
        self.housekeeping.stop()
        if self.payments is not None:
            await self.payments.close()
        for task in list(self._tasks):
            task.cancel()

    def _check_open(self) -> None:
        if self.closing:
            raise errors.Unavailable("the provider is shutting down; try another provider or again later")

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # Market

    async def offer(self) -> Offer:
        names = sorted({name for image in await self.images.offered() for name in (*image.tags, image.id)})
        overlay = self.networks.overlay
        return Offer(self.settings, self.market.free(), tuple(names), self._limits,
                     overlay.port if overlay is not None else 0)

    async def propose(self, requestor_id: str, demand: Demand) -> Agreement | Refusal:
        self._check_open()
        now = utcnow()
        if demand.runtime == TEST_COUNTERS_RUNTIME and demand.image == ImageRef():  # the runtime brings its image
            demand = dataclasses.replace(demand, image=ImageRef(tag=TEST_COUNTERS_IMAGE))
        demand.validate(now)
        available = await self.images.available(requestor_id, demand.image)
        if self.payments is not None and (why := self.payments.payer_refusal(requestor_id, self.settings.provider_id,
                                                                             demand.payment)):
            return Refusal(RefusalReason.PAYMENT_TERMS, why)
        outcome = self.market.propose(requestor_id, demand, available, now)
        if isinstance(outcome, Agreement):
            self._persist_agreement(outcome)
            self.arm_expiry(outcome, now)
            self.arm_idle(outcome)
            if self.payments is not None:
                self.payments.agreement_started(outcome)
        return outcome

    def arm_expiry(self, agreement: Agreement, now: datetime) -> None:
        delay = (agreement.expiration - now).total_seconds()
        self._expiry[agreement.agreement_id] = asyncio.get_running_loop().call_later(
            delay, lambda: self._spawn(self.expire(agreement))
        )

    async def expire(self, agreement: Agreement) -> None:
        await self.terminate(agreement, "Expired", f"the agreement expired at {agreement.expiration.isoformat()}")

    def arm_idle(self, agreement: Agreement) -> None:
        """Ends the agreement if no activity is created under it within the idle time, counted
        from its last activity's end (or its signing), through a restart too."""
        if agreement.state is not AgreementState.APPROVED:
            return
        self._disarm_idle(agreement)
        idle = self.settings.agreement_idle_seconds
        since = agreement.spent.last_ended or agreement.created
        delay = max(idle - (utcnow() - since).total_seconds(), 0.0)
        message = f"no activity ran under the agreement for {idle:g}s; capacity returned to the offer"
        self._idle[agreement.agreement_id] = asyncio.get_running_loop().call_later(
            delay, lambda: self._spawn(self.terminate(agreement, "Idle", message))
        )

    def _disarm_idle(self, agreement: Agreement) -> None:
        handle = self._idle.pop(agreement.agreement_id, None)
        if handle:
            handle.cancel()

    def _persist_agreement(self, agreement: Agreement) -> None:
        if self._store is not None:
            self._store.put_agreement(agreement)

    def _persist_activity(self, activity: Activity) -> None:
        if self._store is not None:
            self._store.put_activity(activity.record())

    def agreement(self, requestor_id: str, agreement_id: str) -> Agreement:
        agreement = self.market.get(agreement_id)
        if agreement.requestor_id != requestor_id:
            raise errors.PermissionDenied(f"agreement {agreement_id} belongs to another requestor")
        return agreement

    async def agreement_usage(self, agreement: Agreement) -> Usage:
        """What the agreement used over all its activities, ended and live: it is billed as one."""
        live = [self._activities[a] for a in self.live_activities(agreement)]
        usages = await asyncio.gather(*(a.usage() for a in live))
        return agreement_usage(agreement, {a.activity_id: u for a, u in zip(live, usages)}, utcnow())

    async def terminate_agreement(self, requestor_id: str, agreement_id: str, reason: str, message: str) -> Agreement:
        agreement = self.agreement(requestor_id, agreement_id)
        await self.terminate(agreement, reason or "Requested", message or "terminated by the requestor")
        return agreement

    async def terminate(self, agreement: Agreement, reason: str, message: str) -> None:
        """Ends the agreement and its activities; its image and, with the requestor's last
        agreement, the requestor's networks go. Idempotent: the first reason is kept."""
        handle = self._expiry.pop(agreement.agreement_id, None)
        if handle:
            handle.cancel()
        self._disarm_idle(agreement)
        if not self.market.mark_terminated(agreement, reason, message):
            return
        self._persist_agreement(agreement)
        self.forget_agreement_later(agreement, self.settings.ended_retention_seconds)
        activity_reason = "AgreementExpired" if reason == "Expired" else (
            reason if reason == "ProviderShutdown" else "AgreementTerminated")
        await asyncio.gather(*(
            self._activities[a].terminate(activity_reason, message)
            for a in agreement.activity_ids if a in self._activities
        ))
        await self.images.release(agreement)
        await self._drop_networks_of_gone_requestor(agreement.requestor_id)
        if self.payments is not None:
            await self.payments.agreement_ended(agreement)  # its invoice, with what it used in all

    async def _drop_networks_of_gone_requestor(self, requestor_id: str) -> None:
        """A requestor's networks live as long as it has an agreement here: nothing can join
        them after that, and a requestor must not pile up networks it no longer uses."""
        if self._has_live_agreement(requestor_id):
            return
        for network in self.networks.owned_by(requestor_id):
            await self.networks.remove(requestor_id, network.network_id)

    def _has_live_agreement(self, requestor_id: str) -> bool:
        return any(a.requestor_id == requestor_id and a.state is AgreementState.APPROVED for a in self.market.all())

    # Activities

    async def create_activity(self, requestor_id: str, agreement_id: str) -> Activity:
        self._check_open()
        agreement = self.agreement(requestor_id, agreement_id)
        if agreement.state is not AgreementState.APPROVED:
            raise errors.FailedPrecondition(
                f"agreement {agreement_id} is terminated ({agreement.termination_reason}); make a new agreement"
            )
        live = self.live_activities(agreement)
        if live:
            raise errors.FailedPrecondition(
                f"agreement {agreement_id} already has a live activity {live[0]}; destroy it first"
            )
        most = self._host.limits.activities_per_agreement
        if len(agreement.activity_ids) >= most:
            raise errors.ResourceExhausted(
                f"agreement {agreement_id} has held {len(agreement.activity_ids)} activities, the most this provider "
                "allows on one agreement (--activities-per-agreement); make a new agreement"
            )
        activity = self.new_activity(uuid.uuid4().hex, agreement)
        self._disarm_idle(agreement)
        agreement.activity_ids.append(activity.activity_id)
        self._persist_agreement(agreement)
        self._persist_activity(activity)
        log.info("event=activity_created %s", activity.log_ids)
        return activity

    def live_activities(self, agreement: Agreement) -> list[str]:
        """Ids of the agreement's activities not yet terminated (ended ones may be forgotten)."""
        return [a for a in agreement.activity_ids
                if a in self._activities and self._activities[a].state is not ActivityState.TERMINATED]

    def new_activity(self, activity_id: str, agreement: Agreement) -> Activity:
        def ended() -> None:  # its usage goes to its agreement's bill, and the agreement may idle
            now = utcnow()
            if agreement.spent.add(activity_id, *activity.counted(now), activity.ended_at or now):
                self._persist_agreement(agreement)
            self.arm_idle(agreement)
            self.forget_activity_later(activity.activity_id, self.settings.ended_retention_seconds)

        activity = Activity(activity_id, agreement, self._host, on_terminated=ended, on_change=self._persist_activity)
        self._activities[activity_id] = activity
        return activity

    def memory_pool(self, requestor_id: str) -> MemoryPool:
        """What the requestor's batches may hold in memory together (--output-memory-per-requestor-mib)."""
        pool = self._pools.get(requestor_id)
        if pool is None:
            pool = self._pools[requestor_id] = MemoryPool(self._limits.output_memory_per_requestor_bytes)
        return pool

    def all_activities(self) -> list[Activity]:
        return list(self._activities.values())

    def forget_activity_later(self, activity_id: str, delay: float) -> None:
        asyncio.get_running_loop().call_later(max(delay, 0.0), self._forget_activity, activity_id)

    def _forget_activity(self, activity_id: str) -> None:
        """An ended activity's status has been kept long enough: memory and disk stay flat."""
        if self.closing:
            return
        self._activities.pop(activity_id, None)
        if self._store is not None:
            self._store.forget_activity(activity_id)

    def forget_agreement_later(self, agreement: Agreement, delay: float) -> None:
        asyncio.get_running_loop().call_later(delay, self._forget_agreement, agreement)

    def _forget_agreement(self, agreement: Agreement) -> None:
        if self.closing:
            return
        for activity_id in agreement.activity_ids:
            self._activities.pop(activity_id, None)
        self.market.forget(agreement.agreement_id)
        if self.payments is not None:
            self.payments.forget(agreement.agreement_id)
        pool = self._pools.get(agreement.requestor_id)
        if pool is not None and pool.used == 0 and not any(
                a.requestor_id == agreement.requestor_id for a in self.market.all()):
            del self._pools[agreement.requestor_id]
        if self._store is not None:
            self._store.forget_agreement(agreement.agreement_id)

    def activity(self, requestor_id: str, activity_id: str) -> Activity:
        activity = self._activities.get(activity_id)
        if activity is None:
            raise errors.NotFound(f"activity {activity_id!r} not found")
        if activity.agreement.requestor_id != requestor_id:
            raise errors.PermissionDenied(f"activity {activity_id} belongs to another requestor")
        return activity

    def activity_states(self) -> list[ActivityState]:
        """Every known activity's state (read from the metrics thread: one copy, under the GIL)."""
        return [a.state for a in list(self._activities.values())]

    async def list_activities(self, requestor_id: str | None) -> list[ActivitySummary]:
        """The requestor's activities (every one for None: the operator), oldest first."""
        chosen = sorted((a for a in self._activities.values()
                         if requestor_id is None or a.agreement.requestor_id == requestor_id),
                        key=lambda a: a.created)
        return list(await asyncio.gather(*(a.summary() for a in chosen)))

    def exec(self, requestor_id: str, activity_id: str, commands: list[Command], batch_id: str) -> tuple[Batch, bool]:
        activity = self.activity(requestor_id, activity_id)
        joining = next((c for c in commands if isinstance(c, Deploy) and c.network_id), None)
        if joining is None or activity.state is not ActivityState.NEW:  # (a resubmitted batch, or refused by submit)
            return activity.submit(commands, batch_id)
        before = self.networks.membership(activity_id)
        self.networks.reserve(requestor_id, joining.network_id, joining.ip, activity_id)
        try:
            submitted = activity.submit(commands, batch_id)
        except BaseException:
            self.networks.leave_now(activity_id)
            if before is not None:
                self.networks.reserve(requestor_id, before[0].network_id, str(before[1].ip), activity_id)
            raise
        self._persist_activity(activity)
        return submitted

    def batch_events(self, requestor_id: str, activity_id: str, batch_id: str, from_sequence: int) -> AsyncIterator[BatchEvent]:
        return self.counted(requestor_id, self.batch(requestor_id, activity_id, batch_id).events.read(from_sequence))

    def batch(self, requestor_id: str, activity_id: str, batch_id: str) -> Batch:
        return self.activity(requestor_id, activity_id).batch(batch_id)

    def status(self, requestor_id: str, activity_id: str) -> ActivityStatus:
        return self.activity(requestor_id, activity_id).status()

    def watch(self, requestor_id: str, activity_id: str) -> AsyncIterator[ActivityStatus]:
        return self.counted(requestor_id, self.activity(requestor_id, activity_id).watch())

    async def counted(self, requestor_id: str, stream: AsyncIterator[T]) -> AsyncIterator[T]:
        """The stream, counted against its requestor's --streams-per-requestor while it is open."""
        with self._streams.hold(requestor_id, f"requestor {requestor_id!r}"):
            async for item in stream:
                yield item

    async def usage(self, requestor_id: str, activity_id: str) -> Usage:
        return await self.activity(requestor_id, activity_id).usage()

    async def destroy(self, requestor_id: str, activity_id: str) -> ActivityStatus:
        activity = self.activity(requestor_id, activity_id)
        await activity.close()
        return activity.status()

    # Networks

    def create_network(self, requestor_id: str, network_id: str, address: str, gateway: str, spans: bool = False,
                       peers: dict[str, str] | None = None) -> PrivateNetwork:
        self._check_open()
        if not self._has_live_agreement(requestor_id):
            raise errors.FailedPrecondition("a network needs a live agreement with this provider; make one first")
        return self.networks.create(requestor_id, network_id, address, gateway, spans, peers)

    def network(self, requestor_id: str, network_id: str) -> PrivateNetwork:
        return self.networks.get(requestor_id, network_id)

    def set_network_peers(self, requestor_id: str, network_id: str, peers: dict[str, str]) -> PrivateNetwork:
        return self.networks.set_peers(requestor_id, network_id, peers)

    async def remove_network(self, requestor_id: str, network_id: str) -> list[str]:
        cut = await self.networks.remove(requestor_id, network_id)
        for activity_id in cut:
            if activity_id in self._activities:
                self._persist_activity(self._activities[activity_id])
        return cut

    def _persist_network(self, network: PrivateNetwork | None, key: tuple[str, str]) -> None:
        if self._store is None:
            return
        if network is None:
            self._store.forget_network(*key)
        else:
            self._store.put_network(NetworkRecord(network.requestor_id, network.network_id, str(network.subnet),
                                                  network.gateway, network.key, network.spans,
                                                  dict(network.peers)))
