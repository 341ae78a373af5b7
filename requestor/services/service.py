"""`Service`: what a requestor subclasses to describe a service and drive its instances."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncGenerator, Awaitable
from dataclasses import dataclass
from typing import Any, Optional, TypeVar

from requestor.ctx import WorkContext
from requestor.events import CommandExecuted
from requestor.network import Network, Node
from requestor.payload import Payload
from requestor.script import Script
from requestor.services.instance import NO_EXC, ExcInfo, ServiceInstance
from requestor.services.state import AVAILABLE, ServiceState

Handler = AsyncGenerator[Script, Awaitable[list[CommandExecuted]]]


@dataclass
class ServiceSignal:
    """A message between the requestor's code and a service instance."""

    message: Any
    response_to: Optional["ServiceSignal"] = None


class Service:
    """Base class of services. Override `get_payload` and the handlers you need.

    Example::

        class DateService(Service):
            @staticmethod
            async def get_payload():
                return await vm.repo(image_tag="exeunit-base:latest")

            async def start(self):
                async for script in super().start():   # deploy + start
                    yield script
                script = self._ctx.new_script()
                script.run("/bin/sh", "-c", "date > /golem/work/started")
                yield script

            async def run(self):
                while True:
                    await asyncio.sleep(5)
                    script = self._ctx.new_script()
                    result = script.run("/bin/cat", "/golem/work/started")
                    yield script
                    print((await result).stdout)

    Each handler is an async generator yielding Scripts; `yield` returns once the script ran, and
    a failed command raises CommandExecutionError there.
    """

    def __init__(self) -> None:
        self._id = str(uuid.uuid4())
        self._instance = ServiceInstance()
        self._inqueue: asyncio.Queue[ServiceSignal] = asyncio.Queue()
        self._outqueue: asyncio.Queue[ServiceSignal] = asyncio.Queue()

    # What the engine sets (in `instance`)

    @property
    def instance(self) -> ServiceInstance:
        """The runner's record of this instance, which the properties below read."""
        return self._instance

    @property
    def ctx(self) -> WorkContext | None:
        """The work context of the activity this instance runs on (also as `self._ctx`)."""
        return self._instance.ctx

    @property
    def _ctx(self) -> WorkContext | None:  # yapapi's name, which service handlers use
        return self._instance.ctx

    @property
    def id(self) -> str:
        return self._id

    @property
    def cluster(self) -> Any:
        """The requestor.services.Cluster this instance belongs to."""
        return self._instance.cluster

    @property
    def state(self) -> ServiceState:
        return self._instance.state

    @property
    def is_available(self) -> bool:
        """True while starting, running or stopping (bound to an activity)."""
        return self._instance.state in AVAILABLE

    @property
    def provider_name(self) -> str | None:
        return self.ctx.provider_name if self.ctx else None

    @property
    def provider_id(self) -> str | None:
        return self.ctx.provider_id if self.ctx else None

    @property
    def exc_info(self) -> ExcInfo:
        """The exception that caused the last state transition, as sys.exc_info(); or Nones."""
        return self._instance.exc_info

    @property
    def network(self) -> Network | None:
        """The network this instance is on (if any)."""
        return self.network_node.network if self.network_node else None

    @property
    def network_node(self) -> Node | None:
        """This instance's member of its network: `.ip`, `.node_id` (while it has an activity)."""
        return self._instance.network_node

    def __repr__(self) -> str:
        where = f" on {self.provider_name} [ {self.provider_id} ]" if self.provider_id else ""
        at = f" @ {self.network_node.ip}" if self.network_node else ""
        return f"<{type(self).__name__} {self.state.value}{where}{at}>"

    # Messages between the requestor's code and the instance

    async def send_message(self, message: Any = None) -> None:
        await self._inqueue.put(ServiceSignal(message=message))

    def send_message_nowait(self, message: Any = None) -> None:
        self._inqueue.put_nowait(ServiceSignal(message=message))

    async def receive_message(self) -> ServiceSignal:
        return await self._outqueue.get()

    def receive_message_nowait(self) -> ServiceSignal | None:
        try:
            return self._outqueue.get_nowait()
        except asyncio.QueueEmpty:
            return None

    async def _listen(self) -> ServiceSignal:
        return await self._inqueue.get()

    def _listen_nowait(self) -> ServiceSignal | None:
        try:
            return self._inqueue.get_nowait()
        except asyncio.QueueEmpty:
            return None

    async def _respond(self, message: Any, response_to: ServiceSignal | None = None) -> None:
        await self._outqueue.put(ServiceSignal(message=message, response_to=response_to))

    def _respond_nowait(self, message: Any, response_to: ServiceSignal | None = None) -> None:
        self._outqueue.put_nowait(ServiceSignal(message=message, response_to=response_to))

    # What a subclass overrides

    @staticmethod
    async def get_payload() -> Payload | None:
        """The payload to run; or None, and `run_service(payload=...)` gives it."""
        return None

    def get_deploy_args(self) -> dict[str, Any]:
        """Keyword arguments of the default start's `deploy`: the network to join, if any."""
        return self.network_node.get_deploy_args() if self.network_node else {}

    async def start(self) -> Handler:
        """Handler of `starting`: by default deploys and starts the activity."""
        assert self._ctx is not None
        script = self._ctx.new_script()
        script.deploy(**self.get_deploy_args())
        script.start()
        yield script

    async def run(self) -> Handler:
        """Handler of `running`: by default idles until the instance is stopped."""
        await asyncio.Future()
        yield  # type: ignore[misc]  # unreachable: makes this an async generator

    async def shutdown(self) -> Handler:
        """Handler of `stopping`: by default terminates the activity."""
        assert self._ctx is not None
        script = self._ctx.new_script()
        script.terminate()
        yield script

    async def reset(self) -> None:
        """Called before a failed instance is restarted on another provider; undo per-run state here."""

    # Suspend and resume (yapapi's)

    def _serialize_init_params(self) -> dict[str, Any]:
        """The keyword arguments that make this instance again (`resume_service` passes them to
        __init__); override it in a service whose __init__ takes any."""
        return {}

    def serialize(self) -> dict[str, Any]:
        """What `golem.resume_service(...)` needs to take this instance up again (JSON-able): yapapi's
        keys, plus `provider` (its `host:port#provider-id`), where yagna's ids name a provider alone."""
        handle = self.ctx.handle if self.ctx else None
        node = self.network_node
        return {
            "params": self._serialize_init_params(),
            "activity_id": handle.activity.id if handle else None,
            "agreement_id": handle.agreement.id if handle else None,
            "state": (self._instance.suspended_in or self.state).value,
            "network_node": {"network_id": node.network.network_id, "node_id": node.node_id, "ip": node.ip}
            if node else None,
            "provider": f"{handle.client.address}#{handle.agreement.provider_id}" if handle else None,
        }

    @property
    def restart_condition(self) -> bool:
        """Whether a terminated instance is restarted: by default, when an error ended it before
        it ever reached `running`."""
        return self._instance.exc_info != NO_EXC and not self._instance.started_successfully


ServiceType = TypeVar("ServiceType", bound=Service)
