"""One activity: a container standing in for a Golem VM, driven through New -> Deployed -> Ready ->
Terminated by batches of commands that run one after another (exeunit.services.batches)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from exeunit import errors
from exeunit.domain.batch import Batch, EventKind
from exeunit.domain.clock import utcnow
from exeunit.domain.commands import Command, Deploy, Run, Start, Terminate, check_sequence
from exeunit.domain.market import Agreement, AgreementState
from exeunit.domain.event_log import MemoryPool
from exeunit.domain.records import ActivityRecord, Journals, Store
from exeunit.domain.reports import ActivityStatus, ActivitySummary, Usage
from exeunit.domain.settings import ActivityLimits
from exeunit.domain.states import ActivityState
from exeunit.runtime.protocols import (
    STDOUT, CommandOutcome, CommandRun, ContainerOwner, ContainerSpec, ContainerUsage, Executor, ExecutorFactory,
    GuestSetup, ImageInfo, Runtime,
)
from exeunit.runtime.storage import LoopStorage, VolumeDirs
from exeunit.services import telemetry
from exeunit.services.batches import BatchQueue, Resume
from exeunit.services.counted_sleep import counted_sleep, is_counted_sleep
from exeunit.services.images import ImageResolver
from exeunit.services.networks import Networks
from exeunit.services.pacing import Pacer

log = logging.getLogger(__name__)

USAGE_FRESH_SECONDS = 1.0  # usage counters read from the engine at most this often
MIN_RESUMED_TIMEOUT = 0.001  # a resumed command whose time is up is killed at once


@dataclass(frozen=True)
class ActivityHost:
    """What every activity of one provider works with."""

    runtime: Runtime
    executors: ExecutorFactory
    images: ImageResolver
    storage: LoopStorage
    networks: Networks
    limits: ActivityLimits
    home_id: str
    journals: Journals  # where batches' events go on disk
    memory_pool: Callable[[str], MemoryPool]  # a requestor's: what its batches hold in memory together
    pacer: Pacer  # output yields to other requestors' calls while the event loop is crowded
    store: Store | None = None  # None: nothing survives this daemon (the embedded provider, tests)


class Activity:
    def __init__(self, activity_id: str, agreement: Agreement, host: ActivityHost,
                 on_terminated: Callable[[], None] = lambda: None,
                 on_change: Callable[[Activity], None] = lambda activity: None) -> None:
        self.activity_id = activity_id
        self.agreement = agreement
        self._host = host
        self._runtime = host.runtime
        self._on_terminated = on_terminated
        self._on_change = on_change  # persists the activity's record
        self._executor: Executor | None = None  # once deployed (or taken up after a restart)
        self.state = ActivityState.NEW
        self.reason = ""
        self.message = ""
        self.changed = utcnow()
        self.created = self.changed
        self.container_id: str | None = None
        self.image: ImageInfo | None = None
        self.volumes: VolumeDirs | None = None  # the host side of the image's VOLUMEs, once deployed
        self._image_loaded_here = False
        self._changes = asyncio.Condition()
        self._started_at: datetime | None = None
        self._ended_at: datetime | None = None
        self._last_usage: tuple[float, int] = (0.0, 0)
        self._usage_read_at = float("-inf")
        self._usage_reading: asyncio.Future[ContainerUsage] | None = None
        self._terminating: asyncio.Task[None] | None = None
        self.ending = ""  # the reason it is being terminated, once it is
        self._transfers: set[Callable[[], None]] = set()  # cancel callbacks of transfers in flight
        self._counters: dict[str, float] = {}  # the test-counters runtime's (lost with a daemon restart)
        self.batches = BatchQueue(activity_id, self, host.limits, host.journals, host.store,
                                  host.memory_pool(agreement.requestor_id))

    @property
    def ended_at(self) -> datetime | None:
        return self._ended_at

    @property
    def log_ids(self) -> str:
        return f"agreement={self.agreement.agreement_id} activity={self.activity_id}"

    def status(self) -> ActivityStatus:
        executor = self._executor.name if self.state is ActivityState.READY and self._executor else ""
        return ActivityStatus(
            self.activity_id, self.agreement.agreement_id, self.state, self.reason, self.message, self.changed,
            executor,
        )

    async def _set_state(self, state: ActivityState, reason: str = "", message: str = "") -> None:
        async with self._changes:
            self.state = state
            self.reason, self.message = reason, message
            self.changed = utcnow()
            self._changes.notify_all()
        self._on_change(self)
        log.info("event=activity_state %s state=%s reason=%s", self.log_ids, state.value, reason or "-")

    def network_address(self) -> tuple[str, str]:
        """(network id, ip) of the network the activity joined, or ("", "")."""
        membership = self._host.networks.membership(self.activity_id)
        return (membership[0].network_id, str(membership[1].ip)) if membership else ("", "")

    async def summary(self) -> ActivitySummary:
        image = self.agreement.demand.image
        network_id, ip = self.network_address()
        return ActivitySummary(
            status=self.status(), requestor_id=self.agreement.requestor_id, image=image.tag or image.hash or image.url,
            created=self.created, started=self._started_at, usage=await self.usage(), network_id=network_id, ip=ip,
        )

    async def watch(self) -> AsyncIterator[ActivityStatus]:
        """The current status, then each change, ending after Terminated."""
        last = None
        while True:
            async with self._changes:
                await self._changes.wait_for(lambda: self.status() != last)
                last = self.status()
            yield last
            if last.state is ActivityState.TERMINATED:
                return

    # Surviving a daemon restart

    def record(self) -> ActivityRecord:
        """What a restarted daemon needs to take this activity up again."""
        network_id, network_ip = self.network_address()
        return ActivityRecord(
            activity_id=self.activity_id,
            agreement_id=self.agreement.agreement_id,
            state=self.state.value,
            reason=self.reason,
            message=self.message,
            container_id=self.container_id,
            image_id=self.image.id if self.image else None,
            image_loaded_here=self._image_loaded_here,
            volume_root=str(self.volumes.root) if self.volumes else None,
            volume_dirs={inside: str(host) for inside, host in self.volumes.dirs.items()} if self.volumes else {},
            volumes_enforced=self.volumes.enforced if self.volumes else False,
            started=self._started_at,
            ended=self._ended_at,
            network_id=network_id,
            network_ip=network_ip,
        )

    async def recover(self, record: ActivityRecord) -> None:
        """Takes up the activity a previous daemon ran: its container, image, volumes and state.
        A running activity gets its executor back (an agent connects again by itself)."""
        self.state = self.batches.projected = ActivityState(record.state)
        self.reason, self.message = record.reason, record.message
        self.container_id = record.container_id
        self._started_at, self._ended_at = record.started, record.ended
        self.created = record.started or self.changed
        self._image_loaded_here = record.image_loaded_here
        if self.state is ActivityState.TERMINATED:  # kept for its status; ending it again does nothing
            self._terminating = asyncio.ensure_future(asyncio.sleep(0))
            return
        if record.image_id:
            self.image = await self._runtime.image(record.image_id)
        if record.volume_root:
            dirs = {inside: Path(host) for inside, host in record.volume_dirs.items()}
            self.volumes = VolumeDirs(Path(record.volume_root), dirs, record.volumes_enforced)
        if self.state in (ActivityState.DEPLOYED, ActivityState.READY):
            await self._open_executor()
            if self.state is ActivityState.READY:
                self._executor_now().container_started()

    async def recover_batches(self) -> None:
        await self.batches.recover(self.state)

    async def detach(self) -> None:
        """Lets go of the activity without ending it (the daemon stops, the container runs on for
        the next daemon on this home): batches stop being run, the executor lets go."""
        self.batches.detach()
        for cancel in list(self._transfers):
            cancel()
        if self._executor is not None:
            self._executor.close()

    # Batches

    def submit(self, commands: list[Command], batch_id: str = "") -> tuple[Batch, bool]:
        """Queues a batch; returns it and whether it is new (False for a resubmitted batch_id)."""
        return self.batches.submit(commands, batch_id)

    def batch(self, batch_id: str) -> Batch:
        return self.batches.get(batch_id)

    async def execute(self, batch: Batch, index: int, command: Command) -> tuple[int, str]:
        """Runs one command; returns (return code, failure message or "")."""
        check_sequence([command], self.state)
        if isinstance(command, Deploy):
            await self._deploy()
        elif isinstance(command, Start):
            await self._start()
        elif isinstance(command, Run) and is_counted_sleep(self.agreement.demand.runtime, command):
            return await counted_sleep(command, self._counters)
        elif isinstance(command, Run):
            return await self._run(batch, index, command)
        elif isinstance(command, Terminate):
            await self.terminate("Requested", "terminated by the requestor's script")
        return 0, ""

    async def take_up(self, batch: Batch, index: int, command: Command, resume: Resume | None) -> tuple[int, str]:
        """Command `index` of a recovered batch, which was running when the previous daemon died."""
        if not isinstance(command, Run):
            return -1, "interrupted by provider restart (a command of its kind cannot be taken up again)"
        if resume is None or self._executor is None or not self.container_id:
            return -1, "interrupted by provider restart (it ran through docker exec, which cannot be taken up again)"
        command_id, offset = resume
        timeout = command.timeout_seconds or None
        started = batch.results[index].started
        if timeout is not None and started is not None:  # the time it ran before the restart counts
            timeout = max(timeout - (utcnow() - started).total_seconds(), MIN_RESUMED_TIMEOUT)
        try:
            outcome = await self._follow(batch, index, self._executor.resume(
                self.container_id, command_id, offset, timeout))
        except errors.ExeUnitError as exc:
            return -1, f"interrupted by provider restart ({exc})"
        log.info("event=command_taken_up %s batch=%s index=%d from_offset=%d", self.log_ids, batch.batch_id,
                 index, offset)
        return _result(outcome, command)

    async def _deploy(self) -> None:
        fetching: list[Callable[[], None]] = []

        def on_fetch(cancel: Callable[[], None]) -> None:  # ending the activity cuts the fetch
            fetching.append(cancel)
            self._track(cancel)

        images, storage = self._host.images, self._host.storage
        try:
            self.image = await images.resolve(self.agreement, on_fetch)
        finally:
            self._transfers.difference_update(fetching)
        self._image_loaded_here = images.loaded_here(self.image.id)
        if self.agreement.state is AgreementState.TERMINATED:  # ended while loading: let the image go
            await images.release(self.agreement)
        reserved = self.agreement.reserved
        self.volumes = await asyncio.to_thread(storage.create, self.activity_id, reserved.storage_bytes,
                                               self.image.volumes)
        if self.state is ActivityState.TERMINATED:  # terminated meanwhile: leave nothing behind
            await asyncio.to_thread(storage.destroy, self.activity_id)
            raise errors.FailedPrecondition("the activity was terminated while deploying")
        spec = ContainerSpec(
            name=f"exeunit-{self.activity_id}",
            image_id=self.image.id,
            owner=ContainerOwner(self.activity_id, self.agreement.agreement_id, self.agreement.provider_id,
                                 self._host.home_id, self.agreement.expiration),
            memory_bytes=reserved.memory_bytes,
            cpu_threads=reserved.cpu_threads,
            pids_limit=self._host.limits.pids_limit,
            shm_bytes=self._host.limits.shm_bytes,
            binds={volume: str(path) for volume, path in self.volumes.dirs.items()},
            root_layer=self.volumes.root_layer,
            guest=await self._open_executor(),
        )
        self.container_id = await self._runtime.create_container(spec)
        if self.state is ActivityState.TERMINATED:  # terminated while deploying: leave nothing behind
            await self._runtime.remove_container(self.container_id)
            raise errors.FailedPrecondition("the activity was terminated while deploying")
        await self._set_state(ActivityState.DEPLOYED)  # persists the container id with the state

    async def _open_executor(self) -> GuestSetup:
        self._executor, guest = await self._host.executors.open(self.activity_id)
        return guest

    def _executor_now(self) -> Executor:
        if self._executor is None:
            raise errors.FailedPrecondition("the activity has no container to run commands in; deploy it first")
        return self._executor

    async def _start(self) -> None:
        assert self.container_id
        await self._runtime.start_container(self.container_id)
        if self._host.networks.membership(self.activity_id) is not None:
            async with self._runtime.network_namespace(self.container_id) as netns:
                await self._host.networks.attach(self.activity_id, netns)
        self._executor_now().container_started()  # the first command waits for an agent, not `start`
        self._started_at = utcnow()
        await self._set_state(ActivityState.READY)

    async def _run(self, batch: Batch, index: int, run: Run) -> tuple[int, str]:
        assert self.container_id
        executor = self._executor_now()
        name = executor.name
        command = executor.run(self.container_id, run.argv, run.env, run.workdir or None, run.timeout_seconds or None)
        if batch.journal is not None:  # what a restarted daemon asks the agent to resume
            journal = batch.journal
            command.before_start = lambda command_id: journal.note(index, command_id)
        outcome = await self._follow(batch, index, command)
        if executor.name != name:
            log.info("event=executor_changed %s executor=%s", self.log_ids, executor.name)
        return _result(outcome, run)

    async def _follow(self, batch: Batch, index: int, command: CommandRun) -> CommandOutcome:
        requestor_id = self.agreement.requestor_id
        async for stream, data in command:
            await self._host.pacer.admit(requestor_id, len(data))
            await batch.output(index, EventKind.STDOUT if stream == STDOUT else EventKind.STDERR, data)
            telemetry.OUTPUT_BYTES.inc(len(data))
        return command.outcome or CommandOutcome(return_code=None, timed_out=False)

    @contextmanager
    def transfer(self, cancel: Callable[[], None]) -> Iterator[None]:
        """Registers a transfer in flight; terminating the activity calls its `cancel` first, so the
        engine never waits on a transfer to remove the container."""
        self._track(cancel)
        try:
            yield
        finally:
            self._transfers.discard(cancel)

    def _track(self, cancel: Callable[[], None]) -> None:
        """Keeps `cancel` for when the activity ends; calls it at once if it is ending already."""
        self._transfers.add(cancel)
        if self._terminating is not None:
            cancel()

    # Ending

    async def terminate(self, reason: str, message: str) -> None:
        """Stops and removes the container. Idempotent; the first reason is kept."""
        if self._terminating is None:
            self.ending = reason
            self._terminating = asyncio.create_task(self._terminate(reason, message))
        await asyncio.shield(self._terminating)

    async def _terminate(self, reason: str, message: str) -> None:
        self._ended_at = utcnow()
        for cancel in list(self._transfers):  # first: the engine locks the container while a transfer runs
            cancel()
        if self._executor is not None:
            self._executor.close()
        await self._refresh_usage(fresh_within=0)
        await self._set_state(ActivityState.TERMINATED, reason, message)
        self._on_terminated()
        await self.batches.stop_holding()
        await self._host.networks.leave(self.activity_id)  # its address is free, its link cut, at once
        if self.container_id:
            await self._runtime.remove_container(self.container_id, self._host.limits.stop_timeout_seconds)
        if self.volumes is not None:
            await asyncio.to_thread(self._host.storage.destroy, self.activity_id)
        await self.batches.forget()

    async def close(self) -> None:
        """Terminate (if needed) and let the batch worker finish what was queued."""
        await self.terminate("Destroyed", "the activity was destroyed")
        await self.batches.drain()  # queued batches fail fast once terminated

    # Usage

    async def _refresh_usage(self, fresh_within: float = USAGE_FRESH_SECONDS) -> None:
        """Reads the container's counters, at most once per `fresh_within` seconds and once at a
        time however many callers ask, so that a flood of usage calls costs the engine nothing more."""
        if not (self.container_id and self.state in (ActivityState.READY, ActivityState.DEPLOYED)):
            return
        loop = asyncio.get_running_loop()
        if loop.time() - self._usage_read_at < fresh_within:
            return
        if self._usage_reading is None or self._usage_reading.done():
            self._usage_reading = asyncio.ensure_future(self._runtime.usage(self.container_id))
        try:
            usage = await asyncio.shield(self._usage_reading)
        except errors.ExeUnitError:
            return
        self._usage_read_at = loop.time()
        # CPU time only grows: a container that stopped itself (its processes killed from inside)
        # reads as 0 from the engine, and that must not erase what it used.
        self._last_usage = (max(usage.cpu_seconds, self._last_usage[0]), usage.memory_bytes)

    def counted(self, now: datetime) -> tuple[float, float, dict[str, float]]:
        """(cpu seconds, duration seconds, counters) as last read: what its agreement is billed."""
        started = self._started_at
        duration = ((self._ended_at or now) - started).total_seconds() if started else 0.0
        return self._last_usage[0], duration, dict(self._counters)

    async def usage(self) -> Usage:
        """Its usage; its cost is its part of its agreement's: the start fee is on the first activity."""
        await self._refresh_usage()
        now = utcnow()
        cpu, duration, counters = self.counted(now)
        memory = self._last_usage[1]
        first = not self.agreement.activity_ids or self.agreement.activity_ids[0] == self.activity_id
        cost = self.agreement.pricing.cost(cpu, duration, counters, start_fee=first)
        storage = 0
        if self.volumes is not None and self.state is not ActivityState.TERMINATED:
            try:
                storage = await asyncio.to_thread(self.volumes.used_bytes)
            except OSError:
                pass  # unmounted under us: nothing to count
        return Usage(cpu_seconds=cpu, duration_seconds=duration, cost=cost, memory_bytes=memory, measured=now,
                     storage_bytes=storage, counters=counters)


def _result(outcome: CommandOutcome, run: Run) -> tuple[int, str]:
    """(return code, failure message or "") of a finished run command."""
    if outcome.timed_out:
        return -1, f"timed out after {run.timeout_seconds:g}s and was killed"
    if outcome.return_code is None:
        return -1, "the command's exit code could not be read (the container may have stopped)"
    if outcome.return_code != 0:
        return outcome.return_code, f"exit code {outcome.return_code}" + _exit_hint(outcome.return_code)
    return 0, ""


def _exit_hint(return_code: int) -> str:
    if return_code == 126:
        return " (the entry point is not executable)"
    if return_code == 127:
        return " (the entry point was not found in the container)"
    if return_code == 137:
        return " (killed: out of memory, or the container was stopped)"
    return ""
