#!/usr/bin/env python3
"""yapapi's simple-service example, in its style, with the import renamed and the local stand-in
of its image as published (images/simple-service: its database in /golem/run, made when the image
was built; the simulator's pid file in /var/run; plots in /golem/out): statistics and a plot read
every few seconds, the plot downloaded."""
import asyncio
import pathlib
import random
import string
import sys
from datetime import datetime, timedelta, timezone

from requestor import Golem
from requestor.payload import vm
from requestor.services import Service, ServiceState

sys.path.append(str(pathlib.Path(__file__).resolve().parent))

from utils import build_parser, print_env_info, run_golem_example  # noqa: E402

STARTING_TIMEOUT = timedelta(minutes=4)


class SimpleService(Service):
    SIMPLE_SERVICE = "/golem/run/simple_service.py"
    SIMPLE_SERVICE_CTL = "/golem/run/simulate_observations_ctl.py"

    def __init__(self, *args, instance_name: str, show_usage: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.name = instance_name
        self._show_usage = show_usage

    @staticmethod
    async def get_payload():
        return await vm.repo(image_tag="exeunit-simple-service:latest", min_mem_gib=0.5, min_storage_gib=2.0)

    async def start(self):
        async for script in super().start():
            yield script
        script = self._ctx.new_script()  # the image comes with its database (made when it was built)
        script.run(self.SIMPLE_SERVICE_CTL, "--start")
        yield script

    async def run(self):
        while True:
            await asyncio.sleep(2)
            script = self._ctx.new_script()
            stats_results = script.run(self.SIMPLE_SERVICE, "--stats")
            plot_results = script.run(self.SIMPLE_SERVICE, "--plot", "dist")
            yield script
            stats = (await stats_results).stdout.strip()
            plot = (await plot_results).stdout.strip().strip('"')
            print(f"stats: {stats}")
            plot_filename = "".join(random.choice(string.ascii_letters) for _ in range(10)) + ".png"
            print(f"downloading plot: {plot} to {plot_filename}")
            script = self._ctx.new_script()
            script.download_file(plot, plot_filename)  # into the working directory
            yield script
            if self._show_usage:
                raw_state = await self._ctx.get_raw_state()
                usage = await self._ctx.get_usage()
                cost = await self._ctx.get_cost()
                print(f" --- {self.name} STATE: {raw_state}\n --- {self.name} USAGE: {usage.current_usage}\n"
                      f" --- {self.name}  COST: {cost}")

    async def shutdown(self):
        script = self._ctx.new_script()
        script.run(self.SIMPLE_SERVICE_CTL, "--stop")
        yield script


async def main(subnet_tag, running_time, payment_driver=None, payment_network=None, num_instances=1,
               show_usage=False):
    async with Golem(budget=1.0, subnet_tag=subnet_tag, payment_driver=payment_driver,
                     payment_network=payment_network) as golem:
        print_env_info(golem)
        commissioning_time = datetime.now()
        cluster = await golem.run_service(
            SimpleService,
            instance_params=[{"instance_name": f"simple-service-{i+1}", "show_usage": show_usage}
                             for i in range(num_instances)],
            expiration=datetime.now(timezone.utc) + STARTING_TIMEOUT + timedelta(seconds=running_time + 300),
        )
        print(f"Starting {cluster}...")

        def print_instances():
            print("instances: " + str([f"{s.name}: {s.state.value}" + (f" on {s.provider_name}" if s.provider_id else "")
                                       for s in cluster.instances]))

        def still_starting():
            return any(i.state in (ServiceState.pending, ServiceState.starting) for i in cluster.instances)

        while still_starting() and datetime.now() < commissioning_time + STARTING_TIMEOUT:
            print_instances()
            await asyncio.sleep(1)
        if still_starting():
            raise Exception(f"Failed to start instances before {STARTING_TIMEOUT} elapsed :( ...")
        print("All instances started :)")
        start_time = datetime.now()
        while datetime.now() < start_time + timedelta(seconds=running_time):
            print_instances()
            await asyncio.sleep(1)
        print(f"Stopping {cluster}...")
        cluster.stop()
        cnt = 0
        while cnt < 10 and any(s.is_available for s in cluster.instances):
            print_instances()
            await asyncio.sleep(1)
            cnt += 1
    print_instances()


if __name__ == "__main__":
    parser = build_parser("A very simple service")
    parser.add_argument("--running-time", default=120, type=int)
    parser.add_argument("--num-instances", type=int, default=1)
    parser.add_argument("--show-usage", action="store_true")
    args = parser.parse_args()
    run_golem_example(main(subnet_tag=args.subnet_tag, running_time=args.running_time,
                           payment_driver=args.payment_driver, payment_network=args.payment_network,
                           num_instances=args.num_instances, show_usage=args.show_usage),
                      log_file=args.log_file)
