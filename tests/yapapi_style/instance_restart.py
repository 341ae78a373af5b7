#!/usr/bin/env python3
"""yapapi's instance-restart integration scenario, in its style, with the import renamed: the
first instance fails in `start` and is replaced; the replacement fails in `run` and is not; an
instance stopped while starting is not replaced either."""
import asyncio
import sys
from datetime import datetime

from requestor import Golem
from requestor.log import enable_default_logger, log_event_repr, log_summary, pluralize  # noqa: F401
from requestor.payload import vm
from requestor.services import Service

instances_started = 0
instances_running = 0
instances_stopped = 0


def log(*args):
    print(*args, file=sys.stderr)


class FirstInstanceFailsToStart(Service):
    @staticmethod
    async def get_payload():
        return await vm.repo(image_tag="exeunit-base:latest", min_mem_gib=0.5, min_storage_gib=2.0)

    async def start(self):
        global instances_started
        async for script in super().start():
            yield script
        script = self._ctx.new_script()
        future_result = script.run("/bin/echo", "STARTING", str(instances_started + 1))
        yield script
        result = await future_result
        log(f"{result.stdout.strip()}")
        instances_started += 1
        if instances_started == 1:
            script = self._ctx.new_script()
            future_result = script.run("/no/such/command")
            yield script
            await future_result
        if instances_started > 2:
            await asyncio.sleep(30)  # until the stop signal

    async def run(self):
        global instances_running
        instances_running += 1
        script = self._ctx.new_script()
        future_result = script.run("/bin/echo", "RUNNING", str(instances_started))
        yield script
        result = await future_result
        log(f"{result.stdout.strip()}")
        script = self._ctx.new_script()
        future_result = script.run("/no/such/command")
        yield script
        await future_result

    async def shutdown(self):
        global instances_stopped
        log("STOPPING", instances_started)
        if False:
            yield
        instances_stopped += 1


async def main():
    async with Golem(budget=1.0, subnet_tag="public", payment_network="holesky",
                     event_consumer=log_summary(log_event_repr)) as golem:
        log("Starting cluster...")
        await golem.run_service(FirstInstanceFailsToStart)
        while not instances_running:
            log("Waiting for an instance...")
            await asyncio.sleep(0.5)
        while not instances_stopped:
            log("Waiting until the instance stops...")
            await asyncio.sleep(0.5)
        log("Starting another cluster...")
        cluster = await golem.run_service(FirstInstanceFailsToStart)
        while instances_started < 3:
            log("Waiting for another instance...")
            await asyncio.sleep(0.5)
        assert [i for i in cluster.instances if i.is_available]
        log("Closing the second cluster...")
        cluster.stop()
        while [i for i in cluster.instances if i.is_available]:
            log("Waiting for the cluster to stop...")
            await asyncio.sleep(0.5)
        log("Cluster stopped")


if __name__ == "__main__":
    now = datetime.now().strftime("%Y-%m-%d_%H.%M.%S")
    enable_default_logger(log_file=f"test-instance-restart-{now}.log", debug_activity_api=True,
                          debug_market_api=True, debug_payment_api=True)
    loop = asyncio.new_event_loop()
    task = loop.create_task(main())
    loop.run_until_complete(task)
