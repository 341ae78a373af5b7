#!/usr/bin/env python3
"""How close to raw Docker the whole stack runs, as ratios measured in one run.

    python bench/run.py                        # the record: every case, full sizes, bench/latest.json
    python bench/run.py --quick --only start   # a try: smaller sizes, a temporary file

Each case runs our stack (requestor -> `exeunit serve` in its own process -> container) and the
raw docker SDK doing the same work, ending at the same point (a command's answer, a file in
place, the last byte read), alternating A, B, A, B for at least three rounds. Each figure is kept
as min / median / max of the rounds, on both sides and for the ratio of each round's pair
(bench/common.py). The daemon's resident memory is sampled with psutil throughout. Prints one
table; `python bench/report.py` renders the record as Markdown for docs/bench.md.

Only a full run of every case writes the record, bench/latest.json, with the machine and the
commit it ran on: a `--quick` or `--only` run goes to a temporary file and refuses the record's
path, so that a partial or small run is never taken for it. The daemons run with `--activity-preset
none`, as the raw side's containers have no floor either (and 50 activities of the default preset's
2 GiB would not fit in this machine's memory). Never asserts: the machine is noisy,
read the ratios and their spread.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import shlex
import subprocess
import sys
import tempfile
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

import docker
import psutil

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.cases_data import case_output, case_transfer, case_tunnel  # noqa: E402
from bench.cases_exec import case_background, case_exec, case_remote, case_scale, case_start  # noqa: E402
from bench.cases_load import case_attack, case_memory, case_span  # noqa: E402
from bench.cases_tasks import case_scale_100, case_task_memory, case_tasks  # noqa: E402
from bench.common import Daemon, Row, States, say  # noqa: E402
from requestor import Golem  # noqa: E402

RECORD = REPO / "bench" / "latest.json"
TRY_OUTPUT = Path(tempfile.gettempdir()) / "exeunit-bench-try.json"
FORMAT = 2  # rows with min / median / max per side and ratio (bench/report.py reads this one only)

CASES = ("exec", "start", "scale", "output", "transfer", "tunnel", "background", "memory", "attack", "remote", "span",
         "tasks", "task-memory", "scale-100")

# Rounds: at least three everywhere in full mode. A round of exec is one round trip; of attack,
# a minute of attack and the idle figure before it; of memory, 1,000 activities and 25 s of wait.
# Transfers take 12 and output 16: a single pair varies by a factor of two now and then on this
# machine, when a round's writer is handed slow pages (bench/transfer_cpu.py shows those rounds'
# system time), so that 6 pairs' median could not tell 0.9 from 1.1.
FULL = dict(rounds=25, start_rounds=9, scale=50, scale_rounds=3, output=100 * 1000 * 1000, output_rounds=16,
            transfer=256 << 20, transfer_rounds=12, tunnel=128 << 20, tunnel_rounds=8, background_rounds=3,
            memory_activities=1000, memory_rounds=3, attack_seconds=60, attack_rounds=3, span=512, span_rounds=3,
            tasks=1000, tasks_rounds=3, task_memory=34_000, task_memory_rounds=3, scale_100=(100, 10), scale_100_rounds=3)
QUICK = dict(rounds=7, start_rounds=3, scale=10, scale_rounds=2, output=20 * 1000 * 1000, output_rounds=3,
             transfer=64 << 20, transfer_rounds=2, tunnel=32 << 20, tunnel_rounds=3, background_rounds=2,
             memory_activities=100, memory_rounds=1, attack_seconds=15, attack_rounds=1, span=128, span_rounds=1,
             tasks=1000, tasks_rounds=2, task_memory=5000, task_memory_rounds=1, scale_100=(20, 4), scale_100_rounds=1)


def print_table(rows: list[Row]) -> None:
    """Median, then min-max, per side and for the ratio."""
    def cell(spread: dict[str, float] | None, digits: int) -> str:
        if spread is None:
            return "-"
        return f"{spread['median']:.{digits}f} [{spread['min']:.{digits}f}-{spread['max']:.{digits}f}]"

    header = (f"{'case':<14} {'ours (median [min-max])':>28} {'raw (median [min-max])':>28} {'unit':>6} "
              f"{'ratio (median [min-max])':>26} {'n':>3}  met  target")
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r.case:<14} {cell(r.ours, 2):>28} {cell(r.raw, 2):>28} {r.unit:>6} {cell(r.ratio, 3):>26} "
              f"{r.rounds:>3}  {'yes' if r.met else 'NO ':<3}  {r.target}" + (f"  {r.notes}" if r.notes else ""))


def git(*args: str) -> str:
    """Its output less the last newline (a porcelain line starts with a space: not stripped)."""
    return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=True).stdout.rstrip("\n")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine(client: docker.DockerClient, quick: bool, only: list[str] | None, started: datetime) -> dict:
    """Where and how the record was made, down to the command line that makes it again."""
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return {
        "date": started.isoformat(timespec="seconds"),
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "commit": git("rev-parse", "HEAD"), "dirty": bool(dirty),
        "dirty_files": [line[3:] for line in dirty.splitlines()],
        "cores": psutil.cpu_count(), "physical_cores": psutil.cpu_count(logical=False),
        "cpu_model": cpu_model(), "memory_gib": round(psutil.virtual_memory().total / (1 << 30), 1),
        "kernel": platform.release(), "python": platform.python_version(),
        "docker": client.version().get("Version"),
        "mode": "quick" if quick else "full", "only": only,
        "command": shlex.join(getattr(sys, "orig_argv", [sys.executable, *sys.argv])),
    }


async def main(quick: bool, output: Path, only: list[str] | None = None) -> list[Row]:
    started = datetime.now(timezone.utc)
    client = docker.from_env(max_pool_size=64)  # the scale-out case opens 50 connections at once
    daemon = Daemon()
    states = States()
    rows: list[Row] = []
    n = QUICK if quick else FULL
    try:
        async with Golem(budget=100.0, subnet_tag="public", providers=[f"127.0.0.1:{daemon.port}"],
                         event_consumer=states) as golem:
            steps = {
                "exec": lambda: case_exec(golem, client, states, n["rounds"], "agent"),
                "exec-docker": lambda: case_exec(golem, client, states, n["rounds"], "docker-exec"),
                "background": lambda: case_background(golem, client, states, n["background_rounds"]),
                "memory": lambda: case_memory(daemon, n["memory_activities"], n["memory_rounds"]),
                "start": lambda: case_start(golem, client, n["start_rounds"]),
                "scale": lambda: case_scale(golem, client, daemon, n["scale"], n["scale_rounds"]),
                "output": lambda: case_output(golem, client, states, n["output"], n["output_rounds"]),
                "tunnel": lambda: case_tunnel(golem, client, states, n["tunnel"], n["tunnel_rounds"]),
                "attack": lambda: case_attack(daemon, n["attack_seconds"], n["attack_rounds"]),
                "remote": lambda: case_remote(golem, client, states, n["rounds"], n["output"], n["output_rounds"],
                                              n["transfer"], n["transfer_rounds"]),
                "span": lambda: case_span(states, n["span"], n["span_rounds"]),
                "transfer": lambda: transfer(golem, client, states, daemon, n),
                "tasks": lambda: case_tasks(n["tasks"], 5, n["tasks_rounds"]),  # and the workers-start row
                "task-memory": lambda: case_task_memory(n["task_memory"], n["task_memory_rounds"]),
                "scale-100": lambda: case_scale_100(client, *n["scale_100"], n["scale_100_rounds"]),
            }
            names = [x for case in (only or CASES) for x in ((case, "exec-docker") if case == "exec" else (case,))]
            for number, name in enumerate(names, 1):
                say(f"{name}: starting (case {number}/{len(names)})")
                done = await steps[name]()
                rows.extend(done if isinstance(done, list) else [done])
    finally:
        daemon.stop()
        for leftover in client.containers.list(all=True, filters={"label": "io.exeunit.bench=1"}):
            leftover.remove(force=True, v=True)
        for network in client.networks.list(filters={"label": "io.exeunit.bench=1"}):
            network.remove()
    print_table(rows)
    record = {"format": FORMAT, "machine": machine(client, quick, only, started), "rows": [asdict(r) for r in rows]}
    output.write_text(json.dumps(record, indent=2) + "\n")
    print(f"\nwritten to {output}")
    return rows


async def transfer(golem: Golem, client: docker.DockerClient, states: States, daemon: Daemon, n: dict) -> list[Row]:
    with tempfile.TemporaryDirectory(prefix="exeunit-bench-") as scratch:
        return await case_transfer(golem, client, states, daemon, n["transfer"], n["transfer_rounds"], Path(scratch))


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller sizes and fewer rounds (a try, not a record)")
    parser.add_argument("--output", type=Path, default=None,
                        help=f"where the JSON goes (default: {TRY_OUTPUT}; a full run of every case: "
                             "bench/latest.json, the record, which a --quick or --only run refuses)")
    parser.add_argument("--only", nargs="+", choices=CASES, default=None, help="run only these cases (a try)")
    args = parser.parse_args(argv)
    partial = args.quick or args.only is not None
    if args.output is None:
        args.output = TRY_OUTPUT if partial else RECORD
    elif partial and args.output.resolve() == RECORD.resolve():
        parser.error(f"{RECORD.relative_to(REPO)} is the record of a full run of every case: "
                     "a --quick or --only run cannot write it (leave --output out for a temporary file)")
    if partial:
        say(f"a try, not the record: the JSON goes to {args.output}")
    return args


if __name__ == "__main__":
    arguments = parse()
    asyncio.run(main(arguments.quick, arguments.output, arguments.only))
