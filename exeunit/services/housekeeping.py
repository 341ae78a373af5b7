"""Keeping the host clean while the daemon runs: containers that die are noticed at once, what a
previous run of this home left behind goes at start, and containers whose agreement expired go
whichever daemon started them (its daemon is gone or stuck, and nothing runs for ever)."""

from __future__ import annotations

import asyncio
import logging
import shutil
from collections.abc import Callable, Coroutine, Iterable
from typing import Any

from exeunit import errors
from exeunit.domain.clock import utcnow
from exeunit.domain.records import Journals
from exeunit.domain.states import ActivityState
from exeunit.runtime.protocols import Runtime
from exeunit.runtime.storage import LoopStorage
from exeunit.services.activity import Activity

log = logging.getLogger(__name__)

EXPIRED_GRACE_SECONDS = 60.0  # an expired agreement's own daemon gets this long to end it itself
REAP_INTERVAL_SECONDS = 300.0  # how often the host is swept for containers of expired agreements


class Housekeeping:
    def __init__(self, runtime: Runtime, storage: LoopStorage, journals: Journals, home_id: str,
                 activities: Callable[[], Iterable[Activity]],
                 spawn: Callable[[Coroutine[Any, Any, None]], None]) -> None:
        self._runtime = runtime
        self._storage = storage
        self._journals = journals
        self._home_id = home_id
        self._activities = activities
        self._spawn = spawn
        self._tasks: list[asyncio.Task[None]] = []

    async def sweep_leftovers(self) -> None:
        """Removes this home's containers and storage that no live activity owns (a previous run
        died without ending them), and every container whose agreement expired."""
        live = {a.activity_id: a for a in self._activities() if a.state is not ActivityState.TERMINATED}
        # Only this home's: its lock (exeunit.persistence.home) proves no other daemon runs them.
        leftovers = await self._runtime.containers_of_home(self._home_id)
        for container_id in set(leftovers) - {a.container_id for a in live.values()}:
            log.warning("event=dangling_container_removed container=%s home=%s", container_id[:12], self._home_id)
            await self._runtime.remove_container(container_id, 1)
        for activity_id in await asyncio.to_thread(self._storage.leftovers):
            if activity_id in live and live[activity_id].volumes is not None:
                continue
            log.warning("event=dangling_storage_removed activity=%s", activity_id)
            await asyncio.to_thread(self._storage.destroy, activity_id)
        known = {a.activity_id for a in self._activities()}  # ended ones' batches are still served
        for activity_id in set(await asyncio.to_thread(self._journals.activity_ids)) - known:
            await asyncio.to_thread(shutil.rmtree, self._journals.directory(activity_id), True)
        await self.reap_expired()

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._watch_deaths()), asyncio.create_task(self._reap_periodically())]

    def stop(self) -> None:
        for task in self._tasks:
            task.cancel()

    async def reap_expired(self) -> int:
        """Removes every container, whichever provider started it, whose agreement expired more
        than EXPIRED_GRACE_SECONDS ago."""
        reaped = 0
        for container in await self._runtime.expired_containers(utcnow().timestamp() - EXPIRED_GRACE_SECONDS):
            log.warning("event=expired_container_reaped container=%s home=%s expired=%d",
                        container.container_id[:12], container.home_id, container.expired)
            await self._runtime.remove_container(container.container_id, 1)
            reaped += 1
        return reaped

    async def _reap_periodically(self) -> None:
        while True:
            await asyncio.sleep(REAP_INTERVAL_SECONDS)
            try:
                await self.reap_expired()
            except errors.ExeUnitError as exc:
                log.warning("event=reap_failed error=%s", exc)

    async def _watch_deaths(self) -> None:
        async for container_id in self._runtime.container_deaths(self._home_id):
            if not container_id:  # the engine was away: look at every container
                self._spawn(self._check_containers())
                continue
            activity = next((a for a in self._activities() if a.container_id == container_id), None)
            if activity and activity.state is not ActivityState.TERMINATED:
                self._spawn(activity.terminate("ContainerDied", "the activity's container stopped unexpectedly"))

    async def _check_containers(self) -> None:
        """Ends the activities whose container stopped while nobody could tell (engine restart)."""
        for activity in list(self._activities()):
            if activity.state not in (ActivityState.READY, ActivityState.DEPLOYED) or not activity.container_id:
                continue
            try:
                alive = await self.container_alive(activity)
            except errors.ExeUnitError:
                continue
            if not alive and activity.state is not ActivityState.TERMINATED:
                await activity.terminate("ContainerDied", "the activity's container stopped unexpectedly")

    async def container_alive(self, activity: Activity) -> bool:
        """Whether the activity's container is as its state says: running once Ready, created
        (or already starting) once Deployed."""
        if not activity.container_id:
            return False
        status = await self._runtime.container_status(activity.container_id)
        return status == "running" or (status == "created" and activity.state is ActivityState.DEPLOYED)
