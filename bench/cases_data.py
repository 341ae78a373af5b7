"""Bench cases about bytes: a command's output, uploads and downloads, a tunnel to a port.

The same bytes go the same way on both sides and the clock stops at the same point: a command's
answer (output), the transfer's end with the file in place (upload, download), the last echoed
byte read back (tunnel). What differs is said in each case: ours checks transfers end to end
(BLAKE3 or SHA-256), which the engine's archive calls do not.
"""

from __future__ import annotations

import asyncio
import os
import socket
import tarfile
import threading
import time
from pathlib import Path

import docker

from bench.common import (MIB, Daemon, OutputRate, Row, States, alternate, raw_container, row, running_worker,
                          stopwatch)
from requestor import Golem, events
from requestor.contrib.service.socket_proxy import SocketProxy


async def case_output(golem: Golem, client: docker.DockerClient, states: States, size: int, rounds: int) -> Row:
    """`head -c size /dev/zero` streamed to the requestor and counted, until the command's result,
    against `exec_create` + `exec_start(stream=True)` counted, until `exec_inspect` has its exit
    code (the raw answer: before issue 26 the raw side stopped at the stream's end)."""
    worker = await running_worker(golem, states)
    container = raw_container(client)
    rate = OutputRate(size)
    golem.add_event_consumer(rate.count, (events.CommandStdOut,))

    async def ours() -> float:
        return await rate.of(worker)

    def raw_flood() -> float:
        elapsed = stopwatch()
        exec_id = client.api.exec_create(container.id, ["head", "-c", str(size), "/dev/zero"])["Id"]
        got = sum(len(chunk) for chunk in client.api.exec_start(exec_id, stream=True))
        code = client.api.exec_inspect(exec_id)["ExitCode"]
        took = elapsed()
        if got != size or code != 0:
            raise SystemExit(f"raw output lost: {got} of {size}, exit code {code}")
        return size / took / MIB

    async def raw() -> float:
        return await asyncio.to_thread(raw_flood)

    await ours()  # warm up both paths
    await raw()
    a, b = await alternate("output", rounds, ours, raw)
    container.remove(force=True, v=True)
    await worker.cluster.terminate()
    return row("output", f"output stream: {size // 1000 // 1000} MB of stdout consumed by the requestor", "MiB/s",
               a, b, "ratio >= 1.0", lambda r: r >= 1.0)


class TransferPair:
    """A file of `size` random bytes moved to and from /golem/work by a worker (ours: upload and
    download with end-to-end digests) and by the archive calls on a raw container (`put_archive`
    of a tar made beforehand, the file behind a 512-byte header read from disk as ours reads the
    file; `get_archive` read to a local file). Each call returns MiB/s."""

    def __init__(self, worker, client: docker.DockerClient, size: int, scratch: Path) -> None:
        self.worker, self.client, self.size = worker, client, size
        self.container = raw_container(client)
        self.source, self.target, self.tar_path = scratch / "payload.bin", scratch / "back.bin", scratch / "payload.tar"
        self.raw_back = scratch / "raw-back.tar"
        with open(self.source, "wb") as out:
            block = os.urandom(MIB)
            for _ in range(size // MIB):
                out.write(block)
        with tarfile.open(self.tar_path, "w") as tar:
            tar.add(self.source, arcname="payload.bin")

    def settle(self) -> None:
        """Untimed, before either side's round: the last round's file is gone and every dirty page
        is on disk, so that no round pays for the writeback of the one before it. Single pairs still
        vary, by up to a factor of two when a round's writer is handed slow pages (its system time
        in bench/transfer_cpu.py), which is why a full run takes 12 rounds."""
        for made in (self.target, self.raw_back):
            made.unlink(missing_ok=True)
        os.sync()

    async def ours(self, direction: str) -> float:
        await asyncio.to_thread(self.settle)

        def script(ctx):
            made = ctx.new_script()
            if direction == "upload":
                made.upload_file(self.source, "/golem/work/payload.bin")
            else:
                made.download_file("/golem/work/payload.bin", self.target)
            return made

        elapsed = stopwatch()
        await self.worker.submit(script)
        return self.size / elapsed() / MIB

    def _raw(self, direction: str) -> float:
        self.settle()
        elapsed = stopwatch()
        if direction == "upload":
            with open(self.tar_path, "rb") as data:
                if not self.client.api.put_archive(self.container.id, "/golem/work", data):
                    raise SystemExit("put_archive refused the payload")
        else:
            stream, _ = self.client.api.get_archive(self.container.id, "/golem/work/payload.bin", chunk_size=MIB)
            with open(self.raw_back, "wb") as out:
                for chunk in stream:
                    out.write(chunk)
        return self.size / elapsed() / MIB

    async def raw(self, direction: str) -> float:
        return await asyncio.to_thread(self._raw, direction)

    def close(self) -> None:
        self.container.remove(force=True, v=True)


async def case_transfer(golem: Golem, client: docker.DockerClient, states: States, daemon: Daemon, size: int,
                        rounds: int, scratch: Path) -> list[Row]:
    """A file of `size` random bytes uploaded to /golem/work and downloaded back to a local file,
    against `put_archive` / `get_archive` of the same file to and from the raw container's
    /golem/work (the image's declared VOLUME on both sides; before issue 26 the raw side wrote to
    /tmp in the container's root). Ours also checks every byte end to end with a digest (BLAKE3
    where both ends have it, else SHA-256); the archive calls check nothing. The daemon's RSS
    growth is noted."""
    worker = await running_worker(golem, states)
    pair = TransferPair(worker, client, size, scratch)
    growth = {"upload": 0.0, "download": 0.0}

    def ours_in(direction: str):
        async def measure() -> float:
            before = daemon.reset_peak()
            rate = await pair.ours(direction)
            growth[direction] = max(growth[direction], (daemon.peak - before) / MIB)
            return rate
        return measure

    def raw_in(direction: str):
        return lambda: pair.raw(direction)

    await ours_in("upload")()  # warm up both paths
    await pair.raw("upload")
    measured = {d: await alternate(d, rounds, ours_in(d), raw_in(d)) for d in ("upload", "download")}
    pair.close()
    await worker.cluster.terminate()
    rows = []
    for name, call in (("upload", "put_archive"), ("download", "get_archive")):
        grown = growth[name]
        a, b = measured[name]
        rows.append(row(name, f"{name} {size // MIB} MiB with checksums vs `{call}`", "MiB/s", a, b,
                        "ratio >= 1.0; daemon +<= 64 MiB", lambda r, grown=grown: r >= 1.0 and grown <= 64,
                        {"daemon_rss_growth_mib": round(grown, 1)}))
    return rows


# Sends back every byte it gets; half-closes when the client does. The same program on both sides.
ECHO_SERVER = """
import socket, threading
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("0.0.0.0", 9001))
server.listen()
def echo(conn):
    while data := conn.recv(1 << 20):
        conn.sendall(data)
    conn.shutdown(socket.SHUT_WR)
while True:
    threading.Thread(target=echo, args=(server.accept()[0],)).start()
"""


def echo_through(host: str, port: int, payload: bytes) -> float:
    """Sends `payload` to an echo server while reading it back; MiB/s of payload. The clock starts
    once connected: for ours that is to the local proxy, which opens its tunnel to the container
    after, within the clock (a few ms against the payload's hundreds); the raw side's handshake
    with the container itself is done before the clock."""
    deadline = time.monotonic() + 10
    while True:
        try:
            conn = socket.create_connection((host, port), timeout=30)
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    elapsed = stopwatch()

    def send() -> None:
        conn.sendall(payload)
        conn.shutdown(socket.SHUT_WR)

    sender = threading.Thread(target=send)
    sender.start()
    got = 0
    while chunk := conn.recv(1 << 20):
        got += len(chunk)
    sender.join()
    took = elapsed()
    conn.close()
    if got != len(payload):
        raise SystemExit(f"echo lost bytes: {got} of {len(payload)} came back")
    return len(payload) / took / MIB


async def case_tunnel(golem: Golem, client: docker.DockerClient, states: States, size: int, rounds: int) -> Row:
    """A port of a service reached through SocketProxy (local port -> Tunnel -> the container's
    namespace) against a direct socket to the container's address on a Docker bridge network
    (how one reaches a raw container's port without publishing it): the same echo program in the
    same image, the same payload sent and read back whole on both sides."""
    worker = await running_worker(golem, states)

    def serve(ctx):
        script = ctx.new_script()
        script.run("/bin/sh", "-c", f"cat > /tmp/echo.py <<'EOF'\n{ECHO_SERVER}\nEOF\n(python3 /tmp/echo.py >/dev/null 2>&1 &)")
        return script

    await worker.submit(serve)
    proxy = SocketProxy()
    server = await proxy.run_server(worker, 9001)
    network = client.networks.create(f"exeunit-bench-{os.getpid()}", driver="bridge", internal=True,
                                      labels={"io.exeunit.bench": "1"})
    container = client.containers.run("exeunit-base:latest", ["python3", "-c", ECHO_SERVER], detach=True,
                                      network=network.name, labels={"io.exeunit.bench": "1"})
    container.reload()
    address = container.attrs["NetworkSettings"]["Networks"][network.name]["IPAddress"]
    payload = os.urandom(size)
    try:
        async def ours() -> float:
            return await asyncio.to_thread(echo_through, "127.0.0.1", server.local_port, payload)

        async def raw() -> float:
            return await asyncio.to_thread(echo_through, address, 9001, payload)

        await ours()
        await raw()
        a, b = await alternate("tunnel", rounds, ours, raw)
    finally:
        await proxy.stop()
        container.remove(force=True, v=True)
        network.remove()
        await worker.cluster.terminate()
    return row("tunnel", f"tunnel: {size // MIB} MiB echoed through `SocketProxy` vs a socket to the container's "
               "address on a Docker bridge", "MiB/s", a, b, "ratio >= 0.2", lambda r: r >= 0.2)
