"""The one module that talks to Docker: the `Runtime` and `Executor` of `exeunit.runtime.protocols` over the
docker SDK.

The SDK blocks; each public method runs its call in a worker thread (short calls on the loop's
default executor, long ones such as loading an image on the data-plane pool), so callers just
await. Docker's exceptions are translated to `exeunit.errors` here and nowhere else.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import select
import signal
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import docker
import docker.errors
import requests.exceptions

from exeunit import errors
from exeunit.runtime.docker.frames import FrameDecoder
from exeunit.runtime.netns import connect_in_netns
from exeunit.runtime.protocols import (
    LABEL_HOME,
    CommandOutcome,
    ContainerSpec,
    ContainerUsage,
    ImageInfo,
)
from exeunit.runtime.threads import in_data_thread, iterate_in_thread

log = logging.getLogger(__name__)
T = TypeVar("T")

READ_BATCH = 1 << 20  # output is read and forwarded in chunks of up to this many bytes

# Keeps a container alive like a booted VM whatever its image's CMD: a shell reading commands from
# a stdin that stays open and never receives any. Needs only /bin/sh in the image.
KEEPALIVE_ENTRYPOINT = ["/bin/sh"]


@contextmanager
def _translated(what: str) -> Iterator[None]:
    """Turns docker SDK and transport exceptions into domain errors, naming what was attempted."""
    try:
        yield
    except docker.errors.ImageNotFound as exc:
        raise errors.NotFound(f"{what}: image not found ({_explain(exc)})") from exc
    except docker.errors.NotFound as exc:
        raise errors.NotFound(f"{what}: {_explain(exc)}") from exc
    except docker.errors.APIError as exc:
        if exc.status_code == 409:
            raise errors.FailedPrecondition(f"{what}: {_explain(exc)}") from exc
        if exc.status_code == 400:
            raise errors.InvalidArgument(f"{what}: {_explain(exc)}") from exc
        raise errors.RuntimeFailure(f"{what}: Docker engine error: {_explain(exc)}") from exc
    except (requests.exceptions.ConnectionError, docker.errors.DockerException) as exc:
        raise errors.RuntimeFailure(
            f"{what}: cannot talk to the Docker engine ({exc}); is dockerd running?"
        ) from exc


# Where a container's cgroup is, by cgroup version and driver: (cpu file, its unit in ns, memory file).
CGROUP_LAYOUTS = (
    ("/sys/fs/cgroup/cpuacct/docker/{id}/cpuacct.usage", "/sys/fs/cgroup/memory/docker/{id}/memory.usage_in_bytes"),
    ("/sys/fs/cgroup/docker/{id}/cpu.stat", "/sys/fs/cgroup/docker/{id}/memory.current"),
    ("/sys/fs/cgroup/system.slice/docker-{id}.scope/cpu.stat", "/sys/fs/cgroup/system.slice/docker-{id}.scope/memory.current"),
)


def _cgroup_usage(container_id: str) -> ContainerUsage | None:
    """Reads cpu seconds and memory from the container's cgroup files, or None where they are not."""
    for cpu_path, memory_path in CGROUP_LAYOUTS:
        try:
            with open(cpu_path.format(id=container_id)) as cpu_file:
                cpu_text = cpu_file.read()
            with open(memory_path.format(id=container_id)) as memory_file:
                memory = int(memory_file.read().strip() or 0)
        except (OSError, ValueError):
            continue
        if cpu_path.endswith("cpu.stat"):  # cgroup v2: "usage_usec N" among others
            fields = dict(line.split() for line in cpu_text.splitlines() if len(line.split()) == 2)
            cpu_seconds = int(fields.get("usage_usec", 0)) / 1e6
        else:
            cpu_seconds = int(cpu_text.strip() or 0) / 1e9
        return ContainerUsage(cpu_seconds=cpu_seconds, memory_bytes=memory)
    return None


def _explain(exc: docker.errors.APIError) -> str:
    explanation = exc.explanation
    if isinstance(explanation, bytes):
        explanation = explanation.decode(errors="replace")
    return str(explanation or exc)


class ExecProcess:
    """A command running in a container through `docker exec`, read frame by frame.

    `frames()` yields (stream, data) in the order produced and returns when all output is read;
    `return_code` is then set (None when the engine could not say).
    A command whose main process exits while a background child keeps its stdout open ends once
    the output has been idle for `drain_idle` seconds, so `cmd &` in a service's start works.
    """

    def __init__(self, api: Any, exec_id: str, sock: Any, timeout: float | None) -> None:
        self._api = api
        self.exec_id = exec_id
        self._sock = sock
        self._raw: socket.socket = getattr(sock, "_sock", sock)
        self._deadline = time.monotonic() + timeout if timeout else None
        self.timed_out = False
        self.drain_idle = 0.2
        self.return_code: int | None = None  # set once frames() is read through

    def frames(self) -> Iterator[tuple[int, bytes]]:
        decoder = FrameDecoder()
        idle_check = 0.05
        main_exited = False
        while True:
            wait = self.drain_idle if main_exited else idle_check
            if self._deadline is not None:
                wait = max(0.0, min(wait, self._deadline - time.monotonic()))
            readable, _, _ = select.select([self._raw], [], [], wait)
            if readable:
                runs, eof = self._read_available(decoder)
                for stream, parts in runs:
                    yield stream, b"".join(parts)
                if eof:
                    break
                continue
            if self._deadline is not None and time.monotonic() >= self._deadline:
                self.timed_out = True
                self.kill()
                self._deadline = None
                main_exited = True
                continue
            if main_exited:
                break  # main process gone and output idle: a background child holds the pipe
            main_exited = not self._inspect().get("Running", False)
            idle_check = min(idle_check * 2, 1.0)
        self.close()
        self.return_code = self.exit_code()

    def _read_available(self, decoder: FrameDecoder) -> tuple[list[tuple[int, list[memoryview]]], bool]:
        """Reads what the socket has (up to about READ_BATCH bytes) as runs of one stream's data;
        and whether the stream ended."""
        runs: list[tuple[int, list[memoryview]]] = []
        total = 0
        while total < READ_BATCH:
            data = self._raw.recv(READ_BATCH)
            if not data:
                return runs, True
            total += len(data)
            for stream, parts in decoder.feed(data):
                if runs and runs[-1][0] == stream:
                    runs[-1][1].extend(parts)
                else:
                    runs.append((stream, parts))
            if not select.select([self._raw], [], [], 0)[0]:
                break
        return runs, False

    def exit_code(self) -> int | None:
        """The exit code, waiting briefly for the engine to record it after the stream ends."""
        for _ in range(50):
            info = self._inspect()
            if not info.get("Running", False) and info.get("ExitCode") is not None:
                return int(info["ExitCode"])
            time.sleep(0.01)
        return None

    def kill(self) -> None:
        """Kills the command's main process (SIGKILL)."""
        pid = self._inspect().get("Pid") or 0
        if pid <= 0:
            return
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        except PermissionError:
            log.warning("event=exec_kill_denied exec=%s pid=%d", self.exec_id, pid)

    def close(self) -> None:
        try:
            self._sock.close()
        except OSError:
            pass

    def _inspect(self) -> dict[str, Any]:
        with _translated("inspect exec"):
            return self._api.exec_inspect(self.exec_id)


def _in_thread(method: Callable[..., T]) -> Callable[..., Awaitable[T]]:
    """Makes a blocking method awaitable, run on the loop's default executor (short calls)."""

    @functools.wraps(method)
    async def wrapper(self: Any, *args: Any, **kwargs: Any) -> T:
        return await asyncio.to_thread(method, self, *args, **kwargs)

    return wrapper


class DockerRuntime:
    """Containers and images on one Docker engine, for the daemon's activities (a `Runtime`)."""

    def __init__(self, client: docker.DockerClient | None = None, pool_size: int = 64) -> None:
        with _translated("connect to Docker"):
            self._client = client or docker.from_env(max_pool_size=pool_size, timeout=120)
        self._api = self._client.api

    @_in_thread
    def ping(self) -> None:
        with _translated("ping Docker"):
            self._api.ping()

    def container_root_owner(self) -> tuple[int, int]:
        """Host uid and gid of root inside containers: (0, 0) unless the engine remaps user
        namespaces (`dockerd --userns-remap`), whose image store is then named "UID.GID"."""
        with _translated("read Docker info"):
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
            with _translated(f"image {ref!r}"):
                attrs = self._api.inspect_image(ref)
        except errors.NotFound:
            raise errors.NotFound(f"image {ref!r} is not on this provider") from None
        volumes = tuple(sorted((attrs.get("Config") or {}).get("Volumes") or {}))
        return ImageInfo(id=attrs["Id"], tags=tuple(attrs.get("RepoTags") or ()), volumes=volumes)

    @_in_thread
    def images(self) -> list[ImageInfo]:
        """Every image on the engine with its tags (volumes are not listed; `image()` has them)."""
        with _translated("list images"):
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
        with _translated("load image archive"), open(archive_path, "rb") as archive:
            for _ in self._api.load_image(archive):
                pass

    @_in_thread
    def remove_image(self, image_id: str) -> None:
        """Removes an image by id; FailedPrecondition while a container uses it."""
        with _translated(f"remove image {image_id}"):
            self._api.remove_image(image_id)

    # Containers

    @_in_thread
    def create_container(self, spec: ContainerSpec) -> str:
        """Creates a hardened container; returns its id."""
        host_config = self._api.create_host_config(
            init=True,
            network_mode="none",
            read_only=True,
            cap_drop=["ALL"],
            security_opt=["no-new-privileges"],
            pids_limit=spec.pids_limit,
            mem_limit=spec.memory_bytes,
            memswap_limit=spec.memory_bytes,
            nano_cpus=spec.cpu_threads * 1_000_000_000,
            # Nothing writable is executable but the volumes: /tmp and /dev/shm are small and noexec,
            # and /dev is remounted noexec (and tiny: it only holds the device nodes).
            tmpfs={
                "/tmp": f"rw,nosuid,nodev,noexec,size={spec.tmp_bytes}",
                "/dev": "rw,nosuid,dev,noexec,size=64k,mode=755",
                "/dev/shm": f"rw,nosuid,nodev,noexec,size={spec.tmp_bytes}",
            },
            binds={
                **{host: {"bind": inside, "mode": "rw"} for inside, host in spec.binds.items()},
                **{host: {"bind": inside, "mode": "ro"} for inside, host in spec.read_only_binds.items()},
            },
        )
        with _translated(f"create container {spec.name}"):
            created = self._api.create_container(
                spec.image_id,
                name=spec.name,
                entrypoint=list(spec.entrypoint) or KEEPALIVE_ENTRYPOINT,
                command=[],
                stdin_open=True,
                labels=spec.labels,
                host_config=host_config,
                network_disabled=True,
            )
        return str(created["Id"])

    @_in_thread
    def start_container(self, container_id: str) -> None:
        with _translated("start container"):
            self._api.start(container_id)

    async def connect_to_port(self, container_id: str, port: int, timeout: float = 5.0) -> socket.socket:
        """A TCP connection to `port` inside the container's network namespace, made from this
        host without the container having any network (see exeunit.runtime.netns)."""
        netns = await self.open_network_namespace(container_id)
        try:
            return await asyncio.to_thread(connect_in_netns, netns, port, timeout)
        finally:
            os.close(netns)

    async def open_network_namespace(self, container_id: str) -> int:
        """A descriptor of the running container's network namespace (the caller closes it).
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
        except BaseException:
            os.close(netns)
            raise
        return netns

    @_in_thread
    def container_pid(self, container_id: str) -> int:
        """The pid (on this host) of the running container's first process."""
        with _translated("inspect container"):
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
            with _translated("stop container"):
                self._api.stop(container_id, timeout=stop_timeout)
        except errors.NotFound:
            return
        except errors.ExeUnitError as exc:
            log.warning("event=container_stop_failed container=%s error=%s", container_id[:12], exc)
        try:
            with _translated("remove container"):
                self._api.remove_container(container_id, v=True, force=True)
        except errors.NotFound:
            pass
        except errors.FailedPrecondition:
            pass  # removal already in progress

    @_in_thread
    def containers_with_label(self, key: str, value: str) -> list[str]:
        """Ids of all containers (running or not) labelled key=value."""
        with _translated("list containers"):
            found = self._api.containers(all=True, filters={"label": f"{key}={value}"})
        return [str(c["Id"]) for c in found]

    @_in_thread
    def labelled_containers(self, key: str) -> dict[str, dict[str, str]]:
        """Every container (running or not) with a label `key`, whatever its value: id -> labels."""
        with _translated("list containers"):
            found = self._api.containers(all=True, filters={"label": key})
        return {str(c["Id"]): dict(c.get("Labels") or {}) for c in found}

    @_in_thread
    def usage(self, container_id: str) -> ContainerUsage:
        """The container's cpu time and memory: from its cgroup's files where the engine keeps
        them in a known place (microseconds, no work for the engine), else the engine's stats."""
        from_cgroup = _cgroup_usage(container_id)
        if from_cgroup is not None:
            return from_cgroup
        with _translated("read container stats"):
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
        with _translated("watch Docker events"):
            return self._api.events(
                decode=True,
                filters={"type": "container", "event": "die", "label": f"{LABEL_HOME}={home_id}"},
            )

    def executor(self) -> DockerExec:
        return DockerExec(self._api)

class DockerExec:
    """Runs commands with `docker exec` (an `Executor`); each command holds one data-plane thread."""

    name = "docker-exec"

    def __init__(self, api: Any) -> None:
        self._api = api

    def run(self, container_id: str, argv: list[str], env: dict[str, str], workdir: str | None,
            timeout: float | None) -> ExecRun:
        return ExecRun(self._api, container_id, argv, env, workdir, timeout)


class ExecRun:
    """One `docker exec`: started and read through in one worker thread as it is iterated."""

    def __init__(self, api: Any, container_id: str, argv: list[str], env: dict[str, str],
                 workdir: str | None, timeout: float | None) -> None:
        self._api = api
        self._args = (container_id, argv, env, workdir, timeout)
        self.outcome: CommandOutcome | None = None

    def __aiter__(self) -> AsyncIterator[tuple[int, bytes]]:
        return iterate_in_thread(self._frames)

    def _frames(self) -> Iterator[tuple[int, bytes]]:
        container_id, argv, env, workdir, timeout = self._args
        with _translated(f"exec {argv[0]!r}"):
            exec_id = self._api.exec_create(
                container_id, argv, stdout=True, stderr=True, environment=env, workdir=workdir
            )["Id"]
            sock = self._api.exec_start(exec_id, socket=True)
        process = ExecProcess(self._api, exec_id, sock, timeout)
        try:
            yield from process.frames()
        finally:
            process.close()
        self.outcome = CommandOutcome(process.return_code, process.timed_out)


@dataclass
class DeathWatch:
    """Iterates container ids as their containers die; `close()` from any thread ends it."""

    _stream: Any
    _closed: bool = field(default=False)

    def __iter__(self) -> Iterator[str]:
        try:
            for event in self._stream:
                container_id = event.get("id") or (event.get("Actor") or {}).get("ID")
                if container_id:
                    yield str(container_id)
        except Exception as exc:  # the engine went away, or close() cut the stream
            if not self._closed:
                log.warning("event=death_watch_ended error=%s", exc)

    def close(self) -> None:
        self._closed = True
        self._stream.close()
