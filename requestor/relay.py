"""The requestor's relay for networks that span providers (as Golem's relay): providers that
cannot reach each other directly send the messages of their TLS sessions here, over the
connection each already has with the requestor, and this forwards them, in order, to the provider
they are for. It cannot read them (the sessions are between the providers' keys) and drops none
of a session it carries: a message for a provider whose link is full or gone is answered with a
reset of its session (the message's clear header names it), and the two providers start a new one.
The providers' windows keep an honest flow far below the bound."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

from requestor.client import ProviderClient
from requestor.errors import RequestorError

log = logging.getLogger(__name__)

QUEUED_MESSAGES = 512  # per provider link (the providers' windows keep an honest flow below)
MAX_MESSAGE = 68 * 1024  # a frame at the overlay's MTU in its TLS records; larger is no honest provider's
RETRY_SECONDS = 1.0
SESSION_HEADER = 9  # a relayed message's kind byte and session id (exeunit.runtime.overlay.relayed)
RESET = b"X"


class Relay:
    """One RelayFrames stream per provider that hosts part of a spanning network."""

    def __init__(self) -> None:
        self._queues: dict[str, asyncio.Queue[tuple[str, str, bytes]]] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._members: dict[str, set[str]] = {}  # network id -> the providers that host part of it
        self.forwarded = 0
        self.dropped = 0

    def admit(self, network_id: str, provider_ids: set[str]) -> None:
        """The providers that host part of `network_id`: only messages between two of them, for
        it, are carried (a provider cannot aim messages at a network it is not on)."""
        self._members[network_id] = set(provider_ids)

    def ensure(self, provider_id: str, client: ProviderClient) -> None:
        """Keeps a relay stream open with this provider (until `close`)."""
        if provider_id not in self._tasks:
            self._queues[provider_id] = asyncio.Queue(QUEUED_MESSAGES)
            self._tasks[provider_id] = asyncio.create_task(self._link(provider_id, client), name=f"relay-{provider_id[:10]}")

    async def _link(self, provider_id: str, client: ProviderClient) -> None:
        queue = self._queues[provider_id]

        async def outgoing() -> AsyncIterator[tuple[str, str, bytes]]:
            while True:
                yield await queue.get()

        while True:
            try:  # a generator of its own for each attempt: a failed call's may still be running
                async for network_id, destination, sealed in client.relay_frames(outgoing()):
                    members = self._members.get(network_id, set())
                    if provider_id not in members or destination not in members or len(sealed) > MAX_MESSAGE:
                        self.dropped += 1  # not a message of one of our networks' members to another
                        continue
                    target = self._queues.get(destination)
                    try:
                        if target is None:
                            raise asyncio.QueueFull
                        target.put_nowait((network_id, provider_id, sealed))
                        self.forwarded += 1
                    except asyncio.QueueFull:
                        self._refuse(queue, network_id, destination, sealed)
            except RequestorError as exc:
                log.debug("event=relay_link_lost provider=%s error=%s", provider_id, exc)
            await asyncio.sleep(RETRY_SECONDS)

    def _refuse(self, source: asyncio.Queue, network_id: str, destination: str, message: bytes) -> None:
        """Not carried: the sender hears its session is reset (from the destination, as it would)."""
        self.dropped += 1
        if len(message) >= SESSION_HEADER and message[:1] != RESET:
            try:
                source.put_nowait((network_id, destination, RESET + message[1:SESSION_HEADER]))
            except asyncio.QueueFull:
                pass  # the sender's own link is full: its session times out on its own

    async def close(self, timeout: float | None = None) -> None:
        """Ends every provider's relay stream, in order: each link is cancelled, which ends its call
        and then the call's writer (ProviderClient.relay_frames), and is waited for, `timeout`
        seconds at most (Golem's exit gives one): a link that has not ended by then is named in a
        warning. Only then are the queues dropped, with nothing left reading them."""
        for task in self._tasks.values():
            task.cancel()
        if self._tasks:
            _, pending = await asyncio.wait(self._tasks.values(), timeout=timeout)
            for provider_id, task in self._tasks.items():
                if task in pending:  # the shape of requestor.leaving.log_given_up
                    log.warning("event=shutdown_gave_up step=relay provider=%s waited=%.1fs", provider_id, timeout or 0.0)
                elif not task.cancelled():
                    task.exception()  # a link ends by its cancellation; anything else is retrieved here
        self._tasks.clear()
        self._queues.clear()
