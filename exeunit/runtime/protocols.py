"""The two seams between the daemon's domain and the machinery that runs containers.

A `Runtime` owns the containers' lifecycle and images (create, start, remove, list by label,
deaths, usage); an `Executor` runs commands inside a running container and streams their output.
Both are async: an implementation keeps its own threads. Docker is the one runtime today
(`exeunit.runtime.docker.runtime`), with `docker exec` as its executor; another engine (Podman, a cluster)
would be one new module implementing these, and the domain modules would not change.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Protocol

LABEL_ACTIVITY = "io.exeunit.services.activity"
LABEL_AGREEMENT = "io.exeunit.agreement"
LABEL_PROVIDER = "io.exeunit.services.provider"
LABEL_HOME = "io.exeunit.persistence.home"  # the state directory's home id: only that home's daemon removes it
LABEL_EXPIRES = "io.exeunit.expires"  # the agreement's expiration (unix seconds): anyone reaps it after

STDOUT, STDERR = 1, 2


@dataclass(frozen=True)
class ImageInfo:
    """What the daemon needs to know of an image."""

    id: str
    tags: tuple[str, ...]
    volumes: tuple[str, ...]


@dataclass(frozen=True)
class ContainerSpec:
    """Everything needed to create one hardened activity container."""

    name: str
    image_id: str
    labels: dict[str, str]
    memory_bytes: int
    cpu_threads: int
    pids_limit: int
    tmp_bytes: int
    binds: dict[str, str]  # container path -> host directory (the activity's volumes)
    read_only_binds: dict[str, str] = field(default_factory=dict)  # container path -> host path
    # What the container runs, with stdin kept open; empty: a shell reading that stdin, which keeps
    # it alive like a booted VM whatever the image's CMD.
    entrypoint: tuple[str, ...] = ()


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
    the iteration ends, `outcome` says how it ended."""

    outcome: CommandOutcome | None

    def __aiter__(self) -> AsyncIterator[tuple[int, bytes]]: ...


class Executor(Protocol):
    """Runs commands inside a running container."""

    name: str  # shown to the requestor, for example "docker-exec"

    def run(self, container_id: str, argv: list[str], env: dict[str, str], workdir: str | None,
            timeout: float | None) -> CommandRun: ...


class Runtime(Protocol):
    """Containers and images on one engine. Errors are `exeunit.errors` (NotFound when a thing is
    gone, RuntimeFailure when the engine fails); removing what is already gone succeeds."""

    def container_root_owner(self) -> tuple[int, int]: ...
    def executor(self) -> Executor: ...

    async def ping(self) -> None: ...
    async def images(self) -> list[ImageInfo]: ...
    async def image(self, ref: str) -> ImageInfo: ...
    async def has_image(self, image_id: str) -> bool: ...
    async def load_image(self, archive_path: str) -> None: ...
    async def remove_image(self, image_id: str) -> None: ...
    async def create_container(self, spec: ContainerSpec) -> str: ...
    async def start_container(self, container_id: str) -> None: ...
    async def container_status(self, container_id: str) -> str | None: ...
    async def open_network_namespace(self, container_id: str) -> int: ...
    async def connect_to_port(self, container_id: str, port: int, timeout: float = 5.0) -> socket.socket: ...
    async def remove_container(self, container_id: str, stop_timeout: int = 5) -> None: ...
    async def containers_with_label(self, key: str, value: str) -> list[str]: ...
    async def labelled_containers(self, key: str) -> dict[str, dict[str, str]]: ...
    async def usage(self, container_id: str) -> ContainerUsage: ...
    def container_deaths(self, home_id: str) -> AsyncIterator[str]: ...
