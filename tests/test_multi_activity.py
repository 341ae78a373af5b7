"""Agreements that hold several activities one after another (Golem's
`golem.srv.caps.multi-activity`): on the provider, against real daemons and containers; and the
requestor's Task API taking a pooled agreement up again for a later worker, as goth's
multi-activity scenario has it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta

import grpc
import pytest

from exeunit.domain.resources import LinearPricing
from exeunit.v1 import activity_pb2 as act
from exeunit.v1 import market_pb2 as mkt
from exeunit.v1.conventions import MULTI_ACTIVITY_CAPABILITY
from requestor import Golem, Task, events
from requestor.log import log_summary
from requestor.payload import vm
from tests.client import ContractClient
from tests.conftest import BASE_IMAGE, Daemons
from tests.daemon_process import Daemon

PRICING = LinearPricing(start_fee=1.0, per_cpu_second=0.1, per_duration_second=0.001)


async def polled(read: Callable[[], Awaitable[mkt.Agreement]], holds: Callable[[mkt.Agreement], bool],
                 what: str, timeout: float = 30.0) -> mkt.Agreement:
    """The agreement as read once `holds` is true of it (read every 20 ms); fails after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        agreement = await read()
        if holds(agreement):
            return agreement
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout:.0f} s: {what}; last seen {agreement}")
        await asyncio.sleep(0.02)


async def get_agreement(client: ContractClient, agreement_id: str) -> mkt.Agreement:
    request = mkt.GetAgreementRequest(agreement_id=agreement_id)
    return (await client.market.GetAgreement(request, metadata=client.metadata)).agreement


async def create_activity(client: ContractClient, agreement_id: str) -> str:
    request = act.CreateActivityRequest(agreement_id=agreement_id)
    return (await client.activity.CreateActivity(request, metadata=client.metadata)).activity_id


async def usage(client: ContractClient, activity_id: str) -> act.GetActivityUsageResponse:
    request = act.GetActivityUsageRequest(activity_id=activity_id)
    return await client.activity.GetActivityUsage(request, metadata=client.metadata)


async def run_on_new_activity(client: ContractClient, agreement_id: str, script: str) -> tuple[str, bytes]:
    """An activity created under the agreement, deployed, started, running `script`, destroyed:
    (its id, the script's output)."""
    activity_id = await create_activity(client, agreement_id)
    run = await client.run_batch(activity_id, [client.deploy(), client.start(), client.sh(script)])
    assert run.succeeded, run.finished
    await client.destroy(activity_id)
    return activity_id, run.stdout(2)


def seconds(duration: object) -> float:
    return duration.seconds + duration.nanos / 1e9  # type: ignore[attr-defined]


async def test_activities_one_after_another_on_one_agreement(daemons: Daemons) -> None:
    server = await daemons.start()
    async with ContractClient(f"127.0.0.1:{server.port}", "r") as client:
        offer = (await client.market.GetOffer(mkt.GetOfferRequest())).offer
        assert MULTI_ACTIVITY_CAPABILITY in offer.capabilities
        agreement_id = await client.agreement(BASE_IMAGE)
        first, said = await run_on_new_activity(client, agreement_id, "echo first")
        assert said == b"first\n"
        assert (await client.state(first)).state == act.ACTIVITY_STATE_TERMINATED
        agreement = await get_agreement(client, agreement_id)
        assert agreement.state == mkt.AGREEMENT_STATE_APPROVED  # destroying an activity leaves its agreement
        second, said = await run_on_new_activity(client, agreement_id, "echo second; hostname")
        assert said.startswith(b"second\n")
        assert second != first
        agreement = await get_agreement(client, agreement_id)
        assert agreement.state == mkt.AGREEMENT_STATE_APPROVED
        assert list(agreement.activity_ids) == [first, second]


async def test_an_agreement_holds_at_most_its_bound_of_activities_naming_the_flag(daemons: Daemons) -> None:
    """Create/destroy without deploying costs the requestor nothing; without a bound one agreement
    would grow its ended activities and its bill for ever (an attacker's review, issue 27)."""
    from exeunit.domain.settings import ActivityLimits

    server = await daemons.start(limits=ActivityLimits(activities_per_agreement=3))
    async with ContractClient(f"127.0.0.1:{server.port}", "r") as client:
        offer = (await client.market.GetOffer(mkt.GetOfferRequest())).offer
        assert offer.limits.activities_per_agreement == 3
        agreement_id = await client.agreement(BASE_IMAGE)
        for _ in range(3):
            await client.destroy(await create_activity(client, agreement_id))
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await create_activity(client, agreement_id)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "(--activities-per-agreement); make a new agreement" in (refused.value.details() or "")
        other = await client.agreement(BASE_IMAGE)  # a new agreement starts afresh
        await client.destroy(await create_activity(client, other))


async def test_a_second_live_activity_is_refused_naming_the_first(daemons: Daemons) -> None:
    server = await daemons.start()
    async with ContractClient(f"127.0.0.1:{server.port}", "r") as client:
        agreement_id = await client.agreement(BASE_IMAGE)
        live = await create_activity(client, agreement_id)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await create_activity(client, agreement_id)
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert refused.value.details() == (f"agreement {agreement_id} already has a live activity {live}; "
                                           "destroy it first")
        await client.destroy(live)
        after = await create_activity(client, agreement_id)  # once it has ended, the next one is taken
        await client.destroy(after)


async def test_an_agreement_is_billed_as_one_with_its_start_fee_once(daemons: Daemons) -> None:
    server = await daemons.start(pricing=PRICING)
    async with ContractClient(f"127.0.0.1:{server.port}", "r") as client:
        agreement_id = await client.agreement(BASE_IMAGE)
        first, _ = await run_on_new_activity(client, agreement_id, "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done")
        second, _ = await run_on_new_activity(client, agreement_id, "echo short")
        used = [await usage(client, a) for a in (first, second)]
        agreement = await get_agreement(client, agreement_id)
    billed = agreement.usage
    cpu = sum(u.cpu_seconds for u in used)
    duration = sum(seconds(u.duration) for u in used)
    assert billed.cpu_seconds == pytest.approx(cpu) and cpu > 0
    assert seconds(billed.duration) == pytest.approx(duration, abs=1e-6) and duration > 0
    assert billed.cost == pytest.approx(PRICING.cost(cpu, duration))  # one start fee, the sums priced
    assert used[0].cost == pytest.approx(PRICING.cost(used[0].cpu_seconds, seconds(used[0].duration)))
    assert used[1].cost == pytest.approx(PRICING.cost(used[1].cpu_seconds, seconds(used[1].duration),
                                                      start_fee=False))  # the fee is on the first only
    assert sum(u.cost for u in used) == pytest.approx(billed.cost)


async def test_the_idle_time_counts_from_the_last_activitys_end(daemons: Daemons) -> None:
    idle = 1.5
    server = await daemons.start(agreement_idle_seconds=idle)
    async with ContractClient(f"127.0.0.1:{server.port}", "r") as client:
        agreement_id = await client.agreement(BASE_IMAGE)
        signed = time.monotonic()
        await run_on_new_activity(client, agreement_id, "echo first")
        # The second activity works for longer than the idle time: the agreement is not idle meanwhile.
        await run_on_new_activity(client, agreement_id, f"sleep {idle + 0.5}")
        ended = time.monotonic()
        assert ended - signed > idle
        assert (await get_agreement(client, agreement_id)).state == mkt.AGREEMENT_STATE_APPROVED
        agreement = await polled(lambda: get_agreement(client, agreement_id),
                                 lambda a: a.state == mkt.AGREEMENT_STATE_TERMINATED, "the agreement ending Idle")
        assert agreement.termination_reason == "Idle"
        assert time.monotonic() - ended >= idle - 0.1  # counted from the last activity's end


async def test_a_restart_keeps_the_agreement_usable_and_its_usage(tmp_path) -> None:
    pricing = ("--price-start", "1.0", "--price-cpu-sec", "0.1", "--price-duration-sec", "0.001")
    first = Daemon(*pricing, state_dir=tmp_path)
    try:
        async with ContractClient(f"127.0.0.1:{first.port}", "r") as client:
            agreement_id = await client.agreement(BASE_IMAGE)
            before_id, _ = await run_on_new_activity(client, agreement_id, "echo before")
            before = (await get_agreement(client, agreement_id)).usage
    finally:
        first.process.kill()
        first.process.wait()
    second = Daemon(*pricing, state_dir=tmp_path)
    try:
        async with ContractClient(f"127.0.0.1:{second.port}", "r") as client:
            kept = await get_agreement(client, agreement_id)
            assert kept.state == mkt.AGREEMENT_STATE_APPROVED
            assert seconds(kept.usage.duration) == pytest.approx(seconds(before.duration), abs=1e-6)
            assert kept.usage.cost == pytest.approx(before.cost)
            after_id, said = await run_on_new_activity(client, agreement_id, "echo after")
            assert said == b"after\n"
            after = await usage(client, after_id)
            agreement = await get_agreement(client, agreement_id)
            assert list(agreement.activity_ids) == [before_id, after_id]
            duration = seconds(before.duration) + seconds(after.duration)
            assert seconds(agreement.usage.duration) == pytest.approx(duration, abs=1e-6)
            cpu = before.cpu_seconds + after.cpu_seconds
            assert agreement.usage.cost == pytest.approx(1.0 + 0.1 * cpu + 0.001 * duration)  # one start fee
            assert after.cost == pytest.approx(0.1 * after.cpu_seconds + 0.001 * seconds(after.duration))
    finally:
        second.stop()


async def one_task_worker(ctx, tasks):
    """As goth's multi-activity requestor's: computes one task and ends (normally)."""
    async for task in tasks:
        script = ctx.new_script()
        result = script.run("/bin/sh", "-c", f"echo {task.data}")
        yield script
        task.accept_result(result=(await result).stdout.strip())
        return


async def test_two_jobs_one_after_another_run_on_one_agreement(daemons: Daemons) -> None:
    server = await daemons.start(pricing=PRICING)
    seen: list[events.Event] = []
    package = await vm.repo(image_tag=BASE_IMAGE, min_mem_gib=0.25, min_storage_gib=0.5)
    async with Golem(budget=10.0, subnet_tag="public", providers=[f"127.0.0.1:{server.port}"],
                     event_consumer=log_summary(seen.append)) as golem:
        results = []
        for job in ("first", "second"):
            async for task in golem.execute_tasks(one_task_worker, [Task(data=f"{job}-{n}") for n in range(2)],
                                                  payload=package, max_workers=1, timeout=timedelta(minutes=2)):
                results.append(task.result)
        assert sorted(results) == ["first-0", "first-1", "second-0", "second-1"]
        assert not [e for e in seen if isinstance(e, events.AgreementTerminated)]  # kept for a next activity
    created = [e for e in seen if isinstance(e, events.AgreementCreated)]
    confirmed = [e for e in seen if isinstance(e, events.AgreementConfirmed)]
    assert len(created) == len(confirmed) == 1, created
    agreement_id = created[0].agreement.id
    activities = [e for e in seen if isinstance(e, events.ActivityCreated)]
    assert len(activities) == 4  # one worker per task: each a new activity on the one agreement
    assert {e.agreement.id for e in activities} == {agreement_id}
    assert len({e.activity.id for e in activities}) == 4
    assert len({e.job_id for e in activities}) == 2  # both jobs
    finished = [e for e in seen if isinstance(e, events.WorkerFinished)]
    assert len(finished) == 4 and all(e.exc_info is None for e in finished)
    assert {e.agreement.id for e in finished} == {agreement_id}
    terminated = [e for e in seen if isinstance(e, events.AgreementTerminated)]
    assert len(terminated) == 1 and terminated[0].agreement.id == agreement_id
    assert terminated[0].reason["golem.requestor.code"] == "Success"
    names = [type(e).__name__ for e in seen]
    assert names.index("AgreementTerminated") > max(i for i, n in enumerate(names) if n == "JobFinished")
    assert names[-1] == "ShutdownFinished"
    async with ContractClient(f"127.0.0.1:{server.port}", None, identity=golem.identity) as client:
        agreement = await get_agreement(client, agreement_id)
    assert agreement.state == mkt.AGREEMENT_STATE_TERMINATED and agreement.termination_reason == "Success"
    assert len(agreement.activity_ids) == 4
    cost = [e for e in seen if isinstance(e, events.InvoiceAccepted)]
    # One start fee (1.0) for the four activities; each activity's usage is read just before it is
    # destroyed, so the provider's bill has a few more milliseconds of duration.
    assert len(cost) == 1 and float(cost[0].amount) == pytest.approx(agreement.usage.cost, abs=0.01)
    assert agreement.usage.cost < 2 * PRICING.start_fee


async def test_a_failed_workers_agreement_ends_and_the_next_worker_signs_anew(daemons: Daemons) -> None:
    server = await daemons.start()
    seen: list[events.Event] = []
    failed_once: list[str] = []

    async def failing_first(ctx, tasks):
        async for task in tasks:
            if not failed_once:
                failed_once.append("failed")
                raise RuntimeError("the first worker fails")
            script = ctx.new_script()
            script.run("/bin/true")
            yield script
            task.accept_result(result="done")

    package = await vm.repo(image_tag=BASE_IMAGE, min_mem_gib=0.25, min_storage_gib=0.5)
    async with Golem(budget=10.0, subnet_tag="public", providers=[f"127.0.0.1:{server.port}"],
                     event_consumer=seen.append) as golem:
        done = [t async for t in golem.execute_tasks(failing_first, [Task(data=1)], payload=package, max_workers=1)]
        assert [t.result for t in done] == ["done"]
    created = [e.agreement.id for e in seen if isinstance(e, events.AgreementCreated)]
    assert len(created) == 2  # the failed worker's agreement was not taken up again
    terminated = {e.agreement.id: e.reason["golem.requestor.code"] for e in seen
                  if isinstance(e, events.AgreementTerminated)}
    assert terminated == {created[0]: "Cancelled", created[1]: "Success"}
