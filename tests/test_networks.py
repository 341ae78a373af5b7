"""Private networks between one requestor's activities: they reach each other on TCP and UDP,
and nothing else (other networks, other requestors, the provider host, the world).

Every network here lives in namespaces the provider creates on this machine and has no route
out; the host side of each check only listens on this machine's own addresses.
"""

from __future__ import annotations

import ipaddress
import socket

import grpc
import psutil
import pytest

from exeunit.runtime.bridges import BridgePlumbing
from exeunit.v1.conventions import GIB
from exeunit.domain.resources import Resources
from tests.client import ContractClient
from tests.conftest import Daemons

ROOMY = Resources(cpu_threads=12, memory_bytes=16 * GIB, storage_bytes=40 * GIB)  # room for many activities


async def roomy_client(daemons: Daemons, requestor_id: str = "requestor-1") -> ContractClient:
    provider = await daemons.start(capacity=ROOMY)
    return ContractClient(f"127.0.0.1:{provider.port}", requestor_id)

# Answers TCP on 7000 and UDP on 7001 with what it got and who sent it.
ECHO_SERVER = r'''
import socket, threading
def tcp():
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("0.0.0.0", 7000))
    server.listen()
    while True:
        conn, peer = server.accept()
        conn.sendall(b"tcp " + conn.recv(100) + b" from " + peer[0].encode())
        conn.close()
threading.Thread(target=tcp, daemon=True).start()
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
udp.bind(("0.0.0.0", 7001))
while True:
    data, peer = udp.recvfrom(100)
    udp.sendto(b"udp " + data + b" from " + peer[0].encode(), peer)
'''

# Tries TCP port 7000 then UDP port 7001 of each address given; prints one line per try.
PROBE = r'''
import socket, sys, time
for ip in sys.argv[1:]:
    port = 7000
    if ":" in ip:
        ip, port = ip.split(":")
    deadline = time.monotonic() + 3
    while True:
        try:
            conn = socket.create_connection((ip, int(port)), timeout=2)
            conn.sendall(b"hello")
            print(conn.recv(100).decode())
            break
        except ConnectionRefusedError:
            if time.monotonic() > deadline:
                print("tcp refused", ip)
                break
            time.sleep(0.1)
        except OSError as exc:
            print("tcp failed", ip, type(exc).__name__)
            break
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.settimeout(1.5)
    try:
        udp.sendto(b"hello", (ip, 7001))
        print(udp.recvfrom(100)[0].decode())
    except OSError as exc:
        print("udp failed", ip, type(exc).__name__)
'''


def unused_subnet(third: int) -> str:
    """A /24 that no route of this host touches (so nothing here could be confused with it)."""
    routes = []
    with open("/proc/net/route") as table:
        for line in list(table)[1:]:
            fields = line.split()
            dest, mask = int(fields[1], 16), int(fields[7], 16)
            routes.append(ipaddress.IPv4Network((socket.inet_ntoa(dest.to_bytes(4, "little")),
                                                 bin(mask).count("1"))))
    for second in range(200, 256):
        candidate = ipaddress.IPv4Network(f"10.{second}.{third}.0/24")
        if not any(candidate.overlaps(route) for route in routes if route.prefixlen > 0):
            return str(candidate)
    raise AssertionError("no free 10.x.y.0/24 on this host")


async def make_network(client: ContractClient, network_id: str, subnet: str):
    """A network (which needs a live agreement with the provider: one is made)."""
    await client.agreement("exeunit-base:latest")
    return await client.create_network(network_id, subnet)


async def start_echo(client: ContractClient, activity_id: str) -> None:
    write = f"cat > /tmp/echo.py <<'EOF'\n{ECHO_SERVER}\nEOF\n"
    run = await client.run_batch(activity_id, [client.sh(write + "(python3 /tmp/echo.py >/dev/null 2>&1 &)")])
    assert run.succeeded, run.finished


async def probe(client: ContractClient, activity_id: str, *targets: str) -> list[str]:
    write = f"cat > /tmp/probe.py <<'EOF'\n{PROBE}\nEOF\n"
    run = await client.run_batch(activity_id, [client.sh(write + "python3 /tmp/probe.py " + " ".join(targets))])
    assert run.succeeded, (run.finished, run.stderr())
    return run.stdout().decode().splitlines()


async def routes_of(client: ContractClient, activity_id: str) -> list[tuple[str, str]]:
    """(interface, destination) of each IPv4 route the activity has."""
    run = await client.run_batch(activity_id, [client.run("cat", "/proc/net/route")])
    rows = [line.split() for line in run.stdout().decode().splitlines()[1:]]
    return [(row[0], socket.inet_ntoa(int(row[1], 16).to_bytes(4, "little"))) for row in rows]


def host_addresses() -> list[str]:
    """This machine's own IPv4 addresses, but loopback (which in a container is the container's own):
    where the host's services listen."""
    return sorted({a.address for addrs in psutil.net_if_addrs().values() for a in addrs
                   if a.family == socket.AF_INET and not ipaddress.IPv4Address(a.address).is_loopback})


async def test_instances_of_a_network_reach_each_other_on_tcp_and_udp_and_have_no_route_out(daemons: Daemons) -> None:
    async with await roomy_client(daemons) as client:
        subnet = unused_subnet(11)
        base = subnet.rsplit(".", 1)[0]
        info = await make_network(client, "net-a", subnet)
        assert (info.network_id, info.address, list(info.members)) == ("net-a", subnet, [])
        server = await client.networked_activity("net-a", f"{base}.2")
        other = await client.networked_activity("net-a", f"{base}.3")
        await start_echo(client, server)

        lines = await probe(client, other, f"{base}.2")
        assert lines == [f"tcp hello from {base}.3", f"udp hello from {base}.3"]

        assert await routes_of(client, other) == [("eth0", f"{base}.0")], "only the network's own route, no default"
        members = {m.activity_id: (m.ip, m.attached) for m in (await client.get_network("net-a")).members}
        assert members == {server: (f"{base}.2", True), other: (f"{base}.3", True)}
        # An activity without a network keeps none.
        plain = await client.ready_activity("exeunit-base:latest")
        assert await routes_of(client, plain) == []


async def test_networks_are_isolated_from_each_other_other_requestors_and_the_host(daemons: Daemons) -> None:
    provider = await daemons.start(capacity=ROOMY)
    address = f"127.0.0.1:{provider.port}"
    subnet = unused_subnet(12)
    base = subnet.rsplit(".", 1)[0]
    # Something listens on every address of this host, as a host service would.
    host_server = socket.create_server(("0.0.0.0", 0))
    host_port = host_server.getsockname()[1]
    try:
        async with ContractClient(address, "alice") as alice, ContractClient(address, "mallory") as mallory:
            await make_network(alice, "a1", subnet)
            await alice.create_network("a2", subnet)  # the same subnet twice: separate networks
            await make_network(mallory, "m1", subnet)  # and a stranger's, also the same subnet
            target = await alice.networked_activity("a1", f"{base}.2")
            await start_echo(alice, target)
            neighbour = await alice.networked_activity("a1", f"{base}.3")
            same_requestor = await alice.networked_activity("a2", f"{base}.4")
            stranger = await mallory.networked_activity("m1", f"{base}.5")

            assert (await probe(alice, neighbour, f"{base}.2"))[0] == f"tcp hello from {base}.3"
            for who, caller in ((same_requestor, alice), (stranger, mallory)):
                lines = await probe(caller, who, f"{base}.2")
                assert lines[0].startswith("tcp failed"), lines
                assert lines[1].startswith("udp failed"), lines
            # The host: no address of it is reachable, not even the ones a host service listens on.
            targets = [f"{ip}:{host_port}" for ip in host_addresses()]
            lines = await probe(mallory, stranger, *targets)
            tcp = [line for line in lines if line.startswith("tcp")]
            assert len(tcp) == len(targets) and all(line.startswith("tcp failed") for line in tcp), lines
            assert await routes_of(mallory, stranger) == [("eth0", f"{base}.0")]
            # Nor can a member forge its way out: no raw sockets, no changing its own interface.
            forge = ("import socket, fcntl, struct\n"
                     "for make in (lambda: socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW),\n"
                     "             lambda: socket.socket(socket.AF_PACKET, socket.SOCK_RAW)):\n"
                     "    try: make(); print('allowed')\n"
                     "    except PermissionError: print('denied')\n"
                     "request = struct.pack('16sH2s4s8s', b'eth0', socket.AF_INET, b'', socket.inet_aton('10.0.0.9'), b'')\n"
                     "try: fcntl.ioctl(socket.socket(), 0x8916, request); print('allowed')\n"  # SIOCSIFADDR
                     "except PermissionError: print('denied')\n")
            run = await mallory.run_batch(stranger, [mallory.run("python3", "-c", forge)])
            assert run.stdout().decode().split() == ["denied", "denied", "denied"], run.stderr()
    finally:
        host_server.close()


async def test_network_errors_are_clear(daemons: Daemons) -> None:
    async with await roomy_client(daemons) as client:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await client.create_network("early", "10.250.0.0/24")
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "live agreement" in caught.value.details()
        activity = await client.new_activity("exeunit-base:latest")
        for address, words in (("10.250.0.0", "prefix length"), ("10.250.0.0/31", "prefix length"),
                               ("fd00::/64", "IPv4"), ("not an address/24", "CIDR")):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await client.create_network("bad", address)
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, address
            assert words in caught.value.details(), caught.value.details()
        first = await client.create_network("n", "10.250.0.1/24")
        assert first.address == "10.250.0.0/24"
        assert (await client.create_network("n", "10.250.0.0/24")).network_id == "n"  # idempotent
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await client.create_network("n", "10.251.0.0/24")
        assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS

        for ip, code, words in (("10.251.0.2", grpc.StatusCode.INVALID_ARGUMENT, "not a host address of network"),
                                ("10.250.0.255", grpc.StatusCode.INVALID_ARGUMENT, "not a host address"),
                                ("10.250.0.x", grpc.StatusCode.INVALID_ARGUMENT, "not an IPv4 address")):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await client.exec(activity, [client.deploy("n", ip)])
            assert caught.value.code() == code and words in caught.value.details(), caught.value.details()
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await client.exec(activity, [client.deploy("nope", "10.250.0.2")])
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND

        holder = await client.networked_activity("n", "10.250.0.2")
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await client.exec(activity, [client.deploy("n", "10.250.0.2")])
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert f"held by activity {holder}" in caught.value.details()

        # Another requestor sees none of it, whatever it guesses.
        async with ContractClient(client.address, "requestor-2") as other:
            await other.agreement("exeunit-base:latest")
            for call in (other.get_network("n"),):
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await call
                assert caught.value.code() == grpc.StatusCode.NOT_FOUND
            assert list((await other.remove_network("n")).detached_activity_ids) == []  # nothing of its own to remove
            assert [m.activity_id for m in (await client.get_network("n")).members] == [holder]
            for index in range(8):
                await other.create_network(f"n{index}", "10.250.0.0/24")
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await other.create_network("one-too-many", "10.250.0.0/24")
            assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_addresses_are_freed_and_the_namespace_lives_while_members_do(daemons: Daemons) -> None:
    provider = await daemons.start(capacity=ROOMY)
    plumbing = BridgePlumbing(provider.provider.settings.home_id)
    async with ContractClient(f"127.0.0.1:{provider.port}", "requestor-1") as client:
        await make_network(client, "n", "10.252.0.0/24")
        assert plumbing.existing() == set()  # nothing on the host until a member starts
        first = await client.networked_activity("n", "10.252.0.2")
        assert len(plumbing.existing()) == 1
        await client.destroy(first)
        assert plumbing.existing() == set()
        second = await client.networked_activity("n", "10.252.0.2")  # the freed address, taken again
        third = await client.networked_activity("n", "10.252.0.3")
        await start_echo(client, second)
        assert (await probe(client, third, "10.252.0.2"))[0] == "tcp hello from 10.252.0.3"

        removed = await client.remove_network("n")
        assert sorted(removed.detached_activity_ids) == sorted([second, third])
        assert plumbing.existing() == set()
        assert await routes_of(client, third) == []  # its interface went with the network
        assert (await client.state(third)).state == 3  # and it runs on (Ready)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await client.get_network("n")
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        assert list((await client.remove_network("n")).detached_activity_ids) == []  # idempotent


async def test_the_offer_says_vpn(client: ContractClient) -> None:
    from exeunit.v1 import market_pb2 as mkt
    offer = (await client.market.GetOffer(mkt.GetOfferRequest(), metadata=client.metadata)).offer
    assert "vpn" in offer.capabilities
