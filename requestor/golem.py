"""`Golem`: the requestor's entry point, as yapapi's, over ExeUnit provider daemons."""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import itertools
import logging
import os
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable
from datetime import datetime, timedelta, timezone
from types import TracebackType
from typing import Any

from requestor import events
from requestor.budget import Budget
from requestor.client import ProviderClient
from requestor.client.connect import ProviderAddress
from requestor.discovery import discover, is_discovery
from requestor.embedded import EmbeddedProvider
from requestor.engine import Engine
from requestor.errors import NoMatchingProviderError, RequestorError
from requestor.executor.job import TaskJob, new_job_id
from requestor.executor.task import DEFAULT_MAX_ATTEMPTS, Task
from requestor.executor.worker import WorkerFunction
from requestor.leaving import DEFAULT_SHUTDOWN_TIMEOUT, ShutdownPlan, log_given_up
from requestor.log import log_event_repr, log_summary
from requestor.client.identity import RequestorIdentity
from requestor.network import Network
from requestor.relay import Relay
from requestor.settlement import PaymentNetwork, Settlement, payment_names
from requestor.payload import Payload
from requestor.payload.vm import TEST_COUNTERS_RUNTIME, VM_CAPS_VPN, VmPackage
from requestor.props import inf
from requestor.props.base import KEY, KIND
from requestor.services.cluster import Cluster
from requestor.services.runner import HANDLER_CANCEL_GRACE, ServiceRunner
from requestor.services.service import ServiceType
from requestor.strategy import LeastExpensiveLinearPayuMS, MarketStrategy

log = logging.getLogger(__name__)

DEFAULT_SUBNET = "public"
DEFAULT_SERVICE_EXPIRATION = timedelta(minutes=180)
PROVIDERS_ENV = "GOLEM_PROVIDERS"
TOKEN_ENV = "GOLEM_PROVIDER_TOKEN"

EventConsumer = Callable[[events.Event], Any]


class Golem:
    """Runs services on ExeUnit providers. An async context manager (or `start()` / `stop()`).

    Example::

        async with Golem(budget=1.0, subnet_tag="public", providers=["127.0.0.1:50051"]) as golem:
            cluster = await golem.run_service(DateService, num_instances=2)
            ...

    Parameters (all keyword-only):

    - `budget`: the most the computation may spend (a number or Decimal); spent as the work runs
      (see requestor.budget): agreements end before it would be passed.
    - `strategy`: a MarketStrategy choosing among offers (default LeastExpensiveLinearPayuMS).
    - `subnet_tag`: only providers serving this subnet are used (default "public").
    - `providers`: `host:port` of provider daemons, or `host:port#PROVIDER_ID` pinning the
      provider's identity (a bare address is trusted on first use and remembered, see
      requestor.client.connect), or discovery sources: `"mdns"`, `"srv:_exeunit._tcp.DOMAIN"`
      (see requestor.discovery); without it `GOLEM_PROVIDERS` (comma-separated); without either,
      an embedded provider is started on loopback against the local Docker engine and stopped on exit.
    - `event_consumer`: called with every event (default, as yapapi's: `log_summary(log_event_repr)`,
      readable lines, and each event's repr at DEBUG on the `requestor.events` logger).
    - `stream_output`: with the default consumer, log each command's output as it arrives.
    - `identity`: the requestor's key file (made on first use), or a RequestorIdentity; default
      `GOLEM_IDENTITY`, else `~/.config/golem/requestor-key.pem`. Providers know this requestor by
      the id derived from it (`golem.requestor_id`), proven on every call.
    - `auth_token`: the providers' shared secret (default `GOLEM_PROVIDER_TOKEN`).
    - `unresponsive_after`: seconds a provider may stay silent before its instances are marked
      unresponsive (batch streams and watches are retried meanwhile).
    - `shutdown_timeout`: seconds leaving Golem (`stop()`, the end of `async with`) may take,
      whatever the providers do (default 60): the instances' `shutdown` handlers get what is left
      after a reserve (half of it, at most 15 s) for ending agreements and closing links; what is
      not done in time is given up with a warning naming the step, provider and agreement
      (`event=shutdown_gave_up`; see requestor.leaving). An embedded provider's own stop (it
      removes its containers) comes after, and is not counted.
    - `payment_driver`, `payment_network`: yapapi's; with a chain configured (GOLEM_PAYMENT_*, or a
      PaymentNetwork as `payment_network`) providers are paid on it, `start()` first checking the
      account can pay the budget (NoPaymentAccountError): see requestor.settlement. `app_key`: unused.
    """

    def __init__(
        self,
        *,
        budget: float,
        strategy: MarketStrategy | None = None,
        subnet_tag: str | None = None,
        providers: Iterable[str] | str | None = None,
        event_consumer: EventConsumer | None = None,
        stream_output: bool = False,
        identity: str | os.PathLike[str] | RequestorIdentity | None = None,
        auth_token: str | None = None,
        unresponsive_after: float = 5.0,
        shutdown_timeout: float = DEFAULT_SHUTDOWN_TIMEOUT,
        payment_driver: str | None = None,
        payment_network: str | PaymentNetwork | None = None,
        app_key: str | None = None,
    ) -> None:
        if budget <= 0:
            raise ValueError(f"budget must be positive, got {budget}")
        if shutdown_timeout <= 0:
            raise ValueError(f"shutdown_timeout must be positive seconds, got {shutdown_timeout}")
        self.budget = Budget(budget)
        self.subnet_tag = subnet_tag or DEFAULT_SUBNET
        self.strategy = strategy or LeastExpensiveLinearPayuMS()
        self.identity = identity if isinstance(identity, RequestorIdentity) else RequestorIdentity.load(identity)
        self.requestor_id = self.identity.requestor_id
        self._auth_token = auth_token if auth_token is not None else os.environ.get(TOKEN_ENV) or None
        self._unresponsive_after = unresponsive_after
        self._shutdown_timeout = shutdown_timeout
        self._provider_addresses = _configured_providers(providers)
        self._consumers: list[tuple[EventConsumer, tuple[type[events.Event], ...]]] = []
        self.add_event_consumer(event_consumer or log_summary(log_event_repr, stream_output=stream_output))
        if callable(getattr(self.strategy, "on_event", None)):  # strategies that learn from events
            self.add_event_consumer(self.strategy.on_event)
        self._embedded: EmbeddedProvider | None = None
        self._engine: Engine | None = None
        self._runners: list[ServiceRunner] = []  # each cluster's
        self._task_jobs: set[TaskJob] = set()  # execute_tasks' jobs while they run
        self._job_numbers = itertools.count(1)  # clusters are "Cluster 1", "Cluster 2", ... as in yapapi
        self._payment_driver = payment_driver
        self._payment_network = payment_network
        self._networks: list[Network] = []
        self._relay = Relay()  # frames between providers of a network that cannot reach each other
        self._pending_consumers: set[asyncio.Task[Any]] = set()

    # Life

    @property
    def operative(self) -> bool:
        return self._engine is not None

    @property
    def providers(self) -> list[str]:
        """Addresses of the providers in use (the embedded one's once started)."""
        return [c.address for c in self._engine.clients] if self._engine else list(self._provider_addresses)

    @property
    def payment_driver(self) -> str:
        """The driver paying providers once started, else as given; "none": nothing paid on a chain."""
        return payment_names(self._engine and self._engine.settlement, self._payment_driver, self._payment_network)[0]

    @property
    def payment_network(self) -> str:
        return payment_names(self._engine and self._engine.settlement, self._payment_driver, self._payment_network)[1]

    async def start(self) -> None:
        if self._engine is not None:
            return
        settlement = await Settlement.open(self._payment_driver, self._payment_network, self.budget)
        addresses = await _expanded(self._provider_addresses)
        if not addresses:
            self._embedded = EmbeddedProvider(self.subnet_tag)
            addresses = [await self._embedded.start()]
        clients = [ProviderClient(a, self.identity, self._auth_token, reconnect_for=self._unresponsive_after)
                   for a in addresses]
        self._engine = Engine(clients, self.subnet_tag, self.budget, self.strategy, self.emit, self._unresponsive_after, settlement)

    async def stop(self, wait_for_payments: bool = True) -> None:
        """Stops every cluster (running instances go through shutdown; suspended ones stay on their
        providers), then the providers' links, within `shutdown_timeout` seconds whatever the
        providers do (what is not done by then is given up, each with a warning; see
        requestor.leaving). `wait_for_payments` is yapapi's, unused: invoices are waited for (and
        paid, on a chain) within that time."""
        log.info("Golem is shutting down...")
        plan = ShutdownPlan.starting_now(self._shutdown_timeout)
        await asyncio.gather(self._stop_instances(plan), self._stop_task_jobs(plan))
        log.info("All jobs have finished")
        await self._close_links(plan)
        if self._embedded is not None:  # ours, on this host: not bounded (it removes its containers)
            await self._embedded.stop()
            self._embedded = None
        if self._pending_consumers:
            _, late = await asyncio.wait(self._pending_consumers, timeout=plan.left())
            for task in late:
                log_given_up(log, "event_consumer", plan.elapsed(), task=task.get_name())
                task.cancel()
        log.debug("event=golem_stopped took=%.1fs limit=%.1fs", plan.elapsed(), plan.total)
        self.emit(events.ShutdownFinished())

    async def _stop_instances(self, plan: ShutdownPlan) -> None:
        """The instances' handlers until the plan's `handlers_until`, their agreements' end until
        `release_until` (the engine bounds each call); an instance still not ended then is
        abandoned, with a warning."""
        runners, self._runners = self._runners, []
        if self._engine is not None:
            self._engine.leave_by(plan.release_until)
        for runner in runners:
            runner.stop()

        async def all_ended(until: float) -> bool:
            return all(await asyncio.gather(*(runner.wait(plan.left(until)) for runner in runners)))

        if not await all_ended(plan.handlers_until):
            for runner in runners:
                runner.give_up()
            if not await all_ended(plan.release_until):
                grace = min(HANDLER_CANCEL_GRACE, plan.left())
                await asyncio.gather(*(runner.abandon(grace, plan.elapsed()) for runner in runners))

    async def _stop_task_jobs(self, plan: ShutdownPlan) -> None:
        """Ends the task jobs still running (a caller that left its loop without the job's end):
        their workers stop and their agreements end by the plan's `release_until`."""
        if self._engine is not None and self._task_jobs:
            self._engine.leave_by(plan.release_until)
            closing = [asyncio.create_task(job.close()) for job in self._task_jobs]
            if (await asyncio.wait(closing, timeout=plan.left(plan.release_until)))[1]:
                log_given_up(log, "task_jobs", plan.elapsed())

    async def _close_links(self, plan: ShutdownPlan) -> None:
        """Networks (those the script did not remove itself, unless suspended), the relay, the
        budget watch and the channels, by the plan's end."""
        networks, self._networks = [n for n in self._networks if not n.suspended], []
        await asyncio.gather(*(network.remove(plan.left()) for network in networks))
        await self._relay.close(plan.left())
        if self._engine is not None:
            try:
                async with asyncio.timeout(plan.left()):
                    await self._engine.close()
            except TimeoutError:
                log_given_up(log, "budget_watch", plan.elapsed())
            log.info("Waiting for Golem services to finish...")  # yapapi's line, after its unpaid warning
            for client in self._engine.clients:
                await client.close()  # gRPC's close without grace: it cancels the channel's calls at once
            self._engine = None

    async def __aenter__(self) -> Golem:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        if exc is not None and not isinstance(exc, (asyncio.CancelledError, KeyboardInterrupt)):
            self.emit(events.ExecutionInterrupted(exc_info=(type(exc), exc, tb)))
        interrupted = self._embedded is not None and self._embedded.interrupted
        await self.stop()
        if interrupted and isinstance(exc, asyncio.CancelledError):
            raise KeyboardInterrupt  # as asyncio.run ends on Ctrl-C, which the SIGTERM stood in for

    # Events

    def add_event_consumer(self, event_consumer: EventConsumer,
                           event_classes_or_names: Iterable[type[events.Event] | str] = (events.Event,)) -> None:
        """Calls `event_consumer(event)` for every event of the given classes (or class names)."""
        classes = tuple(
            getattr(events, c) if isinstance(c, str) else c for c in event_classes_or_names
        )
        self._consumers.append((event_consumer, classes))

    def emit(self, event: events.Event) -> None:
        for consumer, classes in self._consumers:
            if not isinstance(event, classes):
                continue
            try:
                outcome = consumer(event)
                if inspect.isawaitable(outcome):
                    task = asyncio.ensure_future(outcome)
                    self._pending_consumers.add(task)
                    task.add_done_callback(self._pending_consumers.discard)
            except Exception:
                log.exception("event consumer %r failed on %r", consumer, event)

    # Tasks

    async def execute_tasks(
        self, worker: WorkerFunction, data: Iterable[Task[Any, Any]] | AsyncIterable[Task[Any, Any]],
        payload: Payload, max_workers: int | None = None, timeout: timedelta | None = None, job_id: str | None = None,
        implicit_init: bool = True, *, max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        attempt_timeout: timedelta | float | None = None,
    ) -> AsyncIterator[Task[Any, Any]]:
        """Computes `data`'s tasks with `worker` on providers; yields each accepted task as it is
        accepted (yapapi's; see requestor.executor for an example).

        `worker(ctx, tasks)` is an async generator taking tasks and yielding scripts; `data` gives
        Task objects, sync or async, read as workers need them. `max_workers` defaults to 5,
        `timeout` to 15 min (then JobTimeoutError, a TimeoutError, names what was left undone);
        a `job_id` used before in this process is a ValueError. Not yapapi's: each task is tried
        at most `max_attempts` times, each attempt at most `attempt_timeout` (a Task's own values
        win); a task out of attempts emits TaskFailed, and the iterator raises TaskFailedError
        after the job's other tasks. Leaving the loop (`break`, an exception) ends the job.
        """
        if self._engine is None:
            raise RequestorError("Golem is not started: use `async with Golem(...) as golem:` or `await golem.start()`")
        tasks = TaskJob(self._engine, new_job_id(job_id, self._job_numbers), runnable(payload), worker, data,
                        max_workers=max_workers, timeout=timeout, implicit_init=implicit_init,
                        max_attempts=max_attempts, attempt_timeout=attempt_timeout)
        self._task_jobs.add(tasks)
        tasks.start()
        try:
            while (task := await tasks.next_accepted()) is not None:
                yield task
        finally:
            await tasks.close()
            self._task_jobs.discard(tasks)

    # Services

    async def run_service(
        self,
        service_class: type[ServiceType],
        num_instances: int | None = None,
        instance_params: Iterable[dict[str, Any]] | None = None,
        payload: Payload | None = None,
        expiration: datetime | None = None,
        respawn_unstarted_instances: bool = True,
        network: Network | None = None,
        network_addresses: list[str] | None = None,
    ) -> Cluster[ServiceType]:
        """Starts instances of `service_class`; returns their Cluster at once (instances pending).

        Each instance's handlers run on a provider whose offer matches the payload, cheapest first.
        An instance whose `start` fails is restarted (preferring another provider) when
        `respawn_unstarted_instances` is true and its `restart_condition` holds.

        With `network` (from `create_network`), each instance joins it: at the next entry of
        `network_addresses`, or at the network's first free address once they run out. Instances
        of one network may sit on any providers whose daemons run an overlay (see requestor.network).
        """
        if self._engine is None:
            raise RequestorError("Golem is not started: use `async with Golem(...) as golem:` or `await golem.start()`")
        if network_addresses and network is None:
            raise ValueError("`network_addresses` provided without a `network`.")
        for address in network_addresses or ():
            assert network is not None
            network.check_address(address)
        if len(set(network_addresses or ())) != len(network_addresses or ()):
            raise ValueError(f"`network_addresses` names an address twice: {network_addresses}")
        payload = payload or await service_class.get_payload()
        if payload is None:
            raise ValueError(
                f"No payload returned from {service_class.__name__}.get_payload() nor given in the `payload` argument."
            )
        payload = runnable(payload)
        if network is not None and VM_CAPS_VPN not in payload.capabilities:  # only providers that make networks
            payload = dataclasses.replace(payload, capabilities=(*payload.capabilities, VM_CAPS_VPN))
        expiration = expiration or datetime.now(timezone.utc) + DEFAULT_SERVICE_EXPIRATION
        if expiration.tzinfo is None:
            expiration = expiration.astimezone(timezone.utc)
        job = events.Job(id=str(next(self._job_numbers)), payload=payload, expiration=expiration)
        runner = ServiceRunner(self._engine, job, respawn_unstarted_instances)
        cluster: Cluster[ServiceType] = Cluster(runner, job, service_class, network)
        self._runners.append(runner)
        cluster.spawn_instances(num_instances, instance_params, network_addresses)
        return cluster

    async def resume_network(self, obj_dict: dict[str, Any]) -> Network:
        """The network a suspended script left (`network.serialize()`), to pass to `resume_service`."""
        if self._engine is None:
            raise RequestorError("Golem is not started: use `async with Golem(...) as golem:` or `await golem.start()`")
        network = Network.deserialize(obj_dict, self.requestor_id)
        network.relay = self._relay
        if network.owner_id != self.requestor_id:
            log.warning("event=network_of_another_identity network=%s owner=%s requestor=%s hint=%r",
                        network.network_id, network.owner_id, self.requestor_id,
                        "providers let only the identity that made it take it up: use the same identity file")
        self._networks.append(network)
        return network

    async def resume_service(self, service_class: type[ServiceType], instances: list[dict[str, Any]],
                             payload: Payload | None = None, expiration: datetime | None = None,
                             network: Network | None = None) -> Cluster[ServiceType]:
        """Takes up the instances a suspended cluster left (`cluster.serialize_instances()`): the
        same agreements and activities, on the same providers, if this Golem has the identity
        that made them. Each goes on from the state it was left in."""
        cluster = await self.run_service(service_class, num_instances=0, payload=payload, expiration=expiration,
                                         network=network)
        cluster.resume_instances(instances)
        await cluster.taken_up()  # its instances answer (or have failed) when this returns
        return cluster

    async def create_network(self, ip: str, owner_ip: str | None = None, mask: str | None = None,
                             gateway: str | None = None) -> Network:
        """A private network for service instances, e.g. `await golem.create_network("192.168.0.1/24")`.

        `ip` may carry the prefix ("192.168.0.0/24") or take it from `mask` ("255.255.255.0").
        `owner_ip` is the requestor's own address in it (kept out of the instances' plan; by
        default the first host address); `gateway` is informational: nothing routes out of a
        network. Remove it with `await network.remove()` or `async with network:`.
        """
        if self._engine is None:
            raise RequestorError("Golem is not started: use `async with Golem(...) as golem:` or `await golem.start()`")
        network = await Network.create(ip, self.requestor_id, owner_ip, mask, gateway)
        network.relay = self._relay
        self._networks.append(network)
        return network


def runnable(payload: Payload) -> VmPackage:
    """The payload as this library demands it: a `vm.repo(...)` package as it is; a payload that
    declares Golem constraints (`props.base.constraint`) when it names the test-counters runtime,
    which brings its own image. Anything else is a TypeError saying what runs here."""
    if isinstance(payload, VmPackage):
        return payload
    if dataclasses.is_dataclass(payload):
        declared = {f.metadata.get(KEY): getattr(payload, f.name) for f in dataclasses.fields(payload)
                    if f.metadata.get(KIND) == "constraint"}
        if declared.get(inf.INF_RUNTIME_NAME) == TEST_COUNTERS_RUNTIME:
            return VmPackage(
                runtime=TEST_COUNTERS_RUNTIME,
                min_mem_gib=float(declared.get(inf.INF_MEM, 0.5)),
                min_storage_gib=float(declared.get(inf.INF_STORAGE, 0.5)),
                min_cpu_threads=int(declared.get(inf.INF_THREADS, 1)),
            )
    raise TypeError(
        f"only requestor.payload.vm.repo(...) payloads (the docker-vm runtime) and payloads constraining "
        f"{inf.INF_RUNTIME_NAME} to {TEST_COUNTERS_RUNTIME!r} run here; got {payload!r}"
    )


def _configured_providers(providers: Iterable[str] | str | None) -> list[str]:
    if isinstance(providers, str):
        providers = providers.split(",")
    if providers is not None:
        addresses = [p.strip() for p in providers if p.strip()]
        if not addresses:
            raise ValueError("providers is empty: give host:port addresses, or leave it out to use an embedded provider")
    else:
        addresses = [p.strip() for p in os.environ.get(PROVIDERS_ENV, "").split(",") if p.strip()]
    for address in addresses:
        if not is_discovery(address):
            ProviderAddress.parse(address)  # ValueError saying what is wrong
    return addresses


async def _expanded(sources: list[str]) -> list[str]:
    """The addresses configured, with each discovery source replaced by what it finds now; [] when
    nothing was configured (the embedded provider then)."""
    addresses: list[str] = []
    for source in sources:
        if not is_discovery(source):
            addresses.append(source)
            continue
        found = await discover(source)
        if not found:
            log.warning("event=no_providers_discovered source=%s hint=%r", source,
                        "providers announce themselves with `exeunit serve --announce` (mdns) or in SRV records")
        addresses.extend(a for a in found if a not in addresses)
    if sources and not addresses:
        raise NoMatchingProviderError(f"no provider found through {', '.join(sources)}")
    return addresses
