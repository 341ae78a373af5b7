"""Docker's multiplexed exec stream, split into runs of stdout and stderr data."""

from __future__ import annotations

from exeunit.runtime.protocols import STDERR, STDOUT  # Docker's stream ids are the runtime's

__all__ = ["STDERR", "STDOUT", "FrameDecoder"]


class FrameDecoder:
    """Splits Docker's multiplexed exec stream (frames of an 8-byte header: stream, 0, 0, 0,
    big-endian size; then the data) into runs of one stream's data, without copying it."""

    def __init__(self) -> None:
        self._header = bytearray()
        self._stream = STDOUT
        self._remaining = 0

    def feed(self, data: bytes) -> list[tuple[int, list[memoryview]]]:
        view = memoryview(data)
        position, end = 0, len(data)
        runs: list[tuple[int, list[memoryview]]] = []
        while position < end:
            if self._remaining == 0:
                needed = 8 - len(self._header)
                self._header += view[position : position + needed]
                position += min(needed, end - position)
                if len(self._header) == 8:
                    self._stream = STDERR if self._header[0] == 2 else STDOUT
                    self._remaining = int.from_bytes(self._header[4:8], "big")
                    self._header.clear()
                continue
            take = min(self._remaining, end - position)
            part = view[position : position + take]
            position += take
            self._remaining -= take
            if runs and runs[-1][0] == self._stream:
                runs[-1][1].append(part)
            else:
                runs.append((self._stream, [part]))
        return runs
