"""Bench cases about commands: a round trip, a start, a scale-out, the same over TLS.

Every side ends at a command's answer: ours when the script's result is back in the requestor,
raw when `exec_run` has read the exec's end and its exit code. A start or a scale-out therefore
includes its first command on both sides (until issue 26 ours stopped at `running`, before the
container's agent was up, while the raw side had run its `true`).
"""

from __future__ import annotations

import asyncio
import os
import statistics
import tempfile
import time
from pathlib import Path
from concurrent.futures import ThreadPoolExecutor

import docker

from bench.common import (IMAGE, MIB, Daemon, FirstTrue, OutputRate, Row, States, Worker, alternate, command_script,
                          first_answers, no_python_image, raw_container, raw_true, row, running_worker, say,
                          stopwatch, true_round_trip, worker_on)
from bench.cases_data import TransferPair
from exeunit.api.auth import ProofCheck
from exeunit.api.nonces import NonceBounds, NonceLedger
from exeunit.testing.hosts import SimulatedLan
from exeunit.testing.providers import ProviderDaemon
from exeunit.v1 import activity_pb2 as act
from exeunit.v1 import identity as wire
from requestor import Golem, events
from requestor.client.identity import RequestorIdentity
from requestor.services import ServiceState


async def case_exec(golem: Golem, client: docker.DockerClient, states: States, rounds: int, executor: str) -> Row:
    """`run /bin/true` through the agent (the base image) or docker exec (an image without
    python3), against `exec_run(["true"])` in a container of the same image: one command to its
    answer on both sides, in containers already running."""
    image = IMAGE if executor == "agent" else no_python_image(client)
    worker = await running_worker(golem, states, worker_on(image))
    container = raw_container(client, image)

    async def ours() -> float:
        return await true_round_trip(worker) * 1000

    async def raw() -> float:
        return await raw_true(container)() * 1000

    for _ in range(3):  # warm up both paths
        await ours()
        await raw()
    a, b = await alternate(f"exec-{executor}", rounds, ours, raw)
    container.remove(force=True, v=True)
    await worker.cluster.terminate()
    limit = 0.1 if executor == "agent" else 1.15
    notes: dict[str, float | str] = {}
    if executor == "agent":
        costs = proof_costs()
        per_call = costs["proof_sign_us"] + costs["proof_verify_us"]
        notes = {"spawn_floor_ms": round(spawn_floor() * 1000, 2), **costs,  # one call (ExecStream) per round trip
                 "proof_share_of_round_trip": round(per_call / (statistics.median(a) * 1000), 4)}
    what = ("exec round trip through the agent: `script.run(\"/bin/true\")` vs `exec_run([\"true\"])`"
            if executor == "agent" else "exec round trip through `docker exec` (an image without python3)")
    return row("exec" if executor == "agent" else "exec-docker", what, "ms", a, b, f"ratio <= {limit}",
               lambda r: r <= limit, notes)


def proof_costs(rounds: int = 2000, remembered: int = 100_000) -> dict[str, float | str]:
    """What a call's proof costs, in microseconds of one core, for the round trip's request: the
    requestor serializes it again and signs (its SHA-256 included: proof_sign_us); the daemon
    hashes the bytes it received (proof_hash_us), verifies the signature and records the nonce
    (proof_verify_us). And the bytes a remembered nonce holds (nonce_ledger_bytes_each)."""
    import tracemalloc

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


def spawn_floor(rounds: int = 50) -> float:
    """Median time to start `/bin/true` and reap it, directly on this host: what no executor beats."""
    times = []
    for _ in range(rounds):
        elapsed = stopwatch()
        os.waitpid(os.posix_spawn("/bin/true", ["true"], os.environ), 0)
        times.append(elapsed())
    return statistics.median(times)


async def case_background(golem: Golem, client: docker.DockerClient, states: States, rounds: int) -> Row:
    """`sleep 30 &` and then `true`: how long the second command takes after the first, to its
    answer. Both sides run both commands the same way; only the second is timed on either."""
    worker = await running_worker(golem, states)
    container = raw_container(client)

    async def ours() -> float:
        await worker.submit(command_script("/bin/sh", "-c", "sleep 30 &"))
        elapsed = stopwatch()
        await worker.submit(command_script("/bin/true"))
        return elapsed() * 1000

    async def raw() -> float:
        await asyncio.to_thread(container.exec_run, ["/bin/sh", "-c", "sleep 30 &"])
        return await raw_true(container)() * 1000

    a, b = await alternate("background", rounds, ours, raw)
    container.remove(force=True, v=True)
    await worker.cluster.terminate()
    return row("background", "next command after `sleep 30 &` (a background child holding stdout)", "ms", a, b,
               "ratio <= 0.1", lambda r: r <= 0.1)


def raw_start(client: docker.DockerClient):
    """`containers.run` and the first `exec_run(["true"])`, to its answer; the container."""
    container = raw_container(client)
    container.exec_run(["true"])
    return container


async def case_start(golem: Golem, client: docker.DockerClient, rounds: int) -> Row:
    """One service started until its first command's answer (`run_service` of a service whose run
    handler runs `/bin/true`) against `containers.run` and the first `exec_run(["true"])`.
    Neither side's removal is timed."""
    async def ours() -> float:
        started = time.perf_counter()
        cluster = await golem.run_service(FirstTrue)
        took = await first_answers(cluster.instances) - started
        await cluster.terminate()
        return took * 1000

    def raw_once() -> float:
        elapsed = stopwatch()
        container = raw_start(client)
        took = elapsed()
        container.remove(force=True, v=True)
        return took * 1000

    async def raw() -> float:
        return await asyncio.to_thread(raw_once)

    a, b = await alternate("start", rounds, ours, raw)
    return row("start", "service start, until the first command's answer: `run_service` + `run /bin/true` vs "
               "`containers.run` + `exec_run([\"true\"])`", "ms", a, b, "ratio <= 0.52 (before the agent)",
               lambda r: r <= 0.52)


async def case_scale(golem: Golem, client: docker.DockerClient, daemon: Daemon, count: int, rounds: int) -> Row:
    """`count` instances started at once until every one's first command has answered, against
    `count` containers from `count` threads, each `containers.run` + `exec_run(["true"])`. The
    daemon's RSS per live activity is taken with all of ours running."""
    per_activity: list[float] = []
    before_mib: list[float] = []

    async def ours() -> float:
        before = daemon.reset_peak()
        started = time.perf_counter()
        cluster = await golem.run_service(FirstTrue, num_instances=count)
        took = await first_answers(cluster.instances) - started
        per_activity.append((daemon.rss() - before) / count / MIB)
        before_mib.append(before / MIB)
        await cluster.terminate()
        return took

    def raw_once() -> float:
        elapsed = stopwatch()
        with ThreadPoolExecutor(max_workers=count) as pool:
            containers = list(pool.map(lambda _: raw_start(client), range(count)))
        took = elapsed()
        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(lambda c: c.remove(force=True, v=True), containers))
        return took

    async def raw() -> float:
        return await asyncio.to_thread(raw_once)

    a, b = await alternate("scale", rounds, ours, raw)
    worst = max(per_activity)
    return row("scale", f"scale-out: {count} instances until every first command answered vs {count} containers "
               f"(`containers.run` + `exec_run`) from {count} threads", "s", a, b,
               "ratio <= 0.39 (before the agent); <= 2 MiB/activity", lambda r: r <= 0.39 and worst <= 2.0,
               {"daemon_mib_per_live_activity_max": round(worst, 3), "daemon_rss_before_mib": round(before_mib[0], 1)})


async def case_remote(golem: Golem, client: docker.DockerClient, states: States, rounds: int, size: int,
                      output_rounds: int, transfer_size: int, transfer_rounds: int) -> list[Row]:
    """The same `/bin/true` round trip and output stream to a daemon on a simulated host, over TLS
    with per-call proofs, against raw `exec_run` (the round trip) and the loopback daemon in
    plaintext (the output: the same `head -c` through the same requestor, only the link differs);
    and uploads and downloads to that daemon against the engine's archive calls here (issue 28:
    over TLS from another host, at least 0.8x of Docker's own path)."""
    with SimulatedLan() as lan:
        lan.attach_here()
        provider = ProviderDaemon(lan.add_host("p1"), "--cpu-overcommit", "40", "--activity-preset", "none",
                                  "--price-cpu-sec", "0.000001",
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
                for n in range(1, rounds + 1):
                    if n in (1, rounds):
                        say(f"remote: round trip, round {n}/{rounds}")
                    tls.append(await true_round_trip(far) * 1000)
                    plain.append(await true_round_trip(near) * 1000)
                    raw_times.append(await raw() * 1000)
                await output.of(far), await output.of(near)

                async def far_output() -> float:
                    return await output.of(far)

                async def near_output() -> float:
                    return await output.of(near)

                tls_out, plain_out = await alternate("remote: output", output_rounds, far_output, near_output)
                with tempfile.TemporaryDirectory(prefix="exeunit-bench-remote-") as scratch:
                    pair = TransferPair(far, client, transfer_size, Path(scratch))
                    await pair.ours("upload"), await pair.raw("upload")  # warm up both paths
                    moved = {d: await alternate(f"remote: {d}", transfer_rounds, lambda d=d: pair.ours(d),
                                                lambda d=d: pair.raw(d)) for d in ("upload", "download")}
                    pair.close()
                container.remove(force=True, v=True)
                for cluster in (far.cluster, near.cluster):
                    await cluster.terminate()
        finally:
            provider.stop()
    plain_ms = statistics.median(plain)
    return [
        row("remote", "exec round trip to a daemon on another (simulated) host, over TLS with per-call proofs, "
            "vs raw `exec_run`", "ms", tls, raw_times, "ratio <= 0.1", lambda r: r <= 0.1,
            {"loopback_plaintext_ms": round(plain_ms, 3),
             "tls_vs_loopback": round(statistics.median(tls) / plain_ms, 2)}),
        row("remote-output", f"output stream over TLS from another host ({size // MIB} MiB) vs the loopback "
            "daemon in plaintext", "MiB/s", tls_out, plain_out, "reported (raw = loopback plaintext)", lambda r: True),
        *(row(f"remote-{d}", f"{d} {transfer_size // MIB} MiB over TLS from another host vs `{call}` here", "MiB/s",
              *moved[d], "ratio >= 0.8", lambda r: r >= 0.8)
          for d, call in (("upload", "put_archive"), ("download", "get_archive"))),
    ]
