"""The daemon's side of the resident agent (`exeunit/runtime/agent/guest.py`): an `Executor` that runs
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
import logging
import os
import secrets
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

from exeunit import errors
from exeunit.runtime.agent.guest import (  # the wire format: one definition, the guest's
    ACK,
    ACK_BODY,
    CODE,
    ERR,
    EXIT,
    HEADER,
    HELLO,
    HELLO_BODY,
    ID,
    ID_OFFSET,
    KILL,
    OUT,
    RESUME,
    RUN,
    RUN_HEAD,
    VERSION,
)
from exeunit.runtime.protocols import STDERR, STDOUT, CommandOutcome, CommandRun, Executor, GuestSetup

log = logging.getLogger(__name__)

MAX_FRAME = (1 << 20) + 1  # the agent sends output in frames of at most 1 MiB
MAX_UNREAD = 8 << 20  # bytes sent to the agent that it has not read yet (a RUN is at most ~4 MiB)
ACK_EVERY = 1 << 20  # output acknowledged to the agent (freeing its spool) after this many bytes
HELLO_SECONDS = 2.0  # a connection that does not say hello in time is dropped
MAX_GREETING = 4  # connections waiting to say hello at once; more are closed at once
KILL_GRACE_SECONDS = 2.0  # after a kill, how long the agent has to report the exit
GUEST_AGENT = Path(__file__).parent / "guest.py"
GUEST_DIR = "/.exeunit"  # where the container sees the agent and its channel (read-only)
SOCKET_NAME = "agent.sock"


class AgentExecutors:
    """Each activity's executor: the resident agent over a socket in the activity's channel
    directory (`channel_dir(activity_id)`, made on the host), falling back to `fallback()` (the
    engine's exec) while no agent is connected, or for good where the socket cannot be made."""

    def __init__(self, channel_dir: Callable[[str], Path], fallback: Callable[[], Executor],
                 agent_start_seconds: float) -> None:
        self._channel_dir = channel_dir
        self._fallback = fallback
        self._start_seconds = agent_start_seconds

    async def open(self, activity_id: str) -> tuple[Executor, GuestSetup]:
        directory = await asyncio.to_thread(self._channel_dir, activity_id)
        channel = AgentChannel(directory)
        try:
            await channel.open()
        except OSError as exc:
            log.warning("event=agent_channel_failed activity=%s error=%s", activity_id, exc)
            return self._fallback(), GuestSetup()
        executor = AgentExecutor(channel, self._fallback(), self._start_seconds)
        return executor, GuestSetup(guest_entrypoint(), guest_binds(directory))


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


@dataclass(frozen=True)
class HeldCommand:
    """What an agent said it holds when it connected: a command it ran for a daemon before this one
    (or this one before a restart), and how much of its output was acknowledged."""

    command_id: int
    acked: int


class _Link:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.held: HeldCommand | None = None
        self._header: bytes | None = None  # of the frame being read, kept if a wait is cut before its payload

    async def receive(self) -> tuple[bytes, bytes]:
        """(kind, payload) of the next frame. The length and the kind byte are read together, so
        that the payload (up to 1 MiB of output) is read as it is used, not copied out of the frame.
        Cancelling it (a command's timeout) loses nothing: the next call goes on where it stopped,
        and never takes a frame's payload (the command's output) for the next header."""
        if self._header is None:
            self._header = await self.reader.readexactly(HEADER.size + 1)  # every frame has its kind byte
        (length,) = HEADER.unpack_from(self._header)
        if not 1 <= length <= MAX_FRAME:
            raise AgentFailure(f"the agent sent a frame of {length} bytes (at most {MAX_FRAME} are allowed)")
        payload = await self.reader.readexactly(length - 1)
        kind, self._header = self._header[HEADER.size:], None
        return kind, payload

    def send(self, kind: bytes, payload: bytes = b"") -> None:
        """Queues a frame without waiting for the agent to read it (a waiting send would be a wait
        the agent controls); an agent that leaves too much unread fails instead."""
        self.writer.write(HEADER.pack(len(payload) + 1) + kind + payload)
        if self.writer.transport.get_write_buffer_size() > MAX_UNREAD:
            raise AgentFailure("it does not read what the daemon sends")

    @property
    def alive(self) -> bool:
        return not (self.writer.is_closing() or self.reader.at_eof())

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
            if kind != HELLO or len(payload) != HELLO_BODY.size:
                raise AgentFailure("no hello")
            version, held_id, acked = HELLO_BODY.unpack(payload)
            if version != VERSION:
                raise AgentFailure(f"agent protocol version {version}, expected {VERSION}")
            link.held = HeldCommand(held_id, acked) if held_id else None
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
        if self._link is not None and not self._link.alive:
            self._link.close()  # the agent went away between commands (killed, or it exited)
            self._link = None
        if self._link is None:
            self._connected.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._connected.wait(), wait)
            if self._pending is not None:
                self._link, self._pending = self._pending, None
        return self._link

    @property
    def connected(self) -> bool:
        """Whether an agent is connected (or has said hello and waits to take over)."""
        if self._pending is not None:
            return True
        link = self._link
        return link is not None and link.alive

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

    The agent is waited for lazily: `start` does not wait for it, the first command waits until
    `agent_start_seconds` after the container started, and later commands never wait (nothing
    restarts an agent that went away)."""

    def __init__(self, channel: AgentChannel, fallback: Executor, agent_start_seconds: float) -> None:
        self._channel = channel
        self._fallback = fallback
        self._start_seconds = agent_start_seconds
        self._agent_due: float | None = None  # loop time after which no agent is waited for
        self._last = ""  # which executor ran the last command

    def container_started(self) -> None:
        self._agent_due = asyncio.get_running_loop().time() + self._start_seconds

    def agent_wait(self) -> float:
        """How long the next command may wait for an agent to connect."""
        if self._agent_due is None:
            return self._start_seconds
        return max(self._agent_due - asyncio.get_running_loop().time(), 0.0)

    @property
    def name(self) -> str:
        """The executor of the last command; before the first, the one the next would use, or ""
        while the agent may still be starting."""
        if self._last:
            return self._last
        if self._channel.connected:
            return "agent"
        return self._fallback.name if self.agent_wait() == 0 else ""

    def ran_with(self, name: str) -> None:
        self._last = name

    def close(self) -> None:
        self._channel.close()

    def run(self, container_id: str, argv: list[str], env: dict[str, str], workdir: str | None,
            timeout: float | None) -> CommandRun:
        return _AgentRun(self, self._channel, self._fallback, container_id, argv, env, workdir, timeout)

    def resume(self, container_id: str, command_id: int, offset: int, timeout: float | None) -> CommandRun:
        """Picks up command `command_id`, which the agent ran on while no daemon was connected
        (a daemon restart), from output byte `offset` on. Fails with AgentFailure when the agent no
        longer holds it (the agent or the container restarted)."""
        return _AgentRun(self, self._channel, self._fallback, container_id, [], {}, None, timeout,
                         command_id=command_id, resume_from=offset)


class _AgentRun:
    """One command through the agent (or the fallback). `resume_from`, when set, picks up command
    `command_id` that the agent ran on for a daemon that died, from that output offset."""

    def __init__(self, executor: AgentExecutor, channel: AgentChannel, fallback: Executor, container_id: str,
                 argv: list[str], env: dict[str, str], workdir: str | None, timeout: float | None,
                 command_id: int | None = None, resume_from: int | None = None) -> None:
        self._executor = executor
        self._channel, self._fallback = channel, fallback
        self._args = (container_id, argv, env, workdir, timeout)
        self.command_id = command_id if command_id is not None else secrets.randbits(63) + 1
        self._resume_from = resume_from
        self.outcome: CommandOutcome | None = None
        self.before_start: Callable[[int], None] | None = None

    def __aiter__(self) -> AsyncIterator[tuple[int, bytes]]:
        return self._output()

    async def _output(self) -> AsyncIterator[tuple[int, bytes]]:
        container_id, argv, env, workdir, timeout = self._args
        async with self._channel.busy:
            link = await self._channel.link(wait=self._executor.agent_wait())
            if self._resume_from is not None:
                if link is None or link.held is None or link.held.command_id != self.command_id:
                    raise AgentFailure("the command was lost: its agent no longer holds it")
                if link.held.acked > self._resume_from:
                    raise AgentFailure(
                        f"the agent holds the command's output from byte {link.held.acked} on, "
                        f"not from {self._resume_from}"
                    )
            self._executor.ran_with("agent" if link is not None else self._fallback.name)
            if link is None:
                fallback = self._fallback.run(container_id, argv, env, workdir, timeout)
                async for item in fallback:
                    yield item
                self.outcome = fallback.outcome
                return
            try:
                async for item in self._through(link, timeout):
                    yield item
            except (AgentFailure, asyncio.IncompleteReadError, ConnectionError, OSError) as exc:
                self._channel.drop(link)
                reason = exc if isinstance(exc, AgentFailure) else "the agent's connection was lost"
                raise AgentFailure(f"the command's agent failed: {reason}") from None

    async def _through(self, link: _Link, timeout: float | None) -> AsyncIterator[tuple[int, bytes]]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout if timeout else None
        command_id = self.command_id
        link.held = None  # what it held at hello is replaced (RUN) or taken up (RESUME) now
        if self._resume_from is None:
            offset = 0
            if self.before_start is not None:  # recorded before the agent can have it, not later
                self.before_start(command_id)
            link.send(RUN, _run_frame(command_id, *self._args[1:4]))
        else:
            offset = self._resume_from
            link.send(RESUME, ID_OFFSET.pack(command_id, offset))
        acked = offset
        timed_out = False
        while True:
            wait = None if deadline is None else max(deadline - loop.time(), 0.0)
            try:
                kind, payload = await asyncio.wait_for(link.receive(), wait)
            except TimeoutError:
                if timed_out:
                    raise AgentFailure("it did not report the exit of a killed command") from None
                timed_out = True
                link.send(KILL, ID.pack(command_id))
                deadline = loop.time() + KILL_GRACE_SECONDS
                continue
            if kind == OUT or kind == ERR:
                yield (STDOUT if kind == OUT else STDERR), payload
                offset += len(payload)  # handed on (and kept by the batch) once the consumer resumes us
                if offset - acked >= ACK_EVERY:
                    link.send(ACK, ACK_BODY.pack(command_id, offset, 0))
                    acked = offset
            elif kind == EXIT:
                if len(payload) != CODE.size:
                    raise AgentFailure(f"it reported an exit in {len(payload)} bytes instead of {CODE.size}")
                (code,) = CODE.unpack(payload)
                # Its output may go, but the agent keeps holding the command (until the next RUN):
                # until the batch has recorded the end, a daemon killed now must find it there.
                link.send(ACK, ACK_BODY.pack(command_id, offset, 0))
                self.outcome = CommandOutcome(code, timed_out)
                return
            else:
                raise AgentFailure(f"it sent a frame of unknown kind {kind!r}")


def _run_frame(command_id: int, argv: list[str], env: dict[str, str], workdir: str | None) -> bytes:
    """RUN's payload: NUL-terminated fields (the contract already refuses NUL in any of them)."""
    fields = [workdir or "", *argv, *(f"{key}={value}" for key, value in env.items())]
    body = b"".join(field.encode("utf-8", "surrogateescape") + b"\0" for field in fields)
    return RUN_HEAD.pack(command_id, len(argv), len(env)) + body
