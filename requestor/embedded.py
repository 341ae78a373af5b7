"""An ExeUnit provider started inside the requestor's process, on loopback, against the local
Docker engine: what `Golem` uses when no providers are configured.

Each one is a provider of its own (its own id, home id and storage directory), so two scripts
running at once on one host never take each other's containers for leftovers."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import threading
import tempfile
import uuid
from pathlib import Path

import psutil

from exeunit.services.activity import ActivityLimits
from exeunit.runtime.docker.runtime import DockerRuntime
from exeunit.errors import ExeUnitError
from exeunit.runtime.fetch import FetchPolicy
from exeunit.services.images import ImagePolicy
from exeunit.domain.market import (
    CUSTOM_COUNTER, GIB, RUNTIME_NAME, TEST_COUNTERS_RUNTIME, LinearPricing, ProviderSettings, Resources,
)
from exeunit.services.provider import Provider
from exeunit.api.server import RunningServer, create_server
from exeunit.runtime.storage import DirectoryStorage, LoopStorage
from requestor.errors import RequestorError

log = logging.getLogger(__name__)

EMBEDDED_NAME = "local-provider"


class EmbeddedProvider:
    """`async with EmbeddedProvider(subnet) as address:` serves a provider on 127.0.0.1."""

    def __init__(self, subnet_tag: str, name: str = EMBEDDED_NAME) -> None:
        self._subnet_tag = subnet_tag
        self._name = name
        self._running: RunningServer | None = None
        self._storage_dir: Path | None = None
        self._sigterm_loop: asyncio.AbstractEventLoop | None = None

    async def start(self) -> str:
        try:
            runtime = await asyncio.to_thread(DockerRuntime)
            await runtime.ping()
        except ExeUnitError as exc:
            raise RequestorError(
                f"the embedded provider needs a Docker engine, and none answers ({exc}). Start dockerd "
                "(scripts/setup.sh does), or name running providers: Golem(providers=[...]) or GOLEM_PROVIDERS"
            ) from None
        self._storage_dir = Path(tempfile.mkdtemp(prefix="exeunit-embedded-"))
        storage = await asyncio.to_thread(lambda: psutil.disk_usage(self._storage_dir).free)
        settings = ProviderSettings(
            provider_id=f"embedded-{uuid.uuid4().hex[:12]}",
            name=self._name,
            subnet_tag=self._subnet_tag,
            pricing=LinearPricing(start_fee=0.0, per_cpu_second=0.00001, per_duration_second=0.000002,
                                  per_unit={CUSTOM_COUNTER: 0.00001}),
            runtimes=(RUNTIME_NAME, TEST_COUNTERS_RUNTIME),  # yapapi's custom-usage-counter example runs here
            capacity=Resources(psutil.cpu_count() or 1, psutil.virtual_memory().total, storage),
            default_allotment=Resources(1, GIB // 2, 2 * GIB),
            # The script's user owns this host: every local image is theirs to run, and their own
            # files and local servers are theirs to fetch image archives from.
            images=ImagePolicy(offered=("*",), fetch=FetchPolicy(file_root="/", allow_private_hosts=True)),
        )
        why_not = LoopStorage.available()
        if why_not is not None:
            log.warning("event=storage_unenforced reason=%r volumes=unlimited", why_not)
        owner = await asyncio.to_thread(runtime.container_root_owner)  # one Docker call, at start
        volumes = (LoopStorage if why_not is None else DirectoryStorage)(self._storage_dir, *owner)
        self._running = await create_server(Provider(settings, runtime, ActivityLimits(), volumes), "127.0.0.1:0")
        address = f"127.0.0.1:{self._running.port}"
        log.info("event=embedded_provider_started address=%s name=%s", address, self._name)
        self._stop_on_sigterm()
        return address

    def _stop_on_sigterm(self) -> None:
        """SIGTERM as Ctrl-C: the script unwinds and this provider removes its containers (by
        default SIGTERM kills the process at once and they run on). Only when the script has not
        set a SIGTERM handler of its own, and only in the main thread."""
        if threading.current_thread() is not threading.main_thread():
            return
        if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
            return
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, os.kill, os.getpid(), signal.SIGINT)
        self._sigterm_loop = loop

    async def stop(self) -> None:
        if self._sigterm_loop is not None:
            self._sigterm_loop.remove_signal_handler(signal.SIGTERM)
            self._sigterm_loop = None
        if self._running is not None:
            await self._running.stop(grace=1)
            self._running = None
        if self._storage_dir is not None:
            shutil.rmtree(self._storage_dir, ignore_errors=True)
            self._storage_dir = None
