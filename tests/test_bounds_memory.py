"""Bounds that never refuse a call but keep what one requestor makes the daemon hold in memory
flat: its activities' output (--output-memory-per-requestor-mib: the rest is on disk, and past
the replay window a reader that does not read holds the command up, as a full pipe would), and
the messages its networks relay through it (--relay-queue-mib: past it a relayed session is reset,
never a message cut)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import SimpleNamespace

import grpc
import pytest

from exeunit.services.relay import ITEM_OVERHEAD, RelayedFrame, RelayHub
from exeunit.v1 import activity_pb2 as act
from tests.client import ContractClient
from tests.conftest import BASE_IMAGE
from tests.daemon_process import Daemon
from tests.test_bounds import MIB, rss_mib
from tests.waiting import until

OUTPUT_MIB, ACTIVITIES = 36, 4  # each activity's output, held in memory up to 32 MiB without the pool
# What readers that do not read may cost the daemon: their streams' buffers (gRPC's, a journal read
# each), not their output (measured: 27 MiB; 144 MiB with no bound per requestor).
HELD_BOUND_MIB = 48
WINDOW_MIB = 40  # --replay-window-mib


@pytest.fixture
def daemon() -> Iterator[Daemon]:
    running = Daemon("--output-memory-kib", str(32 << 10), "--output-memory-per-requestor-mib", "1",
                     "--replay-window-mib", str(WINDOW_MIB), "--journal-mib-per-activity", "48", "--cpu-overcommit", "4")
    yield running
    running.stop()


def on_disk_mib(directory: Path) -> float:
    return sum(f.stat().st_size for f in directory.rglob("*") if f.is_file()) / MIB


async def stalled_reader(client: ContractClient, activity_id: str, mib: int) -> tuple[str, grpc.aio.UnaryStreamCall, int]:
    """A batch printing `mib` MiB and a reader of it that reads its first output, then nothing:
    the batch's id, the reader's call and the bytes it read."""
    batch_id = (await client.exec(activity_id, [client.run("/usr/bin/head", "-c", str(mib * MIB), "/dev/zero")])).batch_id
    call = client.activity.StreamBatchEvents(act.StreamBatchEventsRequest(activity_id=activity_id, batch_id=batch_id),
                                             metadata=client.metadata)
    while not (event := await call.read()).HasField("stdout"):
        pass
    return batch_id, call, len(event.stdout.data)


async def rest_of(call: grpc.aio.UnaryStreamCall) -> int:
    """Reads the stream to its end; the stdout bytes it carried."""
    return sum([len(event.stdout.data) async for event in call])


async def batch_state(client: ContractClient, activity_id: str, batch_id: str) -> int:
    return (await client.get_batch(activity_id, batch_id)).state


async def test_a_requestors_output_held_for_readers_that_do_not_read_stays_within_its_bound(daemon: Daemon) -> None:
    """Four activities each keep 32 MiB in memory for their readers (--output-memory-kib), but the
    requestor's together stay within 1 MiB (--output-memory-per-requestor-mib): the rest is read
    back from the journals. Readers that stand still cost the daemon no memory; past the replay
    window they hold their command up (it waits, as on a full pipe) until they read, and then get
    everything, whole."""
    async with ContractClient(f"127.0.0.1:{daemon.port}", "r") as client:
        activities = [await client.ready_activity(BASE_IMAGE) for _ in range(ACTIVITIES)]
        baseline = rss_mib(daemon)
        stalled = [await stalled_reader(client, a, OUTPUT_MIB) for a in activities]
        deadline = time.monotonic() + 120
        for activity_id, (batch_id, _, _) in zip(activities, stalled):  # none waits: all fits in the window
            while await batch_state(client, activity_id, batch_id) != act.BATCH_STATE_SUCCEEDED:
                assert time.monotonic() < deadline, "a batch whose output fits in the replay window waited"
                await asyncio.sleep(0.2)
        held = rss_mib(daemon) - baseline
        assert held < HELD_BOUND_MIB, f"the daemon grew by {held:.0f} MiB for {ACTIVITIES} readers that do not read"

        for _, earlier, read in stalled:  # whole, from disk, once read
            assert read + await rest_of(earlier) == OUTPUT_MIB * MIB

        # Past the replay window the command waits for its reader, and the disk stays within the window.
        batch_id, call, read = await stalled_reader(client, activities[0], 120)
        journal = daemon.state_dir / "journals" / activities[0] / batch_id
        sizes: list[float] = []

        def stopped_at_the_window() -> bool:  # within an output chunk of it, and no longer growing
            sizes.append(on_disk_mib(journal))
            return len(sizes) > 1 and sizes[-1] == sizes[-2] >= WINDOW_MIB - 1

        await until(stopped_at_the_window, lambda: f"the journal did not stop at the {WINDOW_MIB} MiB window; "
                    f"its last sizes, MiB: {[round(size, 1) for size in sizes[-5:]]}", timeout=60, every=0.2)
        state = await batch_state(client, activities[0], batch_id)
        assert state == act.BATCH_STATE_RUNNING, \
            f"the batch is {act.BatchState.Name(state)} with its reader stalled and {on_disk_mib(journal):.1f} MiB journaled"
        assert on_disk_mib(journal) <= WINDOW_MIB + 8
        held = rss_mib(daemon) - baseline
        assert held < HELD_BOUND_MIB, f"the daemon grew by {held:.0f} MiB for a reader that does not read"
        assert read + await rest_of(call) == 120 * MIB  # whole, once read
        assert await batch_state(client, activities[0], batch_id) == act.BATCH_STATE_SUCCEEDED

        # A batch forgotten past --journal-mib-per-activity tells a reader still behind why.
        batch_id, call, read = await stalled_reader(client, activities[1], OUTPUT_MIB)
        states: list[int] = []

        async def succeeded() -> bool:
            states[:] = [await batch_state(client, activities[1], batch_id)]
            return states[0] == act.BATCH_STATE_SUCCEEDED

        await until(succeeded, lambda: f"a batch whose output fits in the replay window is {act.BatchState.Name(states[0])}",
                    timeout=120, every=0.2)
        assert (await client.run_batch(activities[1], [client.run("/usr/bin/head", "-c", str(OUTPUT_MIB * MIB),
                                                                  "/dev/zero")])).succeeded
        with pytest.raises(grpc.aio.AioRpcError) as gone:
            await rest_of(call)
        assert gone.value.code() == grpc.StatusCode.OUT_OF_RANGE
        assert f"batch {batch_id!r} was forgotten" in gone.value.details()
        assert "(--journal-mib-per-activity)" in gone.value.details(), gone.value.details()


class _Overlay:
    def __init__(self) -> None:
        self.lost: list[tuple[str, str]] = []

    def relay_lost(self, wire_id: str, peer: str) -> None:
        self.lost.append((wire_id, peer))


async def test_relayed_messages_past_the_requestors_queue_reset_the_session_naming_the_bound(
        caplog: pytest.LogCaptureFixture) -> None:
    """A requestor that does not read its RelayFrames stream holds at most --relay-queue-mib of
    the overlay's messages; the next is refused back to the overlay whole (its session starts
    afresh: one notice, however many follow), and the operator's log names the flag."""
    network = SimpleNamespace(requestor_id="r", network_id="n")
    networks = SimpleNamespace(overlay=_Overlay(), by_wire_id=lambda wire_id: network)
    hub = RelayHub(networks, queue_bytes=MIB)  # type: ignore[arg-type]
    hub.bind(asyncio.get_running_loop())
    release = asyncio.Event()

    async def incoming() -> AsyncIterator[RelayedFrame]:
        await release.wait()
        return
        yield

    stream = hub.stream("r", incoming())
    reading = asyncio.ensure_future(anext(stream))
    message = bytes(64 << 10)
    hub.from_agent("wire", "peer", message)
    assert (await reading).sealed == message  # taken by the stream, which reads nothing more
    with caplog.at_level(logging.WARNING, logger="exeunit.services.relay"):
        for _ in range(40):
            hub.from_agent("wire", "peer", message)
        await asyncio.sleep(0)  # one turn: the loop runs the 40 callbacks from_agent queued, in order, before this task
    fit = MIB // (len(message) + ITEM_OVERHEAD)
    assert hub.queued_bytes() == {"r": fit * (len(message) + ITEM_OVERHEAD)}
    assert hub.refused == 40 - fit and networks.overlay.lost == [("wire", "peer")]
    assert sum("(raise --relay-queue-mib)" in r.getMessage() for r in caplog.records) == 1
    for _ in range(fit):  # once read, the queue takes messages again
        assert (await anext(stream)).sealed == message
    hub.from_agent("wire", "peer", message)
    assert (await anext(stream)).sealed == message and hub.refused == 40 - fit
    release.set()
    await stream.aclose()
