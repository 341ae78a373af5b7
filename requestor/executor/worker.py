"""One worker of a task job: an agreement and its activity, the caller's `worker` generator run on
it, and the end of both.

The caller's worker is `async def worker(ctx, tasks)`: it takes tasks from `tasks` and yields
scripts; each script runs on the activity and its result goes back at the `yield` (a failed
command, a timed-out script or a lost provider raised there, as yapapi throws them). A worker that
raises, or one of whose attempts runs past its time, ends: its activity is destroyed, its
agreement ended ("Cancelled"), and the tasks it held go back to the queue. A worker that ends
normally gives its agreement back to the engine's pool when its provider takes activities one
after another (requestor.agreements_pool): a later worker, of this job or another, takes it up
with a new activity instead of a new agreement, as yapapi's do.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from typing import Any, Protocol

from requestor import events
from requestor.client import ActivityHandle
from requestor.ctx import WorkContext, drive_scripts
from requestor.errors import RequestorError, TaskTimeoutError
from requestor.executor.queue import TaskQueue
from requestor.executor.task import Task
from requestor.script import Script

log = logging.getLogger(__name__)

WorkerFunction = Callable[[WorkContext, AsyncIterator[Task[Any, Any]]], AsyncGenerator[Script, Any]]

STOP_GRACE = 1.0  # seconds a stopped worker generator may take to unwind before it is left behind
SUCCESS = ("Success", "Successfully finished all work")  # yapapi's reasons of an agreement's end
CANCELLED = ("Cancelled", "Work cancelled")


class Providers(Protocol):
    """What a worker needs of the engine (requestor.engine)."""

    def emit(self, event: events.Event) -> None: ...

    async def acquire(self, job: events.Job, avoid: set[str], stop: asyncio.Event, only_provider: str | None = None,
                      why_only: str = "", on_agreement: Callable[[events.Agreement], None] | None = None,
                      reuse: bool = False, exclude: Mapping[str, str] | None = None) -> ActivityHandle: ...

    async def release(self, handle: ActivityHandle, job: events.Job, error: BaseException | None,
                      ending: tuple[str, str] | None = None, keep: bool = False) -> None: ...


class Worker:
    """Runs the caller's worker on one activity, once. `run()` returns when it has ended and its
    agreement is released; it raises what acquiring an activity raised (NoMatchingProviderError,
    BudgetExceededError)."""

    def __init__(self, number: int, engine: Providers, job: events.Job, queue: TaskQueue,
                 worker: WorkerFunction, implicit_init: bool) -> None:
        self.number = number
        self._engine = engine
        self._job = job
        self._queue = queue
        self._worker = worker
        self._implicit_init = implicit_init
        self.ctx: WorkContext | None = None
        self.error: BaseException | None = None  # why it failed, once it has
        self.takes_tasks = True  # until its generator stops asking for tasks
        self.closed_tasks = False  # its generator closed its tasks itself: done with this agreement
        self._stop = asyncio.Event()  # the job ends, or an attempt ran past its time
        self._stop_reason: BaseException | None = None

    def __repr__(self) -> str:
        where = f" on {self.ctx.provider_name}" if self.ctx else ""
        return f"Worker({self.number}{where})"

    @property
    def free(self) -> bool:
        """Could take a task now (or will, once it has an activity)."""
        return self.takes_tasks and not self._stop.is_set() and not self._queue.holds(self)

    def emit(self, event_class: type[events.Event], **fields: Any) -> None:
        assert self.ctx is not None, "a worker's tasks start once it has an activity"
        self.ctx.emit(event_class, **fields)

    def attempt_expired(self, task: Task[Any, Any], seconds: float) -> None:
        if self._stop_reason is None:
            self._stop_reason = TaskTimeoutError(task, seconds)
        self._stop.set()

    def stop(self) -> None:
        """The job ends: stops acquiring, or stops the caller's worker where it is."""
        self._stop.set()

    async def run(self, avoid: set[str], exclude: Mapping[str, str]) -> None:
        """`avoid`: providers asked last; `exclude`: never asked (provider id: why)."""
        try:
            handle = await self._engine.acquire(self._job, avoid, self._stop, on_agreement=self._agreed, reuse=True,
                                                exclude=exclude)
        except RequestorError:
            if self._stop.is_set():
                return  # stopped while looking for a provider
            raise
        self.ctx = ctx = WorkContext(handle, self._job, self._engine.emit)
        self._queue.join(self)
        cancelled = False
        try:
            if self._stop.is_set() or self._queue.all_done():
                cancelled = self._stop.is_set()
            else:
                cancelled = await self._work(ctx)
        finally:
            self.takes_tasks = False
            exc_info = (type(self.error), self.error, self.error.__traceback__) if self.error else None
            ctx.emit(events.WorkerFinished, exc_info=exc_info)
            self._queue.leave(self, f"{type(self.error).__name__}: {self.error}" if self.error else "worker stopped")
            ending = CANCELLED if self.error is not None or cancelled else SUCCESS
            # A worker that closed its tasks is done with this provider (yapapi's market strategy
            # closes them to take the next task elsewhere): its agreement ends, not pooled.
            keep = ending is SUCCESS and not self.closed_tasks
            await self._engine.release(handle, self._job, self.error, ending, keep=keep)

    def _agreed(self, agreement: events.Agreement) -> None:
        self._engine.emit(events.WorkerStarted(job=self._job, agreement=agreement))

    async def _work(self, ctx: WorkContext) -> bool:
        """Runs the caller's worker until it returns, raises or is stopped; whether it was stopped
        by the job (not failed). Sets `error` when it failed."""
        runner = asyncio.create_task(self._drive_all(ctx), name=f"task-worker-{self._job.id}-{self.number}")
        stopped = asyncio.create_task(self._stop.wait())
        try:
            await asyncio.wait({runner, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
            if not runner.done():
                runner.cancel()
                await asyncio.wait({runner}, timeout=STOP_GRACE)
                if not runner.done():
                    log.warning("event=task_worker_left_running job=%s agreement=%s hint=%r", self._job.id,
                                ctx.handle.agreement.id, "the worker went on after it was cancelled "
                                                         "(does it catch CancelledError?)")
        failure = runner.exception() if runner.done() and not runner.cancelled() else None
        if self._stop_reason is not None:  # an attempt ran past its time: a failure
            self.error = self._stop_reason
            return False
        if self._stop.is_set():  # the job stopped it: whatever it raised then was its reaction
            return True
        self.error = failure
        return False

    async def _drive_all(self, ctx: WorkContext) -> None:
        tasks = self._tasks()
        generator = self._worker(ctx, tasks)
        if not inspect.isasyncgen(generator):
            if inspect.iscoroutine(generator):
                generator.close()
            raise TypeError(f"the task worker must be an async generator (an `async def` that yields scripts), "
                            f"got {type(generator).__name__}")
        try:
            if self._implicit_init:
                await drive(_implicit_init(ctx), ctx)
            await drive(generator, ctx)
        finally:
            self.takes_tasks = False
            await _close(generator)
            await _close(tasks)

    async def _tasks(self) -> AsyncGenerator[Task[Any, Any], None]:
        """What the caller's worker iterates: each task is started as it is handed out, and
        finished (TaskFinished) when the worker asks for the next one or stops asking."""
        while self.takes_tasks:
            task = await self._queue.get(self)
            if task is None:
                return
            task.emit(events.TaskStarted)
            try:
                yield task
            except GeneratorExit:
                if self.takes_tasks:  # the worker closed its tasks: it wants no more
                    self.takes_tasks = False
                    self.closed_tasks = True
                    task.emit(events.TaskFinished)
                raise
            task.emit(events.TaskFinished)


async def drive(generator: AsyncGenerator[Script, Any], ctx: WorkContext) -> None:
    """Runs each script the worker yields and sends its results back; whatever running it raised
    is thrown in at its `yield`, as yapapi throws it (requestor.ctx.drive_scripts)."""
    await drive_scripts(generator, ctx, "task workers yield Scripts from ctx.new_script()", (Exception,))


async def _implicit_init(ctx: WorkContext) -> AsyncGenerator[Script, Any]:
    script = ctx.new_script()
    script.deploy()
    script.start()
    yield script


async def _close(generator: AsyncGenerator[Any, Any]) -> None:
    try:
        await generator.aclose()
    except RuntimeError as exc:  # it yielded while closing, or is still running
        log.warning("event=task_worker_not_closed error=%s", exc)
    except Exception:
        log.debug("event=task_worker_close_raised", exc_info=True)
