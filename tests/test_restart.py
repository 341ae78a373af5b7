"""A daemon killed with SIGKILL and started again on its home: running batches go on, with their
output complete and their sequence numbers unchanged."""

from __future__ import annotations

import asyncio
import io
import json
import random
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker
import grpc
import pytest

from exeunit.v1 import activity_pb2 as act
from requestor import Golem, events
from requestor.embedded import EmbeddedProvider
from requestor.services import Service
from requestor.services import ServiceState as S
from tests.client import ContractClient
from tests.conftest import BASE_IMAGE
from tests.daemon_process import EXEUNIT, Daemon
from tests.test_requestor_services import Recorder, base_payload

LINES = 40
COUNTING = f"for i in $(seq 1 {LINES}); do echo line $i; sleep 0.05; done"


@pytest.fixture
def home() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="exeunit-test-home-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def kill(daemon: Daemon) -> None:
    daemon.process.kill()
    daemon.process.wait()


async def read_until_lines(client: ContractClient, activity_id: str, batch_id: str, lines: int) -> list[act.BatchEvent]:
    seen: list[act.BatchEvent] = []
    async for event in client.events(activity_id, batch_id):
        seen.append(event)
        if b"".join(e.stdout.data for e in seen).count(b"\n") >= lines:
            break
    return seen


async def test_a_batch_running_through_the_agent_goes_on_after_sigkill(home: Path) -> None:
    first = Daemon(state_dir=home)
    try:
        async with ContractClient(f"127.0.0.1:{first.port}", "r") as client:
            activity_id = await client.ready_activity(BASE_IMAGE)
            commands = [client.sh(COUNTING), client.run("/bin/echo", "and after")]
            await client.exec(activity_id, commands, batch_id="survivor")
            before = await read_until_lines(client, activity_id, "survivor", 5)
    finally:
        kill(first)
    second = Daemon(state_dir=home)
    try:
        async with ContractClient(f"127.0.0.1:{second.port}", "r") as client:
            after = [e async for e in client.events(activity_id, "survivor", from_sequence=before[-1].sequence + 1)]
            whole = before + after
            assert [e.sequence for e in whole] == list(range(len(whole)))  # no gap, no repeat
            output = b"".join(e.stdout.data for e in whole if e.command_index == 0)
            assert output == b"".join(b"line %d\n" % i for i in range(1, LINES + 1))
            finished = [e.finished for e in whole if e.WhichOneof("kind") == "finished"]
            assert [f.return_code for f in finished] == [0, 0] and all(f.success for f in finished)
            assert b"".join(e.stdout.data for e in whole if e.command_index == 1) == b"and after\n"
            # and from the very start, as it was served before the kill
            again = [e async for e in client.events(activity_id, "survivor", from_sequence=0)]
            assert [e.sequence for e in again] == [e.sequence for e in whole]
            assert (await client.get_batch(activity_id, "survivor")).state == act.BATCH_STATE_SUCCEEDED
        assert any("event=command_taken_up" in line for line in second.lines)
    finally:
        second.stop()


async def test_a_command_taken_up_after_a_restart_keeps_only_what_is_left_of_its_timeout(home: Path) -> None:
    """Its timeout counts from when it started, not from when the next daemon took it up: a
    6 s command whose daemon was away for 6 s is killed as soon as it is taken up."""
    first = Daemon(state_dir=home)
    try:
        async with ContractClient(f"127.0.0.1:{first.port}", "r") as client:
            activity_id = await client.ready_activity(BASE_IMAGE)
            await client.exec(activity_id, [client.sh("echo begun; sleep 30", timeout=6)], batch_id="timed")
            before = await read_until_lines(client, activity_id, "timed", 1)
    finally:
        kill(first)
    # the downtime is the workload, not a wait for something: the daemon stays away for the
    # command's whole 6 s timeout (no daemon is there meanwhile to be asked anything)
    await asyncio.sleep(6)
    second = Daemon(state_dir=home)
    try:
        async with ContractClient(f"127.0.0.1:{second.port}", "r") as client:
            after = [e async for e in client.events(activity_id, "timed", from_sequence=before[-1].sequence + 1)]
            whole = before + after
            [started] = [e for e in whole if e.WhichOneof("kind") == "started"]
            [finished] = [e for e in whole if e.WhichOneof("kind") == "finished"]
            assert not finished.finished.success and finished.finished.message == "timed out after 6s and was killed"
            ran = finished.time.ToDatetime() - started.time.ToDatetime()
            # taken up with its whole timeout again, it would have run the downtime (6 s, and the
            # daemon's start) and 6 s more; it ran about the downtime
            assert ran.total_seconds() < 10, ran
    finally:
        second.stop()


async def test_a_batch_running_through_docker_exec_ends_as_interrupted(home: Path, engine: docker.DockerClient) -> None:
    tag = f"exeunit-test-nopython:{uuid.uuid4().hex[:8]}"
    engine.images.build(fileobj=io.BytesIO(f"FROM {BASE_IMAGE}\nRUN rm -f /usr/bin/python3*\n".encode()), tag=tag, rm=True)
    try:
        first = Daemon("--offer-image", "exeunit-test-*", state_dir=home)
        try:
            async with ContractClient(f"127.0.0.1:{first.port}", "r") as client:
                activity_id = await client.ready_activity(tag)
                await client.exec(activity_id, [client.sh(COUNTING), client.run("/bin/true")], batch_id="cut")
                before = await read_until_lines(client, activity_id, "cut", 3)
        finally:
            kill(first)
        second = Daemon("--offer-image", "exeunit-test-*", state_dir=home)
        try:
            async with ContractClient(f"127.0.0.1:{second.port}", "r") as client:
                after = [e async for e in client.events(activity_id, "cut", from_sequence=before[-1].sequence + 1)]
                whole = before + after
                assert [e.sequence for e in whole] == list(range(len(whole)))
                finished = [e.finished for e in whole if e.WhichOneof("kind") == "finished"]
                assert len(finished) == 1 and not finished[0].success
                assert finished[0].message.startswith("interrupted by provider restart")
                batch = await client.get_batch(activity_id, "cut")
                assert batch.state == act.BATCH_STATE_FAILED
                assert batch.results[1].state == act.COMMAND_STATE_SKIPPED
                # the activity itself goes on
                run = await client.run_batch(activity_id, [client.run("/bin/echo", "still here")])
                assert run.stdout() == b"still here\n"
        finally:
            second.stop()
    finally:
        engine.images.remove(tag, force=True)


class Counter(Service):
    """Runs one long counting command and keeps its whole output."""

    get_payload = staticmethod(base_payload)

    def __init__(self) -> None:
        super().__init__()
        self.output: str | None = None

    async def run(self):
        script = self._ctx.new_script()
        counted = script.run("/bin/sh", "-c", COUNTING)
        yield script
        self.output = (await counted).stdout


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_a_requestor_script_rides_out_a_provider_killed_and_restarted(home: Path) -> None:
    port = free_port()
    listen = ("--listen", f"127.0.0.1:{port}")
    first = Daemon(*listen, state_dir=home)
    second = None
    recorder = Recorder()
    try:
        async with Golem(budget=10.0, subnet_tag="public", providers=[f"127.0.0.1:{port}"],
                         event_consumer=recorder) as golem:
            [instance] = (await golem.run_service(Counter)).instances
            await recorder.until(lambda: any(isinstance(e, events.CommandStdOut) for e in recorder.events))
            kill(first)
            second = Daemon(*listen, state_dir=home)
            await recorder.until(lambda: instance.state is S.terminated)
        assert instance.output == "".join(f"line {i}\n" for i in range(1, LINES + 1))
        assert recorder.states(instance) == [S.pending, S.starting, S.running, S.stopping, S.terminated]
        assert instance.exc_info == (None, None, None)
    finally:
        for daemon in (first, second):
            if daemon is not None:
                daemon.stop()


class Steady(Service):
    """Runs short numbered commands one after another and keeps each one's output; a command
    that fails ends its run (and the instance leaves `running`)."""

    get_payload = staticmethod(base_payload)
    NUMBERS = "for i in 1 2 3 4 5 6 7 8; do echo $i; sleep 0.05; done"

    def __init__(self) -> None:
        super().__init__()
        self.outputs: list[str] = []

    async def run(self):
        while True:
            script = self._ctx.new_script()
            numbered = script.run("/bin/sh", "-c", self.NUMBERS)
            yield script
            self.outputs.append((await numbered).stdout)


async def test_a_requestor_rides_out_twenty_kills_at_random_moments(home: Path) -> None:
    """The provider is SIGKILLed and started again 20 times, at random moments of the instance's
    work, down for 0.5 to 4 s each time: back within `unresponsive_after`, it never makes the
    instance unresponsive, and every command's output arrives whole."""
    seed = random.randrange(1 << 32)
    chance = random.Random(seed)
    port = free_port()
    listen = ("--listen", f"127.0.0.1:{port}")
    daemon = Daemon(*listen, state_dir=home)
    recorder = Recorder()
    try:
        async with Golem(budget=10.0, subnet_tag="public", providers=[f"127.0.0.1:{port}"],
                         event_consumer=recorder, unresponsive_after=8.0) as golem:
            cluster = await golem.run_service(Steady)
            [instance] = cluster.instances
            for _ in range(20):
                done = len(instance.outputs)
                await recorder.until(lambda: len(instance.outputs) > done)  # it works (again)
                await asyncio.sleep(chance.uniform(0.0, 1.0))  # the workload: a kill somewhere in its next commands
                kill(daemon)
                await asyncio.sleep(chance.uniform(0.5, 4.0))  # and a downtime of random length
                daemon = await asyncio.to_thread(Daemon, *listen, state_dir=home)
                assert instance.state is S.running, f"seed {seed}: {recorder.states(instance)} {instance.exc_info[1]!r}"
            done = len(instance.outputs)
            await recorder.until(lambda: len(instance.outputs) >= done + 2)  # and it goes on
            cluster.stop()
            await recorder.until(lambda: instance.state is S.terminated)
        assert recorder.states(instance) == [S.pending, S.starting, S.running, S.stopping, S.terminated], seed
        whole = "".join(f"{i}\n" for i in range(1, 9))
        assert instance.outputs and all(output == whole for output in instance.outputs), seed
    finally:
        daemon.stop()


# What an HTTP/2 client (gRPC) says first: the connection preface and an empty SETTINGS frame.
HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])


def read_until_settings_acknowledged(connection: socket.socket) -> None:
    """Reads the server's frames until it acknowledges our SETTINGS (type 4, flag ACK)."""
    buffered = b""
    while True:
        while len(buffered) < 9:
            chunk = connection.recv(65536)
            assert chunk, "the daemon closed the connection"
            buffered += chunk
        length, kind, flags = int.from_bytes(buffered[:3], "big"), buffered[3], buffered[4]
        while len(buffered) < 9 + length:
            buffered += connection.recv(65536)
        buffered = buffered[9 + length:]
        if kind == 4 and flags & 1:
            return


def test_a_daemon_killed_with_live_connections_serves_again_at_once_on_its_port(home: Path) -> None:
    """Its connections linger in TIME_WAIT after SIGKILL; they must not keep the next daemon (a
    service manager restarting it) off the port. A port someone listens on is still refused."""
    port = free_port()
    listen = ("--listen", f"127.0.0.1:{port}")
    first = Daemon(*listen, state_dir=home)
    connections = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(20)]
    try:
        for connection in connections:
            connection.sendall(HTTP2_PREFACE)
            read_until_settings_acknowledged(connection)  # a live HTTP/2 connection, all we sent read
        kill(first)
        for connection in connections:  # the daemon's side closed first; ours follows
            while connection.recv(65536):
                pass
    finally:
        for connection in connections:
            connection.close()
    lingering = subprocess.run(["ss", "-tan", "state", "time-wait"], capture_output=True, text=True).stdout
    assert lingering.count(f":{port} ") >= 20, lingering  # what kept a daemon off its port
    second = Daemon(*listen, state_dir=home)  # asserts it listens, at the first attempt
    try:
        assert second.port == port
        with socket.socket() as squatter:
            squatter.bind(("127.0.0.1", 0))
            squatter.listen()
            taken = squatter.getsockname()[1]
            refused = subprocess.run([*EXEUNIT, "serve", "--listen", f"127.0.0.1:{taken}", "--state-dir",
                                      str(home / "other")], capture_output=True, text=True, timeout=60)
        assert refused.returncode != 0
        assert f"cannot listen on 127.0.0.1:{taken}: Address already in use" in refused.stderr, refused.stderr
    finally:
        second.stop()


async def test_two_embedded_providers_on_one_host_leave_each_other_alone(engine: docker.DockerClient) -> None:
    """Two requestor scripts started side by side, each with its own embedded provider."""
    first, second = EmbeddedProvider("public"), EmbeddedProvider("public")
    try:
        async with ContractClient(await first.start(), "r") as client:
            activity_id = await client.ready_activity(BASE_IMAGE)
            async with ContractClient(await second.start(), "r") as other:  # its start cleans only its own home
                await other.ready_activity(BASE_IMAGE)
            run = await client.run_batch(activity_id, [client.run("/bin/echo", "untouched")])
            assert run.stdout() == b"untouched\n"
    finally:
        await second.stop()
        await first.stop()


async def test_a_network_and_its_members_survive_sigkill_and_go_with_the_last_member(home: Path) -> None:
    from exeunit.runtime.bridges import BridgePlumbing
    from tests.test_networks import make_network, probe, start_echo

    roomy = ("--cpu-overcommit", "4")  # room for the few activities below on a 2-core machine
    first = Daemon(*roomy, state_dir=home)
    try:
        async with ContractClient(f"127.0.0.1:{first.port}", "r") as client:
            await make_network(client, "n", "10.253.0.0/24")
            server = await client.networked_activity("n", "10.253.0.2")
            await start_echo(client, server)
    finally:
        kill(first)
    plumbing = BridgePlumbing(json.loads((home / "identity.json").read_text())["home_id"])
    assert len(plumbing.existing()) == 1
    second = Daemon(*roomy, state_dir=home)
    try:
        async with ContractClient(f"127.0.0.1:{second.port}", "r") as client:
            members = {m.ip: m.attached for m in (await client.get_network("n")).members}
            assert members == {"10.253.0.2": True}
            with pytest.raises(grpc.aio.AioRpcError) as caught:  # its address is still held
                await client.exec(await client.new_activity(BASE_IMAGE), [client.deploy("n", "10.253.0.2")])
            assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            newcomer = await client.networked_activity("n", "10.253.0.3")  # joins the namespace that survived
            assert (await probe(client, newcomer, "10.253.0.2"))[0] == "tcp hello from 10.253.0.3"
            await client.destroy(server)
            assert len(plumbing.existing()) == 1
            await client.destroy(newcomer)
            assert plumbing.existing() == set()
    finally:
        second.stop()
