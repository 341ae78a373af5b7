#!/usr/bin/env python3
"""yapapi's hello-world task example, in its style, with the import renamed and the local
stand-in of its image (images/hello-world: /golem/input a volume, /golem/work the working
directory): one task that runs `date` on a provider and prints what it said."""
import asyncio
from typing import AsyncIterable

from requestor import Golem, Task, WorkContext
from requestor.log import enable_default_logger
from requestor.payload import vm


async def worker(context: WorkContext, tasks: AsyncIterable[Task]):
    async for task in tasks:
        script = context.new_script()
        future_result = script.run("/bin/sh", "-c", "date")

        yield script

        task.accept_result(result=await future_result)


async def main():
    package = await vm.repo(image_tag="exeunit-hello-world:latest")

    tasks = [Task(data=None)]

    async with Golem(budget=1.0, subnet_tag="public") as golem:
        async for completed in golem.execute_tasks(worker, tasks, payload=package):
            print(completed.result.stdout)


if __name__ == "__main__":
    enable_default_logger(log_file="hello.log")

    loop = asyncio.new_event_loop()
    task = loop.create_task(main())
    loop.run_until_complete(task)
