"""An ExeUnit provider started inside another program (the requestor's `Golem` with no providers
configured), on loopback, against the local Docker engine.

Each one is a provider of its own (its own id, home id and storage directory), so two scripts
running at once on one host never take each other's containers for leftovers."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import tempfile
import threading
from pathlib import Path

from exeunit.api.server import RunningServer, create_server
from exeunit.app.assembly import activity_storage, assemble, measured_capacity
from exeunit.domain.resources import LinearPricing, Resources, capped
from exeunit.domain.settings import DEFAULT_ACTIVITY_PRESET, ActivityLimits, FetchPolicy, ImagePolicy, ProviderSettings
from exeunit.errors import ExeUnitError
from exeunit.persistence import keys
from exeunit.runtime.docker import DockerRuntime
from exeunit.v1.conventions import CUSTOM_COUNTER, DOCKER_VM_RUNTIME, GIB, TEST_COUNTERS_RUNTIME

log = logging.getLogger(__name__)

EMBEDDED_NAME = "local-provider"


class NoEngine(Exception):
    """No Docker engine answers, so no provider can run here."""


class LocalProvider:
    """`address = await LocalProvider(subnet).start()` serves a provider on 127.0.0.1; `stop()`
    ends its activities and removes what it made."""

    def __init__(self, subnet_tag: str, name: str = EMBEDDED_NAME) -> None:
        self._subnet_tag = subnet_tag
        self._name = name
        self._running: RunningServer | None = None
        self._storage_dir: Path | None = None
        self._sigterm_loop: asyncio.AbstractEventLoop | None = None
        self._script_task: asyncio.Task[object] | None = None
        self.interrupted = False  # SIGTERM came while Ctrl-C was ignored: the script's task was cancelled

    async def start(self) -> str:
        try:
            runtime = await asyncio.to_thread(DockerRuntime)
            await runtime.ping()
        except ExeUnitError as exc:
            raise NoEngine(str(exc)) from None
        self._storage_dir = Path(tempfile.mkdtemp(prefix="exeunit-embedded-"))
        capacity = await asyncio.to_thread(measured_capacity, self._storage_dir)
        key_file, certificate_file = self._storage_dir / keys.KEY_FILE, self._storage_dir / keys.CERTIFICATE_FILE
        key = keys.load_or_create(key_file)  # a key of its own, gone with the provider
        keys.tls_credentials(key, certificate_file)
        settings = ProviderSettings(
            provider_id=keys.provider_id_of(key.public_key()),
            name=self._name,
            subnet_tag=self._subnet_tag,
            overlay_listen="127.0.0.1:0",
            overlay_certificate_file=str(certificate_file),
            overlay_key_file=str(key_file),
            pricing=LinearPricing(start_fee=0.0, per_cpu_second=0.00001, per_duration_second=0.000002,
                                  per_unit={CUSTOM_COUNTER: 0.00001}),
            runtimes=(DOCKER_VM_RUNTIME, TEST_COUNTERS_RUNTIME),  # yapapi's custom-usage-counter example runs here
            capacity=capacity,
            default_allotment=Resources(1, GIB // 2, 2 * GIB),
            activity_preset=capped(DEFAULT_ACTIVITY_PRESET, capacity),  # what `exeunit serve` grants by default
            # The script's user owns this host: every local image is theirs to run, and their own
            # files and local servers are theirs to fetch image archives from.
            images=ImagePolicy(offered=("*",), fetch=FetchPolicy(file_root="/", allow_private_hosts=True)),
        )
        # One Docker call, at start: who root in a container is on this host.
        storage = await asyncio.to_thread(activity_storage, self._storage_dir, runtime, True, "")
        provider = assemble(settings, ActivityLimits(), storage, runtime, key=key)
        self._running = await create_server(provider, "127.0.0.1:0")
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
        self._script_task = asyncio.current_task()
        loop.add_signal_handler(signal.SIGTERM, self._on_sigterm)
        self._sigterm_loop = loop

    def _on_sigterm(self) -> None:
        if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
            os.kill(os.getpid(), signal.SIGINT)  # asyncio.run's Ctrl-C: it cancels the main task, which unwinds
            return
        # Started with Ctrl-C ignored (a non-interactive shell's background job), asyncio.run set no
        # handler for it, so do what that handler does: cancel the script's task, which unwinds and
        # stops this provider; the requestor then raises KeyboardInterrupt, as asyncio.run would.
        # (KeyboardInterrupt raised here instead would be handled only after asyncio.run cancels every
        # task, this provider's among them, so the script's shutdown would wait for its full bound.)
        self.interrupted = True
        log.info("event=embedded_provider_sigterm action=cancel_script_task")
        if self._script_task is not None and not self._script_task.done():
            self._script_task.cancel()

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
