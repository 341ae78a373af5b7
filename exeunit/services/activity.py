"""One activity: a container standing in for a Golem VM, driven through New -> Deployed -> Ready ->
Terminated by batches of commands that run one after another."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from datetime import datetime
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager

from exeunit import errors
from exeunit.app import metrics
from exeunit.domain.batch import Batch, BatchEvent, CommandState, EventKind, event_size
from exeunit.domain.commands import TRANSITIONS, Command, Deploy, Run, Start, Terminate, check_sequence, name_of, validate
from exeunit.runtime.agent.executor import AgentChannel, AgentExecutor, guest_binds, guest_entrypoint
from exeunit.runtime.protocols import (
    LABEL_ACTIVITY,
    LABEL_AGREEMENT,
    LABEL_EXPIRES,
    LABEL_HOME,
    LABEL_PROVIDER,
    STDOUT,
    CommandOutcome,
    CommandRun,
    ContainerSpec,
    ContainerUsage,
    Executor,
    ImageInfo,
    Runtime,
)
from exeunit.domain.event_log import EventLog
from exeunit.services.images import ImageResolver
from exeunit.persistence.journal import BatchJournal
from exeunit.domain.market import CUSTOM_COUNTER, TEST_COUNTERS_RUNTIME, Agreement, AgreementState, utcnow
from exeunit.services.networks import Networks
from exeunit.runtime.memory import release_memory
from exeunit.persistence.store import ActivityRecord, StateStore
from exeunit.domain.states import ActivityState
from exeunit.runtime.storage import LoopStorage, VolumeDirs

log = logging.getLogger(__name__)

USAGE_FRESH_SECONDS = 1.0  # usage counters read from the engine at most this often
BATCH_ID_PATTERN = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
MAX_COUNTED_SLEEP_MS = 3_600_000


@dataclass(frozen=True)
class ActivityLimits:
    """Limits the operator sets on what an activity, and the requestor behind it, may hold."""

    pids_limit: int = 512
    tmp_bytes: int = 64 << 20
    result_output_cap: int = 1 << 20
    replay_window_bytes: int = 32 << 20
    replay_grace_seconds: float = 10.0
    stop_timeout_seconds: int = 5
    agent_start_seconds: float = 3.0  # how long after the start the first command waits for the agent
    transfers_per_activity: int = 4
    transfers_per_requestor: int = 16
    transfer_idle_seconds: float = 60.0
    batches_kept: int = 256  # finished batches per activity kept for GetBatch and replay; older ones go
    tunnels_per_activity: int = 64  # TCP connections into one activity through Tunnel at once
    networks_per_requestor: int = 8  # private networks one requestor may have on the provider


@dataclass(frozen=True)
class ActivityStatus:
    activity_id: str
    agreement_id: str
    state: ActivityState
    reason: str
    message: str
    changed: datetime
    executor: str = ""  # how commands run once Ready: "agent" or "docker-exec"


@dataclass(frozen=True)
class ActivitySummary:
    """One line of `exeunit ps`: who runs what, since when, using how much."""

    status: ActivityStatus
    requestor_id: str
    image: str
    created: datetime
    started: datetime | None
    usage: Usage
    network_id: str
    ip: str


@dataclass(frozen=True)
class Usage:
    cpu_seconds: float
    duration_seconds: float
    cost: float
    memory_bytes: int
    measured: datetime
    storage_bytes: int = 0
    counters: dict[str, float] = field(default_factory=dict)  # the runtime's own (test-counters)


class Activity:
    def __init__(
        self,
        activity_id: str,
        agreement: Agreement,
        runtime: Runtime,
        images: ImageResolver,
        limits: ActivityLimits,
        storage: LoopStorage,
        networks: Networks,
        home_id: str,
        on_terminated: Callable[[], None] = lambda: None,
        on_change: Callable[[Activity], None] = lambda activity: None,
        state: StateStore | None = None,
    ) -> None:
        self._state = state  # where batches are journaled; None: they live in memory only
        self.activity_id = activity_id
        self._home_id = home_id
        self._on_terminated = on_terminated
        self._on_change = on_change  # persists the activity's record (exeunit.persistence.store)
        self.agreement = agreement
        self._runtime = runtime
        self._executor: Executor = runtime.executor()
        self._channel: AgentChannel | None = None
        self._images = images
        self._networks = networks
        self._limits = limits
        self.state = ActivityState.NEW
        self.reason = ""
        self.message = ""
        self.changed = utcnow()
        self.created = self.changed
        self.container_id: str | None = None
        self.image: ImageInfo | None = None
        self.volumes: VolumeDirs | None = None  # the host side of the image's VOLUMEs, once deployed
        self._image_loaded_here = False
        self._storage = storage
        self._projected = ActivityState.NEW  # state once every queued batch has run
        self._batches: dict[str, Batch] = {}  # in the order they were queued
        self._submitted = 0
        self._queue: asyncio.Queue[tuple[Batch, int, tuple[int, int] | None]] = asyncio.Queue()
        self._changes = asyncio.Condition()
        self._started_at: datetime | None = None
        self._ended_at: datetime | None = None
        self._last_usage: tuple[float, int] = (0.0, 0)
        self._usage_read_at = float("-inf")
        self._usage_reading: asyncio.Future[ContainerUsage] | None = None
        self._terminating: asyncio.Task[None] | None = None
        self._ending = ""  # the reason it is being terminated, once it is
        self._transfers: set[Callable[[], None]] = set()  # cancel callbacks of transfers in flight
        self._counters: dict[str, float] = {}  # the test-counters runtime's (lost with a daemon restart)
        self._worker = asyncio.create_task(self._run_batches(), name=f"activity-{activity_id}")

    @property
    def ended_at(self) -> datetime | None:
        return self._ended_at

    @property
    def log_ids(self) -> str:
        return f"agreement={self.agreement.agreement_id} activity={self.activity_id}"

    def status(self) -> ActivityStatus:
        executor = self._executor.name if self.state is ActivityState.READY else ""
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

    # Surviving a daemon restart

    def network_address(self) -> tuple[str, str]:
        """(network id, ip) of the network the activity joined, or ("", "")."""
        membership = self._networks.membership(self.activity_id)
        return (membership[0].network_id, str(membership[1].ip)) if membership else ("", "")

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
        A running activity gets its agent channel back (the agent connects again by itself)."""
        self.state = self._projected = ActivityState(record.state)
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
            await self._guest_agent()
            if self.state is ActivityState.READY and isinstance(self._executor, AgentExecutor):
                self._executor.container_started()

    async def detach(self) -> None:
        """Lets go of the activity without ending it (the daemon stops, the container runs on for
        the next daemon on this home): batches stop being run, the agent's channel closes."""
        self._worker.cancel()
        for cancel in list(self._transfers):
            cancel()
        if self._channel is not None:
            self._channel.close()
        for batch in self._batches.values():
            if batch.journal is not None:
                batch.journal.close()

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

    # Batches

    def submit(self, commands: list[Command], batch_id: str = "") -> tuple[Batch, bool]:
        """Queues a batch; returns it and whether it is new (False for a resubmitted batch_id)."""
        if batch_id:
            if not BATCH_ID_PATTERN.match(batch_id):
                raise errors.InvalidArgument(f"batch_id {batch_id!r} must be 1-64 of [A-Za-z0-9._-]")
            existing = self._batches.get(batch_id)
            if existing is not None:
                if existing.commands != commands:
                    raise errors.AlreadyExists(
                        f"batch {batch_id!r} already exists with other commands; choose a new batch_id"
                    )
                return existing, False
        validate(commands)
        check_sequence(commands, self._projected if self.state is not ActivityState.TERMINATED else self.state)
        self._submitted += 1
        batch_id = batch_id or f"b{self._submitted}-{self.activity_id[:8]}"
        while batch_id in self._batches:
            batch_id += "x"
        batch = self._new_batch(batch_id, commands)
        if self._state is not None:
            self._state.put_batch(self.activity_id, batch_id, commands)
        for command in commands:
            self._projected = TRANSITIONS[type(command)][1]
        self._queue.put_nowait((batch, 0, None))
        log.debug("event=batch_queued %s batch=%s", self.log_ids, batch_id)
        return batch, True

    def _new_batch(self, batch_id: str, commands: list[Command]) -> Batch:
        journal = None
        if self._state is not None:
            journal = BatchJournal(self._state.journal_dir(self.activity_id, batch_id))
        events: EventLog[BatchEvent] = EventLog(
            self._limits.replay_window_bytes, event_size, self._limits.replay_grace_seconds, journal
        )
        batch = Batch(batch_id, commands, self._limits.result_output_cap, events)
        batch.journal = journal
        self._batches[batch_id] = batch
        return batch

    def recover_batches(self) -> None:
        """Takes up the batches of a previous daemon from their journals: finished ones are
        served as they were, queued ones run, and one that was running goes on where it was (its
        agent command resumed from the output offset journaled) or, where that cannot be, ends
        as interrupted. Sequence numbers continue."""
        assert self._state is not None
        for batch_id, commands in self._state.batches(self.activity_id):
            replayed = BatchJournal.replay(self._state.journal_dir(self.activity_id, batch_id))
            batch = self._new_batch(batch_id, commands)
            assert batch.journal is not None
            batch.journal.continue_offsets(replayed.offsets)
            events = replayed.events
            first = events[0].sequence if events else 0
            finished = bool(events) and events[-1].kind is EventKind.BATCH_FINISHED
            batch.events.restore(events, first, closed=finished)
            batch.replay(events)
            if finished:
                continue
            running = [r.index for r in batch.results if r.state is CommandState.RUNNING]
            if not running:
                self._queue.put_nowait((batch, 0, None))
                continue
            index = running[0]
            resume = None
            if index in replayed.notes and isinstance(self._executor, AgentExecutor):
                resume = (replayed.notes[index], replayed.offsets.get(index, 0))
            self._queue.put_nowait((batch, index, resume))
            log.info("event=batch_recovered %s batch=%s command=%d resumed=%s", self.log_ids, batch_id, index,
                     "yes" if resume else "no")

    def batch(self, batch_id: str) -> Batch:
        try:
            return self._batches[batch_id]
        except KeyError:
            raise errors.NotFound(f"batch {batch_id!r} not found in activity {self.activity_id}") from None

    async def _run_batches(self) -> None:
        while True:
            batch, first, resume = await self._queue.get()
            try:
                await self._run_batch(batch, first, resume)
            except Exception:  # never let one batch kill the worker and strand the rest
                log.exception("event=batch_crashed %s batch=%s", self.log_ids, batch.batch_id)
            del batch  # waiting for the next one must not keep this one (and its output) alive
            self._queue.task_done()
            if self._queue.empty():
                self._projected = self.state

    async def _run_batch(self, batch: Batch, first: int = 0, resume: tuple[int, int] | None = None) -> None:
        """Runs the batch's commands from `first` on; a recovered batch whose command `first` was
        running when the daemon died takes it up (`resume`: agent command id, output offset) or
        ends it as interrupted."""
        recovered = batch.results[first].state is CommandState.RUNNING  # when a previous daemon died
        for index in range(first, len(batch.commands)):
            command = batch.commands[index]
            taken_up = recovered and index == first
            if not taken_up:
                await batch.command_started(index)
            try:
                if taken_up:
                    return_code, message = await self._take_up(batch, index, command, resume)
                else:
                    return_code, message = await self._execute(batch, index, command)
            except errors.ExeUnitError as exc:
                return_code, message = -1, str(exc)
            except Exception as exc:
                log.exception("event=command_crashed %s batch=%s index=%d", self.log_ids, batch.batch_id, index)
                return_code, message = -1, f"internal error: {exc.__class__.__name__}: {exc}"
            success = return_code == 0 and not message
            if not success and self._ending and isinstance(command, Run):  # whatever the executor saw, this is why
                message = f"cut short: the activity was terminated ({self._ending})"
            await batch.command_finished(index, return_code, success, message)
            metrics.COMMANDS.labels(name_of(command), "succeeded" if success else "failed").inc()
            if not success:
                log.info("event=command_failed %s batch=%s index=%d message=%r",
                         self.log_ids, batch.batch_id, index, message)
                break
        await batch.finish()
        if batch.journal is not None:
            batch.journal.close()  # complete: nothing more is appended (segments may still be dropped)
        log.info("event=batch_finished %s batch=%s state=%s commands=%s", self.log_ids, batch.batch_id,
                 batch.state.value, ",".join(name_of(c) for c in batch.commands))
        self._forget_old_batches()

    def _forget_old_batches(self) -> None:
        """Keeps the last `batches_kept` finished batches: a service running commands for months
        must not keep every one of them, in memory or in its journal."""
        finished = [b for b in self._batches.values() if b.events.closed]
        for old in finished[: max(len(finished) - self._limits.batches_kept, 0)]:
            del self._batches[old.batch_id]
            if self._state is not None:
                journal = self._state.forget_batch(self.activity_id, old.batch_id)
                asyncio.get_running_loop().run_in_executor(None, shutil.rmtree, journal, True)

    async def _execute(self, batch: Batch, index: int, command: Command) -> tuple[int, str]:
        """Runs one command; returns (return code, failure message or "")."""
        check_sequence([command], self.state)
        if isinstance(command, Deploy):
            await self._deploy()
        elif isinstance(command, Start):
            await self._start()
        elif isinstance(command, Run) and self.agreement.demand.runtime == TEST_COUNTERS_RUNTIME \
                and command.entry_point == "sleep":
            return await self._counted_sleep(command)
        elif isinstance(command, Run):
            return await self._run(batch, index, command)
        elif isinstance(command, Terminate):
            await self.terminate("Requested", "terminated by the requestor's script")
        return 0, ""

    async def _deploy(self) -> None:
        fetching: list[Callable[[], None]] = []

        def on_fetch(cancel: Callable[[], None]) -> None:  # ending the activity cuts the fetch
            fetching.append(cancel)
            self._track(cancel)

        try:
            self.image = await self._images.resolve(self.agreement, on_fetch)
        finally:
            self._transfers.difference_update(fetching)
        self._image_loaded_here = self._images.loaded_here(self.image.id)
        if self.agreement.state is AgreementState.TERMINATED:  # ended while loading: let the image go
            await self._images.release(self.agreement)
        reserved = self.agreement.reserved
        self.volumes = await asyncio.to_thread(
            self._storage.create, self.activity_id, reserved.storage_bytes, self.image.volumes
        )
        if self.state is ActivityState.TERMINATED:  # terminated meanwhile: leave nothing behind
            await asyncio.to_thread(self._storage.destroy, self.activity_id)
            raise errors.FailedPrecondition("the activity was terminated while deploying")
        spec = ContainerSpec(
            name=f"exeunit-{self.activity_id}",
            image_id=self.image.id,
            labels={
                LABEL_ACTIVITY: self.activity_id,
                LABEL_AGREEMENT: self.agreement.agreement_id,
                LABEL_PROVIDER: self.agreement.provider_id,
                LABEL_HOME: self._home_id,
                LABEL_EXPIRES: str(int(self.agreement.expiration.timestamp())),
            },
            memory_bytes=reserved.memory_bytes,
            cpu_threads=reserved.cpu_threads,
            pids_limit=self._limits.pids_limit,
            tmp_bytes=self._limits.tmp_bytes,
            binds={volume: str(path) for volume, path in self.volumes.dirs.items()},
            **await self._guest_agent(),
        )
        self.container_id = await self._runtime.create_container(spec)
        if self.state is ActivityState.TERMINATED:  # terminated while deploying: leave nothing behind
            await self._runtime.remove_container(self.container_id)
            raise errors.FailedPrecondition("the activity was terminated while deploying")
        await self._set_state(ActivityState.DEPLOYED)  # persists the container id with the state

    async def _guest_agent(self) -> dict[str, Any]:
        """The container's entrypoint and mounts for the resident agent; none when its socket
        cannot be made (then commands go through the engine's exec)."""
        channel_dir = await asyncio.to_thread(self._storage.channel_dir, self.activity_id)
        channel = AgentChannel(channel_dir)
        try:
            await channel.open()
        except OSError as exc:
            log.warning("event=agent_channel_failed %s error=%s", self.log_ids, exc)
            return {}
        self._channel = channel
        self._executor = AgentExecutor(channel, self._executor, self._limits.agent_start_seconds)
        return {"entrypoint": guest_entrypoint(), "read_only_binds": guest_binds(channel_dir)}

    async def _start(self) -> None:
        assert self.container_id
        await self._runtime.start_container(self.container_id)
        if self._networks.membership(self.activity_id) is not None:
            netns = await self._runtime.open_network_namespace(self.container_id)
            try:
                await self._networks.attach(self.activity_id, netns)
            finally:
                os.close(netns)
        if isinstance(self._executor, AgentExecutor):
            self._executor.container_started()  # the first command waits for the agent, not `start`
        self._started_at = utcnow()
        await self._set_state(ActivityState.READY)

    async def _run(self, batch: Batch, index: int, run: Run) -> tuple[int, str]:
        assert self.container_id
        executor = self._executor.name
        command = self._executor.run(
            self.container_id, run.argv, run.env, run.workdir or None, run.timeout_seconds or None
        )
        command_id = getattr(command, "command_id", None)
        if batch.journal is not None and isinstance(command_id, int):
            batch.journal.note(index, command_id)  # what a restarted daemon asks the agent to resume
        outcome = await self._follow(batch, index, command)
        if self._executor.name != executor:
            log.info("event=executor_changed %s executor=%s", self.log_ids, self._executor.name)
        return _result(outcome, run)

    async def _counted_sleep(self, run: Run) -> tuple[int, str]:
        """The test-counters runtime's `sleep MS`: waited out here, counted in CUSTOM_COUNTER."""
        try:
            [milliseconds] = [int(arg) for arg in run.args]
        except ValueError:
            return -1, "sleep takes one whole number of milliseconds (the test-counters runtime's sleep)"
        if not 0 <= milliseconds <= MAX_COUNTED_SLEEP_MS:
            return -1, f"sleep takes 0 to {MAX_COUNTED_SLEEP_MS} milliseconds"
        seconds = milliseconds / 1000
        if run.timeout_seconds and seconds > run.timeout_seconds:
            await asyncio.sleep(run.timeout_seconds)
            self._counters[CUSTOM_COUNTER] = self._counters.get(CUSTOM_COUNTER, 0.0) + run.timeout_seconds
            return -1, f"timed out after {run.timeout_seconds:g}s and was killed"
        await asyncio.sleep(seconds)
        self._counters[CUSTOM_COUNTER] = self._counters.get(CUSTOM_COUNTER, 0.0) + seconds
        return 0, ""

    async def _take_up(self, batch: Batch, index: int, command: Command, resume: tuple[int, int] | None) -> tuple[int, str]:
        """Command `index` of a recovered batch, which was running when the previous daemon died."""
        if not (resume and isinstance(command, Run) and isinstance(self._executor, AgentExecutor) and self.container_id):
            how = "it ran through docker exec, which" if isinstance(command, Run) else "a command of its kind"
            return -1, f"interrupted by provider restart ({how} cannot be taken up again)"
        command_id, offset = resume
        try:
            outcome = await self._follow(batch, index, self._executor.resume(
                self.container_id, command_id, offset, command.timeout_seconds or None))
        except errors.ExeUnitError as exc:
            return -1, f"interrupted by provider restart ({exc})"
        log.info("event=command_taken_up %s batch=%s index=%d from_offset=%d", self.log_ids, batch.batch_id,
                 index, offset)
        return _result(outcome, command)

    async def _follow(self, batch: Batch, index: int, command: CommandRun) -> CommandOutcome:
        async for stream, data in command:
            await batch.output(index, EventKind.STDOUT if stream == STDOUT else EventKind.STDERR, data)
            metrics.OUTPUT_BYTES.inc(len(data))
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
            self._ending = reason
            self._terminating = asyncio.create_task(self._terminate(reason, message))
        await asyncio.shield(self._terminating)

    async def _terminate(self, reason: str, message: str) -> None:
        self._ended_at = utcnow()
        for cancel in list(self._transfers):  # first: the engine locks the container while a transfer runs
            cancel()
        if self._channel is not None:
            self._channel.close()
        await self._refresh_usage(fresh_within=0)
        await self._set_state(ActivityState.TERMINATED, reason, message)
        self._projected = ActivityState.TERMINATED
        self._on_terminated()
        for batch in self._batches.values():
            await batch.events.stop_holding()
        await self._networks.leave(self.activity_id)  # its address is free, its link cut, at once
        if self.container_id:
            await self._runtime.remove_container(self.container_id, self._limits.stop_timeout_seconds)
        if self.volumes is not None:
            await asyncio.to_thread(self._storage.destroy, self.activity_id)
        if self._state is not None:  # its batches stay readable in memory, not across a restart
            for batch in self._batches.values():
                if batch.journal is not None:
                    batch.journal.close()
            await asyncio.to_thread(shutil.rmtree, self._state.forget_batches(self.activity_id), True)
        # Readers still attached get the end of its batches; then their output goes, at once, not
        # when the activity's record is forgotten.
        asyncio.get_running_loop().call_later(self._limits.replay_grace_seconds, self._release_batches)

    def _release_batches(self) -> None:
        self._batches.clear()
        release_memory()

    async def close(self) -> None:
        """Terminate (if needed) and let the batch worker finish what was queued."""
        await self.terminate("Destroyed", "the activity was destroyed")
        await self._queue.join()  # queued batches fail fast once terminated
        self._worker.cancel()

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
        self._last_usage = (usage.cpu_seconds, usage.memory_bytes)

    async def usage(self) -> Usage:
        await self._refresh_usage()
        now = utcnow()
        duration = 0.0
        if self._started_at:
            duration = ((self._ended_at or now) - self._started_at).total_seconds()
        cpu, memory = self._last_usage
        counters = dict(self._counters)
        cost = self.agreement.pricing.cost(cpu, duration, counters)
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
