"""The Task API and its providers: what an activity is granted, and a provider that keeps failing
a job's tasks (real provider daemons, real containers; helpers from tests/test_tasks.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator

from exeunit.domain.resources import LinearPricing, Resources
from exeunit.v1.conventions import GIB
from requestor import Task, WorkContext
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
