"""A numbered, replayable log of one batch's events, with bounded memory and no silent loss.

Events are numbered from 0 without gaps. Readers attach from any retained sequence number and
follow the log live. What is retained is bounded by a byte window: when the window is full, the
oldest events are dropped only once every attached reader has passed them and no reader was
attached in the last `grace` seconds; until then `append` waits, which slows the producing command
the way a full pipe would. A reader that lost its connection can therefore come back within the
grace period and miss nothing.

With a journal, the retained events are on disk and only a short tail of them in memory: at most
`memory_bytes` for this log, and, with a `MemoryPool`, within what the logs sharing the pool (one
requestor's) may hold together. A reader that falls behind the tail reads from the journal; once
the log is closed and nobody reads it, it holds no memory at all. Without a journal, everything
retained is in memory (the window bounds it).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Generic, Protocol, TypeVar

from exeunit import errors

T = TypeVar("T")

JOURNAL_READ_BYTES = 1 << 20  # what a reader behind the memory tail reads from disk at a time


class Journal(Protocol[T]):
    """Where a log keeps its events on disk (exeunit.persistence.journal), in segments that go
    whole, oldest first."""

    def append(self, event: T) -> bool: ...  # False: not kept (the journal was closed)
    def retained_bytes(self) -> int: ...
    def first_retained(self) -> int | None: ...  # the first sequence kept (None: no event yet)
    def next_boundary(self) -> int | None: ...  # where the second-oldest segment begins, if any
    def drop_before(self, sequence: int) -> None: ...
    def read_from(self, sequence: int, max_bytes: int) -> list[T]: ...  # blocking; [] if not kept


class MemoryPool:
    """Bytes of events that a group of logs (one requestor's) may hold in memory together."""

    def __init__(self, limit_bytes: int) -> None:
        self.limit = limit_bytes
        self.used = 0

    @property
    def over(self) -> bool:
        return self.used > self.limit


class EventLog(Generic[T]):
    def __init__(self, window_bytes: int, size_of: Callable[[T], int], grace: float,
                 journal: Journal[T] | None = None, memory_bytes: int | None = None,
                 pool: MemoryPool | None = None) -> None:
        self._journal = journal
        self._window = window_bytes
        self._memory_window = memory_bytes if journal is not None and memory_bytes is not None else window_bytes
        self._pool = pool if journal is not None else None
        self._size_of = size_of
        self._grace = grace
        self._memory: deque[tuple[T, int]] = deque()  # the newest events, from _memory_first on
        self._memory_first = 0
        self._memory_bytes = 0
        self._on_disk_before = 0  # events before this are in the journal; later ones only in memory
        self._released = ""  # why the events are gone for good (the activity's end), once they are
        self._delivered = 0  # events handed to readers, all readers together (progress, for release)
        self._next = 0
        self._closed = False
        self._holding = True
        self._cond = asyncio.Condition()
        self._cursors: dict[int, int] = {}  # reader id -> next sequence it reads
        self._reader_ids = itertools.count()
        self._last_reader_seen = time.monotonic()

    def restore(self, events: list[T], first: int, closed: bool) -> None:
        """Takes back the events a journal kept (the first being number `first`) after a restart;
        with the journal, they stay there and none is held in memory."""
        self._next = first + len(events)
        self._closed = closed
        if self._journal is not None:
            self._memory_first = self._on_disk_before = self._next
        else:
            self._memory = deque((event, self._size_of(event)) for event in events)
            self._memory_first = first
            self._memory_bytes = sum(size for _, size in self._memory)

    @property
    def next_sequence(self) -> int:
        return self._next

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def memory_bytes(self) -> int:
        return self._memory_bytes

    async def append(self, make: Callable[[int], T]) -> T:
        """Adds the event `make(sequence)`; waits while it would push out unread events."""
        async with self._cond:
            event = make(self._next)
            size = self._size_of(event)
            await self._make_room(size)
            if self._journal is not None and self._journal.append(event) and self._on_disk_before == self._next:
                self._on_disk_before += 1
            self._next += 1
            self._memory.append((event, size))
            self._memory_bytes += size
            if self._pool is not None:
                self._pool.used += size
            self._trim_memory()
            self._cond.notify_all()
            return event

    async def _make_room(self, size: int) -> None:
        while True:
            if self._journal is not None:
                if self._journal.retained_bytes() + size <= self._window:
                    return
                boundary = self._journal.next_boundary()
                if boundary is None:
                    return  # the current segment alone: it stays, however full
            else:
                if not self._memory or self._memory_bytes + size <= self._window:
                    return
                boundary = self._memory_first + 1
            if self._may_drop_before(boundary):
                self._drop_before(boundary)
                continue
            timeout = None
            if not self._cursors:
                timeout = max(0.01, self._grace - (time.monotonic() - self._last_reader_seen))
            try:
                await asyncio.wait_for(self._cond.wait(), timeout)
            except TimeoutError:
                pass

    def _drop_before(self, boundary: int) -> None:
        if self._journal is not None:
            self._journal.drop_before(boundary)
        while self._memory and self._memory_first < boundary:
            self._evict_oldest()

    def _trim_memory(self) -> None:
        """Keeps memory within this log's window and its pool (the journal has what goes; what it
        did not take, after it was closed, stays: the few last events of an ending activity)."""
        if self._journal is None:
            return
        while self._memory and self._memory_first < self._on_disk_before and (
                self._memory_bytes > self._memory_window or (self._pool is not None and self._pool.over)):
            self._evict_oldest()

    def _evict_oldest(self) -> None:
        _, size = self._memory.popleft()
        self._memory_first += 1
        self._memory_bytes -= size
        if self._pool is not None:
            self._pool.used -= size

    def _release_memory(self) -> None:
        """A closed log nobody reads holds no memory: its events are in the journal."""
        if self._journal is not None and self._closed and not self._cursors:
            while self._memory and self._memory_first < self._on_disk_before:
                self._evict_oldest()

    async def stop_holding(self) -> None:
        """From now on the producer never waits: old events go as the window needs (used once the
        activity is terminated, so that no reader can hold up its shutdown)."""
        async with self._cond:
            self._holding = False
            self._cond.notify_all()

    def _may_drop_before(self, boundary: int) -> bool:
        if not self._holding:
            return True
        if self._cursors:
            return min(self._cursors.values()) >= boundary
        return time.monotonic() - self._last_reader_seen >= self._grace

    async def close(self) -> None:
        """Marks the log complete: readers end after the last event."""
        async with self._cond:
            self._closed = True
            self._release_memory()
            self._cond.notify_all()

    async def read(self, from_sequence: int) -> AsyncIterator[T]:
        """Yields events from `from_sequence` on, live, until the log is closed and read through."""
        reader = next(self._reader_ids)
        async with self._cond:
            first = self._first_retained()
            if from_sequence < first:
                raise self._gone(first, from_sequence)
            if from_sequence > self._next:
                raise errors.OutOfRange(
                    f"event {from_sequence} does not exist yet: the next event is {self._next}; "
                    "resume from the sequence after the last event received"
                )
            self._cursors[reader] = from_sequence
        try:
            cursor = from_sequence
            while True:
                async with self._cond:
                    await self._cond.wait_for(lambda: self._next > cursor or self._closed)
                    behind = cursor < self._memory_first
                    batch = [] if behind else [e for e, _ in itertools.islice(self._memory, cursor - self._memory_first, None)]
                if behind:
                    if self._journal is None:  # dropped from under a reader once the log stopped holding
                        raise self._gone(self._memory_first, cursor)
                    batch = await asyncio.to_thread(self._journal.read_from, cursor, JOURNAL_READ_BYTES)
                    if not batch:
                        raise self._missing(cursor)
                if not batch:
                    return  # closed and read through
                for event in batch:
                    yield event
                cursor += len(batch)
                async with self._cond:
                    self._cursors[reader] = cursor
                    self._delivered += len(batch)
                    self._cond.notify_all()
        finally:
            async with self._cond:
                self._cursors.pop(reader, None)
                self._last_reader_seen = time.monotonic()
                self._release_memory()
                self._cond.notify_all()

    def _first_retained(self) -> int:
        if self._journal is None:  # everything retained is in memory
            return self._memory_first
        first = self._journal.first_retained()
        return self._next if first is None else first

    def _missing(self, cursor: int) -> errors.OutOfRange | errors.DataLoss:
        """Why the journal had nothing from `cursor` on: it dropped those events (the reader fell
        out of the window of an ending activity), the log was released with its activity, or the
        journal lost what it says it keeps (a fault of ours, never reported as the reader's)."""
        if self._released:
            return errors.OutOfRange(f"events from {cursor} on are gone: {self._released}")
        first = self._first_retained()
        if cursor < first:
            return self._gone(first, cursor)
        return errors.DataLoss(
            f"the journal of this batch lost events from {cursor} on (it keeps {first} to {self._next - 1}); "
            "read the batch's results with GetBatch"
        )

    @property
    def has_readers(self) -> bool:
        return bool(self._cursors)

    @property
    def delivered(self) -> int:
        """Events handed to readers so far: whether attached readers still move."""
        return self._delivered

    async def release(self, reason: str) -> None:
        """The events are gone for good (the activity ended long enough ago): readers still
        behind the memory tail are told `reason`, readers that come later that nothing is kept."""
        async with self._cond:
            self._released = reason
            while self._memory:  # its bytes go back to the requestor's pool, on disk or not
                self._evict_oldest()
            self._cond.notify_all()

    @staticmethod
    def _gone(first: int, asked: int) -> errors.OutOfRange:
        return errors.OutOfRange(
            f"events before {first} are no longer retained (asked from {asked}; the provider keeps "
            "--replay-window-mib of a batch's events); keep a reader attached to receive all output"
        )
