"""Commands outlive the daemon: the agent keeps running them with no daemon connected, spools their
output, and a new daemon side on the same channel picks them up without losing or repeating a byte.

Tested at the executor level (a real container with the real agent; the "daemon" is the channel
and executor objects, which are what a daemon restart throws away and makes anew)."""

from __future__ import annotations

import asyncio
import hashlib
import tempfile
import uuid
from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import docker
import pytest
import pytest_asyncio

from exeunit.runtime.agent.executor import AgentChannel, AgentExecutor, AgentFailure, guest_binds, guest_entrypoint
from exeunit.runtime.docker import DockerRuntime
from exeunit.runtime.protocols import STDOUT, ContainerOwner, ContainerSpec, GuestSetup
from tests.conftest import BASE_IMAGE

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


async def test_a_command_survives_its_daemon_and_resumes_without_a_lost_byte(guest: Guest) -> None:
    count = 800_000  # 11 MB: more than the agent's 8 MiB spool holds, so the command waits for us
    channel, executor = await guest.daemon_side()
    first = executor.run(guest.container_id, ["/bin/sh", "-c", NUMBERED.format(count=count, pause="")], {}, None, None)
    before = await read_until(first, 1 << 20)
    channel.close()  # the daemon dies: the agent loses its connection mid-command
    await asyncio.sleep(1.5)  # the command runs on meanwhile, into the agent's spool

    channel, executor = await guest.daemon_side()
    resumed = executor.resume(guest.container_id, first.command_id, len(before), timeout=60)
    after = b"".join([data async for _, data in resumed])
    channel.close()
    assert resumed.outcome is not None and resumed.outcome.return_code == 0
    assert hashlib.sha256(before + after).hexdigest() == hashlib.sha256(expected_lines(count)).hexdigest()


async def test_a_command_that_ended_while_no_daemon_was_there_still_reports_its_exit(guest: Guest) -> None:
    channel, executor = await guest.daemon_side()
    first = executor.run(guest.container_id, ["/bin/sh", "-c", "echo one; sleep 1; echo two; exit 7"], {}, None, None)
    before = await read_until(first, 4)
    channel.close()
    await asyncio.sleep(2)  # it ends while no daemon is connected

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
