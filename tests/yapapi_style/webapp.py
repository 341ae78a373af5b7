#!/usr/bin/env python3
"""yapapi's webapp example, in its style, with the import renamed and the local stand-ins of its
images (images/webapp-db: rqlite's HTTP API, started by /bin/run_rqlite.sh; images/webapp-http:
the Flask app in /webapp): a database instance, then a web instance that reaches it by its address
on the network, behind a local port. Runs until Ctrl-C (SIGINT)."""
import asyncio
import pathlib
import sys
from datetime import datetime, timedelta

from requestor import Golem
from requestor.contrib.service.http_proxy import HttpProxyService, LocalHttpProxy
from requestor.payload import vm
from requestor.services import Service, ServiceState

sys.path.append(str(pathlib.Path(__file__).resolve().parent))

from utils import TEXT_COLOR_CYAN, TEXT_COLOR_DEFAULT, build_parser, print_env_info, run_golem_example  # noqa: E402

HTTP_IMAGE = "exeunit-webapp-http:latest"
DB_IMAGE = "exeunit-webapp-db:latest"

STARTING_TIMEOUT = timedelta(minutes=4)


class HttpService(HttpProxyService):
    def __init__(self, db_address: str, db_port: int = 4001):
        super().__init__(remote_port=5000)
        self._db_address = db_address
        self._db_port = db_port

    @staticmethod
    async def get_payload():
        return await vm.repo(image_tag=HTTP_IMAGE, capabilities=[vm.VM_CAPS_VPN])

    async def start(self):
        async for script in super().start():  # deploy on the network, start
            yield script
        script = self._ctx.new_script(timeout=timedelta(seconds=20))
        script.run("/bin/bash", "-c",
                   f"cd /webapp && python app.py --db-address {self._db_address} --db-port {self._db_port} initdb")
        script.run("/bin/bash", "-c",
                   f"cd /webapp && python app.py --db-address {self._db_address} --db-port {self._db_port} "
                   f"run > /webapp/out 2> /webapp/err &")
        yield script


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


async def main(subnet_tag, payment_driver, payment_network, port):
    async with Golem(budget=1.0, subnet_tag=subnet_tag, payment_driver=payment_driver,
                     payment_network=payment_network) as golem:
        print_env_info(golem)
        network = await golem.create_network("192.168.0.1/24")
        async with network:
            db_cluster = await golem.run_service(DbService, network=network)
            db_instance = db_cluster.instances[0]

            def still_starting(cluster):
                return any(i.state in (ServiceState.pending, ServiceState.starting) for i in cluster.instances)

            def raise_exception_if_still_starting(cluster):
                if still_starting(cluster):
                    raise Exception(f"{cluster} still starting after {STARTING_TIMEOUT.total_seconds():g}s")

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


if __name__ == "__main__":
    parser = build_parser("a web app and its database in two services on one network")
    parser.add_argument("--port", type=int, default=8080, help="local port of the proxy (default: %(default)s)")
    args = parser.parse_args()
    run_golem_example(
        main(subnet_tag=args.subnet_tag, payment_driver=args.payment_driver, payment_network=args.payment_network,
             port=args.port),
        log_file=args.log_file,
    )
