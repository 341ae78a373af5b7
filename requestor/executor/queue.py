"""The tasks of one job: read from the caller's `data` as workers need them, handed to workers,
put back when an attempt fails, and given up once a task has had its attempts.

The queue reads at most `lookahead` tasks ahead of the workers (the job sets it to `max_workers`,
enough to know how many workers to start), so an endless generator works and a `break` in the
caller's loop leaves the rest unread. A task put back goes before fresh ones, and to a worker that
has not tried it yet, unless every live worker has. Everything here runs on the event loop: no
locks, one `changed` signal that wakes whoever waits on the queue (workers, the job's starter).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator
from typing import Any, Protocol

from requestor import events
from requestor.executor.task import Task, TaskStatus

_END = object()


class Holder(Protocol):
    """A worker, as the queue sees it: where its tasks' events go, and who hears of an attempt
    that ran past its time."""

    number: int  # unique in its job

    def emit(self, event_class: type[events.Event], **fields: Any) -> None: ...

    def attempt_expired(self, task: Task[Any, Any], seconds: float) -> None: ...


class TaskQueue:
    def __init__(self, data: Iterable[Task[Any, Any]] | AsyncIterable[Task[Any, Any]], lookahead: int,
                 max_attempts: int, attempt_timeout: float | None,
                 on_accepted: Callable[[Task[Any, Any]], None]) -> None:
        self._source: Iterator[Any] | AsyncIterator[Any] = (
            aiter(data) if isinstance(data, AsyncIterable) else iter(data))
        self._lookahead = max(lookahead, 1)
        self._max_attempts = max_attempts
        self._attempt_timeout = attempt_timeout
        self._on_accepted = on_accepted
        self._fresh: deque[Task[Any, Any]] = deque()  # read, never started
        self._retries: deque[Task[Any, Any]] = deque()  # put back after an attempt: these go first
        self._running: dict[Task[Any, Any], Holder] = {}
        self._tried: dict[Task[Any, Any], set[int]] = {}  # numbers of the holders that had each task
        self._timers: dict[Task[Any, Any], asyncio.TimerHandle] = {}
        self._live: set[int] = set()  # numbers of the holders that may still take tasks
        self.exhausted = False  # data has no more tasks
        self.failed: list[Task[Any, Any]] = []
        self.ended = 0  # tasks accepted, rejected for good or failed
        self._changed = asyncio.Event()

    # Signals

    def notify(self) -> None:
        """Wakes everyone waiting on the queue (a task moved, a worker came or went)."""
        self._changed.set()
        self._changed = asyncio.Event()

    async def changed(self, timeout: float | None = None) -> None:
        """Waits until the queue next changes, or `timeout` seconds."""
        try:
            await asyncio.wait_for(self._changed.wait(), timeout)
        except TimeoutError:
            pass

    # Reading data

    async def fill(self) -> None:
        """Reads tasks from data while fewer than `lookahead` wait unstarted; returns at its end.
        Raises what data raises, and TypeError for an item that is not a Task."""
        while True:
            while len(self._fresh) >= self._lookahead:
                await self.changed()
            if isinstance(self._source, AsyncIterator):
                item = await anext(self._source, _END)
            else:
                item = next(self._source, _END)
            if item is _END:
                self.exhausted = True
                self.notify()
                return
            if not isinstance(item, Task):
                raise TypeError(f"execute_tasks' data must give Task objects, got {item!r}")
            if item.status is not TaskStatus.WAITING:
                raise ValueError(f"{item!r} is {item.status.name.lower()}: a task is given to one job once")
            self._fresh.append(item)
            self.notify()

    # What the job's starter reads

    def unassigned(self) -> int:
        return len(self._fresh) + len(self._retries)

    def holds(self, holder: Holder) -> bool:
        return any(h is holder for h in self._running.values())

    def all_done(self) -> bool:
        return self.exhausted and not self._fresh and not self._retries and not self._running

    async def wait_done(self) -> None:
        while not self.all_done():
            await self.changed()

    def undone(self) -> tuple[list[Task[Any, Any]], list[Task[Any, Any]]]:
        """Tasks running now, and tasks waiting for a worker (put back ones first)."""
        return list(self._running), [*self._retries, *self._fresh]

    # Workers

    def join(self, holder: Holder) -> None:
        self._live.add(holder.number)
        self.notify()

    async def get(self, holder: Holder) -> Task[Any, Any] | None:
        """The next task for `holder`, started; None once every task of the job is done."""
        while True:
            task = self._pick(holder)
            if task is not None:
                self._start(task, holder)
                return task
            if self.all_done():
                return None
            await self.changed()

    def _pick(self, holder: Holder) -> Task[Any, Any] | None:
        for task in self._retries:
            tried = self._tried.get(task, set())
            if holder.number not in tried or self._live <= tried:
                self._retries.remove(task)
                return task
        return self._fresh.popleft() if self._fresh else None

    def _start(self, task: Task[Any, Any], holder: Holder) -> None:
        self._running[task] = holder
        self._tried.setdefault(task, set()).add(holder.number)
        task._start(holder.emit, self)
        timeout = task.attempt_timeout if task.attempt_timeout is not None else self._attempt_timeout
        if timeout is not None:
            self._timers[task] = asyncio.get_running_loop().call_later(timeout, holder.attempt_expired, task, timeout)
        self.notify()

    def finished(self, task: Task[Any, Any], retry: bool, reason: str) -> None:
        """An attempt ended by the worker: accepted, rejected, or rejected to be tried again."""
        holder = self._end_attempt(task)
        if holder is None:
            return
        if task.status is TaskStatus.ACCEPTED:
            self._forget(task)
            self.ended += 1
            self._on_accepted(task)
        elif retry:
            self._put_back(task, holder, reason)
        else:
            self._forget(task)
            self.ended += 1
        self.notify()

    def leave(self, holder: Holder, reason: str) -> None:
        """The worker is gone: the tasks it held are put back (or given up when out of attempts)."""
        self._live.discard(holder.number)
        for task in [t for t, h in self._running.items() if h is holder]:
            self._end_attempt(task)
            self._put_back(task, holder, reason)
        self.notify()

    def _end_attempt(self, task: Task[Any, Any]) -> Holder | None:
        timer = self._timers.pop(task, None)
        if timer is not None:
            timer.cancel()
        return self._running.pop(task, None)

    def _put_back(self, task: Task[Any, Any], holder: Holder, reason: str) -> None:
        limit = task.max_attempts if task.max_attempts is not None else self._max_attempts
        if task.attempts >= limit:
            task._fail(reason)
            self._forget(task)
            self.failed.append(task)
            self.ended += 1
            holder.emit(events.TaskFailed, task=task, reason=reason)
        else:
            task._requeue()
            self._retries.append(task)

    def _forget(self, task: Task[Any, Any]) -> None:
        self._tried.pop(task, None)

    def close(self) -> None:
        """The job ended: no attempt timer may fire any more."""
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
