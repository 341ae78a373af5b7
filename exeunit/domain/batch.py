"""A batch: an ExeScript's commands, their results, and the numbered events they produce."""

from __future__ import annotations

import asyncio
import dataclasses
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum

from typing import Protocol

from exeunit.domain.clock import utcnow
from exeunit.domain.commands import Command
from exeunit.domain.event_log import EventLog, Journal, MemoryPool


class BatchState(Enum):
    QUEUED = "Queued"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


class CommandState(Enum):
    PENDING = "Pending"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    SKIPPED = "Skipped"


class EventKind(Enum):
    STARTED = "started"
    STDOUT = "stdout"
    STDERR = "stderr"
    FINISHED = "finished"
    BATCH_FINISHED = "batch_finished"


@dataclass(frozen=True)
class BatchEvent:
    sequence: int
    time: datetime
    command_index: int
    kind: EventKind
    data: bytes = b""
    return_code: int = 0
    success: bool = False
    message: str = ""
    batch_state: BatchState | None = None


EVENT_OVERHEAD_BYTES = 64
# Output a batch keeps for its results, in all: what one GetBatch response carries (under gRPC's
# default 4 MiB message limit). The event stream has all of it.
RESULT_OUTPUT_BYTES = 3 << 20


def event_size(event: BatchEvent) -> int:
    return EVENT_OVERHEAD_BYTES + len(event.data)


@dataclass
class OutputRoom:
    """What is left of a batch's RESULT_OUTPUT_BYTES, shared by its commands' results."""

    left: int = 0


@dataclass
class CapturedOutput:
    """Output kept for a command's result: at most `cap` bytes, within the room its batch has
    left, with a flag when cut."""

    cap: int
    room: OutputRoom = field(default_factory=OutputRoom)
    data: bytearray = field(default_factory=bytearray)
    truncated: bool = False

    def add(self, chunk: bytes) -> None:
        room = min(self.cap - len(self.data), self.room.left)
        if len(chunk) > room:
            self.truncated = True
            chunk = chunk[: max(room, 0)]
        self.data += chunk
        self.room.left -= len(chunk)


@dataclass
class CommandResult:
    index: int
    stdout: CapturedOutput
    stderr: CapturedOutput
    state: CommandState = CommandState.PENDING
    return_code: int = 0
    message: str = ""
    started: datetime | None = None
    finished: datetime | None = None


@dataclass
class Replayed:
    """What a batch's journal holds: its events (from the oldest kept segment), which agent command
    ran which of its commands, and the output offset each command had reached."""

    events: list[BatchEvent]
    notes: dict[int, int]  # command index -> agent command id
    offsets: dict[int, int]  # command index -> output bytes so far


class BatchJournal(Journal[BatchEvent], Protocol):
    """Where a batch's events go on disk (exeunit.persistence.journal), with what a restarted daemon
    needs besides (which agent command runs which of its commands) and its finished results."""

    def note(self, index: int, command_id: int) -> None: ...
    def continue_offsets(self, offsets: dict[int, int]) -> None: ...
    def close(self) -> None: ...
    def disk_bytes(self) -> int: ...
    def save_results(self, outputs: list[tuple[bytes, bytes, bool, bool]]) -> None: ...  # blocking
    def load_results(self) -> list[tuple[bytes, bytes, bool, bool]]: ...  # blocking


class Batch:
    """Records what a batch's commands do; the activity runs them. Its events go to `events`, which
    keeps them in `journal` when there is one (and then only `memory_bytes` of them in memory,
    within `pool`); its results keep RESULT_OUTPUT_BYTES of output at most, and once it finished
    they are on disk too (`spill_results`) and leave memory."""

    def __init__(self, batch_id: str, commands: list[Command], output_cap: int, window_bytes: int,
                 grace_seconds: float, journal: BatchJournal | None = None, memory_bytes: int | None = None,
                 pool: MemoryPool | None = None) -> None:
        self.batch_id = batch_id
        self.commands = commands
        self.state = BatchState.QUEUED
        self.events: EventLog[BatchEvent] = EventLog(window_bytes, event_size, grace_seconds, journal,
                                                     memory_bytes, pool)
        self.journal = journal
        room = OutputRoom(RESULT_OUTPUT_BYTES)
        self.results = [
            CommandResult(index=i, stdout=CapturedOutput(output_cap, room), stderr=CapturedOutput(output_cap, room))
            for i in range(len(commands))
        ]
        self._spilled = False  # its results' output is in the journal, not in memory

    async def spill_results(self) -> None:
        """Moves the finished batch's results' output to its journal (off the event loop)."""
        if self.journal is None or self._spilled:
            return
        if any(r.stdout.data or r.stderr.data for r in self.results):  # (most service batches print nothing)
            outputs = [(bytes(r.stdout.data), bytes(r.stderr.data), r.stdout.truncated, r.stderr.truncated)
                       for r in self.results]
            await asyncio.to_thread(self.journal.save_results, outputs)
        for result in self.results:
            result.stdout.data, result.stderr.data = bytearray(), bytearray()
        self._spilled = True

    async def results_now(self) -> list[CommandResult]:
        """The results with their output, read back from the journal once spilled."""
        if not self._spilled or self.journal is None:
            return self.results
        outputs = await asyncio.to_thread(self.journal.load_results)
        loaded = []
        for result, (out, err, out_cut, err_cut) in zip(self.results, outputs):
            loaded.append(dataclasses.replace(
                result, stdout=CapturedOutput(result.stdout.cap, data=bytearray(out), truncated=out_cut),
                stderr=CapturedOutput(result.stderr.cap, data=bytearray(err), truncated=err_cut)))
        return loaded + self.results[len(loaded):]

    def replay(self, events: list[BatchEvent]) -> None:
        """Rebuilds the results from the events a journal kept (after a daemon restart)."""
        for event in events:
            result = self.results[event.command_index]
            if event.kind is EventKind.STARTED:
                self.state = BatchState.RUNNING
                result.state, result.started = CommandState.RUNNING, event.time
            elif event.kind in (EventKind.STDOUT, EventKind.STDERR):
                (result.stdout if event.kind is EventKind.STDOUT else result.stderr).add(event.data)
            elif event.kind is EventKind.FINISHED:
                result.state = CommandState.SUCCEEDED if event.success else CommandState.FAILED
                result.return_code, result.message, result.finished = event.return_code, event.message, event.time
            elif event.kind is EventKind.BATCH_FINISHED and event.batch_state is not None:
                self.state = event.batch_state
                for pending in self.results:
                    if pending.state is CommandState.PENDING:
                        pending.state = CommandState.SKIPPED

    async def _emit(self, index: int, kind: EventKind, **fields: object) -> None:
        await self.events.append(
            lambda seq: BatchEvent(sequence=seq, time=utcnow(), command_index=index, kind=kind, **fields)  # type: ignore[arg-type]
        )

    async def command_started(self, index: int) -> None:
        self.state = BatchState.RUNNING
        result = self.results[index]
        result.state = CommandState.RUNNING
        result.started = utcnow()
        await self._emit(index, EventKind.STARTED)

    async def output(self, index: int, stream: EventKind, data: bytes) -> None:
        result = self.results[index]
        (result.stdout if stream is EventKind.STDOUT else result.stderr).add(data)
        await self._emit(index, stream, data=data)

    async def command_finished(self, index: int, return_code: int, success: bool, message: str) -> None:
        result = self.results[index]
        result.state = CommandState.SUCCEEDED if success else CommandState.FAILED
        result.return_code = return_code
        result.message = message
        result.finished = utcnow()
        await self._emit(index, EventKind.FINISHED, return_code=return_code, success=success, message=message)

    async def finish(self) -> None:
        failed = any(r.state is CommandState.FAILED for r in self.results)
        for result in self.results:
            if result.state is CommandState.PENDING:
                result.state = CommandState.SKIPPED
        self.state = BatchState.FAILED if failed else BatchState.SUCCEEDED
        last = len(self.results) - 1
        await self._emit(last, EventKind.BATCH_FINISHED, batch_state=self.state)
        await self.events.close()
