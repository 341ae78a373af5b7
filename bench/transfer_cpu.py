"""CPU per MiB moved, by thread, at both ends of an upload, a download or a command's output.

    python bench/transfer_cpu.py up 6      # six 256 MiB uploads through the requestor library
    python bench/transfer_cpu.py down 6    # six 256 MiB downloads
    python bench/transfer_cpu.py out 6     # six commands printing 256 MiB to stdout, streamed

A daemon (`exeunit serve`, as bench/run.py starts it) and a requestor in this process move a 256
MiB file to and from a worker's /golem/work, after one warm-up transfer. Prints, for the requestor
and the daemon (and for output, the container's agent), the six busiest threads' CPU milliseconds
per MiB (the event loop is the process's thread whose id is its pid): where the time goes, which a
wall-clock ratio on a 2-core machine hides. Before that, a line for each transfer: its rate and
the user and system CPU of both processes per MiB. On this project's machine a round now and then
runs at half the rate of the others, and such a round shows two to five times the usual system
time in the process that writes the file (the requestor, for a download), nowhere else; a likely
cause is the VM (its balloon reports freed pages to the host, which must hand them back when the
page cache takes them again). Not a ratio and not part of the record: a tool to see
what a change to the data path buys.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.common import MIB, Daemon, States, running_worker, stopwatch  # noqa: E402
from requestor import Golem  # noqa: E402

SIZE_MIB = 256


def per_mib(after, before) -> str:
    """User and system CPU between two cpu_times() of a process, in ms per MiB moved."""
    user, system = (after.user - before.user) / SIZE_MIB * 1000, (after.system - before.system) / SIZE_MIB * 1000
    return f"{user + system:.2f} (user {user:.2f}, system {system:.2f})"


def thread_cpu(process: psutil.Process) -> dict[int, float]:
    return {t.id: t.user_time + t.system_time for t in process.threads()}


def busiest(process: psutil.Process, before: dict[int, float], mib: int) -> list[tuple[int, float]]:
    spent = sorted(((t.user_time + t.system_time - before.get(t.id, 0.0), t.id) for t in process.threads()),
                   reverse=True)[:6]
    return [(tid, round(seconds / mib * 1000, 2)) for seconds, tid in spent]


async def main(direction: str, count: int) -> None:
    daemon = Daemon()
    states = States()
    with tempfile.TemporaryDirectory(prefix="exeunit-transfer-cpu-") as scratch:
        source, target = Path(scratch) / "payload.bin", Path(scratch) / "back.bin"
        with open(source, "wb") as out:
            block = os.urandom(MIB)
            for _ in range(SIZE_MIB):
                out.write(block)
        try:
            async with Golem(budget=10.0, subnet_tag="public", providers=[f"127.0.0.1:{daemon.port}"],
                             event_consumer=states) as golem:
                worker = await running_worker(golem, states)

                def up(ctx):
                    script = ctx.new_script()
                    script.upload_file(source, "/golem/work/payload.bin")
                    return script

                def down(ctx):
                    script = ctx.new_script()
                    script.download_file("/golem/work/payload.bin", target)
                    return script

                def out(ctx):  # streamed to the requestor, not kept (as the bench's output case)
                    script = ctx.new_script()
                    script.run("/usr/bin/head", "-c", str(SIZE_MIB * MIB), "/dev/zero", output_limit=0)
                    return script

                await worker.submit(up)  # the file is there to download, and both paths are warm
                me, provider = psutil.Process(), psutil.Process(daemon.process.pid)
                agents = [p for p in psutil.process_iter(["cmdline"])  # the worker's container agent
                          if any(part.endswith("/agent.py") for part in p.info["cmdline"] or ())] if direction == "out" else []
                mine, theirs = thread_cpu(me), thread_cpu(provider)
                agent_before = {a.pid: thread_cpu(a) for a in agents}
                for _ in range(count):
                    target.unlink(missing_ok=True)
                    os.sync()  # as bench/run.py settles its transfers: no round pays for the last one's pages
                    ours, daemons = me.cpu_times(), provider.cpu_times()
                    elapsed = stopwatch()
                    await worker.submit({"up": up, "down": down, "out": out}[direction])
                    took = elapsed()
                    print(f"  {SIZE_MIB / took:6.0f} MiB/s; CPU ms per MiB: requestor {per_mib(me.cpu_times(), ours)}, "
                          f"daemon {per_mib(provider.cpu_times(), daemons)}", flush=True)
                moved = SIZE_MIB * count
                print(f"{direction}: {moved} MiB; CPU ms per MiB by thread (thread id, ms)")
                print(f"  requestor (its event loop is thread {me.pid}): {busiest(me, mine, moved)}")
                print(f"  daemon (its event loop is thread {provider.pid}): {busiest(provider, theirs, moved)}")
                for agent in agents:
                    print(f"  agent {agent.pid}: {busiest(agent, agent_before[agent.pid], moved)}")
                await worker.cluster.terminate()
        finally:
            daemon.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("direction", choices=("up", "down", "out"))
    parser.add_argument("count", type=int, nargs="?", default=6, help="transfers of 256 MiB (default: 6)")
    args = parser.parse_args()
    asyncio.run(main(args.direction, args.count))
