"""What a requestor can make the daemon hold is bounded while its activity lives, not only after:
output beyond a small in-memory tail is on disk, results leave memory once their batch finished,
journals on disk stay within their budget, and queued batches are counted."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import grpc
import psutil
import pytest

from exeunit.v1 import activity_pb2 as act
from exeunit.v1 import market_pb2 as mkt
from tests.client import ContractClient
from tests.conftest import BASE_IMAGE
from tests.daemon_process import Daemon

MIB = 1 << 20
# What the daemon may grow by, whatever one activity prints: its output memory (1 MiB by
# default), one running batch's results (3 MiB at most), buffers of gRPC and of the allocator.
GROWTH_BOUND_MIB = 64


def rss_mib(daemon: Daemon) -> float:
    return psutil.Process(daemon.process.pid).memory_info().rss / MIB


def journal_mib(home: Path) -> float:
    return sum(f.stat().st_size for f in (home / "journals").rglob("*") if f.is_file()) / MIB


@pytest.fixture
def daemon() -> Iterator[Daemon]:
    running = Daemon("--journal-mib-per-activity", "200")
    yield running
    running.stop()


async def test_kept_output_does_not_grow_the_daemon_while_the_activity_lives(daemon: Daemon) -> None:
    """40 batches of 30 MiB each, and one of 200 commands printing 1 MiB each, on one live
    activity: memory stays flat (it grew by 1.2 GiB before), the disk within its budget, and the
    last 30 MiB batch is still readable whole, from the start, from disk."""
    async with ContractClient(f"127.0.0.1:{daemon.port}", "r") as client:
        activity_id = await client.ready_activity(BASE_IMAGE)
        baseline = rss_mib(daemon)
        print_30_mib = client.run("/usr/bin/head", "-c", str(30 * MIB), "/dev/zero")
        peak = baseline
        for _ in range(40):
            last = await client.run_batch(activity_id, [print_30_mib])
            assert last.succeeded and sum(len(e.stdout.data) for e in last.events) == 30 * MIB
            peak = max(peak, rss_mib(daemon))
        many = [client.run("/usr/bin/head", "-c", str(MIB), "/dev/zero") for _ in range(200)]
        run = await client.run_batch(activity_id, many)
        assert run.succeeded and sum(len(e.stdout.data) for e in run.events) == 200 * MIB
        peak = max(peak, rss_mib(daemon))
        assert peak - baseline < GROWTH_BOUND_MIB, f"the daemon grew by {peak - baseline:.0f} MiB"
        assert journal_mib(daemon.state_dir) <= 200 + 8
        again = [e async for e in client.events(activity_id, last.batch_id)]  # from disk, whole
        assert [e.sequence for e in again] == [e.sequence for e in last.events]
        assert b"".join(e.stdout.data for e in again) == bytes(30 * MIB)
        results = await client.get_batch(activity_id, run.batch_id)
        kept = sum(len(r.stdout) for r in results.results)
        assert kept == 3 * MIB and results.results[-1].stdout_truncated  # what one response carries
        assert state_of(await client.state(activity_id)) == "Ready"


def state_of(status: act.ActivityStatus) -> str:
    return act.ActivityState.Name(status.state).removeprefix("ACTIVITY_STATE_").capitalize()


async def test_batches_queued_past_the_bound_are_refused_naming_it(daemon: Daemon) -> None:
    async with ContractClient(f"127.0.0.1:{daemon.port}", "r") as client:
        activity_id = await client.ready_activity(BASE_IMAGE)
        sleeper = [client.run("/bin/sleep", "30")]
        for _ in range(64):
            await client.exec(activity_id, sleeper)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await client.exec(activity_id, sleeper)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "(--batches-queued)" in (refused.value.details() or "")
        async with ContractClient(f"127.0.0.1:{daemon.port}", "another") as other:  # nobody else is affected
            other_activity = await other.ready_activity(BASE_IMAGE)
            run = await other.run_batch(other_activity, [other.run("/bin/echo", "fine")])
            assert run.stdout() == b"fine\n"
        await asyncio.wait_for(client.destroy(activity_id), 60)


async def test_a_batch_id_runs_once_even_after_its_batch_was_forgotten_and_the_daemon_restarted() -> None:
    daemon = Daemon("--batches-kept", "2")
    try:
        async with ContractClient(f"127.0.0.1:{daemon.port}", "r") as client:
            activity_id = await client.ready_activity(BASE_IMAGE)
            echo = [client.run("/bin/echo", "once")]
            await client.exec(activity_id, echo, batch_id="only-once")
            for _ in range(4):  # the batch is forgotten after two newer ones finished
                await client.run_batch(activity_id, [client.run("/bin/true")])
            with pytest.raises(grpc.aio.AioRpcError) as gone:
                await client.get_batch(activity_id, "only-once")
            assert gone.value.code() == grpc.StatusCode.NOT_FOUND
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await client.exec(activity_id, echo, batch_id="only-once")
            assert refused.value.code() == grpc.StatusCode.ALREADY_EXISTS
            assert "already ran" in (refused.value.details() or "")
    finally:
        daemon.process.kill()
        daemon.process.wait()
    again = Daemon("--batches-kept", "2", state_dir=daemon.state_dir)
    try:
        async with ContractClient(f"127.0.0.1:{again.port}", "r") as client:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await client.exec(activity_id, echo, batch_id="only-once")
            assert refused.value.code() == grpc.StatusCode.ALREADY_EXISTS
            run = await client.run_batch(activity_id, [client.run("/bin/echo", "new ids run")])
            assert run.stdout() == b"new ids run\n"
    finally:
        again.own_home = True  # the first daemon's home: removed with this one
        again.stop()


async def test_streams_past_the_requestors_bound_are_refused_naming_it() -> None:
    daemon = Daemon("--streams-per-requestor", "3", "--image-fetches-per-requestor", "5")
    try:
        async with ContractClient(f"127.0.0.1:{daemon.port}", "r") as client:
            offer = (await client.market.GetOffer(mkt.GetOfferRequest(), metadata=client.metadata)).offer
            assert (offer.limits.streams_per_requestor, offer.limits.image_fetches_per_requestor) == (3, 5)
            activity_id = await client.ready_activity(BASE_IMAGE)
            request = act.WatchActivityRequest(activity_id=activity_id)
            watches = [client.activity.WatchActivity(request, metadata=client.metadata) for _ in range(3)]
            for watch in watches:
                assert (await watch.read()).activity_id == activity_id  # open, each holding a slot
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await client.activity.WatchActivity(request, metadata=client.metadata).read()
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "(--streams-per-requestor)" in (refused.value.details() or "")
            async with ContractClient(f"127.0.0.1:{daemon.port}", "another") as other:  # nobody else is affected
                other_activity = await other.ready_activity(BASE_IMAGE)
                assert (await other.run_batch(other_activity, [other.run("/bin/true")])).succeeded
            watches[0].cancel()
            for _ in range(100):  # until the daemon has seen the cancel: a slot comes back
                fourth = client.activity.WatchActivity(request, metadata=client.metadata)
                try:
                    assert (await fourth.read()).activity_id == activity_id
                    break
                except grpc.aio.AioRpcError as exc:
                    assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                    await asyncio.sleep(0.05)
            else:
                pytest.fail("the cancelled watch's slot never came back")
            for watch in (*watches[1:], fourth):
                watch.cancel()
    finally:
        daemon.stop()
