"""Ten requestors at their worst against one daemon, and an eleventh that only wants `/bin/true`.

Each attacker has its own requestor id and activity and does one thing as hard as it can for the
whole run: big outputs it reads (kept output), batches it queues and never reads (queues), huge
outputs it reads one event a second (slow readers: back-pressure and journals), uploads that stall
after their first chunk (transfers), tunnels to a port that floods data and that it never reads
(tunnels), and uploads and downloads of 64 MiB one after another at full speed, checked end to end
as the library checks them (issue 28: bulk transfers must yield like output). The victim's round
trip is measured idle and then under attack; bench/run.py samples the daemon's resident memory
throughout and prints the ratio. The attackers are one process of their own, at ordinary priority
(not niced). By hand, BENCH_ATTACKS=full_speed_uploads,full_speed_downloads (names from ATTACKS)
runs only those attackers; the record always runs all ten.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import grpc

from exeunit.v1 import activity_pb2 as act
from exeunit.v1 import activity_pb2_grpc as act_grpc
from exeunit.v1 import transfer_pb2 as xfer
from exeunit.v1 import transfer_pb2_grpc as xfer_grpc
from requestor.client import ProviderClient
from requestor.client.identity import RequestorIdentity
from requestor.errors import RequestorError
from requestor.model import DemandSpec, DeploySpec, Refusal, RunSpec, StartSpec

IMAGE = "exeunit-base:latest"
MIB = 1 << 20
FLOOD_PORT = 9000
FLOOD_SERVER = (  # listens on FLOOD_PORT in the activity and sends zeros to whoever connects
    "import socket, threading\n"
    "s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
    f"s.bind(('127.0.0.1', {FLOOD_PORT})); s.listen(128)\n"
    "def flood(c):\n"
    "    block = bytes(1 << 16)\n"
    "    try:\n"
    "        while True: c.sendall(block)\n"
    "    except OSError: pass\n"
    "while True:\n"
    "    c, _ = s.accept(); threading.Thread(target=flood, args=(c,), daemon=True).start()\n"
)


class Requestor:
    """One requestor: its id, a client, raw stubs for what the client does politely, an activity."""

    def __init__(self, address: str, requestor_id: str) -> None:
        self.client = ProviderClient(address, RequestorIdentity.ephemeral())
        self.activity_id = ""

    async def ready(self) -> None:
        channel = (await self.client.connect()).channel
        self.activity = act_grpc.ActivityStub(channel)
        self.transfer = xfer_grpc.TransferStub(channel)
        demand = DemandSpec(image_hash="", image_tag=IMAGE, image_url="", min_memory_bytes=256 << 20,
                            min_storage_bytes=512 << 20, min_cpu_threads=1, capabilities=(), subnet_tag="public",
                            expiration=datetime.now(timezone.utc) + timedelta(hours=1))
        agreement = await self.client.propose(demand)
        assert not isinstance(agreement, Refusal), agreement
        self.activity_id = await self.client.create_activity(agreement.agreement_id)
        await self.run([DeploySpec(), StartSpec()], "ready")

    async def run(self, commands: list[Any], batch_id: str) -> int:
        """Runs a batch and reads all its events; returns the output bytes."""
        got = 0
        async for event in self.client.run_batch(self.activity_id, commands, batch_id):
            got += len(event.data)
        return got

    async def close(self) -> None:
        try:
            await self.client.destroy(self.activity_id)
        except RequestorError:
            pass
        await self.client.close()


def wire(*argv: str) -> act.Command:
    return act.Command(run=act.RunCommand(entry_point=argv[0], args=list(argv[1:])))


async def big_outputs(attacker: Requestor, until: float) -> None:
    n = 0
    while time.monotonic() < until:
        await attacker.run([RunSpec("/usr/bin/head", ("-c", str(30 * MIB), "/dev/zero"))], f"big-{n}")
        n += 1


async def queued_batches(attacker: Requestor, until: float) -> None:
    n = 0
    while time.monotonic() < until:
        request = act.ExecRequest(activity_id=attacker.activity_id, commands=[wire("/bin/sleep", "0.2")],
                                  batch_id=f"queued-{n}")
        try:
            await attacker.activity.Exec(request, metadata=attacker.client.signed("activity", "Exec", request))
            n += 1
        except grpc.aio.AioRpcError as exc:
            assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, exc
            await asyncio.sleep(0.05)


async def slow_reader(attacker: Requestor, until: float) -> None:
    request = act.ExecRequest(activity_id=attacker.activity_id,
                              commands=[wire("/usr/bin/head", "-c", str(8 << 30), "/dev/zero")], batch_id="huge")
    stream = attacker.activity.ExecStream(request, metadata=attacker.client.signed("activity", "ExecStream", request))
    async for _ in stream:
        if time.monotonic() >= until:
            stream.cancel()
            return
        await asyncio.sleep(1.0)


async def stalled_uploads(attacker: Requestor, until: float) -> None:
    async def one(n: int) -> None:
        header = xfer.UploadRequest(header=xfer.UploadHeader(activity_id=attacker.activity_id,
                                                             path=f"/golem/work/stall-{n}", size=256 * MIB))

        async def parts() -> AsyncIterator[xfer.UploadRequest]:
            yield header
            yield xfer.UploadRequest(chunk=bytes(MIB))
            await asyncio.sleep(until - time.monotonic())  # and never another byte

        try:
            await attacker.transfer.Upload(parts(), metadata=attacker.client.signed("transfer", "Upload", header),
                                           timeout=until - time.monotonic())
        except grpc.aio.AioRpcError:
            pass  # refused past the limit, cut when idle, or our own deadline
        except asyncio.CancelledError:  # how grpc ends a call refused while its sender sleeps
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise

    while time.monotonic() < until:
        await asyncio.gather(*(one(n) for n in range(8)))


TRANSFER_BYTES = 64 * MIB


async def full_speed_uploads(attacker: Requestor, until: float) -> int:
    """Returns the bytes uploaded."""
    block = os.urandom(MIB)

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(TRANSFER_BYTES // MIB):
            yield block

    n = 0
    while time.monotonic() < until:
        await attacker.client.upload(attacker.activity_id, f"/golem/work/up-{n % 2}", TRANSFER_BYTES, chunks())
        n += 1
    return n * TRANSFER_BYTES


async def full_speed_downloads(attacker: Requestor, until: float) -> int:
    """Returns the bytes downloaded."""
    moved = 0
    await attacker.run([RunSpec("/bin/sh", ("-c", f"head -c {TRANSFER_BYTES} /dev/urandom > /golem/work/down"))],
                       "file")
    while time.monotonic() < until:
        async for chunk in attacker.client.download(attacker.activity_id, "/golem/work/down"):
            moved += len(chunk)
    return moved


async def deaf_tunnels(attacker: Requestor, until: float) -> None:
    await attacker.run([RunSpec("/bin/sh", ("-c", f"python3 -c \"{FLOOD_SERVER}\" >/dev/null 2>&1 &"))], "flood")
    await asyncio.sleep(0.5)
    calls = []
    for _ in range(80):  # more than --tunnels-per-activity: the rest are refused
        opening = act.TunnelRequest(open=act.TunnelOpen(activity_id=attacker.activity_id, port=FLOOD_PORT))
        call = attacker.activity.Tunnel(metadata=attacker.client.signed("activity", "Tunnel", opening))
        await call.write(opening)
        calls.append(call)  # never read
    await asyncio.sleep(max(until - time.monotonic(), 0))
    for call in calls:
        call.cancel()


ATTACKS: list[Callable[[Requestor, float], Coroutine[Any, Any, int | None]]] = [
    big_outputs, big_outputs, queued_batches, queued_batches, slow_reader, slow_reader, stalled_uploads, deaf_tunnels,
    full_speed_uploads, full_speed_downloads,
]
if only := os.environ.get("BENCH_ATTACKS"):  # by hand: BENCH_ATTACKS=full_speed_uploads,full_speed_downloads
    _BY_NAME = {a.__name__: a for a in ATTACKS}
    if unknown := [name for name in only.split(",") if name not in _BY_NAME]:
        raise SystemExit(f"BENCH_ATTACKS names no attacker {', '.join(unknown)}; choose from {', '.join(_BY_NAME)}")
    ATTACKS = [_BY_NAME[name] for name in only.split(",")]


async def round_trips(victim: Requestor, until: float | None = None, count: int = 0) -> list[float]:
    """The victim's `/bin/true` round trips, in seconds: `count` of them, or as many as fit before `until`."""
    times = []
    n = 0
    while (until is not None and time.monotonic() < until) or n < count:
        start = time.perf_counter()
        await victim.run([RunSpec("/bin/true")], f"true-{time.monotonic_ns()}")
        times.append(time.perf_counter() - start)
        n += 1
    return times


async def attackers(address: str, seconds: float) -> None:
    """The attackers, for `seconds` once they are all ready (run in a process of their own,
    so that the victim's measurements are the daemon's and not this process's)."""
    crowd = [Requestor(address, f"bench-attacker-{n}") for n in range(len(ATTACKS))]
    try:
        await asyncio.gather(*(a.ready() for a in crowd))
        print("ready", flush=True)
        started = time.monotonic()
        until = started + seconds
        results = await asyncio.gather(*(run(a, until) for run, a in zip(ATTACKS, crowd)), return_exceptions=True)
        failed = [(run.__name__, r) for run, r in zip(ATTACKS, results) if isinstance(r, BaseException)]
        if failed:
            name, error = failed[0]
            raise SystemExit(f"attacker {name} broke rather than the daemon: {error!r}")
        took = time.monotonic() - started
        rates = {run.__name__: r / MIB / took for run, r in zip(ATTACKS, results) if isinstance(r, int)}
        print(" ".join(f"{name}={rate:.1f}" for name, rate in rates.items()), flush=True)  # MiB/s each
    finally:
        await asyncio.gather(*(a.close() for a in crowd), return_exceptions=True)


async def attack(address: str, seconds: float) -> tuple[float, float, int, dict[str, float]]:
    """(median idle round trip, median round trip under attack, round trips under attack, MiB/s of
    each full-speed transfer attacker)."""
    victim = Requestor(address, "bench-victim")
    try:
        await victim.ready()
        await round_trips(victim, count=5)  # warm up
        idle = statistics.median(await round_trips(victim, count=40))
        # The attackers run as a requestor's own process would, at the priority it was given: not
        # niced (until issue 26 they ran under `nice -n 19`, which handed the daemon and the victim
        # the cores whenever they wanted them and flattered the ratio). Their own work (reading 30 MiB
        # streams, say) competes with the daemon for this machine's cores, as it would not from
        # requestors elsewhere: the figure is the pessimistic one.
        crowd = await asyncio.create_subprocess_exec(
            sys.executable, __file__, address, str(seconds), stdout=asyncio.subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)})
        assert crowd.stdout is not None
        await crowd.stdout.readline()  # "ready"
        await asyncio.sleep(2)  # let them get going
        busy = await round_trips(victim, until=time.monotonic() + seconds - 2)
        if await crowd.wait() != 0:
            raise RuntimeError("an attacker broke rather than the daemon (its error is above)")
        rates = dict(pair.split("=") for pair in (await crowd.stdout.read()).decode().split())
        return idle, statistics.median(busy), len(busy), {name: float(rate) for name, rate in rates.items()}
    finally:
        await victim.close()


if __name__ == "__main__":
    asyncio.run(attackers(sys.argv[1], float(sys.argv[2])))
