"""The container is hardened by default: no network, no capabilities, no new privileges, user
namespace remapping, limits from the agreement; its root is writable like a VM's (see
tests/test_writable_root.py) and bounded with its volumes by the agreement's storage."""

from __future__ import annotations

import docker
import grpc
import pytest

from exeunit.runtime.docker.labels import LABEL_ACTIVITY, LABEL_AGREEMENT
from tests.client import ContractClient
from tests.conftest import BASE_IMAGE, Daemons

MIB = 1 << 20


async def test_volumes_and_tmp_are_writable(client: ContractClient, ready: str) -> None:
    for place in ("/golem/input", "/golem/output", "/golem/work", "/tmp"):
        run = await client.run_batch(ready, [client.sh(f"echo data > {place}/f && cat {place}/f")])
        assert run.succeeded, (place, run.finished)
        assert run.stdout() == b"data\n"


async def test_no_network_interface_but_loopback(client: ContractClient, ready: str) -> None:
    run = await client.run_batch(ready, [client.run("/bin/ls", "/sys/class/net")])
    assert run.stdout().split() == [b"lo"]


# Linux capability numbers of the namespaced set (exeunit.runtime.docker.runtime.NAMESPACED_CAPABILITIES)
CAPABILITY_BITS = {"CHOWN": 0, "DAC_OVERRIDE": 1, "FOWNER": 3, "FSETID": 4, "KILL": 5, "SETGID": 6, "SETUID": 7,
                   "NET_BIND_SERVICE": 10, "SYS_CHROOT": 18}


async def test_only_namespaced_capabilities_and_no_new_privileges(client: ContractClient, ready: str) -> None:
    """Root in the container keeps what a VM image's servers need (switching users, chroot, low
    ports), inside the user namespace only; nothing that reaches beyond the container."""
    run = await client.run_batch(ready, [client.run("/bin/grep", "-E", "^(CapEff|CapBnd|CapPrm|NoNewPrivs)", "/proc/self/status")])
    fields = dict(line.split(b":\t") for line in run.stdout().splitlines())
    expected = sum(1 << bit for bit in CAPABILITY_BITS.values())
    assert int(fields[b"CapEff"], 16) == int(fields[b"CapBnd"], 16) == int(fields[b"CapPrm"], 16) == expected
    assert fields[b"NoNewPrivs"] == b"1"
    refused = await client.run_batch(ready, [client.sh(
        "mount -t tmpfs none /mnt 2>&1; echo rc=$?; mknod /root/null c 1 3 2>&1; echo rc=$?"
    )])
    assert refused.stdout().count(b"rc=") == 2 and b"rc=0" not in refused.stdout(), refused.stdout()


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
    assert host["ReadonlyRootfs"] is False  # a VM's root: writable, on the activity's own filesystem
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


async def test_memory_backed_places_are_not_executable(client: ContractClient, ready: str) -> None:
    for place in ("/dev/shm", "/dev"):
        run = await client.run_batch(ready, [client.sh(f"cp /bin/true {place}/t && {place}/t; echo rc=$?")])
        assert b"rc=126" in run.stdout(), (place, run.stdout(), run.stderr())
    for place in ("/golem/work", "/tmp"):  # on the activity's filesystem, as on a VM's disk
        run = await client.run_batch(ready, [client.sh(f"cp /bin/true {place}/t && {place}/t; echo rc=$?")])
        assert run.stdout() == b"rc=0\n", place


async def test_storage_is_a_hard_limit_of_the_agreements_size(client: ContractClient) -> None:
    activity_id = await client.ready_activity(BASE_IMAGE, min_storage_bytes=64 * MIB)
    # writes inside stop at the agreement's size, whichever volume they go to
    fill = await client.run_batch(activity_id, [client.sh(
        "head -c 200000000 /dev/zero > /golem/work/big; echo rc=$?; "
        "head -c 10000000 /dev/zero > /golem/output/more; echo rc=$?; "
        "du -sb /golem/work/big | cut -f1"
    )])
    lines = fill.stdout().split()
    assert lines[:2] == [b"rc=1", b"rc=1"], fill.stderr()
    assert int(lines[2]) <= 64 * MIB
    assert b"No space left on device" in fill.stderr()
    # uploads are refused before writing when they cannot fit
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await client.upload_bytes(activity_id, "/golem/input/x", b"x" * MIB)
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "does not fit: the activity's storage has" in refused.value.details()
    await client.run_batch(activity_id, [client.run("/bin/rm", "/golem/work/big", "/golem/output/more")])
    accepted = []
    for index in range(4):
        try:
            await client.upload_bytes(activity_id, f"/golem/input/part{index}", b"y" * (40 * MIB))
            accepted.append(index)
        except grpc.aio.AioRpcError as err:
            assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert accepted == [0]  # a second 40 MiB no longer fits in what is left of 64 MiB


async def test_container_root_is_not_host_root(client: ContractClient, ready: str, engine: docker.DockerClient) -> None:
    """The set-up starts dockerd with --userns-remap=default: root inside maps to an unprivileged
    host uid, which also owns the volumes (so they stay writable)."""
    security = engine.info().get("SecurityOptions") or []
    assert any("name=userns" in option for option in security), (
        "the Docker engine runs without user-namespace remapping (container root is host root); "
        "stop it and run scripts/setup.sh, which starts dockerd with --userns-remap=default"
    )
    run = await client.run_batch(ready, [client.run("/bin/cat", "/proc/self/uid_map")])
    inside, host, count = (int(field) for field in run.stdout().split())
    assert inside == 0 and host >= 1000 and count <= 65536
    run = await client.run_batch(ready, [client.sh("echo ok > /golem/work/owned && stat -c %u /golem/work/owned")])
    assert run.stdout() == b"0\n"


async def test_replacing_a_file_counts_the_space_it_frees(client: ContractClient) -> None:
    activity_id = await client.ready_activity(BASE_IMAGE, min_storage_bytes=64 * MIB)
    for _ in range(3):  # 40 MiB over the same 40 MiB file, in 64 MiB of storage
        await client.upload_bytes(activity_id, "/golem/input/same", b"z" * (40 * MIB))
    free = await client.run_batch(activity_id, [client.sh("df -B1 --output=avail /golem/input | tail -1")])
    # the agreement's storage, less the file and the writable root's skeleton (a few directories)
    assert 24 * MIB - 64 * 1024 <= int(free.stdout()) <= 24 * MIB
