#!/usr/bin/env python3
"""yapapi's webapp_suspend_resume example, in its style with the import renamed and the local
stand-ins of its images (images/webapp-db, images/webapp-http), across two processes: the first
run, with yapapi's market strategy (a debit note interval of at least an hour, capped prices, a
lower score for providers that left an agreement unconfirmed, fed by Golem's events), starts the
database and web instances on a network and serves them on a local port; when a line comes on
stdin it serializes the network and both clusters, suspends them, stops Golem without waiting for
payments and writes the state to --state-file. A second run with --resume, a Golem without the
strategy, takes them up from that file (the same agreements and activities, so the data written
before is there) and serves them again until Ctrl-C.

Both runs need providers that outlive the first (GOLEM_PROVIDERS) and the same requestor identity
(the default one, or GOLEM_IDENTITY)."""
import asyncio
import json
import pathlib
import sys
from datetime import datetime, timedelta
from decimal import Decimal

from requestor import Golem
from requestor.contrib.service.http_proxy import HttpProxyService, LocalHttpProxy
from requestor.payload import vm
from requestor.props import com
from requestor.services import Service, ServiceState
from requestor.strategy import (
    PROP_DEBIT_NOTE_INTERVAL_SEC,
    DecreaseScoreForUnconfirmedAgreement,
    LeastExpensiveLinearPayuMS,
    PropValueRange,
)

sys.path.append(str(pathlib.Path(__file__).resolve().parent))

from utils import TEXT_COLOR_CYAN, TEXT_COLOR_DEFAULT, build_parser, print_env_info, run_golem_example  # noqa: E402

HTTP_IMAGE = "exeunit-webapp-http:latest"
DB_IMAGE = "exeunit-webapp-db:latest"

STARTING_TIMEOUT = timedelta(minutes=4)

DEBIT_NOTE_INTERVAL_SEC = 3600


class HttpService(HttpProxyService):
    def __init__(self, db_address: str, db_port: int = 4001):
        super().__init__(remote_port=5000)
        self._db_address = db_address
        self._db_port = db_port

    @staticmethod
    async def get_payload():
        return await vm.repo(image_tag=HTTP_IMAGE, capabilities=[vm.VM_CAPS_VPN])

    async def start(self):
        # deploy (with the network's details) and start, then the web app's own commands
        async for script in super().start():
            yield script

        script = self._ctx.new_script(timeout=timedelta(seconds=20))
        script.run("/bin/bash", "-c",
                   f"cd /webapp && python app.py --db-address {self._db_address} --db-port {self._db_port} initdb")
        script.run("/bin/bash", "-c",
                   f"cd /webapp && python app.py --db-address {self._db_address} --db-port {self._db_port} "
                   f"run > /webapp/out 2> /webapp/err &")
        yield script

    def _serialize_init_params(self):
        return {"db_address": self._db_address, "db_port": self._db_port}


class DbService(Service):
    @staticmethod
    async def get_payload():
        return await vm.repo(image_tag=DB_IMAGE, capabilities=[vm.VM_CAPS_VPN])

    async def start(self):
        async for script in super().start():
            yield script

        script = self._ctx.new_script(timeout=timedelta(seconds=30))
        script.run("/bin/run_rqlite.sh")
        yield script


class MyMarketStrategy(LeastExpensiveLinearPayuMS):
    acceptable_prop_value_range_overrides = {
        PROP_DEBIT_NOTE_INTERVAL_SEC: PropValueRange(DEBIT_NOTE_INTERVAL_SEC, None),
    }


def still_starting(cluster):
    return any(i.state in (ServiceState.pending, ServiceState.starting) for i in cluster.instances)


def raise_exception_if_still_starting(cluster):
    if still_starting(cluster):
        raise Exception(f"Failed to start {cluster} instances after {STARTING_TIMEOUT.total_seconds():g} seconds")


async def serve_until_interrupted(web_cluster, db_cluster, port):
    proxy = LocalHttpProxy(web_cluster, port)
    await proxy.run()
    print(f"{TEXT_COLOR_CYAN}Local HTTP server listening on:\nhttp://localhost:{port}{TEXT_COLOR_DEFAULT}", flush=True)
    while True:  # until Ctrl-C
        print(web_cluster.instances + db_cluster.instances, flush=True)
        try:
            await asyncio.sleep(10)
        except (KeyboardInterrupt, asyncio.CancelledError):
            break
    await proxy.stop()
    print(f"{TEXT_COLOR_CYAN}HTTP server stopped{TEXT_COLOR_DEFAULT}")


async def first_run(subnet_tag, payment_driver, payment_network, port, state_file):
    base_strategy = MyMarketStrategy(
        max_fixed_price=Decimal("1.0"),
        max_price_for={com.Counter.CPU: Decimal("0.2"), com.Counter.TIME: Decimal("0.1")},
    )
    strategy = DecreaseScoreForUnconfirmedAgreement(base_strategy, 0.5)

    golem = Golem(budget=1.0, subnet_tag=subnet_tag, payment_driver=payment_driver,
                  payment_network=payment_network, strategy=strategy)
    golem.add_event_consumer(strategy.on_event)
    await golem.start()
    try:
        print_env_info(golem)

        network = await golem.create_network("192.168.0.1/24")
        db_cluster = await golem.run_service(DbService, network=network)
        db_instance = db_cluster.instances[0]

        commissioning_time = datetime.now()
        while still_starting(db_cluster) and datetime.now() < commissioning_time + STARTING_TIMEOUT:
            print(db_cluster.instances)
            await asyncio.sleep(1)
        raise_exception_if_still_starting(db_cluster)
        print(f"{TEXT_COLOR_CYAN}DB instance started, spawning the web server{TEXT_COLOR_DEFAULT}")

        web_cluster = await golem.run_service(HttpService, network=network,
                                              instance_params=[{"db_address": db_instance.network_node.ip}])
        while still_starting(web_cluster) and datetime.now() < commissioning_time + STARTING_TIMEOUT:
            print(web_cluster.instances + db_cluster.instances)
            await asyncio.sleep(1)
        raise_exception_if_still_starting(web_cluster)

        proxy = LocalHttpProxy(web_cluster, port)
        await proxy.run()
        print(f"{TEXT_COLOR_CYAN}Local HTTP server listening on:\nhttp://localhost:{port}{TEXT_COLOR_DEFAULT}",
              flush=True)
        # yapapi's example waits 7 seconds here; this one until the test (or a person) says when
        print(f"{TEXT_COLOR_CYAN}press Enter to suspend...{TEXT_COLOR_DEFAULT}", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        await proxy.stop()
        print(f"{TEXT_COLOR_CYAN}HTTP server stopped{TEXT_COLOR_DEFAULT}")

        print("=============================================== SERIALIZING AND DROPPING CURRENT STATE")
        network_serialized = network.serialize()
        db_serialized = db_cluster.serialize_instances()
        web_serialized = web_cluster.serialize_instances()
        web_cluster.suspend()
        db_cluster.suspend()

        print("=============================================== STOPPING GOLEM ENGINE")
        await golem.stop(wait_for_payments=False)
    finally:
        if golem.operative:
            await golem.stop()

    print("=============================================== SERIALIZED STATE: ")
    state = json.dumps([network_serialized, db_serialized, web_serialized], indent=4)
    print(state)
    state_file.write_text(state)
    print(f"{TEXT_COLOR_CYAN}suspended; resume with --resume --state-file {state_file}{TEXT_COLOR_DEFAULT}", flush=True)


async def resumed_run(subnet_tag, payment_driver, payment_network, port, state_file):
    print("=============================================== RESTARTING THE ENGINE AND THE SERVICES")
    network_serialized, db_serialized, web_serialized = json.loads(state_file.read_text())

    golem = Golem(budget=1.0, subnet_tag=subnet_tag, payment_driver=payment_driver,
                  payment_network=payment_network)
    await golem.start()
    try:
        print_env_info(golem)

        network = await golem.resume_network(network_serialized)
        db_cluster = await golem.resume_service(DbService, instances=db_serialized, network=network)
        web_cluster = await golem.resume_service(HttpService, instances=web_serialized, network=network)
        raise_exception_if_still_starting(db_cluster)
        raise_exception_if_still_starting(web_cluster)

        await serve_until_interrupted(web_cluster, db_cluster, port)

        web_cluster.stop()
        db_cluster.stop()
        count = 0
        while count < 3 and any(s.is_available for s in web_cluster.instances + db_cluster.instances):
            print(web_cluster.instances + db_cluster.instances)
            await asyncio.sleep(5)
            count += 1
        await network.remove()
    finally:
        if golem.operative:
            await golem.stop()


async def main(subnet_tag, payment_driver, payment_network, port, state_file, resume):
    run = resumed_run if resume else first_run
    await run(subnet_tag, payment_driver, payment_network, port, state_file)


if __name__ == "__main__":
    parser = build_parser("the web app example, suspended by one process and resumed by another")
    parser.add_argument("--port", type=int, default=8080, help="The local port to listen on")
    parser.add_argument("--state-file", type=pathlib.Path, default=pathlib.Path("webapp-suspended.json"),
                        help="where the suspended state is written, and read from with --resume (default: %(default)s)")
    parser.add_argument("--resume", action="store_true", help="take up what a first run suspended")
    now = datetime.now().strftime("%Y-%m-%d_%H.%M.%S")
    parser.set_defaults(log_file=f"webapp-yapapi-{now}.log")
    args = parser.parse_args()
    run_golem_example(
        main(subnet_tag=args.subnet_tag, payment_driver=args.payment_driver, payment_network=args.payment_network,
             port=args.port, state_file=args.state_file, resume=args.resume),
        log_file=args.log_file,
    )
