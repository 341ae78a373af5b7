"""The Task API (`Golem.execute_tasks`) end to end: real provider daemons, real containers."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest

from exeunit.domain.resources import LinearPricing, Resources
from exeunit.v1.conventions import GIB
from requestor import BatchTimeoutError, CommandExecutionError, Golem, Task, WorkContext, events
from requestor.errors import JobTimeoutError, TaskFailedError, TaskTimeoutError
from requestor.executor import TaskStatus
from requestor.log import log_summary
from requestor.payload import vm
from tests.conftest import BASE_IMAGE, Daemons


JOB_PREFIX = re.compile(r"^\[Job [^]]+\] ")  # what the summary's lines about one job start with


class Recorder:
    """Keeps every event."""

    def __init__(self) -> None:
        self.events: list[events.Event] = []

    def __call__(self, event: events.Event) -> None:
        self.events.append(event)

    def of(self, *classes: type[events.Event]) -> list[events.Event]:
        return [e for e in self.events if isinstance(e, classes)]

    def names(self, *classes: type[events.Event]) -> list[str]:
        return [type(e).__name__ for e in self.of(*classes)]


async def start_providers(daemons: Daemons, count: int) -> list[str]:
    """Providers of one activity each, so that two workers are two providers."""
    addresses = []
    for n in range(count):
        server = await daemons.start(
            f"provider-{n}", pricing=LinearPricing(start_fee=0.0, per_cpu_second=0.00001, per_duration_second=0.00002),
            capacity=Resources(cpu_threads=1, memory_bytes=2 * GIB, storage_bytes=4 * GIB),
        )
        addresses.append(f"127.0.0.1:{server.port}")
    return addresses


async def payload() -> vm.VmPackage:
    return await vm.repo(image_tag=BASE_IMAGE, min_mem_gib=0.25, min_storage_gib=0.5)


def golem_for(addresses: list[str], recorder: Recorder) -> Golem:
    return Golem(budget=10.0, subnet_tag="public", providers=addresses, event_consumer=log_summary(recorder))


async def echo_worker(ctx: WorkContext, tasks: AsyncIterator[Task]):
    async for task in tasks:
        script = ctx.new_script()
        result = script.run("/bin/sh", "-c", f"sleep 0.2; echo {task.data} from $(hostname)")
        yield script
        task.accept_result(result=(await result).stdout.split()[0])


def by_agreement(recorder: Recorder) -> dict[str, list[str]]:
    """Each agreement's events, by class name, in order."""
    seen: dict[str, list[str]] = {}
    for event in recorder.events:
        agreement = getattr(event, "agreement", None)
        if agreement is not None:
            seen.setdefault(agreement.id, []).append(type(event).__name__)
    return seen


async def test_tasks_over_two_workers_come_back_with_yapapis_events_in_order(daemons: Daemons, caplog) -> None:
    caplog.set_level(logging.INFO, logger="requestor.summary")
    addresses = await start_providers(daemons, 2)
    recorder = Recorder()
    async with golem_for(addresses, recorder) as golem:
        data = [Task(data=f"word{n}") for n in range(6)]
        done = [task async for task in golem.execute_tasks(echo_worker, data, payload=await payload(),
                                                             max_workers=2)]
    assert sorted(t.result for t in done) == sorted(t.data for t in data)
    assert all(t.status is TaskStatus.ACCEPTED and t.running_time is not None for t in done)
    names = recorder.names(events.JobStarted, events.JobFinished, events.ShutdownFinished)
    assert names == ["JobStarted", "JobFinished", "ShutdownFinished"]
    assert recorder.of(events.JobFinished)[0].exception is None
    workers = by_agreement(recorder)
    assert len(workers) == 2, "two workers, each on a provider of its own"
    for sequence in workers.values():
        assert sequence[:4] == ["AgreementCreated", "AgreementConfirmed", "WorkerStarted", "ActivityCreated"]
        assert sequence[-4:] == ["WorkerFinished", "AgreementTerminated", "InvoiceReceived", "InvoiceAccepted"]
        tasks = [n for n in sequence if n.startswith("Task") or n in ("ScriptSent", "CommandExecuted")]
        assert tasks[:3] == ["ScriptSent", "CommandExecuted", "CommandExecuted"], "deploy and start come first"
        for n in range(3, len(tasks), 5):
            assert tasks[n:n + 5] == ["TaskStarted", "ScriptSent", "CommandExecuted", "TaskAccepted", "TaskFinished"]
    assert all(e.reason["golem.requestor.code"] == "Success" for e in recorder.of(events.AgreementTerminated))
    assert not [e for e in recorder.of(events.WorkerFinished) if e.exception]
    lines = [JOB_PREFIX.sub("", r.getMessage()) for r in caplog.records if r.name == "requestor.summary"]
    assert sum(line.startswith("Task started on provider 'provider-") for line in lines) == 6
    assert sum(line.startswith("Task finished by provider 'provider-") for line in lines) == 6
    assert any(line.startswith("Job finished in ") and line.endswith("s") for line in lines)
    computed = [line for line in lines if " computed " in line]
    assert len(computed) == 2 and sum(int(line.split(" computed ")[1].split()[0]) for line in computed) == 6


async def test_a_worker_that_raises_has_its_task_rescheduled_and_its_agreement_ended(daemons: Daemons, caplog) -> None:
    """A failed command is raised at the worker's yield; a worker that lets it through ends: its
    WorkerFinished carries it, its agreement ends "Cancelled", its task goes to another worker."""
    caplog.set_level(logging.INFO, logger="requestor.summary")
    addresses = await start_providers(daemons, 2)
    recorder = Recorder()
    failed_once: list[str] = []

    async def worker(ctx: WorkContext, tasks):
        async for task in tasks:
            script = ctx.new_script()
            command = "exit 3" if not failed_once else f"sleep 0.2; echo {task.data}"
            failed_once.append(ctx.provider_name)
            result = script.run("/bin/sh", "-c", command)
            yield script
            task.accept_result(result=(await result).stdout.strip())

    async with golem_for(addresses, recorder) as golem:
        data = [Task(data=n) for n in range(4)]
        done = [t async for t in golem.execute_tasks(worker, data, payload=await payload(), max_workers=2)]
    assert sorted(t.result for t in done) == ["0", "1", "2", "3"]
    failures = [e for e in recorder.of(events.WorkerFinished) if e.exception is not None]
    assert len(failures) == 1 and isinstance(failures[0].exception, CommandExecutionError)
    assert "exit 3" in str(failures[0].exception)
    failed_agreement = failures[0].agreement.id
    sequence = by_agreement(recorder)[failed_agreement]
    assert sequence[-4:] == ["WorkerFinished", "AgreementTerminated", "InvoiceReceived", "InvoiceAccepted"]
    assert "TaskAccepted" not in sequence and "TaskFinished" not in sequence
    ended = [e for e in recorder.of(events.AgreementTerminated) if e.agreement.id == failed_agreement]
    assert ended[0].reason["golem.requestor.code"] == "Cancelled" and ended[0].reason["message"] == "Work cancelled"
    retried = [t for t in done if t.attempts == 2]
    assert len(retried) == 1 and all(t.attempts == 1 for t in done if t not in retried)
    assert recorder.of(events.JobFinished)[0].exception is None
    lines = [JOB_PREFIX.sub("", r.getMessage()) for r in caplog.records if r.name == "requestor.summary"]
    provider = failures[0].provider_name
    assert f"Activity failed on provider '{provider}'; reason: {failures[0].exception}" in lines
    assert f"Activity failed 1 time on provider '{provider}'" in lines


async def test_a_rejected_task_is_retried_on_another_worker(daemons: Daemons) -> None:
    addresses = await start_providers(daemons, 2)
    recorder = Recorder()

    async def worker(ctx: WorkContext, tasks):
        async for task in tasks:
            script = ctx.new_script()
            result = script.run("/bin/sh", "-c", f"sleep 0.2; echo {task.data}")
            yield script
            if task.data == "picky" and task.attempts == 1:
                task.reject_result("not good enough", retry=True)
            else:
                task.accept_result(result=(await result).stdout.strip())

    async with golem_for(addresses, recorder) as golem:
        data = [Task(data="plain"), Task(data="picky"), Task(data="other")]
        done = [t async for t in golem.execute_tasks(worker, data, payload=await payload(), max_workers=2)]
    assert sorted(t.result for t in done) == ["other", "picky", "plain"]
    picky = data[1]
    assert picky.attempts == 2 and picky.status is TaskStatus.ACCEPTED
    rejected = recorder.of(events.TaskRejected)
    assert [(e.task, e.reason) for e in rejected] == [(picky, "not good enough")]
    accepted = [e for e in recorder.of(events.TaskAccepted) if e.task is picky]
    assert accepted[0].agreement.id != rejected[0].agreement.id, "a retry goes to a worker that has not tried it"
    assert repr(rejected[0]).startswith("TaskRejected(job=Job(") and "reason='not good enough'" in repr(rejected[0])


async def test_a_task_out_of_attempts_is_reported_failed_after_the_others(daemons: Daemons, caplog) -> None:
    caplog.set_level(logging.INFO, logger="requestor.summary")
    addresses = await start_providers(daemons, 2)
    recorder = Recorder()

    async def worker(ctx: WorkContext, tasks):
        async for task in tasks:
            script = ctx.new_script()
            result = script.run("/bin/echo", str(task.data))
            yield script
            if task.data == "hopeless":
                task.reject_result("wrong answer", retry=True)
            else:
                task.accept_result(result=(await result).stdout.strip())

    hopeless = Task(data="hopeless", max_attempts=3)
    data = [Task(data="a"), hopeless, Task(data="b")]
    seen = []
    async with golem_for(addresses, recorder) as golem:
        with pytest.raises(TaskFailedError) as raised:
            async for task in golem.execute_tasks(worker, data, payload=await payload(), max_workers=2):
                seen.append(task.result)
    assert sorted(seen) == ["a", "b"], "the other tasks come back first"
    assert raised.value.tasks == [hopeless]
    assert hopeless.status is TaskStatus.FAILED and hopeless.attempts == 3 and hopeless.failure == "rejected: wrong answer"
    assert "Task(id=" in str(raised.value) and "after 3 attempt(s): rejected: wrong answer" in str(raised.value)
    assert [e.task for e in recorder.of(events.TaskFailed)] == [hopeless]
    assert len(recorder.of(events.TaskRejected)) == 3
    assert recorder.of(events.JobFinished)[0].exception is raised.value
    lines = [JOB_PREFIX.sub("", r.getMessage()) for r in caplog.records if r.name == "requestor.summary"]
    assert any(line.startswith("Task failed after 3 attempts, last on provider 'provider-") for line in lines)
    assert any(line.startswith("Job failed, reason: 1 task(s) failed") for line in lines)


async def test_an_endless_async_generator_is_read_as_needed_and_break_ends_the_job(daemons: Daemons) -> None:
    addresses = await start_providers(daemons, 2)
    recorder = Recorder()
    finished = asyncio.Event()  # the job's end, waited for without sleeping

    def consumer(event: events.Event) -> None:
        recorder(event)
        if isinstance(event, events.JobFinished):
            finished.set()

    read = 0

    async def endless():
        nonlocal read
        n = 0
        while True:
            read += 1
            yield Task(data=f"n{n}")
            n += 1

    golem = Golem(budget=10.0, subnet_tag="public", providers=addresses, event_consumer=consumer)
    await golem.start()
    try:
        results = []
        async for task in golem.execute_tasks(echo_worker, endless(), payload=await payload(), max_workers=2):
            results.append(task.result)
            if len(results) == 5:
                break
        await asyncio.wait_for(finished.wait(), 30)  # the job ends by itself once the loop is left
        started = {e.task for e in recorder.of(events.TaskStarted)}
        assert read <= len(started) + 2, "data is read no further than a lookahead of max_workers"
        assert len(started) < 20, "the workers stopped once the loop was left"
        job_end = recorder.of(events.JobFinished)[0]
        assert isinstance(job_end.exception, asyncio.CancelledError), "as yapapi's: a job left early is cancelled"
        agreements = {e.agreement.id for e in recorder.of(events.AgreementConfirmed)}
        assert {e.agreement.id for e in recorder.of(events.AgreementTerminated)} == agreements
        assert recorder.events.index(job_end) > max(recorder.events.index(e) for e in recorder.of(events.AgreementTerminated))
        assert not [e for e in recorder.of(events.WorkerFinished) if e.exception], "a stopped worker has not failed"
    finally:
        await golem.stop()
    assert len(results) == 5 and all(r.startswith("n") for r in results)


async def test_two_jobs_at_once_are_told_apart_by_job_id_and_a_used_id_is_refused(daemons: Daemons) -> None:
    addresses = await start_providers(daemons, 2)
    recorder = Recorder()
    first, second = f"first-{id(recorder)}", f"second-{id(recorder)}"
    async with golem_for(addresses, recorder) as golem:
        package = await payload()

        async def run(job_id: str, words: list[str]) -> list[str]:
            data = [Task(data=w) for w in words]
            return [t.result async for t in golem.execute_tasks(echo_worker, data, package, max_workers=1,
                                                                 job_id=job_id)]

        results = await asyncio.gather(run(first, ["a", "b", "c"]), run(second, ["x", "y"]))
        with pytest.raises(ValueError, match=f"Non unique job id {first}"):
            await run(first, ["again"])
    assert sorted(results[0]) == ["a", "b", "c"] and sorted(results[1]) == ["x", "y"]
    for job_id, words in ((first, {"a", "b", "c"}), (second, {"x", "y"})):
        accepted = [e for e in recorder.of(events.TaskAccepted) if e.job_id == job_id]
        assert {e.task.data for e in accepted} == words
        assert [type(e).__name__ for e in recorder.of(events.JobStarted, events.JobFinished)
                if e.job_id == job_id] == ["JobStarted", "JobFinished"]
    agreements = {job_id: {e.agreement.id for e in recorder.of(events.WorkerStarted) if e.job_id == job_id}
                  for job_id in (first, second)}
    assert not agreements[first] & agreements[second], "each job's workers hold agreements of their own"


async def test_an_attempt_past_its_timeout_stops_its_worker_and_the_task_runs_again(daemons: Daemons) -> None:
    addresses = await start_providers(daemons, 2)
    recorder = Recorder()

    async def worker(ctx: WorkContext, tasks):
        async for task in tasks:
            script = ctx.new_script()
            hang = task.data == "slow" and task.attempts == 1
            result = script.run("/bin/sh", "-c", "sleep 60" if hang else f"echo {task.data}")
            yield script
            task.accept_result(result=(await result).stdout.strip())

    async with golem_for(addresses, recorder) as golem:
        data = [Task(data="slow"), Task(data="quick")]
        done = [t async for t in golem.execute_tasks(worker, data, payload=await payload(), max_workers=2,
                                                       attempt_timeout=timedelta(seconds=1))]
    assert sorted(t.result for t in done) == ["quick", "slow"]
    assert data[0].attempts == 2
    failures = [e for e in recorder.of(events.WorkerFinished) if e.exception is not None]
    assert len(failures) == 1 and isinstance(failures[0].exception, TaskTimeoutError)
    assert failures[0].exception.task is data[0] and "attempt timeout of 1s" in str(failures[0].exception)
    ended = [e for e in recorder.of(events.AgreementTerminated) if e.agreement.id == failures[0].agreement.id]
    assert ended[0].reason["golem.requestor.code"] == "Cancelled"


async def test_a_job_past_its_timeout_says_what_was_left_undone(daemons: Daemons) -> None:
    addresses = await start_providers(daemons, 1)
    recorder = Recorder()

    async def worker(ctx: WorkContext, tasks):
        async for task in tasks:
            script = ctx.new_script()
            result = script.run("/bin/sh", "-c", "sleep 60")
            yield script
            task.accept_result(result=await result)

    golem = golem_for(addresses, recorder)
    await golem.start()
    try:
        data = [Task(data=n) for n in range(3)]
        with pytest.raises(TimeoutError) as raised:
            async for _ in golem.execute_tasks(worker, data, payload=await payload(), max_workers=1,
                                               timeout=timedelta(seconds=2)):
                pass
    finally:
        await golem.stop()
    error = raised.value
    assert isinstance(error, JobTimeoutError)
    assert error.running == [data[0]] and error.waiting == [data[1]] and not error.data_exhausted, \
        "data is read one task ahead of a single worker"
    assert str(error) == (f"Job timed out after 0:00:02; left undone: 1 (ids {data[0].id}) running, "
                          f"1 (ids {data[1].id}) waiting, and data not read to its end")
    assert recorder.of(events.JobFinished)[0].exception is error
    assert [e.reason["golem.requestor.code"] for e in recorder.of(events.AgreementTerminated)] == ["Cancelled"]


async def test_an_exception_in_the_callers_loop_ends_the_job_and_golem_leaves(daemons: Daemons) -> None:
    addresses = await start_providers(daemons, 1)
    recorder = Recorder()
    with pytest.raises(ZeroDivisionError):
        async with golem_for(addresses, recorder) as golem:
            data = (Task(data=n) for n in range(100))
            async for task in golem.execute_tasks(echo_worker, data, payload=await payload(), max_workers=1):
                print(1 / 0, task)
    assert recorder.names(events.JobFinished, events.ShutdownFinished) == ["JobFinished", "ShutdownFinished"]
    assert [e.reason["golem.requestor.code"] for e in recorder.of(events.AgreementTerminated)] == ["Cancelled"]


async def test_a_provider_that_goes_away_mid_task_loses_only_that_attempt(daemons: Daemons) -> None:
    servers = {}
    for name in ("provider-0", "provider-1"):
        server = await daemons.start(name, capacity=Resources(cpu_threads=1, memory_bytes=2 * GIB, storage_bytes=4 * GIB))
        servers[f"127.0.0.1:{server.port}"] = server
    recorder = Recorder()
    stopping: list[asyncio.Task[None]] = []
    gone: list[str] = []

    def consumer(event: events.Event) -> None:
        recorder(event)
        if isinstance(event, events.CommandStarted) and "sleep 30" in repr(event.command) and not stopping:
            gone.append(event.agreement.address)
            stopping.append(asyncio.create_task(servers[event.agreement.address].stop(grace=0)))

    async def worker(ctx: WorkContext, tasks):
        async for task in tasks:
            script = ctx.new_script()
            doomed = task.data == "doomed" and task.attempts == 1
            result = script.run("/bin/sh", "-c", "sleep 30" if doomed else f"echo {task.data}")
            yield script
            task.accept_result(result=(await result).stdout.strip())

    golem = Golem(budget=10.0, subnet_tag="public", providers=list(servers), event_consumer=consumer,
                  unresponsive_after=1.0)
    async with golem:
        data = [Task(data="doomed"), Task(data="fine")]
        done = [t async for t in golem.execute_tasks(worker, data, payload=await payload(), max_workers=2)]
    await stopping[0]
    assert sorted(t.result for t in done) == ["doomed", "fine"]
    assert data[0].attempts == 2 and data[1].attempts == 1
    failures = [e for e in recorder.of(events.WorkerFinished) if e.exception is not None]
    assert len(failures) == 1, "only the worker on the provider that went away failed"
    assert failures[0].agreement.address == gone[0]
    assert isinstance(failures[0].exception, CommandExecutionError) and "ProviderShutdown" in str(failures[0].exception)
    accepted = {e.task.data: e.agreement.address for e in recorder.of(events.TaskAccepted)}
    assert accepted["doomed"] != gone[0]


async def test_a_script_past_its_timeout_raises_batch_timeout_error_at_the_yield(daemons: Daemons) -> None:
    addresses = await start_providers(daemons, 1)
    recorder = Recorder()

    async def worker(ctx: WorkContext, tasks):
        async for task in tasks:
            script = ctx.new_script(timeout=timedelta(seconds=0.5))
            script.run("/bin/sh", "-c", "sleep 30")
            try:
                yield script
            except BatchTimeoutError as exc:
                task.accept_result(result=type(exc).__name__)

    async with golem_for(addresses, recorder) as golem:
        done = [t async for t in golem.execute_tasks(worker, [Task(data=1)], payload=await payload())]
    assert [t.result for t in done] == ["BatchTimeoutError"]
    assert not [e for e in recorder.of(events.WorkerFinished) if e.exception]


async def test_data_that_raises_ends_the_job_with_its_error(daemons: Daemons) -> None:
    addresses = await start_providers(daemons, 1)
    recorder = Recorder()

    def data():
        yield Task(data="one")
        yield Task(data="two")
        raise LookupError("the source ran dry")

    seen = []
    async with golem_for(addresses, recorder) as golem:
        with pytest.raises(LookupError, match="the source ran dry"):
            async for task in golem.execute_tasks(echo_worker, data(), payload=await payload(), max_workers=1):
                seen.append(task.result)
        with pytest.raises(ValueError, match="max_workers and max_attempts must be at least 1"):
            async for task in golem.execute_tasks(echo_worker, [], payload=await payload(), max_attempts=0):
                pass
    assert isinstance(recorder.of(events.JobFinished)[0].exception, LookupError)
    assert all(e.reason["golem.requestor.code"] == "Cancelled" for e in recorder.of(events.AgreementTerminated))


async def test_without_implicit_init_the_worker_deploys_and_starts_itself(daemons: Daemons) -> None:
    addresses = await start_providers(daemons, 1)
    recorder = Recorder()

    async def worker(ctx: WorkContext, tasks):
        script = ctx.new_script()
        script.deploy()
        script.start()
        yield script
        async for task in tasks:
            script = ctx.new_script()
            result = script.run("/bin/echo", task.data)
            yield script
            task.accept_result(result=(await result).stdout.strip())

    async with golem_for(addresses, recorder) as golem:
        done = [t async for t in golem.execute_tasks(worker, [Task(data="hi")], payload=await payload(),
                                                       implicit_init=False)]
    assert [t.result for t in done] == ["hi"]
    sent = [e.script for e in recorder.of(events.ScriptSent)]
    assert [repr(c) for c in sent[0].commands] == ["deploy", "start"] and len(sent) == 2, "no implicit init"
