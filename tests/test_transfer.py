"""Uploads and downloads: streamed, checksummed, confined to the image's volumes."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import Iterator

import grpc
import pytest

from exeunit.v1 import activity_pb2 as act
from exeunit.v1 import transfer_pb2 as xfer
from requestor.client import ProviderClient
from tests.client import CHUNK, ContractClient
from tests.daemon_process import Daemon


async def test_upload_then_download_round_trip(client: ContractClient, ready: str) -> None:
    data = os.urandom(3 * CHUNK + 12345)
    response = await client.upload_bytes(ready, "/golem/input/data.bin", data)
    assert response.size == len(data)
    assert response.sha256 == hashlib.sha256(data).hexdigest()
    inside = await client.run_batch(ready, [client.run("/usr/bin/sha256sum", "/golem/input/data.bin")])
    assert inside.stdout().split()[0].decode() == response.sha256
    header, chunks, trailer = await client.download(ready, "/golem/input/data.bin")
    assert header.size == len(data)
    assert b"".join(chunks) == data
    assert trailer == hashlib.sha256(data).hexdigest()


async def test_upload_creates_missing_directories_and_sets_mode(client: ContractClient, ready: str) -> None:
    await client.upload_bytes(ready, "/golem/work/a/b/c.txt", b"nested\n")
    run = await client.run_batch(ready, [client.sh("cat /golem/work/a/b/c.txt; stat -c %a /golem/work/a/b/c.txt")])
    assert run.stdout() == b"nested\n644\n"


async def test_empty_file_round_trip(client: ContractClient, ready: str) -> None:
    await client.upload_bytes(ready, "/golem/output/empty", b"")
    header, chunks, trailer = await client.download(ready, "/golem/output/empty")
    assert (header.size, b"".join(chunks), trailer) == (0, b"", hashlib.sha256(b"").hexdigest())


async def test_wrong_checksum_is_data_loss_and_leaves_an_empty_file(client: ContractClient, ready: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client.upload(ready, "/golem/input/bad", [b"hello"], 5, sha256="0" * 64)
    assert err.value.code() == grpc.StatusCode.DATA_LOSS
    assert "checksum mismatch" in err.value.details()
    run = await client.run_batch(ready, [client.run("/usr/bin/stat", "-c", "%s", "/golem/input/bad")])
    assert run.stdout() == b"0\n"


async def test_size_mismatch_is_data_loss(client: ContractClient, ready: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client.upload(ready, "/golem/input/short", [b"abc"], 10)
    assert err.value.code() == grpc.StatusCode.DATA_LOSS
    assert "received 3 bytes, the header declared 10" in err.value.details()


@pytest.mark.parametrize(
    ("path", "code", "fragment"),
    [
        ("/golem/input/../../etc/passwd", grpc.StatusCode.INVALID_ARGUMENT, "contains '..'"),
        ("relative/file", grpc.StatusCode.INVALID_ARGUMENT, "must be absolute"),
        ("/etc/passwd", grpc.StatusCode.FAILED_PRECONDITION, "only the image's volumes can be transferred"),
        ("/golem/inputs/x", grpc.StatusCode.FAILED_PRECONDITION, "/golem/input, /golem/output, /golem/work"),
        ("/golem/input", grpc.StatusCode.INVALID_ARGUMENT, "volume's root directory"),
    ],
)
async def test_paths_outside_the_volumes_are_refused(client: ContractClient, ready: str, path: str, code, fragment: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as up:
        await client.upload_bytes(ready, path, b"x")
    assert up.value.code() == code and fragment in up.value.details()
    with pytest.raises(grpc.aio.AioRpcError) as down:
        await client.download(ready, path)
    assert down.value.code() == code and fragment in down.value.details()


async def test_symlink_out_of_a_volume_cannot_be_written_through(client: ContractClient, ready: str) -> None:
    await client.run_batch(ready, [client.run("/bin/ln", "-s", "/etc", "/golem/work/etc")])
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client.upload_bytes(ready, "/golem/work/etc/evil", b"x")
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert err.value.details() == (
        "/golem/work/etc is a symbolic link; transfers do not follow links, which could lead out of the volume"
    )
    await client.run_batch(ready, [client.run("/bin/ln", "-s", "/etc/passwd", "/golem/work/passwd")])
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client.download(ready, "/golem/work/passwd")
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "is a symbolic link" in err.value.details()


async def test_a_container_swapping_links_under_transfers_never_moves_them(client: ContractClient, ready: str) -> None:
    """The container flips /golem/work/d between a directory and a link to /etc as fast as it can,
    while transfers go through d: none may read or write outside the volume, whatever the timing."""
    swapper = client.sh(
        "end=$(($(date +%s)+10)); while [ $(date +%s) -lt $end ]; do "
        "mkdir -p /golem/work/d; echo inside > /golem/work/d/shadow; rm -rf /golem/work/d; "
        "ln -s /etc /golem/work/d; rm -f /golem/work/d; done"
    )
    await client.exec(ready, [swapper])
    host_shadow = open("/etc/shadow", "rb").read() if os.path.exists("/etc/shadow") else b"no-shadow"
    outcomes = set()
    for attempt in range(60):
        try:
            _, chunks, _ = await client.download(ready, "/golem/work/d/shadow")
            data = b"".join(chunks)
            assert data in (b"inside\n", b""), data[:40]
            assert data != host_shadow
            outcomes.add("read inside")
        except grpc.aio.AioRpcError as err:
            assert err.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION), err.details()
            outcomes.add(err.code().name)
        try:
            await client.upload_bytes(ready, f"/golem/work/d/planted-{attempt}", b"x")
            outcomes.add("written inside")
        except grpc.aio.AioRpcError as err:
            assert err.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION), err.details()
    assert not any(name.startswith("planted-") for name in os.listdir("/etc"))
    check = await client.run_batch(ready, [client.sh("ls /etc | grep -c planted- || true")])
    assert check.stdout().strip() == b"0"
    assert "FAILED_PRECONDITION" in outcomes or "NOT_FOUND" in outcomes
    await client.activity.DestroyActivity(act.DestroyActivityRequest(activity_id=ready), metadata=client.metadata)



async def test_download_of_missing_file_and_directory(client: ContractClient, ready: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await client.download(ready, "/golem/output/nothing-here")
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    assert "/golem/output/nothing-here does not exist" in missing.value.details()
    await client.run_batch(ready, [client.run("/bin/mkdir", "/golem/output/dir")])
    with pytest.raises(grpc.aio.AioRpcError) as directory:
        await client.download(ready, "/golem/output/dir")
    assert directory.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "not a regular file" in directory.value.details()


async def test_transfers_need_a_ready_activity(client: ContractClient) -> None:
    activity_id = await client.new_activity("exeunit-base:latest")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client.upload_bytes(activity_id, "/golem/input/x", b"x")
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "needs the activity Ready, but it is New" in err.value.details()


async def test_upload_must_start_with_a_header(client: ContractClient, ready: str) -> None:
    async def chunks_only():
        yield xfer.UploadRequest(chunk=b"data")

    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client.transfer.Upload(chunks_only(), metadata=client.metadata)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_256_mib_round_trip(client: ContractClient, ready: str) -> None:
    size = 256 << 20
    block = os.urandom(CHUNK)
    chunks = (block[i % 7 :] + block[: i % 7] for i in range(size // CHUNK))  # distinct, cheap chunks
    expected = hashlib.sha256()
    sent = []

    def tracked():
        for chunk in chunks:
            expected.update(chunk)
            yield chunk

    response = await client.upload(client_activity := ready, "/golem/work/big.bin", tracked(), size)
    assert response.size == size and response.sha256 == expected.hexdigest()
    digest, total = hashlib.sha256(), 0
    async for part in client.transfer.Download(
        xfer.DownloadRequest(activity_id=client_activity, path="/golem/work/big.bin"), metadata=client.metadata
    ):
        if part.WhichOneof("part") == "chunk":
            digest.update(part.chunk)
            total += len(part.chunk)
        elif part.WhichOneof("part") == "trailer":
            sent.append(part.trailer.sha256)
    assert total == size
    assert digest.hexdigest() == expected.hexdigest() == sent[0]


@pytest.fixture
def own_process_daemon(engine) -> Iterator[str]:
    """A daemon in its own process; returns its address. Client and server sharing one event loop
    would make a request stream wait on another call in ways no real client does."""
    daemon = Daemon("--name", "own-process-provider")
    yield f"127.0.0.1:{daemon.port}"
    assert daemon.stop() == 0  # SIGTERM, and its home goes


async def ready_activity(client: ContractClient, *extra: act.Command) -> str:
    activity_id = await client.new_activity("exeunit-base:latest")
    assert (await client.run_batch(activity_id, [client.deploy(), client.start(), *extra])).succeeded
    return activity_id


async def test_upload_into_an_activity_destroyed_midway_fails_instead_of_hanging(own_process_daemon: str) -> None:
    address = own_process_daemon
    async with ContractClient(address, "requestor-1") as client:
        activity_id = await ready_activity(client)
        block = os.urandom(CHUNK)

        async def requests():
            header = xfer.UploadHeader(activity_id=activity_id, path="/golem/work/cut.bin", size=64 * CHUNK)
            yield xfer.UploadRequest(header=header)
            for index in range(64):
                if index == 4:  # the container goes away under the upload; the client pauses meanwhile
                    async with ContractClient(address, "requestor-1") as other:
                        await asyncio.wait_for(other.destroy(activity_id), 30)
                yield xfer.UploadRequest(chunk=block)
            yield xfer.UploadRequest(trailer=xfer.UploadTrailer(sha256="0" * 64))

        call = client.transfer.Upload(requests(), metadata=client.metadata)
        with pytest.raises(grpc.aio.AioRpcError):
            await asyncio.wait_for(call, 60)
        # A destroy that hung would time out in `requests` and cancel the call locally (CANCELLED).
        # The daemon ends the upload with FAILED_PRECONDITION; grpc's client may instead report
        # INTERNAL when that end races with its own next write of the request stream.
        code, details = await call.code(), await call.details()
        assert code in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.INTERNAL), (code, details)
        if code == grpc.StatusCode.FAILED_PRECONDITION:
            assert "was cut: the activity ended" in details


async def test_a_stalled_download_does_not_hold_up_destroy(own_process_daemon: str) -> None:
    address = own_process_daemon
    async with ContractClient(address, "requestor-1") as client:
        activity_id = await ready_activity(client, client.sh("head -c 268435456 /dev/zero > /golem/work/big"))
        stream = client.transfer.Download(
            xfer.DownloadRequest(activity_id=activity_id, path="/golem/work/big"), metadata=client.metadata
        )
        first = await anext(aiter(stream))
        assert first.WhichOneof("part") == "header"  # ...and then the client stops reading
        async with ContractClient(address, "requestor-1") as other:
            status = await asyncio.wait_for(other.destroy(activity_id), 30)
        assert status.state == act.ACTIVITY_STATE_TERMINATED
        stream.cancel()


@pytest.mark.slow
async def test_a_file_over_8_gib_downloads_whole_through_the_requestor(client: ContractClient, ready: str) -> None:
    """Tar headers stop at 8 GiB without PAX; nothing here goes through tar, and the requestor
    checks the size and the checksum."""
    size = (8 << 30) + 1
    run = await client.run_batch(ready, [client.run("/usr/bin/truncate", "-s", str(size), "/golem/work/huge.bin")])
    assert run.succeeded, run.finished
    provider = ProviderClient(client.address, client.identity)
    try:
        received, digest = 0, hashlib.sha256()
        async for chunk in provider.download(ready, "/golem/work/huge.bin"):
            received += len(chunk)
            digest.update(chunk)
    finally:
        await provider.close()
    zeros = hashlib.sha256()
    block = bytes(1 << 20)
    for _ in range(size >> 20):
        zeros.update(block)
    zeros.update(bytes(size & ((1 << 20) - 1)))
    assert received == size and digest.hexdigest() == zeros.hexdigest()


async def test_a_file_that_shrinks_while_it_downloads_is_data_loss(client: ContractClient, ready: str) -> None:
    run = await client.run_batch(ready, [client.run("/usr/bin/head", "-c", str(64 << 20), "/dev/urandom")])
    await client.upload_bytes(ready, "/golem/work/shrinking.bin", run.stdout())
    stream = client.transfer.Download(
        xfer.DownloadRequest(activity_id=ready, path="/golem/work/shrinking.bin"), metadata=client.metadata
    )
    with pytest.raises(grpc.aio.AioRpcError) as err:
        async for part in stream:
            if part.WhichOneof("part") == "chunk":
                await client.run_batch(ready, [client.run("/usr/bin/truncate", "-s", "0", "/golem/work/shrinking.bin")])
    assert err.value.code() == grpc.StatusCode.DATA_LOSS and "shrank while it was downloaded" in err.value.details()


async def test_a_transfer_may_be_checked_with_blake3_and_never_with_less(client: ContractClient, ready: str) -> None:
    """BLAKE3 where the offer lists it (issue 28: SHA-256 was the largest cost on each side); a
    digest the daemon does not offer, a wrong one, or none at all is refused, never taken as checked."""
    import blake3

    from exeunit.v1 import market_pb2 as mkt

    offer = (await client.market.GetOffer(mkt.GetOfferRequest(), metadata=client.metadata)).offer
    assert "blake3" in offer.transfer_digests
    data = os.urandom(2 * CHUNK + 777)
    expected = blake3.blake3(data).hexdigest()

    async def upload(digest: int, trailer: xfer.UploadTrailer, path: str = "/golem/work/b3.bin") -> xfer.UploadResponse:
        async def requests():
            yield xfer.UploadRequest(header=xfer.UploadHeader(activity_id=ready, path=path, size=len(data), digest=digest))
            for start in range(0, len(data), CHUNK):
                yield xfer.UploadRequest(chunk=data[start:start + CHUNK])
            yield xfer.UploadRequest(trailer=trailer)
        return await client.transfer.Upload(requests(), metadata=client.metadata)

    response = await upload(xfer.DIGEST_ALGORITHM_BLAKE3, xfer.UploadTrailer(digest=expected))
    assert (response.size, response.digest, response.sha256) == (len(data), expected, "")
    refusals = {
        "a wrong digest": (xfer.DIGEST_ALGORITHM_BLAKE3, xfer.UploadTrailer(digest="0" * 64), grpc.StatusCode.DATA_LOSS),
        "SHA-256 sent as BLAKE3": (xfer.DIGEST_ALGORITHM_BLAKE3, xfer.UploadTrailer(digest=hashlib.sha256(data).hexdigest()),
                                   grpc.StatusCode.DATA_LOSS),
        "no digest": (xfer.DIGEST_ALGORITHM_BLAKE3, xfer.UploadTrailer(), grpc.StatusCode.INVALID_ARGUMENT),
        "an algorithm not offered": (99, xfer.UploadTrailer(digest=expected), grpc.StatusCode.INVALID_ARGUMENT),
    }
    for case, (digest, trailer, code) in refusals.items():
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await upload(digest, trailer, "/golem/work/refused.bin")
        assert refused.value.code() == code, (case, refused.value.details())
    trailer = None
    async for part in client.transfer.Download(
        xfer.DownloadRequest(activity_id=ready, path="/golem/work/b3.bin", digest=xfer.DIGEST_ALGORITHM_BLAKE3),
        metadata=client.metadata,
    ):
        if part.WhichOneof("part") == "trailer":
            trailer = part.trailer
    assert trailer is not None and (trailer.digest, trailer.sha256) == (expected, "")


def test_the_requestor_checks_with_blake3_only_where_offered() -> None:
    from requestor.client.streams import TransferDigest

    assert TransferDigest(("blake3",)).name == "blake3"
    assert TransferDigest(()).name == "sha256"
    assert TransferDigest(("md5",)).name == "sha256"


@pytest.mark.slow
async def test_ten_gib_up_and_down_keep_the_daemons_memory_flat(engine) -> None:
    """Issue 28: a 10 GiB upload and its download through the requestor library (BLAKE3, chunks by
    hand) while the daemon's resident memory is sampled: it may not grow with the file."""
    import threading

    import psutil

    size, block = 10 << 30, bytes(CHUNK)
    daemon = Daemon("--name", "ten-gib-provider")
    watched = psutil.Process(daemon.process.pid)
    samples: list[int] = []
    sampling = threading.Event()

    def sample() -> None:
        while not sampling.is_set():
            samples.append(watched.memory_info().rss)
            sampling.wait(0.05)

    try:
        async with ContractClient(f"127.0.0.1:{daemon.port}", "requestor-1") as client:
            activity_id = await client.new_activity("exeunit-base:latest", min_storage_bytes=12 << 30)
            assert (await client.run_batch(activity_id, [client.deploy(), client.start()])).succeeded
            provider = ProviderClient(client.address, client.identity)
            try:
                before = watched.memory_info().rss
                thread = threading.Thread(target=sample, daemon=True)
                thread.start()

                async def zeros():
                    for _ in range(size // CHUNK):
                        yield block

                await provider.upload(activity_id, "/golem/work/ten.bin", size, zeros())
                received = 0
                async for chunk in provider.download(activity_id, "/golem/work/ten.bin"):
                    received += len(chunk)  # the library checks the digest at the end
                sampling.set()
                thread.join()
            finally:
                await provider.close()
        assert received == size
        grown = (max(samples) - before) >> 20
        assert grown <= 64, f"the daemon grew by {grown} MiB moving 10 GiB each way"
    finally:
        sampling.set()
        daemon.stop()
