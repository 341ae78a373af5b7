"""The pacer (exeunit.services.pacing): bulk data slows down while the event loop is late for
another requestor, never for a requestor alone, never for small pieces, and a requestor's streams
share one rate. On a real event loop, crowded by callbacks that hold it."""

from __future__ import annotations

import asyncio
import time

from exeunit.services.pacing import DECAY, MAX_SECONDS_PER_BYTE, SMALL_BYTES, Pacer

PIECE = 256 << 10


async def crowding(until: asyncio.Event, hold_seconds: float = 0.002) -> None:
    """Holds the loop for `hold_seconds` at every turn, as other work would, until `until` is set."""
    while not until.is_set():
        time.sleep(hold_seconds)
        await asyncio.sleep(0)


async def pieces(pacer: Pacer, requestor_id: str, count: int, size: int = PIECE) -> None:
    for _ in range(count):
        await pacer.admit(requestor_id, size)


async def test_a_requestor_alone_is_never_paced_however_late_the_loop() -> None:
    pacer = Pacer()
    stop = asyncio.Event()
    crowd = asyncio.create_task(crowding(stop))
    await pieces(pacer, "alone", 30)
    stop.set()
    await crowd
    assert pacer.seconds_per_byte == 0.0


async def test_bulk_slows_while_the_loop_is_late_for_another_requestor_and_recovers() -> None:
    pacer = Pacer()
    pacer.note_call("other")
    stop = asyncio.Event()
    crowd = asyncio.create_task(crowding(stop))
    await pieces(pacer, "bulk", 30)
    stop.set()
    await crowd
    crowded = pacer.seconds_per_byte
    assert crowded > 0.0
    assert crowded <= MAX_SECONDS_PER_BYTE
    pacer.note_call("other")  # still there, but the loop is on time now: the pace comes back
    await pieces(pacer, "bulk", 20)
    assert pacer.seconds_per_byte <= crowded * DECAY ** 10


async def test_another_requestor_that_left_no_longer_slows_bulk() -> None:
    pacer = Pacer(presence_seconds=0.05)
    pacer.note_call("other")
    await asyncio.sleep(0.1)
    pacer.seconds_per_byte = MAX_SECONDS_PER_BYTE
    loop = asyncio.get_running_loop()
    started = loop.time()
    await pacer.admit("bulk", 1 << 20)
    assert loop.time() - started < MAX_SECONDS_PER_BYTE * (1 << 20) / 2


async def test_small_pieces_never_wait() -> None:
    pacer = Pacer()
    pacer.note_call("other")
    pacer.seconds_per_byte = MAX_SECONDS_PER_BYTE
    admit = pacer.admit("bulk", SMALL_BYTES)
    try:
        admit.send(None)  # completes without suspending once
    except StopIteration:
        pass
    else:
        raise AssertionError("a small piece waited")


async def test_a_requestors_streams_share_one_rate() -> None:
    pacer = Pacer(target_delay=float("inf"))  # never late: the pace only decays from where it is set
    pacer.note_call("other")
    pacer.seconds_per_byte = 0.05 / (1 << 20)  # 50 ms per MiB
    loop = asyncio.get_running_loop()
    started = loop.time()
    await pacer.admit("one", 1 << 20)
    alone = loop.time() - started
    pacer.seconds_per_byte = 0.05 / (1 << 20)
    started = loop.time()
    await asyncio.gather(*(pacer.admit("many", 1 << 20) for _ in range(4)))
    together = loop.time() - started
    # four streams of one requestor wait one after another's share: about four times as long
    assert together >= 3 * alone * DECAY, (alone, together)
