"""Networks that span providers (issue 20), end to end on simulated hosts: instances of one
requestor network on two providers reach each other by address, TCP and UDP, directly when the
providers' hosts reach each other and relayed through the requestor when they cannot."""

from __future__ import annotations

import asyncio
import subprocess

from exeunit.testing.hosts import SimulatedLan
from requestor import Golem
from tests.test_requestor_networks import EchoServer, Prober
from tests.test_requestor_services import Recorder
from requestor.services import ServiceState

S = ServiceState
ONE_INSTANCE_EACH = ("--max-cpu-threads", "1")  # the default allotment is a thread: one activity per provider


async def run_pair(providers, recorder: Recorder, base: str, direct: bool = False):
    """An echo server on one provider and a prober on the other, on one network; the prober's lines."""
    async with Golem(budget=10.0, providers=[p.pinned_address for p in providers], event_consumer=recorder) as golem:
        network = await golem.create_network(f"{base}.1/24")
        servers = await golem.run_service(EchoServer, network=network, network_addresses=[f"{base}.5"])
        [server] = servers.instances
        await recorder.until(lambda: server.state is S.running)
        probers = await golem.run_service(Prober, network=network, instance_params=[{"target": f"{base}.5"}])
        [prober] = probers.instances
        await recorder.until(lambda: bool(prober.lines) or prober.state is S.terminated, timeout=60)
        placed = {server.provider_id, prober.provider_id}
        lines = list(prober.lines)
        for _ in range(100 if direct else 0):  # the first frames may go through the relay, till the peers connect
            if any("event=overlay_path" in line and "path=direct" in line for p in providers for line in p.log):
                break
            await asyncio.sleep(0.05)
        await probers.terminate()
        await servers.terminate()
        await network.remove()
        return lines, placed, golem


async def test_instances_on_two_providers_talk_directly(simulated_lan: SimulatedLan, provider_daemons) -> None:
    providers = [provider_daemons(simulated_lan.add_host(name), *ONE_INSTANCE_EACH) for name in ("pa", "pb")]
    lines, placed, _ = await run_pair(providers, Recorder(), "192.168.61", direct=True)
    assert placed == {p.provider_id for p in providers}, "the two instances were meant for two providers"
    assert lines == ["tcp hello from 192.168.61.2", "udp hello from 192.168.61.2"]
    assert any("event=overlay_path" in line and "path=direct" in line for p in providers for line in p.log), \
        [line for p in providers for line in p.log if "overlay" in line or "Error" in line or "Traceback" in line]


async def test_instances_on_providers_that_cannot_reach_each_other_are_relayed(simulated_lan: SimulatedLan,
                                                                               provider_daemons) -> None:
    providers = [provider_daemons(simulated_lan.add_host(name), *ONE_INSTANCE_EACH) for name in ("pa", "pb")]
    a, b = providers
    for host, other in ((a.host, b.host), (b.host, a.host)):  # a partition: each drops what comes from the other
        rules = f"table inet partition {{ chain in {{ type filter hook input priority 0; ip saddr {other.address} drop; }}; }}"
        done = subprocess.run(["ip", "netns", "exec", host.netns, "nft", "-f", "-"], input=rules, text=True,
                              capture_output=True)
        assert done.returncode == 0, done.stderr
    lines, placed, golem = await run_pair(providers, Recorder(), "192.168.62")
    assert placed == {a.provider_id, b.provider_id}
    assert lines == ["tcp hello from 192.168.62.2", "udp hello from 192.168.62.2"]
    assert golem._relay.forwarded > 0
    assert not any("path=direct" in line for p in providers for line in p.log)


async def test_a_provider_killed_and_restarted_rejoins_its_network(simulated_lan: SimulatedLan, provider_daemons) -> None:
    """SIGKILL of the daemon holding the server: its container and its part of the network stay
    (the daemon's own restart recovery), and once it is back its overlay rejoins: a new prober on
    the other provider reaches the server again, at the same address."""
    providers = {p.provider_id: p for p in (provider_daemons(simulated_lan.add_host(name), *ONE_INSTANCE_EACH)
                                            for name in ("pa", "pb"))}
    recorder = Recorder()
    base = "192.168.63"
    async with Golem(budget=10.0, providers=[p.pinned_address for p in providers.values()], event_consumer=recorder,
                     unresponsive_after=30) as golem:
        network = await golem.create_network(f"{base}.1/24")
        servers = await golem.run_service(EchoServer, network=network, network_addresses=[f"{base}.5"])
        [server] = servers.instances
        await recorder.until(lambda: server.state is S.running)
        first = await golem.run_service(Prober, network=network, instance_params=[{"target": f"{base}.5"}])
        await recorder.until(lambda: bool(first.instances[0].lines))
        assert first.instances[0].lines[0].startswith("tcp hello")
        await first.terminate()  # its provider's slot is free for the next prober

        holder = providers[server.provider_id]
        holder.kill()
        holder.start()
        second = await golem.run_service(Prober, network=network, instance_params=[{"target": f"{base}.5"}])
        [prober] = second.instances
        await recorder.until(lambda: bool(prober.lines) or prober.state is S.terminated, timeout=60)
        assert prober.provider_id != server.provider_id
        assert prober.lines == [f"tcp hello from {prober.network_node.ip}", f"udp hello from {prober.network_node.ip}"]
        assert server.state is S.running
        await second.terminate()
        await servers.terminate()
        await network.remove()
