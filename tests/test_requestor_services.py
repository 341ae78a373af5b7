"""The Service API end to end: real provider daemons, real containers, the state machine's paths."""

from __future__ import annotations

import asyncio
import logging
import re
from decimal import Decimal
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from exeunit.v1.conventions import GIB
from exeunit.domain.resources import LinearPricing, Resources
from requestor import CommandExecutionError, Golem, NoMatchingProviderError, events
from requestor.errors import ActivityTerminatedError, BudgetExceededError, ProviderUnreachableError
from requestor.payload import vm
from requestor.services import Service, ServiceState
from tests.conftest import BASE_IMAGE, Daemons

S = ServiceState


class Recorder:
    """An event consumer that lets a test wait for what it expects, without sleeping."""

    def __init__(self) -> None:
        self.events: list[events.Event] = []
        self._changed = asyncio.Condition()

    def __call__(self, event: events.Event) -> None:
        self.events.append(event)
        asyncio.ensure_future(self._notify())

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def until(self, predicate: Callable[[], bool], timeout: float = 60) -> None:
        async def wait() -> None:
            async with self._changed:
                await self._changed.wait_for(predicate)

        await asyncio.wait_for(wait(), timeout)

    def states(self, service: Service) -> list[ServiceState]:
        changes = [e for e in self.events if isinstance(e, events.ServiceStateChanged) and e.service is service]
        return [changes[0].old, *(e.new for e in changes)] if changes else [service.state]


async def start_provider(daemons: Daemons, name: str = "provider-a", **settings: object):
    """A provider priced so that a default 3-hour agreement fits a budget of 10 (0.36 at most)."""
    settings.setdefault("pricing", LinearPricing(start_fee=0.0, per_cpu_second=0.00001, per_duration_second=0.00002))
    return await daemons.start(name, **settings)


async def base_payload() -> vm.VmPackage:
    return await vm.repo(image_tag=BASE_IMAGE, min_mem_gib=0.25, min_storage_gib=0.5)


def golem_for(*servers, recorder: Recorder, budget: float = 10.0, **kw) -> Golem:
    return Golem(budget=budget, subnet_tag="public", providers=[f"127.0.0.1:{s.port}" for s in servers],
                 event_consumer=recorder, **kw)


class Echo(Service):
    """Starts (default deploy + start), then runs one command and returns."""

    get_payload = staticmethod(base_payload)

    def __init__(self, word: str = "hello") -> None:
        super().__init__()
        self.word = word
        self.outputs: list[str] = []
        self.shutdown_ran = False

    async def run(self):
        script = self._ctx.new_script()
        result = script.run("/bin/sh", "-c", 'echo "$WORD from $(hostname)"', env={"WORD": self.word})
        yield script
        self.outputs.append((await result).stdout)

    async def shutdown(self):
        self.shutdown_ran = True
        async for script in super().shutdown():
            yield script


async def test_run_returning_ends_through_stopping_and_env_reaches_the_process(daemons: Daemons) -> None:
    server = await start_provider(daemons, "provider-a")
    recorder = Recorder()
    async with golem_for(server, recorder=recorder) as golem:
        cluster = await golem.run_service(Echo, instance_params=[{"word": "bonjour"}])
        [instance] = cluster.instances
        assert instance.state is S.pending
        await recorder.until(lambda: instance.state is S.terminated)
        assert recorder.states(instance) == [S.pending, S.starting, S.running, S.stopping, S.terminated]
        assert instance.outputs[0].startswith("bonjour from ")
        assert instance.shutdown_ran and instance.exc_info == (None, None, None)
        assert instance.provider_name == "provider-a"
        assert golem.budget.spent > 0
    assert daemons.containers_of(server) == []


async def test_two_instances_on_two_providers(daemons: Daemons) -> None:
    one_slot = Resources(cpu_threads=1, memory_bytes=GIB, storage_bytes=4 * GIB)
    first = await start_provider(daemons, "provider-a", capacity=one_slot)
    second = await start_provider(daemons, "provider-b", capacity=one_slot)
    recorder = Recorder()
    async with golem_for(first, second, recorder=recorder) as golem:
        cluster = await golem.run_service(Echo, num_instances=2)
        await recorder.until(lambda: all(i.state is S.terminated for i in cluster.instances))
        assert sorted(i.provider_name for i in cluster.instances) == ["provider-a", "provider-b"]
        assert all(i.outputs for i in cluster.instances)


class FailsToStartOnBad(Service):
    get_payload = staticmethod(base_payload)
    resets = 0

    async def start(self):
        async for script in super().start():
            yield script
        script = self._ctx.new_script()
        script.run("/bin/sh", "-c", f'echo "no luck on {self.provider_name}" >&2; test "{self.provider_name}" != bad')
        yield script

    async def reset(self) -> None:
        type(self).resets += 1


async def test_failed_start_respawns_on_another_provider(daemons: Daemons, caplog) -> None:
    """yapapi's INFO lines follow the instance, with its repr (goth's scripts wait for them)."""
    caplog.set_level(logging.INFO, logger="requestor.services.runner")
    bad = await start_provider(daemons, "bad", pricing=LinearPricing(0.0, 0.000001, 0.000001))
    good = await start_provider(daemons, "good")
    recorder = Recorder()
    async with golem_for(bad, good, recorder=recorder) as golem:
        cluster = await golem.run_service(FailsToStartOnBad)
        [instance] = cluster.instances
        await recorder.until(lambda: instance.state is S.running)
        assert instance.provider_name == "good"
        assert recorder.states(instance) == [S.pending, S.starting, S.terminated, S.pending, S.starting, S.running]
        assert FailsToStartOnBad.resets == 1
        failure = next(e for e in recorder.events if isinstance(e, events.CommandExecuted) and not e.success)
        assert failure.provider_name == "bad" and "no luck on bad" in failure.stderr
        cluster.stop()
        await recorder.until(lambda: instance.state is S.terminated)
    said = [r.getMessage() for r in caplog.records
            if r.name == "requestor.services.runner" and r.levelno == logging.INFO and "event=" not in r.getMessage()]
    on = r"on (bad|good) \[ \S+ \]"
    assert [re.fullmatch(pattern, line) is not None for pattern, line in zip(
        [rf"<FailsToStartOnBad starting {on}> commissioned", rf"<FailsToStartOnBad terminated {on}> decommissioned",
         rf"Restarting service <FailsToStartOnBad terminated {on}>", rf"<FailsToStartOnBad starting {on}> commissioned",
         rf"<FailsToStartOnBad terminated {on}> decommissioned"], said)] == [True] * 5 and len(said) == 5, said
    assert [re.search("bad|good", line).group(0) for line in said] == ["bad", "bad", "bad", "good", "good"]


async def test_failed_start_without_respawn_terminates(daemons: Daemons) -> None:
    bad = await start_provider(daemons, "bad")
    recorder = Recorder()
    async with golem_for(bad, recorder=recorder) as golem:
        cluster = await golem.run_service(FailsToStartOnBad, respawn_unstarted_instances=False)
        [instance] = cluster.instances
        await recorder.until(lambda: instance.state is S.terminated)
        assert isinstance(instance.exc_info[1], CommandExecutionError)
        assert recorder.states(instance) == [S.pending, S.starting, S.terminated]


async def test_respawns_that_fail_the_same_way_back_off_and_say_so(daemons: Daemons, caplog) -> None:
    """On its only provider an instance that cannot start fails the same way each time: the first
    respawn is at once, then they wait 1 s, 2 s, ... (it used to spin without a pause)."""
    caplog.set_level(logging.INFO, logger="requestor.services.runner")
    bad = await start_provider(daemons, "bad")
    recorder = Recorder()
    async with golem_for(bad, recorder=recorder) as golem:
        cluster = await golem.run_service(FailsToStartOnBad)
        [instance] = cluster.instances

        def starts() -> list[events.ServiceStateChanged]:
            return [e for e in recorder.events if isinstance(e, events.ServiceStateChanged)
                    and e.service is instance and e.new is S.starting]

        await recorder.until(lambda: len(starts()) >= 4)
        cluster.stop()
        await recorder.until(lambda: instance.state is S.terminated)
    delays = [float(r.getMessage().split("delay=")[1].split("s ")[0]) for r in caplog.records
              if "event=respawn_delayed" in r.getMessage()]
    assert delays[:2] == [1.0, 2.0], delays
    times = [e.timestamp for e in starts()]
    gaps = [(later - earlier).total_seconds() for earlier, later in zip(times, times[1:])]
    assert gaps[1] >= 1.0 and gaps[2] >= 2.0 and gaps[2] > gaps[1], gaps


class FailsInRun(Echo):
    async def run(self):
        script = self._ctx.new_script()
        script.run("/bin/sh", "-c", "echo broken >&2; exit 4")
        yield script


async def test_error_in_run_goes_through_shutdown_and_is_not_respawned(daemons: Daemons) -> None:
    server = await start_provider(daemons, )
    recorder = Recorder()
    async with golem_for(server, recorder=recorder) as golem:
        cluster = await golem.run_service(FailsInRun)
        [instance] = cluster.instances
        await recorder.until(lambda: instance.state is S.terminated)
        assert recorder.states(instance) == [S.pending, S.starting, S.running, S.stopping, S.terminated]
        assert instance.shutdown_ran
        error = instance.exc_info[1]
        assert isinstance(error, CommandExecutionError)
        assert "exit code 4" in str(error) and "broken" in str(error)


class CatchesItsError(Echo):
    async def run(self):
        script = self._ctx.new_script()
        script.run("/bin/false")
        try:
            yield script
        except CommandExecutionError as error:
            self.outputs.append(f"caught: {error.message}")


async def test_handler_can_catch_a_failed_command(daemons: Daemons) -> None:
    server = await start_provider(daemons, )
    recorder = Recorder()
    async with golem_for(server, recorder=recorder) as golem:
        [instance] = (await golem.run_service(CatchesItsError)).instances
        await recorder.until(lambda: instance.state is S.terminated)
        assert instance.outputs == ["caught: exit code 1"]
        assert instance.exc_info == (None, None, None)


class SlowStart(Echo):
    async def start(self):
        async for script in super().start():
            yield script
        script = self._ctx.new_script()
        script.run("/bin/sleep", "60")
        yield script


async def test_stop_while_starting_terminates_without_shutdown(daemons: Daemons) -> None:
    server = await start_provider(daemons, )
    recorder = Recorder()
    async with golem_for(server, recorder=recorder) as golem:
        cluster = await golem.run_service(SlowStart)
        [instance] = cluster.instances
        await recorder.until(lambda: any(isinstance(e, events.CommandStarted) and "sleep" in repr(e.command)
                                         for e in recorder.events))
        cluster.stop()
        await recorder.until(lambda: instance.state is S.terminated)
        assert recorder.states(instance) == [S.pending, S.starting, S.terminated]
        assert not instance.shutdown_ran
    assert daemons.containers_of(server) == []


class Forever(Echo):
    async def run(self):
        while True:
            script = self._ctx.new_script()
            script.run("/bin/sleep", "1")
            yield script


async def test_provider_side_termination_is_noticed_within_seconds(daemons: Daemons, engine) -> None:
    server = await start_provider(daemons, )
    recorder = Recorder()
    async with golem_for(server, recorder=recorder) as golem:
        [instance] = (await golem.run_service(Forever)).instances
        await recorder.until(lambda: instance.state is S.running)
        engine.containers.get(daemons.containers_of(server)[0]).kill()
        await recorder.until(lambda: instance.state is S.terminated, timeout=10)
        error = instance.exc_info[1]
        assert isinstance(error, ActivityTerminatedError) and error.reason == "ContainerDied"
        assert not instance.shutdown_ran  # the activity is gone: no shutdown
        assert recorder.states(instance)[-2:] == [S.running, S.terminated]


async def test_agreement_expiry_terminates_the_instance_with_the_reason(daemons: Daemons) -> None:
    server = await start_provider(daemons, )
    recorder = Recorder()
    async with golem_for(server, recorder=recorder) as golem:
        expiration = datetime.now(timezone.utc) + timedelta(seconds=3)
        [instance] = (await golem.run_service(Forever, expiration=expiration)).instances
        await recorder.until(lambda: instance.state is S.terminated, timeout=20)
        error = instance.exc_info[1]
        assert isinstance(error, ActivityTerminatedError) and error.reason == "AgreementExpired"


async def test_provider_that_stops_answering_makes_the_instance_unresponsive(daemons: Daemons) -> None:
    server = await start_provider(daemons, )
    recorder = Recorder()
    async with golem_for(server, recorder=recorder, unresponsive_after=1.0) as golem:
        [instance] = (await golem.run_service(Forever)).instances
        await recorder.until(lambda: instance.state is S.running)
        await server.server.stop(0)  # the daemon's gRPC endpoint goes away; its containers stay for now
        await recorder.until(lambda: instance.state is S.terminated, timeout=20)
        assert recorder.states(instance)[-3:] == [S.running, S.unresponsive, S.terminated]
        assert isinstance(instance.exc_info[1], ProviderUnreachableError)


async def test_unreachable_provider_is_skipped(daemons: Daemons) -> None:
    server = await start_provider(daemons, "provider-a")
    recorder = Recorder()
    golem = Golem(budget=10.0, subnet_tag="public", providers=["127.0.0.1:1", f"127.0.0.1:{server.port}"],
                  event_consumer=recorder)
    async with golem:
        [instance] = (await golem.run_service(Echo)).instances
        await recorder.until(lambda: instance.state is S.terminated)
        assert instance.provider_name == "provider-a" and instance.exc_info == (None, None, None)
        rejected = [e for e in recorder.events if isinstance(e, events.ProposalRejected) and e.address == "127.0.0.1:1"]
        assert rejected and "unreachable" in rejected[0].reason


async def test_a_demand_no_provider_matches_fails_clearly(daemons: Daemons) -> None:
    server = await start_provider(daemons, "provider-a")
    recorder = Recorder()
    async with golem_for(server, recorder=recorder) as golem:
        payload = await vm.repo(image_tag="no-such-image:1")
        [instance] = (await golem.run_service(Echo, payload=payload)).instances
        await recorder.until(lambda: instance.state is S.terminated)
        error = instance.exc_info[1]
        assert isinstance(error, NoMatchingProviderError)
        assert "provider-a" in str(error) and "does not have image no-such-image:1" in str(error)
        assert recorder.states(instance) == [S.pending, S.terminated]


async def test_budget_refuses_an_agreement_it_cannot_cover(daemons: Daemons) -> None:
    server = await start_provider(daemons, pricing=LinearPricing(start_fee=0.01, per_cpu_second=0.0,
                                                                 per_duration_second=0.0))
    recorder = Recorder()
    async with golem_for(server, recorder=recorder, budget=0.005) as golem:
        [instance] = (await golem.run_service(Echo)).instances
        await recorder.until(lambda: instance.state is S.terminated)
        assert isinstance(instance.exc_info[1], BudgetExceededError)
        assert "raise Golem(budget=...)" in str(instance.exc_info[1])
        assert not any(isinstance(e, events.AgreementCreated) for e in recorder.events)


class Idles(Echo):
    async def run(self):
        await asyncio.Future()
        yield


async def test_the_budget_is_spent_as_work_runs_and_agreements_end_before_it_is_passed(daemons: Daemons) -> None:
    # The daemon's default prices and yapapi's budget=1.0 with a 3-hour agreement: the worst case
    # (every thread busy until expiration) would be 1.30, but the work is paid as it runs.
    fair = await start_provider(daemons, "fair", pricing=LinearPricing(0.0, 0.0001, 0.00002))
    recorder = Recorder()
    async with golem_for(fair, recorder=recorder, budget=1.0) as golem:
        [instance] = (await golem.run_service(Echo)).instances
        await recorder.until(lambda: instance.state is S.terminated)
        assert instance.exc_info[1] is None and instance.outputs
    # A provider whose time is dear: 0.05 a second against a budget of 0.3.
    dear = await start_provider(daemons, "dear", pricing=LinearPricing(0.0, 0.0, 0.05))
    recorder = Recorder()
    async with golem_for(dear, recorder=recorder, budget=0.3) as golem:
        cluster = await golem.run_service(Idles)
        [instance] = cluster.instances
        await recorder.until(lambda: instance.state is S.running)
        await recorder.until(lambda: instance.state is S.terminated, timeout=30)
        error = instance.exc_info[1]
        assert isinstance(error, ActivityTerminatedError) and "budget of 0.3 is spent" in str(error), error
        assert golem.budget.spent <= Decimal("0.3"), golem.budget.spent
        assert golem.budget.spent >= Decimal("0.1")  # it did run for a while
        invoices = [e for e in recorder.events if isinstance(e, events.InvoiceAccepted)]
        assert [e.amount for e in invoices] == [golem.budget.spent]
        later = await golem.run_service(Idles)  # nothing new is agreed once it is spent
        await recorder.until(lambda: later.instances[0].state is S.terminated)
        assert isinstance(later.instances[0].exc_info[1], BudgetExceededError)


class Transfers(Echo):
    def __init__(self, workdir: Path) -> None:
        super().__init__()
        self.workdir = workdir
        self.received: dict[str, object] = {}

    async def run(self):
        source = self.workdir / "local.txt"
        source.write_text("from a file\n")
        script = self._ctx.new_script()
        script.upload_bytes(b"raw bytes", "/golem/input/bytes.bin")
        script.upload_json({"answer": 42}, "/golem/input/data.json")
        script.upload_file(source, "/golem/input/file.txt")
        script.run("/bin/sh", "-c", "cat /golem/input/file.txt /golem/input/bytes.bin > /golem/output/joined.txt")

        async def got_bytes(data: bytes) -> None:
            self.received["bytes"] = data

        async def got_json(data: object) -> None:
            self.received["json"] = data

        script.download_bytes("/golem/input/bytes.bin", got_bytes)
        script.download_json("/golem/input/data.json", got_json)
        downloaded = script.download_file("/golem/output/joined.txt", self.workdir / "joined.txt")
        yield script
        self.received["file"] = (self.workdir / "joined.txt").read_text()
        self.received["file_result"] = (await downloaded).success

        too_small = self._ctx.new_script()
        too_small.download_bytes("/golem/input/bytes.bin", got_bytes, limit=3)
        try:
            yield too_small
        except CommandExecutionError as error:
            self.received["limit"] = error.message


async def test_uploads_and_downloads_of_bytes_json_and_files(daemons: Daemons, tmp_path: Path) -> None:
    server = await start_provider(daemons, )
    recorder = Recorder()
    async with golem_for(server, recorder=recorder) as golem:
        [instance] = (await golem.run_service(Transfers, instance_params=[{"workdir": tmp_path}])).instances
        await recorder.until(lambda: instance.state is S.terminated)
        assert instance.exc_info == (None, None, None)
        assert instance.received["bytes"] == b"raw bytes"
        assert instance.received["json"] == {"answer": 42}
        assert instance.received["file"] == "from a file\nraw bytes"
        assert instance.received["file_result"] is True
        assert "larger than the limit of 3 bytes" in str(instance.received["limit"])


async def test_instance_params_running_out_is_an_error(daemons: Daemons) -> None:
    server = await start_provider(daemons, )
    async with golem_for(server, recorder=Recorder()) as golem:
        with pytest.raises(ValueError, match="depleted after 1 spawned instances"):
            await golem.run_service(Echo, num_instances=2, instance_params=[{"word": "one"}])


class BigOutput(Echo):
    def __init__(self, workdir: Path) -> None:
        super().__init__()
        self.workdir = workdir
        self.results: list[events.CommandExecuted] = []

    async def run(self):
        script = self._ctx.new_script()
        printing = ("/bin/sh", "-c", "head -c 3000000 /dev/zero | tr '\\0' x")
        capped = script.run(*printing, output_limit=1_000_000)
        whole = script.run(*printing, output_limit=None)
        to_file = script.run(*printing, output_limit=0, stdout_to=self.workdir / "out.txt")
        yield script
        self.results = [await capped, await whole, await to_file]


async def test_a_result_says_when_it_kept_less_output_and_a_script_can_have_all_of_it(
    daemons: Daemons, tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    server = await start_provider(daemons)
    recorder = Recorder()
    async with golem_for(server, recorder=recorder) as golem:
        [instance] = (await golem.run_service(BigOutput, instance_params=[{"workdir": tmp_path}])).instances
        await recorder.until(lambda: instance.state is S.terminated)
    capped, whole, to_file = instance.results
    assert len(capped.stdout) == 1_000_000 and capped.stdout_truncated and capped.stdout_dropped == 2_000_000
    assert whole.stdout == "x" * 3_000_000 and not whole.stdout_truncated
    assert to_file.stdout == "" and (tmp_path / "out.txt").read_bytes() == b"x" * 3_000_000
    assert "event=output_truncated" in caplog.text and "output_limit=None" in caplog.text


class AssertsInRun(Echo):
    async def run(self):
        script = self._ctx.new_script()
        script.run("/bin/true")
        yield script
        assert 1 + 1 == 3


class PlainStart(Echo):
    async def start(self):  # a coroutine, not an async generator: a mistake yapapi names with a TypeError
        return None


async def test_handler_mistakes_are_logged_with_their_type_and_traceback(daemons: Daemons, caplog) -> None:
    server = await start_provider(daemons)
    recorder = Recorder()
    caplog.set_level("WARNING")
    async with golem_for(server, recorder=recorder) as golem:
        [failing] = (await golem.run_service(AssertsInRun)).instances
        [plain] = (await golem.run_service(PlainStart, respawn_unstarted_instances=False)).instances
        await recorder.until(lambda: failing.state is S.terminated and plain.state is S.terminated)
    assert isinstance(failing.exc_info[1], AssertionError)
    assert isinstance(plain.exc_info[1], TypeError) and "must be an async generator" in str(plain.exc_info[1])
    unhandled = [r for r in caplog.records if r.getMessage().startswith("Unhandled exception in service")]
    assert {r.exc_info[0] for r in unhandled} == {AssertionError, TypeError}
    assert "assert 1 + 1 == 3" in caplog.text  # the traceback shows the line
    stopping = next(e for e in recorder.events if isinstance(e, events.ServiceStateChanged)
                    and e.service is failing and e.new is S.stopping)
    assert isinstance(stopping.exception, AssertionError)
    from requestor.log import SummaryLogger
    with caplog.at_level("INFO", logger="requestor.summary"):
        SummaryLogger().log(stopping)
    assert "running -> stopping (AssertionError: " in caplog.text
