"""The Task API (`Golem.execute_tasks`) end to end: real provider daemons, real containers."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest

from exeunit.domain.resources import LinearPricing, Resources
from exeunit.v1.conventions import GIB
from requestor import CommandExecutionError, Golem, Task, WorkContext, events
from requestor.errors import JobTimeoutError, TaskFailedError, TaskTimeoutError
from requestor.executor import TaskStatus
from requestor.log import log_summary
from requestor.payload import vm
from tests.conftest import BASE_IMAGE, Daemons


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
        assert sequence[-3:] == ["WorkerFinished", "AgreementTerminated", "InvoiceAccepted"]
        tasks = [n for n in sequence if n.startswith("Task") or n in ("ScriptSent", "CommandExecuted")]
        assert tasks[:3] == ["ScriptSent", "CommandExecuted", "CommandExecuted"], "deploy and start come first"
        for n in range(3, len(tasks), 5):
            assert tasks[n:n + 5] == ["TaskStarted", "ScriptSent", "CommandExecuted", "TaskAccepted", "TaskFinished"]
    assert all(e.reason["golem.requestor.code"] == "Success" for e in recorder.of(events.AgreementTerminated))
    assert not [e for e in recorder.of(events.WorkerFinished) if e.exception]
    lines = [r.getMessage() for r in caplog.records if r.name == "requestor.summary"]
    assert sum(line.startswith("Task started on provider 'provider-") for line in lines) == 6
    assert sum(line.startswith("Task finished by provider 'provider-") for line in lines) == 6
    assert any(line.startswith("Job finished in ") and line.endswith("s") for line in lines)
    computed = [line for line in lines if " computed " in line]
    assert len(computed) == 2 and sum(int(line.split(" computed ")[1].split()[0]) for line in computed) == 6
