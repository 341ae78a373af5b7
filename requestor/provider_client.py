"""One provider daemon as the requestor sees it: typed calls over the ExeUnit contract.

Every call identifies the requestor (`x-requestor-id`) and, when a token is set, authenticates.
gRPC errors become requestor exceptions here (errors.from_rpc_error) and nowhere else. Batch
event streams survive a dropped connection: they resume from the next sequence number.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, TypeVar

import grpc
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from exeunit.v1 import activity_pb2 as act
from exeunit.v1 import activity_pb2_grpc as act_grpc
from exeunit.v1 import market_pb2 as mkt
from exeunit.v1 import market_pb2_grpc as mkt_grpc
from exeunit.v1 import network_pb2 as net
from exeunit.v1 import network_pb2_grpc as net_grpc
from exeunit.v1 import transfer_pb2 as xfer
from exeunit.v1 import transfer_pb2_grpc as xfer_grpc
from requestor import errors

log = logging.getLogger(__name__)

CHUNK_SIZE = 1 << 20
UPLOAD_AHEAD = 4  # chunks read and hashed ahead of the one being sent
RECONNECT_FIRST_PAUSE, RECONNECT_MAX_PAUSE = 0.2, 2.0  # backoff between attempts to reach a provider again
T = TypeVar("T")


@dataclass(frozen=True)
class Pricing:
    start_fee: float
    per_cpu_second: float
    per_duration_second: float
    currency: str
    per_unit: dict[str, float] = field(default_factory=dict)  # other counters' prices, by name

    def cost(self, cpu_seconds: float, duration_seconds: float) -> float:
        return self.start_fee + self.per_cpu_second * cpu_seconds + self.per_duration_second * duration_seconds


@dataclass(frozen=True)
class Offer:
    """A provider's offer, with the address it came from."""

    address: str
    provider_id: str
    provider_name: str
    subnet_tag: str
    runtime_name: str
    cpu_threads: int
    memory_bytes: int
    storage_bytes: int
    total_cpu_threads: int
    total_memory_bytes: int
    total_storage_bytes: int
    pricing: Pricing
    images: tuple[str, ...]
    accepts_image_urls: bool
    capabilities: tuple[str, ...]
    runtimes: tuple[str, ...] = ()  # every runtime it runs (runtime_name first)


@dataclass(frozen=True)
class DemandSpec:
    image_hash: str
    image_tag: str
    image_url: str
    min_memory_bytes: int
    min_storage_bytes: int
    min_cpu_threads: int
    capabilities: tuple[str, ...]
    subnet_tag: str
    expiration: datetime
    runtime: str = ""


@dataclass(frozen=True)
class Refusal:
    reason: str
    message: str


@dataclass(frozen=True)
class AgreementInfo:
    agreement_id: str
    cpu_threads: int
    expiration: datetime


@dataclass(frozen=True)
class ActivityStatus:
    state: str  # "New", "Deployed", "Ready", "Terminated"
    reason: str
    message: str


@dataclass(frozen=True)
class Usage:
    cpu_seconds: float
    duration_seconds: float
    cost: float
    memory_bytes: int = 0
    storage_bytes: int = 0
    measured: datetime | None = None
    counters: dict[str, float] = field(default_factory=dict)


ACTIVITY_STATE_NAMES = {
    act.ACTIVITY_STATE_NEW: "New",
    act.ACTIVITY_STATE_DEPLOYED: "Deployed",
    act.ACTIVITY_STATE_READY: "Ready",
    act.ACTIVITY_STATE_TERMINATED: "Terminated",
}


def _timestamp(value: datetime) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(value.astimezone(timezone.utc))
    return ts


class ProviderClient:
    """Calls to one provider daemon at `address` ("host:port")."""

    def __init__(self, address: str, requestor_id: str, token: str | None = None, call_timeout: float = 30.0,
                 reconnect_for: float = 10.0) -> None:
        self.address = address
        self.reconnect_for = reconnect_for  # how long a dropped batch stream is retried (a daemon restart)
        self._channel = grpc.aio.insecure_channel(
            address,
            options=[("grpc.max_receive_message_length", 8 << 20), ("grpc.keepalive_time_ms", 10_000)],
        )
        self._metadata: tuple[tuple[str, str], ...] = (("x-requestor-id", requestor_id),)
        if token:
            self._metadata += (("authorization", f"Bearer {token}"),)
        self._timeout = call_timeout
        self._market = mkt_grpc.MarketStub(self._channel)
        self._activity = act_grpc.ActivityStub(self._channel)
        self._transfer = xfer_grpc.TransferStub(self._channel)
        self._network = net_grpc.NetworkStub(self._channel)

    async def close(self) -> None:
        await self._channel.close()

    async def _call(self, method: str, call: Callable[..., Awaitable[T]], request: Any, timeout: float | None = None) -> T:
        try:
            return await call(request, metadata=self._metadata, timeout=timeout or self._timeout)
        except grpc.aio.AioRpcError as exc:
            raise errors.from_rpc_error(method, self.address, exc) from exc

    @asynccontextmanager
    async def _translated(self, method: str) -> AsyncIterator[None]:
        try:
            yield
        except grpc.aio.AioRpcError as exc:
            raise errors.from_rpc_error(method, self.address, exc) from exc

    # Market

    async def offer(self, timeout: float = 5.0) -> Offer:
        response = await self._call("GetOffer", self._market.GetOffer, mkt.GetOfferRequest(), timeout)
        o = response.offer
        return Offer(
            address=self.address,
            provider_id=o.provider_id,
            provider_name=o.provider_name,
            subnet_tag=o.subnet_tag,
            runtime_name=o.runtime_name,
            cpu_threads=o.cpu_threads,
            memory_bytes=o.memory_bytes,
            storage_bytes=o.storage_bytes,
            total_cpu_threads=o.total_cpu_threads,
            total_memory_bytes=o.total_memory_bytes,
            total_storage_bytes=o.total_storage_bytes,
            pricing=Pricing(o.pricing.start_fee, o.pricing.per_cpu_second, o.pricing.per_duration_second, o.pricing.currency,
                            dict(o.pricing.per_unit)),
            images=tuple(o.images),
            accepts_image_urls=o.accepts_image_urls,
            capabilities=tuple(o.capabilities),
            runtimes=tuple(o.runtimes) or (o.runtime_name,),
        )

    async def propose(self, demand: DemandSpec) -> AgreementInfo | Refusal:
        request = mkt.ProposeAgreementRequest(
            demand=mkt.Demand(
                image=mkt.ImageRef(hash=demand.image_hash, tag=demand.image_tag, url=demand.image_url),
                min_memory_bytes=demand.min_memory_bytes,
                min_storage_bytes=demand.min_storage_bytes,
                min_cpu_threads=demand.min_cpu_threads,
                capabilities=list(demand.capabilities),
                subnet_tag=demand.subnet_tag,
                expiration=_timestamp(demand.expiration),
                runtime=demand.runtime,
            )
        )
        response = await self._call("ProposeAgreement", self._market.ProposeAgreement, request)
        if response.WhichOneof("outcome") == "refusal":
            return Refusal(mkt.RefusalReason.Name(response.refusal.reason), response.refusal.message)
        agreement = response.agreement
        return AgreementInfo(
            agreement_id=agreement.agreement_id,
            cpu_threads=agreement.cpu_threads,
            expiration=agreement.expiration.ToDatetime(tzinfo=timezone.utc),
        )

    async def terminate_agreement(self, agreement_id: str, reason: str, message: str = "") -> None:
        request = mkt.TerminateAgreementRequest(agreement_id=agreement_id, reason=reason, message=message)
        await self._call("TerminateAgreement", self._market.TerminateAgreement, request)

    # Networks

    async def create_network(self, network_id: str, address: str, gateway: str = "") -> None:
        """Creates the requestor's network on this provider (idempotent for the same address)."""
        request = net.CreateNetworkRequest(network_id=network_id, address=address, gateway=gateway)
        await self._call("CreateNetwork", self._network.CreateNetwork, request)

    async def remove_network(self, network_id: str) -> list[str]:
        """Removes it here; returns the activities that were cut off it."""
        response = await self._call(
            "RemoveNetwork", self._network.RemoveNetwork, net.RemoveNetworkRequest(network_id=network_id)
        )
        return list(response.detached_activity_ids)

    # Activities

    async def create_activity(self, agreement_id: str) -> str:
        response = await self._call(
            "CreateActivity", self._activity.CreateActivity, act.CreateActivityRequest(agreement_id=agreement_id)
        )
        return response.activity_id

    async def run_batch(self, activity_id: str, commands: list[act.Command], batch_id: str) -> AsyncIterator[act.BatchEvent]:
        """Submits a batch and yields all its events, in one call (ExecStream)."""
        async for event in self.batch_events(activity_id, batch_id, commands=commands):
            yield event

    async def batch_events(self, activity_id: str, batch_id: str, reconnect_for: float | None = None,
                           commands: list[act.Command] | None = None) -> AsyncIterator[act.BatchEvent]:
        """All events of a batch, in order, resuming after a dropped connection (for up to
        `reconnect_for` seconds of trying, with backoff) from the next sequence number, so that
        nothing is missed or repeated. With `commands`, the batch is submitted by the same call
        (and again, idempotently, until an event came)."""
        reconnect_for = self.reconnect_for if reconnect_for is None else reconnect_for
        next_sequence = 0
        deadline: float | None = None
        pause = RECONNECT_FIRST_PAUSE
        loop = asyncio.get_running_loop()
        while True:
            if commands is not None and next_sequence == 0:
                exec_request = act.ExecRequest(activity_id=activity_id, commands=commands, batch_id=batch_id)
                method, stream = "ExecStream", self._activity.ExecStream(exec_request, metadata=self._metadata)
            else:
                request = act.StreamBatchEventsRequest(activity_id=activity_id, batch_id=batch_id, from_sequence=next_sequence)
                method, stream = "StreamBatchEvents", self._activity.StreamBatchEvents(request, metadata=self._metadata)
            try:
                async for event in stream:
                    deadline, pause = None, RECONNECT_FIRST_PAUSE
                    next_sequence = event.sequence + 1
                    yield event
                    if event.WhichOneof("kind") == "batch_finished":
                        return
                return
            except grpc.aio.AioRpcError as exc:
                if exc.code() not in errors.UNREACHABLE_CODES:
                    raise errors.from_rpc_error(method, self.address, exc) from exc
                deadline = deadline or loop.time() + reconnect_for
                if loop.time() >= deadline:
                    raise errors.from_rpc_error(method, self.address, exc) from exc
                log.info("event=stream_reconnect provider=%s batch=%s from=%d", self.address, batch_id, next_sequence)
                await asyncio.sleep(pause)
                pause = min(pause * 2, RECONNECT_MAX_PAUSE)

    async def watch(self, activity_id: str) -> AsyncIterator[ActivityStatus]:
        """The activity's state, then each change; ends after Terminated."""
        async with self._translated("WatchActivity"):
            async for status in self._activity.WatchActivity(
                act.WatchActivityRequest(activity_id=activity_id), metadata=self._metadata
            ):
                yield ActivityStatus(ACTIVITY_STATE_NAMES.get(status.state, "Unspecified"), status.reason, status.message)

    async def state(self, activity_id: str, timeout: float = 5.0) -> ActivityStatus:
        response = await self._call(
            "GetActivityState", self._activity.GetActivityState, act.GetActivityStateRequest(activity_id=activity_id), timeout
        )
        status = response.status
        return ActivityStatus(ACTIVITY_STATE_NAMES.get(status.state, "Unspecified"), status.reason, status.message)

    async def usage(self, activity_id: str) -> Usage:
        response = await self._call(
            "GetActivityUsage", self._activity.GetActivityUsage, act.GetActivityUsageRequest(activity_id=activity_id)
        )
        return Usage(response.cpu_seconds, response.duration.ToTimedelta().total_seconds(), response.cost,
                     response.memory_bytes, response.storage_bytes,
                     response.measured.ToDatetime(tzinfo=timezone.utc) if response.HasField("measured") else None,
                     dict(response.counters))

    async def destroy(self, activity_id: str) -> None:
        await self._call("DestroyActivity", self._activity.DestroyActivity, act.DestroyActivityRequest(activity_id=activity_id))

    # Tunnels

    async def tunnel(self, activity_id: str, port: int, local_reader: asyncio.StreamReader,
                     local_writer: asyncio.StreamWriter) -> None:
        """Carries one local TCP connection to `port` of the activity and back, until both sides
        have closed; half-closes pass through. Raises ProviderCallError when the tunnel cannot
        open (nothing listens there, say)."""
        call = self._activity.Tunnel(metadata=self._metadata)
        async with self._translated("Tunnel"):
            await call.write(act.TunnelRequest(open=act.TunnelOpen(activity_id=activity_id, port=port)))
            opened = await call.read()
            if opened is grpc.aio.EOF or opened.WhichOneof("part") != "opened":
                await call  # raises the provider's status
                raise errors.RequestorError(f"provider {self.address} did not open the tunnel")

            async def upstream() -> None:
                while data := await local_reader.read(CHUNK_SIZE):
                    await call.write(act.TunnelRequest(data=data))
                await call.write(act.TunnelRequest(close=act.TunnelClose()))
                await call.done_writing()

            sending = asyncio.create_task(upstream())
            try:
                while (response := await call.read()) is not grpc.aio.EOF:
                    kind = response.WhichOneof("part")
                    if kind == "data":
                        local_writer.write(response.data)
                        await local_writer.drain()
                    elif kind == "closed" and local_writer.can_write_eof():
                        local_writer.write_eof()
                await sending
            finally:
                sending.cancel()
                call.cancel()

    # Transfers

    async def upload(self, activity_id: str, path: str, size: int, chunks: AsyncIterator[bytes]) -> str:
        """Streams `size` bytes to `path`; returns the sha256 both sides agreed on."""
        digest = hashlib.sha256()
        ahead: asyncio.Queue[bytes | BaseException | None] = asyncio.Queue(UPLOAD_AHEAD)

        async def read_ahead() -> None:
            """Reads and hashes (in a thread) the next chunks while earlier ones are sent."""
            try:
                async for chunk in chunks:
                    for start in range(0, len(chunk), CHUNK_SIZE):
                        piece = chunk if len(chunk) <= CHUNK_SIZE else chunk[start : start + CHUNK_SIZE]
                        await asyncio.to_thread(digest.update, piece)
                        await ahead.put(piece)
                await ahead.put(None)
            except Exception as exc:  # handed to the sender, which raises it
                await ahead.put(exc)

        async def requests() -> AsyncIterator[xfer.UploadRequest]:
            yield xfer.UploadRequest(header=xfer.UploadHeader(activity_id=activity_id, path=path, size=size))
            while (piece := await ahead.get()) is not None:
                if isinstance(piece, BaseException):
                    raise piece
                yield xfer.UploadRequest(chunk=piece)
            yield xfer.UploadRequest(trailer=xfer.UploadTrailer(sha256=digest.hexdigest()))

        reader = asyncio.create_task(read_ahead())
        try:
            async with self._translated("Upload"):
                response = await self._transfer.Upload(requests(), metadata=self._metadata)
        finally:
            reader.cancel()
        return response.sha256

    async def download(self, activity_id: str, path: str) -> AsyncIterator[bytes]:
        """The file's chunks; raises at the end unless exactly the announced size arrived with a
        matching checksum (never a silently short or corrupted file)."""
        digest = hashlib.sha256()
        hashing: asyncio.Future[None] | None = None  # one chunk hashed in a thread while the next arrives
        announced: int | None = None
        received = 0
        async with self._translated("Download"):
            async for part in self._transfer.Download(xfer.DownloadRequest(activity_id=activity_id, path=path), metadata=self._metadata):
                kind = part.WhichOneof("part")
                if kind == "header":
                    announced = part.header.size
                elif kind == "chunk":
                    received += len(part.chunk)
                    if hashing is not None:
                        await hashing
                    hashing = asyncio.ensure_future(asyncio.to_thread(digest.update, part.chunk))
                    yield part.chunk
                elif kind == "trailer":
                    if hashing is not None:
                        await hashing
                    if received != announced:
                        raise errors.RequestorError(
                            f"download of {path} from {self.address} is incomplete: {received} bytes arrived, "
                            f"{announced} were announced"
                        )
                    if part.trailer.sha256 != digest.hexdigest():
                        raise errors.RequestorError(
                            f"download of {path} from {self.address} arrived corrupted (checksum mismatch)"
                        )
                    return
        raise errors.RequestorError(
            f"download of {path} from {self.address} ended after {received} bytes without its trailer"
        )


# ExeScript commands as the contract spells them


def deploy_command(network_id: str = "", ip: str = "") -> act.Command:
    networks = [act.DeployNetwork(network_id=network_id, ip=ip)] if network_id else []
    return act.Command(deploy=act.DeployCommand(networks=networks))


def start_command(args: tuple[str, ...]) -> act.Command:
    return act.Command(start=act.StartCommand(args=list(args)))


def terminate_command() -> act.Command:
    return act.Command(terminate=act.TerminateCommand())


def run_command(entry_point: str, args: tuple[str, ...], env: dict[str, str], workdir: str, timeout: float | None) -> act.Command:
    command = act.RunCommand(entry_point=entry_point, args=list(args), env=env, workdir=workdir)
    if timeout:
        duration = Duration()
        duration.FromNanoseconds(int(timeout * 1e9))
        command.timeout.CopyFrom(duration)
    return act.Command(run=command)
