"""The provider: market, activities and transfers of one host, behind one facade.

This is what the gRPC servicers call. It owns ownership checks (a requestor reaches only its own
agreements and activities), agreement expiry, noticing containers that die, and a shutdown that
leaves no container behind.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from contextlib import asynccontextmanager, contextmanager

from exeunit import errors
from exeunit.services.activity import Activity, ActivityLimits, ActivityStatus, ActivitySummary, Usage
from exeunit.domain.batch import Batch, BatchEvent
from exeunit.runtime.bridges import BridgePlumbing
from exeunit.domain.commands import Command, Deploy
from exeunit.services.fairness import ConcurrencyQuota, IdleWatchdog, idle_timeout
from exeunit.services.images import ImageResolver
from exeunit.runtime.protocols import LABEL_EXPIRES, LABEL_HOME, Runtime
from exeunit.persistence.store import StateStore
from exeunit.domain.market import (
    TEST_COUNTERS_IMAGE, TEST_COUNTERS_RUNTIME, Agreement, AgreementState, Demand, ImageRef, Market, Offer,
    ProviderSettings, Refusal, utcnow,
)
from exeunit.services.networks import Networks, NetworkRecord, PrivateNetwork
from exeunit.domain.states import ActivityState
from exeunit.runtime.storage import LoopStorage, VolumeDirs
from exeunit.runtime.threads import in_data_thread
from exeunit.runtime.files import Download, Upload, confine, download, existing_size

log = logging.getLogger(__name__)

EXPIRED_GRACE_SECONDS = 60.0  # an expired agreement's own daemon gets this long to end it itself
REAP_INTERVAL_SECONDS = 300.0  # how often the host is swept for containers of expired agreements
TUNNEL_READ_BYTES = 256 << 10  # what a tunnel reads from the activity's port at a time, at most
VPN_CAPABILITY = "vpn"  # offered when this host can build private networks (as Golem's vm runtime)


@dataclass
class PortConnection:
    """A tunnel's connection to a port in an activity."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    cut_off: asyncio.Event = field(default_factory=asyncio.Event)  # set when the activity ended under it

    @property
    def was_cut(self) -> bool:
        return self.cut_off.is_set()

    def cut(self) -> None:
        self.cut_off.set()
        self.writer.transport.abort()


class Provider:
    def __init__(self, settings: ProviderSettings, runtime: Runtime, limits: ActivityLimits,
                 storage: LoopStorage, state: StateStore | None = None) -> None:
        self.storage = storage
        self._state = state  # None: nothing survives this daemon (the embedded provider, tests)
        self.closing = False
        self.networks = Networks(BridgePlumbing(settings.home_id), limits.networks_per_requestor, self._persist_network)
        if self.networks.unavailable is None and VPN_CAPABILITY not in settings.capabilities:
            settings = dataclasses.replace(settings, capabilities=(*settings.capabilities, VPN_CAPABILITY))
        elif self.networks.unavailable is not None:
            log.warning("event=networks_unavailable reason=%r", self.networks.unavailable)
        self.settings = settings
        self.market = Market(settings)
        self._runtime = runtime
        self._images = ImageResolver(runtime, settings.images)
        self._limits = limits
        self._transfers_by_activity = ConcurrencyQuota(limits.transfers_per_activity, "transfers")
        self._transfers_by_requestor = ConcurrencyQuota(limits.transfers_per_requestor, "transfers")
        self._tunnels_by_activity = ConcurrencyQuota(limits.tunnels_per_activity, "tunnels")
        self._activities: dict[str, Activity] = {}
        self._expiry: dict[str, asyncio.TimerHandle] = {}
        self._idle: dict[str, asyncio.TimerHandle] = {}  # agreements with no live activity
        self._tasks: set[asyncio.Task[None]] = set()
        self._death_watch_task: asyncio.Task[None] | None = None
        self._reaper_task: asyncio.Task[None] | None = None

    # Life of the daemon

    async def open(self) -> None:
        """Checks the engine, removes what a previous run of this home left behind and any
        container whose agreement expired, and starts watching for containers that die."""
        await self._runtime.ping()
        if self.storage.owner == (0, 0):
            log.warning("event=engine_without_userns_remap message=%r", "root in a container is root on this host; "
                        "start dockerd with --userns-remap=default so that it is not")
        if self._state is not None:
            await self._recover(self._state)
        live = {a.activity_id: a for a in self._activities.values() if a.state is not ActivityState.TERMINATED}
        # Only this home's: its lock (exeunit.persistence.home) proves no other daemon runs them.
        leftovers = await self._runtime.containers_with_label(LABEL_HOME, self.settings.home_id)
        for container_id in set(leftovers) - {a.container_id for a in live.values()}:
            log.warning("event=dangling_container_removed container=%s provider=%s",
                        container_id[:12], self.settings.provider_id)
            await self._runtime.remove_container(container_id, 1)
        for activity_id in await asyncio.to_thread(self.storage.leftovers):
            if activity_id in live and live[activity_id].volumes is not None:
                continue
            log.warning("event=dangling_storage_removed activity=%s", activity_id)
            await asyncio.to_thread(self.storage.destroy, activity_id)
        await self.reap_expired()
        self._death_watch_task = asyncio.create_task(self._watch_deaths())
        self._reaper_task = asyncio.create_task(self._reap_periodically())

    async def _recover(self, state: StateStore) -> None:
        """Takes up what the previous daemon on this home left running (Nomad's RecoverTask):
        agreements with their reservations and timers, activities whose container still runs.
        Activities whose container died meanwhile end with a reason."""
        started = asyncio.get_running_loop().time()
        for agreement in state.agreements():
            self.market.restore(agreement)
        for network in state.networks():
            self.networks.restore(network)
        for record in state.activities():
            try:
                agreement = self.market.get(record.agreement_id)
            except errors.NotFound:
                continue
            if record.network_id and record.state != ActivityState.TERMINATED.value:
                self.networks.restore_member(agreement.requestor_id, record.network_id, record.activity_id,
                                             record.network_ip, attached=record.state == ActivityState.READY.value)
            activity = self._new_activity(record.activity_id, agreement)
            try:
                await activity.recover(record)
            except errors.ExeUnitError as exc:  # its image is gone, say: it cannot go on
                log.warning("event=activity_unrecoverable %s error=%s", activity.log_ids, exc)
                await activity.terminate("ProviderRestart", f"the activity could not be taken up again: {exc}")
                continue
            if activity.state is ActivityState.NEW:
                await asyncio.to_thread(self.storage.destroy, activity.activity_id)  # a deploy cut short
            elif activity.state is not ActivityState.TERMINATED:
                if not await self._container_alive(activity):
                    await activity.terminate("ContainerDied", "its container stopped while the provider was down")
                else:
                    if activity.image is not None:
                        self._images.claim(agreement, activity.image.id, record.image_loaded_here)
                    activity.recover_batches()
        await self.networks.settle_after_restart()
        now = utcnow()
        retention = self.settings.ended_retention_seconds
        for activity in self._activities.values():
            if activity.state is ActivityState.TERMINATED and activity.ended_at is not None:
                self._forget_later(activity.activity_id, (activity.ended_at - now).total_seconds() + retention)
        recovered = 0
        for agreement in self.market.all():
            if agreement.state is not AgreementState.APPROVED:
                asyncio.get_running_loop().call_later(retention, self._forget_agreement, agreement)
                continue
            if agreement.expiration <= now:
                await self._expire(agreement)
                continue
            self._arm_expiry(agreement, now)
            if not self._live_activities(agreement):
                self._arm_idle(agreement)
            recovered += 1
        log.info("event=state_recovered agreements=%d activities=%d seconds=%.3f", recovered,
                 sum(a.state is not ActivityState.TERMINATED for a in self._activities.values()),
                 asyncio.get_running_loop().time() - started)

    async def reap_expired(self) -> int:
        """Removes every container, whichever provider started it, whose agreement expired more
        than EXPIRED_GRACE_SECONDS ago: its daemon is gone or stuck, and nothing runs for ever."""
        now = utcnow().timestamp()
        reaped = 0
        for container_id, labels in (await self._runtime.labelled_containers(LABEL_EXPIRES)).items():
            try:
                expires = float(labels[LABEL_EXPIRES])
            except ValueError:
                continue
            if expires + EXPIRED_GRACE_SECONDS < now:
                log.warning("event=expired_container_reaped container=%s home=%s expired=%d",
                            container_id[:12], labels.get(LABEL_HOME, "-"), expires)
                await self._runtime.remove_container(container_id, 1)
                reaped += 1
        return reaped

    async def _reap_periodically(self) -> None:
        while True:
            await asyncio.sleep(REAP_INTERVAL_SECONDS)
            try:
                await self.reap_expired()
            except errors.ExeUnitError as exc:
                log.warning("event=reap_failed error=%s", exc)

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
                *(self._terminate_agreement(a, "ProviderShutdown", "the provider daemon is shutting down")
                  for a in agreements)
            )
            await asyncio.gather(*(a.close() for a in self._activities.values()))
            await self.networks.close()
            await asyncio.to_thread(self.storage.close)
        for task in (self._death_watch_task, self._reaper_task):
            if task is not None:
                task.cancel()
        for task in list(self._tasks):
            task.cancel()

    def _check_open(self) -> None:
        if self.closing:
            raise errors.Unavailable("the provider is shutting down; try another provider or again later")

    async def _watch_deaths(self) -> None:
        async for container_id in self._runtime.container_deaths(self.settings.home_id):
            if not container_id:  # the engine was away: look at every container
                self._spawn(self._check_containers())
                continue
            activity = next((a for a in self._activities.values() if a.container_id == container_id), None)
            if activity and activity.state is not ActivityState.TERMINATED:
                self._spawn(activity.terminate("ContainerDied", "the activity's container stopped unexpectedly"))

    async def _check_containers(self) -> None:
        """Ends the activities whose container stopped while nobody could tell (engine restart)."""
        for activity in list(self._activities.values()):
            if activity.state not in (ActivityState.READY, ActivityState.DEPLOYED) or not activity.container_id:
                continue
            try:
                alive = await self._container_alive(activity)
            except errors.ExeUnitError:
                continue
            if not alive and activity.state is not ActivityState.TERMINATED:
                await activity.terminate("ContainerDied", "the activity's container stopped unexpectedly")

    async def _container_alive(self, activity: Activity) -> bool:
        """Whether the activity's container is as its state says: running once Ready, created
        (or already starting) once Deployed."""
        if not activity.container_id:
            return False
        status = await self._runtime.container_status(activity.container_id)
        return status == "running" or (status == "created" and activity.state is ActivityState.DEPLOYED)

    def _spawn(self, coroutine: object) -> None:
        task = asyncio.ensure_future(coroutine)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # Market

    async def offer(self) -> Offer:
        names = sorted({name for image in await self._images.offered() for name in (*image.tags, image.id)})
        return Offer(self.settings, self.market.free(), tuple(names))

    async def propose(self, requestor_id: str, demand: Demand) -> Agreement | Refusal:
        self._check_open()
        now = utcnow()
        if demand.runtime == TEST_COUNTERS_RUNTIME and demand.image == ImageRef():  # the runtime brings its image
            demand = dataclasses.replace(demand, image=ImageRef(tag=TEST_COUNTERS_IMAGE))
        demand.validate(now)
        available = await self._images.available(requestor_id, demand.image)
        outcome = self.market.propose(requestor_id, demand, available, now)
        if isinstance(outcome, Agreement):
            self._persist_agreement(outcome)
            self._arm_expiry(outcome, now)
            self._arm_idle(outcome)
        return outcome

    def _arm_expiry(self, agreement: Agreement, now: datetime) -> None:
        delay = (agreement.expiration - now).total_seconds()
        self._expiry[agreement.agreement_id] = asyncio.get_running_loop().call_later(
            delay, lambda: self._spawn(self._expire(agreement))
        )

    def _persist_agreement(self, agreement: Agreement) -> None:
        if self._state is not None:
            self._state.put_agreement(agreement)

    def _persist_activity(self, activity: Activity) -> None:
        if self._state is not None:
            self._state.put_activity(activity.record())

    async def _expire(self, agreement: Agreement) -> None:
        await self._terminate_agreement(agreement, "Expired", f"the agreement expired at {agreement.expiration.isoformat()}")

    def _arm_idle(self, agreement: Agreement) -> None:
        """Ends the agreement if no activity is created under it within the idle time."""
        if agreement.state is not AgreementState.APPROVED:
            return
        self._disarm_idle(agreement)
        idle = self.settings.agreement_idle_seconds
        message = f"no activity ran under the agreement for {idle:g}s; capacity returned to the offer"
        self._idle[agreement.agreement_id] = asyncio.get_running_loop().call_later(
            idle, lambda: self._spawn(self._terminate_agreement(agreement, "Idle", message))
        )

    def _disarm_idle(self, agreement: Agreement) -> None:
        handle = self._idle.pop(agreement.agreement_id, None)
        if handle:
            handle.cancel()

    def agreement(self, requestor_id: str, agreement_id: str) -> Agreement:
        agreement = self.market.get(agreement_id)
        if agreement.requestor_id != requestor_id:
            raise errors.PermissionDenied(f"agreement {agreement_id} belongs to another requestor")
        return agreement

    async def terminate_agreement(self, requestor_id: str, agreement_id: str, reason: str, message: str) -> Agreement:
        agreement = self.agreement(requestor_id, agreement_id)
        await self._terminate_agreement(agreement, reason or "Requested", message or "terminated by the requestor")
        return agreement

    async def _terminate_agreement(self, agreement: Agreement, reason: str, message: str) -> None:
        handle = self._expiry.pop(agreement.agreement_id, None)
        if handle:
            handle.cancel()
        self._disarm_idle(agreement)
        if not self.market.mark_terminated(agreement, reason, message):
            return
        self._persist_agreement(agreement)
        asyncio.get_running_loop().call_later(self.settings.ended_retention_seconds, self._forget_agreement, agreement)
        activity_reason = "AgreementExpired" if reason == "Expired" else (
            reason if reason == "ProviderShutdown" else "AgreementTerminated")
        await asyncio.gather(*(
            self._activities[a].terminate(activity_reason, message)
            for a in agreement.activity_ids if a in self._activities
        ))
        await self._images.release(agreement)
        await self._drop_networks_of_gone_requestor(agreement.requestor_id)

    async def _drop_networks_of_gone_requestor(self, requestor_id: str) -> None:
        """A requestor's networks live as long as it has an agreement here: nothing can join
        them after that, and a requestor must not pile up networks it no longer uses."""
        if self._has_live_agreement(requestor_id):
            return
        for network in self.networks.owned_by(requestor_id):
            await self.networks.remove(requestor_id, network.network_id)

    # Activities

    async def create_activity(self, requestor_id: str, agreement_id: str) -> Activity:
        self._check_open()
        agreement = self.agreement(requestor_id, agreement_id)
        if agreement.state is not AgreementState.APPROVED:
            raise errors.FailedPrecondition(
                f"agreement {agreement_id} is terminated ({agreement.termination_reason}); make a new agreement"
            )
        live = self._live_activities(agreement)
        if live:
            raise errors.FailedPrecondition(
                f"agreement {agreement_id} already has a live activity {live[0]}; destroy it first"
            )
        activity = self._new_activity(uuid.uuid4().hex, agreement)
        self._disarm_idle(agreement)
        agreement.activity_ids.append(activity.activity_id)
        self._persist_agreement(agreement)
        self._persist_activity(activity)
        log.info("event=activity_created %s", activity.log_ids)
        return activity

    def _live_activities(self, agreement: Agreement) -> list[str]:
        """Ids of the agreement's activities not yet terminated (ended ones may be forgotten)."""
        return [a for a in agreement.activity_ids
                if a in self._activities and self._activities[a].state is not ActivityState.TERMINATED]

    def _new_activity(self, activity_id: str, agreement: Agreement) -> Activity:
        def ended() -> None:
            self._arm_idle(agreement)
            self._forget_later(activity.activity_id, self.settings.ended_retention_seconds)

        activity = Activity(
            activity_id, agreement, self._runtime, self._images, self._limits, self.storage, self.networks,
            home_id=self.settings.home_id, on_terminated=ended, on_change=self._persist_activity,
            state=self._state,
        )
        self._activities[activity_id] = activity
        return activity

    def _forget_later(self, activity_id: str, delay: float) -> None:
        asyncio.get_running_loop().call_later(max(delay, 0.0), self._forget_activity, activity_id)

    def _forget_activity(self, activity_id: str) -> None:
        """An ended activity's status has been kept long enough: memory and disk stay flat."""
        if self.closing:
            return
        self._activities.pop(activity_id, None)
        if self._state is not None:
            self._state.forget_activity(activity_id)

    def _forget_agreement(self, agreement: Agreement) -> None:
        if self.closing:
            return
        for activity_id in agreement.activity_ids:
            self._activities.pop(activity_id, None)
        self.market.forget(agreement.agreement_id)
        if self._state is not None:
            self._state.forget_agreement(agreement.agreement_id)

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

    # Networks

    def create_network(self, requestor_id: str, network_id: str, address: str, gateway: str) -> PrivateNetwork:
        self._check_open()
        if not self._has_live_agreement(requestor_id):
            raise errors.FailedPrecondition("a network needs a live agreement with this provider; make one first")
        return self.networks.create(requestor_id, network_id, address, gateway)

    def network(self, requestor_id: str, network_id: str) -> PrivateNetwork:
        return self.networks.get(requestor_id, network_id)

    async def remove_network(self, requestor_id: str, network_id: str) -> list[str]:
        cut = await self.networks.remove(requestor_id, network_id)
        for activity_id in cut:
            if activity_id in self._activities:
                self._persist_activity(self._activities[activity_id])
        return cut

    def _has_live_agreement(self, requestor_id: str) -> bool:
        return any(a.requestor_id == requestor_id and a.state is AgreementState.APPROVED for a in self.market.all())

    def _persist_network(self, network: PrivateNetwork | None, key: tuple[str, str]) -> None:
        if self._state is None:
            return
        if network is None:
            self._state.forget_network(*key)
        else:
            self._state.put_network(NetworkRecord(network.requestor_id, network.network_id, str(network.subnet),
                                                  network.gateway, network.key))

    def batch_events(self, requestor_id: str, activity_id: str, batch_id: str, from_sequence: int) -> AsyncIterator[BatchEvent]:
        return self.batch(requestor_id, activity_id, batch_id).events.read(from_sequence)

    def batch(self, requestor_id: str, activity_id: str, batch_id: str) -> Batch:
        return self.activity(requestor_id, activity_id).batch(batch_id)

    def status(self, requestor_id: str, activity_id: str) -> ActivityStatus:
        return self.activity(requestor_id, activity_id).status()

    def watch(self, requestor_id: str, activity_id: str) -> AsyncIterator[ActivityStatus]:
        return self.activity(requestor_id, activity_id).watch()

    async def usage(self, requestor_id: str, activity_id: str) -> Usage:
        return await self.activity(requestor_id, activity_id).usage()

    async def destroy(self, requestor_id: str, activity_id: str) -> ActivityStatus:
        activity = self.activity(requestor_id, activity_id)
        await activity.close()
        return activity.status()

    # Tunnels

    @asynccontextmanager
    async def tunnel(self, requestor_id: str, activity_id: str, port: int) -> AsyncIterator[PortConnection]:
        """A TCP connection to `port` in the activity; cut (and marked so) when the activity ends."""
        if not 1 <= port <= 65535:
            raise errors.InvalidArgument(f"port {port} is not in 1-65535")
        activity = self.activity(requestor_id, activity_id)
        if activity.state is not ActivityState.READY or not activity.container_id:
            raise errors.FailedPrecondition(
                f"a tunnel needs the activity Ready, but it is {activity.state.value}; deploy and start it first"
            )
        with self._tunnels_by_activity.hold(activity_id, f"activity {activity_id}"):
            sock = await self._runtime.connect_to_port(activity.container_id, port)
            reader, writer = await asyncio.open_connection(sock=sock, limit=TUNNEL_READ_BYTES)
            connection = PortConnection(reader, writer)
            log.info("event=tunnel_opened %s port=%d", activity.log_ids, port)
            try:
                with activity.transfer(connection.cut):  # the activity's end cuts it
                    yield connection
            finally:
                writer.transport.abort()

    # Transfers

    def _ready_volumes(self, activity: Activity, what: str) -> VolumeDirs:
        if activity.state is not ActivityState.READY or activity.volumes is None:
            raise errors.FailedPrecondition(
                f"{what} needs the activity Ready, but it is {activity.state.value}; deploy and start it first"
            )
        return activity.volumes

    @contextmanager
    def _transfer_slot(self, requestor_id: str, activity: Activity) -> Iterator[None]:
        """Counts a transfer against its activity's and its requestor's quotas."""
        with (
            self._transfers_by_activity.hold(activity.activity_id, f"activity {activity.activity_id}"),
            self._transfers_by_requestor.hold(requestor_id, f"requestor {requestor_id!r}"),
        ):
            yield

    @asynccontextmanager
    async def upload(self, requestor_id: str, activity_id: str, path: str, size: int, mode: int) -> AsyncIterator[Upload]:
        """An upload into the activity's container, cut short if the activity ends meanwhile or the
        client stops sending for the transfer idle time."""
        activity = self.activity(requestor_id, activity_id)
        volumes = self._ready_volumes(activity, "upload")
        dest = confine(path, tuple(volumes.dirs))
        limit = activity.agreement.reserved.storage_bytes
        if size > limit:
            raise errors.ResourceExhausted(
                f"file of {size} bytes exceeds the agreement's storage of {limit} bytes; demand more storage"
            )
        if volumes.enforced:
            free = await asyncio.to_thread(volumes.free_bytes)
            if size > free:  # an upload replaces the file at its path: that space comes back
                free += await in_data_thread(existing_size, volumes.host_dir(dest.volume), dest)
            if size > free:
                raise errors.ResourceExhausted(
                    f"file of {size} bytes does not fit: the activity's storage has {free} bytes free"
                )
        idle = self._limits.transfer_idle_seconds
        with self._transfer_slot(requestor_id, activity):
            async with idle_timeout(idle, f"the upload to {dest.path}") as progress:
                upload = Upload(volumes.host_dir(dest.volume), dest, size, mode, self.storage.owner)
                upload.on_progress = progress
                await upload.begin()
                log.info("event=upload_started %s path=%s size=%d", activity.log_ids, dest.path, size)
                with activity.transfer(upload.cancel):
                    yield upload

    @asynccontextmanager
    async def download(self, requestor_id: str, activity_id: str, path: str) -> AsyncIterator[Download]:
        """A download out of the activity's container, cut short if the activity ends meanwhile or
        the client stops reading for the transfer idle time."""
        activity = self.activity(requestor_id, activity_id)
        volumes = self._ready_volumes(activity, "download")
        dest = confine(path, tuple(volumes.dirs))
        idle = self._limits.transfer_idle_seconds
        with self._transfer_slot(requestor_id, activity):
            log.info("event=download_started %s path=%s", activity.log_ids, dest.path)
            opened = await download(volumes.host_dir(dest.volume), dest)
            # The handler waits in gRPC's write while a client does not read, where cancelling it
            # would leave the call hanging: the watchdog marks the download cut instead, the client
            # gets the reason when it reads on, and until it leaves it holds one descriptor and a
            # slot of its own requestor's quota.
            watchdog = IdleWatchdog(idle, lambda: opened.cut(
                errors.TimedOut(f"the download of {dest.path} stood still for {idle:g}s and was cut")))
            opened.on_progress = watchdog.progress
            ended = errors.FailedPrecondition(f"the download of {dest.path} was cut: the activity ended")
            try:
                with activity.transfer(lambda: opened.cut(ended)):
                    yield opened
            finally:
                watchdog.close()
                opened.close()
