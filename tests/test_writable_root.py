"""An activity's root is writable like a Golem VM's, private to the activity, and bounded with its
volumes by the agreement's storage (the writable layer lives on the activity's own filesystem:
exeunit.runtime.docker.layers)."""

from __future__ import annotations

import os

import docker

from exeunit.domain.resources import Resources
from exeunit.v1.conventions import GIB
from tests.client import ContractClient
from tests.conftest import BASE_IMAGE, Daemons

MIB = 1 << 20
ROOMY = Resources(cpu_threads=8, memory_bytes=8 * GIB, storage_bytes=20 * GIB)
SLACK = 6 * MIB  # what a filesystem's own bookkeeping may take or give back around a measurement


def host_free_bytes(*paths: str | os.PathLike[str]) -> int:
    """Free bytes of the distinct filesystems holding `paths`."""
    seen, free = set(), 0
    for path in paths:
        stats = os.statvfs(path)
        key = os.stat(path).st_dev
        if key not in seen:
            seen.add(key)
            free += stats.f_bavail * stats.f_frsize
    return free


async def test_the_root_is_writable_everywhere_and_what_is_written_there_runs(client: ContractClient, ready: str) -> None:
    for place in ("/etc", "/usr/local/bin", "/var", "/run", "/var/run", "/root", "/"):
        script = f"{place.rstrip('/')}/hello.sh"
        run = await client.run_batch(ready, [client.sh(
            f"printf '#!/bin/sh\\necho ran from {place}\\n' > {script} && chmod +x {script} && {script}"
        )])
        assert run.succeeded, (place, run.stderr())
        assert run.stdout() == f"ran from {place}\n".encode()
    run = await client.run_batch(ready, [client.sh("echo 'new line' >> /etc/passwd && tail -1 /etc/passwd")])
    assert run.stdout() == b"new line\n"  # files of the image change too (copied up)


async def test_writing_past_the_agreements_storage_stops_there_and_the_activity_lives_on(
    client: ContractClient, daemons: Daemons, provider, engine: docker.DockerClient,
) -> None:
    activity_id = await client.ready_activity(BASE_IMAGE, min_storage_bytes=128 * MIB)
    disks = (provider.provider.storage.base, engine.info()["DockerRootDir"])
    before = host_free_bytes(*disks)
    fill = await client.run_batch(activity_id, [client.sh(
        "head -c 1073741824 /dev/zero > /var/big; echo rc=$?; du -sb /var/big | cut -f1"
    )])
    rc, size = fill.stdout().split()
    assert rc == b"rc=1" and b"No space left on device" in fill.stderr()
    assert 100 * MIB <= int(size) <= 128 * MIB
    assert before - host_free_bytes(*disks) <= 128 * MIB + SLACK  # the host paid no more than the agreement
    alive = await client.run_batch(activity_id, [client.sh("rm /var/big && echo still here")])
    assert alive.stdout() == b"still here\n"


async def test_root_and_volumes_share_one_budget(client: ContractClient) -> None:
    activity_id = await client.ready_activity(BASE_IMAGE, min_storage_bytes=96 * MIB)
    run = await client.run_batch(activity_id, [client.sh(
        "for place in /etc /golem/work /opt; do head -c 83886080 /dev/zero > $place/eighty 2>/dev/null; done; "
        "du -scb /etc/eighty /golem/work/eighty /opt/eighty | tail -1 | cut -f1"
    )])
    assert int(run.stdout()) <= 96 * MIB


async def test_what_an_activity_writes_to_its_root_no_other_activity_sees(daemons: Daemons) -> None:
    provider = await daemons.start(capacity=ROOMY)
    address = f"127.0.0.1:{provider.port}"
    async with ContractClient(address, "writer") as writer, ContractClient(address, "stranger") as stranger:
        first = await writer.ready_activity(BASE_IMAGE)
        sibling = await writer.ready_activity(BASE_IMAGE)
        other = await stranger.ready_activity(BASE_IMAGE)
        wrote = await writer.run_batch(first, [writer.sh("echo mine > /etc/secret && echo changed > /etc/issue")])
        assert wrote.succeeded
        for client, activity_id in ((writer, sibling), (stranger, other)):
            run = await client.run_batch(activity_id, [client.sh("cat /etc/secret 2>&1; cat /etc/issue")])
            assert b"No such file" in run.stdout() and b"changed" not in run.stdout(), run.stdout()


async def test_ended_activities_leave_the_hosts_disk_as_it_was(daemons: Daemons, engine: docker.DockerClient) -> None:
    provider = await daemons.start(capacity=ROOMY)
    async with ContractClient(f"127.0.0.1:{provider.port}", "r") as client:
        await three_activities_come_and_go(client, (provider.provider.storage.base, engine.info()["DockerRootDir"]))


async def three_activities_come_and_go(client: ContractClient, disks: tuple[str | os.PathLike[str], ...]) -> None:
    warm_up = await client.ready_activity(BASE_IMAGE, min_storage_bytes=64 * MIB)
    await client.destroy(warm_up)  # the storage directory itself, the engine's caches
    before = host_free_bytes(*disks)
    activities = [await client.ready_activity(BASE_IMAGE, min_storage_bytes=64 * MIB) for _ in range(3)]
    for activity_id in activities:
        run = await client.run_batch(activity_id, [client.sh("head -c 50331648 /dev/urandom > /opt/blob && sync")])
        assert run.succeeded, run.stderr()
    assert before - host_free_bytes(*disks) >= 3 * 48 * MIB - SLACK  # written to the host's disk, for now
    for activity_id in activities:
        await client.destroy(activity_id)
    assert abs(before - host_free_bytes(*disks)) <= SLACK


async def test_a_root_holds_many_small_files_as_a_vm_disk_does(client: ContractClient) -> None:
    """Unpacking a package or a source tree makes thousands of small files: the activity's
    filesystem has inodes for them, not only room for a few large volume files."""
    activity_id = await client.ready_activity(BASE_IMAGE, min_storage_bytes=256 * MIB)
    run = await client.run_batch(activity_id, [client.sh(
        "mkdir -p /usr/local/lib/many && cd /usr/local/lib/many && "
        "python3 -c \"[open(f'f{i}', 'w').write('x') for i in range(12000)]\" && ls | wc -l"
    )])
    assert run.succeeded, run.stderr()
    assert run.stdout() == b"12000\n"
