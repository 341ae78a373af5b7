"""The overlay agent (exeunit.runtime.overlay, issue 20's data plane) on simulated hosts: two
providers' halves of one network carry TCP between their members, directly when the hosts reach
each other and through a relay (this test, standing in for the requestor) when they do not,
sealed either way; a host without the network's secret reaches no member."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import time

import pytest

from exeunit.runtime.overlay.process import AgentProcess
from exeunit.testing.hosts import SimulatedHost, SimulatedLan

SUBNET = "192.168.90"
MARKER = b"overlay-plaintext-marker-5a1c9e"

# In a member's namespace: accept one connection, read it all, answer with the byte count, whether
# the marker was in it, and the seconds from the connection to its end.
SINK = ("import socket, time\n"
        "s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
        "s.bind(('0.0.0.0', 7100)); s.listen(1); print('ready', flush=True)\n"
        "c, _ = s.accept(); started = time.monotonic(); n = 0; tail = b''; seen = False\n"
        "while (d := c.recv(1 << 20)):\n"
        f"    seen = seen or {MARKER!r} in tail + d; tail = d[-64:]; n += len(d)\n"
        "print(n, seen, time.monotonic() - started, flush=True)\n")


class ProviderHalf:
    """What a provider holds of one network: its namespace with a bridge, one member on it (a
    namespace with eth0 at `ip`, MTU 65000), and its overlay agent on the provider's host."""

    def __init__(self, host: SimulatedHost, tag: str, ip: str, relay) -> None:
        self.host = host
        self.netns, self.member = f"exov-{tag}-n", f"exov-{tag}-m"
        self.ip = ip
        for command in (
            f"netns add {self.netns}", f"-n {self.netns} link add br0 type bridge", f"-n {self.netns} link set br0 up",
            f"netns add {self.member}", f"-n {self.member} link set lo up",
            f"-n {self.member} link add eth0 type veth peer name vm netns {self.netns}",
            f"-n {self.member} addr add {ip}/24 dev eth0", f"-n {self.member} link set eth0 mtu 65000 up",
            f"-n {self.netns} link set vm mtu 65000 master br0 up",
        ):
            subprocess.run(["ip", *command.split()], check=True, capture_output=True)
        self.paths: list[dict] = []
        self.agent = AgentProcess(f"{host.address}:0", relay, self.paths.append,
                                  prefix=["nsenter", f"--net=/run/netns/{host.netns}", "--"])

    @property
    def endpoint(self) -> str:
        return f"{self.host.address}:{self.agent.port}"

    def run(self, code: str, **popen) -> subprocess.Popen:
        return subprocess.Popen(["ip", "netns", "exec", self.member, sys.executable, "-c", code], text=True, **popen)

    def close(self) -> None:
        self.agent.close()
        for name in (self.member, self.netns):
            subprocess.run(["ip", "netns", "del", name], capture_output=True)


@pytest.fixture
def halves(simulated_lan: SimulatedLan):
    made: list[ProviderHalf] = []
    relayed: dict[str, int] = {"frames": 0}

    def relay(network: str, peer: str, sealed: bytes) -> None:  # the requestor's part, when asked
        target = next((h for h in made if h.node == peer), None)
        sender = next(h for h in made if h.node != peer)
        if target is not None and relayed.get("on"):
            relayed["frames"] += 1
            target.agent.relay_in(network, sender.node, sealed)

    tag = secrets.token_hex(3)
    for index, name in enumerate(("pa", "pb")):
        half = ProviderHalf(simulated_lan.add_host(name), f"{tag}{index}", f"{SUBNET}.{index + 2}", relay)
        half.node = f"0x{index + 1:040x}"
        made.append(half)
    yield made, relayed
    for half in made:
        half.close()


def join_all(made: list[ProviderHalf], secret: bytes, network: str = "net-1") -> None:
    peers = {h.node: h.endpoint for h in made}
    for half in made:
        half.agent.join(network, half.netns, secret, half.node, peers)


def stream(sender: ProviderHalf, receiver: ProviderHalf, megabytes: int) -> tuple[int, bool, float]:
    """Sends `megabytes` (the marker inside) from one member to the other; (bytes received,
    marker seen, MB/s)."""
    sink = receiver.run(SINK, stdout=subprocess.PIPE)
    assert sink.stdout is not None and sink.stdout.readline() == "ready\n"
    source = sender.run(
        "import socket, time\n"
        f"c = socket.create_connection(('{receiver.ip}', 7100), timeout=10)\n"
        f"c.sendall({MARKER!r}); block = bytes(1 << 20)\n"
        f"for _ in range({megabytes}): c.sendall(block)\n"
        "c.close()\n")
    assert source.wait(120) == 0
    received, seen, took = sink.stdout.readline().split()
    sink.wait(30)
    return int(received), seen == "True", int(received) / float(took) / 1e6


def wait_for_path(half: ProviderHalf, path: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not any(p.get("path") == path for p in half.paths):
        assert time.monotonic() < deadline, f"no {path} path: {half.paths}"
        time.sleep(0.05)


def test_members_on_two_providers_talk_directly_sealed(simulated_lan: SimulatedLan, halves) -> None:
    made, relayed = halves
    capture = simulated_lan.capture()
    try:
        join_all(made, os.urandom(32))
        wait_for_path(made[0], "direct")
        received, seen, rate = stream(made[0], made[1], 64)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:  # something in clear, to see the capture works
            udp.sendto(MARKER, (made[1].host.address, 9))
    finally:
        wire = b"".join(capture.stop())
    assert received == 64 * (1 << 20) + len(MARKER) and seen
    assert wire.count(MARKER) >= 1 and MARKER + b"\0" * 16 not in wire  # only the one sent in clear
    assert bytes(4096) not in wire, "the stream's zeros crossed the LAN in clear"
    assert relayed["frames"] == 0
    print(f"direct: {rate:.0f} MB/s")


def test_providers_that_cannot_reach_each_other_are_relayed(simulated_lan: SimulatedLan, halves) -> None:
    made, relayed = halves
    relayed["on"] = True
    simulated_lan.partition(made[0].host, made[1].host)
    join_all(made, os.urandom(32))
    received, seen, rate = stream(made[0], made[1], 16)
    assert received == 16 * (1 << 20) + len(MARKER) and seen
    assert relayed["frames"] > 100
    assert not any(p.get("path") == "direct" for half in made for p in half.paths)
    print(f"relayed: {rate:.0f} MB/s")


def test_a_host_without_the_secret_reaches_no_member(simulated_lan: SimulatedLan, halves) -> None:
    made, _ = halves
    join_all(made, os.urandom(32))
    wait_for_path(made[0], "direct")
    stranger = simulated_lan.add_host("evil")
    attack = (
        "import os, socket, sys\n"
        "from exeunit.runtime.overlay.sealing import hello\n"
        "def answer(payload):\n"
        f"    with socket.create_connection(('{made[0].host.address}', {made[0].agent.port}), timeout=5) as raw:\n"
        "        raw.sendall(payload); raw.settimeout(5)\n"
        "        try: return raw.recv(100)\n"
        "        except OSError: return b'?'\n"
        "field = lambda b: len(b).to_bytes(4, 'big') + b\n"
        # a hello claiming to be the other provider, sealed with a secret that is not the network's
        f"forged = hello(os.urandom(32), 'net-1', '{made[1].node}', '{made[0].node}', os.urandom(16))\n"
        "print(answer(b'EXOV1\\n' + field(b'net-1') + field(forged)))\n"
        "print(answer(b'EXOV1\\n' + field(b'net-1') + field(os.urandom(200)) + os.urandom(1 << 16)))\n"
        "print(answer(os.urandom(1 << 16)))\n"
    )
    done = stranger.run([sys.executable, "-c", attack], timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["b''"] * 3, done.stdout  # closed without a word, each time
    # the genuine peer is still the only one connected, and the members still talk
    assert [p for p in made[0].paths if p.get("path") == "direct"] == \
        [{"op": "path", "network": "net-1", "peer": made[1].node, "path": "direct"}]
    received, seen, _ = stream(made[0], made[1], 4)
    assert received == 4 * (1 << 20) + len(MARKER) and seen


def test_sealing_refuses_replays_and_forgeries() -> None:
    from exeunit.runtime.overlay.sealing import RelaySealer, SealError, Session

    secret = os.urandom(32)
    dialer, acceptor = Session(secret, b"a" * 16, b"b" * 16, True), Session(secret, b"a" * 16, b"b" * 16, False)
    first, second = dialer.seal(b"one"), dialer.seal(b"two")
    assert acceptor.open(first) == b"one"
    with pytest.raises(SealError):
        acceptor.open(first)  # replayed
    with pytest.raises(SealError):
        acceptor.open(second[:-1] + bytes([second[-1] ^ 1]))  # forged
    a, b = RelaySealer(secret, "net", "0xa"), RelaySealer(secret, "net", "0xb")
    sealed = a.seal("0xb", b"frame")
    assert b.open("0xa", sealed) == b"frame"
    with pytest.raises(SealError):
        b.open("0xa", sealed)  # replayed
    with pytest.raises(SealError):
        RelaySealer(secret, "another-net", "0xb").open("0xa", a.seal("0xb", b"frame"))
    with pytest.raises(SealError):
        RelaySealer(os.urandom(32), "net", "0xb").open("0xa", a.seal("0xb", b"frame"))
    late = [a.seal("0xb", bytes([n])) for n in range(3)]
    assert [b.open("0xa", late[i]) for i in (2, 0, 1)] == [b"\2", b"\0", b"\1"]  # reordered, each once



def test_a_requestor_cannot_point_an_agent_at_its_hosts_loopback(simulated_lan: SimulatedLan, halves) -> None:
    """Peers' endpoints come from the requestor: an agent on a LAN address dials no loopback,
    link-local, multicast or unspecified address it is given (no probing of the host's own services)."""
    made, _ = halves
    listener = made[0].host.spawn([sys.executable, "-c",
                                   "import socket; s = socket.create_server(('127.0.0.1', 7300)); print('ready', flush=True);"
                                   "s.settimeout(3)\ntry: s.accept(); print('dialled')\nexcept OSError: print('quiet')"],
                                  stdout=subprocess.PIPE, text=True)
    assert listener.stdout is not None and listener.stdout.readline() == "ready\n"
    made[0].agent.join("net-2", made[0].netns, os.urandom(32), made[0].node,
                       {"0x" + "f" * 40: "127.0.0.1:7300", "0x" + "e" * 40: "169.254.1.1:7300"})
    assert listener.stdout.readline() == "quiet\n"
    listener.wait(10)
