"""`exeunit serve --announce`: the provider published on its LAN with DNS-SD over mDNS, so that
requestors find it without a list (`GOLEM_PROVIDERS=mdns`).

The service type is `_exeunit._tcp.local.`; the TXT record carries the provider id (a claim
anyone on the LAN could make: a requestor checks it against the providers it knows, and then the
provider's key against it, requestor.discovery), its name, its subnet and whether it speaks TLS.
A wildcard --listen ([::] too) announces every non-loopback IPv4 address of the host.
"""

from __future__ import annotations

import ipaddress
import logging
import socket

import psutil
from zeroconf import IPVersion
from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

from exeunit.v1.conventions import MDNS_SERVICE_TYPE

log = logging.getLogger(__name__)


def announced_addresses(listen_host: str) -> list[str]:
    """The addresses to publish for a daemon listening on `listen_host`; ValueError for loopback."""
    host = listen_host.strip("[]")
    if host in ("0.0.0.0", "::", ""):
        found = [a.address for addresses in psutil.net_if_addrs().values() for a in addresses
                 if a.family == socket.AF_INET and not ipaddress.ip_address(a.address).is_loopback]
        if not found:
            raise ValueError("--announce: this host has no non-loopback IPv4 address to announce")
        return sorted(set(found))
    if ipaddress.ip_address(host).is_loopback:
        raise ValueError("--announce with a loopback --listen would tell the LAN of an address it cannot reach; "
                         "listen on the LAN's address (or 0.0.0.0)")
    if ipaddress.ip_address(host).version == 6:
        raise ValueError("--announce publishes IPv4 addresses only (as requestors browse); listen on [::] or "
                         "0.0.0.0, whose IPv4 addresses are announced, or on the LAN's IPv4 address")
    return [host]


class Announcement:
    """The provider's DNS-SD record, published until `withdraw()`."""

    def __init__(self, provider_id: str, name: str, subnet: str, addresses: list[str], port: int, tls: bool) -> None:
        label = f"{name[:40]}-{provider_id[2:10]}"
        self.info = AsyncServiceInfo(
            MDNS_SERVICE_TYPE, f"{label}.{MDNS_SERVICE_TYPE}",
            addresses=[socket.inet_aton(a) for a in addresses], port=port,
            properties={"id": provider_id, "name": name, "subnet": subnet, "tls": "1" if tls else "0"},
            server=f"{label}.local.",
        )
        self._zeroconf: AsyncZeroconf | None = None

    async def publish(self) -> None:
        self._zeroconf = AsyncZeroconf(ip_version=IPVersion.V4Only)
        await self._zeroconf.async_register_service(self.info)
        log.info("event=announced type=%s name=%r addresses=%s port=%d", MDNS_SERVICE_TYPE, self.info.name,
                 ",".join(self.info.parsed_addresses()), self.info.port)

    async def withdraw(self) -> None:
        if self._zeroconf is not None:
            await self._zeroconf.async_unregister_service(self.info)
            await self._zeroconf.async_close()
            self._zeroconf = None
