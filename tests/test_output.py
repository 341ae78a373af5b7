"""Output streaming: everything a command prints arrives, in order, before its `finished` event."""

from __future__ import annotations

import hashlib

import grpc

from exeunit.domain.settings import ActivityLimits
from exeunit.v1 import activity_pb2 as act
from exeunit.v1 import activity_pb2_grpc as act_grpc
from tests.client import ContractClient
from tests.conftest import BASE_IMAGE, Daemons

HUNDRED_MB = 100 * 1000 * 1000


async def test_100_mb_printed_at_once_arrives_whole_before_finished(client: ContractClient, ready: str) -> None:
    prepare = await client.run_batch(ready, [
        client.sh(f"head -c {HUNDRED_MB} /dev/urandom > /golem/work/blob && sha256sum /golem/work/blob"),
    ])
    expected_digest = prepare.stdout().split()[0].decode()
    batch_id = (await client.exec(ready, [client.run("/bin/cat", "/golem/work/blob")])).batch_id
    digest, size, size_when_finished = hashlib.sha256(), 0, -1
    async for event in client.events(ready, batch_id):
        kind = event.WhichOneof("kind")
        if kind == "stdout":
            digest.update(event.stdout.data)
            size += len(event.stdout.data)
        elif kind == "finished":
            size_when_finished = size
            assert event.finished.success
    assert size_when_finished == size == HUNDRED_MB
    assert digest.hexdigest() == expected_digest  # nothing lost, nothing reordered
    result = await client.get_batch(ready, batch_id)
    assert result.results[0].stdout_truncated
    assert len(result.results[0].stdout) == 1 << 20


async def test_stdout_and_stderr_are_told_apart(client: ContractClient, ready: str) -> None:
    run = await client.run_batch(ready, [client.sh("for i in 1 2 3; do echo o$i; echo e$i >&2; done")])
    assert run.stdout() == b"o1\no2\no3\n"
    assert run.stderr() == b"e1\ne2\ne3\n"


async def test_result_output_is_capped_with_an_explicit_flag(daemons: Daemons) -> None:
    server = await daemons.start(limits=ActivityLimits(result_output_cap=1000))
    async with ContractClient(f"127.0.0.1:{server.port}", "r") as client:
        activity_id = await client.new_activity(BASE_IMAGE)
        await client.run_batch(activity_id, [client.deploy(), client.start()])
        run = await client.run_batch(activity_id, [client.sh("head -c 5000 /dev/zero; echo short >&2")])
        assert len(run.stdout()) == 5000  # the stream has everything
        result = (await client.get_batch(activity_id, run.batch_id)).results[0]
        assert (len(result.stdout), result.stdout_truncated) == (1000, True)
        assert (result.stderr, result.stderr_truncated) == (b"short\n", False)
        assert result.state == act.COMMAND_STATE_SUCCEEDED


async def test_a_slow_reader_slows_the_command_instead_of_losing_output(daemons: Daemons) -> None:
    server = await daemons.start(limits=ActivityLimits(replay_window_bytes=64 << 10, replay_grace_seconds=60))
    async with ContractClient(f"127.0.0.1:{server.port}", "r") as client:
        activity_id = await client.new_activity(BASE_IMAGE)
        await client.run_batch(activity_id, [client.deploy(), client.start()])
        batch_id = (await client.exec(activity_id, [client.run("/usr/bin/seq", "1", "200000")])).batch_id
        received = bytearray()
        async for event in client.events(activity_id, batch_id):
            if event.WhichOneof("kind") == "stdout":
                received += event.stdout.data
        expected = b"".join(b"%d\n" % i for i in range(1, 200001))
        assert bytes(received) == expected  # 1.3 MB through a 64 KiB window, nothing dropped


async def test_get_batch_fits_a_default_grpc_client_however_much_was_kept(client: ContractClient, ready: str) -> None:
    """Five commands with 1 MiB of kept output each: the response stays under 4 MiB, cut from the
    later commands, with their flags set."""
    megabyte = client.run("/usr/bin/head", "-c", str(1 << 20), "/dev/zero")
    run = await client.run_batch(ready, [megabyte] * 5)
    assert run.succeeded
    async with grpc.aio.insecure_channel(client.address) as plain:  # gRPC's default limits
        stub = act_grpc.ActivityStub(plain)
        request = act.GetBatchRequest(activity_id=ready, batch_id=run.batch_id)
        proof = client.identity.proof(client.provider_id, client.boot_epoch, "/exeunit.v1.Activity/GetBatch",
                                      request.SerializeToString())
        batch = await stub.GetBatch(request, metadata=proof)
    sizes = [len(r.stdout) for r in batch.results]
    assert sum(sizes) == 3 << 20 and sizes[:3] == [1 << 20] * 3 and sizes[3:] == [0, 0]
    assert [r.stdout_truncated for r in batch.results] == [False, False, False, True, True]
