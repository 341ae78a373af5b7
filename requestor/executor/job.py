"""One `execute_tasks` call while it runs: its queue of tasks, its workers, its time limit, and the
accepted tasks on their way to the caller.

Workers are started as soon as there are tasks no free worker will take (up to `max_workers`),
not one every 2 s as yapapi does; a worker whose provider cannot be had is tried again after a
backoff, and when no worker can be had at all the job fails with the reason. A provider where a
worker failed is asked last, and after MAX_PROVIDER_FAILURES failed workers it gets no more of the
job's (the error, when no provider is left, says which were excluded and why). The job ends when
every task is done (JobFinished), when its timeout passes (JobTimeoutError, naming what was left
undone), when `data` or a worker's placement raises, or when it is closed (the caller's `break`,
an exception in the caller's loop, `Golem.stop()`): workers are stopped and their agreements
ended, in at most WIND_DOWN seconds. Tasks out of attempts make the job end with TaskFailedError
once everything else is done.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import AsyncIterable, Iterable, Iterator, Sized
from datetime import datetime, timedelta, timezone
from typing import Any

from requestor import events
from requestor.errors import BudgetExceededError, JobTimeoutError, NoMatchingProviderError, TaskFailedError
from requestor.executor import progress
from requestor.executor.queue import TaskQueue
from requestor.executor.task import Task
from requestor.executor.worker import Providers, Worker, WorkerFunction
from requestor.log import pluralize

log = logging.getLogger(__name__)

DEFAULT_EXECUTOR_TIMEOUT = timedelta(minutes=15)  # yapapi's: the whole job's
DEFAULT_MAX_WORKERS = 5  # yapapi's
WIND_DOWN = 30.0  # seconds stopped workers get to end their agreements before they are left behind
PLACEMENT_RETRY_FIRST, PLACEMENT_RETRY_MAX = 1.0, 10.0  # seconds between tries for a worker's provider
# Failed workers after which a provider gets no more workers of the job. One failure is asked
# last only (a lost link, a task's own bug can happen anywhere); three in one job is a provider
# that fails its tasks, and with the default 5 attempts a task failing there still has two left
# for the others. Not a parameter: a job that must never retry a provider can say so in its
# market strategy (score_offer), as yapapi's ProviderFilter does.
MAX_PROVIDER_FAILURES = 3


class TaskJob:
    def __init__(self, engine: Providers, job_id: str, payload: Any, worker: WorkerFunction,
                 data: Iterable[Task[Any, Any]] | AsyncIterable[Task[Any, Any]], *, max_workers: int | None,
                 timeout: timedelta | None, implicit_init: bool, max_attempts: int,
                 attempt_timeout: timedelta | float | None) -> None:
        max_workers = max_workers or DEFAULT_MAX_WORKERS
        timeout = timeout or DEFAULT_EXECUTOR_TIMEOUT
        if isinstance(attempt_timeout, timedelta):
            attempt_timeout = attempt_timeout.total_seconds()
        if max_workers < 1 or max_attempts < 1:
            raise ValueError(f"max_workers and max_attempts must be at least 1, got {max_workers}, {max_attempts}")
        self.job = events.Job(id=job_id, payload=payload, expiration=datetime.now(timezone.utc) + timeout)
        self._engine = engine
        self._worker = worker
        self._max_workers = max_workers
        self._timeout = timeout
        self._implicit_init = implicit_init
        self._accepted: asyncio.Queue[Task[Any, Any] | None] = asyncio.Queue()
        self.queue = TaskQueue(data, max_workers, max_attempts, attempt_timeout, self._accepted.put_nowait)
        self._total = len(data) if isinstance(data, Sized) else None  # for the progress line
        self._workers: dict[Worker, asyncio.Task[None]] = {}
        self._numbers = 0
        self._failures: dict[str, int] = {}  # failed workers by provider id: asked last
        self._excluded: dict[str, str] = {}  # providers past MAX_PROVIDER_FAILURES: why, never asked again
        self._retry_at = 0.0  # loop time before which no worker is started (after a placement failed)
        self._retry_delay = 0.0
        self._fatal: BaseException | None = None
        self._closing = asyncio.Event()
        self._supervisor: asyncio.Task[None] | None = None
        self.error: BaseException | None = None  # why the job ended, if not because all was done

    def start(self) -> None:
        if self._supervisor is None:
            self._supervisor = asyncio.create_task(self._run(), name=f"task-job-{self.job.id}")

    async def next_accepted(self) -> Task[Any, Any] | None:
        """The next accepted task; None at the job's end; the job's error, if it failed, after
        every task it accepted."""
        task = await self._accepted.get()
        if task is not None:
            return task
        self._accepted.put_nowait(None)  # every later call ends too
        if self.error is not None and not isinstance(self.error, asyncio.CancelledError):
            raise self.error
        return None

    async def close(self) -> None:
        """Ends the job (workers stopped, agreements ended) and waits until it has. Idempotent."""
        self._closing.set()
        if self._supervisor is not None:
            await asyncio.wait({self._supervisor})

    # The job's life

    async def _run(self) -> None:
        self._engine.emit(events.JobStarted(job=self.job))
        filler = asyncio.create_task(self.queue.fill(), name=f"task-job-{self.job.id}-data")
        starter = asyncio.create_task(self._start_workers(), name=f"task-job-{self.job.id}-starter")
        shown = asyncio.create_task(self._show_progress(), name=f"task-job-{self.job.id}-progress")
        error: BaseException | None = None
        try:
            async with asyncio.timeout(self._timeout.total_seconds()):
                error = await self._until_done(filler, starter)
        except TimeoutError:
            running, waiting = self.queue.undone()
            error = JobTimeoutError(self._timeout, running, waiting, self.queue.exhausted)
        finally:
            for helper in (filler, starter, shown):
                helper.cancel()
            await asyncio.wait({filler, starter, shown})
            await self._wind_down(stop=error is not None)
            self.queue.close()
            if error is None and self.queue.failed:
                error = TaskFailedError(self.queue.failed)
            self.error = error
            exc_info = (type(error), error, error.__traceback__) if error is not None else None
            self._engine.emit(events.JobFinished(job=self.job, exc_info=exc_info))
            self._accepted.put_nowait(None)

    async def _show_progress(self) -> None:
        """The progress line on stderr while the job runs, when it is a terminal (see progress)."""
        stream = sys.stderr
        if not progress.wanted(stream):
            return
        line = progress.Progress(stream, f"[Job {self.job.id}]", self._total)
        try:
            while True:
                line.show(self.queue.ended)
                await self.queue.changed(1.0)  # a task done, or a second more for the rate
        finally:
            line.clear()

    async def _until_done(self, filler: asyncio.Task[None], starter: asyncio.Task[None]) -> BaseException | None:
        """None once every task is done and every worker has ended; else why the job must end."""
        done = asyncio.create_task(self._all_ended())
        closing = asyncio.create_task(self._closing.wait())
        watched = {done, closing, filler, starter}
        try:
            while True:
                await asyncio.wait(watched, return_when=asyncio.FIRST_COMPLETED)
                if closing.done():
                    return asyncio.CancelledError("the job was closed before its end")
                for helper in (filler, starter):
                    if helper.done() and (failure := helper.exception()) is not None:
                        return failure
                if done.done():
                    return None
                watched.discard(filler)  # data read to its end: the queue knows it
        finally:
            done.cancel()
            closing.cancel()

    async def _all_ended(self) -> None:
        await self.queue.wait_done()
        while self._workers:
            for worker in self._workers:
                if worker.ctx is None:
                    worker.stop()  # still looking for a provider: no work left for it
            await asyncio.wait(list(self._workers.values()))

    async def _wind_down(self, stop: bool) -> None:
        if not self._workers:
            return
        if stop:
            for worker in self._workers:
                worker.stop()
        tasks = list(self._workers.values())
        _, pending = await asyncio.wait(tasks, timeout=1.0)
        if pending:  # yapapi's line, after the same second
            log.info("[Job %s] Waiting for %s to finish...", self.job.id, pluralize(len(pending), "worker"))
        _, late = await asyncio.wait(tasks, timeout=WIND_DOWN - 1.0)
        for task in late:
            log.warning("event=task_worker_given_up job=%s worker=%s waited=%.0fs", self.job.id, task.get_name(),
                        WIND_DOWN)
            task.cancel()
        if late:
            await asyncio.wait(late, timeout=1.0)

    # Workers

    async def _start_workers(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if self._fatal is not None:
                raise self._fatal
            wait: float | None = None
            while self._wanted():
                if loop.time() < self._retry_at:
                    wait = self._retry_at - loop.time()
                    break
                self._spawn()
            await self.queue.changed(wait)

    def _wanted(self) -> bool:
        free = sum(1 for worker in self._workers if worker.free)
        return len(self._workers) < self._max_workers and self.queue.unassigned() > free

    def _spawn(self) -> None:
        self._numbers += 1
        worker = Worker(self._numbers, self._engine, self.job, self.queue, self._worker, self._implicit_init)
        task = asyncio.create_task(worker.run(set(self._failures), self._excluded),  # read as it grows
                                   name=f"task-job-{self.job.id}-worker-{worker.number}")
        self._workers[worker] = task
        task.add_done_callback(lambda t: self._ended(worker, t))

    def _ended(self, worker: Worker, task: asyncio.Task[None]) -> None:
        self._workers.pop(worker, None)
        failure = None if task.cancelled() else task.exception()
        if worker.ctx is not None:
            self._retry_delay = 0.0
            if worker.error is not None:
                self._failed_on(worker, worker.error)
        if isinstance(failure, (NoMatchingProviderError, BudgetExceededError)):
            if not self._workers and not self.queue.all_done():
                self._fatal = failure  # no worker, and none can be had
            else:
                self._retry_delay = min(max(self._retry_delay * 2, PLACEMENT_RETRY_FIRST), PLACEMENT_RETRY_MAX)
                self._retry_at = asyncio.get_running_loop().time() + self._retry_delay
                log.info("event=task_worker_not_placed job=%s retry_in=%.1fs error=%s", self.job.id,
                         self._retry_delay, failure)
        elif failure is not None:
            log.error("event=task_worker_crashed job=%s worker=%s", self.job.id, worker.number, exc_info=failure)
        self.queue.notify()


    def _failed_on(self, worker: Worker, error: BaseException) -> None:
        assert worker.ctx is not None
        provider = worker.ctx.provider_id
        failures = self._failures[provider] = self._failures.get(provider, 0) + 1
        if failures >= MAX_PROVIDER_FAILURES and provider not in self._excluded:
            self._excluded[provider] = (f"excluded from job {self.job.id} after {failures} failed workers "
                                        f"(the last: {type(error).__name__}: {error})")
            log.warning("Provider '%s' excluded from job %s after %d failed workers; last error: %s: %s",
                        worker.ctx.provider_name, self.job.id, failures, type(error).__name__, error)


_used_job_ids: set[str] = set()  # in this process, as yapapi's


def new_job_id(requested: str | None, numbers: Iterator[int]) -> str:
    """`requested`, or the next of `numbers` not used yet; ValueError for an id used before in
    this process (yapapi's refusal, in its words)."""
    if requested:
        if requested in _used_job_ids:
            raise ValueError(f"Non unique job id {requested}")
        job_id = requested
    else:
        job_id = next(str(n) for n in numbers if str(n) not in _used_job_ids)
    _used_job_ids.add(job_id)
    return job_id
