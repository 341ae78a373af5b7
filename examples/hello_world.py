#!/usr/bin/env python3
"""Hello world of the Service API: two instances, each writing the date to a file in the
background (started in `start`) and read back every few seconds (in `run`).

    python examples/hello_world.py                # embedded provider, one minute
    python examples/hello_world.py --duration 10
    GOLEM_PROVIDERS=127.0.0.1:50051,127.0.0.1:50052 python examples/hello_world.py

Stops after --duration seconds or on Ctrl-C; running instances go through shutdown.
"""

from __future__ import annotations

import argparse
import asyncio
from datetime import datetime, timedelta, timezone

from requestor import Golem, RequestorError
from requestor.log import enable_default_logger
from requestor.payload import vm
from requestor.services import Service, ServiceState

DATE_FILE = "/golem/work/date.txt"


class DateService(Service):
    @staticmethod
    async def get_payload():
        return await vm.repo(image_tag="exeunit-base:latest", min_mem_gib=0.25, min_storage_gib=0.5)

    async def start(self):
        async for script in super().start():  # deploy + start
            yield script
        script = self._ctx.new_script()
        # The background loop's output goes to /dev/null, so the command itself ends at once.
        script.run("/bin/sh", "-c", f"(while true; do date > {DATE_FILE}; sleep 1; done) > /dev/null 2>&1 &")
        yield script

    async def run(self):
        while True:
            await asyncio.sleep(3)
            script = self._ctx.new_script()
            result = script.run("/bin/cat", DATE_FILE)
            yield script
            print(f"{self.provider_name} [{self.id[:6]}]: {(await result).stdout.strip()}", flush=True)


async def main(duration: float, instances: int) -> None:
    async with Golem(budget=1.0, subnet_tag="public") as golem:
        print(f"providers: {', '.join(golem.providers)}", flush=True)
        cluster = await golem.run_service(
            DateService, num_instances=instances, expiration=datetime.now(timezone.utc) + timedelta(minutes=15)
        )
        try:
            await asyncio.sleep(duration)
        finally:
            print(f"stopping {cluster}", flush=True)
            await cluster.terminate()
        failed = [i for i in cluster.instances if i.exc_info[1] is not None]
        states = {instance.state for instance in cluster.instances}
        assert states == {ServiceState.terminated}, states
        spent = golem.budget.spent
    if failed:  # never placed (no provider could take it), or failed on its provider
        raise SystemExit(f"{len(failed)} of {len(cluster.instances)} instances failed: {failed[0].exc_info[1]}")
    print(f"all instances terminated; spent {spent:.6f} of {golem.budget.amount}", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=60, help="seconds to run before stopping (default: 60)")
    parser.add_argument("--instances", type=int, default=2, help="number of instances (default: 2)")
    args = parser.parse_args()
    enable_default_logger()
    try:
        asyncio.run(main(args.duration, args.instances))
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM with an embedded provider
        print("interrupted", flush=True)
    except RequestorError as error:
        raise SystemExit(f"error: {error}") from None
