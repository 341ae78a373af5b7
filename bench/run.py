#!/usr/bin/env python3
"""How close to raw Docker the whole stack runs, as ratios measured in one run.

    python bench/run.py            # every case, full sizes (a few minutes)
    python bench/run.py --quick    # smaller sizes, under two minutes

Each case runs our stack (requestor -> `exeunit serve` in its own process -> container) and the
raw docker SDK doing the same work, alternating A, B, A, B, and compares medians. The daemon's
resident memory is sampled with psutil throughout. Prints one table and writes it as JSON to
--output (a temporary file unless given; `--output bench/latest.json` updates the record kept in
the repository, which a README table quotes).
Never asserts: the machine is noisy, read the ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import tracemalloc
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import docker
import psutil

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench import span  # noqa: E402
from bench.attack import attack  # noqa: E402
from exeunit.api.auth import ProofCheck  # noqa: E402
from exeunit.api.nonces import NonceBounds, NonceLedger  # noqa: E402
from exeunit.v1 import activity_pb2 as act  # noqa: E402
from exeunit.v1 import identity as wire  # noqa: E402
from exeunit.testing.hosts import SimulatedLan  # noqa: E402
from exeunit.testing.providers import ProviderDaemon  # noqa: E402
from requestor import Golem, events  # noqa: E402
from requestor.contrib.service.socket_proxy import SocketProxy  # noqa: E402
from requestor.client import ProviderClient  # noqa: E402
from requestor.client.identity import RequestorIdentity  # noqa: E402
from requestor.model import DemandSpec, DeploySpec, Refusal, RunSpec, StartSpec  # noqa: E402
from requestor.payload import vm  # noqa: E402
from requestor.services import Service, ServiceState  # noqa: E402

IMAGE = "exeunit-base:latest"
MIB = 1 << 20


@dataclass
class Row:
    case: str
    ours: float
    raw: float
    unit: str
    ratio: float
    target: str
    met: bool
    notes: dict[str, float | str] = field(default_factory=dict)


# The daemon under test, in its own process


class Daemon:
    """`exeunit serve` on a loopback port, with its RSS sampled every 20 ms."""

    def __init__(self) -> None:
        self.home = tempfile.mkdtemp(prefix="exeunit-bench-home-")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "exeunit", "serve", "--listen", "127.0.0.1:0", "--name", "bench-provider",
             "--cpu-overcommit", "40", "--state-dir", self.home, "--forget-ended-after", "10",
             "--price-cpu-sec", "0.000001", "--price-duration-sec", "0.000001"],
            stderr=subprocess.PIPE, text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        self.port = 0
        assert self.process.stderr is not None
        for line in self.process.stderr:
            if match := re.search(r"event=listening .* port=(\d+)", line):
                self.port = int(match.group(1))
                break
        if not self.port:
            raise SystemExit("the daemon did not start; run scripts/setup.sh first")
        threading.Thread(target=lambda: [None for _ in self.process.stderr], daemon=True).start()  # type: ignore[union-attr]
        self._ps = psutil.Process(self.process.pid)
        self.peak = self.rss()
        self._sampling = True
        threading.Thread(target=self._sample, daemon=True).start()

    def rss(self) -> int:
        return int(self._ps.memory_info().rss)

    def _sample(self) -> None:
        while self._sampling:
            try:
                self.peak = max(self.peak, self.rss())
            except psutil.Error:
                return
            time.sleep(0.02)

    def reset_peak(self) -> int:
        self.peak = self.rss()
        return self.peak

    def stop(self) -> None:
        self._sampling = False
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=120)
        shutil.rmtree(self.home, ignore_errors=True)


# Timing helpers


async def alternate(rounds: int, ours: Callable[[], Awaitable[float]], raw: Callable[[], Awaitable[float]]) -> tuple[float, float]:
    """Medians of `rounds` alternating measurements (each callable returns seconds or a rate)."""
    a, b = [], []
    for _ in range(rounds):
        a.append(await ours())
        b.append(await raw())
    return statistics.median(a), statistics.median(b)


def stopwatch() -> Callable[[], float]:
    start = time.perf_counter()
    return lambda: time.perf_counter() - start


class States:
    """Event consumer that wakes waiters on every state change."""

    def __init__(self) -> None:
        self.changed = asyncio.Event()

    def __call__(self, event: events.Event) -> None:
        if isinstance(event, events.ServiceStateChanged):
            self.changed.set()

    async def until(self, predicate: Callable[[], bool]) -> None:
        while not predicate():
            self.changed.clear()
            await self.changed.wait()


async def base_payload() -> vm.VmPackage:
    return await vm.repo(image_tag=IMAGE, min_mem_gib=0.25, min_storage_gib=0.5)


class Worker(Service):
    """Runs whatever work the benchmark hands it, one job at a time, in its `run` handler."""

    get_payload = staticmethod(base_payload)

    def __init__(self) -> None:
        super().__init__()
        self.jobs: asyncio.Queue[tuple[Callable[..., object], asyncio.Future[object]]] = asyncio.Queue()

    async def run(self):
        while True:
            make, done = await self.jobs.get()
            try:
                result = yield make(self._ctx)
                done.set_result(result)
            except Exception as exc:  # noqa: BLE001 - handed to the benchmark
                done.set_exception(exc)

    async def submit(self, make: Callable[..., object]) -> None:
        """Runs the script `make(ctx)` builds; returns when its results are in."""
        done: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        await self.jobs.put((make, done))
        await done


def raw_container(client: docker.DockerClient):
    return client.containers.run(IMAGE, entrypoint=["/bin/sh"], command=[], stdin_open=True, detach=True,
                                 init=True, network_mode="none", labels={"io.exeunit.bench": "1"})


# Cases


async def case_memory(daemon: Daemon, count: int, concurrency: int = 8) -> Row:
    """`count` activities, each running a batch with 1 MiB of output and ending: the daemon's
    memory must come back down (output and event logs go with their activities)."""
    client = ProviderClient(f"127.0.0.1:{daemon.port}", RequestorIdentity.ephemeral())
    demand = DemandSpec(image_hash="", image_tag=IMAGE, image_url="", min_memory_bytes=256 << 20,
                        min_storage_bytes=256 << 20, min_cpu_threads=1, capabilities=(), subnet_tag="public",
                        expiration=datetime.now(timezone.utc) + timedelta(hours=1))
    flood = [DeploySpec(), StartSpec(), RunSpec("/usr/bin/head", ("-c", str(MIB), "/dev/zero"))]
    before = daemon.reset_peak()
    lanes = asyncio.Semaphore(concurrency)
    elapsed = stopwatch()

    async def one(n: int) -> None:
        async with lanes:
            agreement = await client.propose(demand)
            assert not isinstance(agreement, Refusal), agreement
            activity_id = await client.create_activity(agreement.agreement_id)
            got = 0
            async for event in client.run_batch(activity_id, flood, f"memory-{n}"):
                got += len(event.data)
            assert got == MIB, got
            await client.destroy(activity_id)
            await client.terminate_agreement(agreement.agreement_id, "Done")

    try:
        await asyncio.gather(*(one(n) for n in range(count)))
        took = elapsed()
        await asyncio.sleep(25)  # ended records are forgotten after 10 s, batches after the replay grace
        after = daemon.rss()
    finally:
        await client.close()
    growth = (after - before) / MIB
    return Row(f"memory: {count} activities x 1 MiB output", growth, (daemon.peak - before) / MIB, "MiB", 0.0,
               "RSS after <= start + 20 MiB", growth <= 20,
               {"rss_start_mib": round(before / MIB, 1), "seconds": round(took, 1)})


NO_PYTHON_IMAGE = "exeunit-bench-nopython:latest"  # the base image without python3: no agent


def no_python_image(client: docker.DockerClient) -> str:
    """An offered image whose activities fall back to `docker exec` (built once, kept)."""
    try:
        client.images.get(NO_PYTHON_IMAGE)
    except docker.errors.ImageNotFound:
        dockerfile = f"FROM {IMAGE}\nRUN rm -f /usr/bin/python3*\n".encode()
        client.images.build(fileobj=io.BytesIO(dockerfile), tag=NO_PYTHON_IMAGE, rm=True)
    return NO_PYTHON_IMAGE


def worker_on(image: str) -> type[Worker]:
    async def payload() -> vm.VmPackage:
        return await vm.repo(image_tag=image, min_mem_gib=0.25, min_storage_gib=0.5)

    return type(f"Worker_{image}", (Worker,), {"get_payload": staticmethod(payload)})


def command_script(*argv: str) -> Callable[..., object]:
    def make(ctx):
        script = ctx.new_script()
        script.run(*argv)
        return script

    return make


async def true_round_trip(worker: Worker) -> float:
    """Seconds for `run /bin/true` on `worker`, as the requestor sees it."""
    elapsed = stopwatch()
    await worker.submit(command_script("/bin/true"))
    return elapsed()


def raw_true(container) -> Callable[[], Awaitable[float]]:
    """The raw counterpart: seconds for `exec_run(["true"])` on `container`."""
    async def measure() -> float:
        elapsed = stopwatch()
        await asyncio.to_thread(container.exec_run, ["true"])
        return elapsed()

    return measure


class OutputRate:
    """MiB/s of `size` bytes of stdout streamed to the requestor by a worker, checked whole; the
    golems it measures through count the bytes (`add_event_consumer(rate.count, ...)`)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.received = 0

    def count(self, event: events.Event) -> None:
        if isinstance(event, events.CommandStdOut):
            self.received += len(event.output)

    def flood(self, ctx):
        script = ctx.new_script()
        script.run("/usr/bin/head", "-c", str(self.size), "/dev/zero", output_limit=0)  # streamed, not kept: as raw
        return script

    async def of(self, worker: Worker) -> float:
        self.received = 0
        elapsed = stopwatch()
        await worker.submit(self.flood)
        took = elapsed()
        if self.received != self.size:
            raise SystemExit(f"output lost: {self.received} of {self.size} bytes arrived")
        return self.size / took / MIB


async def case_exec(golem: Golem, client: docker.DockerClient, states: States, rounds: int,
                    executor: str) -> Row:
    """`run /bin/true` through the agent (the base image) or docker exec (an image without python3)."""
    image = IMAGE if executor == "agent" else no_python_image(client)
    cluster = await golem.run_service(worker_on(image))
    [worker] = cluster.instances
    await states.until(lambda: worker.state is ServiceState.running)
    container = raw_container(client)

    async def ours() -> float:
        return await true_round_trip(worker)

    raw = raw_true(container)
    for _ in range(3):  # warm up both paths
        await ours()
        await raw()
    a, b = await alternate(rounds, ours, raw)
    container.remove(force=True, v=True)
    await cluster.terminate()
    target, limit = ("ratio <= 0.1", 0.1) if executor == "agent" else ("ratio <= 1.15", 1.15)
    extra: dict[str, float | str] = {}
    if executor == "agent":
        costs = proof_costs()
        per_call = costs["proof_sign_us"] + costs["proof_verify_us"]
        extra = {"spawn_floor_ms": round(spawn_floor() * 1000, 2), **costs,
                 "proof_share_of_round_trip": round(per_call / (a * 1e6), 4)}  # one call (ExecStream) per round trip
    return Row(f"exec round trip ({executor})", a * 1000, b * 1000, "ms", a / b, target, a / b <= limit, extra)


def proof_costs(rounds: int = 2000, remembered: int = 100_000) -> dict[str, float | str]:
    """What a call's proof costs, in microseconds of one core, for the round trip's request: the
    requestor serializes it again and signs (its SHA-256 included: proof_sign_us); the daemon
    hashes the bytes it received (proof_hash_us), verifies the signature and records the nonce
    (proof_verify_us). And the bytes a remembered nonce holds (nonce_ledger_bytes_each)."""
    me = RequestorIdentity.ephemeral()
    check = ProofCheck("0x" + "ab" * wire.ID_BYTES)
    method = "/exeunit.v1.Activity/ExecStream"
    request = act.ExecRequest(activity_id=os.urandom(16).hex(), batch_id=os.urandom(16).hex(),
                              commands=[act.Command(run=act.RunCommand(entry_point="/bin/true"))])
    elapsed = stopwatch()
    proofs = [me.proof(check.provider_id, check.boot_epoch, method, request.SerializeToString()) for _ in range(rounds)]
    sign = elapsed() / rounds
    body = request.SerializeToString()
    elapsed = stopwatch()
    for _ in range(rounds):
        wire.body_digest(body)
    hashing = elapsed() / rounds
    metadata = [dict(proof) for proof in proofs]
    elapsed = stopwatch()
    for each in metadata:
        check.verify(method, each)
    verify = elapsed() / rounds
    tracemalloc.start()
    ledger = NonceLedger(NonceBounds(remembered, remembered, remembered))
    now = time.time()
    for n in range(remembered):
        ledger.record(f"0x{n % 100:040x}", os.urandom(16).hex(), now + 60, now)  # 100 requestors
    held = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return {"proof_sign_us": round(sign * 1e6, 1), "proof_hash_us": round(hashing * 1e6, 2),
            "proof_verify_us": round(verify * 1e6, 1), "request_bytes": len(body),
            "nonce_ledger_bytes_each": round(held / remembered)}


async def case_attack(daemon: Daemon, seconds: float) -> Row:
    """Eight requestors at their worst for `seconds` (bench/attack.py), and a ninth's `/bin/true`:
    its round trip under attack against the same round trip idle; the daemon's memory throughout."""
    before = daemon.reset_peak()
    idle, busy, count = await attack(f"127.0.0.1:{daemon.port}", seconds)
    growth = (daemon.peak - before) / MIB
    met = busy / idle <= 2 and growth <= 256
    return Row(f"attack: 8 requestors, {seconds:g} s", busy * 1000, idle * 1000, "ms", busy / idle,
               "ratio <= 2 (idle /bin/true as raw); RSS <= start + 256 MiB", met,
               {"daemon_rss_growth_mib": round(growth, 1), "daemon_rss_before_mib": round(before / MIB, 1),
                "victim_round_trips": count})


def spawn_floor(rounds: int = 50) -> float:
    """Median time to start `/bin/true` and reap it, directly on this host: what no executor beats."""
    times = []
    for _ in range(rounds):
        elapsed = stopwatch()
        os.waitpid(os.posix_spawn("/bin/true", ["true"], os.environ), 0)
        times.append(elapsed())
    return statistics.median(times)


async def case_background(golem: Golem, client: docker.DockerClient, states: States) -> Row:
    """`sleep 30 &` and then `true`: how long the second command takes after the first."""
    cluster = await golem.run_service(Worker)
    [worker] = cluster.instances
    await states.until(lambda: worker.state is ServiceState.running)
    container = raw_container(client)

    async def ours() -> float:
        await worker.submit(command_script("/bin/sh", "-c", "sleep 30 &"))
        elapsed = stopwatch()
        await worker.submit(command_script("/bin/true"))
        return elapsed()

    async def raw() -> float:
        await asyncio.to_thread(container.exec_run, ["/bin/sh", "-c", "sleep 30 &"])
        elapsed = stopwatch()
        await asyncio.to_thread(container.exec_run, ["true"])
        return elapsed()

    a, b = await alternate(3, ours, raw)
    container.remove(force=True, v=True)
    await cluster.terminate()
    return Row("next command after `sleep 30 &`", a * 1000, b * 1000, "ms", a / b, "ratio <= 0.1", a / b <= 0.1)


async def case_start(golem: Golem, client: docker.DockerClient, states: States, rounds: int) -> Row:
    async def ours() -> float:
        elapsed = stopwatch()
        cluster = await golem.run_service(Worker)
        [worker] = cluster.instances
        await states.until(lambda: worker.state is ServiceState.running)
        took = elapsed()
        await cluster.terminate()
        return took

    def raw_start() -> float:
        elapsed = stopwatch()
        container = raw_container(client)
        container.exec_run(["true"])
        took = elapsed()
        container.remove(force=True, v=True)
        return took

    async def raw() -> float:
        return await asyncio.to_thread(raw_start)

    a, b = await alternate(rounds, ours, raw)
    return Row("service start", a * 1000, b * 1000, "ms", a / b, "ratio <= 0.52 (before the agent)", a / b <= 0.52)


async def case_scale(golem: Golem, client: docker.DockerClient, states: States, daemon: Daemon, count: int) -> Row:
    before = daemon.reset_peak()
    elapsed = stopwatch()
    cluster = await golem.run_service(Worker, num_instances=count)
    await states.until(lambda: all(i.state is ServiceState.running for i in cluster.instances))
    ours = elapsed()
    live_rss = daemon.rss()
    await cluster.terminate()

    def one() -> object:
        container = raw_container(client)
        container.exec_run(["true"])
        return container

    elapsed = stopwatch()
    with ThreadPoolExecutor(max_workers=count) as pool:
        containers = list(pool.map(lambda _: one(), range(count)))
    raw = elapsed()
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda c: c.remove(force=True, v=True), containers))
    per_activity = (live_rss - before) / count / MIB
    ratio = ours / raw
    return Row(f"scale-out ({count} instances)", ours, raw, "s", ratio, "ratio <= 0.39 (before the agent); <= 2 MiB/activity",
               ratio <= 0.39 and per_activity <= 2.0,
               {"daemon_mib_per_live_activity": round(per_activity, 3), "daemon_rss_before_mib": round(before / MIB, 1)})


async def case_output(golem: Golem, client: docker.DockerClient, states: States, size: int, rounds: int) -> Row:
    cluster = await golem.run_service(Worker)
    [worker] = cluster.instances
    await states.until(lambda: worker.state is ServiceState.running)
    container = raw_container(client)
    rate = OutputRate(size)
    golem.add_event_consumer(rate.count, (events.CommandStdOut,))

    async def ours() -> float:
        return await rate.of(worker)

    def raw_flood() -> float:
        elapsed = stopwatch()
        exec_id = client.api.exec_create(container.id, ["head", "-c", str(size), "/dev/zero"])["Id"]
        got = sum(len(chunk) for chunk in client.api.exec_start(exec_id, stream=True))
        took = elapsed()
        if got != size:
            raise SystemExit(f"raw output lost: {got} of {size}")
        return size / took / MIB

    async def raw() -> float:
        return await asyncio.to_thread(raw_flood)

    await ours()  # warm up both paths
    await raw()
    a, b = await alternate(rounds, ours, raw)
    container.remove(force=True, v=True)
    await cluster.terminate()
    return Row(f"output stream ({size // MIB} MiB)", a, b, "MiB/s", a / b, "ratio >= 1.0", a / b >= 1.0)


async def case_transfer(golem: Golem, client: docker.DockerClient, states: States, daemon: Daemon, size: int,
                        rounds: int, scratch: Path) -> list[Row]:
    cluster = await golem.run_service(Worker)
    [worker] = cluster.instances
    await states.until(lambda: worker.state is ServiceState.running)
    container = raw_container(client)
    source = scratch / "payload.bin"
    with open(source, "wb") as out:
        block = os.urandom(MIB)
        for _ in range(size // MIB):
            out.write(block)
    tar_path = scratch / "payload.tar"
    with tarfile.open(tar_path, "w") as tar:
        tar.add(source, arcname="payload.bin")
    target = scratch / "back.bin"
    growth = {"up": 0.0, "down": 0.0}

    def upload(ctx):
        script = ctx.new_script()
        script.upload_file(source, "/golem/work/payload.bin")
        return script

    def download(ctx):
        script = ctx.new_script()
        script.download_file("/golem/work/payload.bin", target)
        return script

    async def ours_up() -> float:
        before = daemon.reset_peak()
        elapsed = stopwatch()
        await worker.submit(upload)
        rate = size / elapsed() / MIB
        growth["up"] = max(growth["up"], (daemon.peak - before) / MIB)
        return rate

    async def ours_down() -> float:
        before = daemon.reset_peak()
        elapsed = stopwatch()
        await worker.submit(download)
        rate = size / elapsed() / MIB
        growth["down"] = max(growth["down"], (daemon.peak - before) / MIB)
        return rate

    def raw_up_sync() -> float:
        elapsed = stopwatch()
        with open(tar_path, "rb") as data:
            client.api.put_archive(container.id, "/tmp", data)
        return size / elapsed() / MIB

    def raw_down_sync() -> float:
        elapsed = stopwatch()
        stream, _ = client.api.get_archive(container.id, "/tmp/payload.bin", chunk_size=MIB)
        with open(scratch / "raw-back.tar", "wb") as out:
            for chunk in stream:
                out.write(chunk)
        return size / elapsed() / MIB

    async def raw_up() -> float:
        return await asyncio.to_thread(raw_up_sync)

    async def raw_down() -> float:
        return await asyncio.to_thread(raw_down_sync)

    await ours_up()  # warm up both paths
    await raw_up()
    up = await alternate(rounds, ours_up, raw_up)
    down = await alternate(rounds, ours_down, raw_down)
    container.remove(force=True, v=True)
    await cluster.terminate()
    rows = []
    for name, (a, b) in (("upload", up), ("download", down)):
        grown = growth["up" if name == "upload" else "down"]
        ratio = a / b
        rows.append(Row(f"{name} ({size // MIB} MiB)", a, b, "MiB/s", ratio, "ratio >= 1.0; daemon +<= 64 MiB",
                        ratio >= 1.0 and grown <= 64, {"daemon_rss_growth_mib": round(grown, 1)}))
    return rows


# Output


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
    """Sends `payload` to an echo server while reading it back; MiB/s of payload."""
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
    namespace) against a direct socket to the container's address on a Docker bridge network."""
    cluster = await golem.run_service(Worker)
    [worker] = cluster.instances
    await states.until(lambda: worker.state is ServiceState.running)

    def serve(ctx):
        script = ctx.new_script()
        script.run("/bin/sh", "-c", f"cat > /tmp/echo.py <<'EOF'\n{ECHO_SERVER}\nEOF\n(python3 /tmp/echo.py >/dev/null 2>&1 &)")
        return script

    await worker.submit(serve)
    proxy = SocketProxy()
    server = await proxy.run_server(worker, 9001)
    network = client.networks.create(f"exeunit-bench-{os.getpid()}", driver="bridge", internal=True,
                                      labels={"io.exeunit.bench": "1"})
    container = client.containers.run(IMAGE, ["python3", "-c", ECHO_SERVER], detach=True, network=network.name,
                                      labels={"io.exeunit.bench": "1"})
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
        a, b = await alternate(rounds, ours, raw)
    finally:
        await proxy.stop()
        container.remove(force=True, v=True)
        network.remove()
        await cluster.terminate()
    return Row(f"tunnel echo ({size // MIB} MiB)", a, b, "MiB/s", a / b, "ratio >= 0.2", a / b >= 0.2,
               {"direct": "host -> container address on a bridge network"})


async def case_remote(golem: Golem, client: docker.DockerClient, states: States, rounds: int, size: int) -> list[Row]:
    """The same `/bin/true` round trip and output stream to a daemon on a simulated host, over TLS
    with per-call proofs, against the loopback daemon in plaintext (and raw `docker exec`)."""
    with SimulatedLan() as lan:
        lan.attach_here()
        provider = ProviderDaemon(lan.add_host("p1"), "--cpu-overcommit", "40", "--price-cpu-sec", "0.000001",
                                  "--price-duration-sec", "0.000001", "--name", "bench-remote")
        try:
            async with Golem(budget=100.0, subnet_tag="public", providers=[provider.pinned_address],
                             event_consumer=states) as remote:
                far = (await remote.run_service(Worker)).instances[0]
                near = (await golem.run_service(Worker)).instances[0]
                await states.until(lambda: far.state is ServiceState.running and near.state is ServiceState.running)
                container = raw_container(client)

                raw = raw_true(container)
                output = OutputRate(size)
                golem.add_event_consumer(output.count, (events.CommandStdOut,))
                remote.add_event_consumer(output.count, (events.CommandStdOut,))

                for _ in range(3):  # warm up every path
                    await true_round_trip(far), await true_round_trip(near), await raw()
                tls, plain, raw_times = [], [], []
                for _ in range(rounds):
                    tls.append(await true_round_trip(far))
                    plain.append(await true_round_trip(near))
                    raw_times.append(await raw())
                tls_out, plain_out = [], []
                await output.of(far), await output.of(near)
                for _ in range(max(3, rounds // 3)):
                    tls_out.append(await output.of(far))
                    plain_out.append(await output.of(near))
                container.remove(force=True, v=True)
                for cluster in (far.cluster, near.cluster):
                    await cluster.terminate()
        finally:
            provider.stop()
    a, b, c = (statistics.median(x) for x in (tls, plain, raw_times))
    out_tls, out_plain = statistics.median(tls_out), statistics.median(plain_out)
    return [
        Row("exec over TLS, other host", a * 1000, c * 1000, "ms", a / c, "ratio <= 0.1", a / c <= 0.1,
            {"loopback_plaintext_ms": round(b * 1000, 3), "tls_vs_loopback": round(a / b, 2)}),
        Row(f"output over TLS ({size // MIB} MiB)", out_tls, out_plain, "MiB/s", out_tls / out_plain,
            "reported (raw = loopback plaintext)", True),
    ]


async def case_span(states: States, megabytes: int) -> list[Row]:
    """One network on two providers of simulated hosts: a TCP stream and round trips between its
    instances, direct, then relayed (the hosts partitioned), against two on one provider."""
    direct = await span.measure(False, megabytes, states)
    relayed = await span.measure(True, max(megabytes // 8, 16), states)
    return span.rows(direct, relayed, Row)


def print_table(rows: list[Row]) -> None:
    header = f"{'case':<30} {'ours':>12} {'raw docker':>12} {'unit':>6} {'ratio':>7}  {'target':<34} met"
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r.case:<30} {r.ours:>12.2f} {r.raw:>12.2f} {r.unit:>6} {r.ratio:>7.3f}  {r.target:<34} "
              f"{'yes' if r.met else 'NO'}" + (f"  {r.notes}" if r.notes else ""))


CASES = ("exec", "start", "scale", "output", "transfer", "tunnel", "background", "memory", "attack", "remote", "span")


async def main(quick: bool, output: Path, only: tuple[str, ...] = CASES) -> list[Row]:
    client = docker.from_env(max_pool_size=64)  # the scale-out case opens 50 connections at once
    daemon = Daemon()
    states = States()
    rows: list[Row] = []
    sizes = dict(rounds=7 if quick else 25, start_rounds=3 if quick else 9, scale=10 if quick else 50,
                 output=(20 if quick else 100) * 1000 * 1000, transfer=(64 if quick else 256) * MIB,
                 transfer_rounds=2 if quick else 3, tunnel=(32 if quick else 128) * MIB, memory_activities=100 if quick else 1000,
                 attack_seconds=15 if quick else 60, span=128 if quick else 512)
    try:
        async with Golem(budget=100.0, subnet_tag="public", providers=[f"127.0.0.1:{daemon.port}"],
                         event_consumer=states) as golem:
            steps = {
                "exec": lambda: case_exec(golem, client, states, sizes["rounds"], "agent"),
                "exec-docker": lambda: case_exec(golem, client, states, sizes["rounds"], "docker-exec"),
                "background": lambda: case_background(golem, client, states),
                "memory": lambda: case_memory(daemon, sizes["memory_activities"]),
                "start": lambda: case_start(golem, client, states, sizes["start_rounds"]),
                "scale": lambda: case_scale(golem, client, states, daemon, sizes["scale"]),
                "output": lambda: case_output(golem, client, states, sizes["output"], max(3, sizes["rounds"] // 3)),
                "tunnel": lambda: case_tunnel(golem, client, states, sizes["tunnel"], max(3, sizes["rounds"] // 3)),
                "attack": lambda: case_attack(daemon, sizes["attack_seconds"]),
            }
            several = {
                "remote": lambda: case_remote(golem, client, states, sizes["rounds"], sizes["output"]),
                "span": lambda: case_span(states, sizes["span"]),
            }
            for name in [n for case in only for n in ((case, "exec-docker") if case == "exec" else (case,))]:
                print(f"[bench] {name}...", file=sys.stderr, flush=True)
                if name in steps:
                    rows.append(await steps[name]())
                    continue
                if name in several:
                    rows.extend(await several[name]())
                    continue
                with tempfile.TemporaryDirectory(prefix="exeunit-bench-") as scratch:
                    rows.extend(await case_transfer(golem, client, states, daemon, sizes["transfer"],
                                                    sizes["transfer_rounds"], Path(scratch)))
    finally:
        daemon.stop()
        for leftover in client.containers.list(all=True, filters={"label": "io.exeunit.bench=1"}):
            leftover.remove(force=True, v=True)
        for network in client.networks.list(filters={"label": "io.exeunit.bench=1"}):
            network.remove()
    print_table(rows)
    machine = {
        "cpus": psutil.cpu_count(), "memory_gib": round(psutil.virtual_memory().total / (1 << 30), 1),
        "python": platform.python_version(), "docker": client.version().get("Version"),
        "kernel": platform.release(), "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "mode": "quick" if quick else "full",
    }
    output.write_text(json.dumps({"machine": machine, "rows": [asdict(r) for r in rows]}, indent=2) + "\n")
    print(f"\nwritten to {output}; machine: {machine}")
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller sizes, under two minutes")
    parser.add_argument("--output", type=Path, default=Path(tempfile.gettempdir()) / "exeunit-bench.json",
                        help="where the JSON goes (default: %(default)s; bench/latest.json is the kept record)")
    parser.add_argument("--only", nargs="+", choices=CASES, default=list(CASES), help="run only these cases")
    args = parser.parse_args()
    asyncio.run(main(args.quick, args.output, tuple(args.only)))
