"""Many hosts on one machine: simulated hosts on a simulated LAN, for tests that need a network
between providers and requestors, and faults on cue.

A `SimulatedLan` is a switch (a bridge in a network namespace of its own, so that nothing of the
machine's own network is touched) and hosts plugged into it: each host is a network namespace with
one interface, `eth0`, cabled to the switch by a veth pair and addressed in the LAN's /24. Programs
run "on" a host with `host.spawn(argv)` (in its network namespace only: they share this machine's
files, processes and Docker engine, as provider daemons on one engine must). `attach_here()` plugs
this process's own namespace in too, so that a test can talk to the hosts directly.

`lan.capture()` records every frame crossing the switch, as a listener on the LAN would see them
(to check what travels in clear).

Faults, as a real network has them: `link_down()` / `link_up()` pull and replug a host's cable;
`lan.partition(a, b)` cuts two hosts off from each other only;
`impair(loss_percent=..., rate_kbit=..., delay_ms=...)` drops a share of its packets both ways
(nftables' random numbers), caps its bandwidth both ways (`tc tbf`) and delays them (`tc netem`,
where the kernel has it: CONFIG_NET_SCH_NETEM; otherwise asking for delay raises, saying so);
and the processes a host runs can be killed like any other.

Needs root, iproute2 (`ip`, `tc`), nftables (`nft`) and util-linux (`nsenter`). Everything made is removed by
`close()` (namespaces, links, addresses), also after a failed set-up.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import shutil
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

NETNS_DIR = Path("/run/netns")
PREFIX = "exsim"  # every namespace and link made here starts with it (see `leftovers`)


class SimulationError(RuntimeError):
    """The simulated network could not be made or changed; says which command failed and why."""


def _run(*argv: str, netns: str | None = None) -> None:
    command = ["ip", "netns", "exec", netns, *argv] if netns else list(argv)
    done = subprocess.run(command, capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise SimulationError(f"{' '.join(command)} failed: {(done.stderr or done.stdout).strip()}")


def unavailable() -> str | None:
    """None when this machine can simulate hosts, else why not (for a skip or an error message)."""
    if os.geteuid() != 0:
        return "simulated hosts need root (network namespaces)"
    for tool in ("ip", "tc", "nft", "nsenter"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (Debian: iproute2, nftables, util-linux)"
    return None


# Run in the switch's namespace: every frame on every port, length-prefixed, to stdout until killed.
CAPTURE_PROGRAM = r"""
import os, socket, struct, sys
sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
os.write(1, b"ready\n")
out = sys.stdout.buffer
while True:
    frame = sock.recv(65535)
    out.write(struct.pack("!I", len(frame)) + frame)
    out.flush()
"""

NO_NETEM = "this kernel has no netem qdisc (CONFIG_NET_SCH_NETEM), so delay cannot be simulated here"
IMPAIRMENT_TABLE = "exsim_impair"
PARTITION_TABLE = "exsim_partition"


@dataclass
class SimulatedHost:
    """One host: a network namespace with `eth0` at `address` on the LAN."""

    name: str
    address: str
    netns: str  # the namespace's name under /run/netns
    port: str  # its cable's end in the switch's namespace
    lan: SimulatedLan = field(repr=False)

    def spawn(self, argv: Sequence[str], **popen: object) -> subprocess.Popen[str]:
        """Starts `argv` on this host (in its network namespace; everything else is shared)."""
        return subprocess.Popen(["nsenter", f"--net={NETNS_DIR / self.netns}", "--", *argv], **popen)  # type: ignore[call-overload,no-any-return]

    def run(self, argv: Sequence[str], timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        """Runs `argv` on this host to its end; its output as text."""
        return subprocess.run(["nsenter", f"--net={NETNS_DIR / self.netns}", "--", *argv], capture_output=True,
                              text=True, timeout=timeout)

    def link_down(self) -> None:
        """Pulls the host's cable: nothing reaches it or leaves it until `link_up`."""
        _run("ip", "link", "set", self.port, "down", netns=self.lan.switch)

    def link_up(self) -> None:
        _run("ip", "link", "set", self.port, "up", netns=self.lan.switch)

    def impair(self, loss_percent: float = 0.0, rate_kbit: int = 0, delay_ms: float = 0.0) -> None:
        """Loss, a bandwidth cap and delay on everything the host sends and receives; replaces any
        impairment it had. Raises SimulationError for delay on a kernel without netem."""
        self.clear_impairment()
        ends = ((self.lan.switch, self.port), (self.netns, "eth0"))  # both directions
        if delay_ms or rate_kbit:
            if delay_ms:
                spec = ["netem", "delay", f"{delay_ms / 2}ms"] + (["rate", f"{rate_kbit}kbit"] if rate_kbit else [])
            else:
                spec = ["tbf", "rate", f"{rate_kbit}kbit", "burst", "16kb", "latency", "500ms"]
            for netns, device in ends:
                try:
                    _run("tc", "qdisc", "replace", "dev", device, "root", *spec, netns=netns)
                except SimulationError as exc:
                    if delay_ms and "unknown" in str(exc):
                        raise SimulationError(NO_NETEM) from None
                    raise
        if loss_percent:
            threshold = round(loss_percent * 100)  # of 10,000
            chance = "" if threshold >= 10000 else f"numgen random mod 10000 < {threshold} "
            self._nft(f"""table inet {IMPAIRMENT_TABLE} {{
                chain inbound {{ type filter hook input priority 0; iifname "eth0" {chance}drop; }}
                chain outbound {{ type filter hook output priority 0; oifname "eth0" {chance}drop; }}
            }}""")

    def refuse_from(self, other: SimulatedHost) -> None:
        """Drops everything `other` sends this host (one half of SimulatedLan.partition)."""
        self._nft(f"""table inet {PARTITION_TABLE} {{
            chain inbound {{ type filter hook input priority 0; ip saddr {other.address} drop; }}
        }}""")

    def _nft(self, rules: str) -> None:
        done = subprocess.run(["ip", "netns", "exec", self.netns, "nft", "-f", "-"], input=rules,
                              capture_output=True, text=True, timeout=30)
        if done.returncode != 0:
            raise SimulationError(f"nft on host {self.name} failed: {done.stderr.strip()}")

    def clear_impairment(self) -> None:
        for netns, device in ((self.lan.switch, self.port), (self.netns, "eth0")):
            subprocess.run(["ip", "netns", "exec", netns, "tc", "qdisc", "del", "dev", device, "root"],
                           capture_output=True, timeout=30)
        subprocess.run(["ip", "netns", "exec", self.netns, "nft", "delete", "table", "inet", IMPAIRMENT_TABLE],
                       capture_output=True, timeout=30)


class Capture:
    """Frames recorded on a LAN's switch (every port, so a forwarded frame shows up twice)."""

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        self._process = process
        assert process.stdout is not None
        if process.stdout.readline() != b"ready\n":
            process.kill()
            raise SimulationError("the capture on the switch did not start")
        self._frames: list[bytes] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        stream = self._process.stdout
        assert stream is not None
        while len(header := stream.read(4)) == 4:
            self._frames.append(stream.read(struct.unpack("!I", header)[0]))

    def stop(self) -> list[bytes]:
        """Ends the capture; every frame recorded."""
        time.sleep(0.2)  # frames in flight
        self._process.kill()
        self._process.wait()
        self._reader.join(5)
        return list(self._frames)


class SimulatedLan:
    """A switch and the hosts plugged into it, in a /24 of 10.x.y.0 picked at random."""

    def __init__(self) -> None:
        self.id = secrets.token_hex(3)
        self.switch = f"{PREFIX}-{self.id}-sw"
        self.network = ipaddress.ip_network(f"10.{secrets.randbelow(200) + 20}.{secrets.randbelow(250) + 1}.0/24")
        self.hosts: dict[str, SimulatedHost] = {}
        self._here: str | None = None  # this namespace's end of its cable, once attached
        self.here_address: str | None = None  # this process's address on the LAN, once attached
        self._next_address = 1
        try:
            _run("ip", "netns", "add", self.switch)
            _run("ip", "link", "add", "br0", "type", "bridge", netns=self.switch)
            _run("ip", "link", "set", "br0", "up", netns=self.switch)
        except SimulationError:
            self.close()
            raise

    def _address(self) -> str:
        address = str(self.network[self._next_address])
        self._next_address += 1
        if self._next_address >= 255:
            raise SimulationError(f"the LAN {self.network} is full")
        return address

    def add_host(self, name: str) -> SimulatedHost:
        """Plugs in a new host named `name` (letters and digits, short) and returns it."""
        if not name.isalnum() or len(name) > 6 or name in self.hosts:
            raise ValueError(f"host names are up to 6 letters or digits, each once per LAN; not {name!r}")
        netns, port = f"{PREFIX}-{self.id}-{name}", f"p-{name}"
        address = self._address()
        try:
            _run("ip", "netns", "add", netns)
            _run("ip", "link", "set", "lo", "up", netns=netns)
            _run("ip", "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", netns, netns=self.switch)
            _run("ip", "link", "set", port, "master", "br0", "up", netns=self.switch)
            _run("ip", "addr", "add", f"{address}/{self.network.prefixlen}", "dev", "eth0", netns=netns)
            _run("ip", "link", "set", "eth0", "up", netns=netns)
        except SimulationError:
            subprocess.run(["ip", "netns", "del", netns], capture_output=True, timeout=30)
            raise
        host = SimulatedHost(name, address, netns, port, self)
        self.hosts[name] = host
        return host

    def partition(self, one: SimulatedHost, other: SimulatedHost) -> None:
        """Cuts the two hosts off from each other, both ways, while each still reaches every other
        host (a firewall between two providers that both reach the requestor)."""
        one.refuse_from(other)
        other.refuse_from(one)

    def capture(self) -> Capture:
        """Starts recording the frames crossing the switch; `stop()` returns them."""
        return Capture(subprocess.Popen(["ip", "netns", "exec", self.switch, sys.executable, "-c", CAPTURE_PROGRAM],
                                        stdout=subprocess.PIPE))

    def attach_here(self) -> str:
        """Plugs this process's own network namespace into the LAN; returns its address there."""
        if self._here is not None:
            raise SimulationError("this namespace is attached already")
        address = self._address()
        here, port = f"{PREFIX}{self.id}", "p-here"
        _run("ip", "link", "add", here, "type", "veth", "peer", "name", port, "netns", self.switch)
        self._here = here
        _run("ip", "link", "set", port, "master", "br0", "up", netns=self.switch)
        _run("ip", "addr", "add", f"{address}/{self.network.prefixlen}", "dev", here)
        _run("ip", "link", "set", here, "up")
        self.here_address = address
        return address

    def close(self) -> None:
        """Removes the hosts, the switch and this namespace's cable. Idempotent."""
        if self._here is not None:
            subprocess.run(["ip", "link", "del", self._here], capture_output=True, timeout=30)
            self._here = None
        for host in list(self.hosts.values()):
            subprocess.run(["ip", "netns", "del", host.netns], capture_output=True, timeout=30)
        self.hosts.clear()
        subprocess.run(["ip", "netns", "del", self.switch], capture_output=True, timeout=30)

    def __enter__(self) -> SimulatedLan:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def leftovers() -> list[str]:
    """Namespaces a simulated LAN left behind (a test process that was killed)."""
    return sorted(p.name for p in NETNS_DIR.glob(f"{PREFIX}-*")) if NETNS_DIR.is_dir() else []
