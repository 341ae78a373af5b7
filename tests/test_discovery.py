"""Providers found without a list (issue 19), on simulated hosts: announced with mDNS and found
from another host, or named in SRV records served by a real DNS server (dnsmasq); either way
verified by the id published with them, which never overrides what the requestor knows, and a
malformed announcement is skipped without keeping the others from being found (issue 25)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap

import asyncio
import logging
from pathlib import Path

import pytest

from exeunit.testing.hosts import SimulatedLan
from requestor import Golem
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
    assert lines == sorted([f"{one.address}#announced={one.provider_id} {one.provider_id} announced-one",
                            f"{two.address}#announced={two.provider_id} {two.provider_id} announced-two"]), \
        done.stderr[-2000:]
    assert quiet.address not in done.stdout
    assert any("event=announced" in line for line in one.log)


# Run on another simulated host: discovers with mDNS and asks each provider found for its offer,
# checked against the known-providers file named on the command line.
FIND_AND_CHECK = textwrap.dedent("""
    import asyncio, sys
    from pathlib import Path
    from requestor.client import ProviderClient
    from requestor.client.connect import KnownProviders, ProviderIdentityError
    from requestor.discovery import discover
    from requestor.client.identity import RequestorIdentity

    async def main():
        for address in await discover("mdns:3"):
            client = ProviderClient(address, RequestorIdentity.ephemeral(), known=KnownProviders(Path(sys.argv[1])))
            try:
                print(address, "ok", (await client.offer()).provider_id, flush=True)
            except ProviderIdentityError as exc:
                print(address, "refused", exc, flush=True)
            await client.close()

    asyncio.run(main())
""")


def test_a_host_taking_over_a_known_providers_address_is_refused_whatever_it_announces(
        simulated_lan: SimulatedLan, provider_daemons, tmp_path: Path) -> None:
    """The announcement is anybody's word: a LAN host that takes a known provider's address and
    announces its own id there gets the same refusal as a provider whose key changed."""
    host, requestor = simulated_lan.add_host("p1"), simulated_lan.add_host("req")
    known = tmp_path / "known-providers"
    real = provider_daemons(host, "--announce", name="the-real-one")
    first = requestor.run([sys.executable, "-c", FIND_AND_CHECK, str(known)], timeout=60)
    assert first.stdout.splitlines() == [f"{real.address}#announced={real.provider_id} ok {real.provider_id}"], \
        first.stderr[-3000:]
    assert known.read_text() == f"{real.address} {real.provider_id}\n"  # trusted on first use, remembered

    real.stop()
    impostor = provider_daemons(host, "--announce", name="the-real-one", port=real.port)  # its own key
    assert impostor.address == real.address and impostor.provider_id != real.provider_id
    second = requestor.run([sys.executable, "-c", FIND_AND_CHECK, str(known)], timeout=60)
    [line] = second.stdout.splitlines()
    assert line.startswith(f"{real.address}#announced={impostor.provider_id} refused "), second.stderr[-3000:]
    assert f"knows it as {real.provider_id}" in line
    assert f"remove the line for {real.address} from {known}" in line
    assert known.read_text() == f"{real.address} {real.provider_id}\n"  # nothing learnt from the impostor


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
        # priority order; p2 has no id published
        assert found == [f"{pinned.address}#announced={pinned.provider_id}", unpinned.address]
        known = KnownProviders(tmp_path / "known")
        for address, expected in zip(found, (pinned, unpinned)):
            client = ProviderClient(address, RequestorIdentity.ephemeral(), known=known)
            assert (await client.offer()).provider_id == expected.provider_id
            await client.close()
        assert known.lookup(unpinned.address) == unpinned.provider_id  # trusted on first use, remembered

        [lying] = await discover(f"srv:_lying._tcp.sim.test@{dns.address}")
        client = ProviderClient(lying, RequestorIdentity.ephemeral(), known=known)
        with pytest.raises(ProviderIdentityError, match=f"not {pinned.provider_id} as announced"):
            await client.offer()
        with pytest.raises(DiscoveryError, match="could not be read"):
            await discover(f"srv:_nothing._tcp.sim.test@{dns.address}")
    finally:
        dns.stop()


async def _discovered(source: str) -> list[str]:
    for _ in range(50):  # dnsmasq takes a moment to listen
        try:
            return await discover(source)
        except DiscoveryError:
            await asyncio.sleep(0.1)
    return await discover(source)


async def test_malformed_announcements_are_skipped_and_the_others_found(
        simulated_lan: SimulatedLan, provider_daemons, caplog: pytest.LogCaptureFixture) -> None:
    good = provider_daemons(simulated_lan.add_host("p1"), name="srv-good")
    at = good.host.address
    junk, two_ids = good.port + 1, good.port + 2
    dns = Dnsmasq(
        simulated_lan.add_host("dns"),
        *(f"--host-record=p{n}.sim.test,{at}" for n in range(1, 5)),
        f"--srv-host=_exeunit._tcp.sim.test,p1.sim.test,{good.port},0,10",
        f"--txt-record=p1.sim.test,exeunit:{good.port}={good.provider_id}",
        f"--srv-host=_exeunit._tcp.sim.test,p2.sim.test,{junk},1,10",
        f"--txt-record=p2.sim.test,exeunit:{junk}=junk",
        "--srv-host=_exeunit._tcp.sim.test,p3.sim.test,0,2,10",  # no port
        f"--srv-host=_exeunit._tcp.sim.test,p4.sim.test,{two_ids},3,10",
        f"--txt-record=p4.sim.test,exeunit:{two_ids}=0x{'11' * 20},exeunit:{two_ids}=0x{'22' * 20}",
    )
    try:
        source = f"srv:_exeunit._tcp.sim.test@{dns.address}"
        with caplog.at_level(logging.WARNING, logger="requestor.discovery"):
            assert await _discovered(source) == [f"{good.address}#announced={good.provider_id}"]
        skipped = [r.getMessage() for r in caplog.records if "event=announcement_skipped" in r.getMessage()]
        assert len(skipped) == 3, skipped
        assert any("p2.sim.test" in line and "a provider id is 0x and 40 hex digits" in line for line in skipped)
        assert any("p3.sim.test" in line and f"{at}:0" in line for line in skipped)
        assert any("p4.sim.test" in line and "two ids" in line for line in skipped)
        async with Golem(budget=1.0, providers=source) as golem:  # one malformed TXT used to stop it here
            assert golem.providers == [good.address]
    finally:
        dns.stop()


async def test_an_announced_id_never_overrides_the_known_providers(
        simulated_lan: SimulatedLan, provider_daemons, tmp_path: Path) -> None:
    """What DNS says of a provider is checked against what the requestor knows of its address, and
    a contradiction is refused as a changed key is; an address published without an id is a bare
    one: trusted on first use, and checked against the known providers ever after."""
    provider = provider_daemons(simulated_lan.add_host("p1"), name="srv-known")
    liar = "0x" + "33" * 20
    dns = Dnsmasq(
        simulated_lan.add_host("dns"),
        f"--host-record=p1.sim.test,{provider.host.address}", f"--host-record=bare.sim.test,{provider.host.address}",
        f"--srv-host=_lying._tcp.sim.test,p1.sim.test,{provider.port}",
        f"--txt-record=p1.sim.test,exeunit:{provider.port}={liar}",
        f"--srv-host=_bare._tcp.sim.test,bare.sim.test,{provider.port}",  # no TXT record: no id
    )
    try:
        known = KnownProviders(tmp_path / "known-providers")
        known.path.write_text(f"{provider.address} {provider.provider_id}\n")
        [lying] = await _discovered(f"srv:_lying._tcp.sim.test@{dns.address}")
        assert lying == f"{provider.address}#announced={liar}"
        client = ProviderClient(lying, RequestorIdentity.ephemeral(), known=known)
        with pytest.raises(ProviderIdentityError) as refused:
            await client.offer()
        assert str(refused.value) == (
            f"provider {provider.address} now is announced with id {liar}, but {known.path} knows it as "
            f"{provider.provider_id}: its key changed, or something else answers there. If the provider's key was "
            f"replaced on purpose, remove the line for {provider.address} from {known.path}")

        [bare] = await _discovered(f"srv:_bare._tcp.sim.test@{dns.address}")
        assert bare == provider.address
        client = ProviderClient(bare, RequestorIdentity.ephemeral(), known=known)
        assert (await client.offer()).provider_id == provider.provider_id  # the one known there
        await client.close()
        other = KnownProviders(tmp_path / "another-known-providers")
        other.path.write_text(f"{provider.address} 0x{'44' * 20}\n")
        client = ProviderClient(bare, RequestorIdentity.ephemeral(), known=other)
        with pytest.raises(ProviderIdentityError, match=f"knows it as 0x{'44' * 20}.*remove the line for "
                                                        f"{provider.address} from {other.path}"):
            await client.offer()
    finally:
        dns.stop()
