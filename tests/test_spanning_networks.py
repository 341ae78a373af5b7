"""Networks that span providers (issue 20), end to end on simulated hosts: instances of one
requestor network on two providers reach each other by address, TCP and UDP, directly when the
providers' hosts reach each other and relayed through the requestor when they cannot."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

from exeunit.testing.hosts import SimulatedHost, SimulatedLan
from requestor import Golem, events
from requestor.relay import Relay
from requestor.services import Service, ServiceState
from tests.test_networks import PROBE
from tests.test_requestor_networks import EchoServer, FailsOnFirstStart, Prober
from tests.test_requestor_services import Recorder, base_payload
from tests.test_yapapi_examples import RunningScript, free_port, post, until_it_answers
from tests.waiting import until

S = ServiceState
ONE_INSTANCE_EACH = ("--max-cpu-threads", "1")  # the default allotment is a thread: one activity per provider


async def run_pair(providers, recorder: Recorder, base: str):
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
        await probers.terminate()
        await servers.terminate()
        await network.remove()
        return lines, placed, golem


BULK = 4_000_000  # bytes the second round sends: far more than anything else between the hosts meanwhile

# Reads a TCP connection to its end on port 7002 and answers how many bytes came.
SINK = r'''
import socket
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("0.0.0.0", 7002))
server.listen()
while True:
    conn, _ = server.accept()
    got = 0
    while data := conn.recv(1 << 16):
        got += len(data)
    conn.sendall(b"sink got %d" % got)
    conn.close()
'''

# Sends BULK bytes to the sink at argv[1], then prints its answer.
SEND = r'''
import socket, sys
conn = socket.create_connection((sys.argv[1], 7002), timeout=20)
conn.sendall(bytes(int(sys.argv[2])))
conn.shutdown(socket.SHUT_WR)
print(conn.recv(100).decode())
'''


class EchoAndSink(EchoServer):
    """The echo server, and a sink on TCP 7002."""

    async def start(self):
        async for script in super().start():
            yield script
        script = self._ctx.new_script()
        script.run("/bin/sh", "-c", f"cat > /tmp/sink.py <<'EOF'\n{SINK}\nEOF\n"
                                    "(python3 /tmp/sink.py >/dev/null 2>&1 &)")
        yield script


class TwoRounds(Service):
    """Probes `target` once it runs (`lines`); then, once `go` is set, probes it again and sends it
    BULK bytes (`second`)."""

    get_payload = staticmethod(base_payload)

    def __init__(self, target: str) -> None:
        super().__init__()
        self.target = target
        self.lines: list[str] = []
        self.second: list[str] | None = None
        self.go = asyncio.Event()

    def _probe(self, bulk: bool):
        script = self._ctx.new_script()
        send = f"cat > /tmp/send.py <<'EOF'\n{SEND}\nEOF\npython3 /tmp/send.py {self.target} {BULK}\n" if bulk else ""
        return script, script.run("/bin/sh", "-c", f"cat > /tmp/probe.py <<'EOF'\n{PROBE}\nEOF\n"
                                                   f"python3 /tmp/probe.py {self.target}\n{send}")

    async def run(self):
        script, result = self._probe(bulk=False)
        yield script
        self.lines = (await result).stdout.splitlines()
        await self.go.wait()
        script, result = self._probe(bulk=True)
        yield script
        self.second = (await result).stdout.splitlines()
        async for script in super().run():
            yield script


COUNTS = "exsim_count"  # nftables table of the byte counters on each simulated host


def count_from(host: SimulatedHost, other: SimulatedHost) -> None:
    """Counts the bytes `host` receives from `other` (the hosts' direct path; what is relayed comes
    from the requestor): read with `counted`."""
    rules = f"""table inet {COUNTS} {{
        chain inbound {{ type filter hook input priority -10; ip saddr {other.address} counter; }}
    }}"""
    subprocess.run(["ip", "netns", "exec", host.netns, "nft", "-f", "-"], input=rules, text=True, check=True,
                   capture_output=True, timeout=30)


def counted(host: SimulatedHost) -> int:
    listed = subprocess.run(["ip", "netns", "exec", host.netns, "nft", "-j", "list", "table", "inet", COUNTS],
                            capture_output=True, text=True, check=True, timeout=30).stdout
    return sum(item["rule"]["expr"][-1]["counter"]["bytes"] for item in json.loads(listed)["nftables"]
               if "rule" in item)


def relayed(relay: Relay) -> int:
    """Messages the requestor's relay took from a provider, carried or not (one network here: all its)."""
    return relay.forwarded + relay.dropped


async def relay_quiet(relay: Relay, seconds: float = 1.0, timeout: float = 30.0) -> None:
    """Until the relay has carried nothing for `seconds` (a relayed session opened for the first frames,
    before the direct link was up, ends its handshake and sends what waited for it)."""
    last, since = relayed(relay), time.monotonic()

    def quiet() -> bool:
        nonlocal last, since
        if relayed(relay) != last:
            last, since = relayed(relay), time.monotonic()
        return time.monotonic() - since >= seconds

    await until(quiet, lambda: f"the relay still carries messages ({relayed(relay)} in all)", timeout, every=0.1)


async def test_instances_on_two_providers_talk_directly(simulated_lan: SimulatedLan, provider_daemons) -> None:
    """Once the providers' direct link is up, what the members send each other goes over it: the
    requestor's relay carries none of it, and the bytes between the two hosts grow by what was sent."""
    a, b = providers = [provider_daemons(simulated_lan.add_host(name), *ONE_INSTANCE_EACH) for name in ("pa", "pb")]
    count_from(a.host, b.host)
    count_from(b.host, a.host)
    recorder = Recorder()
    base = "192.168.61"
    async with Golem(budget=10.0, providers=[p.pinned_address for p in providers], event_consumer=recorder) as golem:
        network = await golem.create_network(f"{base}.1/24")
        servers = await golem.run_service(EchoAndSink, network=network, network_addresses=[f"{base}.5"])
        [server] = servers.instances
        await recorder.until(lambda: server.state is S.running)
        probers = await golem.run_service(TwoRounds, network=network, instance_params=[{"target": f"{base}.5"}])
        [prober] = probers.instances
        await recorder.until(lambda: bool(prober.lines) or prober.state is S.terminated, timeout=60)
        assert {server.provider_id, prober.provider_id} == {a.provider_id, b.provider_id}, \
            "the two instances were meant for two providers"
        assert prober.lines == [f"tcp hello from {base}.2", f"udp hello from {base}.2"]

        def direct_on_both() -> bool:
            return all(any("event=overlay_path" in line and "path=direct" in line for line in p.log) for p in providers)

        await until(direct_on_both, lambda: "the direct link on both providers; their overlay lines: " + repr(
            [line for p in providers for line in p.log if "overlay" in line or "Error" in line]))
        await relay_quiet(golem._relay)
        relayed_before, direct_before = relayed(golem._relay), counted(a.host) + counted(b.host)
        prober.go.set()
        await until(lambda: prober.second is not None or prober.state is S.terminated,
                    lambda: f"the second round's end (the prober is {prober.state})", timeout=60)
        relayed_after, direct_after = relayed(golem._relay), counted(a.host) + counted(b.host)
        assert relayed_after == relayed_before, \
            f"the relay carried {relayed_after - relayed_before} messages of the direct network's second round"
        assert prober.second == [f"tcp hello from {base}.2", f"udp hello from {base}.2", f"sink got {BULK}"]
        assert direct_after - direct_before >= BULK, \
            f"only {direct_after - direct_before} bytes went between the hosts while {BULK} were sent"
        await probers.terminate()
        await servers.terminate()
        await network.remove()


async def test_instances_on_providers_that_cannot_reach_each_other_are_relayed(simulated_lan: SimulatedLan,
                                                                               provider_daemons) -> None:
    providers = [provider_daemons(simulated_lan.add_host(name), *ONE_INSTANCE_EACH) for name in ("pa", "pb")]
    a, b = providers
    simulated_lan.partition(a.host, b.host)  # each drops what comes from the other; both reach the requestor
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


async def test_an_instance_failing_on_one_provider_comes_back_on_another_at_its_address(
        simulated_lan: SimulatedLan, provider_daemons) -> None:
    """yapapi's goth scenario across providers: the respawn goes to the other provider (the failed
    one is avoided), takes the same address, and the network's other member reaches it there."""
    providers = [provider_daemons(simulated_lan.add_host(name), "--max-cpu-threads", "2") for name in ("pa", "pb")]
    recorder = Recorder()
    base = "192.168.64"
    FailsOnFirstStart.failures = 0
    async with Golem(budget=10.0, providers=[p.pinned_address for p in providers], event_consumer=recorder) as golem:
        network = await golem.create_network(f"{base}.1/24")
        flaky = await golem.run_service(FailsOnFirstStart, network=network, network_addresses=[f"{base}.5"])
        [instance] = flaky.instances
        await recorder.until(lambda: instance.state is S.running, timeout=90)
        assert recorder.states(instance) == [S.pending, S.starting, S.terminated, S.pending, S.starting, S.running]
        started_on = [e.agreement.provider_id for e in recorder.events
                      if isinstance(e, events.ServiceStateChanged) and e.service is instance and e.new is S.starting]
        assert len(set(started_on)) == 2, "the respawn was meant for the other provider"
        assert instance.network_node.ip == f"{base}.5"
        probers = await golem.run_service(Prober, network=network, instance_params=[{"target": f"{base}.5"}])
        [prober] = probers.instances
        await recorder.until(lambda: bool(prober.lines) or prober.state is S.terminated, timeout=60)
        assert prober.lines == [f"tcp hello from {prober.network_node.ip}", f"udp hello from {prober.network_node.ip}"]
        await probers.terminate()
        await flaky.terminate()
        await network.remove()


async def test_networks_across_providers_stay_apart(simulated_lan: SimulatedLan, provider_daemons) -> None:
    """Two networks of one requestor, both across the same two providers and on the same subnet:
    a member of one reaches its own network's server on the other provider, and not the other
    network's server at the same address (beside it, or across)."""
    cheap = provider_daemons(simulated_lan.add_host("pa"), "--max-cpu-threads", "1", "--price-cpu-sec", "0.000001",
                             "--price-duration-sec", "0.000001")
    dear = provider_daemons(simulated_lan.add_host("pb"), "--max-cpu-threads", "2", "--price-cpu-sec", "0.00001",
                            "--price-duration-sec", "0.00001")
    providers = [cheap, dear]
    recorder = Recorder()
    base = "192.168.65"
    async with Golem(budget=10.0, providers=[p.pinned_address for p in providers], event_consumer=recorder) as golem:
        mine = await golem.create_network(f"{base}.1/24")
        theirs = await golem.create_network(f"{base}.1/24")
        servers = {}
        for network in (mine, theirs):  # one after the other: mine takes the cheap provider's only slot
            cluster = await golem.run_service(EchoServer, network=network, network_addresses=[f"{base}.5"])
            servers[network] = cluster.instances[0]
            await recorder.until(lambda: servers[network].state is S.running)
        assert servers[mine].provider_id == cheap.provider_id and servers[theirs].provider_id == dear.provider_id
        # a prober on `mine`, on the dear provider (the cheap one is full), beside `theirs`' server at the same address
        probers = await golem.run_service(Prober, network=mine, instance_params=[{"target": f"{base}.5"}])
        [prober] = probers.instances
        await recorder.until(lambda: bool(prober.lines) or prober.state is S.terminated, timeout=60)
        assert prober.provider_id == dear.provider_id
        assert prober.lines == [f"tcp hello from {prober.network_node.ip}", f"udp hello from {prober.network_node.ip}"]
        # stop mine's server: the same address on `theirs` must not answer in its place, from across either
        await servers[mine].cluster.terminate()
        again = await golem.run_service(Prober, network=mine, instance_params=[{"target": f"{base}.5"}])
        [second] = again.instances
        await recorder.until(lambda: bool(second.lines) or second.state is S.terminated, timeout=60)
        assert second.lines and not any(line.startswith(("tcp hello", "udp hello")) for line in second.lines), second.lines
        for cluster in (probers, again, servers[theirs].cluster):
            await cluster.terminate()
        await mine.remove()
        await theirs.remove()


def test_yapapi_webapp_with_its_database_on_another_provider(simulated_lan: SimulatedLan, provider_daemons,
                                                             tmp_path: Path) -> None:
    """yapapi's webapp example as it is, on two providers with room for one instance each: the web
    instance reaches the database instance on the other provider; a message posted reads back."""
    providers = [provider_daemons(simulated_lan.add_host(name), *ONE_INSTANCE_EACH) for name in ("pa", "pb")]
    env = {**os.environ, "GOLEM_PROVIDERS": ",".join(p.pinned_address for p in providers)}
    port = free_port()
    script = RunningScript("webapp.py", tmp_path, "--port", str(port), "--log-file", str(tmp_path / "webapp.log"),
                           env=env)
    script.wait_for(r"DB instance started")
    script.wait_for(r"Local HTTP server listening on")
    placed = script.wait_for(r"\[<HttpService running on (provider-p.) .*<DbService running on (provider-p.) ")
    assert placed.group(1) != placed.group(2), placed.group(0)
    url = f"http://127.0.0.1:{port}/"
    until_it_answers(url)
    message = f"across providers {time.time_ns()}"
    assert post(url, urllib.parse.urlencode({"message": message}).encode(), "application/x-www-form-urlencoded") == 200
    assert f"<li>{message}</li>" in urllib.request.urlopen(url, timeout=20).read().decode()
    script.process.send_signal(signal.SIGINT)
    script.wait_for(r".*Service terminated.*", timeout=20)  # goth's test_run_webapp: "<...> decommissioned"
    script.wait_for(r".*All jobs have finished", timeout=20)
    script.finish()


async def test_a_provider_that_loses_its_link_takes_only_its_own_members_away(simulated_lan: SimulatedLan,
                                                                              provider_daemons) -> None:
    """Three providers on one network; the third's cable is pulled: the first two go on talking
    (after at most a few seconds of a stalled send to the third), and only its member is lost."""
    hosts = {name: simulated_lan.add_host(name) for name in ("pa", "pb", "pc")}
    providers = {name: provider_daemons(host, *ONE_INSTANCE_EACH) for name, host in hosts.items()}
    recorder = Recorder()
    base = "192.168.66"
    async with Golem(budget=10.0, providers=[p.pinned_address for p in providers.values()], event_consumer=recorder,
                     unresponsive_after=3) as golem:
        network = await golem.create_network(f"{base}.1/24")
        servers = await golem.run_service(EchoServer, network=network, num_instances=2,
                                          network_addresses=[f"{base}.5", f"{base}.6"])
        await recorder.until(lambda: all(s.state is S.running for s in servers.instances))
        by_ip = {s.network_node.ip: s for s in servers.instances}
        doomed = by_ip[f"{base}.6"]
        cut = next(name for name, p in providers.items() if p.provider_id == doomed.provider_id)
        hosts[cut].link_down()
        probers = await golem.run_service(Prober, network=network, instance_params=[{"target": f"{base}.5"}])
        [prober] = probers.instances
        await recorder.until(lambda: bool(prober.lines) or prober.state is S.terminated, timeout=60)
        assert prober.lines == [f"tcp hello from {prober.network_node.ip}", f"udp hello from {prober.network_node.ip}"]
        await recorder.until(lambda: doomed.state in (S.unresponsive, S.terminated), timeout=60)
        assert by_ip[f"{base}.5"].state is S.running
        hosts[cut].link_up()
        await probers.terminate()
        await servers.terminate()
        await network.remove()
