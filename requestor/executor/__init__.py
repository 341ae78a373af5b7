"""The Task API, as yapapi's `Golem.execute_tasks`: a job's tasks computed by workers on providers.

    from requestor import Golem, Task, WorkContext

    async def worker(ctx: WorkContext, tasks):
        async for task in tasks:
            script = ctx.new_script()
            result = script.run("/bin/sh", "-c", f"echo {task.data}")
            yield script
            task.accept_result(result=(await result).stdout)

    async with Golem(budget=1.0, subnet_tag="public") as golem:
        async for task in golem.execute_tasks(worker, [Task(data=n) for n in range(5)], payload=package):
            print(task.result)

Here: `task.py` (the Task), `queue.py` (a job's tasks, read lazily, put back, given up),
`worker.py` (one worker on one activity), `job.py` (a job's workers, its end and time limit),
`progress.py` (its progress line on a terminal). Beyond yapapi: attempts per task are bounded
(`max_attempts`, default 5), and so is each attempt (`attempt_timeout`); a provider that failed
three of a job's workers gets no more of them; see `Golem.execute_tasks`.
"""

from requestor.executor.task import DEFAULT_MAX_ATTEMPTS, Task, TaskStatus

__all__ = ["DEFAULT_MAX_ATTEMPTS", "Task", "TaskStatus"]
