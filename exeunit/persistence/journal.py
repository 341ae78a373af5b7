"""A batch's events on disk: what readers that fell behind the in-memory tail read, and what a
restarted daemon serves again from the same sequence numbers.

Each batch has a directory of segment files (`000000.seg`, `000001.seg`, ...) under the
provider's journals directory. Every event is appended as one record as it happens (a `write`
into the page cache: a daemon killed at any point loses nothing written, a host crash may, and
activities do not outlive one anyway). A new segment starts every SEGMENT_BYTES; the log drops
segments whole, oldest first, once its replay window is full and its readers are past them
(exeunit.domain.event_log), so the disk holds about what the replay window holds, however long a
command writes. A finished batch's results (the output kept for GetBatch) go to a `results` file
beside them, and leave memory.

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

SEGMENT_BYTES = 4 << 20
RESULTS_FILE = "results"
RESULT_HEAD = struct.Struct(">IIB")  # stdout bytes, stderr bytes, flags (1: stdout cut, 2: stderr cut)
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
        self._sizes: dict[int, int] = {}  # segment number -> bytes
        for segment in segments:  # a journal taken up after a restart
            data = segment.read_bytes()
            self._sizes[int(segment.stem)] = len(data)
            replayed = self.replay_segment(data)
            if replayed.events:
                self._first_sequence[int(segment.stem)] = replayed.events[0].sequence
        self._offsets: dict[int, int] = {}  # command index -> output offset
        self._closed = False
        results = directory / RESULTS_FILE
        self._results_bytes = results.stat().st_size if results.exists() else 0

    def continue_offsets(self, offsets: dict[int, int]) -> None:
        """Output offsets reached before a restart, to count on from."""
        self._offsets.update(offsets)

    def _path(self, number: int) -> Path:
        return self.directory / f"{number:06d}.seg"

    def _segments(self) -> list[Path]:
        return sorted(self.directory.glob("*.seg"))

    def append(self, event: BatchEvent) -> bool:
        """Writes the event; False when the journal was closed (the activity ended) and did not."""
        if self._closed:
            return False
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
        return True

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
        written = os.writev(self._fd, [head, data])
        self._size += written
        self._sizes[self._number] = self._sizes.get(self._number, 0) + written

    # What the log asks of its journal (exeunit.domain.event_log.Journal)

    def retained_bytes(self) -> int:
        return sum(self._sizes.values())

    def first_retained(self) -> int | None:
        """The first sequence still kept (None: no event yet)."""
        return self._first_sequence[min(self._first_sequence)] if self._first_sequence else None

    def next_boundary(self) -> int | None:
        """Where the second-oldest segment begins: dropping the oldest one drops the events before
        it. None while one segment holds everything (the current one never goes)."""
        numbers = sorted(self._first_sequence)
        return self._first_sequence[numbers[1]] if len(numbers) > 1 else None

    def read_from(self, sequence: int, max_bytes: int) -> list[BatchEvent]:
        """Events from `sequence` on, about `max_bytes` of them at most; [] when `sequence` is no
        longer kept. Blocking: read in a worker thread."""
        segments = dict(self._first_sequence)  # one copy: the event loop's thread changes it meanwhile
        numbers = [n for n in sorted(segments) if segments[n] <= sequence]
        if not numbers:
            return []
        found: list[BatchEvent] = []
        size = 0
        expected = sequence
        for number in sorted(n for n in segments if n >= numbers[-1]):
            try:
                data = self._path(number).read_bytes()
            except FileNotFoundError:  # dropped meanwhile
                break
            for event in self.replay_segment(data).events:
                if event.sequence < expected:
                    continue
                if event.sequence != expected:  # a gap: the end of a segment still being written
                    return found  # what is contiguous; the reader asks again from there
                found.append(event)
                expected += 1
                size += len(event.data) + 64
            if size >= max_bytes:
                break
        return found

    # Results

    def disk_bytes(self) -> int:
        """What the batch holds on disk: its segments and its results."""
        return self.retained_bytes() + self._results_bytes

    def save_results(self, outputs: list[tuple[bytes, bytes, bool, bool]]) -> None:
        """Writes each command's kept (stdout, stderr, stdout cut, stderr cut). Blocking."""
        self.directory.mkdir(parents=True, exist_ok=True)
        parts = [RESULT_HEAD.pack(len(out), len(err), (1 if out_cut else 0) | (2 if err_cut else 0)) + out + err
                 for out, err, out_cut, err_cut in outputs]
        body = b"".join(parts)
        (self.directory / RESULTS_FILE).write_bytes(body)
        self._results_bytes = len(body)

    def load_results(self) -> list[tuple[bytes, bytes, bool, bool]]:
        """What save_results wrote ([] when nothing was). Blocking."""
        try:
            data = (self.directory / RESULTS_FILE).read_bytes()
        except FileNotFoundError:
            return []
        outputs = []
        position = 0
        while position + RESULT_HEAD.size <= len(data):
            out_length, err_length, flags = RESULT_HEAD.unpack_from(data, position)
            position += RESULT_HEAD.size
            out = data[position:position + out_length]
            err = data[position + out_length:position + out_length + err_length]
            position += out_length + err_length
            outputs.append((out, err, bool(flags & 1), bool(flags & 2)))
        return outputs

    def drop_before(self, sequence: int) -> None:
        """Deletes the segments whose events all come before `sequence` (never the current one)."""
        numbers = sorted(self._first_sequence)
        for number, following in zip(numbers, numbers[1:]):
            if self._first_sequence[following] > sequence:
                break
            self._path(number).unlink(missing_ok=True)
            del self._first_sequence[number]
            self._sizes.pop(number, None)

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
