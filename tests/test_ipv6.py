"""Daemons on IPv6 (issue 25): `--listen [::1]:PORT` is loopback (plaintext, as 127.0.0.1 is),
`--listen [::]:PORT` every address of both families (TLS, as beyond loopback always); requestors
name them `[::1]:PORT`, pinned or not, and run commands there."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from requestor import Golem
from requestor.client import ProviderClient
from requestor.client.connect import KnownProviders, ProviderIdentityError
from requestor.client.identity import RequestorIdentity
from requestor.payload import vm
from requestor.services import Service
from tests.conftest import BASE_IMAGE
from tests.daemon_process import Daemon


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


needs_ipv6_loopback = pytest.mark.skipif(
    not _ipv6_loopback(), reason="this machine has no IPv6 loopback (`ip -6 addr show lo` shows no ::1)")


class Echo(Service):
    """Says one word and is done; the word goes to `heard`."""

    heard: asyncio.Future[str]

    @staticmethod
    async def get_payload():
        return await vm.repo(image_tag=BASE_IMAGE)

    async def run(self):
        script = self._ctx.new_script()
        said = script.run("/bin/sh", "-c", "echo heard-over-ipv6")
        yield script
        Echo.heard.set_result((await said).stdout.strip())


async def _run_a_command(address: str) -> str:
    Echo.heard = asyncio.get_running_loop().create_future()
    async with Golem(budget=1.0, providers=[address]) as golem:
        await golem.run_service(Echo)
        return await asyncio.wait_for(Echo.heard, 120)


@needs_ipv6_loopback
async def test_a_daemon_on_ipv6_loopback_runs_commands_in_plaintext(engine, tmp_path: Path) -> None:
    daemon = Daemon("--listen", "[::1]:0")
    try:
        assert any("address=[::1]:0" in line and "transport=plaintext" in line for line in daemon.lines), daemon.lines
        address = f"[::1]:{daemon.port}"
        assert await _run_a_command(f"{address}#{daemon.provider_id}") == "heard-over-ipv6"
        client = ProviderClient(address, RequestorIdentity.ephemeral(), known=KnownProviders(tmp_path / "known"))
        assert (await client.offer()).provider_id == daemon.provider_id  # named bare, as on 127.0.0.1
        await client.close()
        wrong = ProviderClient(f"{address}#0x{'ab' * 20}", RequestorIdentity.ephemeral())
        with pytest.raises(ProviderIdentityError, match="as pinned"):
            await wrong.offer()
    finally:
        assert daemon.stop() == 0, "".join(daemon.lines[-30:])


@needs_ipv6_loopback
async def test_a_daemon_on_every_address_answers_both_families_in_tls(engine, tmp_path: Path) -> None:
    daemon = Daemon("--listen", "[::]:0")  # dual stack: its overlay agent too
    try:
        assert any("address=[::]:0" in line and "transport=tls" in line for line in daemon.lines), daemon.lines
        known = KnownProviders(tmp_path / "known")
        for address in (f"127.0.0.1:{daemon.port}", f"[::1]:{daemon.port}"):
            client = ProviderClient(address, RequestorIdentity.ephemeral(), known=known)
            assert (await client.offer()).provider_id == daemon.provider_id
            await client.close()
        assert known.path.read_text().splitlines() == [f"127.0.0.1:{daemon.port} {daemon.provider_id}",
                                                       f"[::1]:{daemon.port} {daemon.provider_id}"]
        assert await _run_a_command(f"[::1]:{daemon.port}#{daemon.provider_id}") == "heard-over-ipv6"
    finally:
        assert daemon.stop() == 0, "".join(daemon.lines[-30:])


def test_announcing_an_ipv6_address_says_what_to_listen_on() -> None:
    """mDNS here is IPv4 (as requestors browse): an IPv6 --listen other than [::] has nothing to announce."""
    done = subprocess.run([sys.executable, "-m", "exeunit", "serve", "--listen", "[2001:db8::5]:0", "--announce"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert "--announce publishes IPv4 addresses only" in done.stderr and "listen on [::]" in done.stderr
