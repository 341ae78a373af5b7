"""The activity lifecycle against a real daemon and real containers."""

from __future__ import annotations

import asyncio
import os
import time

import grpc
import pytest

from exeunit.v1 import activity_pb2 as act
from tests.client import ContractClient
from tests.conftest import BASE_IMAGE, Daemons


async def test_whole_lifecycle_deploy_start_run_terminate(client: ContractClient, daemons: Daemons, provider) -> None:
    activity_id = await client.new_activity(BASE_IMAGE)
    assert (await client.state(activity_id)).state == act.ACTIVITY_STATE_NEW

    run = await client.run_batch(activity_id, [client.deploy()])
    assert run.succeeded
    assert (await client.state(activity_id)).state == act.ACTIVITY_STATE_DEPLOYED
    assert len(daemons.containers_of(provider)) == 1

    run = await client.run_batch(activity_id, [client.start(), client.run("/bin/echo", "hello", "world")])
    assert run.succeeded
    assert run.stdout(1) == b"hello world\n"
    assert (await client.state(activity_id)).state == act.ACTIVITY_STATE_READY

    run = await client.run_batch(activity_id, [client.terminate()])
    assert run.succeeded
    status = await client.state(activity_id)
    assert status.state == act.ACTIVITY_STATE_TERMINATED
    assert status.reason == "Requested"
    assert daemons.containers_of(provider) == []


async def test_events_come_in_order_started_output_finished(client: ContractClient, ready: str) -> None:
    run = await client.run_batch(ready, [client.sh("echo out; echo err >&2"), client.run("/bin/true")])
    kinds = [(e.command_index, e.WhichOneof("kind")) for e in run.events]
    assert kinds[0] == (0, "started")
    assert kinds[-1][1] == "batch_finished"
    assert [e.sequence for e in run.events] == list(range(len(run.events)))
    first_finished = kinds.index((0, "finished"))
    assert {(0, "stdout"), (0, "stderr")} <= set(kinds[:first_finished])
    assert kinds[first_finished + 1 :] == [(1, "started"), (1, "finished"), (1, "batch_finished")]
    assert run.stdout(0) == b"out\n" and run.stderr(0) == b"err\n"


async def test_env_and_workdir_reach_the_process(client: ContractClient, ready: str) -> None:
    run = await client.run_batch(
        ready,
        [client.sh('printf "%s|%s|" "$GREETING" "$EMPTY"; pwd', env={"GREETING": "hi there", "EMPTY": ""},
                   workdir="/golem/output")],
    )
    assert run.succeeded
    assert run.stdout() == b"hi there||/golem/output\n"
    # the next command without a workdir starts where the image says (its WORKDIR), as before
    again = await client.run_batch(ready, [client.run("/bin/pwd")])
    assert again.stdout() == b"/golem/work\n"


async def test_batch_stops_at_first_failure(client: ContractClient, ready: str) -> None:
    run = await client.run_batch(ready, [client.run("/bin/true"), client.sh("exit 3"), client.run("/bin/echo", "never")])
    assert not run.succeeded
    assert [f.success for f in run.finished] == [True, False]
    assert run.finished[1].return_code == 3
    assert run.finished[1].message == "exit code 3"
    assert b"never" not in run.stdout()
    result = await client.get_batch(ready, run.batch_id)
    assert [r.state for r in result.results] == [
        act.COMMAND_STATE_SUCCEEDED, act.COMMAND_STATE_FAILED, act.COMMAND_STATE_SKIPPED,
    ]
    assert result.state == act.BATCH_STATE_FAILED


async def test_missing_entry_point_fails_with_a_message(client: ContractClient, ready: str) -> None:
    run = await client.run_batch(ready, [client.run("/no/such/program")])
    assert not run.succeeded
    assert run.finished[0].return_code == 127 or run.finished[0].return_code == 126
    assert "not found" in run.finished[0].message or "not executable" in run.finished[0].message


async def test_timeout_kills_the_command(client: ContractClient, ready: str) -> None:
    run = await client.run_batch(ready, [client.sh("echo before; sleep 30", timeout=1)])
    assert not run.succeeded
    assert run.finished[0].message == "timed out after 1s and was killed"
    assert run.stdout() == b"before\n"


async def test_background_child_holding_stdout_does_not_hang_the_command(client: ContractClient, ready: str) -> None:
    run = await client.run_batch(ready, [client.sh("(while true; do date > /golem/work/d; sleep 1; done) & echo started")])
    assert run.succeeded
    assert run.stdout() == b"started\n"
    check = await client.run_batch(ready, [client.run("/bin/cat", "/golem/work/d")])
    assert check.succeeded and check.stdout()


async def test_same_batch_id_does_not_run_twice(client: ContractClient, ready: str) -> None:
    commands = [client.sh("echo x >> /golem/work/count")]
    first = await client.exec(ready, commands, batch_id="once-1")
    again = await client.exec(ready, commands, batch_id="once-1")
    assert (first.batch_id, first.created) == ("once-1", True)
    assert (again.batch_id, again.created) == ("once-1", False)
    async for _ in client.events(ready, "once-1"):
        pass
    count = await client.run_batch(ready, [client.run("/bin/cat", "/golem/work/count")])
    assert count.stdout() == b"x\n"
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client.exec(ready, [client.run("/bin/true")], batch_id="once-1")
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS


async def test_exec_stream_submits_and_streams_in_one_call(client: ContractClient, ready: str) -> None:
    request = act.ExecRequest(activity_id=ready, commands=[client.sh("echo once >> /golem/work/n; cat /golem/work/n")],
                              batch_id="stream-1")
    events = [e async for e in client.activity.ExecStream(request, metadata=client.metadata)]
    assert [e.sequence for e in events] == list(range(len(events)))
    assert [e.WhichOneof("kind") for e in events] == ["started", "stdout", "finished", "batch_finished"]
    # idempotent like Exec: the same batch_id streams the same batch again, without running it
    again = [e async for e in client.activity.ExecStream(request, metadata=client.metadata)]
    assert again == events
    with pytest.raises(grpc.aio.AioRpcError) as err:
        bad = act.ExecRequest(activity_id=ready, commands=[client.run("/bin/true", workdir="relative")])
        [e async for e in client.activity.ExecStream(bad, metadata=client.metadata)]
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "absolute path" in err.value.details()


async def test_replay_from_a_sequence_number_after_disconnect(client: ContractClient, ready: str) -> None:
    batch_id = (await client.exec(ready, [client.sh("for i in 1 2 3 4 5; do echo line$i; sleep 0.2; done")])).batch_id
    seen = []
    async for event in client.events(ready, batch_id):
        seen.append(event)
        if event.WhichOneof("kind") == "stdout":
            break  # the client drops the stream mid-command
    resumed = [e async for e in client.events(ready, batch_id, from_sequence=seen[-1].sequence + 1)]
    whole = seen + resumed
    assert [e.sequence for e in whole] == list(range(len(whole)))
    output = b"".join(e.stdout.data for e in whole if e.WhichOneof("kind") == "stdout")
    assert output == b"".join(b"line%d\n" % i for i in range(1, 6))
    # and from the very start, once finished
    again = [e async for e in client.events(ready, batch_id, from_sequence=0)]
    assert [e.sequence for e in again] == list(range(len(whole)))


async def test_two_activities_run_side_by_side(client: ContractClient, daemons: Daemons, provider) -> None:
    first, second = await asyncio.gather(client.new_activity(BASE_IMAGE), client.new_activity(BASE_IMAGE))
    setup = [client.deploy(), client.start()]
    assert all(r.succeeded for r in await asyncio.gather(client.run_batch(first, setup), client.run_batch(second, setup)))
    assert len(daemons.containers_of(provider)) == 2
    # A long command in the first activity does not hold up the second one.
    long_batch = (await client.exec(first, [client.sh("echo busy > /golem/work/mine; echo up; sleep 60")])).batch_id
    async for event in client.events(first, long_batch):
        if event.WhichOneof("kind") == "stdout":
            break
    other = await client.run_batch(second, [client.sh("cat /golem/work/mine 2>/dev/null || echo separate")])
    assert other.succeeded and other.stdout() == b"separate\n"  # volumes are per activity
    assert (await client.get_batch(first, long_batch)).state == act.BATCH_STATE_RUNNING
    await asyncio.gather(client.destroy(first), client.destroy(second))
    assert (await client.get_batch(first, long_batch)).state == act.BATCH_STATE_FAILED
    assert daemons.containers_of(provider) == []


async def test_destroy_is_idempotent_and_removes_the_container_and_its_volumes(
    client: ContractClient, ready: str, daemons: Daemons, provider, engine
) -> None:
    [container_id] = daemons.containers_of(provider)
    mounts = [m for m in engine.containers.get(container_id).attrs["Mounts"] if m["Destination"].startswith("/golem")]
    assert sorted(m["Destination"] for m in mounts) == ["/golem/input", "/golem/output", "/golem/work"]
    assert all(m["Type"] == "bind" and m["Source"].startswith(str(provider.provider.storage.base)) for m in mounts)
    filesystem = str(provider.provider.storage.base / ready / "fs")
    assert os.path.ismount(filesystem)
    first = await client.destroy(ready)
    second = await client.destroy(ready)
    assert first.state == second.state == act.ACTIVITY_STATE_TERMINATED
    assert daemons.containers_of(provider) == []
    assert not os.path.exists(filesystem) and provider.provider.storage.leftovers() == []
    with open("/proc/self/mountinfo") as mountinfo:
        assert filesystem not in mountinfo.read()


async def test_container_death_is_noticed(client: ContractClient, ready: str, engine, daemons: Daemons, provider) -> None:
    watch = client.activity.WatchActivity(act.WatchActivityRequest(activity_id=ready), metadata=client.metadata)
    first = await anext(aiter(watch))
    assert first.state == act.ACTIVITY_STATE_READY
    engine.containers.get(daemons.containers_of(provider)[0]).kill()
    last = None
    async for status in watch:
        last = status
    assert last is not None and last.state == act.ACTIVITY_STATE_TERMINATED
    assert last.reason == "ContainerDied"


async def test_usage_counts_cpu_and_duration(client: ContractClient, ready: str) -> None:
    await client.run_batch(ready, [client.sh("i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done")])
    usage = await client.activity.GetActivityUsage(act.GetActivityUsageRequest(activity_id=ready), metadata=client.metadata)
    assert usage.cpu_seconds > 0.05
    assert usage.duration.ToTimedelta().total_seconds() > 0
    # linear pricing of the test provider: 0.01 + 0.1 * cpu + 0.001 * duration
    expected = 0.01 + 0.1 * usage.cpu_seconds + 0.001 * usage.duration.ToTimedelta().total_seconds()
    assert usage.cost == pytest.approx(expected, rel=1e-6)


def test_usage_read_from_the_cgroup_agrees_with_the_engines_stats(engine) -> None:
    """Usage is read from the container's cgroup files (no work for the engine, which a budget
    polling every few seconds would otherwise give it); they must say what the engine says."""
    from exeunit.runtime.docker.cgroups import cgroup_usage

    # half a second of the process's own CPU time (however busy the machine), then it says so and idles
    burn = ("import time\nwhile time.process_time() < 0.5: pass\nprint('burnt', flush=True)\ntime.sleep(30)")
    container = engine.containers.run(BASE_IMAGE, ["python3", "-c", burn], detach=True, network_mode="none",
                                      labels={"io.exeunit.test": "1"})
    try:
        deadline = time.monotonic() + 60
        while b"burnt" not in container.logs():  # the burn's end: its CPU time counted, no more coming
            container.reload()
            assert container.status == "running", f"the burner ended: {container.logs()!r}"
            assert time.monotonic() < deadline, "the container did not burn half a CPU second in 60 s"
            time.sleep(0.05)
        ours = cgroup_usage(container.id)
        stats = container.stats(stream=False, one_shot=True)
        assert ours is not None, "no cgroup layout of this engine is known"
        engine_cpu = stats["cpu_stats"]["cpu_usage"]["total_usage"] / 1e9
        assert 0.3 < ours.cpu_seconds and abs(ours.cpu_seconds - engine_cpu) < 0.05
        assert abs(ours.memory_bytes - stats["memory_stats"]["usage"]) < 1 << 20
    finally:
        container.remove(force=True, v=True)


async def test_the_test_counters_runtime_counts_what_sleep_waits_and_prices_it(daemons: Daemons) -> None:
    from exeunit.v1.conventions import CUSTOM_COUNTER, DOCKER_VM_RUNTIME, TEST_COUNTERS_RUNTIME
    from exeunit.domain.resources import LinearPricing
    from exeunit.v1 import market_pb2 as mkt
    from tests.client import ContractClient, expiration

    provider = await daemons.start(
        runtimes=(DOCKER_VM_RUNTIME, TEST_COUNTERS_RUNTIME),
        pricing=LinearPricing(0.0, 0.0, 0.0, per_unit={CUSTOM_COUNTER: 2.0}),
    )
    plain = await daemons.start(name="plain")
    async with ContractClient(f"127.0.0.1:{provider.port}", "r") as client:
        offer = (await client.market.GetOffer(mkt.GetOfferRequest(), metadata=client.metadata)).offer
        assert list(offer.runtimes) == ["docker-vm", "test-counters"] and offer.pricing.per_unit[CUSTOM_COUNTER] == 2.0
        demand = mkt.Demand(runtime="test-counters", subnet_tag="public", expiration=expiration())  # no image
        agreement = (await client.propose(demand)).agreement
        assert agreement.demand.image.tag == "exeunit-base:latest"  # the runtime brings its image
        created = await client.activity.CreateActivity(act.CreateActivityRequest(agreement_id=agreement.agreement_id),
                                                       metadata=client.metadata)
        activity_id = created.activity_id
        started = time.monotonic()
        run = await client.run_batch(activity_id, [client.deploy(), client.start(), client.run("sleep", "300"),
                                                   client.run("/bin/echo", "real commands run as usual")])
        assert run.succeeded and run.stdout(3) == b"real commands run as usual\n"
        assert time.monotonic() - started < 5  # 300 milliseconds, not seconds
        bad = await client.run_batch(activity_id, [client.run("sleep", "soon")])
        assert "whole number of milliseconds" in bad.finished[0].message
        usage = await client.activity.GetActivityUsage(act.GetActivityUsageRequest(activity_id=activity_id),
                                                       metadata=client.metadata)
        assert usage.counters[CUSTOM_COUNTER] == pytest.approx(0.3)
        assert usage.cost == pytest.approx(0.6)
        refused = await client.propose(mkt.Demand(runtime="wasmtime", subnet_tag="public", expiration=expiration()))
        assert refused.refusal.reason == mkt.REFUSAL_REASON_RUNTIME_MISMATCH
    async with ContractClient(f"127.0.0.1:{plain.port}", "r") as client:
        refused = await client.propose(mkt.Demand(runtime="test-counters", subnet_tag="public", expiration=expiration()))
        assert refused.refusal.reason == mkt.REFUSAL_REASON_RUNTIME_MISMATCH
        assert "this provider runs docker-vm" in refused.refusal.message


KILL_KEEP_ALIVE = ("import os\nfor p in os.listdir('/proc'):\n"
                   "    if p.isdigit() and open('/proc/%s/cmdline' % p, 'rb').read() == b'/bin/sh\\0':\n"
                   "        os.kill(int(p), 9)")


async def test_a_container_that_stops_itself_keeps_the_cpu_it_used_in_its_bill(daemons) -> None:
    """Killing the keep-alive from inside stops the container; the engine then reads its CPU as 0,
    which must not erase what it used (an attacker's review, issue 27: billed zero CPU)."""
    server = await daemons.start()
    async with ContractClient(f"127.0.0.1:{server.port}", "r") as client:
        activity_id = await client.ready_activity(BASE_IMAGE)
        burn = await client.run_batch(activity_id, [client.run(
            "python3", "-c", "import time\nwhile time.process_time() < 0.5: pass")])
        assert burn.succeeded
        request = act.GetActivityUsageRequest(activity_id=activity_id)
        used = (await client.activity.GetActivityUsage(request, metadata=client.metadata)).cpu_seconds
        assert used >= 0.4
        await client.run_batch(activity_id, [client.run("python3", "-c", KILL_KEEP_ALIVE)])
        for _ in range(300):  # until the daemon saw the container die
            if (await client.state(activity_id)).state == act.ACTIVITY_STATE_TERMINATED:
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the container whose keep-alive was killed is not seen terminated in 15 s")
        billed = (await client.activity.GetActivityUsage(request, metadata=client.metadata)).cpu_seconds
        assert billed >= used, f"billed {billed} CPU seconds after using {used}"
