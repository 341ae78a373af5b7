"""Commands outlive the daemon: the agent keeps running them with no daemon connected, spools their
output, and a new daemon side on the same channel picks them up without losing or repeating a byte.

Tested at the executor level (a real container with the real agent; the "daemon" is the channel
and executor objects, which are what a daemon restart throws away and makes anew)."""

from __future__ import annotations

import hashlib
import tempfile
import uuid
from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import docker
import pytest
import pytest_asyncio

from exeunit.runtime.agent.executor import ACK_EVERY, AgentChannel, AgentExecutor, AgentFailure, guest_binds, guest_entrypoint
from exeunit.runtime.agent.guest import SPOOL_BYTES
from exeunit.runtime.docker import DockerRuntime
from exeunit.runtime.protocols import STDOUT, ContainerOwner, ContainerSpec, GuestSetup
from tests.conftest import BASE_IMAGE
from tests.waiting import until

# Numbered lines, so that a lost, repeated or reordered byte shows; `seconds` spreads them out.
NUMBERED = "i=0; while [ $i -lt {count} ]; do printf 'line %08d\\n' $i; i=$((i+1)); {pause} done"


def expected_lines(count: int) -> bytes:
    return b"".join(b"line %08d\n" % i for i in range(count))


class Guest:
    """A container running the agent, and a way to make the daemon's side anew."""

    def __init__(self, channel_dir: Path, container_id: str, runtime: DockerRuntime) -> None:
        self.channel_dir, self.container_id, self.runtime = channel_dir, container_id, runtime

    async def daemon_side(self) -> tuple[AgentChannel, AgentExecutor]:
        channel = AgentChannel(self.channel_dir)
        await channel.open()
        executor = AgentExecutor(channel, self.runtime.executor(), agent_start_seconds=5)
        executor.container_started()
        return channel, executor


@pytest_asyncio.fixture
async def guest(engine: docker.DockerClient) -> AsyncIterator[Guest]:
    runtime = DockerRuntime()
    with tempfile.TemporaryDirectory(prefix="exeunit-test-channel-") as directory:
        channel_dir = Path(directory)
        channel_dir.chmod(0o755)
        image = await runtime.image(BASE_IMAGE)
        spec = ContainerSpec(
            name=f"exeunit-test-resume-{uuid.uuid4().hex[:8]}", image_id=image.id,
            owner=ContainerOwner("test-resume", "-", "test-agent-resume", "test-agent-resume",
                                 datetime.now(timezone.utc) + timedelta(hours=1)),
            memory_bytes=256 << 20, cpu_threads=1, pids_limit=64, shm_bytes=16 << 20, binds={},
            guest=GuestSetup(guest_entrypoint(), guest_binds(channel_dir)),
        )
        container_id = await runtime.create_container(spec)
        try:
            await runtime.start_container(container_id)
            yield Guest(channel_dir, container_id, runtime)
        finally:
            await runtime.remove_container(container_id, stop_timeout=0)


async def read_until(command: object, limit: int) -> bytes:
    """Reads the command's stdout until at least `limit` bytes came (or it ended)."""
    got = bytearray()
    iterator = command.__aiter__()
    async for stream, data in iterator:
        assert stream == STDOUT
        got += data
        if len(got) >= limit:
            break
    await iterator.aclose()
    return bytes(got)


def process_of(engine: docker.DockerClient, container_id: str, marker: str) -> int:
    """The host pid of the one process in the container whose command line holds `marker`."""
    top = engine.api.top(container_id)
    column, command = top["Titles"].index("PID"), top["Titles"].index("CMD")
    [pid] = [int(row[column]) for row in top["Processes"] if marker in row[command]]
    return pid


def written(pid: int) -> int:
    """Bytes the process has written (its stdout is the agent's pipe: what the agent took, and the pipe holds)."""
    try:
        io = dict(line.split(": ") for line in Path(f"/proc/{pid}/io").read_text().splitlines())
    except FileNotFoundError:
        return -1  # it ended
    return int(io["wchar"])


def waits_on_its_pipe(pid: int) -> bool:
    """Whether the process sleeps in a write to a full pipe (the agent no longer reads it)."""
    try:
        return "pipe_write" in Path(f"/proc/{pid}/wchan").read_text()
    except FileNotFoundError:
        return False  # it ended


async def test_a_command_survives_its_daemon_and_resumes_without_a_lost_byte(guest: Guest,
                                                                            engine: docker.DockerClient) -> None:
    count = 800_000  # 11 MB: more than the agent's 8 MiB spool holds, so the command waits for us
    channel, executor = await guest.daemon_side()
    first = executor.run(guest.container_id, ["/bin/sh", "-c", NUMBERED.format(count=count, pause="")], {}, None, None)
    before = await read_until(first, 1 << 20)
    pid = process_of(engine, guest.container_id, "printf 'line")
    channel.close()  # the daemon dies: the agent loses its connection mid-command
    # The command runs on meanwhile, into the agent's spool, till the spool is full and the command waits on
    # its pipe: it has then written most of a spool's worth past what the daemon read (the spool holds up to
    # SPOOL_BYTES past what was acknowledged, at most ACK_EVERY behind what was read).
    beyond = SPOOL_BYTES - 2 * ACK_EVERY
    await until(lambda: written(pid) >= len(before) + beyond and waits_on_its_pipe(pid),
                lambda: f"the agent's spool full: the command waiting on its pipe, {beyond} bytes or more past the "
                f"{len(before)} read (it wrote {written(pid) - len(before)} past them)")

    channel, executor = await guest.daemon_side()
    resumed = executor.resume(guest.container_id, first.command_id, len(before), timeout=60)
    after = b"".join([data async for _, data in resumed])
    channel.close()
    assert resumed.outcome is not None and resumed.outcome.return_code == 0
    assert hashlib.sha256(before + after).hexdigest() == hashlib.sha256(expected_lines(count)).hexdigest()


async def test_a_command_that_ended_while_no_daemon_was_there_still_reports_its_exit(
        guest: Guest, engine: docker.DockerClient) -> None:
    channel, executor = await guest.daemon_side()
    first = executor.run(guest.container_id, ["/bin/sh", "-c", "echo one; sleep 1; echo two; exit 7"], {}, None, None)
    before = await read_until(first, 4)
    pid = process_of(engine, guest.container_id, "echo two")
    channel.close()
    # it ends while no daemon is connected: its process exits, and the agent reaps it (the pid is gone)
    await until(lambda: not Path(f"/proc/{pid}").exists(), lambda: "the command ended and the agent reaped it")

    channel, executor = await guest.daemon_side()
    resumed = executor.resume(guest.container_id, first.command_id, len(before), timeout=10)
    after = b"".join([data async for _, data in resumed])
    assert before + after == b"one\ntwo\n" and resumed.outcome.return_code == 7
    # once its exit was acknowledged, the agent forgets it, and runs the next command as usual
    again = executor.resume(guest.container_id, first.command_id, 0, timeout=10)
    with pytest.raises(AgentFailure, match="no longer holds it"):
        [item async for item in again]
    nxt = executor.run(guest.container_id, ["/bin/echo", "next"], {}, None, 10)
    assert b"".join([data async for _, data in nxt]) == b"next\n" and nxt.outcome.return_code == 0
    channel.close()
