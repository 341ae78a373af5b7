"""Tunnel: a TCP connection from the requestor to a port of an activity that has no network."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import urllib.error
import urllib.request

import grpc
import pytest

from exeunit.v1 import activity_pb2 as act
from requestor.contrib.service.http_proxy import HttpProxyService, LocalHttpProxy
from requestor.contrib.service.socket_proxy import SocketProxy, SocketProxyService
from requestor.errors import ProviderCallError
from requestor.client import ProviderClient
from requestor.services import ServiceState as S
from tests.client import ContractClient
from tests.conftest import BASE_IMAGE, Daemons
from tests.test_requestor_services import Recorder, base_payload, golem_for, start_provider

# Reads everything until the requestor half-closes, then answers with its sha256 and its length
# (so the answer travels after the requestor's direction closed), then closes.
DIGEST_SERVER = r'''
import hashlib, socket
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("127.0.0.1", 9000))
server.listen()
while True:
    conn, _ = server.accept()
    digest, size = hashlib.sha256(), 0
    while data := conn.recv(1 << 20):
        digest.update(data)
        size += len(data)
    conn.sendall(f"{digest.hexdigest()} {size}".encode())
    conn.close()
'''


async def start_in_background(client: ContractClient, activity_id: str, command: str, port: int) -> None:
    """Starts a server in the activity and waits until its port accepts connections."""
    run = await client.run_batch(activity_id, [client.sh(f"({command}) >/dev/null 2>&1 & {wait_for_port(port)}")])
    assert run.succeeded, run.finished


async def tunnel_exchange(client: ContractClient, activity_id: str, port: int, payload: bytes) -> bytes:
    """Opens a tunnel, sends `payload` in 1 MiB pieces, half-closes, returns all that comes back."""

    async def requests():
        yield act.TunnelRequest(open=act.TunnelOpen(activity_id=activity_id, port=port))
        for start in range(0, len(payload), 1 << 20):
            yield act.TunnelRequest(data=payload[start:start + (1 << 20)])
        yield act.TunnelRequest(close=act.TunnelClose())

    received, kinds = bytearray(), []
    async for response in client.activity.Tunnel(requests(), metadata=client.metadata):
        kinds.append(response.WhichOneof("part"))
        received += response.data
    assert kinds[0] == "opened" and kinds[-1] == "closed"
    return bytes(received)


async def test_bytes_cross_both_ways_whole_and_in_order_with_half_close(client: ContractClient, ready: str) -> None:
    await client.upload_bytes(ready, "/golem/work/digest.py", DIGEST_SERVER.encode())
    await start_in_background(client, ready, "python3 /golem/work/digest.py", 9000)
    payload = os.urandom(20 << 20)
    answer = await tunnel_exchange(client, ready, 9000, payload)
    assert answer == f"{hashlib.sha256(payload).hexdigest()} {len(payload)}".encode()
    # many at once
    small = [os.urandom(100_000 + n) for n in range(8)]
    answers = await asyncio.gather(*(tunnel_exchange(client, ready, 9000, p) for p in small))
    assert answers == [f"{hashlib.sha256(p).hexdigest()} {len(p)}".encode() for p in small]


# Sends back every byte it gets, as it gets them; half-closes when the requestor does.
ECHO_BYTES_SERVER = r'''
import socket, threading
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("127.0.0.1", 9001))
server.listen()
def echo(conn):
    while data := conn.recv(1 << 20):
        conn.sendall(data)
    conn.shutdown(socket.SHUT_WR)
while True:
    threading.Thread(target=echo, args=(server.accept()[0],)).start()
'''


async def test_100_mb_each_way_at_once_with_other_tunnels_alongside(client: ContractClient, ready: str) -> None:
    await client.upload_bytes(ready, "/golem/work/echo.py", ECHO_BYTES_SERVER.encode())
    await start_in_background(client, ready, "python3 /golem/work/echo.py", 9001)
    big = os.urandom(100 * 1000 * 1000)
    others = [os.urandom(3_000_000 + n) for n in range(6)]
    echoed = await asyncio.gather(*(tunnel_exchange(client, ready, 9001, p) for p in (big, *others)))
    assert [hashlib.sha256(e).digest() for e in echoed] == [hashlib.sha256(p).digest() for p in (big, *others)]


async def refusal(client: ContractClient, activity_id: str, port: int) -> grpc.aio.AioRpcError:
    """Opens a tunnel and sends nothing more until the answer (a client still writing when the
    server ends the call may see another status than the server's)."""
    answered = asyncio.Event()

    async def requests():
        yield act.TunnelRequest(open=act.TunnelOpen(activity_id=activity_id, port=port))
        await answered.wait()

    try:
        async for response in client.activity.Tunnel(requests(), metadata=client.metadata):
            raise AssertionError(f"the tunnel opened: {response}")
    except grpc.aio.AioRpcError as error:
        return error
    finally:
        answered.set()
    raise AssertionError("the tunnel ended without a status")


async def test_a_tunnel_is_refused_clearly(client: ContractClient, ready: str) -> None:
    err = await refusal(client, ready, 9999)
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION and "nothing listens on port 9999" in err.details()
    assert (await refusal(client, ready, 70000)).code() == grpc.StatusCode.INVALID_ARGUMENT
    async with ContractClient(client.address, "someone-else") as stranger:
        assert (await refusal(stranger, ready, 9000)).code() == grpc.StatusCode.PERMISSION_DENIED


async def test_an_http_server_in_the_activity_is_reached_through_a_local_port(client: ContractClient, ready: str) -> None:
    """What the requestor's proxies build on: a local listener, one tunnel per connection."""
    await start_in_background(
        client, ready, "cd /golem/work && echo hello > index.html && python3 -m http.server 8000 --bind 127.0.0.1", 8000
    )
    provider = ProviderClient(client.address, client.identity)

    async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await provider.tunnel(ready, 8000, reader, writer)
        finally:
            writer.close()

    local = await asyncio.start_server(relay, "127.0.0.1", 0)
    port = local.sockets[0].getsockname()[1]
    try:
        page = await asyncio.to_thread(lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/index.html").read())
        assert page == b"hello\n"
        with pytest.raises(ProviderCallError, match="nothing listens on port 8001"):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)  # a live local pair to relay
            await provider.tunnel(ready, 8001, reader, writer)
    finally:
        local.close()
        await provider.close()


async def test_destroying_the_activity_cuts_its_tunnels(client: ContractClient, ready: str) -> None:
    await client.upload_bytes(ready, "/golem/work/digest.py", DIGEST_SERVER.encode())
    await start_in_background(client, ready, "python3 /golem/work/digest.py", 9000)
    hold = asyncio.Event()

    async def requests():
        yield act.TunnelRequest(open=act.TunnelOpen(activity_id=ready, port=9000))
        yield act.TunnelRequest(data=b"never finished")
        await hold.wait()  # the requestor never closes its side

    stream = client.activity.Tunnel(requests(), metadata=client.metadata)
    assert (await anext(aiter(stream))).WhichOneof("part") == "opened"
    await client.destroy(ready)
    ended = []
    with pytest.raises(grpc.aio.AioRpcError):  # noqa: PT012 - the rest of the stream, then its status
        async for response in stream:
            ended.append(response.WhichOneof("part"))
        raise AssertionError("the tunnel ended without a status")
    hold.set()


def wait_for_port(port: int) -> str:
    """Shell that waits (10 s at most) until something in the container accepts on `port`."""
    probe = f"import socket; socket.create_connection(('127.0.0.1', {port}), 1)"
    return f"for i in $(seq 100); do python3 -c \"{probe}\" 2>/dev/null && exit 0; sleep 0.1; done; exit 1"


def http_server_script(ctx, port: int, page: str):
    """A script starting an HTTP server on `port` whose index page is what `page` prints."""
    script = ctx.new_script()
    script.run("/bin/sh", "-c", f"cd /golem/work && {page} > index.html && "
               f"(python3 -m http.server {port} --bind 127.0.0.1 >/dev/null 2>&1 &) && {wait_for_port(port)}")
    return script


class WebServer(SocketProxyService):
    """An HTTP server on the instance's port 8000 (the instance has no network)."""

    get_payload = staticmethod(base_payload)
    remote_ports = [8000]

    async def start(self):
        async for script in super().start():
            yield script
        yield http_server_script(self._ctx, 8000, "echo served")

    async def run(self):
        await asyncio.Future()  # serves until stopped
        yield


async def test_socket_proxy_reaches_each_instances_port(daemons: Daemons) -> None:
    server = await start_provider(daemons)
    recorder = Recorder()
    async with golem_for(server, recorder=recorder) as golem:
        cluster = await golem.run_service(WebServer, num_instances=2)
        await recorder.until(lambda: all(i.state is S.running for i in cluster.instances))
        proxy = SocketProxy()
        await proxy.run(cluster)
        try:
            for instance in cluster.instances:
                port = proxy.get_server(instance, 8000).local_port
                page = await asyncio.to_thread(lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/").read())
                assert page == b"served\n"
        finally:
            await proxy.stop()
        cluster.stop()
        await recorder.until(lambda: all(i.state is S.terminated for i in cluster.instances))


# A line protocol: each line is answered at once with a line of its own; "bye" ends the session.
LINE_SERVER = r'''
import socket, threading
def session(conn):
    lines = conn.makefile("rwb", buffering=0)
    for count, line in enumerate(lines, 1):
        word = line.strip().decode()
        lines.write(f"{count} {word.upper()}\n".encode())
        if word == "bye":
            break
    conn.close()
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("0.0.0.0", 7100))
server.listen()
while True:
    threading.Thread(target=session, args=(server.accept()[0],)).start()
'''


class LineServer(SocketProxyService):
    get_payload = staticmethod(base_payload)
    remote_ports = [7100]

    async def start(self):
        async for script in super().start():
            yield script
        script = self._ctx.new_script()
        script.upload_bytes(LINE_SERVER.encode(), "/golem/work/lines.py")
        script.run("/bin/sh", "-c", f"(python3 /golem/work/lines.py >/dev/null 2>&1 &) && {wait_for_port(7100)}")
        yield script


async def test_socket_proxy_carries_a_line_protocol_turn_by_turn(daemons: Daemons) -> None:
    server = await start_provider(daemons)
    recorder = Recorder()
    async with golem_for(server, recorder=recorder) as golem:
        cluster = await golem.run_service(LineServer)
        await recorder.until(lambda: all(i.state is S.running for i in cluster.instances))
        proxy = SocketProxy(ports=[0])
        await proxy.run(cluster)
        try:
            port = proxy.get_server(cluster.instances[0], 7100).local_port
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            answers = []
            for word in ("hello", "golem", "bye"):  # each answer arrives before the next line is sent
                writer.write(word.encode() + b"\n")
                await writer.drain()
                answers.append((await asyncio.wait_for(reader.readline(), 10)).decode())
            assert answers == ["1 HELLO\n", "2 GOLEM\n", "3 BYE\n"]
            assert await asyncio.wait_for(reader.read(), 10) == b""  # the server closed: so does the local end
            writer.close()
        finally:
            await proxy.stop()
        await cluster.terminate()


class NamedWebServer(HttpProxyService):
    """Answers with its container's host name on port 8080."""

    get_payload = staticmethod(base_payload)

    def __init__(self) -> None:
        super().__init__(remote_port=8080)

    async def start(self):
        async for script in super().start():
            yield script
        yield http_server_script(self._ctx, 8080, "hostname")

    async def run(self):
        await asyncio.Future()
        yield


async def test_local_http_proxy_spreads_requests_over_running_instances(daemons: Daemons) -> None:
    server = await start_provider(daemons)
    recorder = Recorder()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    async with golem_for(server, recorder=recorder) as golem:
        cluster = await golem.run_service(NamedWebServer, num_instances=2)
        await recorder.until(lambda: all(i.state is S.running for i in cluster.instances))
        proxy = LocalHttpProxy(cluster, port)
        await proxy.run()
        try:
            def get() -> bytes:
                return urllib.request.urlopen(f"http://127.0.0.1:{port}/").read()

            answers = [await asyncio.to_thread(get) for _ in range(4)]
            assert len(set(answers)) == 2 and answers[0] == answers[2] and answers[1] == answers[3]
            cluster.stop()
            await recorder.until(lambda: all(i.state is S.terminated for i in cluster.instances))
            with pytest.raises(urllib.error.HTTPError) as err:
                await asyncio.to_thread(get)
            assert err.value.code == 503
        finally:
            await proxy.stop()


async def test_a_namespace_is_entered_only_while_the_container_runs_as_the_same_process(engine) -> None:
    """A container its requestor ended may leave its pid to a host process between the daemon's
    look at the pid and its opening of /proc/PID/ns/net: the daemon looks again after opening."""
    from exeunit import errors
    from exeunit.runtime.docker.runtime import DockerRuntime

    container = engine.containers.run(BASE_IMAGE, ["sleep", "60"], detach=True, network_mode="none",
                                      labels={"io.exeunit.test": "1"})
    try:
        runtime = DockerRuntime()
        async with runtime.network_namespace(container.id):  # running: fine
            pass
        real_pid = await runtime.container_pid(container.id)

        class PidReusedMeanwhile(DockerRuntime):
            """Sees the container's pid first, then (it died, the pid was reused) another one."""
            answers = iter([real_pid, real_pid + 1])

            async def container_pid(self, container_id: str) -> int:
                return next(self.answers)

        with pytest.raises(errors.FailedPrecondition, match="not running"):
            async with PidReusedMeanwhile().network_namespace(container.id):
                pass
        container.kill()
        container.wait()
        with pytest.raises(errors.FailedPrecondition, match="not running"):
            async with runtime.network_namespace(container.id):
                pass
    finally:
        container.remove(force=True, v=True)
