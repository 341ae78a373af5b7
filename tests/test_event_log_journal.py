"""A batch's event log over its real on-disk journal: a reader behind the memory tail reads the
journal, and when it cannot, it is told why truthfully (issue 26: a reader at 389 was told that
events before 133 were no longer retained)."""

from __future__ import annotations

import shutil
from datetime import datetime, timezone
from pathlib import Path

import pytest

from exeunit import errors
from exeunit.domain.batch import BatchEvent, EventKind
from exeunit.domain.event_log import EventLog
from exeunit.persistence.journal import SegmentedJournal

NOW = datetime(2026, 12, 7, tzinfo=timezone.utc)
DATA = b"o" * 50


def output(sequence: int) -> BatchEvent:
    return BatchEvent(sequence=sequence, time=NOW, command_index=0, kind=EventKind.STDOUT, data=DATA)


def size(event: BatchEvent) -> int:
    return len(event.data) + 64


def journaled_log(directory: Path) -> tuple[EventLog[BatchEvent], SegmentedJournal]:
    """A log keeping about one event in memory (the rest only in its journal)."""
    journal = SegmentedJournal(directory)
    return EventLog(1 << 20, size, grace=60.0, journal=journal, memory_bytes=size(output(0))), journal


async def test_events_that_came_after_the_journal_closed_reach_a_reader_behind(tmp_path: Path) -> None:
    """An ending activity closes its journals; the last events of its batches (the killed
    command's end) come after. They were trimmed from memory though never on disk."""
    log, journal = journaled_log(tmp_path / "batch")
    reader = log.read(0)
    for _ in range(10):
        await log.append(output)
    assert (await anext(reader)).sequence == 0
    journal.close()
    for _ in range(3):
        await log.append(output)
    await log.close()
    sequences = [event.sequence async for event in reader]
    assert sequences == list(range(1, 13))


async def test_a_journal_that_lost_its_events_says_so_and_never_blames_the_reader(tmp_path: Path) -> None:
    log, _ = journaled_log(tmp_path / "batch")
    for _ in range(10):
        await log.append(output)
    await log.close()
    reader = log.read(2)
    shutil.rmtree(tmp_path / "batch")  # what no code path of ours may do under a reader
    with pytest.raises(errors.DataLoss, match="lost events from 2 on"):
        await anext(reader)


async def test_a_reader_of_a_released_log_is_told_why_its_events_are_gone(tmp_path: Path) -> None:
    log, _ = journaled_log(tmp_path / "batch")
    for _ in range(10):
        await log.append(output)
    await log.close()
    reader = log.read(3)
    await log.release("the activity ended")
    shutil.rmtree(tmp_path / "batch")
    with pytest.raises(errors.OutOfRange, match="events from 3 on are gone: the activity ended"):
        await anext(reader)


async def test_a_released_log_gives_its_memory_back_to_the_pool_even_what_was_never_on_disk(tmp_path: Path) -> None:
    """Events appended after the journal closed stay in memory until the log is released; then
    the requestor's pool has them back (attacker's review: its count only grew)."""
    from exeunit.domain.event_log import MemoryPool

    pool = MemoryPool(1 << 20)
    journal = SegmentedJournal(tmp_path / "batch")
    log = EventLog(1 << 20, size, grace=60.0, journal=journal, memory_bytes=size(output(0)), pool=pool)
    for _ in range(3):
        await log.append(output)
    journal.close()
    for _ in range(3):
        await log.append(output)
    await log.close()
    assert pool.used >= 3 * size(output(0))  # the three never written are held
    await log.release("the activity ended")
    assert pool.used == 0
