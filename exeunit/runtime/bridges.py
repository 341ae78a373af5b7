"""Private networks as the Linux kernel builds them, without Docker and without the host.

Each network is a named network namespace (`/run/netns/exeunit-HOME-KEY`) holding one bridge
with no address at all: a switch nobody can talk to. A member container gets a veth pair: one
end becomes its `eth0`, with its address and only the route to its own subnet; the other end is
plugged into the bridge. Nothing of a network appears in the host's namespace, so:

- the host is unreachable from a network (it has no interface on it; Docker's `internal`
  networks give the host an address on the bridge, through which containers reach host services),
- networks cannot see each other, and two requestors may both use 192.168.0.0/24 (Docker's IPAM
  refuses overlapping subnets on one host),
- nothing routes out: the member's only route is its subnet.

IPv6 address generation is off on every link, so no link-local address appears either.
Deleting the namespace takes the bridge and every veth pair with it: members lose their
interface at once. Driven through iproute2's `ip` and util-linux's `nsenter`, as root.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
from collections.abc import Iterable
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

from exeunit import errors

log = logging.getLogger(__name__)

NETNS_DIR = Path("/run/netns")
BRIDGE = "br0"
MEMBER_INTERFACE = "eth0"
COMMAND_SECONDS = 10.0
# Large frames: the members' TCP sends 64 KiB at a time, which keeps the overlay's frames between
# providers few (exeunit.runtime.overlay; its TAP has the same MTU), and costs nothing locally.
MEMBER_MTU = 65000


class BridgePlumbing:
    """Creates, joins and removes the namespaces of one provider home's networks."""

    def __init__(self, home_id: str) -> None:
        self.prefix = f"exeunit-{home_id[:8]}-"

    @staticmethod
    def unavailable() -> str | None:
        """Why networks cannot be built on this host, or None when they can."""
        if os.geteuid() != 0:
            return "the daemon does not run as root"
        missing = [tool for tool in ("ip", "nsenter") if shutil.which(tool) is None]
        if missing:
            return f"{' and '.join(missing)} not found (install iproute2 and util-linux)"
        return None

    def namespace(self, key: str) -> str:
        return self.prefix + key

    def existing(self) -> set[str]:
        """Keys of this home's namespaces that exist now (a restarted daemon finds its own)."""
        try:
            names = os.listdir(NETNS_DIR)
        except FileNotFoundError:
            return set()
        return {name[len(self.prefix):] for name in names if name.startswith(self.prefix)}

    async def create(self, key: str) -> None:
        name = self.namespace(key)
        await _ip("netns", "add", name)
        try:
            await _ip_batch(["-n", name], [
                f"link add {BRIDGE} type bridge",
                f"link set {BRIDGE} addrgenmode none",
                f"link set {BRIDGE} up",
            ])
        except errors.ExeUnitError:
            await self.remove(key)
            raise
        log.info("event=network_namespace_created namespace=%s", name)

    async def attach(self, key: str, member: str, netns_fd: int, ip: IPv4Address, subnet: IPv4Network) -> None:
        """Plugs the network namespace `netns_fd` refers to (a container's) into the network at `ip`."""
        name = self.namespace(key)
        port = _port_name(member)
        await _run(["nsenter", f"--net=/proc/self/fd/{netns_fd}", "ip", "-batch", "-"], [
            f"link add {MEMBER_INTERFACE} type veth peer name {port} netns {name}",
            f"link set {MEMBER_INTERFACE} addrgenmode none",
            f"addr add {ip}/{subnet.prefixlen} dev {MEMBER_INTERFACE}",
            f"link set {MEMBER_INTERFACE} mtu {MEMBER_MTU} up",
        ], pass_fds=(netns_fd,))
        await _ip_batch(["-n", name], [
            f"link set {port} addrgenmode none",
            f"link set {port} mtu {MEMBER_MTU} master {BRIDGE} up",
        ])

    async def detach(self, key: str, member: str) -> None:
        """Unplugs a member at once (its container may take a while to go). Never raises."""
        try:
            await _ip("-n", self.namespace(key), "link", "del", _port_name(member))
        except errors.ExeUnitError:
            pass  # gone with its container already

    async def remove(self, key: str, members: Iterable[str] = ()) -> None:
        """Deletes the namespace, its bridge and every member's link. Never raises. The kernel
        frees a namespace's links in the background: `members` are unplugged first, at once."""
        name = self.namespace(key)
        unplug = [f"link del {_port_name(member)}" for member in members]
        if unplug:
            try:
                await _ip_batch(["-force", "-n", name], unplug)
            except errors.ExeUnitError:
                pass  # some were gone with their containers already
        try:
            await _ip("netns", "del", name)
            log.info("event=network_namespace_removed namespace=%s", name)
        except errors.ExeUnitError as exc:
            if (NETNS_DIR / name).exists():
                log.warning("event=network_namespace_not_removed namespace=%s error=%s", name, exc)


def _port_name(member: str) -> str:
    """The bridge-side link of a member: interface names have at most 15 characters."""
    return "v" + member[:14]


async def _ip(*args: str) -> None:
    await _run(["ip", *args], [])


async def _ip_batch(options: list[str], lines: list[str]) -> None:
    await _run(["ip", *options, "-batch", "-"], lines)


async def _run(argv: list[str], lines: list[str], pass_fds: tuple[int, ...] = ()) -> None:
    process = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        pass_fds=pass_fds,
    )
    try:
        _, stderr = await asyncio.wait_for(process.communicate("\n".join(lines).encode() + b"\n"), COMMAND_SECONDS)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise errors.RuntimeFailure(f"{argv[0]} did not finish within {COMMAND_SECONDS:g}s") from None
    if process.returncode != 0:
        raise errors.RuntimeFailure(
            f"network set-up failed ({' '.join(argv[:4])}): {stderr.decode(errors='replace').strip()[:300]}"
        )
