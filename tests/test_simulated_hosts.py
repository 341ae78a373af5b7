"""Many hosts on one machine (exeunit.testing, through its pytest plugin's fixtures): hosts on a
simulated LAN reach each other, faults come on cue (cable pulled, packets lost, delay where the
kernel has netem), a provider daemon serves from a simulated host with the one Docker engine,
survives SIGKILL there, and nothing is left behind."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import pytest

from exeunit.testing.hosts import SimulatedLan, SimulationError, leftovers
from tests.client import ContractClient
from tests.conftest import BASE_IMAGE

ECHO_PORT = 7007
ECHO_SERVER = (
    "import socket\n"
    "s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
    f"s.bind(('0.0.0.0', {ECHO_PORT})); s.listen(8); print('ready', flush=True)\n"
    "while True:\n"
    "    c, _ = s.accept(); c.sendall(c.recv(1024)); c.close()\n"
)


def echo(address: str, timeout: float = 2.0) -> float:
    """One round trip to the echo server; its duration in seconds."""
    started = time.monotonic()
    with socket.create_connection((address, ECHO_PORT), timeout=timeout) as connection:
        connection.sendall(b"ping")
        assert connection.recv(16) == b"ping"
    return time.monotonic() - started


def test_hosts_reach_each_other_and_faults_come_on_cue(simulated_lan: SimulatedLan) -> None:
    lan = simulated_lan
    server_host, client_host = lan.add_host("a"), lan.add_host("b")
    server = server_host.spawn([sys.executable, "-c", ECHO_SERVER], stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None and server.stdout.readline() == "ready\n"
        probe = f"import socket; c = socket.create_connection(('{server_host.address}', {ECHO_PORT}), timeout=2); " \
                "c.sendall(b'hi'); print(c.recv(9).decode())"
        assert client_host.run([sys.executable, "-c", probe]).stdout == "hi\n"  # host to host
        echo(server_host.address)  # and from this process, attached to the LAN
        # the server's host is not reachable on this machine's own loopback: it is another host
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", ECHO_PORT), timeout=1).close()

        server_host.link_down()
        with pytest.raises(OSError):
            echo(server_host.address, timeout=1.0)
        assert client_host.run([sys.executable, "-c", probe]).returncode != 0
        server_host.link_up()
        echo(server_host.address, timeout=5.0)

        server_host.impair(loss_percent=100)  # every packet lost, both ways, the cable still in
        with pytest.raises(OSError):
            echo(server_host.address, timeout=1.0)
        server_host.clear_impairment()
        echo(server_host.address, timeout=5.0)

        try:
            server_host.impair(delay_ms=200)
        except SimulationError as exc:  # this kernel cannot delay: it must say so, not pretend
            assert "netem" in str(exc)
        else:
            assert echo(server_host.address) >= 0.2  # the connect's round trip alone
            server_host.clear_impairment()
    finally:
        server.kill()
        server.wait()


async def test_a_provider_daemon_serves_from_a_simulated_host_and_comes_back_after_sigkill(
    simulated_lan: SimulatedLan, provider_daemons, engine,
) -> None:
    provider = provider_daemons(simulated_lan.add_host("prov"))
    async with ContractClient(provider.address, "requestor-elsewhere", token=provider.token) as client:
        activity_id = await client.ready_activity(BASE_IMAGE)
        run = await client.run_batch(activity_id, [client.run("/bin/echo", "served from", provider.host.name)])
        assert run.stdout() == b"served from prov\n"
        provider.kill()  # a crash: the activity's container stays, the home too
        provider.restart()  # same address, same port
    async with ContractClient(provider.address, "requestor-elsewhere", token=provider.token) as client:
        again = await client.run_batch(activity_id, [client.run("/bin/echo", "still here")])
        assert again.stdout() == b"still here\n"


def test_the_lan_leaves_nothing_behind(simulated_lan: SimulatedLan) -> None:
    simulated_lan.add_host("x")
    lan_id = simulated_lan.id
    assert [name for name in leftovers() if lan_id in name]
    simulated_lan.close()
    assert not [name for name in leftovers() if lan_id in name]
    assert lan_id not in subprocess.run(["ip", "link"], capture_output=True, text=True).stdout
