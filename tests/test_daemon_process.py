"""The `exeunit` command as a user runs it: help, refusals, and a clean SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator

import docker
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from exeunit.runtime import LABEL_PROVIDER
from tests.client import ContractClient
from tests.conftest import BASE_IMAGE
from tests.daemon_process import EXEUNIT, Daemon

def test_help_explains_every_flag() -> None:
    top = subprocess.run([*EXEUNIT, "--help"], capture_output=True, text=True, check=True).stdout
    assert "serve" in top and "provider daemon" in top
    serve = subprocess.run([*EXEUNIT, "serve", "--help"], capture_output=True, text=True, check=True).stdout
    for flag in ("--listen", "--name", "--subnet", "--auth-token-file", "--max-memory-gib", "--price-cpu-sec",
                 "--insecure-allow-remote", "--pids-limit"):
        assert flag in serve


def test_remote_listen_without_token_is_refused() -> None:
    done = subprocess.run([*EXEUNIT, "serve", "--listen", "0.0.0.0:0"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert "refusing to listen on 0.0.0.0:0 without a token" in done.stderr
    assert "--auth-token-file" in done.stderr


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
    if d.process.poll() is None:
        d.process.kill()
        d.process.wait()


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
        daemon.process.send_signal(signal.SIGTERM)
        assert daemon.process.wait(timeout=60) == 0
        assert engine.containers.list(all=True, filters=label) == []
        assert not os.path.exists(f"/var/lib/exeunit/storage/{daemon.provider_id}")  # volumes unmounted, gone
        log = "".join(daemon.lines)
        assert "event=shutting_down" in log and "event=stopped" in log
        assert f"activity={ids[0]}" in log and "reason=ProviderShutdown" in log
        with pytest.raises(grpc.aio.AioRpcError):
            await client.get_batch(ids[0], long_batch)


async def test_leftover_containers_of_a_killed_daemon_are_removed_on_restart(engine: docker.DockerClient) -> None:
    first = Daemon("--name", "crashy")
    try:
        async with ContractClient(f"127.0.0.1:{first.port}", "r") as client:
            activity_id = await client.new_activity(BASE_IMAGE)
            assert (await client.run_batch(activity_id, [client.deploy(), client.start()])).succeeded
    finally:
        first.process.kill()
        first.process.wait()
    label = {"label": f"{LABEL_PROVIDER}={first.provider_id}"}
    assert len(engine.containers.list(all=True, filters=label)) == 1
    second = subprocess.Popen(
        [*EXEUNIT, "serve", "--listen", "127.0.0.1:0", "--provider-id", first.provider_id],
        stderr=subprocess.PIPE, text=True,
    )
    try:
        assert second.stderr is not None
        for line in second.stderr:
            if "event=listening" in line:
                break
        assert engine.containers.list(all=True, filters=label) == []
        assert not os.path.exists(f"/var/lib/exeunit/storage/{first.provider_id}/{activity_id}")  # unmounted
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(timeout=60)


def test_python_m_exeunit_and_console_script_agree() -> None:
    if not any(os.access(os.path.join(p, "exeunit"), os.X_OK) for p in os.environ.get("PATH", "").split(os.pathsep)):
        pytest.fail("the `exeunit` console script is not on PATH; pip install -e . installs it")
    version = subprocess.run(["exeunit", "--version"], capture_output=True, text=True, check=True).stdout
    assert version.startswith("exeunit ")
