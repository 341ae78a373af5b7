"""One provider daemon as the requestor sees it: typed calls over the ExeUnit contract.

Every call carries the requestor's proof of its key (requestor.client.connect, which also checks
the provider is the one chosen) and, when a token is set, the token. A proof is bound to the
request and to the daemon's current start: when the daemon says it started again, the client asks
for its offer, learns the new boot epoch, and makes the refused call once more.
Calls take and return the records of requestor.model (converted in requestor.client.convert), and
gRPC errors become requestor exceptions (requestor.client.status), here and nowhere else. Batch
event streams survive a dropped connection: they resume from the next sequence number.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import grpc

from exeunit.v1 import activity_pb2 as act
from exeunit.v1 import activity_pb2_grpc as act_grpc
from exeunit.v1 import identity as wire
from exeunit.v1 import market_pb2 as mkt
from exeunit.v1 import market_pb2_grpc as mkt_grpc
from exeunit.v1 import network_pb2 as net
from exeunit.v1 import network_pb2_grpc as net_grpc
from exeunit.v1 import payment_pb2_grpc as pay_grpc
from requestor import errors
from requestor.client import convert
from requestor.client.connect import Connection, KnownProviders, ProviderAddress, connect, fetch_offer, serialized
from requestor.client.status import UNREACHABLE_CODES, from_rpc_error, restarted_as
from requestor.client.identity import RequestorIdentity
from requestor.client.streams import ByteCalls, TransferCalls
from requestor.model import (
    Activity, ActivityStatus, Agreement, AgreementInfo, BatchEvent, CommandSpec, DemandSpec, Offer, Refusal, Usage,
)

log = logging.getLogger(__name__)

# gRPC tries to reach a provider that went away again after 0.1 s, then at most every second
# (its default backoff grows to two minutes): a restarted daemon is found within a second.
RECONNECT_BACKOFF_MS = (100, 1000)
RECONNECT_SLACK = 1.5  # beyond a reconnect window: one backoff period (with jitter) to find it back
UNAVAILABLE_PAUSE = 0.5  # between calls to a provider that answers UNAVAILABLE (shutting down, engine away)
SERVICE_NAMES = {"market": "Market", "activity": "Activity", "transfer": "Transfer", "network": "Network",
                 "payment": "Payment"}
CHANNEL_OPTIONS = [("grpc.max_receive_message_length", 8 << 20), ("grpc.keepalive_time_ms", 10_000),
                   ("grpc.initial_reconnect_backoff_ms", RECONNECT_BACKOFF_MS[0]),
                   ("grpc.max_reconnect_backoff_ms", RECONNECT_BACKOFF_MS[1])]


class ProviderClient(ByteCalls):
    """Calls to one provider daemon at `address` ("host:port")."""

    def __init__(self, address: str, identity: RequestorIdentity, token: str | None = None, call_timeout: float = 30.0,
                 reconnect_for: float = 10.0, known: KnownProviders | None = None) -> None:
        self._where = ProviderAddress.parse(address)
        self.address = self._where.hostport
        self.identity = identity
        self.reconnect_for = reconnect_for  # how long a dropped batch stream is retried (a daemon restart)
        self._known = known
        self._metadata: tuple[tuple[str, str], ...] = ()
        if token:
            self._metadata += (("authorization", f"Bearer {token}"),)
        self._timeout = call_timeout
        self._connection: Connection | None = None
        self._connecting = asyncio.Lock()

    @property
    def requestor_id(self) -> str:
        return self.identity.requestor_id

    @property
    def provider_id(self) -> str | None:
        """The provider's proven id, once connected."""
        return self._connection.provider_id if self._connection else None

    async def connect(self) -> Connection:
        """Connects once (checking the provider's identity); later calls return the connection."""
        async with self._connecting:
            if self._connection is None:
                self._connection = await connect(self._where, CHANNEL_OPTIONS, self._known, self._metadata)
                self._market = mkt_grpc.MarketStub(self._connection.channel)
                self._activity = act_grpc.ActivityStub(self._connection.channel)
                self._transfer = TransferCalls(self._connection.channel)  # chunks by hand (exeunit.v1.chunks)
                self._network = net_grpc.NetworkStub(self._connection.channel)
                self._payment = pay_grpc.PaymentStub(self._connection.channel)  # requestor.client.payments
            return self._connection

    def signed(self, service: str, method: str, head: Any) -> tuple[tuple[str, str | bytes], ...]:
        """The metadata of one call of `method` of `service` ("activity", ...) carrying `head`
        (the request; a client stream's first message; b"" for none): the token, if any, and a
        fresh proof of this requestor's key for the connected provider's current start."""
        assert self._connection is not None, "connect() first"
        path = f"/exeunit.v1.{SERVICE_NAMES[service]}/{method}"
        body = b"" if path in wire.UNBOUND_STREAMS else serialized(head)
        proof = self.identity.proof(self._connection.provider_id, self._connection.boot_epoch, path, body)
        return (*self._metadata, *proof)

    async def _renewed(self, exc: grpc.aio.AioRpcError, sent: tuple[tuple[str, str | bytes], ...],
                       unheard: bool = False) -> bool:
        """True when `exc` refused a proof (metadata `sent`) made for an earlier start of the
        provider's daemon, and the boot epoch it runs under now is learned from its offer: the call
        may be signed and made again. With `unheard`, also an INTERNAL failure of a client stream
        (grpc loses a refusal that comes while it is still sending) when the offer names another
        epoch than the one signed; and when the offer cannot be had (the daemon is gone again). False
        for any other failure."""
        now = restarted_as(exc)
        signed_for = dict(sent).get(wire.EPOCH_METADATA)
        if self._connection is None or now == signed_for:
            return False
        if now is None and not (unheard and exc.code() is grpc.StatusCode.INTERNAL):
            return False
        if now is None or self._connection.boot_epoch != now:
            try:
                offer = await fetch_offer(self._connection.channel, self._where, self._metadata)
            except errors.ProviderUnreachableError:
                return True  # gone again: made again, the call meets the outage as any call does
            if offer.boot_epoch != self._connection.boot_epoch:
                log.info("event=provider_restarted provider=%s address=%s boot_epoch=%s",
                         self._connection.provider_id, self.address, offer.boot_epoch)
            self._connection.boot_epoch = offer.boot_epoch
        return self._connection.boot_epoch != signed_for and now in (None, self._connection.boot_epoch)

    @property
    def _channel(self) -> grpc.aio.Channel:
        assert self._connection is not None, "connect() first"
        return self._connection.channel

    async def close(self) -> None:
        if self._connection is not None:
            await self._connection.channel.close()

    async def _call(self, service: str, method: str, request: Any, timeout: float | None = None) -> Any:
        """`method` of `service` ("market", "activity", "transfer", "network", "payment") on this provider
        (once more when the daemon started again since the last call)."""
        await self.connect()
        call = getattr(getattr(self, f"_{service}"), method)
        for attempt in (1, 2):
            sent = self.signed(service, method, request)
            try:
                return await call(request, metadata=sent, timeout=timeout or self._timeout)
            except grpc.aio.AioRpcError as exc:
                if attempt == 1 and await self._renewed(exc, sent):
                    continue
                raise from_rpc_error(method, self.address, exc) from exc
        raise AssertionError("unreachable")

    async def _answers(self, service: str, method: str, request: Any) -> AsyncIterator[Any]:
        """The responses of a server-streaming call (made once more when the daemon refused it,
        before any answer, for an earlier start)."""
        await self.connect()
        call = getattr(getattr(self, f"_{service}"), method)
        for attempt in (1, 2):
            sent = self.signed(service, method, request)
            answered = False
            try:
                async for response in call(request, metadata=sent):
                    answered = True
                    yield response
                return
            except grpc.aio.AioRpcError as exc:
                if attempt == 1 and not answered and await self._renewed(exc, sent):
                    continue
                raise from_rpc_error(method, self.address, exc) from exc

    @asynccontextmanager
    async def _translated(self, method: str) -> AsyncIterator[None]:
        try:
            yield
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(method, self.address, exc) from exc

    # Market

    async def offer(self, timeout: float = 5.0) -> Offer:
        response = await self._call("market", "GetOffer", mkt.GetOfferRequest(), timeout)
        return convert.offer_from(self.address, response.offer)

    async def propose(self, demand: DemandSpec) -> AgreementInfo | Refusal:
        request = mkt.ProposeAgreementRequest(demand=convert.demand_to(demand))
        response = await self._call("market", "ProposeAgreement", request)
        return convert.proposal_outcome_from(response)

    async def agreement(self, agreement_id: str) -> AgreementInfo:
        """One of this requestor's agreements (ProviderCallError NOT_FOUND / PERMISSION_DENIED otherwise)."""
        response = await self._call("market", "GetAgreement", mkt.GetAgreementRequest(agreement_id=agreement_id))
        return convert.agreement_from(response.agreement)

    async def terminate_agreement(self, agreement_id: str, reason: str, message: str = "") -> None:
        request = mkt.TerminateAgreementRequest(agreement_id=agreement_id, reason=reason, message=message)
        await self._call("market", "TerminateAgreement", request)

    # Networks

    async def create_network(self, network_id: str, address: str, gateway: str = "", spans: bool = False,
                             peers: dict[str, str] | None = None) -> None:
        """Creates the requestor's network on this provider (idempotent for the same address); with
        `spans`, its part of a network spanning `peers` (provider id -> overlay host:port)."""
        request = net.CreateNetworkRequest(network_id=network_id, address=address, gateway=gateway,
                                           spans_providers=spans, peers=_peers(peers or {}))
        await self._call("network", "CreateNetwork", request)

    async def set_network_peers(self, network_id: str, peers: dict[str, str]) -> None:
        request = net.SetNetworkPeersRequest(network_id=network_id, peers=_peers(peers))
        await self._call("network", "SetNetworkPeers", request)

    async def relay_frames(self, outgoing: AsyncIterator[tuple[str, str, bytes]]) -> AsyncIterator[tuple[str, str, bytes]]:
        """The requestor's relay with this provider: (network id, sender, sealed) frames in, and
        out (network id, destination, sealed) ones its overlay cannot deliver directly."""
        await self.connect()
        sent = self.signed("network", "RelayFrames", b"")
        call = self._network.RelayFrames(metadata=sent)

        async def send() -> None:  # ours, not grpc's request iterator, which outlives a failed call
            async for network_id, peer, sealed in outgoing:  # (waiting on `outgoing`, then destroyed pending)
                await call.write(net.RelayFrame(network_id=network_id, peer=peer, sealed=sealed))

        sending = asyncio.create_task(send())
        try:
            while (frame := await call.read()) is not grpc.aio.EOF:
                yield frame.network_id, frame.peer, frame.sealed
        except grpc.aio.AioRpcError as exc:
            await self._renewed(exc, sent)  # the caller opens it again (`outgoing` cannot be read twice at once)
            raise from_rpc_error("RelayFrames", self.address, exc) from exc
        finally:  # the call, then its writer: nothing of this stream is left reading `outgoing`
            call.cancel()
            sending.cancel()
            await asyncio.wait({sending})
            if not sending.cancelled():
                sending.exception()  # a write to a call that had ended: the call's own error is raised above

    async def remove_network(self, network_id: str) -> list[str]:
        """Removes it here; returns the activities that were cut off it."""
        response = await self._call(
            "network", "RemoveNetwork", net.RemoveNetworkRequest(network_id=network_id)
        )
        return list(response.detached_activity_ids)

    # Activities

    async def create_activity(self, agreement_id: str) -> str:
        response = await self._call(
            "activity", "CreateActivity", act.CreateActivityRequest(agreement_id=agreement_id)
        )
        return response.activity_id

    async def run_batch(self, activity_id: str, commands: list[CommandSpec], batch_id: str) -> AsyncIterator[BatchEvent]:
        """Submits a batch and yields all its events, in one call (ExecStream)."""
        async for event in self.batch_events(activity_id, batch_id, commands=commands):
            yield event

    async def _reconnected(self, method: str, exc: grpc.aio.AioRpcError, deadline: float) -> bool:
        """Waits until the provider can be called again, or raises: ProviderUnreachableError when
        it is not back by `deadline` (and one backoff period of gRPC's), the error itself when it
        is not one of an unreachable provider. True when the connection was lost and is made
        again (a new outage starts a new window); False when the provider itself said it is
        unavailable (the window goes on, and the call is retried after a pause)."""
        if exc.code() not in UNREACHABLE_CODES:
            raise from_rpc_error(method, self.address, exc) from exc
        loop = asyncio.get_running_loop()
        if self._channel.get_state() is grpc.ChannelConnectivity.READY:  # connected: the provider answered so
            if loop.time() >= deadline:
                raise from_rpc_error(method, self.address, exc) from exc
            await asyncio.sleep(min(UNAVAILABLE_PAUSE, max(deadline - loop.time(), 0.0)))
            return False
        try:
            await asyncio.wait_for(self._channel.channel_ready(), max(deadline - loop.time() + RECONNECT_SLACK, 0.0))
        except TimeoutError:
            raise from_rpc_error(method, self.address, exc) from exc
        return True

    async def batch_events(self, activity_id: str, batch_id: str, reconnect_for: float | None = None,
                           commands: list[CommandSpec] | None = None) -> AsyncIterator[BatchEvent]:
        """All events of a batch, in order, resuming after a dropped connection (when the provider
        is back within `reconnect_for` seconds) from the next sequence number, so that nothing is
        missed or repeated. With `commands`, the batch is submitted by the same call (and again,
        idempotently, until an event came)."""
        reconnect_for = self.reconnect_for if reconnect_for is None else reconnect_for
        next_sequence = 0
        deadline: float | None = None
        loop = asyncio.get_running_loop()
        wire_commands = [convert.command_to(c) for c in commands] if commands is not None else None
        await self.connect()
        while True:
            request: Any
            if wire_commands is not None and next_sequence == 0:
                method = "ExecStream"
                request = act.ExecRequest(activity_id=activity_id, commands=wire_commands, batch_id=batch_id)
            else:
                method = "StreamBatchEvents"
                request = act.StreamBatchEventsRequest(activity_id=activity_id, batch_id=batch_id, from_sequence=next_sequence)
            sent = self.signed("activity", method, request)
            stream = getattr(self._activity, method)(request, metadata=sent)
            try:
                async for message in stream:
                    deadline = None
                    event = convert.batch_event_from(message)
                    next_sequence = event.sequence + 1
                    yield event
                    if event.kind == "batch_finished":
                        return
                return
            except grpc.aio.AioRpcError as exc:
                if await self._renewed(exc, sent):
                    continue  # the daemon started again: signed for its new start, the stream goes on
                deadline = deadline or loop.time() + reconnect_for
                if await self._reconnected(method, exc, deadline):
                    deadline = None
                log.info("event=stream_reconnect provider=%s batch=%s from=%d", self.address, batch_id, next_sequence)

    async def watch(self, activity_id: str, reconnect_for: float | None = None) -> AsyncIterator[ActivityStatus]:
        """The activity's state, then each change; ends after Terminated. A dropped connection is
        made again when the provider is back within `reconnect_for` seconds (the state is then
        sent again); ProviderUnreachableError when it is not."""
        reconnect_for = self.reconnect_for if reconnect_for is None else reconnect_for
        deadline: float | None = None
        loop = asyncio.get_running_loop()
        request = act.WatchActivityRequest(activity_id=activity_id)
        await self.connect()
        while True:
            sent = self.signed("activity", "WatchActivity", request)
            try:
                async for status in self._activity.WatchActivity(request, metadata=sent):
                    deadline = None
                    yield convert.status_from(status)
                return
            except grpc.aio.AioRpcError as exc:
                if await self._renewed(exc, sent):
                    continue
                deadline = deadline or loop.time() + reconnect_for
                if await self._reconnected("WatchActivity", exc, deadline):
                    deadline = None
                log.info("event=watch_reconnect provider=%s activity=%s", self.address, activity_id)

    async def state(self, activity_id: str, timeout: float = 5.0) -> ActivityStatus:
        response = await self._call(
            "activity", "GetActivityState", act.GetActivityStateRequest(activity_id=activity_id), timeout
        )
        return convert.status_from(response.status)

    async def usage(self, activity_id: str) -> Usage:
        response = await self._call(
            "activity", "GetActivityUsage", act.GetActivityUsageRequest(activity_id=activity_id)
        )
        return convert.usage_from(response)

    async def destroy(self, activity_id: str) -> None:
        await self._call("activity", "DestroyActivity", act.DestroyActivityRequest(activity_id=activity_id))


def _peers(peers: dict[str, str]) -> list[net.NetworkPeer]:
    return [net.NetworkPeer(provider_id=provider_id, endpoint=endpoint) for provider_id, endpoint in peers.items()]


@dataclass(frozen=True)
class ActivityHandle:
    """An activity on a provider, with the agreement it runs under and the client that reaches it."""

    client: ProviderClient
    offer: Offer
    agreement: Agreement
    activity: Activity
