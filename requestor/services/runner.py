"""Drives each service instance through its states: finds it a provider, runs its handlers,
notices a provider that ends the activity or stops answering, and releases what it held."""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from enum import Enum
from typing import Any, Protocol

from requestor import events
from requestor.client import ActivityHandle
from requestor.ctx import WorkContext
from requestor.errors import (
    ActivityTerminatedError,
    CommandExecutionError,
    ProviderUnreachableError,
    RequestorError,
)
from requestor.network import Network
from requestor.script import Script
from requestor.services.service import Service
from requestor.services.state import ServiceState, next_state

log = logging.getLogger(__name__)


class Providers(Protocol):
    """What the runner needs of the engine (requestor.engine): activities for its instances, given
    back when they are done, and a place to say what happened."""

    unresponsive_after: float  # seconds a provider may stay silent before its instance is unresponsive

    def emit(self, event: events.Event) -> None: ...

    async def acquire(self, job: events.Job, avoid: set[str], stop: asyncio.Event,
                      only_provider: str | None = None, why_only: str = "") -> ActivityHandle: ...

    async def release(self, handle: ActivityHandle, job: events.Job, error: BaseException | None) -> None: ...

RESPAWN_FIRST_DELAY, RESPAWN_MAX_DELAY = 1.0, 30.0  # seconds (see RespawnBackoff)
# Activity termination reasons that come from this requestor, not from the provider.
OWN_REASONS = frozenset({"Requested", "Destroyed"})


class Outcome(Enum):
    DONE = "done"  # the handler returned
    ERROR = "error"  # the handler raised
    STOPPED = "stopped"  # the requestor stopped the instance
    GONE = "gone"  # the provider ended the activity
    UNRESPONSIVE = "unresponsive"  # the provider stopped answering


@dataclass
class Result:
    outcome: Outcome
    error: BaseException | None = None


class ActivityWatch:
    """Follows the activity's state on the provider; `ended` resolves with the reason the
    provider ended it or stopped answering. Within seconds, not at the next script."""

    def __init__(self, handle: ActivityHandle, unresponsive_after: float) -> None:
        self._handle = handle
        self._unresponsive_after = unresponsive_after
        self.ended: asyncio.Future[BaseException] = asyncio.get_running_loop().create_future()
        self._task = asyncio.create_task(self._follow(), name=f"watch-{handle.activity.id}")

    def _end(self, error: BaseException) -> None:
        if not self.ended.done():
            self.ended.set_result(error)

    async def _follow(self) -> None:
        """Watches; the client watches again while the provider is away (a restart) and says it is
        unreachable once it was not back within `unresponsive_after` seconds."""
        client, activity_id = self._handle.client, self._handle.activity.id
        try:
            async for status in client.watch(activity_id, self._unresponsive_after):
                if status.state == "Terminated":
                    if status.reason not in OWN_REASONS:
                        self._end(ActivityTerminatedError(status.reason, status.message))
                    return
        except ProviderUnreachableError as exc:
            self._end(exc)
        except RequestorError as exc:
            self._end(ActivityTerminatedError("Lost", f"the provider no longer knows the activity ({exc})"))

    async def check(self) -> BaseException | None:
        """Asks the provider now (a handler just failed): the reason it ended the activity, if it did."""
        if self.ended.done():
            return self.ended.result()
        try:
            status = await self._handle.client.state(self._handle.activity.id)
        except ProviderUnreachableError as exc:
            return exc
        except RequestorError:
            return None
        if status.state == "Terminated" and status.reason not in OWN_REASONS:
            self._end(ActivityTerminatedError(status.reason, status.message))
            return self.ended.result()
        return None

    async def close(self) -> None:
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass


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
        self._tasks: list[asyncio.Task[None]] = []

    def add_instance(self, service: Service, network: Network | None = None, network_address: str | None = None) -> None:
        self.instances.append(service)
        self._stop_requests[service.id] = asyncio.Event()
        task = asyncio.create_task(self._lifecycle(service, network, network_address), name=f"service-{service.id}")
        self._tasks.append(task)

    def stop_instance(self, service: Service) -> None:
        self._stop_requests[service.id].set()

    async def wait(self) -> None:
        """Waits until every instance is terminated."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

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

    async def _lifecycle(self, service: Service, network: Network | None, network_address: str | None) -> None:
        stop = self._stop_requests[service.id]
        failed_providers: set[str] = set()
        backoff = RespawnBackoff()
        try:
            while True:
                if network is None:
                    handle = await self._place(service, stop, failed_providers)
                else:
                    handle = await self._place_on_network(service, stop, failed_providers, network, network_address)
                if handle is None:
                    self._transition(service, "terminate")
                    return
                restart = await self._run_on(service, handle, stop)
                if not restart:
                    return
                failed_providers.add(handle.offer.provider_id)
                delay = backoff.after(handle.offer.provider_id, service.exc_info[1])
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
            if network is not None and network_address is not None:
                network.release_promise(network_address)
            self._engine.emit(events.ServiceFinished(job=self._job, service=service))

    async def _place_on_network(self, service: Service, stop: asyncio.Event, avoid: set[str], network: Network,
                                address: str | None) -> ActivityHandle | None:
        """As _place, on the provider that hosts the network's other instances (any provider for
        the first), and with the instance's member of the network; None when it cannot join."""
        async with network.placement:  # the first instance picks the provider; the others wait for that
            host = network.hosting_provider_id
            why = (f"hosts no instance of network {network.network_id}: instances of one network run on one "
                   f"provider for now (its instances are on {host})")
            handle = await self._place(service, stop, avoid, host, why)
            if handle is None:
                return None
            try:
                node = await network.join(handle.client, handle.offer.provider_id, address)
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

    async def _run_on(self, service: Service, handle: ActivityHandle, stop: asyncio.Event) -> bool:
        """Runs the handlers on one activity; returns whether to restart elsewhere."""
        ctx = WorkContext(handle, self._job, self._engine.emit)
        service.instance.ctx = ctx
        watch = ActivityWatch(handle, self._engine.unresponsive_after)
        restart = False
        try:
            self._transition(service, "start", handle)
            result = await self._run_handler(service, "start", ctx, watch, stop)
            if result.outcome is Outcome.DONE:
                self._transition(service, "ready", handle)
                result = await self._run_handler(service, "run", ctx, watch, stop)
                if result.outcome in (Outcome.DONE, Outcome.ERROR, Outcome.STOPPED):
                    service.instance.record_error(result.error)
                    self._transition(service, "stop", handle)
                    shutdown = await self._run_handler(service, "shutdown", ctx, watch, None)
                    if shutdown.error is not None and result.error is None:
                        service.instance.record_error(shutdown.error)
                    result = shutdown if shutdown.outcome in (Outcome.GONE, Outcome.UNRESPONSIVE) else result
            service.instance.record_error(result.error or service.exc_info[1])
            if result.outcome is Outcome.UNRESPONSIVE:
                self._transition(service, "mark_unresponsive", handle)
            restart = (
                self._respawn and result.outcome is not Outcome.STOPPED and not stop.is_set()
                and service.restart_condition
            )
        finally:
            await watch.close()
            await self._engine.release(handle, self._job, service.exc_info[1])
            node = service.network_node
            if node is not None:  # after the activity is gone: its address is free for a respawn
                node.network.leave(node)
                service.instance.network_node = None
            self._transition(service, "terminate", handle)
        return restart

    async def _run_handler(self, service: Service, name: str, ctx: WorkContext, watch: ActivityWatch,
                           stop: asyncio.Event | None) -> Result:
        """Runs the service's `name` handler; one that raised is logged with its traceback, as
        yapapi logs it (the state change that follows says why too)."""
        try:
            result = await self._drive(_handler(service, name), ctx, watch, stop)
        except TypeError as exc:  # not an async generator
            result = Result(Outcome.ERROR, exc)
        if result.outcome is Outcome.ERROR and result.error is not None:
            log.warning("Unhandled exception in service %s (%s)", type(service).__name__, name,
                        exc_info=result.error)
        return result

    async def _drive(self, handler: AsyncGenerator[Script, Any], ctx: WorkContext, watch: ActivityWatch,
                     stop: asyncio.Event | None) -> Result:
        """Runs one handler until it returns, fails, is stopped, or loses its provider."""
        pump = asyncio.create_task(self._pump(handler, ctx))
        waiters: set[asyncio.Future[Any]] = {pump, watch.ended}
        stopped = asyncio.create_task(stop.wait()) if stop else None
        if stopped:
            waiters.add(stopped)
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
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
            return Result(Outcome.STOPPED)
        finally:
            if stopped:
                stopped.cancel()
            if not pump.done():
                pump.cancel()
                try:
                    await pump
                except BaseException:  # the handler's own reaction to cancellation
                    pass
            await handler.aclose()

    @staticmethod
    def _lost(error: BaseException) -> Result:
        if isinstance(error, ProviderUnreachableError):
            return Result(Outcome.UNRESPONSIVE, error)
        return Result(Outcome.GONE, error)

    @staticmethod
    async def _pump(handler: AsyncGenerator[Script, Any], ctx: WorkContext) -> None:
        """Feeds the handler's scripts to the activity and their results back to the handler."""
        to_send: Any = None
        to_throw: BaseException | None = None
        while True:
            try:
                script = await (handler.athrow(to_throw) if to_throw else handler.asend(to_send))
            except StopAsyncIteration:
                return
            to_send, to_throw = None, None
            if script is None:
                continue
            if not isinstance(script, Script):
                raise TypeError(f"service handlers yield Scripts from self._ctx.new_script(), not {script!r}")
            if not script.wait_for_results:
                to_send = asyncio.ensure_future(ctx.execute(script))
                to_send.add_done_callback(lambda f: f.cancelled() or f.exception())
                continue
            try:
                results = await ctx.execute(script)
            except CommandExecutionError as exc:
                to_throw = exc
                continue
            done: asyncio.Future[list[events.CommandExecuted]] = asyncio.get_running_loop().create_future()
            done.set_result(results)
            to_send = done


def _handler(service: Service, name: str) -> AsyncGenerator[Script, Any]:
    """The service's `name` handler, checked to be an async generator (what the runner drives)."""
    handler = getattr(service, name)()
    if not inspect.isasyncgen(handler):
        if inspect.iscoroutine(handler):
            handler.close()  # never awaited: no warning about it
        raise TypeError(
            f"{type(service).__name__}.{name}() must be an async generator (an `async def` that yields "
            f"scripts, or at least contains a `yield`), but it returned {type(handler).__name__}"
        )
    return handler
