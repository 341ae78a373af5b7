"""Messages of spanning networks that go through the requestor (as Golem's relay): the overlay
hands out the TLS records of its links with peers it cannot reach directly, and each requestor's
RelayFrames stream carries them out; what the requestor relays from other providers goes into the
overlay.

The messages are pieces of TLS sessions, so none is dropped once taken: the way in waits for the
overlay (and with it the requestor's stream, by gRPC's flow control) rather than dropping; the way
out is bounded by bytes per requestor (the overlay's sessions keep a window each, so an honest
flow stays far below), and a message that finds no stream open or the bound reached is refused
back to the overlay (`relay_lost`), whose session then starts afresh. One requestor's relay never
holds the daemon's memory, and never a piece of another's."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

from exeunit import errors
from exeunit.domain.networks import MAX_RELAYED_MESSAGE
from exeunit.services.networks import Networks

log = logging.getLogger(__name__)
ITEM_OVERHEAD = 256  # bytes a queued message costs beyond its own (what the bound counts, not only its length)


@dataclass(frozen=True)
class RelayedFrame:
    network_id: str
    peer: str  # out: the provider it is for; in: the provider that sent it
    sealed: bytes
    wire_id: str = ""  # out: the network's id between providers (for a refusal back to the overlay)


class _Outbox:
    """One requestor's messages waiting for its stream, bounded by bytes."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.queued = 0
        self.items: asyncio.Queue[RelayedFrame] = asyncio.Queue()

    def offer(self, frame: RelayedFrame) -> bool:
        cost = len(frame.sealed) + ITEM_OVERHEAD
        if self.queued + cost > self.limit:
            return False
        self.queued += cost
        self.items.put_nowait(frame)
        return True

    async def take(self) -> RelayedFrame:
        frame = await self.items.get()
        self.queued -= len(frame.sealed) + ITEM_OVERHEAD
        return frame


class RelayHub:
    def __init__(self, networks: Networks, queue_bytes: int = 64 << 20) -> None:
        self._networks = networks
        self._queue_bytes = queue_bytes
        self._outboxes: dict[str, _Outbox] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self.refused = 0  # messages handed back to the overlay (no stream, or the bound reached)
        self.skipped = 0  # relayed messages in that no honest provider sends (over the largest)
        self._refusing: set[tuple[str, str]] = set()  # (network, peer) told of a refusal, not accepted since

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def queued_bytes(self) -> dict[str, int]:
        """Bytes waiting per requestor (the metrics' relay queue depth)."""
        return {requestor: box.queued for requestor, box in self._outboxes.items()}

    def from_agent(self, wire_id: str, peer: str, sealed: bytes) -> None:
        """The overlay's message for `peer` (called from its thread)."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._enqueue, wire_id, peer, sealed)

    def _enqueue(self, wire_id: str, peer: str, sealed: bytes) -> None:
        network = self._networks.by_wire_id(wire_id)
        if network is None:
            return  # the network is gone, and its sessions with it
        box = self._outboxes.get(network.requestor_id)
        if box is not None and box.offer(RelayedFrame(network.network_id, peer, sealed, wire_id)):
            self._refusing.discard((wire_id, peer))
            return
        self.refused += 1  # no relay stream (as a link down), or over the bound: refused whole
        if box is not None and (wire_id, peer) not in self._refusing:
            log.warning("event=relay_queue_full requestor=%s network=%s peer=%s queued=%d limit=%d: the session is "
                        "reset (raise --relay-queue-mib)", network.requestor_id, network.network_id, peer,
                        box.queued, box.limit)
        self._refuse(wire_id, peer)

    def _refuse(self, wire_id: str, peer: str) -> None:
        """Tells the overlay its session with `peer` lost a message: once, until one is carried
        again (a flood of refusals costs the loop one notice, not one each)."""
        overlay = self._networks.overlay
        if overlay is not None and (wire_id, peer) not in self._refusing:
            if len(self._refusing) < 65536:
                self._refusing.add((wire_id, peer))
            overlay.relay_lost(wire_id, peer)

    async def stream(self, requestor_id: str, incoming: AsyncIterator[RelayedFrame]) -> AsyncIterator[RelayedFrame]:
        """The requestor's relay: what its networks' overlays send out, while `incoming` goes in."""
        if requestor_id in self._outboxes:
            raise errors.AlreadyExists("this requestor has a relay stream open already; close it first")
        box = _Outbox(self._queue_bytes)
        self._outboxes[requestor_id] = box
        reading = asyncio.create_task(self._take_in(requestor_id, incoming))
        try:
            while not reading.done() or not box.items.empty():
                getting = asyncio.ensure_future(box.take())
                await asyncio.wait({getting, reading}, return_when=asyncio.FIRST_COMPLETED)
                if not getting.done():
                    getting.cancel()
                    break
                yield getting.result()
            if reading.exception() is not None:  # a frame for a network not the caller's, say
                raise reading.exception()  # type: ignore[misc]
        finally:
            del self._outboxes[requestor_id]
            reading.cancel()
            self._refuse_all(box)

    def _refuse_all(self, box: _Outbox) -> None:
        """The stream ended with messages still waiting: their sessions start afresh."""
        lost = set()
        while not box.items.empty():
            frame = box.items.get_nowait()
            lost.add((frame.wire_id, frame.peer))
        for wire_id, peer in lost:
            self._refuse(wire_id, peer)

    async def _take_in(self, requestor_id: str, incoming: AsyncIterator[RelayedFrame]) -> None:
        async for frame in incoming:
            network = self._networks.get(requestor_id, frame.network_id)  # NotFound: not the caller's
            overlay = self._networks.overlay
            if len(frame.sealed) > MAX_RELAYED_MESSAGE:
                self.skipped += 1  # no provider's; its session (if any) notices the gap and starts afresh
                continue
            if network.built and network.spans and overlay is not None:
                if not overlay.relay_in(network.wire_id, frame.peer, frame.sealed, wait=False):
                    # the overlay is behind: wait for it (off the loop) rather than drop a piece of a session,
                    # and read nothing more from this requestor meanwhile
                    await asyncio.to_thread(overlay.relay_in, network.wire_id, frame.peer, frame.sealed)
