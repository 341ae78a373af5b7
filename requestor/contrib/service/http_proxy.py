"""A local HTTP port spread over a cluster's running instances, as yapapi's LocalHttpProxy.

Each connection accepted on the local port goes, whole, to the next running instance (round
robin) through a Tunnel to its `remote_port`. yapapi's proxy parses and buffers each request and
response; this one relays TCP, so keep-alive, chunked and streamed responses, large uploads and
websocket upgrades all work, and the instances need no VPN network. The Host header reaches the
instance as the client sent it (`remote_host` is accepted for compatibility and not used).

    cluster = await golem.run_service(HttpService)
    proxy = LocalHttpProxy(cluster, 8080)
    await proxy.run()   # http://127.0.0.1:8080/ now reaches the instances' port 80
    ...
    await proxy.stop()
"""

from __future__ import annotations

import asyncio
import itertools
import logging

from requestor.contrib.service.relay import Listener, relay
from requestor.services import Cluster, Service, ServiceState

log = logging.getLogger(__name__)

_NO_INSTANCE = b"No service instances available.\r\n"
UNAVAILABLE = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\n"
    b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(_NO_INSTANCE), _NO_INSTANCE)
)


class HttpProxyService(Service):
    """A service whose HTTP server on `remote_port` `LocalHttpProxy` makes reachable."""

    def __init__(self, remote_port: int = 80, remote_host: str | None = None) -> None:
        super().__init__()
        self._remote_port = remote_port
        self._remote_host = remote_host  # yapapi rewrites Host with it; relaying TCP, we do not

    @property
    def remote_port(self) -> int:
        return self._remote_port


class LocalHttpProxy:
    """Listens on `port` (loopback unless `address` says otherwise) for the cluster."""

    def __init__(self, cluster: Cluster, port: int, address: str = "127.0.0.1") -> None:
        self._cluster = cluster
        self._port = port
        self._address = address
        self._turn = itertools.count()
        self._listener = Listener(self._relay)

    @property
    def port(self) -> int:
        """The local port (the system's pick once running, when 0 was asked for)."""
        return self._port

    async def run(self) -> None:
        self._port = await self._listener.start(self._address, self._port)
        log.info("event=http_proxy_listening address=%s port=%d cluster=%s", self._address, self._port, self._cluster)

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        running = [i for i in self._cluster.instances if i.state is ServiceState.running and i._ctx is not None]
        if not running:
            log.error("event=http_proxy_no_instance cluster=%s", self._cluster)
            writer.write(UNAVAILABLE)
            await writer.drain()
            writer.close()
            return
        instance = running[next(self._turn) % len(running)]
        await relay(instance, getattr(instance, "remote_port", 80), reader, writer)

    async def stop(self) -> None:
        await self._listener.stop()
