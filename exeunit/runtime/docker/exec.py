"""Commands through `docker exec`: the runtime's own executor, and the fallback where no agent runs.

Each command holds one data-plane thread while it runs: it is started and read through there, its
multiplexed stream split into runs of stdout and stderr (exeunit.runtime.docker.frames).
"""

from __future__ import annotations

import logging
import os
import select
import signal
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from exeunit import errors
from exeunit.runtime.docker.errors import translated
from exeunit.runtime.docker.frames import FrameDecoder
from exeunit.runtime.protocols import CommandOutcome, CommandRun
from exeunit.runtime.threads import iterate_in_thread

log = logging.getLogger(__name__)

READ_BATCH = 1 << 20  # output is read and forwarded in chunks of up to this many bytes


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
        # A socket of our own on the same connection: the SDK hands out a file-like wrapper, and
        # select() and recv() need the socket (its descriptor is public, its attributes are not).
        self._raw = socket.socket(fileno=os.dup(sock.fileno()))
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
        for connection in (self._raw, self._sock):
            try:
                connection.close()
            except OSError:
                pass

    def _inspect(self) -> dict[str, Any]:
        with translated("inspect exec"):
            return self._api.exec_inspect(self.exec_id)


class DockerExec:
    """Runs commands with `docker exec` (an `Executor`); each command holds one data-plane thread."""

    name = "docker-exec"

    def __init__(self, api: Any) -> None:
        self._api = api

    def run(self, container_id: str, argv: list[str], env: dict[str, str], workdir: str | None,
            timeout: float | None) -> ExecRun:
        return ExecRun(self._api, container_id, argv, env, workdir, timeout)

    def resume(self, container_id: str, command_id: int, offset: int, timeout: float | None) -> CommandRun:
        return _Unresumable()

    def container_started(self) -> None:
        """Nothing to wait for: the engine runs commands as soon as the container does."""

    def close(self) -> None:
        """Nothing held between commands."""


class _Unresumable:
    """What resuming a `docker exec` gives: the engine forgets an exec when its caller goes."""

    outcome: CommandOutcome | None = None
    command_id: int | None = None
    before_start: Callable[[int], None] | None = None

    def __aiter__(self) -> AsyncIterator[tuple[int, bytes]]:
        return self._fail()

    async def _fail(self) -> AsyncIterator[tuple[int, bytes]]:
        raise errors.FailedPrecondition("it ran through docker exec, which cannot be taken up again")
        yield  # pragma: no cover - makes this an async generator


class ExecRun:
    """One `docker exec`: started and read through in one worker thread as it is iterated."""

    def __init__(self, api: Any, container_id: str, argv: list[str], env: dict[str, str],
                 workdir: str | None, timeout: float | None) -> None:
        self._api = api
        self._args = (container_id, argv, env, workdir, timeout)
        self.outcome: CommandOutcome | None = None
        self.command_id: int | None = None  # an exec cannot be resumed
        self.before_start: Callable[[int], None] | None = None  # so it is never called

    def __aiter__(self) -> AsyncIterator[tuple[int, bytes]]:
        return iterate_in_thread(self._frames)

    def _frames(self) -> Iterator[tuple[int, bytes]]:
        container_id, argv, env, workdir, timeout = self._args
        with translated(f"exec {argv[0]!r}"):
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
