#!/usr/bin/env python3
"""goth's agreement-termination requestor, in its style, with the import renamed and a local
image: the first worker sends a command that does not exist, so its `yield` raises
CommandExecutionError and it ends; its agreement must end "Cancelled" with no further task on it,
and the other workers compute all six tasks. Every event's repr is printed (stderr)."""
import asyncio
import logging
from datetime import timedelta

from requestor import Golem, Task, WorkContext
from requestor.log import enable_default_logger
from requestor.payload import vm


async def main():
    package = await vm.repo(
        image_tag="exeunit-base:latest",
        min_mem_gib=0.5,
        min_storage_gib=2.0,
    )

    first_worker = True

    async def worker(ctx: WorkContext, tasks):
        """A worker for `Golem.execute_tasks()`.

        The first one made sends a `run` of a command the provider cannot find, so its
        `yield script` raises `CommandExecutionError` (which it lets through).

        Every later one sleeps a second per task, as if it worked.
        """

        nonlocal first_worker
        should_fail = first_worker
        first_worker = False

        async for task in tasks:
            script = ctx.new_script()

            if should_fail:
                # a command that fails on the provider
                script.run("xyz")
                yield script
            else:
                # stands for some work
                script.run("/bin/sleep", "1")
                yield script

            task.accept_result()

    async with Golem(
        budget=10.0,
        subnet_tag="goth",
        payment_network="holesky",
    ) as golem:
        tasks = [Task(data=n) for n in range(6)]
        async for task in golem.execute_tasks(
            worker,
            tasks,
            package,
            max_workers=1,
            timeout=timedelta(minutes=6),
        ):
            print(f"Task computed: {task}, time: {task.running_time}")

        print("All tasks computed")


if __name__ == "__main__":
    enable_default_logger(log_file="test.log")

    console_handler = logging.StreamHandler()
    console_handler.setLevel(logging.DEBUG)
    logging.getLogger("requestor.events").addHandler(console_handler)

    loop = asyncio.new_event_loop()
    task = loop.create_task(main())

    try:
        loop.run_until_complete(task)
    except KeyboardInterrupt:
        print("Shutting down gracefully...")
        task.cancel()
        try:
            loop.run_until_complete(task)
            print("Shutdown completed")
        except (asyncio.CancelledError, KeyboardInterrupt):
            pass
