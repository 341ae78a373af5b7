"""Bench cases about the Task API and a requestor at scale (issue 27's targets): 1,000 one-command
tasks against the same commands sent straight through the client, how soon five workers run, the
requestor's memory over an endless generator of tasks, and 100 service instances on 10 providers.

Each case starts its own `exeunit serve` daemons (a Fleet: one process and one home each, as a
user runs them) and stops them at its end; the requestor is this process. The Golems are made as
a user makes them (the default summary logger as the event consumer), one per round unless said.
"""

from __future__ import annotations

import asyncio
import gc
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from datetime import datetime, timedelta, timezone

import docker
import psutil

from bench.cases_exec import raw_start
from bench.common import IMAGE, MIB, REPO, FirstTrue, Progress, Row, base_payload, row, say, stopwatch
from exeunit.testing.providers import LISTENING
from requestor import Golem, Task, events
from requestor.client import ProviderClient
from requestor.client.identity import RequestorIdentity
from requestor.model import DemandSpec, DeploySpec, Refusal, RunSpec, StartSpec
from requestor.services import ServiceState

YAPAPI_WORKER_INTERVAL = 2.0  # seconds: yapapi's executor starts at most one worker every 2 s


class Fleet:
    """`count` `exeunit serve` daemons on loopback, each in its own process and home, started
    together; `addresses` for a Golem. Capacity as the bench's daemon: 2 host threads x 40."""

    def __init__(self, count: int, label: str) -> None:
        self.homes = [tempfile.mkdtemp(prefix=f"exeunit-bench-{label}-{n}-") for n in range(count)]
        self.processes: list[subprocess.Popen[str]] = []
        self.addresses: list[str] = []
        try:
            for n, home in enumerate(self.homes):
                self.processes.append(subprocess.Popen(
                    [sys.executable, "-m", "exeunit", "serve", "--listen", "127.0.0.1:0", "--name", f"{label}-{n}",
                     "--cpu-overcommit", "40", "--activity-preset", "none", "--state-dir", home, "--forget-ended-after", "10",
                     "--price-cpu-sec", "0.000001", "--price-duration-sec", "0.000001"],
                    stderr=subprocess.PIPE, text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": REPO}))
            for process in self.processes:
                self.addresses.append(f"127.0.0.1:{self._port(process)}")
        except BaseException:
            self.stop()
            raise

    @staticmethod
    def _port(process: subprocess.Popen[str]) -> int:
        assert process.stderr is not None
        for line in process.stderr:
            if match := LISTENING.search(line):
                threading.Thread(target=lambda: [None for _ in process.stderr], daemon=True).start()  # type: ignore[union-attr]
                return int(match.group(1))
        raise SystemExit("a daemon of the fleet did not start; run scripts/setup.sh first")

    def stop(self) -> None:
        """SIGTERM to each (their activities end, their containers go), then waits for all."""
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(timeout=120)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for home in self.homes:
            shutil.rmtree(home, ignore_errors=True)


class RssPeak:
    """This process's (the requestor's) RSS, its peak sampled every 20 ms while `running`."""

    def __init__(self) -> None:
        self._ps = psutil.Process()
        self.peak = self.rss()
        self._on = True
        threading.Thread(target=self._sample, daemon=True).start()

    def rss(self) -> int:
        return int(self._ps.memory_info().rss)

    def cpu(self) -> float:
        times = self._ps.cpu_times()
        return times.user + times.system

    def reset(self) -> int:
        self.peak = self.rss()
        return self.peak

    def _sample(self) -> None:
        while self._on:
            self.peak = max(self.peak, self.rss())
            time.sleep(0.02)

    def stop(self) -> None:
        self._on = False


# Tasks against the client


async def one_true(ctx, tasks):
    """The task worker: each task one script of one `/bin/true`, accepted once it has answered."""
    async for task in tasks:
        script = ctx.new_script()
        script.run("/bin/true")
        yield script
        task.accept_result()


class Clock:
    """When the job's first offer came, and each worker's (activity's) first TaskStarted."""

    def __init__(self) -> None:
        self.first_offer: float | None = None
        self.first_task: dict[str, float] = {}

    def __call__(self, event: events.Event) -> None:
        now = time.perf_counter()
        if isinstance(event, events.ProposalReceived) and self.first_offer is None:
            self.first_offer = now
        elif isinstance(event, events.TaskStarted):
            self.first_task.setdefault(event.activity.id, now)

    def nth_worker(self, n: int) -> float:
        return sorted(self.first_task.values())[n - 1]


async def ours_tasks(addresses: list[str], count: int, workers: int, warm_up: bool = False) -> dict[str, float]:
    """`count` tasks over `workers` workers: from the call to execute_tasks to the last accepted
    (and, unless warming up, the set-up's figures: every worker must have had a task)."""
    clock = Clock()
    async with Golem(budget=100.0, subnet_tag="public", providers=addresses) as golem:
        golem.add_event_consumer(clock, (events.ProposalReceived, events.TaskStarted))
        payload = await base_payload()
        data = [Task(data=n) for n in range(count)]
        accepted, last = 0, 0.0
        started = time.perf_counter()
        async for _ in golem.execute_tasks(one_true, data, payload=payload, max_workers=workers):
            accepted += 1
            last = time.perf_counter()
    if warm_up:
        return {}
    if accepted != count or len(clock.first_task) < workers or clock.first_offer is None:
        raise SystemExit(f"tasks: {accepted} of {count} accepted, on {len(clock.first_task)} workers")
    ready = clock.nth_worker(workers)
    return {"total": last - started, "setup": ready - started, "commands": last - min(clock.first_task.values()),
            "workers_start": ready - clock.first_offer, "first_worker": min(clock.first_task.values()) - clock.first_offer}


def raw_demand() -> DemandSpec:
    return DemandSpec(image_hash="", image_tag=IMAGE, image_url="", min_memory_bytes=256 << 20,
                      min_storage_bytes=512 << 20, min_cpu_threads=1, capabilities=(), subnet_tag="public",
                      expiration=datetime.now(timezone.utc) + timedelta(hours=1))


async def raw_batch(client: ProviderClient, activity_id: str, commands: list) -> None:
    """One batch, to its last event; raises if a command failed."""
    async for event in client.run_batch(activity_id, commands, os.urandom(16).hex()):
        if event.kind == "finished" and not event.success:
            raise SystemExit(f"raw tasks: a command failed: {event.message}")


async def raw_tasks(addresses: list[str], count: int) -> dict[str, float]:
    """The same commands straight through the client: an agreement and an activity per provider,
    deployed and started, made concurrently; then count / len(addresses) one-command batches on
    each activity, one after another, the activities concurrently."""
    identity = RequestorIdentity.ephemeral()
    clients = [ProviderClient(a, identity) for a in addresses]
    per = count // len(clients)
    made: list[tuple[ProviderClient, str, str]] = []
    demand = raw_demand()

    async def set_up(client: ProviderClient) -> tuple[ProviderClient, str, str]:
        agreement = await client.propose(demand)
        if isinstance(agreement, Refusal):
            raise SystemExit(f"raw tasks: refused: {agreement}")
        activity_id = await client.create_activity(agreement.agreement_id)
        made.append((client, agreement.agreement_id, activity_id))
        await raw_batch(client, activity_id, [DeploySpec(), StartSpec()])
        return client, agreement.agreement_id, activity_id

    async def commands(client: ProviderClient, activity_id: str) -> None:
        for _ in range(per):
            await raw_batch(client, activity_id, [RunSpec("/bin/true")])

    try:
        elapsed = stopwatch()
        ready = await asyncio.gather(*(set_up(c) for c in clients))
        setup = elapsed()
        await asyncio.gather(*(commands(c, a) for c, _, a in ready))
        total = elapsed()
    finally:
        for client, agreement_id, activity_id in made:
            await client.destroy(activity_id)
            await client.terminate_agreement(agreement_id, "Success")
        for client in clients:
            await client.close()
    return {"total": total, "setup": setup, "commands": total - setup}


async def case_tasks(count: int, workers: int, rounds: int) -> list[Row]:
    """`count` one-command tasks (`/bin/true`, accepted) over `workers` workers on as many local
    providers, against the same commands sent straight through requestor.client on as many
    activities (count / workers each, the activities concurrently).

    Both sides are timed from the start of the work, set-up included, to the last answer: ours
    from the call to `execute_tasks` (offers, agreements, activities, deploy and start: the task
    machinery's own) to the last task accepted; raw from its first proposal to the last batch's
    end. Timing the raw side from its first command only would set the machinery's set-up against
    nothing, and timing ours from its first worker ready would leave out the machinery's start of
    the other four, which overlaps the first one's tasks. The set-up is measured apart on both
    sides and reported (ours: until the last worker's first TaskStarted; raw: until the last
    activity started), with the commands alone (ours: from the first TaskStarted to the last
    accepted; raw: from the last activity started to the last answer) and their ratio.

    The same rounds give the `workers-start` row: from the job's first offer (ProposalReceived)
    to the first TaskStarted of the `workers`-th distinct worker, beside yapapi's design, one
    worker every 2 s: 8 s for 5 (its "raw" column, flat)."""
    fleet = Fleet(workers, "tasks")
    ours: list[dict[str, float]] = []
    raw: list[dict[str, float]] = []
    try:
        await raw_tasks(fleet.addresses, workers * 4)  # warm up both paths (images, connections)
        await ours_tasks(fleet.addresses, workers * 4, workers, warm_up=True)
        progress = Progress("tasks", rounds, every=0)
        for n in range(1, rounds + 1):
            progress.round(n)
            ours.append(await ours_tasks(fleet.addresses, count, workers))
            raw.append(await raw_tasks(fleet.addresses, count))
    finally:
        fleet.stop()

    def median(side: list[dict[str, float]], key: str) -> float:
        return round(statistics.median(x[key] for x in side), 3)

    yapapi = (workers - 1) * YAPAPI_WORKER_INTERVAL
    commands_ratio = statistics.median(a["commands"] / b["commands"] for a, b in zip(ours, raw))
    return [
        row("tasks", f"{count:,} one-command tasks (`/bin/true`, accepted) over {workers} workers, from "
            f"`execute_tasks` to the last accepted, vs the same commands through the client on {workers} activities "
            "(set-up included on both sides)", "s", [x["total"] for x in ours], [x["total"] for x in raw],
            "ratio <= 1.25", lambda r: r <= 1.25,
            {"ours_setup_s": median(ours, "setup"), "raw_setup_s": median(raw, "setup"),
             "ours_commands_s": median(ours, "commands"), "raw_commands_s": median(raw, "commands"),
             "commands_ratio": round(commands_ratio, 3),
             "ours_tasks_per_s": round(count / statistics.median(x["total"] for x in ours), 1)}),
        row("workers-start", f"{workers} task workers running: from the job's first offer to the first TaskStarted "
            f"of the {workers}th worker, vs yapapi's design (one worker per {YAPAPI_WORKER_INTERVAL:g} s)", "s",
            [x["workers_start"] for x in ours], [yapapi] * len(ours),
            f"reported (raw: yapapi's design, {yapapi:g} s for {workers})", lambda r: True,
            {"first_worker_s": median(ours, "first_worker")}),
    ]


# The requestor's memory over an endless generator


def endless():
    """Tasks for ever, made as they are asked for."""
    n = 0
    while True:
        yield Task(data=n)
        n += 1


async def case_task_memory(count: int, rounds: int, workers: int = 5) -> Row:
    """`count` tasks of an endless generator, one job a round, in one Golem (a long-lived
    requestor; in full mode 3 rounds of 34,000: over 100,000 tasks through one requestor, in
    about 6 minutes rather than 18): the requestor's RSS must stay flat. The figure is the growth over the second half
    of each job (RSS after `count` accepted less RSS after `count // 2`, each after a gc.collect,
    so that garbage not yet collected is not taken for a leak); no raw side."""
    fleet = Fleet(workers, "task-memory")
    meter = RssPeak()
    growth, seconds, peaks = [], [], []
    progress = Progress("task-memory", rounds, every=0)
    try:
        async with Golem(budget=1000.0, subnet_tag="public", providers=fleet.addresses) as golem:
            payload = await base_payload()
            gc.collect()
            first = meter.rss()
            for n in range(1, rounds + 1):
                progress.round(n)
                accepted, half = 0, 0
                meter.reset()
                elapsed = stopwatch()
                async for _ in golem.execute_tasks(one_true, endless(), payload=payload, max_workers=workers,
                                                   timeout=timedelta(hours=2)):
                    accepted += 1
                    if accepted == count // 2:
                        gc.collect()
                        half = meter.rss()
                    elif accepted % 10_000 == 0:
                        say(f"task-memory: round {n}/{rounds}: {accepted:,} tasks, "
                            f"RSS {meter.rss() / MIB:.1f} MiB")
                    if accepted == count:
                        break
                seconds.append(elapsed())
                gc.collect()
                growth.append((meter.rss() - half) / MIB)
                peaks.append(meter.peak / MIB)
                say(f"task-memory: round {n}/{rounds}: {count:,} tasks in {seconds[-1]:.0f} s, "
                    f"second half +{growth[-1]:.2f} MiB")
            gc.collect()
            last = meter.rss()
    finally:
        meter.stop()
        fleet.stop()
    worst = max(growth)
    return row("task-memory", f"requestor memory over {count:,} tasks of an endless generator ({workers} workers): "
               "RSS growth over the second half of the job", "MiB", growth, None,
               "growth over the second half <= 4 MiB", lambda _: worst <= 4,
               {"rss_start_mib": round(first / MIB, 1), "rss_end_mib": round(last / MIB, 1),
                "peak_mib_max": round(max(peaks), 1), "tasks_per_s_median": round(count / statistics.median(seconds))})


# 100 instances on 10 providers


async def answered_within(instances: list[FirstTrue], limit: float) -> tuple[float | None, int]:
    """The time of the last first answer, or None if not every instance answered within `limit`
    seconds (or one ended first); how many answered."""
    pending = {i.answered for i in instances}
    deadline = time.perf_counter() + limit
    while pending and time.perf_counter() < deadline:
        _, pending = await asyncio.wait(pending, timeout=0.5)
        if any(i.state is ServiceState.terminated and not i.answered.done() for i in instances):
            break
    answered = [i.answered.result() for i in instances if i.answered.done()]
    return (max(answered) if len(answered) == len(instances) else None), len(answered)


async def case_scale_100(client: docker.DockerClient, count: int, providers: int, rounds: int) -> Row:
    """`count` instances of a trivial service (its run handler runs `/bin/true`, then idles) on
    `providers` local providers, a new Golem each round, from `run_service` to every instance's
    first answer, against `count` raw starts one after another (`containers.run` and the first
    `exec_run(["true"])`, as the start case). Every round must have all instances running; one
    that has not within the limit counts at the limit. The requestor's CPU seconds and peak RSS
    are taken over ours; neither side's removal is timed."""
    limit = max(120.0, count * 3.0)
    fleet = Fleet(providers, "scale")
    meter = RssPeak()
    cpu, rss, spread, all_ran = [], [], [], 0

    async def ours() -> float:
        nonlocal all_ran
        async with Golem(budget=1000.0, subnet_tag="public", providers=fleet.addresses) as golem:
            meter.reset()
            cpu_before = meter.cpu()
            started = time.perf_counter()
            cluster = await golem.run_service(FirstTrue, num_instances=count)
            last, answered = await answered_within(cluster.instances, limit)
            took = (last if last is not None else time.perf_counter()) - started
            cpu.append(meter.cpu() - cpu_before)
            rss.append(meter.peak / MIB)
            spread.append(max(Counter(i.provider_name for i in cluster.instances).values()))
            if last is None:
                say(f"scale-100: only {answered} of {count} instances answered within {limit:g} s")
            else:
                all_ran += 1
            await cluster.terminate()
        return took

    def raw_once() -> float:
        containers = []
        try:
            elapsed = stopwatch()
            for _ in range(count):
                containers.append(raw_start(client))
            return elapsed()
        finally:
            for container in containers:
                try:
                    container.remove(force=True, v=True)
                except docker.errors.NotFound:  # removed already (another bench run's clean-up)
                    pass

    a, b = [], []
    progress = Progress("scale-100", rounds, every=0)
    try:
        for n in range(1, rounds + 1):
            progress.round(n)
            a.append(await ours())
            b.append(await asyncio.to_thread(raw_once))
    finally:
        meter.stop()
        fleet.stop()
    return row("scale-100", f"{count} service instances on {providers} local providers until every first command "
               f"answered vs {count} sequential `containers.run` + `exec_run`", "s", a, b,
               "ratio <= 1.5, all running every round", lambda r: r <= 1.5 and all_ran == rounds,
               {"rounds_all_running": f"{all_ran}/{rounds}", "requestor_cpu_s_median": round(statistics.median(cpu), 2),
                "requestor_rss_peak_mib_max": round(max(rss), 1), "most_on_one_provider_max": max(spread)})
