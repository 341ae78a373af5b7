"""The gRPC skin: validate, call the provider, convert. No domain logic lives here."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc

from exeunit import errors
from exeunit.api import convert
from exeunit.services import telemetry
from exeunit.domain.market import Agreement
from exeunit.domain.reports import ActivitySummary
from exeunit.services.provider import Provider
from exeunit.services.relay import RelayedFrame
from exeunit.services.transfers import PortConnection
from exeunit.api.auth import Caller, OperatorCaller
from exeunit.api.status import anonymous_ok, streaming, unary
from exeunit.v1.conventions import CHUNK_SIZE, DIGEST_BLAKE3, DIGEST_SHA256
from exeunit.runtime.files import transfer_digests
from exeunit.v1.chunks import decode_chunk, encode_chunk
from exeunit.v1 import activity_pb2 as act
from exeunit.v1 import activity_pb2_grpc as act_grpc
from exeunit.v1 import market_pb2 as mkt
from exeunit.v1 import market_pb2_grpc as mkt_grpc
from exeunit.v1 import network_pb2 as net
from exeunit.v1 import network_pb2_grpc as net_grpc
from exeunit.v1 import transfer_pb2 as xfer
from exeunit.v1 import transfer_pb2_grpc as xfer_grpc

Context = grpc.aio.ServicerContext


# A refused upload is read to its end (up to this much, discarded) before the refusal is sent:
# grpc-python's client reports a refusal that arrives while it is still sending as INTERNAL
# ("Failed execute_batch") and loses the real status and message.
DRAIN_LIMIT_BYTES = 64 << 20
DRAIN_IDLE_SECONDS = 2.0


async def _drain(parts: AsyncIterator[xfer.UploadRequest]) -> None:
    drained = 0
    try:
        while drained < DRAIN_LIMIT_BYTES:
            part = await asyncio.wait_for(anext(parts, None), DRAIN_IDLE_SECONDS)
            if part is None:
                return
            drained += part.ByteSize()
    except (TimeoutError, errors.ExeUnitError):
        return


def _required(value: str, name: str) -> str:
    if not value:
        raise errors.InvalidArgument(f"{name} is required")
    return value


class MarketServicer(mkt_grpc.MarketServicer):
    def __init__(self, provider: Provider, caller: Caller) -> None:
        self.provider = provider
        self.caller = caller

    @unary
    @anonymous_ok
    async def GetOffer(self, request: mkt.GetOfferRequest, context: Context, requestor_id: str) -> mkt.GetOfferResponse:
        offer = convert.offer_to_proto(await self.provider.offer())
        offer.boot_epoch = self.caller.boot_epoch  # the API's: proofs are signed for it (exeunit.api.auth)
        return mkt.GetOfferResponse(offer=offer)

    @unary
    async def ProposeAgreement(
        self, request: mkt.ProposeAgreementRequest, context: Context, requestor_id: str
    ) -> mkt.ProposeAgreementResponse:
        if not request.HasField("demand"):
            raise errors.InvalidArgument("demand is required")
        outcome = await self.provider.propose(requestor_id, convert.demand_from_proto(request.demand))
        if isinstance(outcome, Agreement):
            return mkt.ProposeAgreementResponse(agreement=convert.agreement_to_proto(outcome))
        return mkt.ProposeAgreementResponse(refusal=convert.refusal_to_proto(outcome))

    @unary
    async def GetAgreement(self, request: mkt.GetAgreementRequest, context: Context, requestor_id: str) -> mkt.GetAgreementResponse:
        agreement = self.provider.agreement(requestor_id, _required(request.agreement_id, "agreement_id"))
        usage = await self.provider.agreement_usage(agreement)
        return mkt.GetAgreementResponse(agreement=convert.agreement_to_proto(agreement, usage))

    @unary
    async def TerminateAgreement(
        self, request: mkt.TerminateAgreementRequest, context: Context, requestor_id: str
    ) -> mkt.TerminateAgreementResponse:
        agreement = await self.provider.terminate_agreement(
            requestor_id, _required(request.agreement_id, "agreement_id"), request.reason, request.message
        )
        usage = await self.provider.agreement_usage(agreement)
        return mkt.TerminateAgreementResponse(agreement=convert.agreement_to_proto(agreement, usage))


class NetworkServicer(net_grpc.NetworkServicer):
    def __init__(self, provider: Provider, caller: Caller) -> None:
        self.provider = provider
        self.caller = caller

    @unary
    async def CreateNetwork(self, request: net.CreateNetworkRequest, context: Context, requestor_id: str) -> net.NetworkInfo:
        network = self.provider.create_network(
            requestor_id, _required(request.network_id, "network_id"), _required(request.address, "address"),
            request.gateway, request.spans_providers, {p.provider_id: p.endpoint for p in request.peers},
        )
        return convert.network_to_proto(network)

    @unary
    async def SetNetworkPeers(self, request: net.SetNetworkPeersRequest, context: Context,
                              requestor_id: str) -> net.NetworkInfo:
        network = self.provider.set_network_peers(requestor_id, _required(request.network_id, "network_id"),
                                                  {p.provider_id: p.endpoint for p in request.peers})
        return convert.network_to_proto(network)

    @streaming
    async def RelayFrames(self, request: AsyncIterator[net.RelayFrame], context: Context,
                          requestor_id: str) -> AsyncIterator[net.RelayFrame]:
        async def incoming() -> AsyncIterator[RelayedFrame]:
            async for frame in request:
                yield RelayedFrame(frame.network_id, frame.peer, frame.sealed)

        async for frame in self.provider.relays.stream(requestor_id, incoming()):
            yield net.RelayFrame(network_id=frame.network_id, peer=frame.peer, sealed=frame.sealed)

    @unary
    async def GetNetwork(self, request: net.GetNetworkRequest, context: Context, requestor_id: str) -> net.NetworkInfo:
        return convert.network_to_proto(self.provider.network(requestor_id, _required(request.network_id, "network_id")))

    @unary
    async def RemoveNetwork(self, request: net.RemoveNetworkRequest, context: Context,
                            requestor_id: str) -> net.RemoveNetworkResponse:
        cut = await self.provider.remove_network(requestor_id, _required(request.network_id, "network_id"))
        return net.RemoveNetworkResponse(detached_activity_ids=cut)


class ActivityServicer(act_grpc.ActivityServicer):
    def __init__(self, provider: Provider, caller: Caller) -> None:
        self.provider = provider
        self.caller = caller

    @unary
    async def CreateActivity(
        self, request: act.CreateActivityRequest, context: Context, requestor_id: str
    ) -> act.CreateActivityResponse:
        activity = await self.provider.create_activity(requestor_id, _required(request.agreement_id, "agreement_id"))
        return act.CreateActivityResponse(
            activity_id=activity.activity_id, status=convert.status_to_proto(activity.status())
        )

    @unary
    async def Exec(self, request: act.ExecRequest, context: Context, requestor_id: str) -> act.ExecResponse:
        commands = convert.commands_from_proto(list(request.commands))
        batch, created = self.provider.exec(
            requestor_id, _required(request.activity_id, "activity_id"), commands, request.batch_id
        )
        return act.ExecResponse(batch_id=batch.batch_id, created=created)

    @streaming
    async def StreamBatchEvents(
        self, request: act.StreamBatchEventsRequest, context: Context, requestor_id: str
    ) -> AsyncIterator[act.BatchEvent]:
        events = self.provider.batch_events(
            requestor_id,
            _required(request.activity_id, "activity_id"),
            _required(request.batch_id, "batch_id"),
            request.from_sequence,
        )
        async for event in events:
            yield convert.event_to_proto(event)

    @streaming
    async def ExecStream(self, request: act.ExecRequest, context: Context, requestor_id: str) -> AsyncIterator[act.BatchEvent]:
        activity_id = _required(request.activity_id, "activity_id")
        commands = convert.commands_from_proto(list(request.commands))
        batch, _ = self.provider.exec(requestor_id, activity_id, commands, request.batch_id)
        async for event in self.provider.batch_events(requestor_id, activity_id, batch.batch_id, 0):
            yield convert.event_to_proto(event)

    @unary
    async def ListActivities(self, request: act.ListActivitiesRequest, context: Context,
                             requestor_id: str) -> act.ListActivitiesResponse:
        activities = await self.provider.list_activities(requestor_id)
        return act.ListActivitiesResponse(activities=_with_money(self.provider, activities))

    @streaming
    async def Tunnel(self, request_iterator: AsyncIterator[act.TunnelRequest], context: Context,
                     requestor_id: str) -> AsyncIterator[act.TunnelResponse]:
        requests = aiter(request_iterator)
        first = await anext(requests, None)
        if first is None or first.WhichOneof("part") != "open":
            raise errors.InvalidArgument("a tunnel starts with an open message (activity_id, port)")
        activity_id = _required(first.open.activity_id, "open.activity_id")
        async with self.provider.transfers.tunnel(requestor_id, activity_id, first.open.port) as port:
            yield act.TunnelResponse(opened=act.TunnelOpened())
            upstream = asyncio.create_task(_to_port(requests, port))
            try:
                while data := await port.receive():
                    telemetry.TUNNEL_OUT_BYTES.inc(len(data))
                    yield act.TunnelResponse(data=data)
                if port.was_cut:
                    raise errors.FailedPrecondition("the activity ended: its tunnels were cut")
                yield act.TunnelResponse(closed=act.TunnelClose())
                # the requestor's direction may go on after the port's closed, unless the activity ends
                cut = asyncio.create_task(port.cut_off.wait())
                try:
                    await asyncio.wait([upstream, cut], return_when=asyncio.FIRST_COMPLETED)
                finally:  # also when the call is cancelled here: a task left waiting would leak
                    cut.cancel()
                if not upstream.done():
                    raise errors.FailedPrecondition("the activity ended: its tunnels were cut")
                upstream.result()
            finally:
                upstream.cancel()

    @unary
    async def GetBatch(self, request: act.GetBatchRequest, context: Context, requestor_id: str) -> act.GetBatchResponse:
        batch = self.provider.batch(
            requestor_id, _required(request.activity_id, "activity_id"), _required(request.batch_id, "batch_id")
        )
        return convert.batch_to_proto(batch, await batch.results_now())

    @unary
    async def GetActivityState(
        self, request: act.GetActivityStateRequest, context: Context, requestor_id: str
    ) -> act.GetActivityStateResponse:
        status = self.provider.status(requestor_id, _required(request.activity_id, "activity_id"))
        return act.GetActivityStateResponse(status=convert.status_to_proto(status))

    @streaming
    async def WatchActivity(
        self, request: act.WatchActivityRequest, context: Context, requestor_id: str
    ) -> AsyncIterator[act.ActivityStatus]:
        async for status in self.provider.watch(requestor_id, _required(request.activity_id, "activity_id")):
            yield convert.status_to_proto(status)

    @unary
    async def GetActivityUsage(
        self, request: act.GetActivityUsageRequest, context: Context, requestor_id: str
    ) -> act.GetActivityUsageResponse:
        usage = await self.provider.usage(requestor_id, _required(request.activity_id, "activity_id"))
        return convert.usage_to_proto(usage)

    @unary
    async def DestroyActivity(
        self, request: act.DestroyActivityRequest, context: Context, requestor_id: str
    ) -> act.DestroyActivityResponse:
        status = await self.provider.destroy(requestor_id, _required(request.activity_id, "activity_id"))
        return act.DestroyActivityResponse(status=convert.status_to_proto(status))


class TransferServicer(xfer_grpc.TransferServicer):
    def __init__(self, provider: Provider, caller: Caller) -> None:
        self.provider = provider
        self.caller = caller

    @unary
    async def Upload(
        self, request_iterator: AsyncIterator[xfer.UploadRequest], context: Context, requestor_id: str
    ) -> xfer.UploadResponse:
        parts = aiter(request_iterator)
        first = await anext(parts, None)
        if first is None or first.WhichOneof("part") != "header":
            raise errors.InvalidArgument("an upload starts with a header message (activity_id, path, size)")
        header = first.header
        try:
            return await self._receive(parts, requestor_id, header)
        except errors.TimedOut:
            raise  # the client sends nothing more
        except errors.ExeUnitError:
            await _drain(parts)
            raise

    async def _receive(self, parts: AsyncIterator[xfer.UploadRequest], requestor_id: str,
                       header: xfer.UploadHeader) -> xfer.UploadResponse:
        async with self.provider.transfers.upload(
            requestor_id, _required(header.activity_id, "header.activity_id"),
            _required(header.path, "header.path"), header.size, header.mode, digest_of(header.digest),
        ) as upload:
            try:
                async for part in parts:
                    kind = part.WhichOneof("part")
                    if kind == "chunk":
                        chunk = part.chunk  # each read of a bytes field copies it: read once
                        if len(chunk) > CHUNK_SIZE:
                            raise errors.InvalidArgument(f"chunks are at most {CHUNK_SIZE} bytes")
                        await upload.write(chunk)
                        telemetry.UPLOAD_BYTES.inc(len(chunk))
                    elif kind == "trailer":
                        result = await upload.finish(part.trailer.digest or part.trailer.sha256)
                        sha256 = result.digest if digest_of(header.digest) == DIGEST_SHA256 else ""
                        return xfer.UploadResponse(size=result.size, sha256=sha256, digest=result.digest)
                    else:
                        raise errors.InvalidArgument("after the header, an upload sends only chunks and one trailer")
                raise errors.DataLoss("the upload stream ended without a trailer; the file was emptied")
            except BaseException as exc:
                await upload.abort(exc)
                raise

    @streaming
    async def Download(
        self, request: xfer.DownloadRequest, context: Context, requestor_id: str
    ) -> AsyncIterator[xfer.DownloadResponse]:
        algorithm = digest_of(request.digest)
        async with self.provider.transfers.download(
            requestor_id, _required(request.activity_id, "activity_id"), _required(request.path, "path"), algorithm
        ) as download:
            yield xfer.DownloadResponse(header=xfer.DownloadHeader(size=download.header.size, mode=download.header.mode))
            # each a DownloadResponse holding one chunk, encoded in the thread that read it (exeunit.v1.chunks)
            async for message in download.chunks(frame=encode_chunk):
                yield message
                telemetry.DOWNLOAD_BYTES.inc(decode_chunk(message).ByteSize())  # the chunk's bytes, read in place
            digest = download.digest()
            sha256 = digest if algorithm == DIGEST_SHA256 else ""
            yield xfer.DownloadResponse(trailer=xfer.DownloadTrailer(sha256=sha256, digest=digest))


def _with_money(provider: Provider, activities: list[ActivitySummary]) -> list[act.ActivitySummary]:
    """The summaries, each with its agreement's payment figures."""
    money = {m.agreement_id: m for m in provider.payments.money()} if provider.payments is not None else {}
    return [convert.summary_to_proto(a, money.get(a.status.agreement_id)) for a in activities]


DIGESTS = {xfer.DIGEST_ALGORITHM_UNSPECIFIED: DIGEST_SHA256, xfer.DIGEST_ALGORITHM_SHA256: DIGEST_SHA256,
           xfer.DIGEST_ALGORITHM_BLAKE3: DIGEST_BLAKE3}


def digest_of(value: int) -> str:
    """The digest a transfer asks for, by name; InvalidArgument for one this provider does not offer."""
    name = DIGESTS.get(value)
    if name is None or (name != DIGEST_SHA256 and name not in transfer_digests()):
        offered = ", ".join((DIGEST_SHA256, *transfer_digests()))
        raise errors.InvalidArgument(f"digest {value} is not one this provider checks transfers with ({offered})")
    return name


async def _to_port(requests: AsyncIterator[act.TunnelRequest], port: PortConnection) -> None:
    """The requestor's direction of a tunnel: data into the port (waiting while it does not read:
    flow control), half-closed at the requestor's close or the end of its stream."""
    try:
        async for request in requests:
            kind = request.WhichOneof("part")
            if kind == "data":
                if len(request.data) > CHUNK_SIZE:
                    raise errors.InvalidArgument(f"tunnel data comes in messages of at most {CHUNK_SIZE} bytes")
                await port.send(request.data)
                telemetry.TUNNEL_IN_BYTES.inc(len(request.data))
            elif kind == "close":
                break
            else:
                raise errors.InvalidArgument("after open, a tunnel sends only data and one close")
    except BaseException:
        port.writer.transport.abort()  # ends the other direction too, so that the error is answered
        raise
    if port.writer.can_write_eof() and not port.writer.is_closing():
        port.writer.write_eof()


class OperatorActivityServicer(act_grpc.ActivityServicer):
    """The Activity service as the admin socket serves it: ListActivities of every requestor;
    every other method is UNIMPLEMENTED there (the operator runs no activities through it)."""

    def __init__(self, provider: Provider) -> None:
        self.provider = provider
        self.caller = OperatorCaller()

    @unary
    async def ListActivities(self, request: act.ListActivitiesRequest, context: Context,
                             requestor_id: str) -> act.ListActivitiesResponse:
        activities = await self.provider.list_activities(None)
        return act.ListActivitiesResponse(activities=_with_money(self.provider, activities))

