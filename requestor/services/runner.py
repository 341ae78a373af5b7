"""Drives each service instance through its states: finds it a provider, runs its handlers,
notices a provider that ends the activity or stops answering, and releases what it held."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from enum import Enum
from typing import Any, Protocol

from requestor import events
from requestor.client import ActivityHandle
from requestor.ctx import WorkContext
from requestor.errors import ProviderUnreachableError, RequestorError
from requestor.leaving import log_given_up
from requestor.network import Network
from requestor.script import Script
from requestor.services.handlers import drive_scripts, handler_of
from requestor.services.service import Service
from requestor.services.state import ServiceState, next_state
from requestor.services.watch import ActivityWatch

log = logging.getLogger(__name__)


class Providers(Protocol):
    """What the runner needs of the engine (requestor.engine): activities for its instances, given
    back when they are done, and a place to say what happened."""

    unresponsive_after: float  # seconds a provider may stay silent before its instance is unresponsive

    def emit(self, event: events.Event) -> None: ...

    async def acquire(self, job: events.Job, avoid: set[str], stop: asyncio.Event,
                      only_provider: str | None = None, why_only: str = "") -> ActivityHandle: ...

    async def release(self, handle: ActivityHandle, job: events.Job, error: BaseException | None) -> None: ...

    async def resume(self, job: events.Job, provider: str | None, agreement_id: str,
                     activity_id: str) -> ActivityHandle: ...

    def suspend(self, handle: ActivityHandle) -> None: ...


@dataclass(frozen=True)
class Resumed:
    """Where a suspended instance was left (Service.serialize()): taken up by `resume_service`."""

    state: ServiceState
    agreement_id: str
    activity_id: str
    provider: str | None  # host:port#id; None: asked of every provider
    network_ip: str | None

RESPAWN_FIRST_DELAY, RESPAWN_MAX_DELAY = 1.0, 30.0  # seconds (see RespawnBackoff)
HANDLER_CANCEL_GRACE = 1.0  # seconds a cancelled handler may take to unwind once Golem is leaving


class Outcome(Enum):
    DONE = "done"  # the handler returned
    ERROR = "error"  # the handler raised
    STOPPED = "stopped"  # the requestor stopped the instance
    GONE = "gone"  # the provider ended the activity
    UNRESPONSIVE = "unresponsive"  # the provider stopped answering
    SUSPENDED = "suspended"  # the requestor suspended the instance: left as it is on the provider
    ABANDONED = "abandoned"  # Golem is leaving and stopped waiting for the handler (requestor.leaving)


@dataclass
class Result:
    outcome: Outcome
    error: BaseException | None = None


class RespawnBackoff:
    """How long a respawn waits: not at all after a new failure; after the same failure on the
    same provider again, RESPAWN_FIRST_DELAY, doubling each time up to RESPAWN_MAX_DELAY (a
    service that cannot start must not spin its provider)."""

    def __init__(self) -> None:
        self._last: tuple[str, str, str] | None = None
        self._delay = 0.0

    def after(self, provider_id: str, error: BaseException | None) -> float:
        failure = (provider_id, type(error).__name__, str(error))
        if failure == self._last:
            self._delay = min(max(self._delay * 2, RESPAWN_FIRST_DELAY), RESPAWN_MAX_DELAY)
        else:
            self._delay = 0.0
        self._last = failure
        return self._delay


class ServiceRunner:
    """Runs the instances of one cluster."""

    def __init__(self, engine: Providers, job: events.Job, respawn_unstarted_instances: bool) -> None:
        self._engine = engine
        self._job = job
        self._respawn = respawn_unstarted_instances
        self.instances: list[Service] = []
        self._stop_requests: dict[str, asyncio.Event] = {}
        self._suspend_requests: dict[str, asyncio.Event] = {}
        self._taken_up: dict[str, asyncio.Event] = {}  # resumed instances: set once bound to their activity, or failed
        self._tasks: dict[str, asyncio.Task[None]] = {}  # each instance's life, by service id
        self._giving_up = asyncio.Event()  # Golem is leaving: handlers still running are abandoned
        self.suspended = False

    def add_instance(self, service: Service, network: Network | None = None, network_address: str | None = None,
                     resumed: Resumed | None = None) -> None:
        """Runs a new instance; with `resumed`, one left on a provider by a suspended cluster."""
        self.instances.append(service)
        self._stop_requests[service.id] = asyncio.Event()
        self._suspend_requests[service.id] = asyncio.Event()
        if resumed is not None:
            self._taken_up[service.id] = asyncio.Event()
        self._tasks[service.id] = asyncio.create_task(self._lifecycle(service, network, network_address, resumed),
                                                      name=f"service-{service.id}")

    def stop_instance(self, service: Service) -> None:
        self._stop_requests[service.id].set()

    def suspend_instance(self, service: Service) -> None:
        """Leaves the instance as it is on its provider (no shutdown, agreement and activity kept)."""
        self._suspend_requests[service.id].set()

    def suspend(self) -> None:
        self.suspended = True
        for service in self.instances:
            self.suspend_instance(service)

    async def taken_up(self) -> None:
        """Waits until every resumed instance is bound to its activity again (or failed to be)."""
        await asyncio.gather(*(event.wait() for event in self._taken_up.values()))

    def stop(self) -> None:
        """Stops every instance, unless the cluster is suspended (its instances stay as they are)."""
        if not self.suspended:
            for service in self.instances:
                self.stop_instance(service)

    async def wait(self, timeout: float | None = None) -> bool:
        """Waits until every instance is terminated, or `timeout` seconds; whether they are."""
        if not self._tasks:
            return True
        _, pending = await asyncio.wait(self._tasks.values(), timeout=timeout)
        for task in self._tasks.values():
            if task.done() and not task.cancelled():
                task.exception()  # retrieved: _lifecycle logs its own crashes
        return not pending

    def give_up(self) -> None:
        """Golem is leaving and has no more time for handlers: those still running are abandoned,
        each with a warning; every instance's agreement is still ended (within the engine's time)."""
        self._giving_up.set()

    async def abandon(self, grace: float, waited: float) -> None:
        """Cancels the instances whose end did not come in time (`waited` seconds: a warning names
        each, its provider and agreement), waiting `grace` seconds at most for them to unwind."""
        left = [(service, self._tasks[service.id]) for service in self.instances if not self._tasks[service.id].done()]
        for service, task in left:
            handle = service.ctx.handle if service.ctx else None
            log_given_up(log, "instance", waited, service=service.id, state=service.state.value,
                         provider=handle.agreement.provider_id if handle else None,
                         agreement=handle.agreement.id if handle else None)
            task.cancel()
        if left:
            await asyncio.wait([task for _, task in left], timeout=grace)

    # One instance

    def _transition(self, service: Service, transition: str, handle: ActivityHandle | None = None) -> None:
        old = service.state
        new = next_state(old, transition)
        service.instance.change_state(new)
        agreement = handle.agreement if handle else None
        activity = handle.activity if handle else None
        log.debug("event=service_state service=%s old=%s new=%s", service.id, old.value, new.value)
        self._engine.emit(events.ServiceStateChanged(
            job=self._job, service=service, agreement=agreement, activity=activity, old=old, new=new,
            exc_info=service.exc_info if service.exc_info[1] is not None else None,  # type: ignore[arg-type]
        ))

    async def _lifecycle(self, service: Service, network: Network | None, network_address: str | None,
                         resumed: Resumed | None = None) -> None:
        stop = self._stop_requests[service.id]
        failed_providers: set[str] = set()
        backoff = RespawnBackoff()
        try:
            while True:
                if resumed is not None:
                    handle = await self._take_up(service, resumed, network)
                elif self._suspend_requests[service.id].is_set():
                    handle = None  # suspended before it had an activity: nothing to keep
                elif network is None:
                    handle = await self._place(service, stop, failed_providers)
                else:
                    handle = await self._place_on_network(service, stop, failed_providers, network, network_address)
                if handle is None:
                    self._transition(service, "terminate")
                    return
                restart = await self._run_on(service, handle, stop, resumed.state if resumed else None)
                resumed = None
                if not restart:
                    return
                failed_providers.add(handle.offer.provider_id)
                delay = backoff.after(handle.offer.provider_id, service.exc_info[1])
                log.info("Restarting service %s", repr(service))  # yapapi's line: "<X terminated on ...>"
                await service.reset()
                service.instance.record_error(None)
                self._transition(service, "restart")
                if delay:
                    log.info("event=respawn_delayed service=%s delay=%.1fs reason=%r", service.id, delay,
                             "it failed the same way on the same provider again")
                    try:
                        await asyncio.wait_for(stop.wait(), delay)
                    except TimeoutError:
                        pass
        except Exception as exc:  # a bug here must not leave the instance hanging
            log.exception("event=service_runner_crashed service=%s", service.id)
            service.instance.record_error(exc)
            if service.state is not ServiceState.terminated:
                self._transition(service, "terminate")
        finally:
            if service.id in self._taken_up:
                self._taken_up[service.id].set()
            if network is not None and network_address is not None:
                network.release_promise(network_address)
            self._engine.emit(events.ServiceFinished(job=self._job, service=service))

    async def _take_up(self, service: Service, resumed: Resumed, network: Network | None) -> ActivityHandle | None:
        """The activity a suspended instance left, found again on its provider; None (the error
        recorded) when it is gone or is not this requestor's."""
        try:
            handle = await self._engine.resume(self._job, resumed.provider, resumed.agreement_id, resumed.activity_id)
        except RequestorError as exc:
            log.warning("event=resume_failed service=%s agreement=%s error=%s", service.id, resumed.agreement_id, exc)
            service.instance.record_error(exc)
            return None
        if network is not None and resumed.network_ip is not None:
            service.instance.network_node = network.rejoin(handle.client, handle.offer.provider_id, resumed.network_ip,
                                                           handle.offer.overlay_endpoint)
        return handle

    async def _place_on_network(self, service: Service, stop: asyncio.Event, avoid: set[str], network: Network,
                                address: str | None) -> ActivityHandle | None:
        """As _place, on any provider that makes networks, with the instance's member of the
        network there; None when it cannot join."""
        handle = await self._place(service, stop, avoid)
        if handle is None:
            return None
        try:
            async with network.placement:  # one provider joins at a time: each learns every other
                node = await network.join(handle.client, handle.offer, address)
        except RequestorError as exc:
            log.debug("event=service_not_placed service=%s error=%s", service.id, exc)
            service.instance.record_error(exc)
            await self._engine.release(handle, self._job, exc)
            return None
        service.instance.network_node = node
        return handle

    async def _place(self, service: Service, stop: asyncio.Event, avoid: set[str], only_provider: str | None = None,
                     why_only: str = "") -> ActivityHandle | None:
        """An activity for the instance, or None when stopped or when no provider can take it."""
        acquiring = asyncio.create_task(self._engine.acquire(self._job, avoid, stop, only_provider, why_only))
        stopped = asyncio.create_task(stop.wait())
        await asyncio.wait({acquiring, stopped}, return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        if not acquiring.done():
            acquiring.cancel()
            try:
                await acquiring
            except (asyncio.CancelledError, RequestorError):
                pass
            return None
        try:
            return acquiring.result()
        except RequestorError as exc:  # the summary says it, with the instance's state change
            log.debug("event=service_not_placed service=%s error=%s", service.id, exc)
            service.instance.record_error(exc)
            return None

    async def _run_on(self, service: Service, handle: ActivityHandle, stop: asyncio.Event,
                      resumed_in: ServiceState | None = None) -> bool:
        """Runs the handlers on one activity (from the state it was suspended in, when resumed);
        returns whether to restart elsewhere."""
        ctx = WorkContext(handle, self._job, self._engine.emit)
        service.instance.ctx = ctx
        watch = ActivityWatch(handle, self._engine.unresponsive_after)
        suspend = self._suspend_requests[service.id]
        restart = False
        result = Result(Outcome.DONE)
        try:
            phase = resumed_in or ServiceState.pending
            if phase is ServiceState.pending:
                self._transition(service, "start", handle)
                phase = ServiceState.starting
                log.info("%s commissioned", repr(service))  # yapapi's lines (its repr now, not when formatted)
            else:
                service.instance.change_state(phase)
                log.info("%s resumed", repr(service))
            if service.id in self._taken_up:
                self._taken_up[service.id].set()
            if phase is ServiceState.starting:
                result = await self._run_handler(service, "start", ctx, watch, stop, suspend)
                if result.outcome is Outcome.DONE:
                    self._transition(service, "ready", handle)
                    phase = ServiceState.running
            if phase is ServiceState.running and result.outcome is Outcome.DONE:
                result = await self._run_handler(service, "run", ctx, watch, stop, suspend)
                if result.outcome in (Outcome.DONE, Outcome.ERROR, Outcome.STOPPED):
                    service.instance.record_error(result.error)
                    self._transition(service, "stop", handle)
                    phase = ServiceState.stopping
            if phase is ServiceState.stopping and result.outcome in (Outcome.DONE, Outcome.ERROR, Outcome.STOPPED):
                shutdown = await self._run_handler(service, "shutdown", ctx, watch, None, suspend)
                if shutdown.error is not None and result.error is None:
                    service.instance.record_error(shutdown.error)
                result = shutdown if shutdown.outcome in (Outcome.GONE, Outcome.UNRESPONSIVE, Outcome.SUSPENDED) \
                    else result
            if result.outcome is Outcome.SUSPENDED:
                return False
            service.instance.record_error(result.error or service.exc_info[1])
            if result.outcome is Outcome.UNRESPONSIVE:
                self._transition(service, "mark_unresponsive", handle)
            restart = (
                self._respawn and result.outcome is not Outcome.STOPPED and not stop.is_set()
                and service.restart_condition
            )
        finally:
            await watch.close()
            if result.outcome is Outcome.SUSPENDED:  # left running on the provider, for resume_service
                self._engine.suspend(handle)
                self._transition(service, "suspend", handle)
            else:
                await self._engine.release(handle, self._job, service.exc_info[1])
                node = service.network_node
                if node is not None:  # after the activity is gone: its address is free for a respawn
                    node.network.leave(node)
                self._transition(service, "terminate", handle)
                log.info("%s decommissioned", repr(service))  # as yapapi's, still naming its address
                service.instance.network_node = None
        return restart

    async def _run_handler(self, service: Service, name: str, ctx: WorkContext, watch: ActivityWatch,
                           stop: asyncio.Event | None, suspend: asyncio.Event) -> Result:
        """Runs the service's `name` handler; one that raised is logged with its traceback, as
        yapapi logs it (the state change that follows says why too)."""
        began = asyncio.get_running_loop().time()
        try:
            result = await self._drive(handler_of(service, name), ctx, watch, stop, suspend)
        except TypeError as exc:  # not an async generator
            result = Result(Outcome.ERROR, exc)
        if result.outcome is Outcome.ABANDONED:
            log_given_up(log, f"{name}_handler", asyncio.get_running_loop().time() - began, service=service.id,
                         provider=ctx.handle.agreement.provider_id, agreement=ctx.handle.agreement.id)
        if result.outcome is Outcome.ERROR and result.error is not None:
            log.warning("Unhandled exception in service", exc_info=result.error)  # yapapi's words (see the traceback)
        return result

    async def _drive(self, handler: AsyncGenerator[Script, Any], ctx: WorkContext, watch: ActivityWatch,
                     stop: asyncio.Event | None, suspend: asyncio.Event) -> Result:
        """Runs one handler until it returns, fails, is stopped or suspended, or loses its provider."""
        if suspend.is_set():
            return Result(Outcome.SUSPENDED)
        pump = asyncio.create_task(drive_scripts(handler, ctx))
        suspended = asyncio.create_task(suspend.wait())
        giving_up = asyncio.create_task(self._giving_up.wait())
        waiters: set[asyncio.Future[Any]] = {pump, watch.ended, suspended, giving_up}
        stopped = asyncio.create_task(stop.wait()) if stop else None
        if stopped:
            waiters.add(stopped)
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            if suspended.done() and not pump.done():
                return Result(Outcome.SUSPENDED)
            if watch.ended.done() and not (pump.done() and pump.exception() is None):
                return self._lost(watch.ended.result())
            if pump.done():
                error = pump.exception()
                if error is None:
                    return Result(Outcome.DONE)
                if isinstance(error, ProviderUnreachableError):
                    return Result(Outcome.UNRESPONSIVE, error)
                lost = await watch.check()  # did the handler fail because the provider ended it?
                return self._lost(lost) if lost is not None else Result(Outcome.ERROR, error)
            return Result(Outcome.STOPPED if stopped and stopped.done() else Outcome.ABANDONED)
        finally:
            suspended.cancel()
            giving_up.cancel()
            if stopped:
                stopped.cancel()
            if await self._cancelled(pump):
                await handler.aclose()
            else:  # still inside the handler: closing it now would fail ("already running")
                log.warning("event=handler_left_running provider=%s agreement=%s hint=%r",
                            ctx.handle.agreement.provider_id, ctx.handle.agreement.id,
                            "the handler went on after it was cancelled (does it catch CancelledError?)")

    async def _cancelled(self, pump: asyncio.Task[None]) -> bool:
        """Cancels the pump and waits for the handler's reaction, for as long as Golem is not
        leaving, then HANDLER_CANCEL_GRACE; whether it ended."""
        if not pump.done():
            pump.cancel()
            giving_up = asyncio.create_task(self._giving_up.wait())
            try:
                await asyncio.wait({pump, giving_up}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                giving_up.cancel()
            if not pump.done():
                await asyncio.wait({pump}, timeout=HANDLER_CANCEL_GRACE)
        if pump.done() and not pump.cancelled():
            pump.exception()  # the handler's own reaction to cancellation: retrieved, not raised
        return pump.done()

    @staticmethod
    def _lost(error: BaseException) -> Result:
        if isinstance(error, ProviderUnreachableError):
            return Result(Outcome.UNRESPONSIVE, error)
        return Result(Outcome.GONE, error)
