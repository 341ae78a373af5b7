"""Fixtures: a real Docker engine, real daemons on loopback ports, and a small contract client.

A missing Docker engine is a failure, not a skip: run scripts/setup.sh, which starts one.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from pathlib import Path
from collections.abc import AsyncIterator

import docker
import pytest
import pytest_asyncio
from cryptography.hazmat.primitives.asymmetric import ec

from exeunit.domain.settings import ActivityLimits
from exeunit.runtime.bridges import BridgePlumbing
from exeunit.runtime.docker import DockerRuntime
from exeunit.runtime.docker.labels import LABEL_PROVIDER
from exeunit.v1.conventions import GIB
from exeunit.v1.identity import node_id_of
from exeunit.domain.resources import LinearPricing, Resources
from exeunit.domain.settings import ProviderSettings
from exeunit.app.assembly import assemble
from exeunit.api.nonces import NonceBounds
from exeunit.api.server import RunningServer, create_server
from exeunit.runtime.storage import LoopStorage
from tests.client import ContractClient

BASE_IMAGE = "exeunit-base:latest"

# The requestor keeps its identity and known providers in the user's config directory: tests (and
# the scripts they start) get one of their own, never the user's.
os.environ["XDG_CONFIG_HOME"] = tempfile.mkdtemp(prefix="exeunit-tests-config-")
os.environ.pop("GOLEM_IDENTITY", None)
os.environ.pop("GOLEM_KNOWN_PROVIDERS", None)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--run-slow", action="store_true", help="also run tests marked slow")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--run-slow") or os.environ.get("RUN_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow: run with --run-slow or RUN_SLOW=1")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def engine() -> docker.DockerClient:
    try:
        client = docker.from_env()
        client.ping()
    except docker.errors.DockerException as exc:
        pytest.fail(f"no Docker engine answers ({exc}); run scripts/setup.sh first")
    try:
        client.images.get(BASE_IMAGE)
    except docker.errors.ImageNotFound:
        pytest.fail(f"{BASE_IMAGE} is missing; run python images/build.py")
    return client


def settings_for(name: str, **overrides: object) -> ProviderSettings:
    fields: dict[str, object] = dict(
        provider_id=f"test-{name}-{uuid.uuid4().hex[:8]}",
        name=name,
        subnet_tag="public",
        pricing=LinearPricing(start_fee=0.01, per_cpu_second=0.1, per_duration_second=0.001),
        capacity=Resources(cpu_threads=2, memory_bytes=8 * GIB, storage_bytes=20 * GIB),
        default_allotment=Resources(1, GIB // 2, 2 * GIB),
    )
    fields.update(overrides)
    return ProviderSettings(**fields)  # type: ignore[arg-type]


class Daemons:
    """Starts real providers on loopback port 0 and stops them (and checks no container is left)."""

    def __init__(self, engine: docker.DockerClient) -> None:
        self._engine = engine
        self._running: list[RunningServer] = []

    async def start(
        self, name: str = "provider-a", token: str | None = None, limits: ActivityLimits | None = None,
        nonce_bounds: NonceBounds = NonceBounds(), **settings: object,
    ) -> RunningServer:
        runtime = DockerRuntime()
        storage = LoopStorage(Path(tempfile.mkdtemp(prefix="exeunit-test-storage-")), *runtime.container_root_owner())
        key = ec.generate_private_key(ec.SECP256R1())  # signs its payment documents: its id is the key's
        settings = {"provider_id": node_id_of(key.public_key()), **settings}
        provider = assemble(settings_for(name, **settings), limits or ActivityLimits(), storage, runtime, key=key)
        running = await create_server(provider, "127.0.0.1:0", token, nonce_bounds=nonce_bounds)
        self._running.append(running)
        return running

    def containers_of(self, running: RunningServer) -> list[str]:
        label = f"{LABEL_PROVIDER}={running.provider.settings.provider_id}"
        return [c.id for c in self._engine.containers.list(all=True, filters={"label": label})]

    async def stop_all(self) -> None:
        for running in self._running:
            await running.stop(grace=1)
            left = self.containers_of(running)
            assert not left, f"containers left behind by {running.provider.settings.name}: {left}"
            storage = running.provider.storage
            assert storage.leftovers() == [], f"activity storage left behind in {storage.base}"
            assert not storage.base.exists()
            namespaces = BridgePlumbing(running.provider.settings.home_id).existing()
            assert not namespaces, f"network namespaces left behind: {namespaces}"
        self._running.clear()


@pytest_asyncio.fixture
async def daemons(engine: docker.DockerClient) -> AsyncIterator[Daemons]:
    pool = Daemons(engine)
    try:
        yield pool
    finally:
        await pool.stop_all()


@pytest_asyncio.fixture
async def provider(daemons: Daemons) -> RunningServer:
    return await daemons.start()


@pytest_asyncio.fixture
async def client(provider: RunningServer) -> AsyncIterator[ContractClient]:
    async with ContractClient(f"127.0.0.1:{provider.port}", "requestor-1") as c:
        yield c


@pytest_asyncio.fixture
async def ready(client: ContractClient) -> str:
    """An activity deployed and started on the base image; returns its id."""
    return await client.ready_activity(BASE_IMAGE)

