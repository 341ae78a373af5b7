"""The requestor's relay for networks that span providers (as Golem's relay): providers that
cannot reach each other directly send their sealed frames here, over the connection each already
has with the requestor, and this forwards them to the provider they are for. The frames stay
sealed (the requestor never holds a network's frames in clear, nor needs to); a frame for a
provider whose link is full or gone is dropped, as a congested network drops a packet."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

from requestor.client import ProviderClient
from requestor.errors import RequestorError

log = logging.getLogger(__name__)

QUEUED_FRAMES = 256  # per provider link
RETRY_SECONDS = 1.0


class Relay:
    """One RelayFrames stream per provider that hosts part of a spanning network."""

    def __init__(self) -> None:
        self._queues: dict[str, asyncio.Queue[tuple[str, str, bytes]]] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self.forwarded = 0
        self.dropped = 0

    def ensure(self, provider_id: str, client: ProviderClient) -> None:
        """Keeps a relay stream open with this provider (until `close`)."""
        if provider_id not in self._tasks:
            self._queues[provider_id] = asyncio.Queue(QUEUED_FRAMES)
            self._tasks[provider_id] = asyncio.create_task(self._link(provider_id, client), name=f"relay-{provider_id[:10]}")

    async def _link(self, provider_id: str, client: ProviderClient) -> None:
        queue = self._queues[provider_id]

        async def outgoing() -> AsyncIterator[tuple[str, str, bytes]]:
            while True:
                yield await queue.get()

        while True:
            try:
                async for network_id, destination, sealed in client.relay_frames(outgoing()):
                    target = self._queues.get(destination)
                    if target is None:
                        self.dropped += 1
                        continue
                    try:
                        target.put_nowait((network_id, provider_id, sealed))
                        self.forwarded += 1
                    except asyncio.QueueFull:
                        self.dropped += 1
            except RequestorError as exc:
                log.debug("event=relay_link_lost provider=%s error=%s", provider_id, exc)
            await asyncio.sleep(RETRY_SECONDS)

    async def close(self) -> None:
        for task in self._tasks.values():
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)
        self._tasks.clear()
        self._queues.clear()
