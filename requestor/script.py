"""Scripts: the commands a service handler sends to its activity in one go.

    script = self._ctx.new_script(timeout=timedelta(minutes=1))
    script.upload_bytes(b"hello", "/golem/input/in.txt")
    result = script.run("/bin/cat", "/golem/input/in.txt")
    yield script
    print((await result).stdout)

Each method returns an awaitable that resolves to the command's `CommandExecuted` event. A failed
command raises `CommandExecutionError` into the handler at its `yield`; awaiting that command (or
any later one, which did not run) raises the same error.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from requestor.client import ProviderClient
from requestor.errors import CommandExecutionError, ProviderRestartedError
from requestor.events import CommandExecuted
from requestor.model import CommandSpec, DeploySpec, RunSpec, StartSpec, TerminateSpec

DOWNLOAD_BYTES_LIMIT_DEFAULT = 1024 * 1024
FILE_CHUNK = 1 << 20
RESULT_TEXT_CAP = 16 << 20  # characters of stdout / stderr a command's result keeps by default

script_ids = itertools.count(1)


class Command:
    """One step of a script, with the future its result resolves."""

    def __init__(self) -> None:
        self._result: asyncio.Future[CommandExecuted] = asyncio.get_running_loop().create_future()
        self._result.add_done_callback(_mark_retrieved)

    def __repr__(self) -> str:
        return type(self).__name__.lower()

    def _resolve(self, event: CommandExecuted) -> None:
        if not self._result.done():
            self._result.set_result(event)

    def _fail(self, error: BaseException) -> None:
        if not self._result.done():
            self._result.set_exception(error)


def _mark_retrieved(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()  # the handler sees the error at its yield; don't warn about unawaited ones


class RemoteCommand(Command):
    """A command executed by the provider as part of a batch."""

    def spec(self) -> CommandSpec:
        """The command as the batch carries it."""
        raise NotImplementedError


class Deploy(RemoteCommand):
    """Golem's deploy; of its arguments, `net` (what Node.get_deploy_args gives) is used: the
    activity joins that network at its node's address. Others are accepted and ignored."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__()
        self.kwargs = kwargs
        networks = kwargs.get("net") or []
        if len(networks) > 1:
            raise ValueError("deploy joins at most one network")
        if networks and not (networks[0].get("id") and networks[0].get("nodeIp")):
            raise ValueError("deploy's net entry needs an 'id' and a 'nodeIp', as Node.get_deploy_args() gives")
        self.network = (networks[0]["id"], networks[0]["nodeIp"]) if networks else None

    def spec(self) -> CommandSpec:
        return DeploySpec(*self.network) if self.network else DeploySpec()


class Start(RemoteCommand):
    def __init__(self, *args: str) -> None:
        super().__init__()
        self.args = args

    def spec(self) -> CommandSpec:
        return StartSpec(self.args)


class Terminate(RemoteCommand):
    def spec(self) -> CommandSpec:
        return TerminateSpec()


class Run(RemoteCommand):
    def __init__(self, cmd: str, *args: str, env: dict[str, str] | None = None, workdir: str = "",
                 timeout: timedelta | float | None = None, output_limit: int | None = RESULT_TEXT_CAP,
                 stdout_to: str | os.PathLike[str] | None = None, stderr_to: str | os.PathLike[str] | None = None) -> None:
        super().__init__()
        self.cmd, self.args, self.env, self.workdir = cmd, args, dict(env or {}), workdir
        self.timeout = timeout.total_seconds() if isinstance(timeout, timedelta) else timeout
        self.output_limit = output_limit
        self.stdout_to = Path(stdout_to) if stdout_to is not None else None
        self.stderr_to = Path(stderr_to) if stderr_to is not None else None

    def __repr__(self) -> str:
        return " ".join(["run", self.cmd, *self.args])

    def spec(self) -> CommandSpec:
        return RunSpec(self.cmd, self.args, self.env, self.workdir, self.timeout)


class Transfer(Command):
    """A file moved between the requestor and the activity, outside of any batch."""

    async def perform(self, client: ProviderClient, activity_id: str) -> str:
        """Does the transfer; returns a short message for the result."""
        raise NotImplementedError


class _Send(Transfer):
    def __init__(self, dst_path: str) -> None:
        super().__init__()
        self.dst_path = dst_path

    def __repr__(self) -> str:
        return f"{type(self).__name__.lower()} -> {self.dst_path}"

    async def _source(self) -> tuple[int, AsyncIterator[bytes]]:
        raise NotImplementedError

    async def perform(self, client: ProviderClient, activity_id: str) -> str:
        size, chunks = await self._source()
        try:
            sha = await client.upload(activity_id, self.dst_path, size, chunks)
        except ProviderRestartedError:  # refused before anything was written: read the source again
            size, chunks = await self._source()
            sha = await client.upload(activity_id, self.dst_path, size, chunks)
        return f"uploaded {size} bytes to {self.dst_path} (digest {sha[:12]})"


class SendBytes(_Send):
    def __init__(self, data: bytes, dst_path: str) -> None:
        super().__init__(dst_path)
        self.data = data

    async def _source(self) -> tuple[int, AsyncIterator[bytes]]:
        return len(self.data), _once(self.data)


class SendJson(SendBytes):
    def __init__(self, data: Any, dst_path: str) -> None:
        super().__init__(json.dumps(data).encode(), dst_path)


class SendFile(_Send):
    def __init__(self, src_path: str | os.PathLike[str], dst_path: str) -> None:
        super().__init__(dst_path)
        self.src_path = Path(src_path)

    async def _source(self) -> tuple[int, AsyncIterator[bytes]]:
        size = (await asyncio.to_thread(self.src_path.stat)).st_size
        return size, _read_file(self.src_path)


class Receive(Transfer):
    """A file brought from the activity to the requestor."""

    def __init__(self, src_path: str) -> None:
        super().__init__()
        self.src_path = src_path

    def __repr__(self) -> str:
        return f"{type(self).__name__.lower()} <- {self.src_path}"


class DownloadFile(Receive):
    def __init__(self, src_path: str, dst_path: str | os.PathLike[str]) -> None:
        super().__init__(src_path)
        self.dst_path = Path(dst_path)

    async def perform(self, client: ProviderClient, activity_id: str) -> str:
        partial = self.dst_path.with_name(self.dst_path.name + ".partial")
        size = 0
        try:
            with open(partial, "wb") as out:  # each chunk written where it is hashed, off the loop
                async for chunk in client.download(activity_id, self.src_path, sink=out.write):
                    size += len(chunk)
        except BaseException:
            partial.unlink(missing_ok=True)  # a failed download leaves no file behind
            raise
        partial.replace(self.dst_path)
        return f"downloaded {size} bytes from {self.src_path} to {self.dst_path}"


class DownloadBytes(Receive):
    def __init__(self, src_path: str, on_download: Callable[[bytes], Awaitable[Any]],
                 limit: int = DOWNLOAD_BYTES_LIMIT_DEFAULT) -> None:
        super().__init__(src_path)
        self.on_download, self.limit = on_download, limit

    async def _read(self, client: ProviderClient, activity_id: str) -> bytes:
        data = bytearray()
        async for chunk in client.download(activity_id, self.src_path):
            data += chunk
            if len(data) > self.limit:
                raise CommandExecutionError(repr(self), f"{self.src_path} is larger than the limit of {self.limit} bytes")
        return bytes(data)

    async def perform(self, client: ProviderClient, activity_id: str) -> str:
        data = await self._read(client, activity_id)
        await self.on_download(data)
        return f"downloaded {len(data)} bytes from {self.src_path}"


class DownloadJson(DownloadBytes):
    async def perform(self, client: ProviderClient, activity_id: str) -> str:
        data = await self._read(client, activity_id)
        await self.on_download(json.loads(data))
        return f"downloaded JSON from {self.src_path}"


async def _once(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def _read_file(path: Path) -> AsyncIterator[bytes]:
    with open(path, "rb") as source:
        while chunk := await asyncio.to_thread(source.read, FILE_CHUNK):
            yield chunk


class Script:
    """A series of commands run in order on the provider; yield it from a service handler."""

    def __init__(self, context: object, timeout: timedelta | None = None, wait_for_results: bool = True) -> None:
        self.timeout = timeout
        self.wait_for_results = wait_for_results
        self._ctx = context  # the WorkContext that made it: only that one runs it
        self._commands: list[Command] = []
        self._id = next(script_ids)

    @property
    def id(self) -> int:
        return self._id

    @property
    def commands(self) -> list[Command]:
        return list(self._commands)

    def __repr__(self) -> str:
        return f"Script(id={self._id}, commands=[{', '.join(map(repr, self._commands))}])"

    def add(self, cmd: Command) -> Awaitable[CommandExecuted]:
        self._commands.append(cmd)
        return cmd._result

    def deploy(self, **kwargs: Any) -> Awaitable[CommandExecuted]:
        return self.add(Deploy(**kwargs))

    def start(self, *args: str) -> Awaitable[CommandExecuted]:
        return self.add(Start(*args))

    def terminate(self) -> Awaitable[CommandExecuted]:
        return self.add(Terminate())

    def run(self, cmd: str, *args: str, env: dict[str, str] | None = None, stderr: Any = None, stdout: Any = None,
            workdir: str = "", timeout: timedelta | float | None = None, output_limit: int | None = RESULT_TEXT_CAP,
            stdout_to: str | os.PathLike[str] | None = None,
            stderr_to: str | os.PathLike[str] | None = None) -> Awaitable[CommandExecuted]:
        """Runs `cmd` with `args` in the activity; `env` reaches the process.

        `stdout` / `stderr` (yapapi's capture contexts) are accepted and ignored: output is always
        streamed as events and kept in the result. Extensions: `workdir`, `timeout`; the result
        keeps at most `output_limit` characters per stream (None: all), says when it cut
        (`stdout_truncated`, `stdout_dropped`, ...), and `stdout_to` / `stderr_to` write the
        whole stream, as bytes, to a local file as it arrives.
        """
        return self.add(Run(cmd, *args, env=env, workdir=workdir, timeout=timeout, output_limit=output_limit,
                            stdout_to=stdout_to, stderr_to=stderr_to))

    def download_bytes(self, src_path: str, on_download: Callable[[bytes], Awaitable[Any]],
                       limit: int = DOWNLOAD_BYTES_LIMIT_DEFAULT) -> Awaitable[CommandExecuted]:
        return self.add(DownloadBytes(src_path, on_download, limit))

    def download_file(self, src_path: str, dst_path: str | os.PathLike[str]) -> Awaitable[CommandExecuted]:
        return self.add(DownloadFile(src_path, dst_path))

    def download_json(self, src_path: str, on_download: Callable[[Any], Awaitable[Any]],
                      limit: int = DOWNLOAD_BYTES_LIMIT_DEFAULT) -> Awaitable[CommandExecuted]:
        return self.add(DownloadJson(src_path, on_download, limit))

    def upload_bytes(self, data: bytes, dst_path: str) -> Awaitable[CommandExecuted]:
        return self.add(SendBytes(data, dst_path))

    def upload_file(self, src_path: str | os.PathLike[str], dst_path: str) -> Awaitable[CommandExecuted]:
        return self.add(SendFile(src_path, dst_path))

    def upload_json(self, data: Any, dst_path: str) -> Awaitable[CommandExecuted]:
        return self.add(SendJson(data, dst_path))
