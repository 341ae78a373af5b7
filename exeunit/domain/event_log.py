"""A numbered, replayable log of one batch's events, with bounded memory and no silent loss.

Events are numbered from 0 without gaps. Readers attach from any retained sequence number and
follow the log live. Memory is bounded by a byte window: when the window is full, the oldest
events are dropped only once every attached reader has passed them and no reader was attached in
the last `grace` seconds; until then `append` waits, which slows the producing command the way a
full pipe would. A reader that lost its connection can therefore come back within the grace
period and miss nothing.
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
T_contra = TypeVar("T_contra", contravariant=True)


class Journal(Protocol[T_contra]):
    """Where a persisted log also writes its events (exeunit.persistence.journal)."""

    def append(self, event: T_contra) -> None: ...
    def drop_before(self, sequence: int) -> None: ...


class EventLog(Generic[T]):
    def __init__(self, window_bytes: int, size_of: Callable[[T], int], grace: float,
                 journal: Journal[T] | None = None) -> None:
        self._journal = journal
        self._window = window_bytes
        self._size_of = size_of
        self._grace = grace
        self._events: deque[tuple[T, int]] = deque()
        self._first = 0  # sequence number of self._events[0]
        self._bytes = 0
        self._closed = False
        self._holding = True
        self._cond = asyncio.Condition()
        self._cursors: dict[int, int] = {}  # reader id -> next sequence it reads
        self._reader_ids = itertools.count()
        self._last_reader_seen = time.monotonic()

    def restore(self, events: list[T], first: int, closed: bool) -> None:
        """Takes back the events a journal kept (the first being number `first`) after a restart."""
        self._events = deque((event, self._size_of(event)) for event in events)
        self._first = first
        self._bytes = sum(size for _, size in self._events)
        self._closed = closed

    @property
    def next_sequence(self) -> int:
        return self._first + len(self._events)

    @property
    def closed(self) -> bool:
        return self._closed

    async def append(self, make: Callable[[int], T]) -> T:
        """Adds the event `make(sequence)`; waits while it would push out unread events."""
        async with self._cond:
            event = make(self.next_sequence)
            size = self._size_of(event)
            await self._make_room(size)
            if self._journal is not None:
                self._journal.append(event)
            self._events.append((event, size))
            self._bytes += size
            self._cond.notify_all()
            return event

    async def _make_room(self, size: int) -> None:
        while self._events and self._bytes + size > self._window:
            if self._may_drop_oldest():
                _, dropped = self._events.popleft()
                self._first += 1
                self._bytes -= dropped
                if self._journal is not None:
                    self._journal.drop_before(self._first)
                continue
            timeout = None
            if not self._cursors:
                timeout = max(0.01, self._grace - (time.monotonic() - self._last_reader_seen))
            try:
                await asyncio.wait_for(self._cond.wait(), timeout)
            except TimeoutError:
                pass

    async def stop_holding(self) -> None:
        """From now on the producer never waits: old events go as the window needs (used once the
        activity is terminated, so that no reader can hold up its shutdown)."""
        async with self._cond:
            self._holding = False
            self._cond.notify_all()

    def _may_drop_oldest(self) -> bool:
        if not self._holding:
            return True
        if self._cursors:
            return min(self._cursors.values()) > self._first
        return time.monotonic() - self._last_reader_seen >= self._grace

    async def close(self) -> None:
        """Marks the log complete: readers end after the last event."""
        async with self._cond:
            self._closed = True
            self._cond.notify_all()

    async def read(self, from_sequence: int) -> AsyncIterator[T]:
        """Yields events from `from_sequence` on, live, until the log is closed and read through."""
        reader = next(self._reader_ids)
        async with self._cond:
            if from_sequence < self._first:
                raise errors.OutOfRange(
                    f"events before {self._first} are no longer retained (asked from {from_sequence}); "
                    "keep a reader attached to receive all output"
                )
            if from_sequence > self.next_sequence:
                raise errors.OutOfRange(
                    f"event {from_sequence} does not exist yet: the next event is {self.next_sequence}; "
                    "resume from the sequence after the last event received"
                )
            self._cursors[reader] = from_sequence
        try:
            cursor = from_sequence
            while True:
                async with self._cond:
                    await self._cond.wait_for(lambda: self.next_sequence > cursor or self._closed)
                    start = cursor - self._first
                    batch = [event for event, _ in itertools.islice(self._events, start, None)]
                if not batch:
                    return  # closed and read through
                for event in batch:
                    yield event
                cursor += len(batch)
                async with self._cond:
                    self._cursors[reader] = cursor
                    self._cond.notify_all()
        finally:
            async with self._cond:
                self._cursors.pop(reader, None)
                self._last_reader_seen = time.monotonic()
                self._cond.notify_all()
