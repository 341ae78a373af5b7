#!/usr/bin/env python3
"""goth's concurrent-executors requestor, in its style, with the import renamed and a local
image: two `Golem.execute_tasks()` jobs at once, in a pipeline: what job ALEF computes is the
input of job BET. The first task either job's workers ever get fails once (a command that does
not exist) and is computed again, so ALEF needs a second agreement and its summary says one
activity failed."""
import asyncio
import pathlib
import sys

from requestor import Golem, Task
from requestor.log import enable_default_logger
from requestor.payload import vm


async def main():
    vm_package = await vm.repo(
        image_tag="exeunit-base:latest",
        min_mem_gib=0.5,
        min_storage_gib=2.0,
    )

    first_task = True

    async def duplicator(work_ctx, tasks):
        """A worker that runs `echo {task.data} {task.data}` on the provider.

        What the command prints is the task's result.

        The very first task this worker function is given fails, and succeeds when it is tried
        again: that exercises retried tasks, a new agreement in place of a failed one, and the
        summary's count of failed activities.
        """
        async for task in tasks:
            nonlocal first_task

            script = work_ctx.new_script()

            if first_task:
                first_task = False
                script.run("/bin/sleep", "1")
                script.run("/command/not/found")

            script.run("/bin/sleep", "1")
            future_result = script.run("/bin/echo", task.data, task.data)
            yield script
            result = await future_result
            output = result.stdout.strip()
            task.accept_result(output)

    async with Golem(budget=1.0, subnet_tag="goth", payment_network="holesky") as golem:
        # The pipeline:
        #
        #   input_tasks -> [ job ALEF ] -> intermediate_tasks -> [ job BET ] -> output_tasks

        input_tasks = [Task(s) for s in "01234567"]

        computed_input_tasks = golem.execute_tasks(
            duplicator,
            input_tasks,
            payload=vm_package,
            max_workers=1,
            job_id="ALEF",
        )

        async def intermediate_tasks():
            async for task in computed_input_tasks:
                print(f"ALEF computed task: {task.data} -> {task.result}", file=sys.stderr)
                yield Task(data=task.result)

        output_tasks = golem.execute_tasks(
            duplicator,
            intermediate_tasks(),
            payload=vm_package,
            max_workers=1,
            job_id="BET",
        )

        async for task in output_tasks:
            print(f"BET computed task: {task.data} -> {task.result}", file=sys.stderr)


if __name__ == "__main__":
    test_dir = pathlib.Path(__file__).stem
    enable_default_logger(log_file=f"{test_dir}.log")
    asyncio.run(main())
