"""What both proxies do with a local connection: carry it to a port of an instance (one Tunnel),
and keep track of the connections in flight so that stopping ends them."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from requestor.errors import RequestorError
from requestor.services import Service

log = logging.getLogger(__name__)


async def relay(service: Service, remote_port: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Carries the local connection to `remote_port` of `service`'s activity until both sides
    closed; a failure is logged (the local side just sees the connection close)."""
    try:
        ctx = service._ctx
        if ctx is None:
            raise RequestorError(f"{service} is not running on a provider")
        await ctx.handle.client.tunnel(ctx.id, remote_port, reader, writer)
    except (RequestorError, OSError) as exc:  # OSError: the local side went away (reset, not connected)
        log.warning("event=proxy_connection_failed service=%s remote_port=%d error=%s", service.id, remote_port, exc)
    finally:
        writer.close()


class Listener:
    """A local TCP listener whose connections `handle` serves; `stop` closes it and them."""

    def __init__(self, handle: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]) -> None:
        self._handle = handle
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    async def start(self, address: str, port: int) -> int:
        """Listens; returns the port (the system's pick when `port` is 0)."""
        self._server = await asyncio.start_server(self._serve, address, port)
        return int(self._server.sockets[0].getsockname()[1])

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            await self._handle(reader, writer)
        except asyncio.CancelledError:
            # Stopped (or the program is ending): the connection's end, not an error. Re-raised,
            # it would reach asyncio's server, which logs a cancelled handler as an exception.
            pass
        finally:
            self._connections.discard(task)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
