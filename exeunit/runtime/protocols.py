"""The seam between the daemon's services and the machinery that runs containers.

A `Runtime` owns the containers' lifecycle and images (create, start, remove, find, deaths,
usage); an `Executor` runs commands inside one activity's running container and streams their
output; an `ExecutorFactory` makes each activity's executor, with what its container needs for it
(`GuestSetup`). All are async: an implementation keeps its own threads. Docker is the one runtime
today (exeunit.runtime.docker) and the resident agent the one factory (exeunit.runtime.agent,
falling back to the runtime's own exec); another engine would be one new package implementing
these, chosen in exeunit.app, and the services would not change. Errors are `exeunit.errors`
(NotFound when a thing is gone, RuntimeFailure when the engine fails); removing what is already
gone succeeds.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Protocol

STDOUT, STDERR = 1, 2


@dataclass(frozen=True)
class ImageInfo:
    """What the daemon needs to know of an image."""

    id: str
    tags: tuple[str, ...]
    volumes: tuple[str, ...]


@dataclass(frozen=True)
class ContainerOwner:
    """Whose container it is. The runtime marks the container with it, so that it finds a home's
    containers again (`containers_of_home`) and anyone can end one whose agreement expired
    (`expired_containers`), whichever daemon started it."""

    activity_id: str
    agreement_id: str
    provider_id: str
    home_id: str
    expires: datetime


@dataclass(frozen=True)
class GuestSetup:
    """What an activity's container needs for its executor: what it runs (with stdin kept open;
    empty: a shell reading that stdin, which keeps it alive like a booted VM whatever the image's
    CMD), and host paths it sees read-only (container path -> host path)."""

    entrypoint: tuple[str, ...] = ()
    read_only_binds: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ContainerSpec:
    """Everything needed to create one hardened activity container."""

    name: str
    image_id: str
    owner: ContainerOwner
    memory_bytes: int
    cpu_threads: int
    pids_limit: int
    shm_bytes: int  # /dev/shm, in memory
    binds: dict[str, str]  # container path -> host directory (the activity's volumes)
    root_layer: Path | None = None  # where the writable root goes (absent: the engine's own place, unbounded)
    guest: GuestSetup = field(default_factory=GuestSetup)


@dataclass(frozen=True)
class ExpiredContainer:
    container_id: str
    home_id: str  # "-" when its owner did not say
    expired: float  # unix seconds


@dataclass(frozen=True)
class ContainerUsage:
    cpu_seconds: float
    memory_bytes: int


@dataclass(frozen=True)
class CommandOutcome:
    """How a command ended: its exit code (None when it could not be read) and whether it was
    killed for running past its timeout."""

    return_code: int | None
    timed_out: bool


class CommandRun(Protocol):
    """One command running: iterate it for (STDOUT or STDERR, data) in the order produced; once
    the iteration ends, `outcome` says how it ended. `command_id` names it to its executor for
    `Executor.resume` after a daemon restart (None: it cannot be resumed); `before_start`, when
    set, is called with it right before the command is handed over, where a restarted daemon's
    means to take it up must be recorded (never for one that cannot be resumed)."""

    outcome: CommandOutcome | None
    before_start: Callable[[int], None] | None

    @property
    def command_id(self) -> int | None: ...

    def __aiter__(self) -> AsyncIterator[tuple[int, bytes]]: ...


class Executor(Protocol):
    """Runs commands inside one activity's running container."""

    @property
    def name(self) -> str: ...  # shown to the requestor: "agent", "docker-exec", or "" while unknown

    def run(self, container_id: str, argv: list[str], env: dict[str, str], workdir: str | None,
            timeout: float | None) -> CommandRun: ...

    def resume(self, container_id: str, command_id: int, offset: int, timeout: float | None) -> CommandRun:
        """Picks up command `command_id`, which ran on while no daemon was there (a restart), from
        output byte `offset` on; iterating it fails with an ExeUnitError when that cannot be."""
        ...

    def container_started(self) -> None: ...  # the container runs now: commands may be sent
    def close(self) -> None: ...  # the activity ends or the daemon lets go of it


class ExecutorFactory(Protocol):
    """Makes each activity's executor; called again for an activity a restarted daemon takes up."""

    async def open(self, activity_id: str) -> tuple[Executor, GuestSetup]: ...


class Runtime(Protocol):
    """Containers and images on one engine."""

    def container_root_owner(self) -> tuple[int, int]: ...
    def root_layer_unsupported(self) -> str | None: ...  # why writable roots cannot go on activity storage
    def executor(self) -> Executor: ...  # the engine's own way of running commands

    async def ping(self) -> None: ...
    async def images(self) -> list[ImageInfo]: ...
    async def image(self, ref: str) -> ImageInfo: ...
    async def has_image(self, image_id: str) -> bool: ...
    async def load_image(self, archive_path: str) -> None: ...
    async def remove_image(self, image_id: str) -> None: ...
    async def create_container(self, spec: ContainerSpec) -> str: ...
    async def start_container(self, container_id: str) -> None: ...
    async def container_status(self, container_id: str) -> str | None: ...
    def network_namespace(self, container_id: str) -> AbstractAsyncContextManager[int]:
        """The running container's network namespace as an open descriptor, for the block's
        duration (the runtime closes it)."""
        ...
    async def connect_to_port(self, container_id: str, port: int, timeout: float = 5.0) -> socket.socket: ...
    async def remove_container(self, container_id: str, stop_timeout: int = 5) -> None: ...
    async def containers_of_home(self, home_id: str) -> list[str]: ...
    async def expired_containers(self, before: float) -> list[ExpiredContainer]: ...
    async def usage(self, container_id: str) -> ContainerUsage: ...
    def container_deaths(self, home_id: str) -> AsyncIterator[str]: ...
