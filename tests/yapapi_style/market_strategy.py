#!/usr/bin/env python3
"""yapapi's market-strategy example, in its style, with the import renamed and the local stand-in
of its image (images/market-strategy: python where python:3.8-alpine keeps it, GNU time). A
strategy of its own keeps how long each provider took and prefers the fastest, after trying
every provider it has not seen; each worker computes one task and closes its stream of tasks, so
that the next task needs a new agreement. The tasks never end: stop it with Ctrl-C."""
import itertools
import pathlib
import sys
from collections import defaultdict

from requestor import Golem, Task, WorkContext
from requestor.payload import vm
from requestor.strategy import SCORE_TRUSTED, MarketStrategy

sys.path.append(str(pathlib.Path(__file__).resolve().parent))

from utils import build_parser, print_env_info, run_golem_example  # noqa: E402

IMAGE_TAG = "exeunit-market-strategy:latest"

#   What each task runs on its provider
TASK_CMD = ["/usr/local/bin/python", "-c", "for i in range(10000000): i * 7"]


class FastestProviderStrategy(MarketStrategy):
    """Picks the provider that has been fastest so far, whatever it costs.

    * a provider not seen before is always worth a try
    * among providers seen before, the one with the shortest mean time wins
    """

    def __init__(self):
        self.history = defaultdict(list)

    async def score_offer(self, offer):
        provider_id = offer.issuer
        previous_runs = self.history[provider_id]

        if not previous_runs:
            score = SCORE_TRUSTED
        else:
            avg_time = sum(previous_runs) / len(previous_runs)
            score = SCORE_TRUSTED - avg_time

        if offer.is_draft:
            #   only drafts are reported, to keep the output short
            if previous_runs:
                print(
                    f"Scored known provider: {provider_id}: "
                    f"{score} ({len(previous_runs)} runs, avg time {avg_time})"
                )
            else:
                print(f"Found new provider: {provider_id}, default score {SCORE_TRUSTED}")

        return score

    def save_execution_time(self, provider_id: str, time: float):
        self.history[provider_id].append(time)


async def main(subnet_tag, payment_driver, payment_network):
    payload = await vm.repo(image_tag=IMAGE_TAG)

    strategy = FastestProviderStrategy()

    async def worker(ctx: WorkContext, tasks):
        async for task in tasks:
            script = ctx.new_script()
            future_result = script.run("/usr/bin/time", "-p", *TASK_CMD)
            yield script

            real_time_str = future_result.result().stderr.split()[1]
            real_time = float(real_time_str)

            strategy.save_execution_time(ctx.provider_id, real_time)
            print("TASK EXECUTED", ctx.provider_name, ctx.provider_id, real_time)

            task.accept_result()

            #   One task per agreement: closing the stream ends this agreement, and the next
            #   task goes wherever the strategy then prefers (a new provider, if there is one).
            await tasks.aclose()

    async with Golem(
        budget=10,
        strategy=strategy,
        subnet_tag=subnet_tag,
        payment_driver=payment_driver,
        payment_network=payment_network,
    ) as golem:
        print_env_info(golem)

        #   Tasks without end
        tasks = (Task(None) for _ in itertools.count(1))
        async for task in golem.execute_tasks(worker, tasks, payload, max_workers=1):
            pass


if __name__ == "__main__":
    parser = build_parser("Pick the fastest provider with a market strategy that remembers")
    parser.set_defaults(log_file="market-strategy-example.log")
    args = parser.parse_args()

    run_golem_example(
        main(
            subnet_tag=args.subnet_tag,
            payment_driver=args.payment_driver,
            payment_network=args.payment_network,
        ),
        log_file=args.log_file,
    )
