"""Bounds on what one caller can hold at once, so that no requestor starves another.

Work that lasts as long as a caller wants (a transfer, an image fetch) is counted per activity
and per requestor and refused with RESOURCE_EXHAUSTED beyond the limit, instead of queueing
behind others; and it is cut when it stands still for too long.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager

from exeunit import errors


class ConcurrencyQuota:
    """At most `limit` things in flight per key; the one over the limit is refused, not queued."""

    def __init__(self, limit: int, what: str, flag: str = "") -> None:
        self.limit = limit
        self._what = what
        self._bound = f" ({flag})" if flag else ""  # the operator's flag that sets it
        self._in_flight: Counter[str] = Counter()

    @contextmanager
    def hold(self, key: str, owner: str) -> Iterator[None]:
        """Counts one for `key` while the block runs; `owner` names the key in the refusal."""
        if self._in_flight[key] >= self.limit:
            raise errors.ResourceExhausted(
                f"{owner} already has {self.limit} {self._what} in flight, the most this provider allows"
                f"{self._bound}; wait for one to finish"
            )
        self._in_flight[key] += 1
        try:
            yield
        finally:
            self._in_flight[key] -= 1
            if not self._in_flight[key]:
                del self._in_flight[key]


class IdleWatchdog:
    """Calls `on_idle()` once when `progress()` has not been called for `seconds`.

    For work blocked where cancelling the task would not end it cleanly (a gRPC write to a client
    that stopped reading): `on_idle` releases what the work holds instead."""

    def __init__(self, seconds: float, on_idle: Callable[[], None]) -> None:
        self._loop = asyncio.get_running_loop()
        self._seconds = seconds
        self._on_idle = on_idle
        self._last = self._loop.time()
        self._timer = self._loop.call_later(seconds, self._check)

    def progress(self) -> None:
        self._last = self._loop.time()

    def _check(self) -> None:
        left = self._last + self._seconds - self._loop.time()
        if left > 0:
            self._timer = self._loop.call_later(left, self._check)
        else:
            self._on_idle()

    def close(self) -> None:
        self._timer.cancel()


@asynccontextmanager
async def idle_timeout(seconds: float, what: str) -> AsyncIterator[Callable[[], None]]:
    """Cuts the block with TimedOut when it goes `seconds` without calling the yielded `progress()`.

    Cancels the task, which suits work that awaits its caller (the next message of an upload)."""
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout_at(loop.time() + seconds) as deadline:
            yield lambda: deadline.reschedule(loop.time() + seconds)
    except TimeoutError:
        raise errors.TimedOut(f"{what} stood still for {seconds:g}s and was cut (--transfer-idle-seconds)") from None
