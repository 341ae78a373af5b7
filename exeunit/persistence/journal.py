"""A batch's events on disk, so that a restarted daemon serves them from the same sequence numbers.

Each persisted batch has a directory of segment files (`000000.seg`, `000001.seg`, ...) in the
provider's home. Every event is appended as one record as it happens (a `write` into the page
cache: a daemon killed at any point loses nothing written, a host crash may, and activities do not
outlive one anyway). A new segment starts every SEGMENT_BYTES; a segment goes as a whole once the
in-memory log has dropped every event in it (exeunit.domain.event_log), so the disk holds about what the
replay window holds, however long a command writes.

Record: u32 length of the rest | u8 type | fields. EVENT records carry a BatchEvent and, for
output, the command's output offset after it (what the resident agent counts); NOTE records say
which agent command runs a batch command (what a restarted daemon asks the agent to resume).
"""

from __future__ import annotations

import os
import shutil
import struct
from datetime import datetime, timezone
from pathlib import Path

from exeunit.domain.batch import BatchEvent, BatchState, EventKind, Replayed

SEGMENT_BYTES = 16 << 20
EVENT, NOTE = 1, 2
LENGTH = struct.Struct(">I")
EVENT_HEAD = struct.Struct(">BQqIBiBBQII")  # type, sequence, time (µs), index, kind, code, success, state, offset, message, data
NOTE_BODY = struct.Struct(">BIQ")  # type, command index, agent command id
KINDS = list(EventKind)
STATES = [None, *BatchState]


class SegmentedJournal:
    """One batch's journal (a `BatchJournal`, exeunit.domain.batch) in its directory of segments."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        segments = self._segments() if directory.exists() else []
        self._number = int(segments[-1].stem) if segments else 0
        self._fd: int | None = None  # opened at the first record: most batches of a service are short
        self._size = segments[-1].stat().st_size if segments else 0
        self._first_sequence: dict[int, int] = {}  # segment number -> first sequence in it
        for segment in segments:  # a journal taken up after a restart
            replayed = self.replay_segment(segment.read_bytes())
            if replayed.events:
                self._first_sequence[int(segment.stem)] = replayed.events[0].sequence
        self._offsets: dict[int, int] = {}  # command index -> output offset
        self._closed = False

    def continue_offsets(self, offsets: dict[int, int]) -> None:
        """Output offsets reached before a restart, to count on from."""
        self._offsets.update(offsets)

    def _path(self, number: int) -> Path:
        return self.directory / f"{number:06d}.seg"

    def _segments(self) -> list[Path]:
        return sorted(self.directory.glob("*.seg"))

    def append(self, event: BatchEvent) -> None:
        offset = 0
        if event.kind in (EventKind.STDOUT, EventKind.STDERR):
            offset = self._offsets.get(event.command_index, 0) + len(event.data)
            self._offsets[event.command_index] = offset
        message = event.message.encode()
        head = EVENT_HEAD.pack(
            EVENT, event.sequence, int(event.time.timestamp() * 1_000_000), event.command_index,
            KINDS.index(event.kind), event.return_code, event.success, STATES.index(event.batch_state), offset,
            len(message), len(event.data),
        )
        self._write(LENGTH.pack(len(head) + len(message) + len(event.data)) + head + message, event.data)
        self._first_sequence.setdefault(self._number, event.sequence)

    def note(self, index: int, command_id: int) -> None:
        body = NOTE_BODY.pack(NOTE, index, command_id)
        self._write(LENGTH.pack(len(body)) + body, b"")

    def _write(self, head: bytes, data: bytes) -> None:
        if self._closed:
            return  # the batch's activity ended: nobody will read this again
        if self._fd is not None and self._size >= SEGMENT_BYTES:
            os.close(self._fd)
            self._fd, self._number, self._size = None, self._number + 1, 0
        if self._fd is None:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self._path(self._number), os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        self._size += os.writev(self._fd, [head, data])

    def drop_before(self, sequence: int) -> None:
        """Deletes the segments whose events all come before `sequence` (never the current one)."""
        numbers = sorted(self._first_sequence)
        for number, following in zip(numbers, numbers[1:]):
            if self._first_sequence[following] > sequence:
                break
            self._path(number).unlink(missing_ok=True)
            del self._first_sequence[number]

    def close(self) -> None:
        self._closed = True
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def remove(self) -> None:
        self.close()
        shutil.rmtree(self.directory, ignore_errors=True)

    @classmethod
    def replay(cls, directory: Path) -> Replayed:
        """What a journal holds, segment after segment."""
        whole = Replayed([], {}, {})
        for segment in sorted(directory.glob("*.seg")):
            part = cls.replay_segment(segment.read_bytes())
            whole.events += part.events
            whole.notes.update(part.notes)
            whole.offsets.update(part.offsets)
        return whole

    @staticmethod
    def replay_segment(data: bytes) -> Replayed:
        """The records of one segment; one cut short at the end (the daemon died writing it) is
        ignored."""
        events: list[BatchEvent] = []
        notes: dict[int, int] = {}
        offsets: dict[int, int] = {}
        position = 0
        while position + LENGTH.size <= len(data):
            (length,) = LENGTH.unpack_from(data, position)
            start, end = position + LENGTH.size, position + LENGTH.size + length
            if end > len(data):
                break
            position = end
            if data[start] == NOTE:
                _, index, command_id = NOTE_BODY.unpack_from(data, start)
                notes[index] = command_id
                continue
            (_, sequence, micros, index, kind, code, success, state, offset, message_length,
             data_length) = EVENT_HEAD.unpack_from(data, start)
            body = start + EVENT_HEAD.size
            events.append(BatchEvent(
                sequence=sequence,
                time=datetime.fromtimestamp(micros / 1_000_000, timezone.utc),
                command_index=index,
                kind=KINDS[kind],
                data=data[body + message_length:body + message_length + data_length],
                return_code=code,
                success=bool(success),
                message=data[body:body + message_length].decode(),
                batch_state=STATES[state],
            ))
            if offset:
                offsets[index] = offset
        return Replayed(events, notes, offsets)
