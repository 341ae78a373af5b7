"""Providers on a network (issue 19), on simulated hosts through the pytest plugin's fixtures:
TLS on every connection beyond loopback, providers proven by their keys (pinned or trusted on
first use), requestors proven by theirs on every call, whatever they claim."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from pathlib import Path

import grpc
import pytest
from google.protobuf import message_factory

from exeunit.testing.hosts import SimulatedLan
from exeunit.v1 import activity_pb2 as act
from exeunit.v1 import market_pb2 as mkt
from exeunit.v1 import market_pb2_grpc as mkt_grpc
from exeunit.v1 import network_pb2 as net
from exeunit.v1 import payment_pb2 as pay
from exeunit.v1 import transfer_pb2 as xfer
from requestor import Golem
from requestor.services import Service, ServiceState
from requestor.client import ProviderClient
from requestor.client.connect import KnownProviders, ProviderIdentityError
from requestor.errors import ProviderUnreachableError
from requestor.client.identity import RequestorIdentity
from requestor.payload import vm
from tests.client import ContractClient
from tests.conftest import BASE_IMAGE
from tests.waiting import until

SECRET_COMMAND = "secret-command-word-7f3a91"
SECRET_OUTPUT = "secret-output-word-5d8e27"
SECRET_FILE = b"secret-file-content-91c2e4\n" * 64
MARKER = b"plaintext-marker-the-capture-must-see-3b6f"


class Secretive(Service):
    """Runs a command, uploads a file and downloads it back: all of it must cross the LAN sealed."""

    @staticmethod
    async def get_payload():
        return await vm.repo(image_tag=BASE_IMAGE)

    async def run(self):
        script = self._ctx.new_script()
        printed = script.run("/bin/sh", "-c", f"echo {SECRET_COMMAND} | sed s/command/output/ | sed s/7f3a91/5d8e27/")
        script.upload_bytes(SECRET_FILE, "/golem/work/secret.txt")
        back: list[bytes] = []

        async def keep(data: bytes) -> None:
            back.append(data)

        script.download_bytes("/golem/work/secret.txt", keep)
        yield script
        self.printed = (await printed).stdout
        self.downloaded = b"".join(back)


async def test_a_requestor_on_another_host_runs_a_service_over_tls_and_nothing_travels_in_clear(
        simulated_lan: SimulatedLan, provider_daemons) -> None:
    provider = provider_daemons(simulated_lan.add_host("p1"))
    assert "transport=tls" in "\n".join(provider.log)
    capture = simulated_lan.capture()
    try:
        async with Golem(budget=1.0, providers=[provider.pinned_address]) as golem:
            cluster = await golem.run_service(Secretive)
            [instance] = cluster.instances
            await until(lambda: instance.state is ServiceState.terminated,
                        lambda: f"the service instance is still {instance.state.name}", timeout=120)
            assert instance.printed.strip() == SECRET_OUTPUT
            assert instance.downloaded == SECRET_FILE
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:  # the capture sees what is in clear
            udp.sendto(MARKER, (provider.host.address, 9))
    finally:
        frames = capture.stop()
    wire = b"".join(frames)
    assert MARKER in wire, "the capture saw nothing in clear: it cannot prove anything"
    assert len(wire) > len(SECRET_FILE) * 2  # the file did cross it, sealed
    for secret in (SECRET_COMMAND.encode(), SECRET_OUTPUT.encode(), SECRET_FILE[:26], b"/golem/work/secret.txt",
                   b"ProposeAgreement"):
        assert secret not in wire, f"{secret!r} crossed the LAN in clear"


async def test_beyond_loopback_nothing_is_spoken_in_plaintext(simulated_lan: SimulatedLan, provider_daemons) -> None:
    provider = provider_daemons(simulated_lan.add_host("p1"))
    async with grpc.aio.insecure_channel(provider.address) as channel:  # a plaintext client is not answered
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await mkt_grpc.MarketStub(channel).GetOffer(mkt.GetOfferRequest(), timeout=3)
        assert refused.value.code() is grpc.StatusCode.UNAVAILABLE
    # and the requestor does not speak plaintext beyond loopback: a server that does is refused
    here = simulated_lan.here_address
    server = grpc.aio.server()
    port = server.add_insecure_port(f"{here}:0")
    await server.start()
    try:
        client = ProviderClient(f"{here}:{port}", RequestorIdentity.ephemeral())
        with pytest.raises(ProviderIdentityError, match="does not speak TLS"):
            await client.offer()
        await client.close()
    finally:
        await server.stop(0)


async def test_a_host_presenting_another_key_is_refused(simulated_lan: SimulatedLan, provider_daemons,
                                                        tmp_path: Path) -> None:
    chosen = provider_daemons(simulated_lan.add_host("p1"))
    middle = provider_daemons(simulated_lan.add_host("mid"))  # answers, but with a key of its own
    known = KnownProviders(tmp_path / "known-providers")
    client = ProviderClient(f"{middle.address}#{chosen.provider_id}", RequestorIdentity.ephemeral(), known=known)
    with pytest.raises(ProviderIdentityError, match=f"proves id {middle.provider_id}, not {chosen.provider_id}"):
        await client.offer()
    assert not known.path.exists()  # a pinned address is not written down
    pinned = ProviderClient(chosen.pinned_address, RequestorIdentity.ephemeral(), known=known)
    assert (await pinned.offer()).provider_id == chosen.provider_id
    await pinned.close()


async def test_a_known_provider_whose_key_changed_is_refused_naming_the_file(
        simulated_lan: SimulatedLan, provider_daemons, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    host = simulated_lan.add_host("p1")
    first = provider_daemons(host)
    known = KnownProviders(tmp_path / "known-providers")
    client = ProviderClient(first.address, RequestorIdentity.ephemeral(), known=known)
    assert (await client.offer()).provider_id == first.provider_id  # trusted on first use...
    await client.close()
    assert known.path.read_text() == f"{first.address} {first.provider_id}\n"  # ...and remembered
    assert "provider_trusted_on_first_use" in caplog.text
    again = ProviderClient(first.address, RequestorIdentity.ephemeral(), known=known)
    await again.offer()  # the same key is welcome back
    await again.close()

    port = first.port
    first.stop()
    impostor = provider_daemons(host, port=port)  # another home, so another key, at the same address
    assert impostor.address == first.address and impostor.provider_id != first.provider_id
    client = ProviderClient(first.address, RequestorIdentity.ephemeral(), known=known)
    with pytest.raises(ProviderIdentityError, match=f"knows it as {first.provider_id}") as refused:
        await client.offer()
    assert str(known.path) in str(refused.value) and "remove the line" in str(refused.value)


def _victims_ids(request: object, ids: dict[str, str]) -> None:
    for field in request.DESCRIPTOR.fields:  # type: ignore[attr-defined]
        if field.name in ids:
            setattr(request, field.name, ids[field.name])


async def test_a_caller_with_the_token_and_another_key_gets_nothing_of_another_requestors(
        simulated_lan: SimulatedLan, provider_daemons) -> None:
    """Every RPC of the contract, called by someone holding the private provider's token and a
    key of their own, claiming the victim's id in every way there was: nothing of the victim's
    is read, changed or ended."""
    provider = provider_daemons(simulated_lan.add_host("p1"), "--debit-note-interval", "1",
                                "--min-debit-note-interval", "1", token=True)
    address = provider.pinned_address
    async with ContractClient(address, "victim", token=provider.token) as victim, \
            ContractClient(address, "attacker", token=provider.token) as attacker:
        agreement = await victim.agreement(BASE_IMAGE)
        created = await victim.activity.CreateActivity(act.CreateActivityRequest(agreement_id=agreement),
                                                       metadata=victim.metadata)
        activity = created.activity_id
        await victim.create_network("victims-net", "192.168.77.0/24")
        run = await victim.run_batch(activity, [victim.deploy("victims-net", "192.168.77.2"), victim.start()])
        assert run.succeeded
        async with asyncio.timeout(10):  # the victim's first debit note, whose id the attacker then names
            async for event in victim.payment.WatchPayments(pay.WatchPaymentsRequest(), metadata=victim.metadata):
                if event.WhichOneof("event") == "debit_note":
                    note = pay.DebitNote.FromString(event.debit_note.document.body)
                    break
        ids = {"agreement_id": agreement, "activity_id": activity, "network_id": "victims-net",
               "batch_id": run.batch_id, "document_id": note.debit_note_id}
        claim = (*attacker.metadata, ("x-requestor-id", victim.requestor_id), ("x-requestor-id", "victim"))
        victim_bytes = [value.encode() for value in (agreement, activity, run.batch_id, note.debit_note_id)]
        refusals: dict[str, str] = {}

        for service in (mkt.DESCRIPTOR.services_by_name["Market"], act.DESCRIPTOR.services_by_name["Activity"],
                        net.DESCRIPTOR.services_by_name["Network"], xfer.DESCRIPTOR.services_by_name["Transfer"],
                        pay.DESCRIPTOR.services_by_name["Payment"]):
            for method in service.methods:
                if method.name == "GetOffer":
                    continue
                request_class = message_factory.GetMessageClass(method.input_type)
                response_class = message_factory.GetMessageClass(method.output_type)
                path = f"/{service.full_name}/{method.name}"
                shape = {(False, False): attacker.channel.unary_unary, (False, True): attacker.channel.unary_stream,
                         (True, False): attacker.channel.stream_unary, (True, True): attacker.channel.stream_stream}
                call = shape[(method.client_streaming, method.server_streaming)](
                    path, request_serializer=request_class.SerializeToString,
                    response_deserializer=response_class.FromString)
                if method.name == "Upload":
                    requests = [xfer.UploadRequest(header=xfer.UploadHeader(activity_id=activity, path="/golem/work/x",
                                                                            size=1)),
                                xfer.UploadRequest(chunk=b"x"), xfer.UploadRequest(trailer=xfer.UploadTrailer())]
                elif method.name == "Tunnel":
                    requests = [act.TunnelRequest(open=act.TunnelOpen(activity_id=activity, port=22))]
                elif method.name == "RelayFrames":  # a message for the victim's network, as if from a member
                    requests = [net.RelayFrame(network_id="victims-net", peer="0x" + "1" * 40,
                                               sealed=b"X" + bytes(8))]
                else:
                    request = request_class()
                    _victims_ids(request, ids)
                    if method.name == "Exec" or method.name == "ExecStream":
                        request.commands.append(act.Command(run=act.RunCommand(entry_point="/bin/true")))
                    if method.name == "TerminateAgreement":
                        request.reason = "Cancelled"
                    if method.name in ("AcceptDebitNote", "AcceptInvoice"):  # well formed: only the owner is wrong
                        request.amount, request.signature = "1", b"signed by the attacker"
                    if method.name == "NotifyPayment":
                        request.transaction_hash = "0x" + "ab" * 32
                    if method.name == "CreateNetwork":  # its own, beside the victim's: not the victim's
                        request.network_id, request.address = "attackers-net", "192.168.78.0/24"
                    if method.name == "ProposeAgreement":
                        request.demand.CopyFrom(victim.demand(BASE_IMAGE))
                answers: list[bytes] = []
                try:
                    if method.client_streaming:
                        result = call(iter(requests), metadata=claim, timeout=10)
                    else:
                        result = call(request, metadata=claim, timeout=10)
                    if method.name == "WatchPayments":  # endless: what comes in a while is the attacker's own
                        with contextlib.suppress(TimeoutError):
                            async with asyncio.timeout(3):
                                async for message in result:
                                    answers.append(message.SerializeToString())
                        result.cancel()
                    elif method.server_streaming:
                        async for message in result:
                            answers.append(message.SerializeToString())
                    else:
                        answers.append((await result).SerializeToString())
                except grpc.aio.AioRpcError as exc:
                    assert exc.code() in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.NOT_FOUND,
                                          grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION), \
                        f"{method.name}: {exc.code()} {exc.details()}"
                    refusals[method.name] = exc.details() or ""
                    continue
                # answered: then only about the attacker's own things (a new agreement, its own network, its
                # own empty list, a removal of a network it does not have, which is idempotent)
                assert method.name in ("ProposeAgreement", "CreateNetwork", "ListActivities", "RemoveNetwork",
                                       "WatchPayments"), method.name
                for value in victim_bytes:
                    assert not any(value in answer for answer in answers), f"{method.name} gave away {value!r}"

        # the victim's network was named, and not found for the attacker (not another refusal)
        assert "victims-net" in refusals["RelayFrames"] and "not found" in refusals["RelayFrames"], refusals
        assert "victims-net" in refusals["SetNetworkPeers"], refusals

        # a call with the victim's claim and no proof at all is refused outright
        unsigned = ContractClient(address, None, token=provider.token)
        async with unsigned:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await unsigned.activity.GetActivityState(act.GetActivityStateRequest(activity_id=activity),
                                                         metadata=(*unsigned.metadata,
                                                                   ("x-requestor-id", victim.requestor_id)))
            assert refused.value.code() is grpc.StatusCode.UNAUTHENTICATED

        # and the victim's things are as they were
        assert (await victim.state(activity)).state == act.ACTIVITY_STATE_READY
        assert (await victim.get_network("victims-net")).network_id == "victims-net"
        again = await victim.run_batch(activity, [victim.run("/bin/echo", "still mine")])
        assert again.stdout() == b"still mine\n"


async def test_a_connected_requestor_finds_a_restarted_provider_again_over_tls(
        simulated_lan: SimulatedLan, provider_daemons) -> None:
    """The provider presents the same certificate after a crash and restart (it is kept in its
    home): the requestor's channel, which trusts the one it fetched, reconnects."""
    provider = provider_daemons(simulated_lan.add_host("p1"))
    client = ProviderClient(provider.pinned_address, RequestorIdentity.ephemeral())
    before = await client.offer()
    provider.kill()
    provider.start()
    after, unreachable = None, None
    for _ in range(50):  # a bounded poll while the restarted provider comes up
        try:
            after = await client.offer()
            break
        except ProviderUnreachableError as exc:
            unreachable = exc
            await asyncio.sleep(0.2)
    assert after is not None, f"the restarted provider never answered over TLS: {unreachable}"
    assert after.provider_id == before.provider_id
    await client.close()
