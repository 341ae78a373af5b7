"""A network across two providers on simulated hosts (bench case `span`): a TCP stream and small
round trips between instances on different providers, direct and relayed through the requestor
(a partition between the two hosts), against two instances of the network on one provider.
bench/cases_load.py makes the rows."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from exeunit.testing.hosts import SimulatedLan
from exeunit.testing.providers import ProviderDaemon
from requestor import Golem
from requestor.payload import vm
from requestor.services import Service, ServiceState

SINK = r'''
import socket, threading
def stream(conn):
    n = 0
    while (d := conn.recv(1 << 20)):
        n += len(d)
    conn.sendall(str(n).encode()); conn.close()
def echo(conn):
    while (d := conn.recv(64)):
        conn.sendall(d)
def serve(port, handler):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port)); s.listen()
    while True:
        c, _ = s.accept(); threading.Thread(target=handler, args=(c,), daemon=True).start()
threading.Thread(target=serve, args=(7101, echo), daemon=True).start()
serve(7100, stream)
'''

SOURCE = r'''
import socket, statistics, sys, time
target, megabytes = sys.argv[1], int(sys.argv[2])
c = socket.create_connection((target, 7101), timeout=30)
rtts = []
for _ in range(200):
    t = time.perf_counter(); c.sendall(b"x"); c.recv(64); rtts.append(time.perf_counter() - t)
c.close()
c = socket.create_connection((target, 7100), timeout=30)
block = bytes(1 << 20); t = time.perf_counter()
for _ in range(megabytes):
    c.sendall(block)
c.shutdown(socket.SHUT_WR)
got = int(c.recv(64)); took = time.perf_counter() - t
assert got == megabytes << 20, got
print(f"{got / took / 1e6:.1f} {statistics.median(rtts) * 1000:.3f}")
'''


class Sink(Service):
    @staticmethod
    async def get_payload():
        return await vm.repo(image_tag="exeunit-base:latest", capabilities=[vm.VM_CAPS_VPN])

    async def start(self):
        async for script in super().start():
            yield script
        script = self._ctx.new_script()
        script.run("/bin/sh", "-c", f"cat > /tmp/sink.py <<'EOF'\n{SINK}\nEOF\n(python3 /tmp/sink.py >/dev/null 2>&1 &)")
        yield script


class Source(Service):
    get_payload = Sink.get_payload

    def __init__(self, target: str, megabytes: int) -> None:
        super().__init__()
        self.target, self.megabytes = target, megabytes
        self.result: tuple[float, float] | None = None

    async def run(self):
        script = self._ctx.new_script(timeout=timedelta(seconds=300))
        done = script.run("/bin/sh", "-c", f"cat > /tmp/source.py <<'EOF'\n{SOURCE}\nEOF\n"
                                           f"python3 /tmp/source.py {self.target} {self.megabytes}")
        yield script
        rate, rtt = (await done).stdout.split()
        self.result = (float(rate), float(rtt))
        async for script in super().run():  # stays, holding its slot: the next source goes elsewhere
            yield script


async def measure(relayed: bool, megabytes: int, states: Any) -> dict[str, tuple[float, float]]:
    """{"same provider": (MB/s, RTT ms), "other provider": ...} on a fresh pair of simulated hosts."""
    with SimulatedLan() as lan:
        lan.attach_here()
        cheap = ProviderDaemon(lan.add_host("pa"), "--max-cpu-threads", "2", "--price-duration-sec", "0.000001",
                               "--price-cpu-sec", "0.000001", "--name", "span-a")
        dear = ProviderDaemon(lan.add_host("pb"), "--max-cpu-threads", "1", "--price-duration-sec", "0.00001",
                              "--price-cpu-sec", "0.00001", "--name", "span-b")
        try:
            if relayed:
                lan.partition(cheap.host, dear.host)
            async with Golem(budget=100.0, providers=[cheap.pinned_address, dear.pinned_address],
                             event_consumer=states) as golem:
                network = await golem.create_network("192.168.70.1/24")
                sink = (await golem.run_service(Sink, network=network, network_addresses=["192.168.70.5"])).instances[0]
                await states.until(lambda: sink.state is ServiceState.running)
                results = {}
                for label in ("same provider", "other provider"):  # the cheap one has room for one more
                    cluster = await golem.run_service(Source, network=network,
                                                      instance_params=[{"target": "192.168.70.5",
                                                                        "megabytes": megabytes}])
                    source = cluster.instances[0]
                    while source.result is None and source.state is not ServiceState.terminated:
                        await asyncio.sleep(0.1)  # the result comes without a state change
                    if source.result is None:
                        raise SystemExit(f"the {label} source failed: {source.exc_info[1]}")
                    where = "same provider" if source.provider_id == sink.provider_id else "other provider"
                    results[where] = source.result
            return results
        finally:
            cheap.stop()
            dear.stop()

