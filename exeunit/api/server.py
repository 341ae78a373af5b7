"""Builds and runs the gRPC server around a Provider."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from exeunit.api.announce import Announcement
from exeunit.api.handlers import add_service
from exeunit.api.payment_servicer import PaymentServicer
from exeunit.services.provider import Provider
from exeunit.api.servicers import (
    ActivityServicer, MarketServicer, NetworkServicer, OperatorActivityServicer, TransferServicer,
)
from exeunit.api.auth import CallGate, Caller, ProofCheck
from exeunit.api.nonces import NonceBounds, NonceLedger
from exeunit.v1 import activity_pb2, market_pb2, network_pb2, payment_pb2, transfer_pb2

log = logging.getLogger(__name__)

DOCKER_CALL_THREADS = 64
# Upload chunks are at most 1 MiB; anything much larger is a client bug, refused RESOURCE_EXHAUSTED.
MAX_MESSAGE_BYTES = 4 << 20
MARKET = market_pb2.DESCRIPTOR.services_by_name["Market"]
ACTIVITY = activity_pb2.DESCRIPTOR.services_by_name["Activity"]
TRANSFER = transfer_pb2.DESCRIPTOR.services_by_name["Transfer"]
NETWORK = network_pb2.DESCRIPTOR.services_by_name["Network"]
PAYMENT = payment_pb2.DESCRIPTOR.services_by_name["Payment"]
SERVICE_NAMES = (MARKET.full_name, ACTIVITY.full_name, TRANSFER.full_name, NETWORK.full_name, PAYMENT.full_name)


@dataclass
class RunningServer:
    server: grpc.aio.Server
    port: int
    provider: Provider
    health: health.HealthServicer
    admin: grpc.aio.Server | None = None  # the operator's socket (exeunit ps)

    async def stop(self, grace: float = 5.0, keep_activities: bool = False) -> None:
        """Ends every activity first, so that watchers and batch streams still connected learn
        why (ProviderShutdown), then stops serving; with `keep_activities`, leaves them running
        for the next daemon on this home instead."""
        self.health.enter_graceful_shutdown()
        await self.provider.close(keep_activities)
        await self.server.stop(grace)
        if self.admin is not None:
            await self.admin.stop(grace)


def check_listen_address(address: str) -> None:
    """OSError naming the reason when `address` ("host:port") cannot be listened on now: said
    before anything else is touched (gRPC's own bind failure is a line of C-core log and no reason).

    Binds as the server will, with SO_REUSEADDR: connections of a daemon that was just killed,
    lingering in TIME_WAIT, do not keep its successor off the port (gRPC's own bind would not
    mind them either), while a process that listens there still does."""
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    try:
        infos = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, ValueError) as exc:
        raise OSError(f"cannot listen on {address}: {getattr(exc, 'strerror', None) or exc}") from None
    family, kind, proto, _, sockaddr = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(sockaddr)
        except OSError as exc:
            raise OSError(f"cannot listen on {address}: {exc.strerror or exc}") from None


async def create_admin_server(provider: Provider, path: Path) -> grpc.aio.Server:
    """The operator's socket: a unix socket only the daemon's user may open (mode 0600), serving
    ListActivities of every requestor, and nothing that changes anything."""
    path.unlink(missing_ok=True)  # a killed daemon's; the home's lock says no other one runs
    server = grpc.aio.server()
    add_service(server, ACTIVITY, OperatorActivityServicer(provider))
    previous = os.umask(0o177)
    try:
        if server.add_insecure_port(f"unix:{path}") == 0:
            raise OSError(f"cannot listen on the admin socket {path}")
    finally:
        os.umask(previous)
    return server


async def create_server(provider: Provider, address: str, token: str | None = None,
                        admin_socket: Path | None = None, tls: tuple[bytes, bytes] | None = None,
                        nonce_bounds: NonceBounds = NonceBounds()) -> RunningServer:
    """Binds address ("host:port"; port 0 picks one), then opens the provider and starts serving:
    over TLS with `tls` (private key PEM, certificate PEM), else in plaintext (loopback only; the
    command line sees to that). A port that cannot be bound fails before the provider touches
    anything. Each server has a boot epoch of its own (ProofCheck): proofs made for another are refused."""
    proofs = ProofCheck(provider.settings.provider_id, NonceLedger(nonce_bounds, provider.market.holds_agreement))
    server = grpc.aio.server(
        interceptors=[CallGate(proofs, token)],
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.so_reuseport", 0),
        ]
    )
    caller = Caller(proofs, on_call=provider.pacer.note_call)
    add_service(server, MARKET, MarketServicer(provider, caller))
    add_service(server, ACTIVITY, ActivityServicer(provider, caller))
    add_service(server, TRANSFER, TransferServicer(provider, caller))
    add_service(server, NETWORK, NetworkServicer(provider, caller))
    add_service(server, PAYMENT, PaymentServicer(provider, caller))
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in (*SERVICE_NAMES, ""):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    reflection.enable_server_reflection((*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    try:
        if tls is None:
            port = server.add_insecure_port(address)
        else:
            port = server.add_secure_port(address, grpc.ssl_server_credentials([tls]))
    except RuntimeError:  # how newer grpc says it could not bind
        port = 0
    if port == 0:
        raise OSError(f"cannot listen on {address}: the address is in use or invalid")
    admin = await create_admin_server(provider, admin_socket) if admin_socket is not None else None
    await provider.open()
    await server.start()
    if admin is not None:
        await admin.start()
    log.info("event=listening address=%s port=%d transport=%s provider=%s name=%s boot_epoch=%s", address, port,
             "tls" if tls else "plaintext", provider.settings.provider_id, provider.settings.name, proofs.boot_epoch)
    return RunningServer(server, port, provider, health_servicer, admin)


async def serve_until_signalled(provider: Provider, address: str, token: str | None,
                                keep_activities: bool = False, admin_socket: Path | None = None,
                                tls: tuple[bytes, bytes] | None = None, announce: list[str] | None = None) -> None:
    """Serves until SIGTERM or SIGINT, then shuts down cleanly (see RunningServer.stop); with
    `announce` (the addresses to publish, exeunit.api.announce.announced_addresses), published on
    the LAN with mDNS meanwhile."""
    loop = asyncio.get_running_loop()
    # Every Docker call runs in a worker thread: enough of them for many activities at once.
    loop.set_default_executor(ThreadPoolExecutor(max_workers=DOCKER_CALL_THREADS, thread_name_prefix="docker-call"))
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):  # before serving: a signal during start-up is not lost
        loop.add_signal_handler(sig, stop.set)
    running = await create_server(provider, address, token, admin_socket, tls)
    announcement = None
    try:
        if announce:
            settings = provider.settings
            announcement = Announcement(settings.provider_id, settings.name, settings.subnet_tag, announce,
                                        running.port, tls is not None)
            await announcement.publish()
        await stop.wait()
        log.info("event=shutting_down")
    finally:
        if announcement is not None:
            await announcement.withdraw()
        await running.stop(keep_activities=keep_activities)
        log.info("event=stopped")
