"""The agent's spool and a command's end: output still in the command's pipe when it exits is read
and handed on, however long the daemon takes to make room in the spool.

The agent reads a command's pipes only while its spool has room; a daemon that reads slowly (its
batch's event log waiting for a reader) leaves the spool full. A command that exits meanwhile
leaves its last bytes in the pipe. Those bytes are output like any other: they must come, and the
command must not be declared over before they did (issue 26: a paced 48 MiB output came back short
by its tail, with exit code 0)."""

from __future__ import annotations

import asyncio
import fcntl
import os

from exeunit.runtime.agent.guest import PIPE_BYTES, SPOOL_BYTES, spawn
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


def test_a_commands_pipes_hold_a_mib_so_its_output_comes_in_mib_events() -> None:
    """With Linux' 64 KiB pipes, a fast command's output came as 4.4 events per MiB, each with the
    daemon's per-event work; the agent widens the pipes it spawns with (where the user may)."""
    pid, out, err = spawn(["/bin/true"], {}, "")
    try:
        assert fcntl.fcntl(out, fcntl.F_GETPIPE_SZ) == fcntl.fcntl(err, fcntl.F_GETPIPE_SZ) == PIPE_BYTES == 1 << 20
    finally:
        os.close(out)
        os.close(err)
        os.waitpid(pid, 0)
