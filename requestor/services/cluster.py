"""`Cluster`: the requestor's handle on the instances of one service."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import datetime
from types import TracebackType
from typing import Any, Generic

from requestor import events
from requestor.network import Network
from requestor.payload import Payload
from requestor.services.runner import ServiceRunner
from requestor.services.service import ServiceType


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
        """Stops every instance and waits until all are terminated."""
        self.stop()
        await self._runner.wait()

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
