"""Putting a provider together: the one place that picks the runtime (Docker), the executors (the
resident agent, falling back to docker exec), the activities' storage and the network plumbing,
for `exeunit serve` and the embedded provider alike."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import dataclasses

import psutil
from cryptography.hazmat.primitives.asymmetric import ec

from exeunit import errors
from exeunit.api.payments import ProtoSealer, bind_platform
from exeunit.domain.records import Store
from exeunit.domain.resources import Resources
from exeunit.domain.settings import ActivityLimits, ProviderSettings
from exeunit.persistence.journals import JournalDirectory
from exeunit.runtime.agent.executor import AgentExecutors
from exeunit.runtime.bridges import BridgePlumbing
from exeunit.runtime.chain import Web3ChainReader
from exeunit.runtime.docker import DockerRuntime
from exeunit.runtime.overlay.process import AgentOptions, AgentProcess
from exeunit.runtime.protocols import Runtime
from exeunit.runtime.storage import DirectoryStorage, LoopStorage
from exeunit.v1.payments import public_key_der
from exeunit.services.provider import Machinery, Provider

log = logging.getLogger(__name__)


def measured_capacity(storage_dir: Path) -> Resources:
    """This host's cpu threads, memory, and the disk free where activities' storage goes."""
    return Resources(
        cpu_threads=psutil.cpu_count(logical=True) or 1,
        memory_bytes=psutil.virtual_memory().total,
        storage_bytes=psutil.disk_usage(str(_existing(storage_dir))).free,
    )


def _existing(path: Path) -> Path:
    """The path, or the nearest directory above it that exists (whose filesystem it will be on)."""
    while not path.exists():
        path = path.parent
    return path


def activity_storage(base: Path, runtime: Runtime, allow_unenforced: bool, refusal_hint: str) -> LoopStorage:
    """Loop-mounted storage of each agreement's size, holding volumes and writable root alike, or,
    where that cannot be and the caller accepts it, plain directories and the engine's own writable
    layers, of unlimited size (said in the log); owned by whoever root in a container is on this
    host. FailedPrecondition (ending with `refusal_hint`) otherwise."""
    owner = runtime.container_root_owner()
    why_not = LoopStorage.available() or runtime.root_layer_unsupported()
    if why_not is None:
        return LoopStorage(base, *owner)
    if not allow_unenforced:
        raise errors.FailedPrecondition(f"cannot enforce activities' storage: {why_not}. {refusal_hint}")
    log.warning("event=storage_unenforced reason=%r volumes=unlimited root=unlimited", why_not)
    return DirectoryStorage(base, *owner)


def assemble(settings: ProviderSettings, limits: ActivityLimits, storage: LoopStorage,
             runtime: Runtime | None = None, store: Store | None = None, journals: Path | None = None,
             key: ec.EllipticCurvePrivateKey | None = None, payment_rpc_url: str = "") -> Provider:
    """A provider on this host's Docker engine (or `runtime`), keeping its records in `store` and
    its batch journals in `journals` (a temporary directory of its own when None). `key` signs its
    payment documents (a key of its own when None: a test's provider, whose id is not its key's);
    `payment_rpc_url` is where it reads payments on its platform's chain."""
    key = key or ec.generate_private_key(ec.SECP256R1())
    settings = payable(settings, key)
    chain = None
    if settings.payment.platforms and payment_rpc_url:
        chain = Web3ChainReader(payment_rpc_url, settings.payment.platforms[0].chain_id)
    engine: Runtime = runtime or DockerRuntime()
    executors = AgentExecutors(storage.channel_dir, engine.executor, limits.agent_start_seconds)
    overlay: Callable[[Callable[[str, str, bytes], None]], AgentProcess] | None = None
    if settings.overlay_listen and settings.overlay_certificate_file:
        listen = settings.overlay_listen
        options = AgentOptions(settings.overlay_certificate_file, settings.overlay_key_file,
                               settings.overlay_peer_ranges, limits.overlay_macs_per_network)
        overlay = lambda on_relay: AgentProcess(listen, options, on_relay, _overlay_status)  # noqa: E731
    machinery = Machinery(engine, executors, storage, BridgePlumbing(settings.home_id), JournalDirectory(journals),
                          overlay, ProtoSealer(key, settings.provider_id), chain)
    return Provider(settings, machinery, limits, store)


def payable(settings: ProviderSettings, key: ec.EllipticCurvePrivateKey) -> ProviderSettings:
    """The settings with the key that signs payment documents stated, and each payment platform's
    address bound to this provider by its signature (what a requestor checks in the offer)."""
    payment = dataclasses.replace(
        settings.payment, public_key=public_key_der(key),
        platforms=tuple(bind_platform(key, settings.provider_id, p) for p in settings.payment.platforms))
    return dataclasses.replace(settings, payment=payment)


def _overlay_status(status: dict) -> None:
    """The overlay's news: how a peer is reached, or what went wrong."""
    if status.get("op") == "path":
        log.info("event=overlay_path network=%s peer=%s path=%s", status.get("network"), status.get("peer"),
                 status.get("path"))
    elif status.get("op") == "error":
        log.warning("event=overlay_error error=%r", status.get("error"))
