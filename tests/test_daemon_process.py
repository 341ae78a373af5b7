"""The `exeunit` command as a user runs it: help, refusals, and a clean SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import json
from decimal import Decimal
import os
import re
import urllib.request
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from exeunit.runtime.docker.labels import LABEL_EXPIRES, LABEL_HOME, LABEL_PROVIDER
from exeunit.v1 import activity_pb2 as act
from tests.client import ContractClient
from tests.conftest import BASE_IMAGE
from tests.daemon_process import EXEUNIT, Daemon


def test_help_explains_every_flag() -> None:
    top = subprocess.run([*EXEUNIT, "--help"], capture_output=True, text=True, check=True).stdout
    assert "serve" in top and "provider daemon" in top
    serve = subprocess.run([*EXEUNIT, "serve", "--help"], capture_output=True, text=True, check=True).stdout
    for flag in ("--listen", "--name", "--subnet", "--auth-token-file", "--max-memory-gib", "--price-cpu-sec",
                 "--tls-on-loopback", "--pids-limit"):
        assert flag in serve


@pytest.mark.parametrize(("flags", "says"), [
    (["--listen", "localhost"], "'localhost' is not HOST:PORT"),
    (["--listen", "127.0.0.1:99999"], "port 99999 is not in 0-65535"),
    (["--listen", "127.0.0.1:http"], "is not HOST:PORT"),
    (["--max-cpu-threads", "-2"], "--max-cpu-threads: must be greater than 0, got -2"),
    (["--max-memory-gib", "0"], "--max-memory-gib: must be greater than 0"),
    (["--default-storage-gib", "-1"], "must be greater than 0"),
    (["--price-cpu-sec", "-0.1"], "--price-cpu-sec: must be 0 or more"),
    (["--pids-limit", "0"], "--pids-limit: must be greater than 0"),
    (["--cpu-overcommit", "0.5"], "--cpu-overcommit must be at least 1"),
])
def test_bad_flags_are_one_line_and_a_non_zero_exit_before_anything_is_touched(flags: list[str], says: str,
                                                                                tmp_path: Path) -> None:
    home = tmp_path / "home"
    done = subprocess.run([*EXEUNIT, "serve", "--state-dir", str(home), *flags], capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 2
    assert says in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) <= 2  # argparse: usage line + the error
    assert not home.exists()


async def reflected_services(channel: grpc.aio.Channel, metadata: tuple[tuple[str, str], ...] = ()) -> list[str]:
    """Service names as `grpcurl list` sees them, through server reflection."""
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)

    async def one_request():
        yield reflection_pb2.ServerReflectionRequest(list_services="")

    async for response in stub.ServerReflectionInfo(one_request(), metadata=metadata):
        return [service.name for service in response.list_services_response.service]
    return []


@pytest.fixture
def daemon() -> Iterator[Daemon]:
    d = Daemon("--name", "process-provider")
    yield d
    d.stop()


async def test_sigterm_terminates_activities_and_leaves_no_container(daemon: Daemon, engine: docker.DockerClient) -> None:
    async with ContractClient(f"127.0.0.1:{daemon.port}", "r") as client:
        health = health_pb2_grpc.HealthStub(client.channel)
        assert (await health.Check(health_pb2.HealthCheckRequest())).status == health_pb2.HealthCheckResponse.SERVING
        assert set(await reflected_services(client.channel)) >= {
            "exeunit.v1.Market", "exeunit.v1.Activity", "exeunit.v1.Transfer", "grpc.health.v1.Health",
        }
        ids = [await client.new_activity(BASE_IMAGE) for _ in range(2)]
        for activity_id in ids:
            assert (await client.run_batch(activity_id, [client.deploy(), client.start()])).succeeded
        label = {"label": f"{LABEL_PROVIDER}={daemon.provider_id}"}
        assert len(engine.containers.list(all=True, filters=label)) == 2
        long_batch = (await client.exec(ids[0], [client.run("/bin/sleep", "600")])).batch_id

        # what SIGTERM must reach: a watch that has had its first status, a stream that has had the
        # long command's start (so the command runs, and both streams are open on the daemon)
        watching, running = asyncio.Event(), asyncio.Event()

        async def watch() -> list[act.ActivityStatus]:
            seen = []
            request = act.WatchActivityRequest(activity_id=ids[1])
            with contextlib.suppress(grpc.aio.AioRpcError):
                async for status in client.activity.WatchActivity(request, metadata=client.metadata):
                    seen.append(status)
                    watching.set()
            return seen

        async def batch_end() -> list[act.BatchEvent]:
            events: list[act.BatchEvent] = []
            with contextlib.suppress(grpc.aio.AioRpcError):
                async for event in client.events(ids[0], long_batch):
                    events.append(event)
                    if event.WhichOneof("kind") == "started":
                        running.set()
            return events

        watcher, stream = asyncio.create_task(watch()), asyncio.create_task(batch_end())
        try:
            async with asyncio.timeout(30):
                await asyncio.gather(watching.wait(), running.wait())
        except TimeoutError:
            pytest.fail(f"after 30 s the watch had {'a' if watching.is_set() else 'no'} status and the long "
                        f"command {'had' if running.is_set() else 'had not'} started; nothing to cut short")
        assert watcher.done() is stream.done() is False, "a stream ended before SIGTERM"
        daemon.process.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(daemon.process.wait, 60) == 0
        statuses, events = await watcher, await stream
        # those still connected learn why before their streams end
        assert (statuses[-1].state, statuses[-1].reason) == (act.ACTIVITY_STATE_TERMINATED, "ProviderShutdown")
        assert events[-1].WhichOneof("kind") == "batch_finished"
        finished = [e for e in events if e.WhichOneof("kind") == "finished"][-1].finished
        assert finished.message == "cut short: the activity was terminated (ProviderShutdown)"
        assert engine.containers.list(all=True, filters=label) == []
        assert not (daemon.state_dir / "storage").exists()  # volumes unmounted, gone
        log = "".join(daemon.lines)
        assert "event=shutting_down" in log and "event=stopped" in log
        assert f"activity={ids[0]}" in log and "reason=ProviderShutdown" in log
        with pytest.raises(grpc.aio.AioRpcError):
            await client.get_batch(ids[0], long_batch)


async def ready_activity_on(daemon: Daemon) -> str:
    async with ContractClient(f"127.0.0.1:{daemon.port}", "r") as client:
        return await client.ready_activity(BASE_IMAGE)


def containers_of_activity(engine: docker.DockerClient, activity_id: str) -> str:
    [container] = engine.containers.list(all=True, filters={"label": f"io.exeunit.activity={activity_id}"})
    return str(container.id)


def containers_of_home(engine: docker.DockerClient, daemon: Daemon) -> list[str]:
    home_id = json.loads((daemon.state_dir / "identity.json").read_text())["home_id"]
    return [c.id for c in engine.containers.list(all=True, filters={"label": f"{LABEL_HOME}={home_id}"})]


def refused(*args: str) -> str:
    """Runs `exeunit serve` expecting it to refuse to start; returns what it said."""
    done = subprocess.run([*EXEUNIT, "serve", *args], capture_output=True, text=True, timeout=60)
    assert done.returncode != 0, done.stderr
    return done.stderr


async def test_a_killed_daemon_restarted_on_its_home_takes_its_activities_up_again(engine: docker.DockerClient) -> None:
    first = Daemon("--name", "crashy", state_dir=Path(tempfile.mkdtemp(prefix="exeunit-test-home-")))
    try:
        async with ContractClient(f"127.0.0.1:{first.port}", "r") as client:
            kept, doomed = await client.ready_activity(BASE_IMAGE), await client.ready_activity(BASE_IMAGE)
            await client.upload_bytes(kept, "/golem/work/kept.txt", b"survives the daemon")
            doomed_container = containers_of_activity(engine, doomed)
    finally:
        first.process.kill()
        first.process.wait()
    engine.containers.get(doomed_container).kill()  # dies while no daemon watches
    second = Daemon(state_dir=first.state_dir)
    try:
        async with ContractClient(f"127.0.0.1:{second.port}", "r") as client:
            assert (await client.state(kept)).state == act.ACTIVITY_STATE_READY
            run = await client.run_batch(kept, [client.run("/bin/cat", "/golem/work/kept.txt")])
            assert run.stdout() == b"survives the daemon"
            assert (await client.state(kept)).executor == "agent"  # the agent came back to the new daemon
            gone = await client.state(doomed)
            assert (gone.state, gone.reason) == (act.ACTIVITY_STATE_TERMINATED, "ContainerDied")
            assert containers_of_home(engine, first) == [containers_of_activity(engine, kept)]
        assert any("event=state_recovered agreements=2 activities=1" in line for line in second.lines)
    finally:
        second.stop()
    try:
        assert containers_of_home(engine, first) == []  # SIGTERM ended what was recovered
    finally:
        shutil.rmtree(first.state_dir)


async def test_keep_activities_on_shutdown_leaves_them_for_the_next_daemon(engine: docker.DockerClient) -> None:
    home = Path(tempfile.mkdtemp(prefix="exeunit-test-home-"))
    try:
        first = Daemon("--keep-activities-on-shutdown", state_dir=home)
        async with ContractClient(f"127.0.0.1:{first.port}", "r") as client:
            activity_id = await client.ready_activity(BASE_IMAGE)
            await client.upload_bytes(activity_id, "/golem/work/kept.txt", b"across an upgrade")
        assert first.stop() == 0
        assert len(containers_of_home(engine, first)) == 1
        second = Daemon(state_dir=home)
        try:
            async with ContractClient(f"127.0.0.1:{second.port}", "r") as client:
                run = await client.run_batch(activity_id, [client.run("/bin/cat", "/golem/work/kept.txt")])
                assert run.stdout() == b"across an upgrade"
        finally:
            second.stop()
        assert containers_of_home(engine, first) == []
    finally:
        shutil.rmtree(home)


async def test_a_second_daemon_on_the_same_home_or_port_refuses_before_touching_anything(
    engine: docker.DockerClient,
) -> None:
    first = Daemon("--name", "first")
    try:
        activity_id = await ready_activity_on(first)
        said = refused("--listen", "127.0.0.1:0", "--state-dir", str(first.state_dir))
        assert f"another exeunit daemon (pid {first.process.pid}) is serving from the state directory" in said
        with tempfile.TemporaryDirectory(prefix="exeunit-test-home-") as other_home:
            home = Path(other_home) / "home"
            said = refused("--listen", f"127.0.0.1:{first.port}", "--state-dir", str(home))
            assert said.strip() == f"exeunit: cannot listen on 127.0.0.1:{first.port}: Address already in use"
            assert not home.exists(), "the port is checked before the home is made"
        assert len(containers_of_home(engine, first)) == 1
        async with ContractClient(f"127.0.0.1:{first.port}", "r") as client:
            run = await client.run_batch(activity_id, [client.run("/bin/echo", "still mine")])
            assert run.stdout() == b"still mine\n"
    finally:
        first.stop()


async def test_daemons_with_the_same_provider_id_leave_each_other_alone(engine: docker.DockerClient) -> None:
    first = Daemon("--name", "twin")
    try:
        await ready_activity_on(first)
    finally:
        first.process.kill()  # its container is a leftover, but of another home
        first.process.wait()
    twin_home = Path(tempfile.mkdtemp(prefix="exeunit-test-home-"))
    shutil.copy(first.state_dir / "provider-key.pem", twin_home)  # the same key: the same provider id
    twin = Daemon("--name", "twin", "--provider-id", first.provider_id, state_dir=twin_home)
    twin.own_home = True
    try:
        assert len(containers_of_home(engine, first)) == 1
        assert not any("event=dangling_container_removed" in line for line in twin.lines)
    finally:
        twin.stop()
        Daemon(state_dir=first.state_dir).stop()  # its own home cleans up after it
    try:
        assert containers_of_home(engine, first) == []
    finally:
        shutil.rmtree(first.state_dir)


async def test_containers_of_expired_agreements_are_reaped_by_whoever_finds_them(engine: docker.DockerClient) -> None:
    def orphan(expires: float) -> docker.models.containers.Container:
        labels = {LABEL_HOME: "a-home-long-gone", LABEL_EXPIRES: str(int(expires)), "io.exeunit.test": "reaper"}
        return engine.containers.create(BASE_IMAGE, ["/bin/true"], labels=labels, network_mode="none")

    expired, current = orphan(time.time() - 3600), orphan(time.time() + 3600)
    try:
        daemon = Daemon("--name", "reaper")
        daemon.stop()
        left = {c.id for c in engine.containers.list(all=True, filters={"label": "io.exeunit.test=reaper"})}
        assert left == {current.id}
        assert any(f"event=expired_container_reaped container={expired.id[:12]}" in line for line in daemon.lines)
    finally:
        for container in (expired, current):
            with contextlib.suppress(docker.errors.NotFound):
                container.remove(force=True, v=True)


def test_python_m_exeunit_and_console_script_agree() -> None:
    if not any(os.access(os.path.join(p, "exeunit"), os.X_OK) for p in os.environ.get("PATH", "").split(os.pathsep)):
        pytest.fail("the `exeunit` console script is not on PATH; pip install -e . installs it")
    version = subprocess.run(["exeunit", "--version"], capture_output=True, text=True, check=True).stdout
    assert version.startswith("exeunit ")


async def test_json_logs_at_debug_are_the_daemons_own_events(engine: docker.DockerClient) -> None:
    daemon = Daemon("--log-format", "json", "--log-level", "DEBUG")
    try:
        async with ContractClient(f"127.0.0.1:{daemon.port}", "r") as client:
            activity_id = await client.ready_activity(BASE_IMAGE)
            await client.destroy(activity_id)
    finally:
        daemon.stop()
    records = [json.loads(line) for line in daemon.lines]  # every line is one JSON object
    assert all(r["time"].endswith("Z") and r["level"] in ("debug", "info", "warning", "error") for r in records)
    assert not [r for r in records if r["logger"].startswith(("grpc", "asyncio", "urllib3", "docker"))]
    states = [r["state"] for r in records if r.get("event") == "activity_state" and r.get("activity") == activity_id]
    assert states == ["Deployed", "Ready", "Terminated"]



async def test_exeunit_ps_shows_the_operator_every_requestors_activities(engine: docker.DockerClient) -> None:
    daemon = Daemon("--name", "ps-provider", "--debit-note-interval", "1", "--min-debit-note-interval", "1")
    try:
        async with ContractClient(f"127.0.0.1:{daemon.port}", "alice") as alice, \
                ContractClient(f"127.0.0.1:{daemon.port}", "bob") as bob:
            mine = await alice.ready_activity(BASE_IMAGE)
            theirs = await bob.new_activity(BASE_IMAGE)
            listed = await alice.activity.ListActivities(act.ListActivitiesRequest(), metadata=alice.metadata)
            assert [a.activity_id for a in listed.activities] == [mine]  # a requestor sees its own only
            socket_path = daemon.state_dir / "admin.sock"
            assert socket_path.stat().st_mode & 0o777 == 0o600
            table = subprocess.run([*EXEUNIT, "ps", "--state-dir", str(daemon.state_dir)], capture_output=True,
                                   text=True, timeout=30)
            assert table.returncode == 0, table.stderr
            header, *rows = table.stdout.splitlines()
            assert header.split() == ["ACTIVITY", "REQUESTOR", "STATE", "IMAGE", "AGE", "CPU-S", "MEMORY", "STORAGE", "IP",
                                      "DUE", "ACCEPTED", "PAID", "OVERDUE"]
            assert {(r.split()[0], r.split()[1], r.split()[2]) for r in rows} == {
                (mine[:12], alice.requestor_id[:14], "Ready"), (theirs[:12], bob.requestor_id[:14], "New")}
            as_json = subprocess.run([*EXEUNIT, "ps", "--json", "--state-dir", str(daemon.state_dir)],
                                     capture_output=True, text=True, timeout=30).stdout.splitlines()
            first = json.loads(as_json[0])
            assert first["activity_id"] == mine and first["image"] == BASE_IMAGE and first["storage_bytes"] > 0
            for _ in range(50):  # its agreement's first debit note (every second here) states what it owes
                as_json = subprocess.run([*EXEUNIT, "ps", "--json", "--state-dir", str(daemon.state_dir)],
                                         capture_output=True, text=True, timeout=30).stdout.splitlines()
                first = json.loads(as_json[0])
                if Decimal(first["amount_due"]) > 0:
                    break
                await asyncio.sleep(0.1)
            assert Decimal(first["amount_due"]) > 0, first
            assert (first["amount_accepted"], first["amount_paid"], first["amount_overdue"]) == ("0", "0", "0")
    finally:
        daemon.stop()
    gone = subprocess.run([*EXEUNIT, "ps", "--state-dir", str(daemon.state_dir)], capture_output=True, text=True,
                          timeout=30)
    assert gone.returncode == 1 and "is `exeunit serve` running" in gone.stderr


def _samples(text: str) -> dict[str, float]:
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines() if line and not line.startswith("#")}


async def test_prometheus_metrics_count_what_the_daemon_does(engine: docker.DockerClient) -> None:
    daemon = Daemon("--metrics-listen", "127.0.0.1:0", "--debit-note-interval", "1", "--min-debit-note-interval", "1")
    try:
        port = int(next(re.search(r"event=metrics_listening .*port=(\d+)", line).group(1)
                        for line in daemon.lines if "event=metrics_listening" in line))
        async with ContractClient(f"127.0.0.1:{daemon.port}", "r") as client:
            activity_id = await client.ready_activity(BASE_IMAGE)
            run = await client.run_batch(activity_id, [client.sh("head -c 5000 /dev/zero; exit 3")])
            assert not run.succeeded
            await client.upload_bytes(activity_id, "/golem/work/x", b"y" * 1000)
            _, chunks, _ = await client.download(activity_id, "/golem/work/x")
            assert b"".join(chunks) == b"y" * 1000
            with pytest.raises(grpc.aio.AioRpcError):
                await client.state("no-such-activity")
            for _ in range(50):  # until a debit note stated what the agreement owes
                text = await asyncio.to_thread(
                    lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode())
                if _samples(text).get('exeunit_payment_amount{kind="due"}', 0.0) > 0:
                    break
                await asyncio.sleep(0.1)
    finally:
        daemon.stop()
    samples = _samples(text)
    assert samples['exeunit_activities{state="Ready"}'] == 1
    assert samples['exeunit_agreements{state="Approved"}'] == 1
    assert samples['exeunit_commands_total{command="run",outcome="failed"}'] == 1
    assert samples['exeunit_commands_total{command="deploy",outcome="succeeded"}'] == 1
    assert samples['exeunit_bytes_total{direction="output"}'] == 5000
    assert samples['exeunit_bytes_total{direction="upload"}'] == 1000
    assert samples['exeunit_bytes_total{direction="download"}'] == 1000
    assert samples['exeunit_refused_calls_total{code="NOT_FOUND"}'] >= 1
    assert samples['exeunit_payment_amount{kind="due"}'] > 0
    assert samples['exeunit_payment_amount{kind="paid"}'] == samples['exeunit_agreements_overdue'] == 0
    assert "r" not in {label for key in samples for label in re.findall(r'"([^"]*)"', key)}  # no requestor ids
