"""A pytest plugin for integration tests across many simulated hosts on one machine, the way
Golem's goth runs nodes, without a compose stack: installed with this package (entry point
`pytest11`), it offers

- `simulated_lan`: a `SimulatedLan` (exeunit.testing.hosts) with this test process attached to
  it, removed after the test;
- `provider_daemons`: a factory, `provider_daemons(host, *serve_args, token=False, port=0)`, that starts
  `exeunit serve` on a simulated host and returns a `ProviderDaemon` (`address`, `provider_id`,
  `pinned_address`, `token` when asked for; `kill()`, `restart()`, `stop()`); every daemon is
  stopped after the test;
- `chain`: a `LocalChain` (exeunit.testing.chain), anvil on loopback with the test token tGLM
  deployed (`chain.token`, 1,000,000 tGLM held by `chain.deployer`), shared by the session.

Example:

    def test_a_service_on_another_host(simulated_lan, provider_daemons):
        provider = provider_daemons(simulated_lan.add_host("p1"))
        ...  # a requestor in this process reaches provider.pinned_address (over TLS)
        simulated_lan.hosts["p1"].link_down()  # and the network fails on cue

The fixtures fail with the reason when the machine cannot simulate hosts (root, iproute2, nftables
and util-linux are needed) or when anvil or the compiled token is missing (scripts/setup.sh installs
them).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import pytest

from exeunit.testing.hosts import SimulatedHost, SimulatedLan, unavailable
from exeunit.testing.providers import ProviderDaemon

if TYPE_CHECKING:
    from exeunit.testing.chain import LocalChain


@pytest.fixture
def simulated_lan() -> Iterator[SimulatedLan]:
    if reason := unavailable():
        pytest.fail(f"cannot simulate hosts: {reason}")
    with SimulatedLan() as lan:
        lan.attach_here()
        yield lan


@pytest.fixture
def provider_daemons() -> Iterator[Callable[..., ProviderDaemon]]:
    started: list[ProviderDaemon] = []

    def start(host: SimulatedHost, *serve_args: str, name: str = "", token: bool = False,
              port: int = 0) -> ProviderDaemon:
        daemon = ProviderDaemon(host, *serve_args, name=name, token=token, port=port)
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        daemon.stop()


@pytest.fixture(scope="session")
def chain() -> Iterator[LocalChain]:
    # Imported here: web3 takes a while to import, and this plugin loads in every pytest run.
    from exeunit.testing.chain import ChainError, LocalChain

    try:
        local = LocalChain()
    except ChainError as exc:
        pytest.fail(f"no local chain: {exc}")
    with local:
        local.deploy_token(1_000_000)
        yield local
