"""`Cluster`: the requestor's handle on the instances of one service."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from datetime import datetime
from types import TracebackType
from typing import Any, Generic

from requestor import events
from requestor.network import Network
from requestor.payload import Payload
from requestor.services.runner import Resumed, ServiceRunner
from requestor.services.service import ServiceType
from requestor.services.state import ServiceState

log = logging.getLogger(__name__)


class Cluster(Generic[ServiceType]):
    """The instances of one service started by `golem.run_service(...)`.

    Example::

        cluster = await golem.run_service(DateService, num_instances=2)
        while any(i.state != ServiceState.running for i in cluster.instances):
            await asyncio.sleep(1)
        cluster.stop()
    """

    def __init__(self, runner: ServiceRunner, job: events.Job, service_class: type[ServiceType],
                 network: Network | None = None) -> None:
        self._runner = runner
        self._network = network
        self._job = job
        self._service_class = service_class

    @property
    def id(self) -> str:
        return self._job.id

    @property
    def expiration(self) -> datetime:
        return self._job.expiration

    @property
    def payload(self) -> Payload:
        return self._job.payload  # type: ignore[no-any-return]

    @property
    def service_class(self) -> type[ServiceType]:
        return self._service_class

    @property
    def network(self) -> Network | None:
        """The network its instances join, if any."""
        return self._network

    @property
    def instances(self) -> list[ServiceType]:
        """A copy of the list of instances (each pending, starting, running, ... terminated)."""
        return list(self._runner.instances)  # type: ignore[arg-type]

    def __len__(self) -> int:
        return len(self._runner.instances)

    def __iter__(self) -> Iterator[ServiceType]:
        return iter(self.instances)

    def __repr__(self) -> str:
        return f"Cluster {self.id}: {len(self)}x[Service: {self._service_class.__name__}, Payload: {self.payload}]"

    def stop_instance(self, service: ServiceType) -> None:
        """Stops one instance: a running one goes through `shutdown`, a starting one ends at once."""
        self._runner.stop_instance(service)

    def stop_instances(self, services: Iterable[ServiceType]) -> None:
        for service in services:
            self.stop_instance(service)

    def stop(self) -> None:
        """Stops every instance (without waiting; `await cluster.terminate()` waits)."""
        self.stop_instances(self.instances)

    async def terminate(self) -> None:
        """Stops every instance and waits until all are terminated (or, once suspended, until
        every instance is suspended)."""
        if not self._runner.suspended:
            self.stop()
        await self._runner.wait()

    # Suspend and resume, as yapapi's (see examples/webapp_suspend_resume.py)

    @property
    def suspended(self) -> bool:
        return self._runner.suspended

    def suspend(self) -> None:
        """Leaves every instance running on its provider, agreement and activity kept (no
        `shutdown`), and lets go of them: `serialize_instances()` first, and a later Golem with
        the same identity takes them up with `resume_service`. Their network stays too."""
        if self._network is not None:
            self._network.suspended = True
        self._runner.suspend()

    def suspend_instance(self, service: ServiceType) -> None:
        self._runner.suspend_instance(service)

    def serialize_instances(self) -> list[dict[str, Any]]:
        """Each instance's `serialize()`: JSON-able, for `golem.resume_service(..., instances=...)`."""
        return [instance.serialize() for instance in self.instances]

    async def taken_up(self) -> None:
        """Waits until every resumed instance is bound to its activity again (or failed to be)."""
        await self._runner.taken_up()

    def resume_instances(self, serialized_instances: Iterable[dict[str, Any]]) -> list[ServiceType]:
        """Takes up instances a suspended cluster left: each made again from its `params`, and run
        from the state it was left in (`running` goes on with `run`)."""
        resumed = []
        for entry in serialized_instances:
            service = self._service_class(**(entry.get("params") or {}))
            service.instance.cluster = self
            state = ServiceState(entry.get("state", "pending"))
            if state in (ServiceState.suspended, ServiceState.terminated, ServiceState.unresponsive) or \
                    not entry.get("agreement_id") or not entry.get("activity_id"):
                log.warning("event=instance_not_resumed state=%s reason=%r", state.value,
                            "only instances serialized while starting, running or stopping have an activity to take up")
                continue
            node = entry.get("network_node") or {}
            where = Resumed(state, str(entry["agreement_id"]), str(entry["activity_id"]), entry.get("provider"),
                            node.get("ip") if self._network is not None else None)
            service.instance.change_state(state)  # as it was left, from now on (yapapi's too)
            self._runner.add_instance(service, self._network, None, resumed=where)
            resumed.append(service)
        return resumed

    async def __aenter__(self) -> Cluster[ServiceType]:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.terminate()

    def spawn_instances(self, num_instances: int | None = None, instance_params: Iterable[dict[str, Any]] | None = None,
                        network_addresses: list[str] | None = None) -> list[ServiceType]:
        """Adds instances; returns them. `instance_params` are keyword arguments of each instance's
        __init__; with `num_instances` too, that many are made (ValueError if the params run out).
        On a network, the instances take `network_addresses` in order, then free addresses."""
        if network_addresses and self._network is None:
            raise ValueError("`network_addresses` provided without a `network`.")
        addresses = list(network_addresses or ())
        spawned = []
        for index, params in enumerate(_resolve_instance_params(num_instances, instance_params)):
            service = self._service_class(**params)
            service.instance.cluster = self
            address = addresses[index] if index < len(addresses) else None
            if address is not None:
                assert self._network is not None
                self._network.promise(address)
            self._runner.add_instance(service, self._network, address)
            spawned.append(service)
        return spawned


def _resolve_instance_params(num_instances: int | None, instance_params: Iterable[dict[str, Any]] | None) -> Iterator[dict[str, Any]]:
    if instance_params is None:
        yield from ({} for _ in range(1 if num_instances is None else num_instances))
        return
    params = iter(instance_params)
    if num_instances is None:
        yield from params
        return
    for index in range(num_instances):
        try:
            yield next(params)
        except StopIteration:
            raise ValueError(f"`instance_params` iterable depleted after {index} spawned instances.") from None
