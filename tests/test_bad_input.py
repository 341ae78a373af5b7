"""Bad input gets a precise status code and message, and disturbs nothing else."""

from __future__ import annotations

import grpc
import pytest

from exeunit.v1.conventions import GIB
from exeunit.domain.resources import Resources
from exeunit.v1 import activity_pb2 as act
from exeunit.v1 import market_pb2 as mkt
from tests.client import ContractClient, expiration
from tests.conftest import BASE_IMAGE, Daemons
from tests.waiting import until


async def rpc_error(awaitable) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await awaitable
    return err.value


async def test_unknown_ids_are_not_found(client: ContractClient, ready: str) -> None:
    err = await rpc_error(client.state("no-such-activity"))
    assert (err.code(), err.details()) == (grpc.StatusCode.NOT_FOUND, "activity 'no-such-activity' not found")
    err = await rpc_error(client.activity.CreateActivity(act.CreateActivityRequest(agreement_id="nope"), metadata=client.metadata))
    assert (err.code(), err.details()) == (grpc.StatusCode.NOT_FOUND, "agreement 'nope' not found")
    err = await rpc_error(client.get_batch(ready, "no-batch"))
    assert err.code() == grpc.StatusCode.NOT_FOUND and "batch 'no-batch' not found" in err.details()
    err = await rpc_error(anext(aiter(client.events(ready, "no-batch"))))
    assert err.code() == grpc.StatusCode.NOT_FOUND


async def test_empty_batch_and_malformed_commands_are_invalid(client: ContractClient, ready: str) -> None:
    err = await rpc_error(client.exec(ready, []))
    assert (err.code(), err.details()) == (grpc.StatusCode.INVALID_ARGUMENT, "a batch needs at least one command")
    err = await rpc_error(client.exec(ready, [act.Command()]))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "sets none of deploy" in err.details()
    err = await rpc_error(client.exec(ready, [act.Command(run=act.RunCommand(entry_point=""))]))
    assert err.details() == "command 0 (run): entry_point is empty"
    err = await rpc_error(client.exec(ready, [client.run("/bin/true", env={"A=B": "x"})]))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "'A=B' is invalid" in err.details()
    err = await rpc_error(client.exec(ready, [client.run("/bin/true", workdir="relative")]))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "must be an absolute path" in err.details()
    err = await rpc_error(client.exec(ready, [client.run("/bin/true")], batch_id="bad id!"))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    # the activity is untouched and still works
    assert (await client.run_batch(ready, [client.run("/bin/true")])).succeeded


async def test_commands_in_the_wrong_state_are_failed_precondition(client: ContractClient) -> None:
    activity_id = await client.new_activity(BASE_IMAGE)
    err = await rpc_error(client.exec(activity_id, [client.run("/bin/true")]))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert err.details() == "command 0 (run) needs the activity Ready, but it would be New; deploy and start it first"
    err = await rpc_error(client.exec(activity_id, [client.start()]))
    assert "needs the activity Deployed, but it would be New" in err.details()
    assert (await client.run_batch(activity_id, [client.deploy()])).succeeded
    err = await rpc_error(client.exec(activity_id, [client.deploy()]))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "command 0 (deploy) needs the activity New, but it would be Deployed" in err.details()
    await client.run_batch(activity_id, [client.terminate()])
    err = await rpc_error(client.exec(activity_id, [client.run("/bin/true")]))
    assert err.details() == "command 0 (run) cannot run: the activity is Terminated"


async def test_missing_image_is_refused_naming_it(client: ContractClient) -> None:
    response = await client.propose(client.demand("no-such-image:1.0"))
    assert response.WhichOneof("outcome") == "refusal"
    assert response.refusal.reason == mkt.REFUSAL_REASON_IMAGE_UNAVAILABLE
    assert "'no-such-image:1.0' is not offered by this provider" in response.refusal.message


async def test_demands_that_do_not_match_are_refused_with_the_reason(client: ContractClient) -> None:
    response = await client.propose(client.demand(BASE_IMAGE, subnet_tag="private"))
    assert response.refusal.reason == mkt.REFUSAL_REASON_SUBNET_MISMATCH
    assert response.refusal.message == "demand is for subnet 'private', this provider serves 'public'"
    response = await client.propose(client.demand(BASE_IMAGE, min_memory_bytes=64 * GIB))
    assert response.refusal.reason == mkt.REFUSAL_REASON_INSUFFICIENT_RESOURCES
    response = await client.propose(client.demand(BASE_IMAGE, capabilities=["vpn", "gpu"]))
    assert response.refusal.reason == mkt.REFUSAL_REASON_MISSING_CAPABILITY
    assert response.refusal.message == ("demand needs capabilities gpu; this provider offers vpn, "
                                        "golem.srv.caps.multi-activity")


async def test_malformed_demands_are_invalid(client: ContractClient) -> None:
    err = await rpc_error(client.propose(mkt.Demand(image=mkt.ImageRef(tag=BASE_IMAGE), subnet_tag="public")))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "expiration is required" in err.details()
    err = await rpc_error(client.propose(client.demand(BASE_IMAGE, expiration=expiration(-1))))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "is not in the future" in err.details()
    err = await rpc_error(client.propose(client.demand()))
    assert err.details() == "demand.image needs a hash, a tag or a url"
    err = await rpc_error(client.propose(client.demand(hash="sha256:xyz")))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "sha256:<64 lowercase hex digits>" in err.details()
    err = await rpc_error(client.propose(client.demand(url="file:///tmp/x.tar")))
    assert "needs demand.image.hash" in err.details()


async def test_exhausted_capacity_is_resource_exhausted(daemons: Daemons) -> None:
    server = await daemons.start(capacity=Resources(cpu_threads=2, memory_bytes=GIB, storage_bytes=4 * GIB))
    async with ContractClient(f"127.0.0.1:{server.port}", "r") as client:
        first = await client.propose(client.demand(BASE_IMAGE, min_memory_bytes=GIB * 3 // 4))
        assert first.WhichOneof("outcome") == "agreement"
        offer = (await client.market.GetOffer(mkt.GetOfferRequest(), metadata=client.metadata)).offer
        assert offer.memory_bytes == GIB // 4 and offer.total_memory_bytes == GIB
        err = await rpc_error(client.propose(client.demand(BASE_IMAGE, min_memory_bytes=GIB // 2)))
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert err.details().startswith("no free capacity")
        await client.market.TerminateAgreement(
            mkt.TerminateAgreementRequest(agreement_id=first.agreement.agreement_id), metadata=client.metadata
        )
        again = await client.propose(client.demand(BASE_IMAGE, min_memory_bytes=GIB // 2))
        assert again.WhichOneof("outcome") == "agreement"


async def test_oversized_message_is_resource_exhausted(client: ContractClient, ready: str) -> None:
    err = await rpc_error(client.exec(ready, [client.run("/bin/echo", "x" * (5 << 20))]))
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert (await client.run_batch(ready, [client.run("/bin/true")])).succeeded


async def test_upload_larger_than_the_agreement_storage_is_resource_exhausted(client: ContractClient, ready: str) -> None:
    err = await rpc_error(client.upload(ready, "/golem/input/huge", [], 100 * GIB))
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "exceeds the agreement's storage" in err.details()


async def test_another_requestor_is_denied(client: ContractClient, ready: str, provider) -> None:
    async with ContractClient(f"127.0.0.1:{provider.port}", "intruder") as intruder:
        for call in (intruder.state(ready), intruder.exec(ready, [intruder.run("/bin/true")]), intruder.destroy(ready)):
            err = await rpc_error(call)
            assert err.code() == grpc.StatusCode.PERMISSION_DENIED
            assert err.details() == f"activity {ready} belongs to another requestor"
        err = await rpc_error(intruder.download(ready, "/golem/work/x"))
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    assert (await client.state(ready)).state == act.ACTIVITY_STATE_READY


async def test_callers_must_identify_and_present_the_token(daemons: Daemons) -> None:
    server = await daemons.start(token="s3cret")
    address = f"127.0.0.1:{server.port}"
    async with ContractClient(address, "r", token="wrong") as wrong:
        err = await rpc_error(wrong.market.GetOffer(mkt.GetOfferRequest(), metadata=wrong.metadata))
        assert err.code() == grpc.StatusCode.UNAUTHENTICATED and "missing or wrong token" in err.details()
    async with ContractClient(address, None, token="s3cret") as anonymous:  # with the token, but no key
        offer = await anonymous.market.GetOffer(mkt.GetOfferRequest(), metadata=anonymous.metadata)
        assert offer.offer.provider_name == "provider-a"  # an offer is public
        err = await rpc_error(anonymous.propose(anonymous.demand(BASE_IMAGE)))
        assert err.code() == grpc.StatusCode.UNAUTHENTICATED and "sign each call with a requestor key" in err.details()
    async with ContractClient(address, "r", token="s3cret") as right:
        offer = await right.market.GetOffer(mkt.GetOfferRequest(), metadata=right.metadata)
        assert offer.offer.provider_name == "provider-a"


async def test_terminating_an_agreement_ends_its_activity(client: ContractClient, ready: str, daemons: Daemons, provider) -> None:
    agreement_id = (await client.state(ready)).agreement_id
    response = await client.market.TerminateAgreement(
        mkt.TerminateAgreementRequest(agreement_id=agreement_id, reason="Finished"), metadata=client.metadata
    )
    assert response.agreement.state == mkt.AGREEMENT_STATE_TERMINATED
    status = await client.state(ready)
    assert (status.state, status.reason) == (act.ACTIVITY_STATE_TERMINATED, "AgreementTerminated")
    assert daemons.containers_of(provider) == []
    again = await client.market.TerminateAgreement(
        mkt.TerminateAgreementRequest(agreement_id=agreement_id, reason="Other"), metadata=client.metadata
    )
    assert again.agreement.termination_reason == "Finished"
    err = await rpc_error(client.activity.CreateActivity(act.CreateActivityRequest(agreement_id=agreement_id), metadata=client.metadata))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION and "is terminated (Finished)" in err.details()


async def test_agreement_expiry_ends_the_activity(client: ContractClient) -> None:
    activity_id = await client.new_activity(BASE_IMAGE, expiration=expiration(minutes=2 / 60))
    await client.run_batch(activity_id, [client.deploy(), client.start()])
    watch = client.activity.WatchActivity(act.WatchActivityRequest(activity_id=activity_id), metadata=client.metadata)
    statuses = [s async for s in watch]
    assert statuses[-1].state == act.ACTIVITY_STATE_TERMINATED
    assert statuses[-1].reason == "AgreementExpired"


async def test_out_of_range_values_are_invalid_or_out_of_range(client: ContractClient, ready: str) -> None:
    for seconds, nanos in ((10**12, 0), (0, -1), (2**62, 0)):
        demand = client.demand(BASE_IMAGE)
        demand.expiration.seconds, demand.expiration.nanos = seconds, nanos
        err = await rpc_error(client.propose(demand))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert err.details().startswith("demand.expiration is not a valid timestamp")
    run = client.run("/bin/true")
    run.run.timeout.seconds = 2**62
    err = await rpc_error(client.exec(ready, [run]))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "command 0 (run): timeout must be" in err.details()
    batch_id = (await client.run_batch(ready, [client.run("/bin/true")])).batch_id
    err = await rpc_error(anext(aiter(client.events(ready, batch_id, from_sequence=2**63 - 1))))
    assert err.code() == grpc.StatusCode.OUT_OF_RANGE and "does not exist yet" in err.details()


async def test_overlong_paths_are_invalid_and_long_echoes_are_cut(client: ContractClient, ready: str) -> None:
    err = await rpc_error(client.upload_bytes(ready, "/golem/work/" + "a" * 300, b"x"))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "at most 255 bytes" in err.details()
    err = await rpc_error(client.download(ready, "/golem/work/" + "b/" * 3000))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "at most 4095" in err.details()
    err = await rpc_error(client.state("x" * 100_000))  # echoed in NOT_FOUND, cut to fit gRPC's trailers
    assert err.code() == grpc.StatusCode.NOT_FOUND and len(err.details()) <= 1000


async def test_reflection_needs_the_token_and_health_does_not(daemons: Daemons) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from tests.test_daemon_process import reflected_services

    server = await daemons.start(token="s3cret")
    async with ContractClient(f"127.0.0.1:{server.port}", "r") as anonymous:
        err = await rpc_error(reflected_services(anonymous.channel))
        assert err.code() == grpc.StatusCode.UNAUTHENTICATED
        health = health_pb2_grpc.HealthStub(anonymous.channel)
        assert (await health.Check(health_pb2.HealthCheckRequest())).status == health_pb2.HealthCheckResponse.SERVING
    async with ContractClient(f"127.0.0.1:{server.port}", "r", token="s3cret") as right:
        assert "exeunit.v1.Market" in await reflected_services(right.channel, right.metadata)


async def test_agreements_longer_than_the_providers_maximum_are_refused(daemons: Daemons) -> None:
    server = await daemons.start(max_agreement_seconds=3600.0)
    async with ContractClient(f"127.0.0.1:{server.port}", "r") as client:
        offer = (await client.market.GetOffer(mkt.GetOfferRequest(), metadata=client.metadata)).offer
        assert offer.max_agreement_duration.seconds == 3600
        response = await client.propose(client.demand(BASE_IMAGE, expiration=expiration(minutes=60 * 24 * 365 * 7900)))
        assert response.refusal.reason == mkt.REFUSAL_REASON_EXPIRATION_TOO_FAR
        assert "at most 1.00 h" in response.refusal.message
        assert (await client.propose(client.demand(BASE_IMAGE, expiration=expiration(minutes=59)))).HasField("agreement")


async def test_an_agreement_without_a_live_activity_gives_its_capacity_back(daemons: Daemons) -> None:
    server = await daemons.start(agreement_idle_seconds=0.5,
                                 capacity=Resources(cpu_threads=2, memory_bytes=GIB, storage_bytes=4 * GIB))
    async with ContractClient(f"127.0.0.1:{server.port}", "r") as client:
        idle = await client.agreement(BASE_IMAGE, min_cpu_threads=2)
        err = await rpc_error(client.propose(client.demand(BASE_IMAGE)))
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # the idle agreement holds every thread
        await wait_for_agreement_state(client, idle, mkt.AGREEMENT_STATE_TERMINATED)
        ended = await client.market.GetAgreement(mkt.GetAgreementRequest(agreement_id=idle), metadata=client.metadata)
        assert ended.agreement.termination_reason == "Idle"
        # an agreement with a live activity is not idle; once its activity ends, it is again
        activity_id = await client.new_activity(BASE_IMAGE)
        agreement_id = (await client.state(activity_id)).agreement_id
        # A negative check ("its idle timer does not fire") made without a fixed sleep: a witness
        # agreement made after it, with no activity, ends Idle; its timer, armed later for the same
        # time, fires after the activity's agreement's would have, so by then that one has had its chance.
        witness = await client.agreement(BASE_IMAGE)
        witnessed = await wait_for_agreement_state(client, witness, mkt.AGREEMENT_STATE_TERMINATED)
        assert witnessed.termination_reason == "Idle", witnessed
        agreement = await client.market.GetAgreement(mkt.GetAgreementRequest(agreement_id=agreement_id), metadata=client.metadata)
        assert agreement.agreement.state == mkt.AGREEMENT_STATE_APPROVED, \
            f"the live activity's agreement ended: {agreement.agreement.termination_reason}: {agreement.agreement.termination_message}"
        await client.destroy(activity_id)
        await wait_for_agreement_state(client, agreement_id, mkt.AGREEMENT_STATE_TERMINATED)


async def wait_for_agreement_state(client: ContractClient, agreement_id: str, state: int) -> mkt.Agreement:
    request = mkt.GetAgreementRequest(agreement_id=agreement_id)
    seen: list[mkt.Agreement] = []

    async def reached() -> bool:
        seen[:] = [(await client.market.GetAgreement(request, metadata=client.metadata)).agreement]
        return seen[0].state == state

    await until(reached, lambda: f"agreement {agreement_id} is still {mkt.AgreementState.Name(seen[0].state)}, "
                                 f"not {mkt.AgreementState.Name(state)}", timeout=10)
    return seen[0]
