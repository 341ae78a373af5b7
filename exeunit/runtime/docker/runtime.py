"""The Docker engine as the daemon's `Runtime` (exeunit.runtime.protocols), over the docker SDK.

The SDK blocks; each public method runs its call in a worker thread (short calls on the loop's
default executor, long ones such as loading an image on the data-plane pool), so callers just
await. Docker's exceptions become domain errors in exeunit.runtime.docker.errors; commands run
through exeunit.runtime.docker.exec; usage comes from cgroup files (cgroups.py) where it can.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import socket
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import docker
import docker.errors

from exeunit import errors
from exeunit.runtime.docker import layers
from exeunit.runtime.docker.cgroups import cgroup_usage
from exeunit.runtime.docker.deaths import DeathWatch
from exeunit.runtime.docker.errors import translated
from exeunit.runtime.docker.exec import DockerExec
from exeunit.runtime.docker.labels import LABEL_EXPIRES, LABEL_HOME, labels_for
from exeunit.runtime.netns import connect_in_netns
from exeunit.runtime.protocols import ContainerSpec, ContainerUsage, ExpiredContainer, ImageInfo
from exeunit.runtime.threads import in_data_thread, iterate_in_thread

log = logging.getLogger(__name__)
T = TypeVar("T")

# Keeps a container alive like a booted VM whatever its image's CMD: a shell reading commands from
# a stdin that stays open and never receives any. Needs only /bin/sh in the image.
KEEPALIVE_ENTRYPOINT = ["/bin/sh"]

# What the root of a VM image relies on and nothing more: servers that start as root and switch to
# their own users (nginx's workers, sshd's privilege separation, which also chroots), package
# scripts that chown, a shell that signals its children. Granted only where the engine remaps user
# namespaces: there root in the container is an unprivileged uid of the host, and these act only
# on the uids mapped into the container, in its own namespaces (its files, its processes, its
# ports); without remapping, containers get no capability at all. Never granted: anything that
# reaches beyond the container (SYS_ADMIN, NET_ADMIN, SYS_PTRACE, MKNOD, NET_RAW, ...).
NAMESPACED_CAPABILITIES = ("CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID",
                           "NET_BIND_SERVICE", "SYS_CHROOT")


def _in_thread(method: Callable[..., T]) -> Callable[..., Coroutine[Any, Any, T]]:
    """Makes a blocking method awaitable, run on the loop's default executor (short calls)."""

    @functools.wraps(method)
    async def wrapper(self: Any, *args: Any, **kwargs: Any) -> T:
        return await asyncio.to_thread(method, self, *args, **kwargs)

    return wrapper


class DockerRuntime:
    """Containers and images on one Docker engine, for the daemon's activities (a `Runtime`)."""

    def __init__(self, client: docker.DockerClient | None = None, pool_size: int = 64) -> None:
        with translated("connect to Docker"):
            self._client = client or docker.from_env(max_pool_size=pool_size, timeout=120)
        self._api = self._client.api
        self._remaps_users: bool | None = None

    @_in_thread
    def ping(self) -> None:
        with translated("ping Docker"):
            self._api.ping()

    def _remapped(self) -> bool:
        """Whether root in a container is an unprivileged uid of the host (asked once)."""
        if self._remaps_users is None:
            self._remaps_users = self.container_root_owner() != (0, 0)
        return self._remaps_users

    def container_root_owner(self) -> tuple[int, int]:
        """Host uid and gid of root inside containers: (0, 0) unless the engine remaps user
        namespaces (`dockerd --userns-remap`), whose image store is then named "UID.GID"."""
        with translated("read Docker info"):
            info = self._api.info()
        if not any("name=userns" in option for option in info.get("SecurityOptions") or ()):
            return 0, 0
        uid, _, gid = os.path.basename(str(info.get("DockerRootDir", ""))).partition(".")
        if not (uid.isdigit() and gid.isdigit()):
            raise errors.RuntimeFailure(
                f"the engine remaps user namespaces but its root dir {info.get('DockerRootDir')!r} does not say to "
                "which uid; cannot tell who owns the volumes"
            )
        return int(uid), int(gid)

    # Images

    @_in_thread
    def image(self, ref: str) -> ImageInfo:
        """Looks up an image by id or tag; NotFound names the ref."""
        return self._inspect_image(ref)

    def _inspect_image(self, ref: str) -> ImageInfo:
        try:
            with translated(f"image {ref!r}"):
                attrs = self._api.inspect_image(ref)
        except errors.NotFound:
            raise errors.NotFound(f"image {ref!r} is not on this provider") from None
        volumes = tuple(sorted((attrs.get("Config") or {}).get("Volumes") or {}))
        return ImageInfo(id=attrs["Id"], tags=tuple(attrs.get("RepoTags") or ()), volumes=volumes)

    @_in_thread
    def images(self) -> list[ImageInfo]:
        """Every image on the engine with its tags (volumes are not listed; `image()` has them)."""
        with translated("list images"):
            listed = self._api.images()
        return [
            ImageInfo(id=str(i["Id"]), tags=tuple(t for t in i.get("RepoTags") or () if t != "<none>:<none>"), volumes=())
            for i in listed
        ]

    @_in_thread
    def has_image(self, image_id: str) -> bool:
        try:
            self._inspect_image(image_id)
        except errors.NotFound:
            return False
        return True

    async def load_image(self, archive_path: str) -> None:
        """Loads a `docker save` archive (on the data-plane pool: it takes as long as it is big)."""
        await in_data_thread(self._load_image, archive_path)

    def _load_image(self, archive_path: str) -> None:
        with translated("load image archive"), open(archive_path, "rb") as archive:
            for _ in self._api.load_image(archive):
                pass

    @_in_thread
    def remove_image(self, image_id: str) -> None:
        """Removes an image by id; FailedPrecondition while a container uses it."""
        with translated(f"remove image {image_id}"):
            self._api.remove_image(image_id)

    # Containers

    @_in_thread
    def create_container(self, spec: ContainerSpec) -> str:
        """Creates a hardened container with a writable root (on `spec.root_layer` when given);
        returns its id."""
        host_config = self._api.create_host_config(
            init=True,
            network_mode="none",
            read_only=False,  # as a VM's: images written for Golem write anywhere
            cap_drop=["ALL"],
            cap_add=list(NAMESPACED_CAPABILITIES) if self._remapped() else None,
            security_opt=["no-new-privileges"],
            pids_limit=spec.pids_limit,
            mem_limit=spec.memory_bytes,
            memswap_limit=spec.memory_bytes,
            nano_cpus=spec.cpu_threads * 1_000_000_000,
            # The memory-backed ones are small and noexec: /dev/shm (counted against the container's
            # memory) and /dev (remounted tiny: it only holds the device nodes).
            tmpfs={
                "/dev": "rw,nosuid,dev,noexec,size=64k,mode=755",
                "/dev/shm": f"rw,nosuid,nodev,noexec,size={spec.shm_bytes}",
            },
            binds={
                **{host: {"bind": inside, "mode": "rw"} for inside, host in spec.binds.items()},
                **{host: {"bind": inside, "mode": "ro"} for inside, host in spec.guest.read_only_binds.items()},
            },
        )
        with translated(f"create container {spec.name}"):
            created = self._api.create_container(
                spec.image_id,
                name=spec.name,
                entrypoint=list(spec.guest.entrypoint) or KEEPALIVE_ENTRYPOINT,
                command=[],
                stdin_open=True,
                labels=labels_for(spec.owner),
                host_config=host_config,
                network_disabled=True,
            )
        container_id = str(created["Id"])
        if spec.root_layer is not None:
            try:
                with translated("inspect container"):
                    inspected = self._api.inspect_container(container_id)
                layers.place(inspected, spec.root_layer)
            except (errors.ExeUnitError, OSError) as exc:
                self._remove(container_id)
                if isinstance(exc, OSError):
                    raise errors.RuntimeFailure(f"placing the container's writable root failed: {exc}") from None
                raise
        return container_id

    def root_layer_unsupported(self) -> str | None:
        """None when containers' writable roots can be placed on the activities' storage. Blocks."""
        with translated("ask the engine about itself"):
            return layers.unsupported(self._api.info())

    @_in_thread
    def start_container(self, container_id: str) -> None:
        with translated("start container"):
            self._api.start(container_id)

    async def connect_to_port(self, container_id: str, port: int, timeout: float = 5.0) -> socket.socket:
        """A TCP connection to `port` inside the container's network namespace, made from this
        host without the container having any network (see exeunit.runtime.netns)."""
        async with self.network_namespace(container_id) as netns:
            return await asyncio.to_thread(connect_in_netns, netns, port, timeout)

    @asynccontextmanager
    async def network_namespace(self, container_id: str) -> AsyncIterator[int]:
        """A descriptor of the running container's network namespace, open for the block.
        Checked after opening that the container still runs as the same process: a container
        that died (its requestor can end it) may leave its pid to any process of the host, whose
        namespace must never be the one entered."""
        pid = await self.container_pid(container_id)
        try:
            netns = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            raise errors.FailedPrecondition("the activity's container is not running") from None
        try:
            if await self.container_pid(container_id) != pid:
                raise errors.FailedPrecondition("the activity's container is not running")
            yield netns
        finally:
            os.close(netns)

    @_in_thread
    def container_pid(self, container_id: str) -> int:
        """The pid (on this host) of the running container's first process."""
        with translated("inspect container"):
            state = self._api.inspect_container(container_id).get("State") or {}
        pid = int(state.get("Pid") or 0)
        if not state.get("Running") or pid <= 0:
            raise errors.FailedPrecondition("the activity's container is not running")
        return pid

    @_in_thread
    def container_status(self, container_id: str) -> str | None:
        """"created", "running", "exited", ... as the engine says; None when it is gone."""
        try:
            state = self._api.inspect_container(container_id).get("State") or {}
        except docker.errors.NotFound:
            return None
        except docker.errors.DockerException as exc:
            raise errors.RuntimeFailure(f"inspect container failed: {exc}") from None
        return str(state.get("Status") or "unknown")

    @_in_thread
    def remove_container(self, container_id: str, stop_timeout: int = 5) -> None:
        """Stops and removes a container and its anonymous volumes. Already gone is success."""
        try:
            with translated("stop container"):
                self._api.stop(container_id, timeout=stop_timeout)
        except errors.NotFound:
            return
        except errors.ExeUnitError as exc:
            log.warning("event=container_stop_failed container=%s error=%s", container_id[:12], exc)
        self._remove(container_id)

    def _remove(self, container_id: str) -> None:
        try:
            with translated("inspect container"):
                layers.release(self._api.inspect_container(container_id))
        except errors.NotFound:
            return
        except (errors.ExeUnitError, OSError) as exc:
            log.warning("event=root_layer_release_failed container=%s error=%s", container_id[:12], exc)
        try:
            with translated("remove container"):
                self._api.remove_container(container_id, v=True, force=True)
        except errors.NotFound:
            pass
        except errors.FailedPrecondition:
            pass  # removal already in progress

    @_in_thread
    def containers_of_home(self, home_id: str) -> list[str]:
        """Ids of the home's containers, running or not."""
        with translated("list containers"):
            found = self._api.containers(all=True, filters={"label": f"{LABEL_HOME}={home_id}"})
        return [str(c["Id"]) for c in found]

    @_in_thread
    def expired_containers(self, before: float) -> list[ExpiredContainer]:
        """Every activity container, whichever daemon made it, whose agreement expired before
        `before` (unix seconds)."""
        with translated("list containers"):
            found = self._api.containers(all=True, filters={"label": LABEL_EXPIRES})
        expired = []
        for container in found:
            labels = container.get("Labels") or {}
            try:
                expires = float(labels[LABEL_EXPIRES])
            except (KeyError, ValueError):
                continue
            if expires < before:
                expired.append(ExpiredContainer(str(container["Id"]), labels.get(LABEL_HOME, "-"), expires))
        return expired

    @_in_thread
    def usage(self, container_id: str) -> ContainerUsage:
        """The container's cpu time and memory: from its cgroup's files where the engine keeps
        them in a known place (microseconds, no work for the engine), else the engine's stats."""
        from_cgroup = cgroup_usage(container_id)
        if from_cgroup is not None:
            return from_cgroup
        with translated("read container stats"):
            stats = self._api.stats(container_id, stream=False, one_shot=True)
        cpu_ns = ((stats.get("cpu_stats") or {}).get("cpu_usage") or {}).get("total_usage") or 0
        memory = (stats.get("memory_stats") or {}).get("usage") or 0
        return ContainerUsage(cpu_seconds=cpu_ns / 1e9, memory_bytes=int(memory))

    async def container_deaths(self, home_id: str) -> AsyncIterator[str]:
        """Ids of this home's containers as they die, for as long as it is iterated. When the
        engine's event stream breaks (the engine restarts, a proxy drops it), it is opened again,
        and "" is yielded: deaths meanwhile were missed, the caller should look for itself."""
        pause = 0.5
        opened_before = False
        while True:
            try:
                watch = DeathWatch(await asyncio.to_thread(self._death_events, home_id))
            except errors.ExeUnitError as exc:
                log.warning("event=death_watch_failed error=%s retry_in=%.1fs", exc, pause)
                await asyncio.sleep(pause)
                pause = min(pause * 2, 30.0)
                continue
            if opened_before:
                log.info("event=death_watch_reopened")
                yield ""
            opened_before = True
            try:
                async for container_id in iterate_in_thread(lambda: iter(watch)):
                    pause = 0.5
                    yield container_id
            finally:
                watch.close()
            await asyncio.sleep(pause)  # the stream ended: open it again

    def _death_events(self, home_id: str) -> Any:
        with translated("watch Docker events"):
            return self._api.events(
                decode=True,
                filters={"type": "container", "event": "die", "label": f"{LABEL_HOME}={home_id}"},
            )

    def executor(self) -> DockerExec:
        return DockerExec(self._api)
