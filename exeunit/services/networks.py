"""Requestors' private networks on this provider: who owns which, which activity holds which
address, and when the kernel side (exeunit.runtime.bridges) exists: from the first member that starts
to the last one that ends.

A network is found by (requestor, network id): ids are the requestor's own choice and another
requestor's ids are simply not there (NOT_FOUND, never PERMISSION_DENIED: existence is not
leaked). Addresses are checked twice: when a deploy naming one is queued (a clear error for the
requestor's call) and again, under the network's lock, when its member starts.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from ipaddress import IPv4Address, IPv4Network

from exeunit import errors
from exeunit.domain.networks import (
    NETWORK_ID_PATTERN, Member, NetworkOverlay, NetworkPlumbing, NetworkRecord, PrivateNetwork, parse_member_address,
    parse_subnet,
)

log = logging.getLogger(__name__)


class Networks:
    """A network that spans providers has peers (the requestor's, at creation and by
    SetNetworkPeers); while its namespace exists here, the overlay carries it to them."""

    def __init__(self, plumbing: NetworkPlumbing, per_requestor: int,
                 on_change: Callable[[PrivateNetwork | None, tuple[str, str]], None] = lambda n, k: None,
                 node_id: str = "", peers_per_network: int = 64) -> None:
        self._plumbing = plumbing
        self._per_requestor = per_requestor
        self._on_change = on_change  # persists a network's record (None: it is gone)
        self.unavailable = plumbing.unavailable()  # why this host cannot build networks, or None
        self._networks: dict[tuple[str, str], PrivateNetwork] = {}
        self.node_id = node_id  # this provider, as its peers know it
        self.peers_per_network = peers_per_network
        self.overlay: NetworkOverlay | None = None  # set once the provider's overlay runs

    # Owning

    def create(self, requestor_id: str, network_id: str, address: str, gateway: str, spans: bool = False,
               peers: dict[str, str] | None = None) -> PrivateNetwork:
        if self.unavailable:
            raise errors.FailedPrecondition(f"this provider cannot make networks: {self.unavailable}")
        if not NETWORK_ID_PATTERN.match(network_id):
            raise errors.InvalidArgument(f"network_id {network_id!r} must be 1-64 of [A-Za-z0-9._-]")
        subnet = parse_subnet(address)
        if spans and self.overlay is None:
            raise errors.FailedPrecondition("this provider's networks cannot span providers (its offer has no "
                                            "overlay_port); keep the network's instances here")
        peers = _checked_peers(peers or {}, self.node_id, self.peers_per_network)
        if gateway:
            gateway = str(parse_member_address(gateway, subnet, "gateway"))
        existing = self._networks.get((requestor_id, network_id))
        if existing is not None:
            if existing.subnet != subnet:
                raise errors.AlreadyExists(
                    f"network {network_id!r} exists with address {existing.subnet}; choose another network_id"
                )
            return existing
        owned = sum(1 for owner, _ in self._networks if owner == requestor_id)
        if owned >= self._per_requestor:
            raise errors.ResourceExhausted(
                f"a requestor may have {self._per_requestor} networks on this provider (--networks-per-requestor); "
                "remove one first"
            )
        network = PrivateNetwork(requestor_id, network_id, subnet, gateway, uuid.uuid4().hex[:16],
                                 spans=spans, peers=peers)
        self._networks[(requestor_id, network_id)] = network
        self._on_change(network, (requestor_id, network_id))
        log.info("event=network_created requestor=%s network=%s address=%s", requestor_id, network_id, subnet)
        return network

    def set_peers(self, requestor_id: str, network_id: str, peers: dict[str, str]) -> PrivateNetwork:
        network = self.get(requestor_id, network_id)
        if not network.spans:
            raise errors.FailedPrecondition(f"network {network_id!r} was created without spans_providers: "
                                            "it does not span providers")
        network.peers = _checked_peers(peers, self.node_id, self.peers_per_network)
        self._on_change(network, (requestor_id, network_id))
        if network.built and self.overlay is not None:
            self.overlay.set_peers(network.wire_id, network.peers)
        return network

    def by_wire_id(self, wire_id: str) -> PrivateNetwork | None:
        return next((n for n in self._networks.values() if n.wire_id == wire_id), None)

    def get(self, requestor_id: str, network_id: str) -> PrivateNetwork:
        network = self._networks.get((requestor_id, network_id))
        if network is None:
            raise errors.NotFound(f"network {network_id!r} not found; create it first")
        return network

    @property
    def count(self) -> int:
        return len(self._networks)

    def owned_by(self, requestor_id: str) -> list[PrivateNetwork]:
        return [n for (owner, _), n in self._networks.items() if owner == requestor_id]

    async def remove(self, requestor_id: str, network_id: str) -> list[str]:
        """Removes the network; returns the activities cut off it. Idempotent."""
        network = self._networks.get((requestor_id, network_id))
        if network is None:
            return []
        async with network.lock:
            if self._networks.get((requestor_id, network_id)) is not network:
                return []
            del self._networks[(requestor_id, network_id)]
            self._on_change(None, (requestor_id, network_id))
            cut = list(network.members)
            network.members.clear()
            if network.built:
                self._leave_overlay(network)
                await self._plumbing.remove(network.key, cut)
                network.built = False
        log.info("event=network_removed requestor=%s network=%s detached=%d", requestor_id, network_id, len(cut))
        return cut

    # Members

    def reserve(self, requestor_id: str, network_id: str, ip: str, activity_id: str) -> Member:
        """Holds `ip` on the network for the activity (replacing what it held before). Called when
        a deploy naming it is queued, so that a clash fails the requestor's call."""
        network = self.get(requestor_id, network_id)
        address = parse_member_address(ip, network.subnet, "ip")
        holder = network.holder_of(address)
        if holder is not None and holder != activity_id:
            raise errors.FailedPrecondition(
                f"{address} is held by activity {holder} on network {network_id!r}; choose a free address"
            )
        self.leave_now(activity_id)
        member = Member(activity_id, address)
        network.members[activity_id] = member
        return member

    def membership(self, activity_id: str) -> tuple[PrivateNetwork, Member] | None:
        for network in self._networks.values():
            member = network.members.get(activity_id)
            if member is not None:
                return network, member
        return None

    async def attach(self, activity_id: str, netns_fd: int) -> None:
        """Brings up the started member's interface, building the network if it is the first."""
        found = self.membership(activity_id)
        if found is None:
            raise errors.FailedPrecondition("the activity's network was removed before it started")
        network, member = found
        async with network.lock:
            if network.members.get(activity_id) is not member:
                raise errors.FailedPrecondition("the activity's network was removed before it started")
            if not network.built:
                await self._plumbing.create(network.key)
                network.built = True
                self._join_overlay(network)
            await self._plumbing.attach(network.key, activity_id, netns_fd, member.ip, network.subnet)
            member.attached = True
        log.info("event=network_joined activity=%s network=%s ip=%s", activity_id, network.network_id, member.ip)

    def leave_now(self, activity_id: str) -> None:
        """Drops a member that never started (bookkeeping only)."""
        found = self.membership(activity_id)
        if found is not None and not found[1].attached:
            del found[0].members[activity_id]

    async def leave(self, activity_id: str) -> None:
        """The activity ended: its address is free, its link goes, and with the last member the
        network's namespace. Never raises."""
        found = self.membership(activity_id)
        if found is None:
            return
        network, member = found
        async with network.lock:
            if network.members.get(activity_id) is not member:
                return
            del network.members[activity_id]
            if not network.built:
                return
            if any(m.attached for m in network.members.values()):
                if member.attached:
                    await self._plumbing.detach(network.key, activity_id)
            else:
                self._leave_overlay(network)
                await self._plumbing.remove(network.key, [activity_id])
                network.built = False

    # Surviving a restart

    def restore(self, record: NetworkRecord) -> PrivateNetwork:
        network = PrivateNetwork(record.requestor_id, record.network_id, IPv4Network(record.subnet),
                                 record.gateway, record.key, spans=record.spans,
                                 peers=dict(record.peers))
        self._networks[(record.requestor_id, record.network_id)] = network
        return network

    def restore_member(self, requestor_id: str, network_id: str, activity_id: str, ip: str, attached: bool) -> None:
        network = self._networks.get((requestor_id, network_id))
        if network is not None:
            network.members[activity_id] = Member(activity_id, IPv4Address(ip), attached)

    async def settle_after_restart(self) -> None:
        """Matches the namespaces found on the host with the networks recovered: a network with
        started members keeps its namespace; any other namespace of this home goes."""
        existing = self._plumbing.existing()
        for network in self._networks.values():
            network.built = network.key in existing and any(m.attached for m in network.members.values())
            for member in network.members.values():
                member.attached = member.attached and network.built
        for key in existing - {n.key for n in self._networks.values() if n.built}:
            log.warning("event=dangling_network_removed namespace=%s", self._plumbing.namespace(key))
            await self._plumbing.remove(key)

    async def close(self) -> None:
        """The daemon stops and its activities end: every namespace of this home goes."""
        for network in list(self._networks.values()):
            async with network.lock:
                if network.built:
                    self._leave_overlay(network)
                    await self._plumbing.remove(network.key, list(network.members))
                    network.built = False

    def _join_overlay(self, network: PrivateNetwork) -> None:
        if network.spans and self.overlay is not None:
            self.overlay.join(network.wire_id, self._plumbing.namespace(network.key), network.peers)
            log.info("event=network_spans network=%s peers=%d", network.network_id, len(network.peers))

    def _leave_overlay(self, network: PrivateNetwork) -> None:
        if network.spans and self.overlay is not None:
            self.overlay.leave(network.wire_id)

    def rejoin_overlay(self) -> None:
        """The overlay (re)started: every spanning network built here joins it again."""
        for network in self._networks.values():
            if network.built:
                self._join_overlay(network)


def _checked_peers(peers: dict[str, str], own_id: str, most: int) -> dict[str, str]:
    """Peers as given, checked: at most `most`, each a provider id and a host:port."""
    if len(peers) > most:
        raise errors.ResourceExhausted(f"a network may name {most} other providers here (--peers-per-network); "
                                       f"{len(peers)} were given")
    checked = {}
    for provider_id, endpoint in peers.items():
        host, colon, port = endpoint.rpartition(":")
        if not provider_id or len(provider_id) > 128 or not colon or not host or not port.isdigit() \
                or not 0 < int(port) < 65536:
            raise errors.InvalidArgument(f"peer {provider_id!r} at {endpoint!r}: give a provider id and host:port")
        if provider_id != own_id:
            checked[provider_id] = endpoint
    return checked
