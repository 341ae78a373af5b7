"""Call proofs bound to the call (issue 25): a proof carries one request (a stream's first message)
and one start of the daemon; the nonces proofs used are remembered per requestor, within bounds
that strangers with free keys cannot take from requestors holding agreements."""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from datetime import datetime, timedelta, timezone
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest

from exeunit import errors
from exeunit.api.nonces import NonceBounds, NonceLedger
from exeunit.v1 import activity_pb2 as act
from exeunit.v1 import identity as wire
from exeunit.v1 import market_pb2 as mkt
from exeunit.v1 import transfer_pb2 as xfer
from requestor.client import ProviderClient
from requestor.client.identity import RequestorIdentity
from requestor.errors import ProviderRestartedError
from requestor.model import DemandSpec, DeploySpec, StartSpec
from requestor.script import SendBytes
from tests.client import ContractClient, identity_named
from tests.conftest import BASE_IMAGE, Daemons
from tests.daemon_process import Daemon
from tests.test_restart import free_port, kill

LIST = "/exeunit.v1.Activity/ListActivities"


async def refusal(awaitable) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await awaitable
    return refused.value


def proof_for(raw: ContractClient, label: str, method: str, request: object) -> tuple[tuple[str, str | bytes], ...]:
    return identity_named(label).proof(raw.provider_id, raw.boot_epoch, method, request.SerializeToString())


# A local port squatter proxying to the daemon holds a requestor's proof the daemon has not seen.

async def test_a_proof_replayed_with_another_request_is_refused(daemons: Daemons) -> None:
    server = await daemons.start()
    address = f"127.0.0.1:{server.port}"
    async with ContractClient(address, "body-owner") as owner, ContractClient(address, None) as squatter:
        kept, targeted = await owner.agreement(BASE_IMAGE), await owner.agreement(BASE_IMAGE)
        method = "/exeunit.v1.Market/TerminateAgreement"
        signed = mkt.TerminateAgreementRequest(agreement_id=kept, reason="Requested")
        proof = proof_for(owner, "body-owner", method, signed)
        swapped = mkt.TerminateAgreementRequest(agreement_id=targeted, reason="Requested")
        refused = await refusal(squatter.market.TerminateAgreement(swapped, metadata=proof))
        assert refused.code() is grpc.StatusCode.UNAUTHENTICATED
        assert "not the one this call's proof signed" in refused.details()
        for agreement_id in (kept, targeted):  # neither was touched
            got = await owner.market.GetAgreement(mkt.GetAgreementRequest(agreement_id=agreement_id))
            assert got.agreement.state == mkt.AGREEMENT_STATE_APPROVED
        # nor does the proof serve its own request any more: its nonce is spent
        refused = await refusal(squatter.market.TerminateAgreement(signed, metadata=proof))
        assert refused.code() is grpc.StatusCode.UNAUTHENTICATED and "used before" in refused.details()
        # a fresh proof of the very bytes sent is what the daemon acts on
        proof = proof_for(owner, "body-owner", method, swapped)
        done = await squatter.market.TerminateAgreement(swapped, metadata=proof)
        assert done.agreement.agreement_id == targeted and done.agreement.state == mkt.AGREEMENT_STATE_TERMINATED


async def test_a_stream_proof_binds_its_first_message(daemons: Daemons) -> None:
    server = await daemons.start()
    address = f"127.0.0.1:{server.port}"
    async with ContractClient(address, "streamer") as owner, ContractClient(address, None) as squatter:
        activity_id = await owner.ready_activity(BASE_IMAGE)
        data = b"hello\n"

        def upload_of(path: str) -> list[xfer.UploadRequest]:
            return [xfer.UploadRequest(header=xfer.UploadHeader(activity_id=activity_id, path=path, size=len(data))),
                    xfer.UploadRequest(chunk=data),
                    xfer.UploadRequest(trailer=xfer.UploadTrailer(sha256=hashlib.sha256(data).hexdigest()))]

        async def sending(parts: list[xfer.UploadRequest]) -> AsyncIterator[xfer.UploadRequest]:
            for part in parts:
                yield part

        signed, swapped = upload_of("/golem/work/signed.txt"), upload_of("/golem/work/swapped.txt")
        proof = proof_for(owner, "streamer", "/exeunit.v1.Transfer/Upload", signed[0])
        refused = await refusal(squatter.transfer.Upload(sending(swapped), metadata=proof))
        assert refused.code() is grpc.StatusCode.UNAUTHENTICATED
        assert "not the one this call's proof signed" in refused.details()
        # a proof of a header, with no message at all: refused too
        proof = proof_for(owner, "streamer", "/exeunit.v1.Transfer/Upload", signed[0])
        refused = await refusal(squatter.transfer.Upload(sending([]), metadata=proof))
        assert refused.code() is grpc.StatusCode.UNAUTHENTICATED
        proof = proof_for(owner, "streamer", "/exeunit.v1.Transfer/Upload", signed[0])
        assert (await squatter.transfer.Upload(sending(signed), metadata=proof)).size == len(data)
        run = await owner.run_batch(activity_id, [owner.sh("test -e /golem/work/signed.txt && test ! -e /golem/work/swapped.txt")])
        assert run.succeeded, run.finished


# A daemon restarted on its home forgets the nonces it took: its new boot epoch refuses every
# proof made before.

@pytest.fixture
def home() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="exeunit-test-home-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


async def test_a_proof_is_refused_after_the_daemon_restarts_and_requestors_go_on(home: Path, engine) -> None:
    listen = ("--listen", f"127.0.0.1:{free_port()}")
    first = Daemon(*listen, state_dir=home)
    second = None
    client = ProviderClient(f"127.0.0.1:{first.port}", RequestorIdentity.ephemeral())
    try:
        agreement = await client.propose(DemandSpec("", BASE_IMAGE, "", 0, 0, 0, (), "public",
                                                    datetime.now(timezone.utc) + timedelta(minutes=10)))
        activity_id = await client.create_activity(agreement.agreement_id)
        async for _ in client.run_batch(activity_id, [DeploySpec(), StartSpec()], "ready"):
            pass
        async with ContractClient(f"127.0.0.1:{first.port}", None) as raw:
            before = raw.boot_epoch
            seen = proof_for(raw, "restarted", LIST, act.ListActivitiesRequest())
            await raw.activity.ListActivities(act.ListActivitiesRequest(), metadata=seen)
            unused = proof_for(raw, "restarted", LIST, act.ListActivitiesRequest())
        kill(first)
        second = Daemon(*listen, state_dir=home)
        async with ContractClient(f"127.0.0.1:{second.port}", None) as raw:
            after = raw.boot_epoch
            assert len(after) == wire.EPOCH_HEX_CHARS and after != before
            for proof in (seen, unused):  # both within their time window, both made for the earlier start
                refused = await refusal(raw.activity.ListActivities(act.ListActivitiesRequest(), metadata=proof))
                assert refused.code() is grpc.StatusCode.UNAUTHENTICATED and "started again" in refused.details()
                assert (wire.PROVIDER_EPOCH_METADATA, after) in tuple(refused.trailing_metadata())
        # the client made before the restart learns the new epoch and goes on, as it did before
        assert (await client.agreement(agreement.agreement_id)).agreement_id == agreement.agreement_id
        assert client._connection is not None and client._connection.boot_epoch == after
        kill(second)
        second = Daemon(*listen, state_dir=home)
        with pytest.raises(ProviderRestartedError):  # an upload's chunks are read once: it is refused...
            await client.upload(activity_id, "/golem/work/lost.txt", 2, _once(b"x\n"))
        kill(second)
        second = Daemon(*listen, state_dir=home)
        # ... and the script's transfer sends it again
        await SendBytes(b"sent again\n", "/golem/work/again.txt").perform(client, activity_id)
        assert b"".join([chunk async for chunk in client.download(activity_id, "/golem/work/again.txt")]) == b"sent again\n"
        await client.destroy(activity_id)
    finally:
        await client.close()
        for daemon in (first, second):
            if daemon is not None:
                daemon.stop()


async def _once(data: bytes) -> AsyncIterator[bytes]:
    yield data


# The nonce ledger: one share per requestor, a pool for strangers, a bound on all.

async def calls_until_refused(client: ContractClient, most: int) -> tuple[int, grpc.aio.AioRpcError | None]:
    for made in range(most):
        try:
            await client.activity.ListActivities(act.ListActivitiesRequest())
        except grpc.aio.AioRpcError as exc:
            return made, exc
    return most, None


async def test_one_requestor_exhausting_its_share_refuses_only_itself(daemons: Daemons) -> None:
    bounds = NonceBounds(per_requestor=20, strangers=30, total=50)
    server = await daemons.start(nonce_bounds=bounds)
    address = f"127.0.0.1:{server.port}"
    async with ContractClient(address, "holder") as holder, ContractClient(address, "greedy") as greedy, \
            ContractClient(address, "stranger-2") as second, ContractClient(address, "stranger-3") as third:
        await holder.agreement(BASE_IMAGE)  # a requestor holding an agreement (its proposal: a stranger's proof)
        made, refused = await calls_until_refused(greedy, 100)
        assert made == bounds.per_requestor and refused is not None
        assert refused.code() is grpc.StatusCode.RESOURCE_EXHAUSTED and "MAX_NONCES_PER_REQUESTOR" in refused.details()
        assert (await calls_until_refused(holder, 3))[0] == 3  # others go on
        assert (await calls_until_refused(second, 3))[0] == 3

        # strangers (free keys, no agreement) fill their pool, and no more: the holder goes on
        made, refused = await calls_until_refused(second, 100)
        assert made == bounds.strangers - 1 - bounds.per_requestor - 3
        assert refused is not None and "MAX_STRANGER_NONCES" in refused.details()
        made, refused = await calls_until_refused(third, 5)
        assert made == 0 and refused is not None and refused.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert (await calls_until_refused(holder, 3))[0] == 3


async def test_the_bound_on_all_remembered_proofs_is_reached_by_holders_only(daemons: Daemons) -> None:
    bounds = NonceBounds(per_requestor=20, strangers=10, total=35)
    server = await daemons.start(nonce_bounds=bounds)
    address = f"127.0.0.1:{server.port}"
    async with ContractClient(address, "first-holder") as first, ContractClient(address, "second-holder") as second, \
            ContractClient(address, "crowd") as crowd:
        await first.agreement(BASE_IMAGE)
        await second.agreement(BASE_IMAGE)  # 2 strangers' proofs (the proposals)
        made, refused = await calls_until_refused(crowd, 100)
        assert made == bounds.strangers - 2 and refused is not None and "MAX_STRANGER_NONCES" in refused.details()
        made, refused = await calls_until_refused(first, 100)  # its share, less its proposal
        assert made == bounds.per_requestor - 1 and refused is not None
        assert "MAX_NONCES_PER_REQUESTOR" in refused.details()
        made, refused = await calls_until_refused(second, 100)  # the strangers' 10 and the first's 19 taken
        assert made == bounds.total - bounds.strangers - (bounds.per_requestor - 1) < bounds.per_requestor - 1
        assert refused is not None and refused.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "MAX_REMEMBERED_NONCES" in refused.details()


def test_the_ledger_forgets_a_nonce_only_when_its_proof_is_out_of_the_window() -> None:
    holders = {"0xholder"}
    ledger = NonceLedger(NonceBounds(per_requestor=2, strangers=3, total=4), lambda who: who in holders)
    ledger.record("0xa", "n1", expires=100.0, now=0.0)
    with pytest.raises(errors.Unauthenticated):
        ledger.record("0xa", "n1", expires=100.0, now=99.0)  # replayed within its window
    ledger.record("0xb", "n1", expires=100.0, now=1.0)  # another requestor's nonce: its own ledger
    ledger.record("0xa", "n2", expires=50.0, now=2.0)
    with pytest.raises(errors.ResourceExhausted, match="MAX_NONCES_PER_REQUESTOR"):
        ledger.record("0xa", "n3", expires=100.0, now=3.0)
    with pytest.raises(errors.ResourceExhausted, match="MAX_STRANGER_NONCES"):
        ledger.record("0xc", "n1", expires=100.0, now=3.0)
    ledger.record("0xholder", "n1", expires=100.0, now=3.0)  # a holder is not charged to the strangers
    with pytest.raises(errors.ResourceExhausted, match="MAX_REMEMBERED_NONCES"):
        ledger.record("0xholder", "n2", expires=100.0, now=3.0)
    ledger.record("0xa", "n3", expires=100.0, now=50.0)  # n2's window is over: room for one more
    assert (len(ledger), ledger.strangers, ledger.held_by("0xa")) == (4, 3, 2)
    ledger.record("0xc", "n1", expires=200.0, now=100.0)  # everything else expired
    assert (len(ledger), ledger.strangers, ledger.held_by("0xa"), ledger.held_by("0xc")) == (1, 1, 0, 1)
