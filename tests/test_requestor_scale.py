"""A requestor that holds up at scale (issue 27): many instances over several `exeunit serve`
daemons all reach running, spread over the providers; a provider that stops answering GetOffer
while instances are placed is asked again, and takes its share once it answers; pending instances
say at INFO what they wait for. The same spread for task workers. Pure rules of requestor.placement
(order of equal offers, what is said and when) are checked without providers."""

from __future__ import annotations

import asyncio
import logging
import math
import signal
from collections import Counter
from collections.abc import Iterator
from types import SimpleNamespace

import pytest

from requestor import Golem, Task, WorkContext, events
from requestor.model import Offer
from requestor.placement import Spread, Unanswered, Waits
from requestor.services import Service, ServiceState
from tests.daemon_process import Daemon
from tests.test_requestor_services import Recorder, base_payload

PROVIDERS = 5
PER_PROVIDER = 6  # each daemon offers 2 host threads x 3, and each activity takes 1 (no preset)
pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def daemons(engine) -> Iterator[list[Daemon]]:
    started: list[Daemon] = []
    try:
        for n in range(PROVIDERS):
            started.append(Daemon("--name", f"provider-{n}", "--cpu-overcommit", "3", "--max-cpu-threads", "2",
                                  "--activity-preset", "none", "--price-start", "0"))
        yield started
    finally:
        for daemon in started:
            daemon.process.send_signal(signal.SIGCONT)
            daemon.stop()


def golem_on(daemons: list[Daemon], recorder: Recorder) -> Golem:
    return Golem(budget=10.0, providers=[f"127.0.0.1:{d.port}" for d in daemons], event_consumer=recorder,
                 unresponsive_after=60.0)  # a provider stopped for seconds keeps its running instances


class Idle(Service):
    """Deployed and started, then idle until stopped."""

    get_payload = staticmethod(base_payload)


def placed_on(instances: list[Service]) -> Counter[str]:
    return Counter(s.provider_name for s in instances if s.state is ServiceState.running)


def all_running(instances: list[Service]) -> bool:
    return all(s.state is ServiceState.running for s in instances)


async def test_instances_all_run_spread_over_equal_providers(daemons: list[Daemon]) -> None:
    recorder = Recorder()
    async with golem_on(daemons, recorder) as golem:
        instances = (await golem.run_service(Idle, num_instances=20)).instances
        await recorder.until(lambda: all_running(instances) or any(s.state is ServiceState.terminated
                                                                   for s in instances), timeout=120)
        assert all_running(instances), Counter(s.state.value for s in instances)
        per_provider = placed_on(instances)
    assert set(per_provider) == {f"provider-{n}" for n in range(PROVIDERS)}, per_provider
    assert max(per_provider.values()) <= math.ceil(20 / PROVIDERS) + 1, per_provider


async def test_a_provider_silent_for_seconds_is_asked_again_and_takes_its_share(
        daemons: list[Daemon], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="requestor.placement")
    recorder = Recorder()
    silent = daemons[0]
    async with golem_on(daemons, recorder) as golem:
        first = (await golem.run_service(Idle, num_instances=PROVIDERS)).instances  # one on each: all answered
        await recorder.until(lambda: all_running(first), timeout=60)
        assert placed_on(first)["provider-0"] == 1
        silent.process.send_signal(signal.SIGSTOP)
        try:
            rest = (await golem.run_service(Idle, num_instances=PROVIDERS * PER_PROVIDER - PROVIDERS)).instances
            await until_said(caplog, "provider-0", timeout=60)
        finally:
            silent.process.send_signal(signal.SIGCONT)
        resumed_at = len(recorder.events)
        await recorder.until(lambda: all_running(rest) or any(s.state is ServiceState.terminated for s in rest),
                             timeout=120)
        assert all_running(rest), Counter(s.state.value for s in rest)
        per_provider = placed_on(first + rest)
        later = [e.agreement.provider_name for e in recorder.events[resumed_at:]
                 if isinstance(e, events.AgreementCreated)]
    assert per_provider == {f"provider-{n}": PER_PROVIDER for n in range(PROVIDERS)}, per_provider
    assert later.count("provider-0") == PER_PROVIDER - 1, later  # placed there once it answered again
    said = waits_said(caplog)
    assert len(said) == len(set(said)), said  # said once for each change, not at every retry
    line = next(s for s in said if "provider-0" in s)
    assert line.startswith("[Job 2] ") and " wait" in line and " for a provider: " in line, line
    assert "unreachable (provider 127.0.0.1:" in line and "did not answer GetOffer" in line, line
    assert "asking again in " in line or "being asked again" in line, line


async def test_instances_wait_while_every_provider_is_silent_and_run_once_one_answers(
        daemons: list[Daemon], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="requestor.placement")
    recorder = Recorder()
    only = daemons[1]
    async with golem_on([only], recorder) as golem:
        first = (await golem.run_service(Idle)).instances  # it answered once in this run
        await recorder.until(lambda: all_running(first), timeout=60)
        only.process.send_signal(signal.SIGSTOP)
        try:
            rest = (await golem.run_service(Idle, num_instances=2)).instances
            await until_said(caplog, "provider-1", timeout=60)
            assert all(s.state is ServiceState.pending for s in rest), [s.state for s in rest]
        finally:
            only.process.send_signal(signal.SIGCONT)
        await recorder.until(lambda: all_running(rest) or any(s.state is ServiceState.terminated for s in rest),
                             timeout=60)
        assert all_running(rest), [(s.state, s.exc_info[1]) for s in rest]


def waits_said(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "requestor.placement" and r.levelno == logging.INFO
            and " for a provider: " in r.getMessage()]


async def until_said(caplog: pytest.LogCaptureFixture, word: str, timeout: float) -> None:
    async def said() -> None:
        while not any(word in line and "unreachable" in line for line in waits_said(caplog)):
            await asyncio.sleep(0.1)  # log records come with no event to wait on

    await asyncio.wait_for(said(), timeout)


async def test_task_workers_spread_over_equal_providers(daemons: list[Daemon]) -> None:
    recorder = Recorder()

    async def worker(ctx: WorkContext, tasks):
        async for task in tasks:
            script = ctx.new_script()
            result = script.run("/bin/sh", "-c", f"sleep 1; echo {task.data}")
            yield script
            task.accept_result(result=(await result).stdout.strip())

    async with golem_on(daemons, recorder) as golem:
        payload = await base_payload()
        done = [t async for t in golem.execute_tasks(worker, [Task(data=n) for n in range(10)], payload=payload,
                                                     max_workers=PROVIDERS)]
    assert sorted(int(t.result) for t in done) == list(range(10))
    first = [e.agreement.provider_name for e in recorder.events if isinstance(e, events.AgreementCreated)][:PROVIDERS]
    assert len(set(first)) == PROVIDERS, first  # the first workers, started together, on as many providers


# requestor.placement's rules, without providers --------------------------------------------------

def offer_of(provider: str) -> Offer:
    return SimpleNamespace(provider_id=provider)  # type: ignore[return-value]  # all that Spread reads


def test_equal_scores_go_to_the_least_loaded_provider_then_at_random() -> None:
    live = ["a", "a", "b"]
    spread = Spread(lambda: live)
    offers = [(False, 1.0, offer_of(p)) for p in ("a", "b", "c", "d")]
    firsts = Counter(spread.order(offers)[0].provider_id for _ in range(200))
    assert set(firsts) == {"c", "d"}, firsts  # neither holds an agreement; either comes first
    with spread.making("c"), spread.making("d"):  # agreements being made count as held ones
        assert spread.load("c") == 1
        orders = [[o.provider_id for o in spread.order(offers)] for _ in range(50)]
        assert all(order[-1] == "a" for order in orders) and {order[0] for order in orders} == {"b", "c", "d"}
    assert spread.load("a") == 2 and spread.load("c") == 0


def test_the_strategy_s_score_and_avoided_providers_come_before_load() -> None:
    spread = Spread(lambda: ["a"] * 5)
    ordered = spread.order([(True, 9.0, offer_of("x")), (False, 2.0, offer_of("a")), (False, 1.0, offer_of("b"))])
    assert [o.provider_id for o in ordered] == ["a", "b", "x"]


def test_a_wait_is_said_once_per_change_of_reasons(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="requestor.placement")
    waits = Waits()
    busy = {"provider-a (h:1)": "no free capacity"}
    slow = Unanswered("provider-b (h:2)", "h:2", "provider h:2 did not answer GetOffer: Deadline Exceeded", 2.0, True)
    with waits.placing("1", workers=False) as first, waits.placing("1", workers=False) as second:
        first({**busy, slow.where: slow.reason}, [slow])
        later = Unanswered(slow.where, slow.address, slow.error, None, True)
        second({**busy, slow.where: slow.reason}, [later])  # the same reasons (a later retry): not said again
        first(busy, [])
    with waits.placing("1", workers=True) as again:  # no placement of the job was waiting: said anew
        again(busy, [])
    said = [r.getMessage() for r in caplog.records]
    assert said == [
        "[Job 1] 1 instance waits for a provider: provider-a (h:1): no free capacity; provider-b (h:2): "
        "unreachable (provider h:2 did not answer GetOffer: Deadline Exceeded), asking again in 2 s",
        "[Job 1] 2 instances wait for a provider: provider-a (h:1): no free capacity",
        "[Job 1] 1 worker waits for a provider: provider-a (h:1): no free capacity",
    ], said
