#!/usr/bin/env python3
"""The requestor agent of goth's mid-agreement payments test, in yapapi's style with the import
renamed and the local stand-in of its image (images/hello-world): a strategy that takes a debit
note interval of 25 to 30 s and a payment timeout of 60 to 70 s, one task that sleeps 105 s under
an agreement asked for a day (long enough for mid-agreement payments), every event's repr logged
and the library's DEBUG lines on the console, where the test reads the debit notes' counts."""
import argparse
import asyncio
import logging
from datetime import timedelta
from typing import AsyncIterable, List

from requestor import Golem, Task, WorkContext
from requestor.log import enable_default_logger, log_event_repr
from requestor.payload import vm
from requestor.strategy import (
    PROP_DEBIT_NOTE_INTERVAL_SEC,
    PROP_PAYMENT_TIMEOUT_SEC,
    LeastExpensiveLinearPayuMS,
    PropValueRange,
)


class ShortDebitNoteIntervalAndPaymentTimeout(LeastExpensiveLinearPayuMS):
    acceptable_prop_value_range_overrides = {
        PROP_DEBIT_NOTE_INTERVAL_SEC: PropValueRange(25, 30),
        PROP_PAYMENT_TIMEOUT_SEC: PropValueRange(60, 70),
    }


async def worker(context: WorkContext, tasks: AsyncIterable[Task]):
    async for task in tasks:
        script = context.new_script()
        sleeping = script.run("/bin/sh", "-c", "sleep 105")
        yield script
        task.accept_result(result=await sleeping)


async def main():
    package = await vm.repo(image_tag="exeunit-hello-world:latest")

    tasks: List[Task] = [Task(data=None)]
    timeout = timedelta(hours=24)

    async with Golem(
        budget=10.0,
        strategy=ShortDebitNoteIntervalAndPaymentTimeout(),
        subnet_tag="goth",
        event_consumer=log_event_repr,
        payment_network="holesky",
    ) as golem:
        logging.getLogger("requestor").handlers[0].setLevel(logging.DEBUG)
        async for completed in golem.execute_tasks(worker, tasks, payload=package, max_workers=1, timeout=timeout):
            print(f"Task finished: {completed}.")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--log-file", default="mid_agreement_payments.log")
    args = parser.parse_args()
    enable_default_logger(log_file=args.log_file)

    loop = asyncio.new_event_loop()
    loop.run_until_complete(loop.create_task(main()))
