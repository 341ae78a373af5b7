#!/usr/bin/env python3
"""The requestor of goth's power-outage scenario, in the shape of yapapi's blender example (its
arguments, frames 0 to 50 step 10, six workers, the scene uploaded once per worker, each frame's
parameters uploaded and its output downloaded), with the import renamed and the base image: the
render is a stand-in (`sleep`, then the output file written). goth stops a provider once its first
task has started; the frames must all be computed on the other one."""
import pathlib
import sys
import tempfile
from datetime import datetime, timedelta

from requestor import BatchTimeoutError, Golem, Task, WorkContext
from requestor.payload import vm

sys.path.append(str(pathlib.Path(__file__).resolve().parent))

from utils import (  # noqa: E402
    TEXT_COLOR_CYAN,
    TEXT_COLOR_DEFAULT,
    TEXT_COLOR_RED,
    build_parser,
    print_env_info,
    run_golem_example,
)

RENDER_SECONDS = 2  # how long the stand-in render of one frame takes


async def main(subnet_tag, min_cpu_threads, payment_driver=None, payment_network=None):
    package = await vm.repo(
        image_tag="exeunit-base:latest",
        # providers with at least 0.5 GiB of memory for the activity
        min_mem_gib=0.5,
        # and at least 2 GiB of storage
        min_storage_gib=2.0,
        # and this many cpu threads
        min_cpu_threads=min_cpu_threads,
    )
    scene = pathlib.Path(tempfile.mkdtemp()) / "scene.txt"
    scene.write_text("three cubes\n")

    async def worker(ctx: WorkContext, tasks):
        # The first script of a worker may wait for the provider's first start of the image:
        # it gets more time than the frames after it.
        script = ctx.new_script(timeout=timedelta(minutes=10))
        script.upload_file(str(scene), "/golem/input/scene.txt")

        async for task in tasks:
            frame = task.data
            script.upload_json(
                {"scene_file": "/golem/input/scene.txt", "frames": [frame], "output_format": "PNG",
                 "OUTPUT_DIR": "/golem/output"},
                "/golem/work/params.json",
            )
            output = f"/golem/output/out{frame:04d}.png"
            render = f"sleep {RENDER_SECONDS} && cat /golem/work/params.json /golem/input/scene.txt > {output}"
            script.run("/bin/sh", "-c", render)
            output_file = f"output_{frame}.png"
            script.download_file(output, output_file)
            try:
                yield script
                task.accept_result(result=output_file)
            except BatchTimeoutError:
                print(
                    f"{TEXT_COLOR_RED}"
                    f"Task {task} timed out on {ctx.provider_name}, time: {task.running_time}"
                    f"{TEXT_COLOR_DEFAULT}"
                )
                raise

            # a fresh script for the next frame
            script = ctx.new_script(timeout=timedelta(minutes=1))

    frames: range = range(0, 60, 10)

    async with Golem(
        budget=10.0,
        subnet_tag=subnet_tag,
        payment_driver=payment_driver,
        payment_network=payment_network,
    ) as golem:
        print_env_info(golem)

        num_tasks = 0
        start_time = datetime.now()

        completed_tasks = golem.execute_tasks(
            worker,
            [Task(data=frame) for frame in frames],
            payload=package,
            max_workers=6,
            timeout=timedelta(minutes=6),
        )
        async for task in completed_tasks:
            num_tasks += 1
            print(
                f"{TEXT_COLOR_CYAN}"
                f"Task computed: {task}, result: {task.result}, time: {task.running_time}"
                f"{TEXT_COLOR_DEFAULT}"
            )

        print(
            f"{TEXT_COLOR_CYAN}"
            f"{num_tasks} tasks computed, total time: {datetime.now() - start_time}"
            f"{TEXT_COLOR_DEFAULT}"
        )


if __name__ == "__main__":
    parser = build_parser("Render frames (a stand-in render), as the blender example does")
    parser.add_argument("--min-cpu-threads", type=int, default=1,
                        help="only providers with at least this many cpu threads for the activity")
    now = datetime.now().strftime("%Y-%m-%d_%H.%M.%S")
    parser.set_defaults(log_file=f"frames-requestor-{now}.log")
    args = parser.parse_args()

    run_golem_example(
        main(
            subnet_tag=args.subnet_tag,
            min_cpu_threads=args.min_cpu_threads,
            payment_driver=args.payment_driver,
            payment_network=args.payment_network,
        ),
        log_file=args.log_file,
    )
