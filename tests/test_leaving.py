"""Leaving Golem is bounded (issue 25): whatever a provider does, `async with Golem(...)` ends
within `shutdown_timeout` and says what it gave up on; and the relay's streams end in order, so
nothing of them is left pending to be destroyed (requestor.leaving, requestor.relay)."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import time
from typing import Any

import pytest

from exeunit.testing.hosts import SimulatedLan
from requestor import Golem, events
from requestor.client import ProviderClient
from requestor.client.identity import RequestorIdentity
from requestor.relay import Relay
from requestor.services import ServiceState
from tests.conftest import Daemons
from tests.daemon_process import Daemon
from tests.test_requestor_services import Forever, Recorder, golem_for, start_provider
from tests.waiting import until

S = ServiceState
LIMIT = 6.0  # shutdown_timeout of these tests: handlers 3 s, agreements' end until 5 s, the rest by 6 s
SLACK = 1.0  # the loop's own scheduling, on a loaded machine


def gave_up(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "event=shutdown_gave_up" in r.getMessage()]


def links_lost(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "event=relay_link_lost" in r.getMessage()]


async def leave_after(fault: str, simulated_lan: SimulatedLan, provider_daemons: Any) -> tuple[float, Any, str, Any]:
    """An instance running on a provider on another host (TLS, pinned); then the fault, then
    Golem's exit. Returns how long the exit took, the instance, its agreement and the provider."""
    provider = provider_daemons(simulated_lan.add_host("pa"))
    recorder = Recorder()
    golem = Golem(budget=10.0, providers=[provider.pinned_address], event_consumer=recorder, shutdown_timeout=LIMIT)
    await golem.start()
    try:
        [instance] = (await golem.run_service(Forever)).instances
        await recorder.until(lambda: instance.state is S.running)
        if fault == "holds the connection":  # the process keeps its socket and answers nothing, not even pings
            provider.process.send_signal(signal.SIGSTOP)
        else:
            provider.host.link_down()
        began = time.monotonic()
        await golem.stop()
        took = time.monotonic() - began
    finally:
        provider.process.send_signal(signal.SIGCONT)
        provider.host.link_up()
        if golem.operative:
            await golem.stop()
    [agreement] = {e.agreement.id for e in recorder.events if isinstance(e, events.AgreementCreated)}
    return took, instance, agreement, provider


@pytest.mark.parametrize("fault", ["holds the connection", "vanishes"])
async def test_leaving_golem_ends_in_the_stated_time_and_says_what_it_gave_up(
        fault: str, simulated_lan: SimulatedLan, provider_daemons: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="requestor")
    took, instance, agreement, provider = await leave_after(fault, simulated_lan, provider_daemons)
    assert took < LIMIT + SLACK, f"leaving took {took:.1f}s; the limit is {LIMIT}s"
    assert instance.state is S.terminated
    said = gave_up(caplog)
    for step in ("shutdown_handler", "terminate_agreement"):
        assert any(f"step={step}" in m and provider.provider_id in m and agreement in m for m in said), (step, said)


class SlowToShutDown(Forever):
    async def shutdown(self):
        script = self._ctx.new_script()
        script.run("/bin/sleep", "60")  # longer than Golem has to leave
        yield script


async def test_a_shutdown_handler_longer_than_the_time_is_cut_and_the_agreement_still_ends(
        daemons: Daemons, caplog: pytest.LogCaptureFixture) -> None:
    server = await start_provider(daemons)
    recorder = Recorder()
    golem = golem_for(server, recorder=recorder, shutdown_timeout=LIMIT)
    async with golem:
        [instance] = (await golem.run_service(SlowToShutDown)).instances
        await recorder.until(lambda: instance.state is S.running)
        began = time.monotonic()
    took = time.monotonic() - began
    assert took < LIMIT + SLACK, f"leaving took {took:.1f}s; the limit is {LIMIT}s"
    said = gave_up(caplog)
    assert len(said) == 1 and "step=shutdown_handler" in said[0], said  # the provider answered the rest
    [ended] = [e for e in recorder.events if isinstance(e, events.AgreementTerminated)]
    assert ended.reason["message"] == "Finished"
    assert daemons.containers_of(server) == []  # the provider ended the agreement, and its container


async def test_a_relay_link_to_a_provider_that_went_away_leaves_nothing_pending(
        tmp_path: Any, caplog: pytest.LogCaptureFixture) -> None:
    """Each failed RelayFrames attempt used to leave grpc's request-iterator task waiting on the
    link's queue (one more a second while the provider is away); once the queue was dropped they
    were destroyed pending, and their generators' aclose() failed as 'already running'."""
    caplog.set_level(logging.DEBUG, logger="requestor.relay")
    reported: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _, context: reported.append(context))
    daemon = Daemon()
    client = ProviderClient(f"127.0.0.1:{daemon.port}", RequestorIdentity.load(tmp_path / "key.pem"))
    relay = Relay()
    try:
        await client.connect()
        assert client.provider_id is not None
        relay.ensure(client.provider_id, client)
        before = asyncio.all_tasks()
        daemon.process.kill()
        daemon.process.wait()
        await until(lambda: len(links_lost(caplog)) >= 3,  # three attempts at least, each failing
                    lambda: f"{len(links_lost(caplog))} failed relay attempts: {links_lost(caplog)}", timeout=15)
        assert len(asyncio.all_tasks() - before) <= 1, [t.get_coro() for t in asyncio.all_tasks() - before]
        await relay.close(timeout=2.0)
        await client.close()
        await asyncio.sleep(0.1)
        assert asyncio.all_tasks() == {asyncio.current_task()}, [t.get_coro() for t in asyncio.all_tasks()]
        gc.collect()
        await asyncio.sleep(0.1)
        assert not reported, [context.get("message") for context in reported]
    finally:
        loop.set_exception_handler(None)
        daemon.stop()
