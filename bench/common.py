"""What every bench case shares: the daemon under test, the services that do the work, the raw
container, and how rounds become a row of the record.

A row keeps every round's figure on both sides, as min / median / max, and the ratio of each
round's pair (ours / raw, measured one right after the other), as min / median / max too: a single
median hid how far apart the rounds were, and a ratio of two medians pairs figures measured at
different moments of a noisy machine.
"""

from __future__ import annotations

import asyncio
import io
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import docker
import psutil

from requestor import events
from requestor.payload import vm
from requestor.services import Service, ServiceState

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMAGE = "exeunit-base:latest"
MIB = 1 << 20

Spread = dict[str, float]


def say(message: str) -> None:
    """Progress on stderr, so that a long wait names its case and round."""
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def spread(values: list[float]) -> Spread:
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


@dataclass
class Row:
    """One line of the record. `raw` and `ratio` are None where nothing raw does the same work
    (the memory case); `better` says which way the ratio should go ("lower" for times)."""

    case: str
    what: str
    unit: str
    better: str
    rounds: int
    ours: Spread
    raw: Spread | None
    ratio: Spread | None
    target: str
    met: bool
    notes: dict[str, float | str] = field(default_factory=dict)


def row(case: str, what: str, unit: str, ours: list[float], raw: list[float] | None, target: str,
        met: Callable[[float], bool], notes: dict[str, float | str] | None = None) -> Row:
    """A row from each round's figures; `met` is asked about the median ratio (about the median
    of ours when there is no raw side)."""
    if raw is not None and len(raw) != len(ours):
        raise ValueError(f"{case}: {len(ours)} rounds of ours against {len(raw)} of raw")
    ratios = [a / b for a, b in zip(ours, raw)] if raw is not None else None
    better = "higher" if "/s" in unit else "lower"
    judged = statistics.median(ratios) if ratios is not None else statistics.median(ours)
    return Row(case, what, unit, better, len(ours), spread(ours), spread(raw) if raw is not None else None,
               spread(ratios) if ratios is not None else None, target, bool(met(judged)), notes or {})


class Progress:
    """Names the round under way, at most every few seconds (a case of 25 short rounds would
    otherwise flood stderr), always the first and the last."""

    def __init__(self, case: str, rounds: int, every: float = 5.0) -> None:
        self.case, self.rounds, self.every = case, rounds, every
        self.last = 0.0

    def round(self, n: int) -> None:
        now = time.monotonic()
        if n in (1, self.rounds) or now - self.last >= self.every:
            say(f"{self.case}: round {n}/{self.rounds}")
            self.last = now


async def alternate(case: str, rounds: int, ours: Callable[[], Awaitable[float]],
                    raw: Callable[[], Awaitable[float]]) -> tuple[list[float], list[float]]:
    """Each round's figures of `ours` and `raw`, measured alternately: A, B, A, B."""
    a, b = [], []
    progress = Progress(case, rounds)
    for n in range(1, rounds + 1):
        progress.round(n)
        a.append(await ours())
        b.append(await raw())
    return a, b


def stopwatch() -> Callable[[], float]:
    start = time.perf_counter()
    return lambda: time.perf_counter() - start


# The daemon under test, in its own process


class Daemon:
    """`exeunit serve` on a loopback port, with its RSS sampled every 20 ms."""

    def __init__(self) -> None:
        self.home = tempfile.mkdtemp(prefix="exeunit-bench-home-")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "exeunit", "serve", "--listen", "127.0.0.1:0", "--name", "bench-provider",
             "--cpu-overcommit", "40", "--activity-preset", "none", "--state-dir", self.home, "--forget-ended-after", "10",
             "--price-cpu-sec", "0.000001", "--price-duration-sec", "0.000001"],
            stderr=subprocess.PIPE, text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": REPO},
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


# The services that do the work


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


class FirstTrue(Service):
    """Runs `/bin/true` as soon as it is running, and notes when the answer came: the end of a
    start on our side, as the raw side's start ends at its first `exec_run(["true"])`. (`running`
    alone comes before the container's agent is up: the first command waits for it.)"""

    get_payload = staticmethod(base_payload)

    def __init__(self) -> None:
        super().__init__()
        self.answered: asyncio.Future[float] = asyncio.get_running_loop().create_future()

    async def run(self):
        script = self._ctx.new_script()
        done = script.run("/bin/true")
        yield script
        await done
        self.answered.set_result(time.perf_counter())
        async for script in super().run():  # stays until terminated
            yield script


async def first_answers(instances: list[FirstTrue]) -> float:
    """Waits for every instance's first answer; the time of the last. Raises if one ended first."""
    pending = {i.answered for i in instances}
    while pending:
        _, pending = await asyncio.wait(pending, timeout=0.5)
        ended = [i for i in instances if i.state is ServiceState.terminated and not i.answered.done()]
        if ended:
            raise SystemExit(f"an instance ended before its first command: {ended[0].exc_info}")
    return max(i.answered.result() for i in instances)


def worker_on(image: str) -> type[Worker]:
    async def payload() -> vm.VmPackage:
        return await vm.repo(image_tag=image, min_mem_gib=0.25, min_storage_gib=0.5)

    return type(f"Worker_{image}", (Worker,), {"get_payload": staticmethod(payload)})


async def running_worker(golem, states: States, kind: type[Worker] = Worker) -> Worker:
    cluster = await golem.run_service(kind)
    [worker] = cluster.instances
    await states.until(lambda: worker.state is ServiceState.running)
    return worker


def command_script(*argv: str) -> Callable[..., object]:
    def make(ctx):
        script = ctx.new_script()
        script.run(*argv)
        return script

    return make


async def true_round_trip(worker: Worker) -> float:
    """Seconds for `run /bin/true` on `worker`, as the requestor sees it: until its result."""
    elapsed = stopwatch()
    await worker.submit(command_script("/bin/true"))
    return elapsed()


# The raw side


def raw_container(client: docker.DockerClient, image: str = IMAGE):
    return client.containers.run(image, entrypoint=["/bin/sh"], command=[], stdin_open=True, detach=True,
                                 init=True, network_mode="none", labels={"io.exeunit.bench": "1"})


def raw_true(container) -> Callable[[], Awaitable[float]]:
    """The raw counterpart of `true_round_trip`: seconds for `exec_run(["true"])` (create, start,
    read to the end and inspect for the exit code: the answer, as ours is the result)."""
    async def measure() -> float:
        elapsed = stopwatch()
        await asyncio.to_thread(container.exec_run, ["true"])
        return elapsed()

    return measure


NO_PYTHON_IMAGE = "exeunit-bench-nopython:latest"  # the base image without python3: no agent


def no_python_image(client: docker.DockerClient) -> str:
    """An offered image whose activities fall back to `docker exec` (built once, kept)."""
    try:
        client.images.get(NO_PYTHON_IMAGE)
    except docker.errors.ImageNotFound:
        dockerfile = f"FROM {IMAGE}\nRUN rm -f /usr/bin/python3*\n".encode()
        client.images.build(fileobj=io.BytesIO(dockerfile), tag=NO_PYTHON_IMAGE, rm=True)
    return NO_PYTHON_IMAGE


class OutputRate:
    """MiB/s of `size` bytes of stdout streamed to the requestor by a worker, checked whole; the
    golems it measures through count the bytes (`add_event_consumer(rate.count, ...)`). Counts
    only while measuring: a golem cannot drop a consumer, and later cases should not pay for it."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.received = 0
        self.measuring = False

    def count(self, event: events.Event) -> None:
        if self.measuring and isinstance(event, events.CommandStdOut):
            self.received += len(event.output)

    def flood(self, ctx):
        script = ctx.new_script()
        script.run("/usr/bin/head", "-c", str(self.size), "/dev/zero", output_limit=0)  # streamed, not kept: as raw
        return script

    async def of(self, worker: Worker) -> float:
        self.received = 0
        self.measuring = True
        try:
            elapsed = stopwatch()
            await worker.submit(self.flood)
            took = elapsed()
        finally:
            self.measuring = False
        if self.received != self.size:
            raise SystemExit(f"output lost: {self.received} of {self.size} bytes arrived")
        return self.size / took / MIB
