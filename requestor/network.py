"""`Network`: a private network between a requestor's service instances, as yapapi's VPN.

Instances on one network reach each other by address, on any port, TCP and UDP; nothing else
reaches them or is reached by them. The requestor holds the address plan (`nodes_dict`, first
free address first, an ended instance's address free again); each provider that hosts a member
holds its own part of the network (exeunit's Network service), created when the first instance
lands there. Instances may sit on any providers: each provider's part gets the list of the other
providers by id (`SetNetworkPeers` when one joins); the providers' overlays link up over TLS,
each end proving the provider id named here with its key, directly where they can and through
this requestor (requestor.relay) where they cannot. No secret is shared: the requestor relays
sessions it cannot read, and a provider removed from the network holds nothing that opens the
others' traffic.

The requestor itself is not on the network (there is no VPN to the requestor's host): it reaches
an instance's port through a tunnel (`requestor.contrib.service.socket_proxy.SocketProxy`,
`requestor.contrib.service.http_proxy.LocalHttpProxy`). `owner_ip` is kept out of the plan, as
yapapi keeps it for the requestor, so the instances' addresses are the ones a yapapi script expects.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import uuid
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, ip_address, ip_network
from typing import TYPE_CHECKING, Any

from requestor.errors import RequestorError
from requestor.leaving import log_given_up

if TYPE_CHECKING:
    from requestor.client import ProviderClient
    from requestor.model import Offer
    from requestor.relay import Relay

log = logging.getLogger(__name__)


class NetworkError(RequestorError):
    """A network operation is not possible (an address outside the network, taken, none left)."""


class NetworkState(enum.Enum):
    initialized = "initialized"
    creating = "creating"
    ready = "ready"
    removing = "removing"
    removed = "removed"


@dataclass
class Node:
    """One member of a network: `node_id` is the provider's id (the requestor's for the owner)."""

    network: Network
    node_id: str
    ip: str

    def get_deploy_args(self) -> dict[str, Any]:
        """The `deploy` arguments that put an activity on the network at this node's address."""
        return {
            "net": [{
                "id": self.network.network_id,
                "ip": self.network.network_address,
                "mask": self.network.netmask,
                "nodeIp": self.ip,
                "nodes": self.network.nodes_dict,
            }]
        }

    def get_websocket_uri(self, port: int) -> str:
        raise NetworkError(
            "there is no websocket endpoint for a node's port here; reach it through "
            "requestor.contrib.service.socket_proxy.SocketProxy or http_proxy.LocalHttpProxy "
            "(or ProviderClient.tunnel)"
        )


class Network:
    """A private network; make one with `await golem.create_network("192.168.0.1/24")`.

    Example::

        network = await golem.create_network("192.168.0.1/24")
        async with network:
            db = await golem.run_service(DbService, network=network)
            web = await golem.run_service(WebService, network=network,
                                          instance_params=[{"db_address": "192.168.0.2"}])
    """

    @classmethod
    async def create(cls, ip: str, owner_id: str, owner_ip: str | None = None, mask: str | None = None,
                     gateway: str | None = None) -> Network:
        network = cls(ip, owner_id, owner_ip, mask, gateway)
        log.info("Created network: %s", network)
        return network

    def __init__(self, ip: str, owner_id: str, owner_ip: str | None = None, mask: str | None = None,
                 gateway: str | None = None) -> None:
        try:
            parsed = ip_network(f"{ip}/{mask}" if mask else ip, strict=False)
        except ValueError as exc:
            raise NetworkError(f"{exc}.") from None
        if not isinstance(parsed, IPv4Network):
            raise NetworkError(f"{parsed} is an IPv6 network; networks here are IPv4")
        if not 8 <= parsed.prefixlen <= 30:
            raise NetworkError(f"{parsed} has prefix length {parsed.prefixlen}; use 8 to 30")
        self._ip_network = parsed
        self._network_id = uuid.uuid4().hex
        self._owner_id = owner_id
        self._gateway = str(self._checked(gateway)) if gateway else None
        self._nodes: dict[str, Node] = {}  # by address
        self._promised: set[str] = set()  # addresses named in run_service(network_addresses=...), held for their instances
        self._state = NetworkState.ready
        self._hosts: dict[str, ProviderClient] = {}  # providers where it exists, by provider id
        self.placement = asyncio.Lock()  # held by the instance choosing a provider (the runner's)
        self.suspended = False  # a cluster on it was suspended: it stays on its providers when Golem stops
        self.relay: Relay | None = None  # set by Golem: frames between providers that cannot reach each other
        self._endpoints: dict[str, str] = {}  # overlay host:port of each provider it is on
        owner = str(self._checked(owner_ip)) if owner_ip else self._next_address()
        self._owner_ip = owner
        self._nodes[owner] = Node(self, owner_id, owner)

    def __str__(self) -> str:
        return f"Network {{ id: {self._network_id}, ip: {self.network_address}, mask: {self.netmask}}}"

    async def __aenter__(self) -> Network:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.remove()

    # yapapi's attributes

    @property
    def network_id(self) -> str:
        return self._network_id

    @property
    def owner_id(self) -> str:
        return self._owner_id

    @property
    def owner_ip(self) -> str:
        return self._owner_ip

    @property
    def state(self) -> NetworkState:
        return self._state

    @property
    def network_address(self) -> str:
        return str(self._ip_network.network_address)

    @property
    def netmask(self) -> str:
        return str(self._ip_network.netmask)

    @property
    def gateway(self) -> str | None:
        return self._gateway

    @property
    def nodes_dict(self) -> dict[str, str]:
        """Address -> node id of every member (the owner's address included)."""
        return {ip: node.node_id for ip, node in self._nodes.items()}

    # Members

    async def add_owner_address(self, ip: str) -> None:
        """Moves the requestor's own (reserved) address to `ip`."""
        address = str(self._checked(ip))
        self._ensure_free(address)
        self._nodes.pop(self._owner_ip, None)
        self._owner_ip = address
        self._nodes[address] = Node(self, self._owner_id, address)

    async def add_node(self, node_id: str, ip: str | None = None) -> Node:
        """Adds a member at `ip`, or at the first free address."""
        return self._add(node_id, ip, promised=False)

    def _add(self, node_id: str, ip: str | None, promised: bool) -> Node:
        self._ensure_ready()
        address = str(self._checked(ip)) if ip else self._next_address()
        if address in self._nodes or (address in self._promised and not promised):
            raise NetworkError(f"'{address}' has already been assigned in this network.")
        node = Node(self, node_id, address)
        self._nodes[address] = node
        return node

    async def remove_node(self, node_id: str) -> None:
        """Removes the members of that node id (a provider's, all of them); their addresses are free."""
        for address in [a for a, n in self._nodes.items() if n.node_id == node_id and a != self._owner_ip]:
            del self._nodes[address]

    async def refresh_nodes(self) -> None:
        """Nothing to refresh: members learn of each other by address, not from a node list."""

    async def remove(self, timeout: float | None = None) -> None:
        """Removes the network from every provider that hosts it (all at once); members lose their
        interface on it, and every connection it carried ends. With `timeout` (seconds; Golem's
        exit gives one), a provider that has not answered by then is given up, with a warning: it
        drops the network itself once this requestor's last agreement there has ended."""
        if self._state in (NetworkState.removing, NetworkState.removed):
            return
        self._state = NetworkState.removing
        await asyncio.gather(*(self._remove_from(provider_id, client, timeout)
                               for provider_id, client in list(self._hosts.items())))
        self._hosts.clear()
        self._state = NetworkState.removed
        log.info("Removed network: %s", self)

    async def _remove_from(self, provider_id: str, client: ProviderClient, timeout: float | None) -> None:
        try:
            async with asyncio.timeout(timeout):
                await client.remove_network(self._network_id)
        except RequestorError as exc:
            log.warning("event=network_remove_failed network=%s provider=%s error=%s", self._network_id, provider_id, exc)
        except TimeoutError:
            log_given_up(log, "remove_network", timeout or 0.0, network=self._network_id, provider=provider_id,
                         address=client.address)

    # Suspend and resume (yapapi's shape; see serialize)

    def serialize(self) -> dict[str, Any]:
        """What `golem.resume_network(...)` needs to take this network up again (JSON-able), in
        yapapi's shape but for `nodes`, which maps address -> node id here (several instances can
        share a provider, so one node id can hold several addresses)."""
        return {
            "_network_id": self._network_id,
            "ip": self._ip_network.with_netmask,
            "gateway": self._gateway,
            "owner_id": self._owner_id,
            "owner_ip": self._owner_ip,
            "state": self._state.value,
            "nodes": self.nodes_dict,
        }

    @classmethod
    def deserialize(cls, obj_dict: dict[str, Any], owner_id: str | None = None) -> Network:
        """The network `serialize()` described; its instances' members come back with them
        (`resume_service`). `nodes` may map either way (yapapi's node id -> address too)."""
        network = cls(obj_dict["ip"], obj_dict.get("owner_id") or owner_id or "", obj_dict.get("owner_ip"),
                      gateway=obj_dict.get("gateway"))
        network._network_id = str(obj_dict["_network_id"])
        if obj_dict.get("state") in (NetworkState.removing.value, NetworkState.removed.value):
            network._state = NetworkState.removed
        return network

    # What the service runner uses

    @property
    def hosting_provider_id(self) -> str | None:
        """The provider its instances are on, while any is; instances of one network share it."""
        return next((n.node_id for a, n in self._nodes.items() if a != self._owner_ip), None)

    def check_address(self, ip: str) -> None:
        """NetworkError unless `ip` is a host address of the network nobody holds."""
        self._ensure_free(str(self._checked(ip)))

    def promise(self, ip: str) -> None:
        """Holds `ip` for an instance from its spawn to its end, respawns included, so that
        another instance asking for it fails at once."""
        self.check_address(ip)
        self._promised.add(str(self._checked(ip)))

    def release_promise(self, ip: str) -> None:
        self._promised.discard(str(self._checked(ip)))

    async def join(self, client: ProviderClient, offer: Offer, ip: str | None) -> Node:
        """Puts the network on the provider and a member for an instance there. The provider is
        asked every time (it is idempotent): it drops a requestor's networks when its last
        agreement there ends, as between an instance and its respawn. A provider new to the
        network is told of the others, and they of it."""
        self._ensure_ready()
        provider_id = offer.provider_id
        others = {p: e for p, e in self._endpoints.items() if p != provider_id}
        if offer.overlay_endpoint:
            await client.create_network(self._network_id, self._ip_network.with_prefixlen, self._gateway or "",
                                        True, others)
        elif others or any(p != provider_id for p in self._hosts):
            raise NetworkError(f"provider {offer.provider_name} cannot join a network that spans providers "
                               "(its offer has no overlay_port)")
        else:
            await client.create_network(self._network_id, self._ip_network.with_prefixlen, self._gateway or "")
        new = provider_id not in self._endpoints
        self._hosts[provider_id] = client
        if offer.overlay_endpoint:
            self._endpoints[provider_id] = offer.overlay_endpoint
        if new and len(self._endpoints) > 1:
            await self._tell_peers()
        return self._add(provider_id, ip, promised=ip is not None and ip in self._promised)

    async def _tell_peers(self) -> None:
        """Every provider of the network learns the others (yapapi's add_node reaching them all)."""
        if self.relay is not None:
            self.relay.admit(self._network_id, set(self._endpoints))
        for provider_id, client in list(self._hosts.items()):
            if provider_id not in self._endpoints:
                continue
            if self.relay is not None:
                self.relay.ensure(provider_id, client)
            peers = {p: e for p, e in self._endpoints.items() if p != provider_id}
            try:
                await client.set_network_peers(self._network_id, peers)
            except RequestorError as exc:
                log.warning("event=network_peers_not_set network=%s provider=%s error=%s",
                            self._network_id, provider_id, exc)

    def rejoin(self, client: ProviderClient, provider_id: str, ip: str, endpoint: str = "") -> Node:
        """A resumed instance's member, as it was: the provider kept the network and the activity's
        place on it while the instance was suspended."""
        self._hosts[provider_id] = client
        if endpoint:
            self._endpoints[provider_id] = endpoint
            if self.relay is not None and len(self._endpoints) > 1:
                self.relay.admit(self._network_id, set(self._endpoints))
                for host, host_client in self._hosts.items():
                    self.relay.ensure(host, host_client)
        node = Node(self, provider_id, str(self._checked(ip)))
        self._nodes[node.ip] = node
        return node

    def leave(self, node: Node) -> None:
        """The instance ended: its address is free (its provider frees it there with the activity)."""
        if self._nodes.get(node.ip) is node:
            del self._nodes[node.ip]

    def _ensure_ready(self) -> None:
        if self._state is not NetworkState.ready:
            raise NetworkError(f"network {self._network_id} is {self._state.value}; no node can join it")

    def _checked(self, ip: str | None) -> IPv4Address:
        try:
            address = ip_address(ip or "")
        except ValueError:
            raise NetworkError(f"{ip!r} is not an IP address.") from None
        if address not in self._ip_network:
            raise NetworkError(
                f"The given IP ('{ip}') address must belong to the network ('{self._ip_network.with_netmask}')."
            )
        if address in (self._ip_network.network_address, self._ip_network.broadcast_address):
            raise NetworkError(f"{ip} is the network's own or broadcast address, not a host address")
        assert isinstance(address, IPv4Address)
        return address

    def _ensure_free(self, address: str) -> None:
        if address in self._nodes or address in self._promised:
            raise NetworkError(f"'{address}' has already been assigned in this network.")

    def _next_address(self) -> str:
        for host in self._ip_network.hosts():
            if str(host) not in self._nodes and str(host) not in self._promised:
                return str(host)
        raise NetworkError(f"No more addresses available in '{self._ip_network.with_netmask}'.")
