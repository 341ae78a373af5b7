"""The container is hardened by default: read-only root, no network, no capabilities, limits."""

from __future__ import annotations

import docker

from exeunit.docker_runtime import LABEL_ACTIVITY, LABEL_AGREEMENT
from tests.client import ContractClient
from tests.conftest import Daemons


async def test_root_filesystem_is_read_only_but_volumes_and_tmp_are_writable(client: ContractClient, ready: str) -> None:
    run = await client.run_batch(ready, [client.sh("touch /evil 2>&1; echo rc=$?")])
    assert b"Read-only file system" in run.stdout()
    assert b"rc=1" in run.stdout()
    for place in ("/golem/input", "/golem/output", "/golem/work", "/tmp"):
        run = await client.run_batch(ready, [client.sh(f"echo data > {place}/f && cat {place}/f")])
        assert run.succeeded, (place, run.finished)
        assert run.stdout() == b"data\n"


async def test_no_network_interface_but_loopback(client: ContractClient, ready: str) -> None:
    run = await client.run_batch(ready, [client.run("/bin/ls", "/sys/class/net")])
    assert run.stdout().split() == [b"lo"]


async def test_no_capabilities_and_no_new_privileges(client: ContractClient, ready: str) -> None:
    run = await client.run_batch(ready, [client.run("/bin/grep", "-E", "^(CapEff|CapBnd|CapPrm|NoNewPrivs)", "/proc/self/status")])
    fields = dict(line.split(b":\t") for line in run.stdout().splitlines())
    assert fields[b"CapEff"] == fields[b"CapBnd"] == fields[b"CapPrm"] == b"0000000000000000"
    assert fields[b"NoNewPrivs"] == b"1"


async def test_init_reaps_and_limits_come_from_the_agreement(
    client: ContractClient, engine: docker.DockerClient, daemons: Daemons, provider
) -> None:
    activity_id = await client.new_activity("exeunit-base:latest", min_memory_bytes=256 << 20, min_cpu_threads=1)
    assert (await client.run_batch(activity_id, [client.deploy(), client.start()])).succeeded
    container = engine.containers.get(daemons.containers_of(provider)[0])
    host = container.attrs["HostConfig"]
    assert host["Memory"] == 256 << 20
    assert host["NanoCpus"] == 1_000_000_000
    assert host["PidsLimit"] == 512
    assert host["Init"] is True
    assert host["ReadonlyRootfs"] is True
    assert host["NetworkMode"] == "none"
    assert container.name == f"exeunit-{activity_id}"
    assert container.labels[LABEL_ACTIVITY] == activity_id
    assert container.labels[LABEL_AGREEMENT]
    run = await client.run_batch(activity_id, [client.run("/bin/cat", "/proc/1/comm")])
    assert run.stdout().strip() == b"docker-init"


async def test_container_stays_up_like_a_booted_vm(client: ContractClient, ready: str, engine, daemons: Daemons, provider) -> None:
    container = engine.containers.get(daemons.containers_of(provider)[0])
    assert container.status == "running"
    run = await client.run_batch(ready, [client.run("/bin/true")])
    container.reload()
    assert run.succeeded and container.status == "running"
