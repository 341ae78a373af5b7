"""A small client of the contract for tests: raw stubs with the caller's metadata, plus helpers
that run a batch and collect its events. Errors surface as grpc.aio.AioRpcError, so tests can
assert exact status codes and messages."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from types import TracebackType

import grpc
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from exeunit.v1 import activity_pb2 as act
from exeunit.v1 import activity_pb2_grpc as act_grpc
from exeunit.v1 import market_pb2 as mkt
from exeunit.v1 import market_pb2_grpc as mkt_grpc
from exeunit.v1 import network_pb2 as net
from exeunit.v1 import network_pb2_grpc as net_grpc
from exeunit.v1 import payment_pb2_grpc as pay_grpc
from exeunit.v1 import transfer_pb2 as xfer
from exeunit.v1 import transfer_pb2_grpc as xfer_grpc
from requestor.client.connect import CallSigner, KnownProviders, OfferRefused, ProviderAddress, connect
from requestor.client.identity import RequestorIdentity

CHUNK = 1 << 20


@dataclass
class BatchRun:
    batch_id: str
    events: list[act.BatchEvent] = field(default_factory=list)

    def of_kind(self, kind: str) -> list[act.BatchEvent]:
        return [e for e in self.events if e.WhichOneof("kind") == kind]

    def stdout(self, index: int | None = None) -> bytes:
        return b"".join(e.stdout.data for e in self.of_kind("stdout") if index is None or e.command_index == index)

    def stderr(self, index: int | None = None) -> bytes:
        return b"".join(e.stderr.data for e in self.of_kind("stderr") if index is None or e.command_index == index)

    @property
    def finished(self) -> list[act.CommandFinished]:
        return [e.finished for e in self.of_kind("finished")]

    @property
    def succeeded(self) -> bool:
        last = self.events[-1]
        return last.batch_finished.state == act.BATCH_STATE_SUCCEEDED


def expiration(minutes: float = 10) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(datetime.now(timezone.utc) + timedelta(minutes=minutes))
    return ts


_IDENTITIES: dict[str, RequestorIdentity] = {}


def identity_named(label: str) -> RequestorIdentity:
    """One key per label for the whole test run: "requestor-1" is the same requestor in every test."""
    if label not in _IDENTITIES:
        _IDENTITIES[label] = RequestorIdentity.ephemeral()
    return _IDENTITIES[label]


class ContractClient:
    """Raw stubs whose calls carry the proof of the requestor named `label` (one key per label;
    label None: calls with no proof at all). Connects on `async with`: over TLS, checking the
    provider's id when the address pins one (`host:port#0x...`); in plaintext on loopback, learning
    the provider's id from its offer; either way, its boot epoch from the offer (a client made
    before the daemon restarted signs for its earlier start, and is refused)."""

    def __init__(self, address: str, label: str | None, token: str | None = None,
                 identity: RequestorIdentity | None = None) -> None:
        self.address = address
        self.identity = identity or (identity_named(label) if label is not None else None)
        self.requestor_id = self.identity.requestor_id if self.identity else ""
        self.metadata: tuple[tuple[str, str], ...] = ()
        if token is not None:
            self.metadata += (("authorization", f"Bearer {token}"),)
        self.provider_id = ""
        self.boot_epoch = ""

    async def connect(self) -> None:
        where = ProviderAddress.parse(self.address)
        options = [("grpc.max_receive_message_length", 8 << 20), ("grpc.max_send_message_length", 64 << 20)]
        signer = CallSigner(self.identity or RequestorIdentity.ephemeral())
        interceptors = signer.interceptors() if self.identity is not None else []
        try:  # checked as the requestor library checks it
            connection = await connect(where, options, KnownProviders(), self.metadata, interceptors)
            self.channel, self.provider_id, self.boot_epoch = connection.channel, connection.provider_id, connection.boot_epoch
            signer.connection = connection
        except OfferRefused:  # a wrong token, say: the calls go unsigned and the test sees how they are refused
            self.channel = grpc.aio.insecure_channel(where.hostport, options=options, interceptors=interceptors)
        self.market = mkt_grpc.MarketStub(self.channel)
        self.activity = act_grpc.ActivityStub(self.channel)
        self.transfer = xfer_grpc.TransferStub(self.channel)
        self.network = net_grpc.NetworkStub(self.channel)
        self.payment = pay_grpc.PaymentStub(self.channel)

    async def __aenter__(self) -> ContractClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object | TracebackType) -> None:
        await self.channel.close()

    # Market

    def demand(self, tag: str = "", hash: str = "", url: str = "", **fields: object) -> mkt.Demand:
        fields.setdefault("subnet_tag", "public")
        fields.setdefault("expiration", expiration())
        return mkt.Demand(image=mkt.ImageRef(tag=tag, hash=hash, url=url), **fields)  # type: ignore[arg-type]

    async def propose(self, demand: mkt.Demand) -> mkt.ProposeAgreementResponse:
        return await self.market.ProposeAgreement(mkt.ProposeAgreementRequest(demand=demand), metadata=self.metadata)

    async def agreement(self, tag: str = "", **demand: object) -> str:
        response = await self.propose(self.demand(tag, **demand))  # type: ignore[arg-type]
        assert response.WhichOneof("outcome") == "agreement", response
        return response.agreement.agreement_id

    async def new_activity(self, tag: str = "", **demand: object) -> str:
        agreement_id = await self.agreement(tag, **demand)
        created = await self.activity.CreateActivity(
            act.CreateActivityRequest(agreement_id=agreement_id), metadata=self.metadata
        )
        return created.activity_id

    async def ready_activity(self, tag: str, **demand: object) -> str:
        """A new activity for the demand, deployed and started; returns its id."""
        activity_id = await self.new_activity(tag, **demand)
        run = await self.run_batch(activity_id, [self.deploy(), self.start()])
        assert run.succeeded, run.finished
        return activity_id

    # Commands

    @staticmethod
    def deploy(network_id: str = "", ip: str = "") -> act.Command:
        networks = [act.DeployNetwork(network_id=network_id, ip=ip)] if network_id else []
        return act.Command(deploy=act.DeployCommand(networks=networks))

    # Networks

    async def create_network(self, network_id: str, address: str, gateway: str = "") -> net.NetworkInfo:
        return await self.network.CreateNetwork(
            net.CreateNetworkRequest(network_id=network_id, address=address, gateway=gateway), metadata=self.metadata
        )

    async def get_network(self, network_id: str) -> net.NetworkInfo:
        return await self.network.GetNetwork(net.GetNetworkRequest(network_id=network_id), metadata=self.metadata)

    async def remove_network(self, network_id: str) -> net.RemoveNetworkResponse:
        return await self.network.RemoveNetwork(net.RemoveNetworkRequest(network_id=network_id), metadata=self.metadata)

    async def networked_activity(self, network_id: str, ip: str, tag: str = "exeunit-base:latest") -> str:
        """A new activity deployed on the network at `ip` and started; returns its id."""
        activity_id = await self.new_activity(tag)
        run = await self.run_batch(activity_id, [self.deploy(network_id, ip), self.start()])
        assert run.succeeded, run.finished
        return activity_id

    @staticmethod
    def start() -> act.Command:
        return act.Command(start=act.StartCommand())

    @staticmethod
    def terminate() -> act.Command:
        return act.Command(terminate=act.TerminateCommand())

    @staticmethod
    def run(*argv: str, env: dict[str, str] | None = None, workdir: str = "", timeout: float = 0) -> act.Command:
        command = act.RunCommand(entry_point=argv[0], args=list(argv[1:]), env=env or {}, workdir=workdir)
        if timeout:
            command.timeout.CopyFrom(Duration(seconds=int(timeout), nanos=int((timeout % 1) * 1e9)))
        return act.Command(run=command)

    @staticmethod
    def sh(script: str, **kw: object) -> act.Command:
        return ContractClient.run("/bin/sh", "-c", script, **kw)  # type: ignore[arg-type]

    # Batches

    async def exec(self, activity_id: str, commands: list[act.Command], batch_id: str = "") -> act.ExecResponse:
        return await self.activity.Exec(
            act.ExecRequest(activity_id=activity_id, commands=commands, batch_id=batch_id), metadata=self.metadata
        )

    def events(self, activity_id: str, batch_id: str, from_sequence: int = 0) -> AsyncIterator[act.BatchEvent]:
        return self.activity.StreamBatchEvents(
            act.StreamBatchEventsRequest(activity_id=activity_id, batch_id=batch_id, from_sequence=from_sequence),
            metadata=self.metadata,
        )

    async def run_batch(self, activity_id: str, commands: list[act.Command]) -> BatchRun:
        batch_id = (await self.exec(activity_id, commands)).batch_id
        run = BatchRun(batch_id)
        async for event in self.events(activity_id, batch_id):
            run.events.append(event)
        return run

    async def get_batch(self, activity_id: str, batch_id: str) -> act.GetBatchResponse:
        return await self.activity.GetBatch(
            act.GetBatchRequest(activity_id=activity_id, batch_id=batch_id), metadata=self.metadata
        )

    async def state(self, activity_id: str) -> act.ActivityStatus:
        response = await self.activity.GetActivityState(
            act.GetActivityStateRequest(activity_id=activity_id), metadata=self.metadata
        )
        return response.status

    async def destroy(self, activity_id: str) -> act.ActivityStatus:
        response = await self.activity.DestroyActivity(
            act.DestroyActivityRequest(activity_id=activity_id), metadata=self.metadata
        )
        return response.status

    # Transfers

    async def upload(self, activity_id: str, path: str, chunks: Iterable[bytes], size: int, sha256: str = "") -> xfer.UploadResponse:
        async def requests() -> AsyncIterator[xfer.UploadRequest]:
            digest = hashlib.sha256()
            yield xfer.UploadRequest(header=xfer.UploadHeader(activity_id=activity_id, path=path, size=size))
            for chunk in chunks:
                digest.update(chunk)
                yield xfer.UploadRequest(chunk=chunk)
            yield xfer.UploadRequest(trailer=xfer.UploadTrailer(sha256=sha256 or digest.hexdigest()))

        return await self.transfer.Upload(requests(), metadata=self.metadata)

    async def upload_bytes(self, activity_id: str, path: str, data: bytes) -> xfer.UploadResponse:
        chunks = [data[i : i + CHUNK] for i in range(0, len(data), CHUNK)]
        return await self.upload(activity_id, path, chunks, len(data))

    async def download(self, activity_id: str, path: str) -> tuple[xfer.DownloadHeader, list[bytes], str]:
        """Header, chunks and trailer sha256 of a download."""
        header, chunks, trailer = None, [], ""
        async for part in self.transfer.Download(
            xfer.DownloadRequest(activity_id=activity_id, path=path), metadata=self.metadata
        ):
            kind = part.WhichOneof("part")
            if kind == "header":
                header = part.header
            elif kind == "chunk":
                chunks.append(part.chunk)
            else:
                trailer = part.trailer.sha256
        assert header is not None
        return header, chunks, trailer
