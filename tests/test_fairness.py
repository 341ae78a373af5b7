"""Nobody starves anybody: one requestor's stalled transfers neither hold up another requestor's
control calls nor outlive the provider's idle timeout, and what one requestor holds is bounded."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import grpc
import pytest

from exeunit.domain.settings import ActivityLimits
from exeunit.v1.conventions import GIB
from exeunit.domain.resources import Resources
from exeunit.services import telemetry, transfers
from exeunit.services.fairness import IdleWatchdog
from exeunit.v1 import activity_pb2 as act
from exeunit.v1 import market_pb2 as mkt
from exeunit.v1 import transfer_pb2 as xfer
from tests.client import ContractClient
from tests.conftest import BASE_IMAGE, Daemons
from tests.waiting import until

LIMITS = ActivityLimits(transfers_per_activity=3, transfers_per_requestor=4, transfer_idle_seconds=60.0)
PROMPT = 10.0  # a control call that needs longer than this is stuck behind someone else's work


def stalled_upload(client: ContractClient, activity_id: str, release: asyncio.Event) -> grpc.aio.StreamUnaryCall:
    """An upload that sends its header and then nothing until `release` is set."""

    async def requests() -> AsyncIterator[xfer.UploadRequest]:
        yield xfer.UploadRequest(header=xfer.UploadHeader(activity_id=activity_id, path="/golem/input/f", size=10))
        await release.wait()

    return client.transfer.Upload(requests(), metadata=client.metadata)


OPEN: list[asyncio.Future] = []


async def probe(client: ContractClient, activity_id: str) -> grpc.aio.AioRpcError:
    """An upload that sends its header and ends: refused when the quota is full, else DATA_LOSS."""
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client.upload(activity_id, "/golem/input/probe", [], 10, sha256="")
    return err.value


async def refused_once_full(client: ContractClient, activity_id: str, release: asyncio.Event) -> grpc.aio.AioRpcError:
    """Opens stalled uploads until the provider refuses one more; the ones before it stay open."""
    for _ in range(50):
        err = await probe(client, activity_id)
        if err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
            return err
        assert err.code() == grpc.StatusCode.DATA_LOSS, err.details()
        OPEN.append(asyncio.ensure_future(stalled_upload(client, activity_id, release)))
        await asyncio.sleep(0.05)
    raise AssertionError("the provider never refused an upload")


async def test_stalled_transfers_of_one_requestor_leave_others_control_calls_prompt(daemons: Daemons) -> None:
    server = await daemons.start(limits=LIMITS, capacity=Resources(cpu_threads=8, memory_bytes=8 * GIB, storage_bytes=40 * GIB))
    address = f"127.0.0.1:{server.port}"
    release = asyncio.Event()
    async with ContractClient(address, "hostile-1") as h1, ContractClient(address, "hostile-2") as h2, \
            ContractClient(address, "victim") as victim:
        held = []
        for hostile in (h1, h2):
            first, second = await hostile.ready_activity(BASE_IMAGE), await hostile.ready_activity(BASE_IMAGE)
            err = await refused_once_full(hostile, first, release)
            assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert f"activity {first} already has 3 transfers in flight" in err.details()
            err = await refused_once_full(hostile, second, release)
            assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "requestor " in err.details() and "already has 4 transfers in flight" in err.details()
            held.append(first)
        # 8 uploads stand still, more than the event loop's default pool (6 threads here) has
        meta = victim.metadata
        offer = await victim.market.GetOffer(mkt.GetOfferRequest(), metadata=meta, timeout=PROMPT)
        assert offer.offer.total_cpu_threads == 8
        proposed = await victim.market.ProposeAgreement(
            mkt.ProposeAgreementRequest(demand=victim.demand(BASE_IMAGE)), metadata=meta, timeout=PROMPT
        )
        created = await victim.activity.CreateActivity(
            act.CreateActivityRequest(agreement_id=proposed.agreement.agreement_id), metadata=meta, timeout=PROMPT
        )
        activity_id = created.activity_id
        batch = await asyncio.wait_for(victim.run_batch(activity_id, [victim.deploy(), victim.start(), victim.run("/bin/true")]), PROMPT)
        assert batch.succeeded
        state = await victim.activity.GetActivityState(
            act.GetActivityStateRequest(activity_id=activity_id), metadata=meta, timeout=PROMPT
        )
        assert state.status.state == act.ACTIVITY_STATE_READY
        await victim.activity.DestroyActivity(act.DestroyActivityRequest(activity_id=activity_id), metadata=meta, timeout=PROMPT)
        release.set()  # the hostile uploads end without a trailer
        outcomes = await asyncio.gather(*OPEN, return_exceptions=True)
        codes = {o.code() for o in outcomes}
        assert grpc.StatusCode.DATA_LOSS in codes and codes <= {grpc.StatusCode.DATA_LOSS, grpc.StatusCode.RESOURCE_EXHAUSTED}


class _WatchedWatchdog(IdleWatchdog):
    """The download's watchdog, as the provider's, that also counts the downloads it gave up on."""

    fired = 0

    def __init__(self, seconds: float, on_idle: Callable[[], None]) -> None:
        def counted() -> None:
            _WatchedWatchdog.fired += 1
            on_idle()

        super().__init__(seconds, counted)


async def test_transfers_that_stand_still_are_cut(daemons: Daemons, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(transfers, "IdleWatchdog", _WatchedWatchdog)
    monkeypatch.setattr(_WatchedWatchdog, "fired", 0)
    server = await daemons.start(limits=ActivityLimits(transfer_idle_seconds=1.0))
    async with ContractClient(f"127.0.0.1:{server.port}", "slow") as client:
        activity_id = await client.ready_activity(BASE_IMAGE)
        release = asyncio.Event()
        with pytest.raises(grpc.aio.AioRpcError) as cut:
            await stalled_upload(client, activity_id, release)
        assert cut.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert cut.value.details() == "the upload to /golem/input/f stood still for 1s and was cut (--transfer-idle-seconds)"
        big = await client.run_batch(activity_id, [client.sh("head -c 67108864 /dev/zero > /golem/output/big")])
        assert big.succeeded
        unread = client.transfer.Download(xfer.DownloadRequest(activity_id=activity_id, path="/golem/output/big"),
                                          metadata=client.metadata)
        # the client reads nothing: the provider must give up on it (the client hears why when it reads on)
        await until(lambda: _WatchedWatchdog.fired >= 1, lambda: "the provider has not given up on a download "
                    f"that nobody reads for longer than its 1 s idle time ({_WatchedWatchdog.fired} cut)", timeout=15)
        with pytest.raises(grpc.aio.AioRpcError) as cut:
            async for _ in unread:
                pass
        assert cut.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert cut.value.details() == "the download of /golem/output/big stood still for 1s and was cut (--transfer-idle-seconds)"
        # the container is not left locked by the abandoned archive: a new download works at once
        header, chunks, _ = await client.download(activity_id, "/golem/output/big")
        assert header.size == 64 << 20 and sum(map(len, chunks)) == 64 << 20
        release.set()


async def test_only_the_last_finished_batches_are_kept(daemons: Daemons) -> None:
    """A service that runs commands for months does not keep every batch it ever ran."""
    server = await daemons.start(name="forgetful", limits=ActivityLimits(batches_kept=3))
    async with ContractClient(f"127.0.0.1:{server.port}", "r") as client:
        activity_id = await client.ready_activity(BASE_IMAGE)
        ids = []
        for n in range(5):
            batch_id = (await client.exec(activity_id, [client.run("/bin/echo", str(n))])).batch_id
            async for _ in client.events(activity_id, batch_id):
                pass
            ids.append(batch_id)
        for forgotten in ids[:2]:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await client.get_batch(activity_id, forgotten)
            assert err.value.code() == grpc.StatusCode.NOT_FOUND
        assert [(await client.get_batch(activity_id, b)).results[0].stdout for b in ids[2:]] == [b"2\n", b"3\n", b"4\n"]
        assert len(set(ids)) == 5  # ids are never reused


async def test_ended_activities_are_forgotten_and_their_agreement_goes_on(daemons: Daemons) -> None:
    server = await daemons.start(name="forgets-ended", ended_retention_seconds=0.2)
    async with ContractClient(f"127.0.0.1:{server.port}", "r") as client:
        agreement_id = await client.agreement(BASE_IMAGE)

        async def new_activity() -> str:
            request = act.CreateActivityRequest(agreement_id=agreement_id)
            return (await client.activity.CreateActivity(request, metadata=client.metadata)).activity_id

        first = await new_activity()
        await client.destroy(first)
        seen: list[str] = []

        async def forgotten() -> bool:
            try:
                seen[:] = [act.ActivityState.Name((await client.state(first)).state)]
            except grpc.aio.AioRpcError as err:
                seen[:] = [f"{err.code().name}: {err.details()}"]
                return err.code() == grpc.StatusCode.NOT_FOUND
            return False

        await until(forgotten, lambda: f"the ended activity is not forgotten (ended_retention_seconds=0.2): {seen}", timeout=10)
        second = await new_activity()  # the agreement still lists the forgotten one
        assert (await client.state(second)).state == act.ACTIVITY_STATE_NEW


def bulk_paused_seconds() -> float:
    return telemetry.REGISTRY.get_sample_value("exeunit_bulk_paused_seconds_total") or 0.0


async def test_bulk_output_yields_to_another_requestors_calls_and_arrives_whole(daemons: Daemons) -> None:
    server = await daemons.start()
    address = f"127.0.0.1:{server.port}"
    size = 48 << 20
    print_bulk = ("/usr/bin/head", "-c", str(size), "/dev/zero")
    async with ContractClient(address, "bulk") as bulk, ContractClient(address, "other") as other:
        bulk_activity = await bulk.ready_activity(BASE_IMAGE)
        before = bulk_paused_seconds()
        alone = await bulk.run_batch(bulk_activity, [bulk.run(*print_bulk)])
        assert len(alone.stdout()) == size
        assert bulk_paused_seconds() == before, "a requestor alone on the daemon was slowed down"

        other_activity = await other.ready_activity(BASE_IMAGE)
        done = asyncio.Event()

        async def round_trips() -> int:
            count = 0
            while not done.is_set():
                run = await asyncio.wait_for(other.run_batch(other_activity, [other.run("/bin/true")]), PROMPT)
                assert run.succeeded
                count += 1
            return count

        caller = asyncio.create_task(round_trips())
        shared = await bulk.run_batch(bulk_activity, [bulk.run(*print_bulk)])
        done.set()
        assert await caller > 0
        assert shared.stdout() == bytes(size)  # paced, and whole
        assert bulk_paused_seconds() > before, "bulk output did not yield while another requestor was served"
