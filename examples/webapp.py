#!/usr/bin/env python3
"""A web app in two services on one private network (the port of yapapi's webapp example): a
database instance, and HTTP front ends that reach it by its address on the network. This
machine reaches the front ends through `LocalHttpProxy`.

    python examples/webapp.py                   # embedded provider, http://localhost:8080
    python examples/webapp.py --port 8081 --running-time 60
    curl -d message=hello http://localhost:8080/ && curl http://localhost:8080/messages

Images: exeunit-webapp-db (a stand-in of rqlite on port 4001) and exeunit-webapp-http (a Flask
front end on port 5000 keeping its messages there through SQLAlchemy), the stand-ins of yapapi's
webapp images that images/build.py builds. Stops after
--running-time seconds or on Ctrl-C; instances go through shutdown and the network is removed.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from datetime import datetime, timedelta, timezone

from requestor import Golem
from requestor.contrib.service.http_proxy import HttpProxyService, LocalHttpProxy
from requestor.log import enable_default_logger
from requestor.payload import vm
from requestor.services import Cluster, Service, ServiceState

STARTING_TIMEOUT = timedelta(minutes=2)
DB_PORT = 4001
HTTP_PORT = 5000


class DbService(Service):
    @staticmethod
    async def get_payload():
        return await vm.repo(image_tag="exeunit-webapp-db:latest", min_mem_gib=0.25, min_storage_gib=0.5,
                             capabilities=[vm.VM_CAPS_VPN])

    async def start(self):
        async for script in super().start():  # deploy (joining the network) + start
            yield script
        script = self._ctx.new_script(timeout=timedelta(seconds=30))
        script.run("/bin/run_rqlite.sh")  # rqlited (a stand-in of it) in the background, on port 4001
        yield script


class HttpService(HttpProxyService):
    def __init__(self, db_address: str, db_port: int = DB_PORT) -> None:
        super().__init__(remote_port=HTTP_PORT)
        self._db = f"--db-address {db_address} --db-port {db_port}"

    @staticmethod
    async def get_payload():
        return await vm.repo(image_tag="exeunit-webapp-http:latest", min_mem_gib=0.25, min_storage_gib=0.5,
                             capabilities=[vm.VM_CAPS_VPN])

    async def start(self):
        async for script in super().start():
            yield script
        script = self._ctx.new_script(timeout=timedelta(seconds=30))
        # The database may still be starting: initdb tries for a few seconds.
        script.run("/bin/sh", "-c", f"cd /webapp && for i in $(seq 50); do python app.py {self._db} initdb 2>/dev/null "
                                    f"&& exit 0; sleep 0.2; done; python app.py {self._db} initdb")
        script.run("/bin/sh", "-c", f"cd /webapp && (python app.py {self._db} run > /webapp/out 2> /webapp/err &)")
        # Running means serving: wait (up to 10 s) until the app takes connections.
        script.run("/bin/bash", "-c", f"for i in $(seq 100); do (echo > /dev/tcp/127.0.0.1/{HTTP_PORT}) 2>/dev/null "
                                      "&& exit 0; sleep 0.1; done; echo 'the app did not start' >&2; exit 1")
        yield script


async def wait_started(cluster: Cluster, stop: asyncio.Event) -> None:
    deadline = asyncio.get_running_loop().time() + STARTING_TIMEOUT.total_seconds()
    while any(i.state in (ServiceState.pending, ServiceState.starting) for i in cluster.instances):
        if asyncio.get_running_loop().time() > deadline or stop.is_set():
            raise SystemExit(f"{cluster} did not start within {STARTING_TIMEOUT}")
        await asyncio.sleep(0.5)
    if any(i.state is not ServiceState.running for i in cluster.instances):
        raise SystemExit(f"{cluster} failed to start: {[i.exc_info[1] for i in cluster.instances]}")


async def main(port: int, running_time: float, num_front_ends: int) -> None:
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    expiration = datetime.now(timezone.utc) + STARTING_TIMEOUT + timedelta(seconds=running_time + 300)
    async with Golem(budget=1.0, subnet_tag="public") as golem:
        network = await golem.create_network("192.168.0.1/24")
        async with network:
            db_cluster = await golem.run_service(DbService, network=network, expiration=expiration)
            await wait_started(db_cluster, stop)
            db_address = db_cluster.instances[0].network_node.ip
            print(f"DB instance started at {db_address}, spawning the web server", flush=True)

            web_cluster = await golem.run_service(
                HttpService, network=network, expiration=expiration,
                instance_params=[{"db_address": db_address}] * num_front_ends,
            )
            await wait_started(web_cluster, stop)

            proxy = LocalHttpProxy(web_cluster, port)
            await proxy.run()
            print(f"Local HTTP server listening on:\nhttp://localhost:{proxy.port}", flush=True)
            try:
                await asyncio.wait_for(stop.wait(), running_time)
            except TimeoutError:
                pass
            await proxy.stop()
            print("HTTP server stopped", flush=True)
            await web_cluster.terminate()
            await db_cluster.terminate()
        print(f"network removed; spent {golem.budget.spent:.6f} of {golem.budget.amount}", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=8080, help="local port to listen on; 0 picks one (default: 8080)")
    parser.add_argument("--running-time", type=float, default=600,
                        help="seconds to serve before stopping (default: 600; Ctrl-C stops earlier)")
    parser.add_argument("--front-ends", type=int, default=1, help="HTTP front-end instances (default: 1)")
    args = parser.parse_args()
    enable_default_logger()
    asyncio.run(main(args.port, args.running_time, args.front_ends))
