"""Frames of spanning networks that go through the requestor (as Golem's relay): the overlay
hands out frames for peers it cannot reach directly, and each requestor's RelayFrames stream
carries them out; frames the requestor relays from other providers go into the overlay.

A requestor's queue is bounded and drops what does not fit, as a congested network drops
packets (the members' TCP sends again): one requestor's relay never holds the daemon's memory."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

from exeunit import errors
from exeunit.services.networks import Networks

log = logging.getLogger(__name__)

QUEUED_FRAMES = 256  # per requestor; a frame is at most ~64 KiB


@dataclass(frozen=True)
class RelayedFrame:
    network_id: str
    peer: str  # out: the provider it is for; in: the provider that sent it
    sealed: bytes


class RelayHub:
    def __init__(self, networks: Networks) -> None:
        self._networks = networks
        self._queues: dict[str, asyncio.Queue[RelayedFrame]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self.dropped = 0

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def from_agent(self, wire_id: str, peer: str, sealed: bytes) -> None:
        """The overlay's frame for `peer` (called from its thread)."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._enqueue, wire_id, peer, sealed)

    def _enqueue(self, wire_id: str, peer: str, sealed: bytes) -> None:
        network = self._networks.by_wire_id(wire_id)
        if network is None:
            return
        queue = self._queues.get(network.requestor_id)
        if queue is None:
            return  # the requestor has no relay stream open: as a link down
        try:
            queue.put_nowait(RelayedFrame(network.network_id, peer, sealed))
        except asyncio.QueueFull:
            self.dropped += 1

    async def stream(self, requestor_id: str, incoming: AsyncIterator[RelayedFrame]) -> AsyncIterator[RelayedFrame]:
        """The requestor's relay: what its networks' overlays send out, while `incoming` goes in."""
        if requestor_id in self._queues:
            raise errors.AlreadyExists("this requestor has a relay stream open already; close it first")
        queue: asyncio.Queue[RelayedFrame] = asyncio.Queue(QUEUED_FRAMES)
        self._queues[requestor_id] = queue
        reading = asyncio.create_task(self._take_in(requestor_id, incoming))
        try:
            while not reading.done() or not queue.empty():
                getting = asyncio.ensure_future(queue.get())
                await asyncio.wait({getting, reading}, return_when=asyncio.FIRST_COMPLETED)
                if not getting.done():
                    getting.cancel()
                    break
                yield getting.result()
            if reading.exception() is not None:  # a frame for a network not the caller's, say
                raise reading.exception()  # type: ignore[misc]
        finally:
            del self._queues[requestor_id]
            reading.cancel()

    async def _take_in(self, requestor_id: str, incoming: AsyncIterator[RelayedFrame]) -> None:
        async for frame in incoming:
            network = self._networks.get(requestor_id, frame.network_id)  # NotFound: not the caller's
            overlay = self._networks.overlay
            if network.built and network.secret and overlay is not None:
                overlay.relay_in(network.wire_id, frame.peer, frame.sealed)
