"""One activity's batches: queued as they come, run one after another, kept for a while after.

A batch is accepted when its commands fit the state the activity will be in once every batch
before it has run (its projected state), and while fewer than `batches_queued` wait or run; it
then runs in order, stopping at the first failure. Its events are journaled on disk, with a small
tail in memory (`output_memory_bytes` for the activity, within its requestor's pool). Finished
batches hold no output in memory and stay readable (GetBatch, replay) until `batches_kept` newer
ones have finished or their journals pass `journal_bytes_per_activity`. What the commands do is
the activity's business (`CommandRunner`); this module keeps the order, the numbering, the
journals and the bookkeeping after a restart.
"""

from __future__ import annotations

import asyncio
import logging
import re
import shutil
from pathlib import Path
from typing import Protocol

from exeunit import errors
from exeunit.domain.batch import Batch, CommandState, EventKind
from exeunit.domain.commands import TRANSITIONS, Command, Run, check_sequence, name_of, validate
from exeunit.domain.event_log import MemoryPool
from exeunit.domain.records import Journals, Store
from exeunit.domain.settings import ActivityLimits
from exeunit.domain.states import ActivityState
from exeunit.runtime.memory import release_memory
from exeunit.services import telemetry

log = logging.getLogger(__name__)

BATCH_ID_PATTERN = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
# An ended activity's output stays readable this many replay graces at most while it is read
# (a minute with the default 10 s): a reader taking 9 MiB/s reads the largest journal
# (--journal-mib-per-activity, 512 MiB) to its end. Ended activities' journals count against no
# capacity, so this is kept short: each reader holds one such journal at most this long.
RELEASE_GRACES_WHILE_READ = 6
Resume = tuple[int, int]  # (agent command id, output offset) of a command a restarted daemon takes up


class CommandRunner(Protocol):
    """What runs a batch's commands: the activity."""

    @property
    def state(self) -> ActivityState: ...
    @property
    def ending(self) -> str: ...  # why it is being terminated, once it is
    @property
    def log_ids(self) -> str: ...

    async def execute(self, batch: Batch, index: int, command: Command) -> tuple[int, str]: ...
    async def take_up(self, batch: Batch, index: int, command: Command, resume: Resume | None) -> tuple[int, str]: ...


class BatchQueue:
    def __init__(self, activity_id: str, runner: CommandRunner, limits: ActivityLimits, journals: Journals,
                 store: Store | None, pool: MemoryPool) -> None:
        self._activity_id = activity_id
        self._runner = runner
        self._limits = limits
        self._journals = journals
        self._store = store  # where batches are recorded for a restarted daemon; None: they are not
        self._pool = pool  # the requestor's: what its batches hold in memory together
        self.projected = ActivityState.NEW  # the activity's state once every queued batch has run
        self._batches: dict[str, Batch] = {}  # in the order they were queued
        self._unfinished = 0  # queued or running
        self._forgotten = journals.forgotten_ids(activity_id)  # so that no batch id runs twice
        self._dropping: set[asyncio.Task[None]] = set()  # forgotten batches' journals being removed
        self._submitted = 0
        self._queue: asyncio.Queue[tuple[Batch, int, Resume | None]] = asyncio.Queue()
        self._worker = asyncio.create_task(self._run_batches(), name=f"batches-{activity_id}")

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
            if batch_id in self._forgotten:
                raise errors.AlreadyExists(
                    f"batch {batch_id!r} already ran on activity {self._activity_id} and was forgotten since "
                    "(--batches-kept); a batch id runs once: choose a new batch_id"
                )
        validate(commands)
        if len(self._forgotten) >= self._limits.batch_ids_remembered:
            raise errors.ResourceExhausted(
                f"activity {self._activity_id} has run {len(self._forgotten)} batches, the most one activity may "
                "(--batch-ids-remembered, which keeps any batch id from running twice); create a new activity"
            )
        if self._unfinished >= self._limits.batches_queued:
            raise errors.ResourceExhausted(
                f"activity {self._activity_id} has {self._unfinished} batches queued or running, the most it may "
                "(--batches-queued); wait for them to finish"
            )
        state = self._runner.state
        check_sequence(commands, self.projected if state is not ActivityState.TERMINATED else state)
        self._submitted += 1
        batch_id = batch_id or f"b{self._submitted}-{self._activity_id[:8]}"
        while batch_id in self._batches:
            batch_id += "x"
        batch = self._new_batch(batch_id, commands)
        if self._store is not None:
            self._store.put_batch(self._activity_id, batch_id, commands)
        for command in commands:
            self.projected = TRANSITIONS[type(command)][1]
        self._unfinished += 1
        self._queue.put_nowait((batch, 0, None))
        log.debug("event=batch_queued %s batch=%s", self._runner.log_ids, batch_id)
        return batch, True

    def _new_batch(self, batch_id: str, commands: list[Command]) -> Batch:
        limits = self._limits
        batch = Batch(batch_id, commands, limits.result_output_cap, limits.replay_window_bytes,
                      limits.replay_grace_seconds, self._journals.open(self._activity_id, batch_id),
                      limits.output_memory_bytes, self._pool)
        self._batches[batch_id] = batch
        return batch

    def get(self, batch_id: str) -> Batch:
        try:
            return self._batches[batch_id]
        except KeyError:
            raise errors.NotFound(f"batch {batch_id!r} not found in activity {self._activity_id}") from None

    async def recover(self, state: ActivityState) -> None:
        """Takes up the batches of a previous daemon from their journals: finished ones are
        served as they were, queued ones run, and one that was running goes on where it was (its
        agent command resumed from the output offset journaled) or, where that cannot be, ends
        as interrupted. Sequence numbers continue."""
        assert self._store is not None
        self.projected = state
        for batch_id, commands in self._store.batches(self._activity_id):
            replayed = self._journals.replay(self._activity_id, batch_id)
            batch = self._new_batch(batch_id, commands)
            assert batch.journal is not None
            batch.journal.continue_offsets(replayed.offsets)
            events = replayed.events
            first = events[0].sequence if events else 0
            finished = bool(events) and events[-1].kind is EventKind.BATCH_FINISHED
            batch.events.restore(events, first, closed=finished)
            batch.replay(events)
            del events, replayed.events  # served from the journal from now on
            if finished:
                await batch.spill_results()
                continue
            self._unfinished += 1
            running = [r.index for r in batch.results if r.state is CommandState.RUNNING]
            if not running:
                self._queue.put_nowait((batch, 0, None))
                continue
            index = running[0]
            resume = (replayed.notes[index], replayed.offsets.get(index, 0)) if index in replayed.notes else None
            self._queue.put_nowait((batch, index, resume))
            log.info("event=batch_recovered %s batch=%s command=%d resumed=%s", self._runner.log_ids, batch_id,
                     index, "yes" if resume else "no")

    async def _run_batches(self) -> None:
        while True:
            batch, first, resume = await self._queue.get()
            try:
                await self._run_batch(batch, first, resume)
            except Exception:  # never let one batch kill the worker and strand the rest
                log.exception("event=batch_crashed %s batch=%s", self._runner.log_ids, batch.batch_id)
            del batch  # waiting for the next one must not keep this one (and its output) alive
            self._queue.task_done()
            if self._queue.empty():
                self.projected = self._runner.state

    async def _run_batch(self, batch: Batch, first: int = 0, resume: Resume | None = None) -> None:
        """Runs the batch's commands from `first` on; a recovered batch whose command `first` was
        running when the daemon died takes it up (`resume`) or ends it as interrupted."""
        recovered = batch.results[first].state is CommandState.RUNNING  # when a previous daemon died
        for index in range(first, len(batch.commands)):
            command = batch.commands[index]
            taken_up = recovered and index == first
            if not taken_up:
                await batch.command_started(index)
            try:
                if taken_up:
                    return_code, message = await self._runner.take_up(batch, index, command, resume)
                else:
                    return_code, message = await self._runner.execute(batch, index, command)
            except errors.ExeUnitError as exc:
                return_code, message = -1, str(exc)
            except Exception as exc:
                log.exception("event=command_crashed %s batch=%s index=%d", self._runner.log_ids, batch.batch_id, index)
                return_code, message = -1, f"internal error: {exc.__class__.__name__}: {exc}"
            success = return_code == 0 and not message
            if not success and self._runner.ending and isinstance(command, Run):  # whatever the executor saw, this is why
                message = f"cut short: the activity was terminated ({self._runner.ending})"
            await batch.command_finished(index, return_code, success, message)
            telemetry.COMMANDS.labels(name_of(command), "succeeded" if success else "failed").inc()
            if not success:
                log.info("event=command_failed %s batch=%s index=%d message=%r",
                         self._runner.log_ids, batch.batch_id, index, message)
                break
        self._forget_old_batches(finishing=batch)  # before its end is told: a reader never sees more kept
        await batch.finish()
        self._unfinished -= 1
        if batch.journal is not None:
            batch.journal.close()  # complete: nothing more is appended (segments may still be dropped)
        await batch.spill_results()
        log.info("event=batch_finished %s batch=%s state=%s commands=%s", self._runner.log_ids, batch.batch_id,
                 batch.state.value, ",".join(name_of(c) for c in batch.commands))

    def _forget_old_batches(self, finishing: Batch) -> None:
        """Keeps the last `batches_kept` finished batches (`finishing` counted among them), and of
        those no more than fit in `journal_bytes_per_activity` on disk with the rest: a service
        running commands for months must not keep every one of them, in memory or on disk."""
        finished = [b for b in self._batches.values() if b.events.closed and b is not finishing]  # oldest first
        excess = max(len(finished) + 1 - self._limits.batches_kept, 0)
        for old in finished[:excess]:
            self._forget(old, f"an activity keeps its last {self._limits.batches_kept} finished batches (--batches-kept)")
        on_disk = sum(b.journal.disk_bytes() for b in self._batches.values() if b.journal is not None)
        for old in finished[excess:]:
            if on_disk <= self._limits.journal_bytes_per_activity:
                break
            on_disk -= old.journal.disk_bytes() if old.journal is not None else 0
            log.info("event=batch_forgotten %s batch=%s reason=journal_bytes_per_activity", self._runner.log_ids,
                     old.batch_id)
            self._forget(old, f"the activity's journals passed {self._limits.journal_bytes_per_activity >> 20} MiB "
                              "(--journal-mib-per-activity)")

    def _forget(self, batch: Batch, why: str) -> None:
        """Forgets a finished batch; readers still behind its memory tail are told `why`."""
        del self._batches[batch.batch_id]
        self._forgotten.add(batch.batch_id)
        if self._store is not None:
            self._store.forget_batch(self._activity_id, batch.batch_id)
        directory = self._journals.directory(self._activity_id, batch.batch_id)
        task = asyncio.get_running_loop().create_task(self._drop(batch, f"batch {batch.batch_id!r} was forgotten: {why}",
                                                                 directory))
        self._dropping.add(task)
        task.add_done_callback(self._dropping.discard)

    @staticmethod
    async def _drop(batch: Batch, reason: str, directory: Path) -> None:
        await batch.events.release(reason)  # before its journal goes: no reader is told of a loss
        await asyncio.to_thread(shutil.rmtree, directory, True)

    # The activity ends, or the daemon lets go of it

    async def stop_holding(self) -> None:
        """The activity is being terminated: nothing waits for readers any more, and nothing new
        will run (batches queued after this fail fast)."""
        self.projected = ActivityState.TERMINATED
        for batch in self._batches.values():
            await batch.events.stop_holding()

    async def forget(self) -> None:
        """The activity ended: its batches are not recorded for a restart any more; readers still
        attached get the end of its batches, and after the replay grace its batches and their
        journals go, at once, not when the activity's record is forgotten."""
        self._close_journals()
        if self._store is not None:
            self._store.forget_batches(self._activity_id)
        directory = self._journals.directory(self._activity_id)
        asyncio.get_running_loop().call_later(self._limits.replay_grace_seconds, self._release_when_read, directory,
                                              None, RELEASE_GRACES_WHILE_READ - 1)

    def _release_when_read(self, directory: Path, progress: list[int] | None, graces_left: int) -> None:
        """Releases the batches once the replay grace passed, or, while readers are attached and
        still read, once a grace passes in which they did not: a reader that keeps reading the end
        of an ended activity's output gets all of it, one that stands still is cut. The journals of
        an ended activity hold no capacity, so reading on keeps them RELEASE_GRACES_WHILE_READ graces
        at most: a trickle of reads cannot pin them on the provider's disk."""
        attached = [batch.events for batch in self._batches.values() if batch.events.has_readers]
        now = [events.delivered for events in attached]
        if attached and now != progress and graces_left > 0:
            asyncio.get_running_loop().call_later(self._limits.replay_grace_seconds, self._release_when_read,
                                                  directory, now, graces_left - 1)
            return
        task = asyncio.get_running_loop().create_task(self._release(directory))
        self._dropping.add(task)
        task.add_done_callback(self._dropping.discard)

    async def _release(self, directory: Path) -> None:
        grace = self._limits.replay_grace_seconds
        reason = (f"the activity ended, and its batches were released (kept {grace:g} s after the end, "
                  f"and while read, {grace * RELEASE_GRACES_WHILE_READ:g} s at most)")
        for batch in self._batches.values():
            await batch.events.release(reason)
        self._batches.clear()
        await asyncio.to_thread(shutil.rmtree, directory, True)
        release_memory()

    def _close_journals(self) -> None:
        for batch in self._batches.values():
            if batch.journal is not None:
                batch.journal.close()

    def detach(self) -> None:
        """Stops running batches and closes the journals, leaving them for the next daemon."""
        self._worker.cancel()
        self._close_journals()

    async def drain(self) -> None:
        """Lets what was queued finish (batches queued after the end fail fast), then stops."""
        await self._queue.join()
        self._worker.cancel()
