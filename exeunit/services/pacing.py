"""Bulk data yields to everything else on the daemon's event loop.

Every call of every requestor shares one event loop. A command printing as fast as it can, read by
a requestor reading as fast as it can, would otherwise keep that loop busy with its bytes, and
every other requestor's round trip would queue behind them at each of its hops (measured: two such
streams made a `/bin/true` round trip 5.5 times slower). The pacer treats bulk data as background
traffic, the way LEDBAT does on a network link: before each piece, a stream measures how late the
loop comes back to it (the queueing delay that any new call sees right now); while that is above a
small target, the pause per byte grows, and it decays once the loop is on time again. Pacing
engages only while another requestor is there to be served (it called in the last second or moves
bulk itself): a requestor alone on the daemon gets all of it, and small pieces (a line of output,
a keystroke through a tunnel) never wait. The pace is a rate per requestor, shared by all
of its streams: ten activities of one requestor printing at once get no more of the loop than one
activity of another.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable

from exeunit.services import telemetry

SMALL_BYTES = 4096  # pieces up to this size pass without a pause or a measurement
TARGET_DELAY = 0.0003  # seconds the loop may be late before bulk slows down
GROWTH = 1.25  # the pause per byte grows by this factor while the loop is late ...
STEP = 1e-9  # ... plus this much (about 1 ms per MiB), so that it can leave zero
DECAY = 0.9  # and shrinks by this factor while the loop is on time
MAX_SECONDS_PER_BYTE = 0.2 / (1 << 20)  # at worst a requestor's bulk still moves 5 MiB/s
MIN_PAUSE = 0.0001  # shorter pauses are not worth a timer
PRESENCE_SECONDS = 1.0  # a requestor that called or moved bulk this recently is there to be served
PRUNE_AT = 1024  # requestors remembered before those with nothing scheduled are forgotten


class Pacer:
    """One per daemon, shared by its bulk streams: command output, tunnels, file transfers."""

    def __init__(self, target_delay: float = TARGET_DELAY, presence_seconds: float = PRESENCE_SECONDS) -> None:
        self.target_delay = target_delay
        self.presence_seconds = presence_seconds
        self.seconds_per_byte = 0.0
        self._next_free: dict[str, float] = {}  # requestor id -> when its bytes so far have been paid for
        # The two requestors seen last, most recent first (distinct): enough to tell whether anyone
        # but a given requestor was seen lately.
        self._seen: list[tuple[str, float]] = []

    def note_call(self, requestor_id: str) -> None:
        """A call of `requestor_id` arrived (it now shares the loop with any bulk)."""
        self._note(requestor_id, asyncio.get_running_loop().time())

    def _note(self, requestor_id: str, now: float) -> None:
        if self._seen and self._seen[0][0] == requestor_id:
            self._seen[0] = (requestor_id, now)
        else:
            self._seen = [(requestor_id, now), *self._seen[:1]]

    def others_present(self, requestor_id: str, now: float) -> bool:
        return any(other != requestor_id and now - seen < self.presence_seconds for other, seen in self._seen)

    def pace_for(self, requestor_id: str) -> Callable[[int], Awaitable[None]]:
        """`admit` for one requestor's stream: awaited with each piece's size."""
        return functools.partial(self.admit, requestor_id)

    async def admit(self, requestor_id: str, size: int) -> None:
        """Returns once a piece of `size` bytes may go on; waits while the loop is crowded."""
        if size <= SMALL_BYTES:
            return
        loop = asyncio.get_running_loop()
        asked = loop.time()
        self._note(requestor_id, asked)
        if not self.others_present(requestor_id, asked):
            self.seconds_per_byte *= DECAY
            return
        # A timer due now runs after the I/O callbacks of the loop's next turn: it waits as long as
        # a call arriving now would (a zero sleep would run before them and see nothing).
        turn = loop.create_future()
        loop.call_at(asked, _wake, turn)
        await turn
        if loop.time() - asked > self.target_delay:
            self.seconds_per_byte = min(self.seconds_per_byte * GROWTH + STEP, MAX_SECONDS_PER_BYTE)
        else:
            self.seconds_per_byte *= DECAY
        now = loop.time()
        free = max(now, self._next_free.get(requestor_id, now)) + size * self.seconds_per_byte
        self._next_free[requestor_id] = free
        if len(self._next_free) > PRUNE_AT:
            self._next_free = {r: t for r, t in self._next_free.items() if t > now}
        if free - now >= MIN_PAUSE:
            telemetry.BULK_PAUSED.inc(free - now)
            await asyncio.sleep(free - now)


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
