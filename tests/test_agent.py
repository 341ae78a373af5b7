"""The resident agent: commands through it, fallback to `docker exec`, and an agent that lies."""

from __future__ import annotations

import io
import time
import uuid

import docker
import psutil

from exeunit.v1 import activity_pb2 as act
from tests.client import ContractClient
from tests.conftest import BASE_IMAGE

IMPOSTOR = r'''
import socket, struct, sys, time
mode = sys.argv[1]
s = socket.socket(socket.AF_UNIX)
s.connect("/.exeunit/channel/agent.sock")
def send(kind, payload=b""):
    s.sendall(struct.pack(">I", len(payload) + 1) + kind + payload)
send(b"H", struct.pack(">HQQ", 2, 0, 0))  # protocol version 2, holding no command
open("/golem/work/impostor.ready", "w").close()
header = s.recv(4)  # the daemon's next RUN
s.recv(struct.unpack(">I", header)[0])
if mode == "huge":
    s.sendall(struct.pack(">I", 1 << 30) + b"O")
elif mode == "flood":
    while True:
        send(b"O", b"x" * 65536)
elif mode == "badcode":
    send(b"X", b"zero!")
elif mode == "unknown":
    send(b"Z", b"?")
time.sleep(60)
'''


async def test_commands_run_through_the_agent(client: ContractClient, ready: str) -> None:
    run = await client.run_batch(ready, [client.run("/bin/sh", "-c", "echo out; echo err >&2; exit 3")])
    assert (await client.state(ready)).executor == "agent"
    assert run.stdout() == b"out\n" and run.stderr() == b"err\n"
    assert run.finished[0].return_code == 3 and run.finished[0].message == "exit code 3"
    started = time.monotonic()
    run = await client.run_batch(ready, [client.sh("sleep 30 & echo bg"), client.run("/bin/true")])
    assert run.succeeded and time.monotonic() - started < 5, "a background child delayed the next command"


async def test_a_chatty_background_child_is_drained_after_its_command_ended(client: ContractClient, ready: str) -> None:
    """Its output after the end is dropped, but read: it never blocks on a full pipe (a service
    started with `&` and logging to stdout keeps running)."""
    run = await client.run_batch(ready, [client.sh("(sleep 0.5; head -c 20000000 /dev/zero; touch /golem/work/done) &")])
    assert run.succeeded and run.stdout() == b""
    waited = await client.run_batch(ready, [client.sh(
        "for i in $(seq 100); do [ -e /golem/work/done ] && exit 0; sleep 0.1; done; exit 1"
    )])
    assert waited.succeeded, "the background child blocked writing to its inherited stdout"


async def test_an_image_without_python_falls_back_to_docker_exec(client: ContractClient, engine: docker.DockerClient) -> None:
    tag = f"exeunit-test-nopython:{uuid.uuid4().hex[:8]}"
    dockerfile = f"FROM {BASE_IMAGE}\nRUN rm -f /usr/bin/python3*\n".encode()
    engine.images.build(fileobj=io.BytesIO(dockerfile), tag=tag, rm=True)
    try:
        activity_id = await client.ready_activity(tag)
        run = await client.run_batch(activity_id, [client.run("/bin/echo", "hi")])
        assert run.succeeded and run.stdout() == b"hi\n"
        assert (await client.state(activity_id)).executor == "docker-exec"
        await client.destroy(activity_id)
    finally:
        engine.images.remove(tag, force=True)


async def impostor_takes_over(client: ContractClient, activity_id: str, mode: str) -> None:
    upload = IMPOSTOR.encode()
    await client.upload_bytes(activity_id, "/golem/work/impostor.py", upload)
    run = await client.run_batch(activity_id, [client.sh(
        f"rm -f /golem/work/impostor.ready; python3 /golem/work/impostor.py {mode} >/dev/null 2>&1 & "
        "for i in $(seq 100); do [ -e /golem/work/impostor.ready ] && break; sleep 0.1; done; sleep 0.2"
    )])
    assert run.succeeded, run.finished


async def test_a_lying_agent_fails_only_its_own_command(client: ContractClient, ready: str) -> None:
    bystander = await client.ready_activity(BASE_IMAGE)
    cases = {
        "huge": "the command's agent failed: the agent sent a frame of 1073741824 bytes",
        "badcode": "the command's agent failed: it reported an exit in 5 bytes instead of 4",
        "unknown": "the command's agent failed: it sent a frame of unknown kind",
    }
    for mode, reason in cases.items():
        await impostor_takes_over(client, ready, mode)
        run = await client.run_batch(ready, [client.run("/bin/true")])
        assert not run.succeeded and run.finished[0].message.startswith(reason), (mode, run.finished)
        # the activity goes on (through docker exec once no agent is connected), as does another one
        assert (await client.run_batch(ready, [client.run("/bin/true")])).succeeded
        assert (await client.run_batch(bystander, [client.run("/bin/echo", "fine")])).stdout() == b"fine\n"


async def test_a_flooding_agent_that_ignores_the_kill_is_cut_at_the_timeout(client: ContractClient, ready: str) -> None:
    await impostor_takes_over(client, ready, "flood")
    batch_id = (await client.exec(ready, [client.run("/bin/true", timeout=1)])).batch_id
    seen = 0
    async for event in client.events(ready, batch_id):
        seen += len(event.stdout.data)
        if event.WhichOneof("kind") == "finished":
            assert event.finished.message == (
                "the command's agent failed: it did not report the exit of a killed command"
            )
    assert seen > 0
    assert (await client.state(ready)).state == act.ACTIVITY_STATE_READY


async def test_a_flood_of_connections_to_the_agent_socket_holds_nothing(client: ContractClient, ready: str) -> None:
    before = psutil.Process().num_fds()  # the daemon runs in this process
    flood = (
        "import socket, time\n"
        "held = []\n"
        "for _ in range(300):\n"
        "    s = socket.socket(socket.AF_UNIX)\n"
        "    try:\n"
        "        s.connect('/.exeunit/channel/agent.sock')\n"
        "    except OSError:\n"
        "        pass\n"
        "    held.append(s)\n"
        "print('opened', len(held), flush=True)\n"
        "time.sleep(3)\n"
    )
    await client.upload_bytes(ready, "/golem/work/flood.py", flood.encode())
    batch_id = (await client.exec(ready, [client.run("/usr/bin/python3", "/golem/work/flood.py")])).batch_id
    async for event in client.events(ready, batch_id):
        if event.stdout.data.startswith(b"opened"):
            assert psutil.Process().num_fds() < before + 20
    run = await client.run_batch(ready, [client.run("/bin/echo", "still here")])
    assert run.stdout() == b"still here\n" and (await client.state(ready)).executor == "agent"


async def test_a_killed_agent_hands_commands_to_docker_exec_without_failing_one(client: ContractClient, ready: str) -> None:
    kill_agent = (
        "for p in /proc/[0-9]*; do n=${p#/proc/}; [ $n != $$ ] && "
        "tr '\\0' ' ' < $p/cmdline 2>/dev/null | grep -q '^python3 -I -S /.exeunit/agent.py' && kill $n; done; sleep 0.2"
    )
    run = await client.run_batch(ready, [client.sh(kill_agent)])
    assert run.finished[0].message.startswith("the command's agent failed") or run.succeeded
    for _ in range(3):
        run = await client.run_batch(ready, [client.run("/bin/echo", "on")])
        assert run.succeeded and run.stdout() == b"on\n"
    assert (await client.state(ready)).executor == "docker-exec"
