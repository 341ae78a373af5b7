#!/usr/bin/env python3
"""yapapi's scan example, in its style, with the import renamed and a local image (the scan needs
only `cat`, as on alpine: the base stand-in). Each worker reads one provider's CPU model, then
closes its task stream, so that its agreement ends; the strategy turns down providers already
scanned, so every task lands on a provider of its own."""
import logging
import pathlib
import re
import sys
from datetime import datetime
from typing import List

from requestor import Golem, Task, WorkContext
from requestor.log import pluralize
from requestor.payload import vm
from requestor.strategy import SCORE_REJECTED, SCORE_TRUSTED, MarketStrategy

sys.path.append(str(pathlib.Path(__file__).resolve().parent))

from utils import (  # noqa: E402
    TEXT_COLOR_CYAN,
    TEXT_COLOR_DEFAULT,
    TEXT_COLOR_MAGENTA,
    TEXT_COLOR_YELLOW,
    build_parser,
    print_env_info,
    run_golem_example,
)

logger = logging.getLogger(__name__)

IMAGE_TAG = "exeunit-base:latest"

scanned_nodes = set()


class ScanStrategy(MarketStrategy):
    async def score_offer(self, offer):
        node_address = offer.issuer

        # a node scanned once is not worth another agreement
        if node_address in scanned_nodes:
            return SCORE_REJECTED

        return SCORE_TRUSTED


async def main(scan_size: int, max_workers: int, subnet_tag, payment_driver=None, payment_network=None):
    payload = await vm.repo(image_tag=IMAGE_TAG)

    async def worker(ctx: WorkContext, tasks):
        assert ctx.provider_id not in scanned_nodes

        async for task in tasks:
            print(
                f"{TEXT_COLOR_CYAN}"
                f"Getting info for {ctx.provider_id} (aka {ctx.provider_name})"
                f"{TEXT_COLOR_DEFAULT}",
            )
            script = ctx.new_script()

            future_result = script.run("/bin/cat", "/proc/cpuinfo")
            yield script

            result = (await future_result).stdout or ""

            cpu_model_match = re.search("^model name\\s+:\\s+(.*)$", result, flags=re.MULTILINE)
            if cpu_model_match:
                result = cpu_model_match.group(1)
            else:
                result = None

            # remember the node: the strategy turns it down from now on
            scanned_nodes.add(ctx.provider_id)

            # the result goes to the loop in `main`
            task.accept_result((ctx.provider_id, ctx.provider_name, result))

            # one task per node: closing the stream of tasks ends this worker and its agreement
            # (a plain `break` would leave the engine free to give this agreement another task)
            await tasks.aclose()

    async with Golem(
        budget=1,
        strategy=ScanStrategy(),
        subnet_tag=subnet_tag,
        payment_driver=payment_driver,
        payment_network=payment_network,
    ) as golem:
        print_env_info(golem)
        print(
            f"{TEXT_COLOR_YELLOW}Scanning {pluralize(scan_size, 'node')}, "
            f"using {pluralize(max_workers, 'concurrent worker')}.{TEXT_COLOR_DEFAULT}"
        )

        tasks: List[Task] = [Task(i) for i in range(scan_size)]
        async for task in golem.execute_tasks(worker, tasks, payload, max_workers=max_workers):
            print(f"{TEXT_COLOR_MAGENTA}{task.result}{TEXT_COLOR_DEFAULT}")


if __name__ == "__main__":
    parser = build_parser("Scan providers")
    parser.add_argument("--scan-size", help="Number of nodes to scan", type=int, default=5)
    parser.add_argument("--max-workers", help="Number of scans at the same time", type=int, default=3)
    now = datetime.now().strftime("%Y-%m-%d_%H.%M.%S")
    parser.set_defaults(log_file=f"scan-requestor-{now}.log")
    args = parser.parse_args()

    run_golem_example(
        main(
            scan_size=args.scan_size,
            max_workers=args.max_workers,
            subnet_tag=args.subnet_tag,
            payment_driver=args.payment_driver,
            payment_network=args.payment_network,
        ),
        log_file=args.log_file,
    )
