"""A task job's progress on a terminal: one line on stderr, redrawn in place, cleared at the job's
end (yapapi has none; its users asked for one).

    [Job 1] 12/40 tasks done, 1.50/s, ETA 0:19

The total is known when `data` has a length (a list, a tuple); otherwise the line counts the tasks
done so far and gives no ETA. A task is done once accepted, rejected for good or failed. The line
is drawn only when the stream is a terminal, and not at all with GOLEM_PROGRESS=0 in the
environment (a switch that needs no change to a yapapi script). The cursor is left at the start of
the line, so a log line written meanwhile overwrites it and the next redraw comes below; the line
is kept short for that reason.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import TextIO

PROGRESS_ENV = "GOLEM_PROGRESS"
CLEAR_LINE = "\r\x1b[K"  # to the line's start, then erase it


def wanted(stream: TextIO) -> bool:
    """Whether a progress line belongs on `stream`: a terminal, and not switched off."""
    if os.environ.get(PROGRESS_ENV, "").strip().lower() in ("0", "false", "no", "off"):
        return False
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


class Progress:
    """Draws `label`'s progress on `stream` as `show(done)` is called; `clear()` erases it."""

    def __init__(self, stream: TextIO, label: str, total: int | None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._stream = stream
        self._label = label
        self._total = total
        self._clock = clock
        self._start = clock()
        self._drawn = ""

    def text(self, done: int) -> str:
        elapsed = self._clock() - self._start
        rate = done / elapsed if elapsed > 0 else 0.0
        counted = f"{done}/{self._total}" if self._total is not None else f"{done}"
        line = f"{self._label} {counted} tasks done, {rate:.2f}/s"
        if self._total is not None and rate > 0 and done < self._total:
            line += f", ETA {_clock_time((self._total - done) / rate)}"
        return line

    def show(self, done: int) -> None:
        line = self.text(done)
        if line != self._drawn:
            self._stream.write(f"{CLEAR_LINE}{line}\r")
            self._stream.flush()
            self._drawn = line

    def clear(self) -> None:
        if self._drawn:
            self._stream.write(CLEAR_LINE)
            self._stream.flush()
            self._drawn = ""


def _clock_time(seconds: float) -> str:
    """h:mm:ss, or m:ss under an hour."""
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
