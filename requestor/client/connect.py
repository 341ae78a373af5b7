"""Reaching a provider, and knowing it is the one chosen.

Beyond loopback a provider speaks TLS with a self-signed certificate of its key, and its id is
derived from that key (exeunit.v1.identity). Before the gRPC channel is made, the certificate is
fetched and its id checked: against the pin of `host:port#PROVIDER_ID`, or, for a bare
`host:port`, against the known-providers file (trusted and written there on first use, as SSH's
known_hosts; a provider whose key changed is refused, naming the file). An id announced with a
discovered address (mDNS, DNS: anybody may announce anything) is checked against that file too
and never overrides it; it only stands in for it at an address never seen. The channel then
trusts that certificate and nothing else, so a party in the middle with another key fails the
handshake.

On loopback a provider may speak plaintext; the requestor learns its id from its offer there (the
host's own processes are trusted as the host is). Either way the offer tells the boot epoch of
the daemon's current start, and every call carries a proof of the requestor's key bound to that
id, that epoch and the request (`CallSigner`, ProviderClient.signed).
"""

from __future__ import annotations

import asyncio
import ipaddress
import itertools
import logging
import os
import re
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from exeunit.v1 import identity as wire
from exeunit.v1 import market_pb2 as mkt
from exeunit.v1 import market_pb2_grpc as mkt_grpc
from exeunit.v1 import private_files
from requestor.errors import ProviderUnreachableError, RequestorError
from requestor.client.identity import RequestorIdentity, config_dir, make_directory_for

log = logging.getLogger(__name__)

KNOWN_PROVIDERS_FILE = "known-providers"
ANNOUNCED = "announced="  # host:port#announced=ID: an id only claimed (requestor.discovery)
PROVIDER_ID = re.compile(rf"0x[0-9a-fA-F]{{{2 * wire.ID_BYTES}}}")
HOST_NAME = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_.-]*[A-Za-z0-9_.])?")  # a DNS name or an IPv4 address
HANDSHAKE_TIMEOUT = 10.0
GET_OFFER = "/exeunit.v1.Market/GetOffer"


class ProviderIdentityError(RequestorError):
    """The provider at an address is not (or cannot prove it is) the provider expected there."""


class OfferRefused(ProviderIdentityError):
    """A plaintext (loopback) provider would not give its offer, so its id is not known (a wrong
    token, say)."""


@dataclass(frozen=True)
class ProviderAddress:
    """`host:port` (IPv6 as `[::1]:port`), optionally pinned to a provider id: `host:port#0x...`;
    or with the id an announcement claimed, `host:port#announced=0x...` (requestor.discovery).
    A pin is the user's word and is checked alone; an announced id is anybody's word, so what
    the known-providers file says of the address wins over it (check_identity)."""

    host: str
    port: int
    pinned_id: str | None = None
    announced_id: str | None = None

    @classmethod
    def parse(cls, text: str) -> ProviderAddress:
        """ValueError saying what is wrong."""
        where, _, after = text.strip().partition("#")
        host, colon, port = where.rpartition(":")
        if not colon or not host or not port.isdigit() or not 0 < int(port) <= 65535:
            raise ValueError(f"{text!r} is not a provider address: give host:port, or host:port#PROVIDER_ID")
        if host.startswith("["):
            if not host.endswith("]") or not _is_ipv6(host[1:-1]):
                raise ValueError(f"{text!r}: between brackets goes an IPv6 address, as [::1]:50051")
            host = host[1:-1]
        elif ":" in host:
            raise ValueError(f"{text!r}: an IPv6 address goes in brackets, as [{host}]:{port}")
        elif not HOST_NAME.fullmatch(host):
            raise ValueError(f"{text!r}: {host!r} is neither an IP address nor a host name")
        announced = after.startswith(ANNOUNCED)
        provider_id = after[len(ANNOUNCED):] if announced else after
        if after and not PROVIDER_ID.fullmatch(provider_id):
            raise ValueError(f"{text!r}: a provider id is 0x and {2 * wire.ID_BYTES} hex digits "
                             "(`exeunit id` prints it on the provider's host)")
        if announced:
            return cls(host, int(port), announced_id=provider_id.lower())
        return cls(host, int(port), pinned_id=provider_id.lower() or None)

    @property
    def hostport(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def text(self) -> str:
        """As `parse` reads it."""
        if self.pinned_id is not None:
            return f"{self.hostport}#{self.pinned_id}"
        if self.announced_id is not None:
            return f"{self.hostport}#{ANNOUNCED}{self.announced_id}"
        return self.hostport

    @property
    def is_loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False


class KnownProviders:
    """The providers trusted on first use: one `host:port provider-id` per line, in a file only
    its owner may read or write (it decides whom the requestor trusts)."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or Path(os.environ.get("GOLEM_KNOWN_PROVIDERS") or config_dir() / KNOWN_PROVIDERS_FILE)

    def lookup(self, hostport: str) -> str | None:
        try:
            lines = self.path.read_text().splitlines()
        except FileNotFoundError:
            return None
        for line in lines:
            fields = line.split()
            if len(fields) == 2 and fields[0] == hostport:
                return fields[1]
        return None

    def remember(self, hostport: str, provider_id: str) -> None:
        """ProviderIdentityError when it cannot be written down (a provider not remembered would
        be trusted on first use again next time)."""
        try:
            make_directory_for(self.path)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                         private_files.FILE_MODE)
        except OSError as exc:
            hint = " (a link, which is not followed: set GOLEM_KNOWN_PROVIDERS to the file itself)" \
                if os.path.islink(self.path) else ""
            raise ProviderIdentityError(f"cannot remember provider {provider_id} at {hostport} in {self.path}"
                                        f"{hint}: {exc.strerror or exc}") from None
        with os.fdopen(fd, "a") as out:  # one short append: whole lines even with writers at once
            out.write(f"{hostport} {provider_id}\n")
        try:
            private_files.tighten(self.path)
        except PermissionError as exc:  # another user's list, writable by this one: theirs to fix
            log.warning("event=known_providers_not_private file=%s error=%r", self.path, str(exc))


async def fetch_certificate(address: ProviderAddress) -> bytes | None:
    """The provider's certificate (DER), or None when it answers but not in TLS;
    ProviderUnreachableError when nothing answers."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # verified below by its key's id, not by a CA
    context.set_alpn_protocols(["h2"])
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(address.host, address.port), HANDSHAKE_TIMEOUT)
    except (OSError, TimeoutError) as exc:
        raise ProviderUnreachableError(f"provider {address.hostport} cannot be reached: {exc}") from None
    try:
        await asyncio.wait_for(writer.start_tls(context, server_hostname=None if _is_ip(address.host) else address.host),
                               HANDSHAKE_TIMEOUT)
    except (ssl.SSLError, ConnectionError, TimeoutError, asyncio.IncompleteReadError):
        writer.transport.abort()
        return None
    der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    writer.transport.abort()
    return der


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _is_ipv6(host: str) -> bool:
    try:
        ipaddress.IPv6Address(host)
    except ValueError:
        return False
    return True


def certified_id(certificate_der: bytes) -> str:
    public_key = x509.load_der_x509_certificate(certificate_der).public_key()
    return wire.node_id_of_spki(public_key.public_bytes(serialization.Encoding.DER,
                                                        serialization.PublicFormat.SubjectPublicKeyInfo))


def check_identity(address: ProviderAddress, proven_id: str, known: KnownProviders) -> None:
    """ProviderIdentityError unless `proven_id` is the provider expected at `address`: the pinned
    one; else the one the known-providers file names for the address, which no announcement
    overrides (a claim to the contrary is refused as a changed key is); else, for an address
    never seen, the announced one if any, and then it is trusted now and remembered."""
    if address.pinned_id is not None:
        if proven_id != address.pinned_id:
            raise ProviderIdentityError(
                f"provider {address.hostport} proves id {proven_id}, not {address.pinned_id} as pinned: "
                "something else answers at that address, or the pin is wrong"
            )
        return
    remembered = known.lookup(address.hostport)
    if remembered is not None:
        for claim, claimed in (("proves", proven_id), ("is announced with", address.announced_id)):
            if claimed is not None and claimed != remembered:
                raise _changed_key(address, claim, claimed, remembered, known)
        return
    if address.announced_id is not None and proven_id != address.announced_id:
        raise ProviderIdentityError(
            f"provider {address.hostport} proves id {proven_id}, not {address.announced_id} as announced: "
            "something else answers at that address, or the announcement is wrong"
        )
    known.remember(address.hostport, proven_id)
    log.warning("event=provider_trusted_on_first_use provider=%s address=%s file=%s hint=%r", proven_id,
                address.hostport, known.path, "pin it as host:port#ID to check it from the start")


def _changed_key(address: ProviderAddress, claim: str, claimed: str, remembered: str,
                 known: KnownProviders) -> ProviderIdentityError:
    return ProviderIdentityError(
        f"provider {address.hostport} now {claim} id {claimed}, but {known.path} knows it as {remembered}: "
        "its key changed, or something else answers there. If the provider's key was replaced on purpose, "
        f"remove the line for {address.hostport} from {known.path}"
    )


class CallSigner:
    """Adds the requestor's proof for the provider of `connection` to every call of a channel made
    with its `interceptors()` (none while there is no connection: only GetOffer is answered then).
    For raw stubs (tests, tools): ProviderClient signs each call itself, as grpc.aio's interceptors
    leave a pending task behind when a streaming call is cancelled. A client stream is signed for
    its first message, taken from its iterator before the call starts (a call written to with
    `write()` has none then, and is signed for sending none)."""

    def __init__(self, identity: RequestorIdentity) -> None:
        self.identity = identity
        self.connection: Connection | None = None

    def signed(self, details: grpc.aio.ClientCallDetails, head: bytes) -> grpc.aio.ClientCallDetails:
        if self.connection is None:
            return details
        method = details.method.decode() if isinstance(details.method, bytes) else details.method
        proof = self.identity.proof(self.connection.provider_id, self.connection.boot_epoch, method,
                                    b"" if method in wire.UNBOUND_STREAMS else head)
        metadata = grpc.aio.Metadata(*(details.metadata or ()), *proof)
        return grpc.aio.ClientCallDetails(details.method, details.timeout, metadata, details.credentials,
                                          details.wait_for_ready)

    def interceptors(self) -> list[grpc.aio.ClientInterceptor]:
        """One per call shape: grpc.aio files an interceptor under the first shape it has only."""
        return [_SignUnaryUnary(self), _SignUnaryStream(self), _SignStreamUnary(self), _SignStreamStream(self)]


def serialized(request: Any) -> bytes:
    """A request's bytes as gRPC sends them (raw bytes pass as they are)."""
    return request if isinstance(request, bytes) else request.SerializeToString()


async def _first_taken(requests: Any) -> tuple[bytes, Any]:
    """The bytes of a client stream's first message, and the stream with that message still in it."""
    if requests is None:
        return b"", None
    if hasattr(requests, "__aiter__"):
        rest = aiter(requests)
        first = await anext(rest, None)

        async def again() -> Any:
            if first is not None:
                yield first
            async for request in rest:
                yield request

        return (b"" if first is None else serialized(first)), again()
    rest = iter(requests)
    first = next(rest, None)
    return (b"" if first is None else serialized(first)), itertools.chain(() if first is None else (first,), rest)


class _SignUnaryUnary(grpc.aio.UnaryUnaryClientInterceptor):
    def __init__(self, signer: CallSigner) -> None:
        self.signer = signer

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self.signer.signed(details, serialized(request)), request)


class _SignUnaryStream(grpc.aio.UnaryStreamClientInterceptor):
    def __init__(self, signer: CallSigner) -> None:
        self.signer = signer

    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self.signer.signed(details, serialized(request)), request)


class _SignStreamUnary(grpc.aio.StreamUnaryClientInterceptor):
    def __init__(self, signer: CallSigner) -> None:
        self.signer = signer

    async def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        head, requests = await _first_taken(requests)
        return await continuation(self.signer.signed(details, head), requests)


class _SignStreamStream(grpc.aio.StreamStreamClientInterceptor):
    def __init__(self, signer: CallSigner) -> None:
        self.signer = signer

    async def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        head, requests = await _first_taken(requests)
        return await continuation(self.signer.signed(details, head), requests)


@dataclass
class Connection:
    """A checked channel to one provider, and the boot epoch of its daemon's current start (from
    its offer; renewed by the client when the daemon says it started again)."""

    channel: grpc.aio.Channel
    provider_id: str
    tls: bool
    boot_epoch: str = ""
    transfer_digests: tuple[str, ...] = ()  # beyond SHA-256 (the offer's), e.g. ("blake3",)


async def fetch_offer(channel: grpc.aio.Channel, address: ProviderAddress,
                      metadata: tuple[tuple[str, str], ...] = ()) -> mkt.Offer:
    """The provider's offer, asked for without a proof (its id and boot epoch are what a proof
    needs); ProviderUnreachableError when it does not answer, OfferRefused when it refuses."""
    try:
        response = await mkt_grpc.MarketStub(channel).GetOffer(mkt.GetOfferRequest(), metadata=metadata,
                                                               timeout=HANDSHAKE_TIMEOUT)
    except grpc.aio.AioRpcError as exc:
        if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            raise ProviderUnreachableError(f"provider {address.hostport} did not answer: {exc.details()}") from None
        raise OfferRefused(f"provider {address.hostport} did not say who it is: "
                           f"{exc.code().name}: {exc.details()}") from None
    return response.offer


async def connect(address: ProviderAddress, options: list[tuple[str, Any]], known: KnownProviders | None = None,
                  metadata: tuple[tuple[str, str], ...] = (),
                  interceptors: Sequence[grpc.aio.ClientInterceptor] = ()) -> Connection:
    """A channel to the provider at `address`, its identity checked (see the module's docstring),
    and its daemon's boot epoch learned from its offer. The caller signs its calls for
    `provider_id` and `boot_epoch` (RequestorIdentity.proof, or a CallSigner's `interceptors`).
    `metadata` goes with the offer asked for (a token)."""
    certificate = await fetch_certificate(address)
    if certificate is None:
        if not address.is_loopback:
            raise ProviderIdentityError(
                f"provider {address.hostport} does not speak TLS, and beyond loopback nothing else is trusted: "
                "is it an exeunit daemon (older ones listened in plaintext)?"
            )
        channel = grpc.aio.insecure_channel(address.hostport, options=options, interceptors=interceptors)
        try:
            offer = await fetch_offer(channel, address, metadata)
        except RequestorError:
            await channel.close()
            raise
        provider_id = offer.provider_id
        for how, expected in (("pinned", address.pinned_id), ("announced", address.announced_id)):
            if expected is not None and provider_id != expected:
                await channel.close()
                raise ProviderIdentityError(f"provider {address.hostport} is {provider_id}, not {expected} as {how}")
        return Connection(channel, provider_id, tls=False, boot_epoch=offer.boot_epoch,
                          transfer_digests=tuple(offer.transfer_digests))
    provider_id = certified_id(certificate)
    check_identity(address, provider_id, known or KnownProviders())
    pem = ssl.DER_cert_to_PEM_cert(certificate).encode()
    channel = grpc.aio.secure_channel(
        address.hostport, grpc.ssl_channel_credentials(root_certificates=pem),
        options=[*options, ("grpc.ssl_target_name_override", provider_id)], interceptors=interceptors,
    )
    try:
        offer = await fetch_offer(channel, address, metadata)
    except RequestorError:
        await channel.close()
        raise
    return Connection(channel, provider_id, tls=True, boot_epoch=offer.boot_epoch,
                      transfer_digests=tuple(offer.transfer_digests))
