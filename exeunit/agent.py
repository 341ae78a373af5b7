"""The daemon's side of the resident agent (`exeunit/guest/agent.py`): an `Executor` that runs
commands through it, over a unix socket that does not pass through the engine.

The daemon listens on a socket in a per-activity directory that the container sees read-only;
the agent connects to it. Anything in the container can kill the agent, replace it, or connect in
its place, so nothing it says is trusted: every frame is checked (kind, size, JSON shape, exit code
range), every wait is bounded by the command's own timeout, and a lying or silent agent fails only
its own activity's command, with a reason. When no agent is connected (an image without python3,
or an agent that was killed), commands go through `docker exec` instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import struct
from collections.abc import AsyncIterator
from pathlib import Path

from exeunit import errors
from exeunit.runtime import STDERR, STDOUT, CommandOutcome, CommandRun, Executor

log = logging.getLogger(__name__)

HELLO, RUN, KILL, OUT, ERR, EXIT = b"H", b"R", b"K", b"O", b"E", b"X"
HEADER = struct.Struct(">I")
MAX_FRAME = (1 << 20) + 1  # the agent sends output in pieces of at most 256 KiB
HELLO_SECONDS = 2.0  # a connection that does not say hello in time is dropped
MAX_GREETING = 4  # connections waiting to say hello at once; more are closed at once
KILL_GRACE_SECONDS = 2.0  # after a kill, how long the agent has to report the exit
GUEST_AGENT = Path(__file__).parent / "guest" / "agent.py"
GUEST_DIR = "/.exeunit"  # where the container sees the agent and its channel (read-only)
SOCKET_NAME = "agent.sock"


def guest_entrypoint() -> tuple[str, ...]:
    """Starts the agent where the image has python3, then idles like the plain keep-alive shell."""
    agent = f"{GUEST_DIR}/agent.py"
    channel = f"{GUEST_DIR}/channel/{SOCKET_NAME}"
    script = (
        f"if command -v python3 >/dev/null 2>&1; then python3 -I -S {agent} {channel} "
        "</dev/null >/dev/null 2>&1 & fi; exec /bin/sh"
    )
    return ("/bin/sh", "-c", script)


def guest_binds(channel_dir: Path) -> dict[str, str]:
    """What the container sees read-only: the agent's code and the directory of its socket."""
    return {f"{GUEST_DIR}/agent.py": str(GUEST_AGENT), f"{GUEST_DIR}/channel": str(channel_dir)}


class AgentFailure(errors.ExeUnitError):
    """The agent broke the protocol or went away; the command fails with this reason."""


class _Link:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def receive(self) -> tuple[bytes, bytes]:
        header = await self.reader.readexactly(HEADER.size)
        (length,) = HEADER.unpack(header)
        if not 1 <= length <= MAX_FRAME:
            raise AgentFailure(f"the agent sent a frame of {length} bytes (at most {MAX_FRAME} are allowed)")
        frame = await self.reader.readexactly(length)
        return frame[:1], frame[1:]

    async def send(self, kind: bytes, payload: bytes = b"") -> None:
        self.writer.write(HEADER.pack(len(payload) + 1) + kind + payload)
        await self.writer.drain()

    def close(self) -> None:
        self.writer.close()


class AgentChannel:
    """The socket one activity's agent connects to; the latest connection that said hello runs
    the next command."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / SOCKET_NAME
        self._server: asyncio.AbstractServer | None = None
        self._link: _Link | None = None
        self._pending: _Link | None = None  # connected since the last command began
        self._greeting = 0  # connections not yet past their hello
        self._connected = asyncio.Event()
        self.busy = asyncio.Lock()  # one command at a time

    async def open(self) -> None:
        self._server = await asyncio.start_unix_server(self._accept, path=str(self.path))
        os.chmod(self.path, 0o666)  # root in the container may be another uid on the host

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        link = _Link(reader, writer)
        if self._greeting >= MAX_GREETING:  # a flood of connections costs the daemon nothing more
            link.close()
            return
        self._greeting += 1
        try:
            kind, payload = await asyncio.wait_for(link.receive(), HELLO_SECONDS)
            if kind != HELLO or _json(payload).get("version") != 1:
                raise AgentFailure("no hello")
        except (AgentFailure, asyncio.IncompleteReadError, TimeoutError, OSError):
            link.close()
            return
        finally:
            self._greeting -= 1
        if self._pending is not None:
            self._pending.close()
        self._pending = link  # takes over at the next command, never in the middle of one
        self._connected.set()

    async def link(self, wait: float) -> _Link | None:
        """The agent to run the next command, waiting up to `wait` seconds for one to connect;
        None when there is none. A connection made since the last command replaces the old one."""
        if self._pending is not None:
            if self._link is not None:
                self._link.close()
            self._link, self._pending = self._pending, None
        if self._link is not None and (self._link.writer.is_closing() or self._link.reader.at_eof()):
            self._link.close()  # the agent went away between commands (killed, or it exited)
            self._link = None
        if self._link is None:
            self._connected.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._connected.wait(), wait)
            if self._pending is not None:
                self._link, self._pending = self._pending, None
        return self._link

    def drop(self, link: _Link) -> None:
        link.close()
        if self._link is link:
            self._link = None

    def close(self) -> None:
        for link in (self._link, self._pending):
            if link is not None:
                link.close()
        if self._server is not None:
            self._server.close()


class AgentExecutor:
    """Runs commands through the agent on `channel`, or through `fallback` while none is connected.
    `name` says which one ran the last command."""

    def __init__(self, channel: AgentChannel, fallback: Executor) -> None:
        self._channel = channel
        self._fallback = fallback
        self.name = "agent"

    def run(self, container_id: str, argv: list[str], env: dict[str, str], workdir: str | None,
            timeout: float | None) -> CommandRun:
        return _AgentRun(self, self._channel, self._fallback, container_id, argv, env, workdir, timeout)


class _AgentRun:
    def __init__(self, executor: AgentExecutor, channel: AgentChannel, fallback: Executor, container_id: str,
                 argv: list[str], env: dict[str, str], workdir: str | None, timeout: float | None) -> None:
        self._executor = executor
        self._channel, self._fallback = channel, fallback
        self._args = (container_id, argv, env, workdir, timeout)
        self.outcome: CommandOutcome | None = None

    def __aiter__(self) -> AsyncIterator[tuple[int, bytes]]:
        return self._output()

    async def _output(self) -> AsyncIterator[tuple[int, bytes]]:
        container_id, argv, env, workdir, timeout = self._args
        async with self._channel.busy:
            link = await self._channel.link(wait=0.5)
            self._executor.name = "agent" if link is not None else self._fallback.name
            if link is None:
                fallback = self._fallback.run(container_id, argv, env, workdir, timeout)
                async for item in fallback:
                    yield item
                self.outcome = fallback.outcome
                return
            try:
                async for item in self._through(link, argv, env, workdir, timeout):
                    yield item
            except (AgentFailure, asyncio.IncompleteReadError, ConnectionError, OSError) as exc:
                self._channel.drop(link)
                reason = exc if isinstance(exc, AgentFailure) else "the agent's connection was lost"
                raise AgentFailure(f"the command's agent failed: {reason}") from None

    async def _through(self, link: _Link, argv: list[str], env: dict[str, str], workdir: str | None,
                       timeout: float | None) -> AsyncIterator[tuple[int, bytes]]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout if timeout else None
        await link.send(RUN, json.dumps({"argv": argv, "env": env, "workdir": workdir or ""}).encode())
        timed_out = False
        while True:
            wait = None if deadline is None else max(deadline - loop.time(), 0.0)
            try:
                kind, payload = await asyncio.wait_for(link.receive(), wait)
            except TimeoutError:
                if timed_out:
                    raise AgentFailure("it did not report the exit of a killed command") from None
                timed_out = True
                await link.send(KILL)
                deadline = loop.time() + KILL_GRACE_SECONDS
                continue
            if kind == OUT:
                yield STDOUT, payload
            elif kind == ERR:
                yield STDERR, payload
            elif kind == EXIT:
                code = _json(payload).get("code")
                if not isinstance(code, int) or isinstance(code, bool) or not -(2**31) <= code < 2**31:
                    raise AgentFailure(f"it reported an exit code that is not a 32-bit integer: {code!r:.40}")
                self.outcome = CommandOutcome(code, timed_out)
                return
            else:
                raise AgentFailure(f"it sent a frame of unknown kind {kind!r}")


def _json(payload: bytes) -> dict[str, object]:
    try:
        value = json.loads(payload)
    except ValueError:
        raise AgentFailure("it sent a frame that is not JSON") from None
    if not isinstance(value, dict):
        raise AgentFailure("it sent JSON that is not an object")
    return value
