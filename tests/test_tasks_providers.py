"""The Task API and its providers: what an activity is granted, and a provider that keeps failing
a job's tasks (real provider daemons, real containers; helpers from tests/test_tasks.py)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import pytest

from exeunit.domain.resources import LinearPricing, Resources
from exeunit.v1.conventions import GIB
from requestor import CommandExecutionError, Task, WorkContext, events
from requestor.errors import NoMatchingProviderError
from requestor.executor.job import MAX_PROVIDER_FAILURES
from tests.conftest import Daemons
from tests.test_tasks import Recorder, golem_for, payload

PRICING = LinearPricing(start_fee=0.0, per_cpu_second=0.00001, per_duration_second=0.00002)


async def test_a_task_sees_the_memory_its_provider_grants_above_the_demand(daemons: Daemons) -> None:
    """The payload asks 0.25 GiB; the provider's preset grants 1 GiB: the offer says so, the
    agreement states it, and the task's container has it."""
    server = await daemons.start("provider-0", pricing=PRICING, activity_preset=Resources(1, GIB, 2 * GIB),
                                 capacity=Resources(cpu_threads=1, memory_bytes=2 * GIB, storage_bytes=4 * GIB))
    seen: dict[str, object] = {}

    async def worker(ctx: WorkContext, tasks: AsyncIterator[Task]):
        offer = ctx.handle.offer
        seen["offer"] = (offer.activity_cpu_threads, offer.activity_memory_bytes, offer.activity_storage_bytes)
        agreement = await ctx.handle.client.agreement(ctx.handle.agreement.id)
        seen["agreement"] = (agreement.cpu_threads, agreement.memory_bytes, agreement.storage_bytes)
        async for task in tasks:
            script = ctx.new_script()
            result = script.run("/bin/sh", "-c", "cat /sys/fs/cgroup/memory.max 2>/dev/null"
                                                 " || cat /sys/fs/cgroup/memory/memory.limit_in_bytes")  # v2 or v1
            yield script
            task.accept_result(result=(await result).stdout.strip())

    async with golem_for([f"127.0.0.1:{server.port}"], Recorder()) as golem:
        done = [t async for t in golem.execute_tasks(worker, [Task(data=0)], payload=await payload())]
    assert seen == {"offer": (1, GIB, 2 * GIB), "agreement": (1, GIB, 2 * GIB)}
    assert [t.result for t in done] == [str(GIB)]


async def providers(daemons: Daemons, *names: str) -> list[str]:
    """Providers of one activity each, named as given."""
    addresses = []
    for name in names:
        server = await daemons.start(name, pricing=PRICING, capacity=Resources(1, 2 * GIB, 4 * GIB))
        addresses.append(f"127.0.0.1:{server.port}")
    return addresses


async def fails_on_bad(ctx: WorkContext, tasks: AsyncIterator[Task]):
    """Every task's command fails in the containers of the provider named 'bad' (at once), and
    takes half a second elsewhere: the job keeps trying 'bad' while the other one is busy."""
    async for task in tasks:
        script = ctx.new_script()
        result = script.run("/bin/sh", "-c", "exit 3" if ctx.provider_name == "bad" else "sleep 0.5; echo ok")
        yield script
        task.accept_result(result=((await result).stdout or "").strip())


def workers_on(recorder: Recorder, name: str) -> list[events.WorkerFinished]:
    return [e for e in recorder.of(events.WorkerFinished) if e.agreement.provider_name == name]


async def test_a_provider_that_keeps_failing_a_jobs_tasks_gets_no_more_workers_of_it(daemons: Daemons, caplog) -> None:
    caplog.set_level(logging.INFO, logger="requestor.executor.job")
    addresses = await providers(daemons, "bad", "good")
    recorder = Recorder()
    async with golem_for(addresses, recorder) as golem:
        data = [Task(data=n) for n in range(8)]
        done = [t async for t in golem.execute_tasks(fails_on_bad, data, payload=await payload(), max_workers=2,
                                                     max_attempts=MAX_PROVIDER_FAILURES + 2)]
    assert sorted(t.data for t in done) == list(range(8)) and {t.result for t in done} == {"ok"}
    bad = workers_on(recorder, "bad")
    assert len(bad) == MAX_PROVIDER_FAILURES, "no worker on 'bad' after its third failure"
    assert all(isinstance(e.exception, CommandExecutionError) for e in bad)
    assert not [e for e in workers_on(recorder, "good") if e.exception]
    accepted = {e.agreement.provider_name for e in recorder.of(events.TaskAccepted)}
    assert accepted == {"good"}
    said = [r.getMessage() for r in caplog.records if "excluded" in r.getMessage()]
    assert len(said) == 1 and said[0].startswith(f"Provider 'bad' excluded from job ") and \
        f"after {MAX_PROVIDER_FAILURES} failed workers; last error: CommandExecutionError" in said[0]
    assert recorder.of(events.JobFinished)[0].exception is None


async def test_a_job_whose_every_provider_is_excluded_fails_naming_them(daemons: Daemons) -> None:
    addresses = await providers(daemons, "bad")
    async with golem_for(addresses, Recorder()) as golem:
        with pytest.raises(NoMatchingProviderError) as raised:
            async for _ in golem.execute_tasks(fails_on_bad, [Task(data=0)], payload=await payload(),
                                               max_attempts=MAX_PROVIDER_FAILURES + 2):
                pass
    message = str(raised.value)
    assert f"bad ({addresses[0]}): excluded from job " in message, message
    assert f"after {MAX_PROVIDER_FAILURES} failed workers (the last: CommandExecutionError" in message, message
