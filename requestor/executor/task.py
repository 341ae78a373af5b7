"""`Task`: one unit of work of a job (a frame, a chunk), as yapapi's, with a limit on its attempts.

A task goes WAITING -> RUNNING (one attempt, on one worker) -> ACCEPTED or REJECTED by the worker;
a rejection with `retry=True`, a worker that fails or an attempt that times out puts it back to
WAITING for another attempt, until it has had `max_attempts`: then it is FAILED (not yapapi's:
yapapi retries for ever). Ids are "1", "2", ... counted per process, as yapapi's.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from enum import Enum, auto
from typing import Any, ClassVar, Generic, Protocol, TypeVar

from requestor import events
from requestor.errors import RequestorError

TaskData = TypeVar("TaskData")
TaskResult = TypeVar("TaskResult")

DEFAULT_MAX_ATTEMPTS = 5  # a task's attempts unless the job or the task says otherwise


class TaskStatus(Enum):
    WAITING = auto()
    RUNNING = auto()
    ACCEPTED = auto()
    REJECTED = auto()
    FAILED = auto()  # ours: out of attempts


class _Tracker(Protocol):
    """What a task tells its job's queue (requestor.executor.queue) when an attempt ends."""

    def finished(self, task: Task[Any, Any], retry: bool, reason: str) -> None: ...


class Task(Generic[TaskData, TaskResult]):
    """One computation unit of a job, e.g. one frame of an animation.

        async def worker(ctx, tasks):
            async for task in tasks:
                script = ctx.new_script()
                result = script.run("/bin/sh", "-c", f"echo {task.data}")
                yield script
                task.accept_result(result=(await result).stdout)

    `max_attempts` (default: the job's, else DEFAULT_MAX_ATTEMPTS) bounds how often the task is
    tried; `attempt_timeout` (seconds or a timedelta; default: the job's, else none) bounds each
    attempt. Neither is yapapi's.
    """

    ids: ClassVar[Iterator[int]] = itertools.count(1)

    def __init__(self, data: TaskData, *, max_attempts: int | None = None,
                 attempt_timeout: timedelta | float | None = None) -> None:
        if max_attempts is not None and max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {max_attempts}")
        self.id: str = str(next(Task.ids))
        self._data = data
        self._result: TaskResult | None = None
        self._status = TaskStatus.WAITING
        self._started: datetime | None = None
        self._finished: datetime | None = None
        self._emit: Callable[..., None] | None = None
        self._tracker: _Tracker | None = None
        self.max_attempts = max_attempts
        self.attempt_timeout = attempt_timeout.total_seconds() if isinstance(attempt_timeout, timedelta) \
            else attempt_timeout
        self.attempts = 0  # attempts started so far
        self.failure: str | None = None  # how the last failed attempt ended (set once FAILED)

    def __repr__(self) -> str:
        return f"Task(id={self.id}, data={self._data})"

    @property
    def data(self) -> TaskData:
        return self._data

    @property
    def result(self) -> TaskResult | None:
        return self._result

    @property
    def status(self) -> TaskStatus:
        return self._status

    @property
    def running_time(self) -> timedelta | None:
        """How long the current attempt has run, or how long the last one took once it ended."""
        if self._started is None:
            return None
        return (self._finished or datetime.now(timezone.utc)) - self._started

    def emit(self, event_class: type[events.TaskEvent], **fields: Any) -> None:
        """Emits a task event on the activity of the current attempt."""
        if self._emit is None:
            raise RequestorError(f"{self!r} has not started yet, so it cannot emit")
        self._emit(event_class, task=self, **fields)

    def accept_result(self, result: TaskResult | None = None) -> None:
        """Marks the task done with `result`; the job yields it to the caller."""
        self._check_running("accepted")
        self._status = TaskStatus.ACCEPTED
        self._result = result
        self.emit(events.TaskAccepted)
        self._end(retry=False, reason="accepted")

    def reject_result(self, reason: str | None = None, retry: bool = False) -> None:
        """Marks the result wrong: the task is dropped, or with `retry` tried again (on another
        worker when there is one) while it has attempts left."""
        self._check_running("rejected")
        self.emit(events.TaskRejected, reason=reason)
        self._status = TaskStatus.REJECTED
        self._end(retry=retry, reason=f"rejected: {reason}" if reason else "rejected")

    # The job's side

    def _start(self, emit: Callable[..., None], tracker: _Tracker) -> None:
        self._status = TaskStatus.RUNNING
        self._emit = emit
        self._tracker = tracker
        self._started = datetime.now(timezone.utc)
        self._finished = None
        self.attempts += 1

    def _end(self, retry: bool, reason: str) -> None:
        self._finished = datetime.now(timezone.utc)
        if self._tracker is not None:
            self._tracker.finished(self, retry, reason)

    def _requeue(self) -> None:
        self._status = TaskStatus.WAITING

    def _fail(self, reason: str) -> None:
        self._status = TaskStatus.FAILED
        self.failure = reason

    def _check_running(self, what: str) -> None:
        if self._status is not TaskStatus.RUNNING:
            raise RequestorError(f"{self!r} cannot be {what}: it is {self._status.name.lower()}, not running")
