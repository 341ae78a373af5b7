#!/usr/bin/env python3
"""yapapi's webapp_suspend_resume example, in its style, across two processes: the first run starts
the database and web instances on a network, serves them on a local port, and, when a line comes on
stdin, serializes the network and both clusters, suspends them, stops Golem and writes the state to
--state-file. A second run with --resume takes them up from that file (the same agreements and
activities, so the data written before is there) and serves them again until Ctrl-C.

Both runs need providers that outlive the first (GOLEM_PROVIDERS) and the same requestor identity
(the default one, or GOLEM_IDENTITY)."""
import asyncio
import json
import pathlib
import sys
from datetime import datetime, timedelta

from requestor import Golem
from requestor.contrib.service.http_proxy import LocalHttpProxy
from requestor.services import ServiceState

sys.path.append(str(pathlib.Path(__file__).resolve().parent))

from utils import TEXT_COLOR_CYAN, TEXT_COLOR_DEFAULT, build_parser, print_env_info, run_golem_example  # noqa: E402
from webapp import DbService, HttpService as PlainHttpService  # noqa: E402

STARTING_TIMEOUT = timedelta(minutes=4)


class HttpService(PlainHttpService):
    def _serialize_init_params(self):
        return {"db_address": self._db_address, "db_port": self._db_port}


def still_starting(cluster):
    return any(i.state in (ServiceState.pending, ServiceState.starting) for i in cluster.instances)


def raise_exception_if_still_starting(cluster):
    if still_starting(cluster):
        raise Exception(f"Failed to start {cluster} instances after {STARTING_TIMEOUT.total_seconds():g} seconds")


async def wait_until_started(cluster, others=()):
    commissioning_time = datetime.now()
    while still_starting(cluster) and datetime.now() < commissioning_time + STARTING_TIMEOUT:
        print(cluster.instances + list(others))
        await asyncio.sleep(1)
    raise_exception_if_still_starting(cluster)


async def first_run(golem, port, state_file):
    network = await golem.create_network("192.168.0.1/24")
    db_cluster = await golem.run_service(DbService, network=network)
    db_instance = db_cluster.instances[0]
    await wait_until_started(db_cluster)
    print(f"{TEXT_COLOR_CYAN}DB instance started, spawning the web server{TEXT_COLOR_DEFAULT}")
    web_cluster = await golem.run_service(HttpService, network=network,
                                          instance_params=[{"db_address": db_instance.network_node.ip}])
    await wait_until_started(web_cluster, db_cluster.instances)

    proxy = LocalHttpProxy(web_cluster, port)
    await proxy.run()
    print(f"{TEXT_COLOR_CYAN}Local HTTP server listening on:\nhttp://localhost:{port}{TEXT_COLOR_DEFAULT}", flush=True)
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

    print("=============================================== SERIALIZED STATE: ")
    state = json.dumps([network_serialized, db_serialized, web_serialized], indent=4)
    print(state)
    state_file.write_text(state)
    print(f"{TEXT_COLOR_CYAN}suspended; resume with --resume --state-file {state_file}{TEXT_COLOR_DEFAULT}", flush=True)


async def resumed_run(golem, port, state_file):
    print("=============================================== RESTARTING THE ENGINE AND THE SERVICES")
    network_serialized, db_serialized, web_serialized = json.loads(state_file.read_text())
    network = await golem.resume_network(network_serialized)
    db_cluster = await golem.resume_service(DbService, instances=db_serialized, network=network)
    web_cluster = await golem.resume_service(HttpService, instances=web_serialized, network=network)
    raise_exception_if_still_starting(db_cluster)
    raise_exception_if_still_starting(web_cluster)

    proxy = LocalHttpProxy(web_cluster, port)
    await proxy.run()
    print(f"{TEXT_COLOR_CYAN}Local HTTP server listening on:\nhttp://localhost:{port}{TEXT_COLOR_DEFAULT}", flush=True)
    while True:
        print(web_cluster.instances + db_cluster.instances, flush=True)
        try:
            await asyncio.sleep(10)
        except (KeyboardInterrupt, asyncio.CancelledError):
            break
    await proxy.stop()
    print(f"{TEXT_COLOR_CYAN}HTTP server stopped{TEXT_COLOR_DEFAULT}")
    web_cluster.stop()
    db_cluster.stop()
    count = 0
    while count < 3 and any(s.is_available for s in web_cluster.instances + db_cluster.instances):
        print(web_cluster.instances + db_cluster.instances)
        await asyncio.sleep(5)
        count += 1
    await network.remove()


async def main(subnet_tag, payment_driver, payment_network, port, state_file, resume):
    golem = Golem(budget=1.0, subnet_tag=subnet_tag, payment_driver=payment_driver, payment_network=payment_network)
    await golem.start()
    print_env_info(golem)
    try:
        if resume:
            await resumed_run(golem, port, state_file)
        else:
            await first_run(golem, port, state_file)
    finally:
        if golem.operative:
            await golem.stop()


if __name__ == "__main__":
    parser = build_parser("the web app example, suspended by one process and resumed by another")
    parser.add_argument("--port", type=int, default=8080, help="local port of the proxy (default: %(default)s)")
    parser.add_argument("--state-file", type=pathlib.Path, default=pathlib.Path("webapp-suspended.json"),
                        help="where the suspended state is written, and read from with --resume (default: %(default)s)")
    parser.add_argument("--resume", action="store_true", help="take up what a first run suspended")
    args = parser.parse_args()
    run_golem_example(
        main(subnet_tag=args.subnet_tag, payment_driver=args.payment_driver, payment_network=args.payment_network,
             port=args.port, state_file=args.state_file, resume=args.resume),
        log_file=args.log_file,
    )
