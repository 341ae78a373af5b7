#!/usr/bin/env python3
"""goth's async-task-generation requestor, in its style, with the import renamed and a local
image: the tasks come from an async generator reading a queue, and each result puts new tasks
on it (a result n gives n tasks of n - 1), until a task of 0 ends the input: 3, then 2 three
times, then 1 six times."""
import asyncio
import pathlib
import sys
from datetime import timedelta

from requestor import Golem, Task
from requestor.log import enable_default_logger, log_event_repr
from requestor.payload import vm


async def main():
    vm_package = await vm.repo(
        image_tag="exeunit-base:latest",
        min_mem_gib=0.5,
        min_storage_gib=2.0,
    )

    async def worker(work_ctx, tasks):
        async for task in tasks:
            script = work_ctx.new_script()
            print("task data:", task.data, file=sys.stderr)
            script.run("/bin/sleep", "1")
            yield script
            task.accept_result(result=task.data)

    async with Golem(
        budget=10.0,
        subnet_tag="goth",
        event_consumer=log_event_repr,
        payment_network="holesky",
    ) as golem:
        # The input is an async generator that takes its tasks off an asyncio queue; the loop
        # below puts more on it for each result, which only works because `execute_tasks`
        # reads its input as it goes.

        task_queue = asyncio.Queue()

        # the first task, to start with:
        await task_queue.put(Task(data=3))

        async def input_generator():
            """The tasks, as they come off `task_queue`."""
            while True:
                task = await task_queue.get()
                if task.data == 0:
                    break
                yield task

        async for task in golem.execute_tasks(
            worker,
            input_generator(),
            vm_package,
            max_workers=1,
            timeout=timedelta(minutes=6),
        ):
            print("task result:", task.result, file=sys.stderr)
            for n in range(task.result):
                await task_queue.put(Task(data=task.result - 1))

        print("all done!", file=sys.stderr)


if __name__ == "__main__":
    test_dir = pathlib.Path(__file__).stem
    enable_default_logger(log_file=f"{test_dir}.log")
    asyncio.run(main())
