"""Which addresses the overlay agent may dial for a peer a requestor named.

A requestor names each peer's host:port, so without a rule it could aim the provider's agent at
anything the host reaches: its own services on loopback, the Docker bridge, the LAN's neighbours.
The agent dials only an address that is none of: unspecified, multicast, link-local, loopback
in any spelling (IPv4-mapped IPv6 included), or one of this host's own addresses; and, when the
operator gave ranges (`--overlay-peer-ranges`), one inside them. The one exception is an agent
that itself listens on loopback (several providers on one machine, as in tests and the embedded
provider): its peers are on loopback too.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Sequence

import psutil

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
# IPv6 forms that carry an IPv4 address for a translator or tunnel to reach (NAT64, 6to4, SIIT,
# IPv4-compatible): never a peer's own address, and a way around the rules for IPv4 ones.
TRANSLATED = [ipaddress.ip_network(n) for n in ("64:ff9b::/96", "64:ff9b:1::/48", "2002::/16",
                                                  "::ffff:0:0:0/96", "::/96")]


def canonical(ip: IPAddress) -> IPAddress:
    """The address as the kernel will use it: an IPv4-mapped IPv6 address is its IPv4 one."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def host_addresses() -> set[IPAddress]:
    """Every address of this host's interfaces (in the namespace the agent runs in)."""
    found: set[IPAddress] = set()
    for addresses in psutil.net_if_addrs().values():
        for address in addresses:
            if address.family in (socket.AF_INET, socket.AF_INET6):
                try:
                    found.add(canonical(ipaddress.ip_address(address.address.split("%")[0])))
                except ValueError:
                    continue
    return found


class PeerAddressPolicy:
    def __init__(self, listening_on: str, allowed: Sequence[IPNetwork] = ()) -> None:
        self._loopback_host = canonical(ipaddress.ip_address(listening_on)).is_loopback
        self._allowed = list(allowed)

    def refusal(self, ip: IPAddress) -> str | None:
        """Why the agent must not dial `ip`; None when it may."""
        ip = canonical(ip)
        if ip.is_unspecified or ip.is_multicast or ip.is_link_local:
            return f"{ip} is not an address a peer provider is reached at"
        if isinstance(ip, ipaddress.IPv6Address) and any(ip in network for network in TRANSLATED):
            return f"{ip} carries an IPv4 address for a translator; name the peer by its own address"
        if ip.is_loopback:
            return None if self._loopback_host else f"{ip} is this host's loopback"
        if not self._loopback_host and ip in host_addresses():
            return f"{ip} is one of this host's own addresses"
        if self._allowed and not any(ip in network for network in self._allowed):
            return f"{ip} is outside the operator's --overlay-peer-ranges"
        return None

    def resolve(self, host: str, port: int) -> tuple[str, int]:
        """The address to dial for a named peer; ValueError saying why not."""
        info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        ip = ipaddress.ip_address(info[4][0].split("%")[0])
        why_not = self.refusal(ip)
        if why_not:
            raise ValueError(why_not)
        return str(canonical(ip)), port


def parse_ranges(text: str) -> list[IPNetwork]:
    """`--overlay-peer-ranges`: comma-separated CIDRs ("" allows any address the rules allow)."""
    return [ipaddress.ip_network(part.strip(), strict=False) for part in text.split(",") if part.strip()]
