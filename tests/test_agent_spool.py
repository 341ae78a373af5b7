"""The agent's spool and a command's end: output still in the command's pipe when it exits is read
and handed on, however long the daemon takes to make room in the spool.

The agent reads a command's pipes only while its spool has room; a daemon that reads slowly (its
batch's event log waiting for a reader) leaves the spool full. A command that exits meanwhile
leaves its last bytes in the pipe. Those bytes are output like any other: they must come, and the
command must not be declared over before they did (issue 26: a paced 48 MiB output came back short
by its tail, with exit code 0). And how output leaves the command: a fast writer's pipe widened,
frames read whole even when a wait for one is cut (issue 28)."""

from __future__ import annotations

import asyncio
import fcntl
import os
import signal
import struct
import termios
import time

import pytest

from exeunit.runtime.agent.executor import MAX_FRAME, _Link
from exeunit.runtime.agent.guest import ERR, HEADER, OUT, PIPE_BYTES, SEND_BYTES, SPOOL_BYTES, Command
from exeunit.runtime.protocols import STDOUT
from tests.test_agent_resume import Guest, guest  # noqa: F401  (the fixture: a container with the agent)

# The spool stops reading a little below SPOOL_BYTES (each piece costs some bytes beyond its
# data); this much more makes sure the rest of head's output waits in the pipe (64 KiB) for room,
# and the tail is written surely after the spool stopped reading.
FILL = SPOOL_BYTES + 30_000
FILL_THEN_TAIL = f"head -c {FILL} /dev/zero; sleep 0.5; printf tail"


async def test_the_tail_left_in_the_pipe_at_exit_comes_after_a_long_full_spool(guest: Guest) -> None:
    channel, executor = await guest.daemon_side()
    command = executor.run(guest.container_id, ["/bin/sh", "-c", FILL_THEN_TAIL], {}, None, 60)
    output = command.__aiter__()
    stream, first = await anext(output)  # nothing is acknowledged until 1 MiB was taken
    assert stream == STDOUT
    # A slow daemon: it takes nothing while the command fills the spool, exits with its tail in
    # the pipe, and the agent's drain idle time passes several times over. This wait is the workload.
    await asyncio.sleep(1.5)
    rest = b"".join([data async for _, data in output])
    channel.close()
    got = first + rest
    assert command.outcome is not None and command.outcome.return_code == 0
    assert len(got) == FILL + 4, f"{FILL + 4 - len(got)} bytes of output lost at the command's end"
    assert got.endswith(b"tail")


def waiting_bytes(fd: int) -> int:
    return struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0]


def test_a_fast_writers_stdout_pipe_grows_to_a_mib_and_no_other_pipe_does() -> None:
    """With Linux' 64 KiB pipes, a fast command's output came as 4.4 events per MiB, each with the
    daemon's per-event work. Every widened pipe counts against one allowance for the user all
    containers run as, so only the stdout of a command that filled its pipe grows."""
    fast = Command(1, ["/bin/sh", "-c", "head -c 300000 /dev/zero; head -c 300000 /dev/zero >&2"], {}, "")
    slow = Command(2, ["/bin/echo", "a line"], {}, "")
    try:
        os.waitpid(slow.pid, 0)  # its line is in its pipe
        stdout = next(fd for fd, kind in fast.pipes.items() if kind == OUT)
        deadline = time.monotonic() + 10
        while waiting_bytes(stdout) < 1 << 16 and time.monotonic() < deadline:  # the writer waits on it
            time.sleep(0.01)
        for command in (fast, slow):
            assert {fcntl.fcntl(fd, fcntl.F_GETPIPE_SZ) for fd in command.pipes} == {1 << 16}
            for fd in list(command.pipes):
                if waiting_bytes(fd):
                    command.read(fd)
            grown = {command.pipes[fd]: fcntl.fcntl(fd, fcntl.F_GETPIPE_SZ) for fd in command.pipes}
            assert grown == ({OUT: PIPE_BYTES, ERR: 1 << 16} if command is fast else {OUT: 1 << 16, ERR: 1 << 16})
    finally:
        os.killpg(fast.pid, signal.SIGKILL)  # its own session: sh and the head it waits for
        os.waitpid(fast.pid, 0)
        for command in (fast, slow):
            for fd in [*command.pipes, *([command.pidfd] if command.pidfd is not None else [])]:
                os.close(fd)


async def test_a_wait_cut_between_a_frames_header_and_payload_loses_nothing() -> None:
    """A command's timeout cancels the wait for the agent's next frame; had its header been read
    by then, the payload (the command's output, which it chooses) was taken for the next header:
    an output of 00 00 00 05 'X' + code would have passed for the command's exit."""
    reader = asyncio.StreamReader()
    link = _Link(reader, None)  # type: ignore[arg-type]  (nothing is sent)
    forged_exit = HEADER.pack(5) + b"X" + struct.pack(">i", 0)
    reader.feed_data(HEADER.pack(1 + len(forged_exit)) + b"O")
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(link.receive(), 0.05)
    reader.feed_data(forged_exit)
    assert await link.receive() == (b"O", forged_exit)
    reader.feed_data(HEADER.pack(5) + b"X" + struct.pack(">i", 3))
    assert await link.receive() == (b"X", struct.pack(">i", 3))


def test_the_agents_largest_frame_is_one_the_daemon_takes() -> None:
    assert SEND_BYTES + 1 <= MAX_FRAME
