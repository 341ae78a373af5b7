"""A requestor's private network as the provider keeps it: its subnet, its members' addresses,
the record a restarted daemon takes up, and what the host must do to build one (NetworkPlumbing,
which exeunit.runtime.bridges implements)."""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from ipaddress import AddressValueError, IPv4Address, IPv4Network, NetmaskValueError
from typing import Protocol

from exeunit import errors

NETWORK_ID_PATTERN = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
MIN_PREFIX, MAX_PREFIX = 8, 30


@dataclass
class Member:
    activity_id: str
    ip: IPv4Address
    attached: bool = False  # its interface is up (it started)


@dataclass
class PrivateNetwork:
    requestor_id: str
    network_id: str
    subnet: IPv4Network
    gateway: str
    key: str  # this provider's own name for it: unguessable, unique on the host
    members: dict[str, Member] = field(default_factory=dict)  # by activity id
    built: bool = False  # its namespace exists
    lock: asyncio.Lock = field(default_factory=asyncio.Lock, repr=False, compare=False)
    spans: bool = False  # it spans providers: the overlay carries it to `peers`
    peers: dict[str, str] = field(default_factory=dict)  # the other providers: id -> their overlay's host:port

    @property
    def wire_id(self) -> str:
        """Its name between providers: the same on each (derived from requestor and network ids,
        which every provider of it knows), never the requestor's id itself."""
        return hashlib.sha256(f"{self.requestor_id}\0{self.network_id}".encode()).hexdigest()[:32]

    def holder_of(self, ip: IPv4Address) -> str | None:
        return next((m.activity_id for m in self.members.values() if m.ip == ip), None)


@dataclass(frozen=True)
class NetworkRecord:
    """What a restarted daemon needs of a network (members come from the activities' records)."""

    requestor_id: str
    network_id: str
    subnet: str
    gateway: str
    key: str
    spans: bool = False
    peers: dict[str, str] = field(default_factory=dict)


# The largest relayed message the overlay takes: a frame at the overlay's MTU (65000) in its TLS
# records, with room to spare. A larger one is no message of an honest provider's, and is skipped.
MAX_RELAYED_MESSAGE = 68 * 1024


class NetworkOverlay(Protocol):
    """The data plane of networks that span providers (exeunit.runtime.overlay): it carries a
    joined network's frames to its peers over TLS links authenticated by provider id, directly or
    through the requestor (messages out through `on_relay`, in through `relay_in`)."""

    port: int  # where the other providers' overlays reach this one

    def join(self, network: str, netns: str, peers: dict[str, str]) -> None: ...
    def set_peers(self, network: str, peers: dict[str, str]) -> None: ...
    def leave(self, network: str) -> None: ...
    def relay_in(self, network: str, peer: str, message: bytes, wait: bool = True) -> bool: ...
    def relay_lost(self, network: str, peer: str) -> None: ...
    def close(self) -> None: ...


class NetworkPlumbing(Protocol):
    """The kernel side of networks: one isolated segment per network (by its key), and a link into
    it per member, made inside the member's network namespace (given as an open descriptor)."""

    def unavailable(self) -> str | None: ...  # why this host cannot build networks, or None
    def namespace(self, key: str) -> str: ...  # how the host names a network's segment (for logs)
    def existing(self) -> set[str]: ...  # keys of the segments this home has on the host
    async def create(self, key: str) -> None: ...
    async def attach(self, key: str, member: str, netns_fd: int, ip: IPv4Address, subnet: IPv4Network) -> None: ...
    async def detach(self, key: str, member: str) -> None: ...
    async def remove(self, key: str, members: Iterable[str] = ()) -> None: ...


def parse_subnet(address: str) -> IPv4Network:
    try:
        subnet = IPv4Network(address, strict=False)
    except (AddressValueError, NetmaskValueError, ValueError):
        raise errors.InvalidArgument(
            f"network address {address!r} is not an IPv4 network in CIDR notation, e.g. 192.168.0.0/24"
        ) from None
    if "/" not in address:
        raise errors.InvalidArgument(f"network address {address!r} needs a prefix length, e.g. {address}/24")
    if not MIN_PREFIX <= subnet.prefixlen <= MAX_PREFIX:
        raise errors.InvalidArgument(
            f"network {subnet} has prefix length {subnet.prefixlen}; use {MIN_PREFIX} to {MAX_PREFIX}"
        )
    return subnet


def parse_member_address(ip: str, subnet: IPv4Network, what: str) -> IPv4Address:
    try:
        address = IPv4Address(ip)
    except (AddressValueError, ValueError):
        raise errors.InvalidArgument(f"{what} {ip!r} is not an IPv4 address") from None
    if address not in subnet or address in (subnet.network_address, subnet.broadcast_address):
        raise errors.InvalidArgument(f"{what} {address} is not a host address of network {subnet}")
    return address
