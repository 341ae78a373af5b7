"""Local TCP ports that lead to ports of running service instances, as yapapi's socket proxy.

Each connection accepted on a local port (on loopback unless told otherwise) becomes one Tunnel
to the instance's port through its provider: bytes go both ways unchanged, half-closes pass
through, so anything that speaks TCP works (HTTP with keep-alive or streaming, websockets, SSH).
Unlike yapapi's, the instance needs no VPN network: the provider connects from inside the
instance's own network namespace.

    proxy = SocketProxy(ports=[2222])
    await proxy.run(cluster)  # each instance's `remote_ports`, on the next free local ports
    ...                       # ssh -p 2222 root@127.0.0.1
    await proxy.stop()
"""

from __future__ import annotations

import asyncio
import logging

from requestor.contrib.service.relay import Listener, relay
from requestor.services import Cluster, Service

log = logging.getLogger(__name__)


class SocketProxyService(Service):
    """A service whose `remote_ports` `SocketProxy.run` makes reachable."""

    remote_ports: list[int] = []


class ProxyServer:
    """One local listener relaying to `remote_port` of one instance."""

    def __init__(self, service: Service, remote_port: int, address: str, local_port: int) -> None:
        self.service = service
        self.remote_port = remote_port
        self.local_address = address
        self.local_port = local_port  # the real one once started (0 picks one)
        self._listener = Listener(lambda reader, writer: relay(service, remote_port, reader, writer))

    def __repr__(self) -> str:
        return f"ProxyServer({self.local_address}:{self.local_port} -> {self.service}:{self.remote_port})"

    async def start(self) -> None:
        self.local_port = await self._listener.start(self.local_address, self.local_port)
        log.info("event=proxy_listening local=%s:%d service=%s remote_port=%d", self.local_address,
                 self.local_port, self.service.id, self.remote_port)

    async def stop(self) -> None:
        await self._listener.stop()


class SocketProxy:
    """Local ports for instances' ports. `ports` are handed out in order; past them (or without
    them) the system picks free ones."""

    def __init__(self, ports: list[int] | None = None, address: str = "127.0.0.1") -> None:
        self.ports = list(ports or [])
        self.address = address
        self.servers: dict[Service, dict[int, ProxyServer]] = {}
        self._available = list(self.ports)

    async def run_server(self, service: Service, remote_port: int, local_port: int | None = None) -> ProxyServer:
        """Starts a local listener for `remote_port` of `service`; returns it (its `local_port`)."""
        if local_port is None:
            local_port = self._available.pop(0) if self._available else 0
        server = ProxyServer(service, remote_port, self.address, local_port)
        await server.start()
        self.servers.setdefault(service, {})[remote_port] = server
        return server

    def get_server(self, service: Service, remote_port: int) -> ProxyServer:
        return self.servers[service][remote_port]

    async def run(self, cluster: Cluster) -> None:
        """A local listener for each of `remote_ports` of each instance of the cluster."""
        for service in cluster.instances:
            for remote_port in getattr(service, "remote_ports", []):
                await self.run_server(service, remote_port)

    async def stop(self) -> None:
        await asyncio.gather(*(s.stop() for servers in self.servers.values() for s in servers.values()))
        self.servers.clear()
