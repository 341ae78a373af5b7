#!/usr/bin/env python3
"""The seed's tutorial: a service that gathers observations in the background and reports on them.

The image (exeunit-simple-service, built by images/build.py) carries a simulator that stores a
random observation in an SQLite database twice a second. `start` sets the database up and
launches the simulator; `run` asks every few seconds for statistics and for a plot, which it
downloads as a PNG; `shutdown` stops the simulator.

    python examples/simple_service.py --duration 30 --plots-dir plots   # default: a temporary folder
    GOLEM_PROVIDERS=127.0.0.1:50051 python examples/simple_service.py
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import tempfile
from datetime import datetime, timedelta, timezone
from pathlib import Path

from requestor import Golem, RequestorError
from requestor.log import enable_default_logger
from requestor.payload import vm
from requestor.services import Service

SIMPLE_SERVICE = "/golem/run/simple_service.py"
SIMULATION_CTL = "/golem/run/simulate_observations_ctl.py"


class SimpleService(Service):
    def __init__(self, plots_dir: Path, interval: float = 5.0) -> None:
        super().__init__()
        self.plots_dir = plots_dir
        self.interval = interval
        self.plots: list[Path] = []

    @staticmethod
    async def get_payload():
        return await vm.repo(image_tag="exeunit-simple-service:latest", min_mem_gib=0.5, min_storage_gib=1.0)

    async def start(self):
        async for script in super().start():  # deploy + start
            yield script
        script = self._ctx.new_script()
        script.run(SIMULATION_CTL, "--start")
        yield script

    async def run(self):
        while True:
            await asyncio.sleep(self.interval)
            script = self._ctx.new_script()
            stats_result = script.run(SIMPLE_SERVICE, "--stats")  # idx 0
            plot_result = script.run(SIMPLE_SERVICE, "--plot", random.choice(["time", "dist"]))  # idx 1
            yield script

            stats = json.loads((await stats_result).stdout)
            print(f"{self.provider_name}: {stats['count']} observations; "
                  + (f"mean {stats['mean']:.2f}, median {stats['median']:.2f}, variance {stats['variance']:.2f}"
                     if stats["count"] > 1 else "waiting for data"), flush=True)

            remote_plot = json.loads((await plot_result).stdout)
            local_plot = self.plots_dir / Path(remote_plot).name
            script = self._ctx.new_script()
            script.download_file(remote_plot, local_plot)
            yield script
            self.plots.append(local_plot)
            print(f"{self.provider_name}: plot saved to {local_plot}", flush=True)

    async def shutdown(self):
        script = self._ctx.new_script()
        script.run(SIMULATION_CTL, "--stop")
        yield script
        async for script in super().shutdown():  # terminate
            yield script


async def main(duration: float, plots_dir: Path, interval: float) -> None:
    plots_dir.mkdir(parents=True, exist_ok=True)
    async with Golem(budget=1.0, subnet_tag="public") as golem:
        print(f"providers: {', '.join(golem.providers)}", flush=True)
        cluster = await golem.run_service(
            SimpleService,
            instance_params=[{"plots_dir": plots_dir, "interval": interval}],
            expiration=datetime.now(timezone.utc) + timedelta(minutes=15),
        )
        try:
            await asyncio.sleep(duration)
        finally:
            await cluster.terminate()
        [instance] = cluster.instances
        if instance.exc_info[1] is not None:
            raise SystemExit(f"the service failed: {instance.exc_info[1]}")
        print(f"{instance} made {len(instance.plots)} plots in {plots_dir}; "
              f"spent {golem.budget.spent:.6f} of {golem.budget.amount}", flush=True)
        if not instance.plots:
            raise SystemExit("no plot was downloaded; run longer (--duration)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=30, help="seconds to run before stopping (default: 30)")
    parser.add_argument("--interval", type=float, default=5, help="seconds between reports (default: 5)")
    default_plots = Path(tempfile.gettempdir()) / "exeunit-tutorial-plots"
    parser.add_argument("--plots-dir", type=Path, default=default_plots,
                        help="where the downloaded plots go (default: %(default)s)")
    args = parser.parse_args()
    enable_default_logger()
    try:
        asyncio.run(main(args.duration, args.plots_dir, args.interval))
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM with an embedded provider
        print("interrupted", flush=True)
    except RequestorError as error:
        raise SystemExit(f"error: {error}") from None
