"""What a requestor can make the daemon hold is bounded while its activity lives, not only after:
output beyond a small in-memory tail is on disk, results leave memory once their batch finished,
journals on disk stay within their budget, and queued batches are counted."""

from __future__ import annotations

import asyncio
import http.server
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import psutil
import pytest

from exeunit.v1 import activity_pb2 as act
from exeunit.v1 import market_pb2 as mkt
from exeunit.v1 import network_pb2 as net
from exeunit.v1 import transfer_pb2 as xfer
from tests.client import ContractClient
from tests.conftest import BASE_IMAGE
from tests.daemon_process import Daemon

MIB = 1 << 20
# What the daemon may grow by, whatever one activity prints: its output memory (4 MiB by
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


# Every bound a flag sets, small, on one daemon: each test below drives one to its refusal.
LIMITED = ("--tunnels-per-activity", "2", "--tunnels-per-requestor", "3", "--transfers-per-activity", "2",
           "--transfers-per-requestor", "3", "--networks-per-requestor", "2", "--peers-per-network", "2",
           "--batches-kept", "1", "--batch-ids-remembered", "3", "--image-fetches-per-requestor", "1",
           "--allow-private-image-hosts", "--relay-queue-mib", "3", "--overlay-macs-per-network", "7",
           "--pids-limit", "99", "--transfer-idle-seconds", "30", "--output-memory-kib", "512",
           "--output-memory-per-requestor-mib", "5", "--journal-mib-per-activity", "48", "--max-image-gib", "1",
           "--forget-ended-after", "600", "--cpu-overcommit", "8")
# Holds every connection it accepts (a tunnel stays open until the test lets it go).
HOLDER = ("import socket\ns = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
          "s.bind(('127.0.0.1', 9000)); s.listen(64); held = []\nwhile True: held.append(s.accept()[0])\n")


@pytest.fixture(scope="module")
def limited() -> Iterator[Daemon]:
    running = Daemon(*LIMITED)
    yield running
    running.stop()


def refused(details: str, flag: str) -> bool:
    """Whether a refusal names the flag that would lift it, as "(--flag)" or "(--flag, ...)"."""
    return f"({flag})" in details or f"({flag}," in details


async def test_every_bound_flag_is_in_the_offer(limited: Daemon) -> None:
    async with ContractClient(f"127.0.0.1:{limited.port}", "r") as client:
        offer = (await client.market.GetOffer(mkt.GetOfferRequest(), metadata=client.metadata)).offer
    l = offer.limits
    assert (l.tunnels_per_activity, l.tunnels_per_requestor, l.transfers_per_activity, l.transfers_per_requestor,
            l.networks_per_requestor, l.peers_per_network, l.batches_kept, l.batch_ids_remembered,
            l.image_fetches_per_requestor, l.relay_queue_bytes, l.macs_per_network, l.pids_limit,
            l.transfer_idle_timeout.seconds, l.output_memory_bytes, l.output_memory_per_requestor_bytes,
            l.journal_bytes_per_activity, l.image_bytes, l.ended_retention.seconds) == (
        2, 3, 2, 3, 2, 2, 1, 3, 1, 3 * MIB, 7, 99, 30, 512 << 10, 5 * MIB, 48 * MIB, 1 << 30, 600)
    assert (l.batches_queued, l.streams_per_requestor, l.replay_window_bytes, l.result_output_bytes) == (
        64, 256, 32 * MIB, 1 << 20)  # the defaults
    if offer.overlay_port:  # the overlay agent learns as many MACs as the flag says
        agents = [p.cmdline() for p in psutil.Process(limited.process.pid).children(recursive=True)]
        assert any("--macs-per-network" in a and a[a.index("--macs-per-network") + 1] == "7" for a in agents), agents


async def held_open(client: ContractClient, activity_id: str, release: asyncio.Event) -> grpc.aio.StreamStreamCall:
    """A tunnel to the activity's port 9000 that stays open until `release`; returns it opened."""

    async def requests() -> AsyncIterator[act.TunnelRequest]:
        yield act.TunnelRequest(open=act.TunnelOpen(activity_id=activity_id, port=9000))
        await release.wait()

    call = client.activity.Tunnel(requests(), metadata=client.metadata)
    assert (await call.read()).WhichOneof("part") == "opened"
    return call


async def tunnel_refusal(client: ContractClient, activity_id: str) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as refusal:
        await held_open(client, activity_id, asyncio.Event())
    return refusal.value


async def holding_activity(client: ContractClient) -> str:
    activity_id = await client.ready_activity(BASE_IMAGE)
    wait = "import socket, time\nfor _ in range(100):\n    try: socket.create_connection(('127.0.0.1', 9000)); break\n" \
           "    except OSError: time.sleep(0.1)\n"
    run = await client.run_batch(activity_id, [client.sh(
        f"python3 -c \"$HOLD\" >/dev/null 2>&1 & python3 -c \"$WAIT\"", env={"HOLD": HOLDER, "WAIT": wait})])
    assert run.succeeded, run.finished
    return activity_id


async def test_tunnels_past_the_bounds_are_refused_naming_them(limited: Daemon) -> None:
    release = asyncio.Event()
    async with ContractClient(f"127.0.0.1:{limited.port}", "tunnels") as client:
        first, second = await holding_activity(client), await holding_activity(client)
        held = [await held_open(client, first, release) for _ in range(2)]
        refusal = await tunnel_refusal(client, first)
        assert refusal.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert refused(refusal.details(), "--tunnels-per-activity"), refusal.details()
        held.append(await held_open(client, second, release))  # the requestor's third
        refusal = await tunnel_refusal(client, second)
        assert refusal.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert refused(refusal.details(), "--tunnels-per-requestor"), refusal.details()
        release.set()
        for call in held:
            call.cancel()
        for _ in range(100):  # the slots come back once the daemon saw the tunnels end
            try:
                (await held_open(client, second, asyncio.Event())).cancel()
                break
            except grpc.aio.AioRpcError:
                await asyncio.sleep(0.05)
        else:
            pytest.fail("the ended tunnels' slots never came back")


async def test_transfers_past_the_bounds_are_refused_naming_them(limited: Daemon) -> None:
    release = asyncio.Event()
    async with ContractClient(f"127.0.0.1:{limited.port}", "transfers") as client:
        first, second = await client.ready_activity(BASE_IMAGE), await client.ready_activity(BASE_IMAGE)

        def stalled(activity_id: str) -> asyncio.Future[object]:
            async def requests() -> AsyncIterator[xfer.UploadRequest]:
                yield xfer.UploadRequest(header=xfer.UploadHeader(activity_id=activity_id, path="/golem/input/x",
                                                                  size=10))
                await release.wait()
            return asyncio.ensure_future(client.transfer.Upload(requests(), metadata=client.metadata))

        async def holding(count: int) -> None:
            """Waits until the daemon has given `count` stalled uploads their slots (its log says so):
            a probe sent before that could take a slot first and get a stalled one refused instead."""
            for _ in range(200):
                started = [line for line in limited.lines[before:] if "event=upload_started" in line]
                if sum("path=/golem/input/x" in line for line in started) >= count:
                    return
                if ended := [h for h in held if h.done()]:
                    pytest.fail(f"a stalled upload ended before the bound was reached: {ended[0].exception()!r}")
                await asyncio.sleep(0.05)
            pytest.fail(f"the daemon never started {count} stalled uploads")

        async def refusal(activity_id: str) -> grpc.aio.AioRpcError:
            with pytest.raises(grpc.aio.AioRpcError) as refused_upload:
                await client.upload(activity_id, "/golem/input/y", [], 0)  # an empty file: only a slot would let it through
            return refused_upload.value

        before = len(limited.lines)
        held = [stalled(first), stalled(first)]
        await holding(2)
        err = await refusal(first)
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and refused(err.details(), "--transfers-per-activity")
        held.append(stalled(second))
        await holding(3)
        err = await refusal(second)
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and refused(err.details(), "--transfers-per-requestor")
        for call in held:
            call.cancel()
        release.set()


async def test_networks_and_their_peers_past_the_bounds_are_refused_naming_them(limited: Daemon) -> None:
    async with ContractClient(f"127.0.0.1:{limited.port}", "networks") as client:
        offer = (await client.market.GetOffer(mkt.GetOfferRequest(), metadata=client.metadata)).offer
        await client.agreement(BASE_IMAGE)  # a requestor's networks live while it has an agreement here
        peers = [net.NetworkPeer(provider_id=f"0x{i:040x}", endpoint=f"192.0.2.{i}:7000") for i in range(1, 4)]

        async def create(network_id: str, peers: list[net.NetworkPeer]) -> net.NetworkInfo:
            request = net.CreateNetworkRequest(network_id=network_id, address="10.99.0.0/24",
                                               spans_providers=bool(offer.overlay_port), peers=peers)
            return await client.network.CreateNetwork(request, metadata=client.metadata)

        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await create("too-many-peers", peers)
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert refused(caught.value.details(), "--peers-per-network"), caught.value.details()
        await create("n1", peers[:2])
        if offer.overlay_port:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await client.network.SetNetworkPeers(net.SetNetworkPeersRequest(network_id="n1", peers=peers),
                                                     metadata=client.metadata)
            assert refused(caught.value.details(), "--peers-per-network"), caught.value.details()
        await create("n2", [])
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await create("n3", [])
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert refused(caught.value.details(), "--networks-per-requestor"), caught.value.details()


async def test_an_activity_runs_as_many_batches_as_it_remembers_ids_of(limited: Daemon) -> None:
    async with ContractClient(f"127.0.0.1:{limited.port}", "batch-ids") as client:
        activity_id = await client.ready_activity(BASE_IMAGE)  # its deploy and start: a batch too
        ran = 1
        with pytest.raises(grpc.aio.AioRpcError) as caught:  # noqa: PT012
            for _ in range(10):
                assert (await client.run_batch(activity_id, [client.run("/bin/true")])).succeeded
                ran += 1
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert refused(caught.value.details(), "--batch-ids-remembered"), caught.value.details()
        assert ran == 1 + 3  # the one kept (--batches-kept) and the three remembered


class _Stalled(http.server.BaseHTTPRequestHandler):
    """An image url that answers and then sends nothing for as long as the fetch waits."""

    asked = threading.Event()

    def do_GET(self) -> None:
        self.send_response(200)
        self.end_headers()
        self.wfile.flush()
        _Stalled.asked.set()
        time.sleep(20)  # the workload: a source that stands still, longer than the fetch waits for it

    def log_message(self, format: str, *args: object) -> None:
        pass


async def test_image_fetches_past_the_bound_are_refused_naming_it(limited: Daemon) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Stalled)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url, image = f"http://127.0.0.1:{server.server_port}/image.tar", "sha256:" + "5" * 64
    try:
        async with ContractClient(f"127.0.0.1:{limited.port}", "fetches") as client:
            fetching = await client.new_activity(url=url, hash=image)
            await client.exec(fetching, [client.deploy()])
            assert await asyncio.to_thread(_Stalled.asked.wait, 30)
            second = await client.new_activity(url=url, hash=image)
            run = await client.run_batch(second, [client.deploy()])
            assert not run.succeeded  # a deploy's refusal is its command's failure
            assert refused(run.finished[0].message, "--image-fetches-per-requestor"), run.finished[0].message
            await client.destroy(fetching)
    finally:
        server.shutdown()
        server.server_close()
