"""The overlay agent (exeunit.runtime.overlay, issue 20's data plane, on TLS since issue 25) on
simulated hosts: two providers' halves of one network carry TCP between their members, directly
when the hosts reach each other and through a relay (this test, standing in for the requestor)
when they do not; each link is TLS 1.3 authenticated as the provider the requestor named, so a
host without a member's key, a member claiming to be another, a removed member and a replay
after a restart all reach no member; slow handshakes hold up no real peer; tables are bounded."""

from __future__ import annotations

import ipaddress
import json
import secrets
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from exeunit.persistence import keys
from exeunit.runtime.overlay.addresses import PeerAddressPolicy
from exeunit.runtime.overlay.process import AgentOptions, AgentProcess
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


def provider_files(directory: Path) -> AgentOptions:
    """A provider's key and certificate, as a daemon's home holds them."""
    directory.mkdir(parents=True, exist_ok=True)
    key = keys.load_or_create(directory / keys.KEY_FILE)
    keys.tls_credentials(key, directory / keys.CERTIFICATE_FILE)
    return AgentOptions(str(directory / keys.CERTIFICATE_FILE), str(directory / keys.KEY_FILE), macs_per_network=64)


class ProviderHalf:
    """What a provider holds of one network: its namespace with a bridge, one member on it (a
    namespace with eth0 at `ip`, MTU 65000), and its overlay agent on the provider's host."""

    def __init__(self, host: SimulatedHost, tag: str, ip: str, relay, files: Path) -> None:
        self.host = host
        self.netns, self.member = f"exov-{tag}-n", f"exov-{tag}-m"
        self.ip = ip
        self.options = provider_files(files)
        for command in (
            f"netns add {self.netns}", f"-n {self.netns} link add br0 type bridge", f"-n {self.netns} link set br0 up",
            f"netns add {self.member}", f"-n {self.member} link set lo up",
            f"-n {self.member} link add eth0 type veth peer name vm netns {self.netns}",
            f"-n {self.member} addr add {ip}/24 dev eth0", f"-n {self.member} link set eth0 mtu 65000 up",
            f"-n {self.netns} link set vm mtu 65000 master br0 up",
        ):
            subprocess.run(["ip", *command.split()], check=True, capture_output=True)
        self.paths: list[dict] = []
        self.relay = relay
        self.start_agent()

    def start_agent(self) -> None:
        self.agent = AgentProcess(f"{self.host.address}:0", self.options, lambda *m: self.relay(self, *m),
                                  self.paths.append, prefix=["nsenter", f"--net=/run/netns/{self.host.netns}", "--"])
        self.node = self.agent.node

    @property
    def endpoint(self) -> str:
        return f"{self.host.address}:{self.agent.port}"

    def run(self, code: str, **popen) -> subprocess.Popen:
        return subprocess.Popen(["ip", "netns", "exec", self.member, sys.executable, "-c", code], text=True, **popen)

    def stats(self, timeout: float = 5.0) -> dict:
        self.agent.request_stats()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [p for p in self.paths if p.get("op") == "stats"]
            if found:
                self.paths.remove(found[-1])
                return found[-1]["networks"]
            time.sleep(0.02)
        raise AssertionError(f"no stats from the agent in {timeout:g} s (its exit code: {self.agent.process.poll()})")

    def close(self) -> None:
        self.agent.close()
        for name in (self.member, self.netns):
            subprocess.run(["ip", "netns", "del", name], capture_output=True)


@pytest.fixture
def halves(simulated_lan: SimulatedLan, tmp_path: Path):
    """Two (or, with `add`, more) providers' halves, and the relay standing in for the requestor:
    while `relayed["on"]`, it carries each message to the provider named, counting and keeping them."""
    made: list[ProviderHalf] = []
    relayed: dict = {"frames": 0, "messages": [], "on": False}

    def relay(sender: ProviderHalf, network: str, peer: str, message: bytes) -> None:
        target = next((h for h in made if h.node == peer), None)
        if target is not None and relayed["on"]:
            relayed["frames"] += 1
            relayed["messages"].append((sender.node, peer, network, message))
            target.agent.relay_in(network, sender.node, message)

    tag = secrets.token_hex(3)

    def add(name: str) -> ProviderHalf:
        index = len(made)
        half = ProviderHalf(simulated_lan.add_host(name), f"{tag}{index}", f"{SUBNET}.{index + 2}", relay,
                            tmp_path / name)
        made.append(half)
        return half

    add("pa")
    add("pb")
    made.sort(key=lambda h: h.node)  # made[0] dials made[1]
    relayed["add"] = add
    yield made, relayed
    for half in made:
        half.close()


def join_all(made: list[ProviderHalf], network: str = "net-1") -> None:
    peers = {h.node: h.endpoint for h in made}
    for half in made:
        half.agent.join(network, half.netns, peers)


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


def reaches(sender: ProviderHalf, receiver: ProviderHalf, seconds: float = 3.0) -> bool:
    """Whether a TCP connection from one member to the other opens within `seconds`."""
    sink = receiver.run(SINK, stdout=subprocess.PIPE)
    assert sink.stdout is not None and sink.stdout.readline() == "ready\n"
    probe = sender.run(f"import socket\nsocket.create_connection(('{receiver.ip}', 7100), timeout={seconds}).close()\n",
                       stderr=subprocess.DEVNULL)
    opened = probe.wait(seconds + 10) == 0
    sink.kill()
    sink.wait()
    return opened


def wait_for_path(half: ProviderHalf, path: str, peer: str | None = None, timeout: float = 10.0) -> float:
    """Seconds until `half` reports `path` (to `peer`, when given)."""
    started = deadline = time.monotonic()
    deadline += timeout
    while not any(p.get("path") == path and peer in (None, p.get("peer")) for p in half.paths):
        assert time.monotonic() < deadline, f"no {path} path: {half.paths}"
        time.sleep(0.05)
    return time.monotonic() - started


def test_members_on_two_providers_talk_directly_over_tls(simulated_lan: SimulatedLan, halves) -> None:
    made, relayed = halves
    capture = simulated_lan.capture()
    try:
        join_all(made)
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
    assert b"\x17\x03\x03" in wire, "no TLS application records on the wire"
    print(f"direct: {rate:.0f} MB/s")


def test_providers_that_cannot_reach_each_other_are_relayed_unreadably(simulated_lan: SimulatedLan, halves) -> None:
    made, relayed = halves
    relayed["on"] = True
    simulated_lan.partition(made[0].host, made[1].host)
    join_all(made)
    received, seen, rate = stream(made[0], made[1], 16)
    assert received == 16 * (1 << 20) + len(MARKER) and seen
    assert relayed["frames"] > 100
    assert not any(p.get("path") == "direct" for half in made for p in half.paths)
    carried = b"".join(m for *_, m in relayed["messages"])
    assert MARKER not in carried and bytes(4096) not in carried, "the relay saw the members' bytes in clear"
    print(f"relayed: {rate:.0f} MB/s")


def test_relayed_messages_replayed_after_a_restart_reach_no_member(simulated_lan: SimulatedLan, halves) -> None:
    made, relayed = halves
    relayed["on"] = True
    simulated_lan.partition(made[0].host, made[1].host)
    join_all(made)
    received, seen, _ = stream(made[0], made[1], 2)
    assert seen
    recorded = [m for m in relayed["messages"] if m[1] == made[1].node]
    made[1].agent.close()  # the receiving provider restarts
    made[1].paths.clear()
    made[1].start_agent()
    made[1].agent.join("net-1", made[1].netns, {h.node: h.endpoint for h in made})
    relayed["on"] = False
    before = made[1].stats()["net-1"]["delivered"]
    answers: list[bytes] = []
    made[1].relay = lambda sender, network, peer, message: answers.append(message)
    for sender, _, network, message in recorded:
        made[1].agent.relay_in(network, sender, message)
    # its control channel is in order: it answers stats once it has taken (and answered) every message
    assert made[1].stats()["net-1"]["delivered"] == before == 0
    assert answers and all(a[:1] in (b"X", b"h", b"T", b"P") for a in answers), sorted({a[:1] for a in answers})
    assert any(a[:1] == b"X" for a in answers), "records of a session it never had were not refused"


def test_a_host_without_the_key_reaches_no_member(simulated_lan: SimulatedLan, halves, tmp_path: Path) -> None:
    made, _ = halves
    join_all(made)
    wait_for_path(made[1], "direct")
    stranger = simulated_lan.add_host("evil")
    their = provider_files(tmp_path / "evil")
    # the dialer's certificate is public: the stranger shows it, but holds another key
    attack = (
        "import socket, ssl, sys\n"
        "field = lambda b: len(b).to_bytes(4, 'big') + b\n"
        f"cert = open('{made[0].options.certificate_file}', 'rb').read()\n"
        "from cryptography import x509; from cryptography.hazmat.primitives import serialization\n"
        "der = x509.load_pem_x509_certificate(cert).public_bytes(serialization.Encoding.DER)\n"
        "def attempt(preamble, tls=True):\n"
        f"    raw = socket.create_connection(('{made[1].host.address}', {made[1].agent.port}), timeout=5)\n"
        "    raw.sendall(preamble)\n"
        "    if not tls: raw.settimeout(8); return raw.recv(100)\n"
        "    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE\n"
        f"    ctx.load_cert_chain('{their.certificate_file}', '{their.key_file}')\n"
        "    try:\n"
        "        n = int.from_bytes(raw.recv(4), 'big'); raw.recv(n)\n"
        "        s = ctx.wrap_socket(raw); s.sendall(b'x' * 100); s.settimeout(5); return s.recv(100)\n"
        "    except (OSError, ValueError) as e: return type(e).__name__\n"
        "print(attempt(b'EXOV2\\n' + field(b'net-1') + field(der)))\n"
        "print(attempt(b'EXOV2\\n' + field(b'net-1') + field(bytes(300)), tls=False))\n"
        "print(attempt(bytes(1 << 12), tls=False))\n"
    )
    done = stranger.run([sys.executable, "-c", attack], timeout=60)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "b''" or not lines[0].startswith("b'"), lines  # TLS refused it: not a byte back
    assert lines[1:] == ["b''", "b''"], lines  # closed without a word
    direct = [p for p in made[1].paths if p.get("path") == "direct"]
    assert direct == [{"op": "path", "network": "net-1", "peer": made[0].node, "path": "direct"}]
    received, seen, _ = stream(made[0], made[1], 4)
    assert received == 4 * (1 << 20) + len(MARKER) and seen


def test_a_member_cannot_pass_for_another_and_a_removed_one_is_cut_off(simulated_lan: SimulatedLan, halves) -> None:
    made, relayed = halves
    third = relayed["add"]("pc")
    everyone = sorted(made, key=lambda h: h.node)
    join_all(everyone)
    for half in everyone:
        for other in everyone:
            if other is not half:
                wait_for_path(half, "direct", other.node, timeout=15)
    a, b = made[0], made[1]
    # the third member shows a's certificate to b: it holds its own key only, so the handshake fails
    attack = (
        "import socket, ssl\n"
        "from cryptography import x509; from cryptography.hazmat.primitives import serialization\n"
        "field = lambda x: len(x).to_bytes(4, 'big') + x\n"
        f"der = x509.load_pem_x509_certificate(open('{a.options.certificate_file}', 'rb').read())"
        ".public_bytes(serialization.Encoding.DER)\n"
        f"raw = socket.create_connection(('{b.host.address}', {b.agent.port}), timeout=5)\n"
        "raw.sendall(b'EXOV2\\n' + field(b'net-1') + field(der))\n"
        "n = int.from_bytes(raw.recv(4), 'big'); raw.recv(n)\n"
        "ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE\n"
        f"ctx.load_cert_chain('{third.options.certificate_file}', '{third.options.key_file}')\n"
        "try:\n"
        "    s = ctx.wrap_socket(raw); s.sendall(b'x'); s.settimeout(5); print(s.recv(10))\n"
        "except (OSError, ValueError) as e: print('refused', type(e).__name__)\n"
    )
    done = third.host.run([sys.executable, "-c", attack], timeout=60)
    assert done.returncode == 0 and (done.stdout.startswith("refused") or done.stdout == "b''\n"), \
        (done.stdout, done.stderr)  # TLS refused it: not a byte back
    assert [p["peer"] for p in b.paths if p.get("path") == "direct"].count(a.node) == 1, "a's link was replaced"
    assert reaches(a, b)
    # the requestor removes the third member from a and b: its links go, and it cannot come back
    for half in (a, b):
        half.agent.set_peers("net-1", {h.node: h.endpoint for h in (a, b)})
    assert [half.stats()["net-1"]["peers"] for half in (a, b)] == [1, 1], "a or b still counts the third as a peer"
    assert not reaches(third, a) and not reaches(third, b)
    assert reaches(a, b)


def test_slow_handshakes_hold_up_no_real_peer(simulated_lan: SimulatedLan, halves) -> None:
    made, _ = halves
    evil = simulated_lan.add_host("slow")
    slow = evil.spawn([sys.executable, "-c",
                       "import socket, time\n"
                       "held = []\n"
                       "for _ in range(100):\n"
                       f"    try: s = socket.create_connection(('{made[1].host.address}', {made[1].agent.port}), timeout=2)\n"
                       "    except OSError: continue\n"
                       "    s.sendall(b'EX'); held.append(s)\n"
                       "print('holding', len(held), flush=True); time.sleep(30)\n"],
                      stdout=subprocess.PIPE, text=True)
    assert slow.stdout is not None and slow.stdout.readline().startswith("holding")
    try:
        join_all(made)  # the genuine dialer's handshake starts now, behind a hundred slow ones
        took = wait_for_path(made[1], "direct", made[0].node, timeout=4)
    finally:
        slow.kill()
        slow.wait()
    assert reaches(made[0], made[1])
    print(f"direct link {took:.2f} s after join, with 100 slow connections open")


def test_the_learning_table_stops_at_its_bound(simulated_lan: SimulatedLan, halves) -> None:
    made, _ = halves
    join_all(made)
    wait_for_path(made[1], "direct")
    # a member sends broadcast frames from 500 forged source addresses; the far side learns 64
    flood = made[0].run(
        "import os, socket\n"
        "s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW); s.bind(('eth0', 0))\n"
        "for _ in range(500):\n"
        "    source = bytes([os.urandom(1)[0] & 0xFE]) + os.urandom(5)\n"
        "    s.send(b'\\xff' * 6 + source + b'\\x88\\xb5' + bytes(46))\n")
    assert flood.wait(30) == 0
    deadline = time.monotonic() + 5
    while (table := made[1].stats()["net-1"])["macs_refused"] < 400 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert table["macs"] == 64 and table["macs_refused"] >= 400, table
    assert reaches(made[0], made[1])  # frames to unlearnt addresses still arrive (flooded)


def test_an_agent_dials_none_of_its_hosts_addresses_in_any_spelling(simulated_lan: SimulatedLan, halves) -> None:
    made, _ = halves
    listener = made[0].host.spawn([sys.executable, "-c",
                                   "import socket; s = socket.create_server(('::', 7300), family=socket.AF_INET6, "
                                   "dualstack_ipv6=True); print('ready', flush=True); s.settimeout(3)\n"
                                   "try: s.accept(); print('dialled')\nexcept OSError: print('quiet')"],
                                  stdout=subprocess.PIPE, text=True)
    assert listener.stdout is not None and listener.stdout.readline() == "ready\n"
    own = made[0].host.address
    made[0].agent.join("net-2", made[0].netns, {
        "0x" + "f" * 40: "127.0.0.1:7300", "0x" + "e" * 40: "[::ffff:127.0.0.1]:7300", "0x" + "d" * 40: "[::1]:7300",
        "0x" + "c" * 40: f"{own}:7300", "0x" + "b" * 40: f"[::ffff:{own}]:7300", "0x" + "a" * 40: "169.254.1.1:7300"})
    assert listener.stdout.readline() == "quiet\n"
    listener.wait(10)


def test_the_address_rules() -> None:
    lan = PeerAddressPolicy("10.1.2.3")
    for refused in ("127.0.0.1", "::1", "::ffff:127.0.0.1", "0.0.0.0", "::", "224.0.0.1", "ff02::1", "169.254.9.9",
                    "fe80::1", "::ffff:169.254.9.9"):
        assert lan.refusal(ipaddress.ip_address(refused)), refused
    assert lan.refusal(ipaddress.ip_address("10.1.2.4")) is None
    ranged = PeerAddressPolicy("10.1.2.3", [ipaddress.ip_network("10.1.2.0/24")])
    assert ranged.refusal(ipaddress.ip_address("10.1.2.4")) is None
    assert "overlay-peer-ranges" in ranged.refusal(ipaddress.ip_address("172.17.0.2"))
    assert "loopback" not in (PeerAddressPolicy("127.0.0.1").refusal(ipaddress.ip_address("127.0.0.1")) or "")


def test_a_link_is_bound_to_its_network(tmp_path: Path) -> None:
    """Two genuine providers, but the ends were opened for different networks (an on-path party
    swapped the clear preambles of two connections): the handshake fails."""
    from exeunit.runtime.overlay.tls import LinkError, OverlayIdentity, TlsLink

    ends = []
    for name in ("one", "two"):
        files = provider_files(tmp_path / name)
        ends.append(OverlayIdentity.load(files.certificate_file, files.key_file))
    one, two = sorted(ends, key=lambda e: e.node)

    def handshake(client_network: str, server_network: str) -> None:
        client = TlsLink(one, two.node, two.certificate_der, server_side=False, network=client_network)
        server = TlsLink(two, one.node, one.certificate_der, server_side=True, network=server_network)
        out = client.handshake()
        for _ in range(4):
            out = client.handshake(server.handshake(out)) if out else b""
            if client.established and server.established:
                return
        raise AssertionError("no handshake")

    handshake("net-a", "net-a")
    with pytest.raises(LinkError):
        handshake("net-a", "net-b")


def test_a_strangers_relayed_bytes_end_no_agent(simulated_lan: SimulatedLan, halves) -> None:
    """A certificate of a key kind nobody takes, an acknowledgement of the wrong size, a message
    too short: each is refused, and the agent goes on carrying the network."""
    made, relayed = halves
    relayed["on"] = True
    simulated_lan.partition(made[0].host, made[1].host)
    join_all(made)
    assert reaches(made[0], made[1], seconds=8)
    der = made[0].options.certificate_file
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    certificate = x509.load_pem_x509_certificate(Path(der).read_bytes()).public_bytes(serialization.Encoding.DER)
    unknown_curve = certificate.replace(bytes.fromhex("2a8648ce3d0201"), bytes.fromhex("2a8648ce3d0209"), 1)
    for message in (b"H" + bytes(8) + unknown_curve, b"H" + bytes(8) + b"junk", b"T" + bytes(3), b"", b"h" + bytes(8)):
        made[1].agent.relay_in("net-1", made[0].node, message)
    assert made[1].stats()["net-1"]["peers"] == 1  # answered once it has taken them all (its channel is in order)
    assert made[1].agent.process.poll() is None, "the agent ended"
    assert reaches(made[0], made[1], seconds=8)


def test_a_member_cannot_draw_anothers_traffic_by_its_address(simulated_lan: SimulatedLan, halves) -> None:
    """A member sends a frame from the address of a member on the other provider: the other
    provider drops it (that address lives there), so its members' traffic is not drawn away."""
    made, _ = halves
    join_all(made)
    wait_for_path(made[1], "direct")
    assert reaches(made[0], made[1])  # b's member has spoken: its address is known to live at b
    victim_mac = subprocess.run(["ip", "-n", made[1].member, "-j", "link", "show", "eth0"], capture_output=True,
                                text=True, check=True).stdout
    victim = json.loads(victim_mac)[0]["address"]
    spoof = made[0].run(
        "import socket\n"
        "s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW); s.bind(('eth0', 0))\n"
        f"s.send(b'\\xff' * 6 + bytes.fromhex('{victim.replace(':', '')}') + b'\\x88\\xb5' + bytes(46))\n")
    assert spoof.wait(30) == 0
    deadline = time.monotonic() + 5
    while made[1].stats()["net-1"]["spoofed"] < 1:
        assert time.monotonic() < deadline, ("the spoofed frame was delivered", victim, made[1].stats())
        time.sleep(0.1)
    # b's bridge still sends its member's traffic to its member, not out to the overlay
    fdb = subprocess.run(["bridge", "-n", made[1].netns, "fdb", "show", "br", "br0"], capture_output=True, text=True,
                         check=True).stdout
    assert any(line.startswith(victim) and " dev vm " in line for line in fdb.splitlines()), fdb
    assert not any(line.startswith(victim) and " dev ov0 " in line for line in fdb.splitlines()), fdb
