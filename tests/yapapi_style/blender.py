#!/usr/bin/env python3
"""yapapi's blender example, in its style, with the import renamed and the local stand-in of its
image (images/blender: Debian's blender, /golem/entrypoints/run-blender.sh rendering what
/golem/work/params.json asks for). One task per frame: each uploads the render parameters, runs
the entrypoint and downloads the frame as output_<frame>.png.

The scene is ours, made when the image is built; copy it next to this script first:

    docker run --rm exeunit-blender:latest cat /golem/scenes/cubes.blend > cubes.blend

Besides the example's options: --scene, and --frames, --resolution and --samples for a quicker run."""
import pathlib
import sys
from datetime import datetime, timedelta

from requestor import Golem, Task, WorkContext
from requestor.payload import vm
from requestor.rest.activity import BatchTimeoutError

sys.path.append(str(pathlib.Path(__file__).resolve().parent))

from utils import (  # noqa: E402
    TEXT_COLOR_CYAN,
    TEXT_COLOR_DEFAULT,
    TEXT_COLOR_MAGENTA,
    TEXT_COLOR_RED,
    build_parser,
    print_env_info,
    run_golem_example,
)

IMAGE_TAG = "exeunit-blender:latest"


async def main(subnet_tag, min_cpu_threads, scene_path, frames, resolution, samples,
               payment_driver=None, payment_network=None, show_usage=False):
    package = await vm.repo(
        image_tag=IMAGE_TAG,
        # providers offering at least half a gigabyte of memory for the activity
        min_mem_gib=0.5,
        # and two gigabytes of storage for its volumes
        min_storage_gib=2.0,
        # and at least this many CPU threads
        min_cpu_threads=min_cpu_threads,
    )

    async def worker(ctx: WorkContext, tasks):
        # The first script uploads the scene as well, so it gets the longer timeout; the ones for
        # later frames on the same provider only render.
        script = ctx.new_script(timeout=timedelta(minutes=10))
        script.upload_file(scene_path, "/golem/resource/scene.blend")

        async for task in tasks:
            frame = task.data
            crops = [{"outfilebasename": "out", "borders_x": [0.0, 1.0], "borders_y": [0.0, 1.0]}]
            script.upload_json(
                {
                    "scene_file": "/golem/resource/scene.blend",
                    "resolution": resolution,
                    "use_compositing": False,
                    "crops": crops,
                    "samples": samples,
                    "frames": [frame],
                    "output_format": "PNG",
                    "RESOURCES_DIR": "/golem/resource",
                    "WORK_DIR": "/golem/work",
                    "OUTPUT_DIR": "/golem/output",
                },
                "/golem/work/params.json",
            )

            script.run("/golem/entrypoints/run-blender.sh")
            output_file = f"output_{frame}.png"
            script.download_file(f"/golem/output/out{frame:04d}.png", output_file)
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

            # a fresh script for the next frame this provider renders
            script = ctx.new_script(timeout=timedelta(minutes=1))

            if show_usage:
                raw_state = await ctx.get_raw_state()
                usage = await ctx.get_usage()
                cost = await ctx.get_cost()
                print(
                    f"{TEXT_COLOR_MAGENTA}"
                    f" --- {ctx.provider_name} STATE: {raw_state}\n"
                    f" --- {ctx.provider_name} USAGE: {usage}\n"
                    f" --- {ctx.provider_name}  COST: {cost}"
                    f"{TEXT_COLOR_DEFAULT}"
                )

    # Minutes: three for negotiation and transfers, two per frame, kept within what providers
    # accept (between 6 and 30).
    timeout = timedelta(minutes=max(min(3 + len(frames) * 2, 30), 6))

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
            timeout=timeout,
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


def resolution_arg(text):
    width, _, height = text.partition("x")
    return [int(width), int(height)]


if __name__ == "__main__":
    parser = build_parser("Render a Blender scene")
    parser.add_argument("--show-usage", action="store_true", help="show activity usage and cost")
    parser.add_argument("--min-cpu-threads", type=int, default=1,
                        help="require the provider nodes to have at least this number of available CPU threads")
    parser.add_argument("--scene", type=pathlib.Path,
                        default=pathlib.Path(__file__).resolve().parent / "cubes.blend", help="the .blend to render")
    parser.add_argument("--frames", type=lambda text: [int(f) for f in text.split(",")],
                        default=list(range(0, 60, 10)), help="comma-separated frame numbers (default 0,10,...,50)")
    parser.add_argument("--resolution", type=resolution_arg, default=[400, 300], help="WIDTHxHEIGHT (default 400x300)")
    parser.add_argument("--samples", type=int, default=100, help="Cycles samples per pixel (default 100)")
    now = datetime.now().strftime("%Y-%m-%d_%H.%M.%S")
    parser.set_defaults(log_file=f"blender-requestor-{now}.log")
    args = parser.parse_args()
    if not args.scene.is_file():
        parser.error(f"no scene at {args.scene}: copy ours out of the image with "
                     f"`docker run --rm {IMAGE_TAG} cat /golem/scenes/cubes.blend > {args.scene}`")

    run_golem_example(
        main(
            subnet_tag=args.subnet_tag,
            min_cpu_threads=args.min_cpu_threads,
            scene_path=str(args.scene),
            frames=args.frames,
            resolution=args.resolution,
            samples=args.samples,
            payment_driver=args.payment_driver,
            payment_network=args.payment_network,
            show_usage=args.show_usage,
        ),
        log_file=args.log_file,
    )
