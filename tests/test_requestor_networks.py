"""yapapi's network API over real providers: `golem.create_network`, `run_service(network=...,
network_addresses=...)`, `Service.network_node`, addresses handed out and freed, and a provider
that cannot carry a network to others kept off one that spans (tests/test_spanning_networks.py
has networks across providers)."""

from __future__ import annotations

from exeunit.v1.conventions import GIB
from exeunit.domain.resources import LinearPricing, Resources
from requestor.network import NetworkError, NetworkState
from requestor.payload import vm
from requestor.services import Service, ServiceState
from tests.conftest import BASE_IMAGE, Daemons
from tests.test_networks import ECHO_SERVER, PROBE, unused_subnet
from tests.test_requestor_services import Recorder, base_payload, golem_for, start_provider

import pytest

S = ServiceState


class EchoServer(Service):
    """Answers TCP 7000 and UDP 7001 on every address it has, from `start` on."""

    get_payload = staticmethod(base_payload)

    async def start(self):
        async for script in super().start():
            yield script
        script = self._ctx.new_script()
        script.run("/bin/sh", "-c", f"cat > /tmp/echo.py <<'EOF'\n{ECHO_SERVER}\nEOF\n"
                                    "(python3 /tmp/echo.py >/dev/null 2>&1 &)")
        yield script


class Prober(Service):
    """Probes `target` once it runs; keeps what it saw."""

    get_payload = staticmethod(base_payload)

    def __init__(self, target: str) -> None:
        super().__init__()
        self.target = target
        self.lines: list[str] = []

    async def run(self):
        script = self._ctx.new_script()
        result = script.run("/bin/sh", "-c", f"cat > /tmp/probe.py <<'EOF'\n{PROBE}\nEOF\n"
                                             f"python3 /tmp/probe.py {self.target}")
        yield script
        self.lines = (await result).stdout.splitlines()
        async for script in super().run():
            yield script


class FailsOnFirstStart(EchoServer):
    """yapapi's IP-recycling scenario: the first start fails after deploy, the respawn succeeds."""

    failures = 0

    async def start(self):
        async for script in super().start():
            yield script
        if type(self).failures == 0:
            type(self).failures += 1
            raise Exception("intentional failure on the first run")


async def test_instances_on_a_network_talk_by_the_addresses_the_requestor_gave(daemons: Daemons) -> None:
    provider = await start_provider(daemons)
    subnet = unused_subnet(21)
    base = subnet.rsplit(".", 1)[0]
    recorder = Recorder()
    async with golem_for(provider, recorder=recorder) as golem:
        network = await golem.create_network(f"{base}.1/24")
        assert (network.network_address, network.netmask, network.owner_ip) == (f"{base}.0", "255.255.255.0", f"{base}.1")
        async with network:
            servers = await golem.run_service(EchoServer, network=network, network_addresses=[f"{base}.5"])
            [server] = servers.instances
            await recorder.until(lambda: server.state is S.running)
            assert server.network_node.ip == f"{base}.5" and server.network is network and servers.network is network
            assert server.get_deploy_args()["net"][0]["nodeIp"] == f"{base}.5"
            clients = await golem.run_service(Prober, network=network, instance_params=[{"target": f"{base}.5"}])
            [prober] = clients.instances
            await recorder.until(lambda: bool(prober.lines))
            assert prober.network_node.ip == f"{base}.2"  # the first free address
            assert prober.lines == [f"tcp hello from {base}.2", f"udp hello from {base}.2"]
            provider_id = provider.provider.settings.provider_id
            assert network.nodes_dict == {f"{base}.1": golem.requestor_id, f"{base}.5": provider_id,
                                          f"{base}.2": provider_id}
            assert f"@ {base}.5" in repr(server)
            await servers.terminate()
            await clients.terminate()
            assert network.nodes_dict == {f"{base}.1": golem.requestor_id}  # their addresses are free again
            assert server.network_node is None
        assert network.state is NetworkState.removed


async def test_a_respawned_instance_takes_its_address_again_on_the_same_provider(daemons: Daemons) -> None:
    provider = await start_provider(daemons)
    recorder = Recorder()
    async with golem_for(provider, recorder=recorder) as golem:
        network = await golem.create_network("192.168.0.1/24")  # yapapi's examples' network
        async with network:
            cluster = await golem.run_service(FailsOnFirstStart, network=network, network_addresses=["192.168.0.2"])
            [instance] = cluster.instances
            await recorder.until(lambda: instance.state is S.running)
            assert recorder.states(instance) == [S.pending, S.starting, S.terminated, S.pending, S.starting, S.running]
            assert instance.network_node.ip == "192.168.0.2"
            await cluster.terminate()


async def test_bad_addresses_fail_at_once_with_the_reason(daemons: Daemons) -> None:
    provider = await start_provider(daemons)
    recorder = Recorder()
    async with golem_for(provider, recorder=recorder) as golem:
        with pytest.raises(NetworkError, match="does not appear to be an IPv4 or IPv6 network"):
            await golem.create_network("192.168.0.300/24")
        network = await golem.create_network("10.1.0.0", mask="255.255.255.0")
        assert network.owner_ip == "10.1.0.1"
        with pytest.raises(ValueError, match="without a `network`"):
            await golem.run_service(EchoServer, network_addresses=["10.1.0.2"])
        with pytest.raises(NetworkError, match=r"must belong to the network \('10.1.0.0/255.255.255.0'\)"):
            await golem.run_service(EchoServer, network=network, network_addresses=["10.2.0.2"])
        with pytest.raises(NetworkError, match="has already been assigned"):
            await golem.run_service(EchoServer, network=network, network_addresses=["10.1.0.1"])  # the owner's
        cluster = await golem.run_service(EchoServer, network=network, network_addresses=["10.1.0.2"])
        with pytest.raises(NetworkError, match="'10.1.0.2' has already been assigned"):
            await golem.run_service(EchoServer, network=network, network_addresses=["10.1.0.2"])
        await cluster.terminate()
        await network.remove()
        with pytest.raises(NetworkError, match="is removed; no node can join it"):
            await network.add_node("someone")


async def test_a_provider_without_an_overlay_is_kept_off_a_network_elsewhere_and_says_so(daemons: Daemons) -> None:
    cheap = await start_provider(daemons, "cheap", pricing=LinearPricing(0.0, 0.000001, 0.000001),
                                 capacity=Resources(cpu_threads=2, memory_bytes=2 * GIB, storage_bytes=20 * GIB))
    roomy = await start_provider(daemons, "roomy")
    recorder = Recorder()
    async with golem_for(cheap, roomy, recorder=recorder) as golem:
        network = await golem.create_network("192.168.7.0/24")
        first = await golem.run_service(EchoServer, network=network)
        await recorder.until(lambda: first.instances[0].state is S.running)
        assert first.instances[0].provider_name == "cheap"
        second = await golem.run_service(EchoServer, network=network)  # cheap has room: it goes there too
        await recorder.until(lambda: second.instances[0].state is S.running)
        assert second.instances[0].provider_name == "cheap"
        big = await vm.repo(image_tag=BASE_IMAGE, min_mem_gib=4, min_storage_gib=0.5)  # more than cheap has
        third = await golem.run_service(EchoServer, network=network, payload=big)
        [instance] = third.instances
        await recorder.until(lambda: instance.state is S.terminated)
        error = instance.exc_info[1]
        assert isinstance(error, NetworkError)  # roomy took it, but its daemon runs no overlay (these do not)
        assert "cannot join a network that spans providers (its offer has no overlay_port)" in str(error), error
        await first.terminate()
        await second.terminate()
        await network.remove()
