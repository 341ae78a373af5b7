"""Providers found without a list (issue 19), on simulated hosts: announced with mDNS and found
from another host, or named in SRV records served by a real DNS server (dnsmasq); either way
verified by the id published with them."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap

import pytest

from exeunit.testing.hosts import SimulatedLan
from requestor.client import ProviderClient
from requestor.client.connect import KnownProviders, ProviderIdentityError
from requestor.discovery import DiscoveryError, discover
from requestor.client.identity import RequestorIdentity

# Run on another simulated host: discovers with mDNS, then asks each provider found for its offer
# (which connects over TLS, pinned to the id its announcement carried).
FIND_AND_ASK = textwrap.dedent("""
    import asyncio, sys
    from requestor.client import ProviderClient
    from requestor.discovery import discover
    from requestor.client.identity import RequestorIdentity

    async def main():
        for address in await discover("mdns:3"):
            client = ProviderClient(address, RequestorIdentity.ephemeral())
            offer = await client.offer()
            print(address, offer.provider_id, offer.provider_name, flush=True)
            await client.close()

    asyncio.run(main())
""")


def test_providers_announced_with_mdns_are_found_from_another_host_and_verified(
        simulated_lan: SimulatedLan, provider_daemons) -> None:
    one = provider_daemons(simulated_lan.add_host("p1"), "--announce", name="announced-one")
    two = provider_daemons(simulated_lan.add_host("p2"), "--announce", name="announced-two")
    quiet = provider_daemons(simulated_lan.add_host("p3"), name="not-announced")
    requestor = simulated_lan.add_host("req")
    done = requestor.run([sys.executable, "-c", FIND_AND_ASK], timeout=60)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = sorted(done.stdout.splitlines())
    assert lines == sorted([f"{one.pinned_address} {one.provider_id} announced-one",
                            f"{two.pinned_address} {two.provider_id} announced-two"]), done.stderr[-2000:]
    assert quiet.address not in done.stdout
    assert any("event=announced" in line for line in one.log)


def test_announcing_a_loopback_address_is_refused() -> None:
    done = subprocess.run([sys.executable, "-m", "exeunit", "serve", "--listen", "127.0.0.1:0", "--announce"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "listen on the LAN's address" in done.stderr


class Dnsmasq:
    """A real DNS server on a simulated host, serving the given records and nothing else."""

    def __init__(self, host, *records: str) -> None:
        self.address = host.address
        self.process = host.spawn([shutil.which("dnsmasq") or "dnsmasq", "--keep-in-foreground", "--no-resolv",
                                   "--no-hosts", "--bind-interfaces", f"--listen-address={host.address}",
                                   "--pid-file=", "--user=root", "--log-facility=-", *records],
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def stop(self) -> None:
        self.process.kill()
        self.process.wait()


async def test_providers_named_in_srv_records_are_found_and_verified(simulated_lan: SimulatedLan, provider_daemons,
                                                                     tmp_path) -> None:
    if shutil.which("dnsmasq") is None:
        pytest.fail("dnsmasq is missing: scripts/setup.sh installs it (Debian's dnsmasq-base)")
    pinned = provider_daemons(simulated_lan.add_host("p1"), name="srv-pinned")
    unpinned = provider_daemons(simulated_lan.add_host("p2"), name="srv-unpinned")
    impostor = provider_daemons(simulated_lan.add_host("p3"), name="srv-impostor")
    dns = Dnsmasq(
        simulated_lan.add_host("dns"),
        f"--host-record=p1.sim.test,{pinned.host.address}", f"--host-record=p2.sim.test,{unpinned.host.address}",
        f"--host-record=p3.sim.test,{impostor.host.address}",
        f"--srv-host=_exeunit._tcp.sim.test,p1.sim.test,{pinned.port},0,10",
        f"--srv-host=_exeunit._tcp.sim.test,p2.sim.test,{unpinned.port},1,10",
        f"--txt-record=p1.sim.test,exeunit:{pinned.port}={pinned.provider_id}",
        f"--srv-host=_lying._tcp.sim.test,p3.sim.test,{impostor.port}",
        f"--txt-record=p3.sim.test,exeunit:{impostor.port}={pinned.provider_id}",  # claims p1's id
    )
    try:
        found = []
        for _ in range(50):  # dnsmasq takes a moment to listen
            try:
                found = await discover(f"srv:_exeunit._tcp.sim.test@{dns.address}")
                break
            except DiscoveryError:
                import asyncio
                await asyncio.sleep(0.1)
        assert found == [pinned.pinned_address, unpinned.address]  # priority order; p2 has no pin published
        known = KnownProviders(tmp_path / "known")
        for address, expected in zip(found, (pinned, unpinned)):
            client = ProviderClient(address, RequestorIdentity.ephemeral(), known=known)
            assert (await client.offer()).provider_id == expected.provider_id
            await client.close()
        assert known.lookup(unpinned.address) == unpinned.provider_id  # trusted on first use, remembered

        [lying] = await discover(f"srv:_lying._tcp.sim.test@{dns.address}")
        client = ProviderClient(lying, RequestorIdentity.ephemeral(), known=known)
        with pytest.raises(ProviderIdentityError, match="not " + pinned.provider_id):
            await client.offer()
        with pytest.raises(DiscoveryError, match="could not be read"):
            await discover(f"srv:_nothing._tcp.sim.test@{dns.address}")
    finally:
        dns.stop()
