#!/usr/bin/env python3
"""An HTTP server in each of a few service instances, reached from this machine through
`LocalHttpProxy`: a local port whose connections are spread over the running instances (the
port of yapapi's http-proxy example).

    python examples/http_proxy.py                      # embedded provider, http://localhost:8080
    python examples/http_proxy.py --port 8081 --num-instances 3 --running-time 60
    curl http://localhost:8080/                        # in another terminal: each instance says who it is

The instances sit on a private network (as yapapi's do); the proxy reaches them through the
provider's Tunnel, so keep-alive, chunked responses and streaming pass as they are. Stops after
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
from requestor.services import ServiceState

STARTING_TIMEOUT = timedelta(minutes=2)
SERVER_PORT = 80
SITE = "/golem/work/site"


class HttpService(HttpProxyService):
    def __init__(self) -> None:
        super().__init__(remote_port=SERVER_PORT)

    @staticmethod
    async def get_payload():
        return await vm.repo(image_tag="exeunit-base:latest", min_mem_gib=0.25, min_storage_gib=0.5,
                             capabilities=[vm.VM_CAPS_VPN])

    async def start(self):
        async for script in super().start():  # deploy (joining the network) + start
            yield script
        script = self._ctx.new_script(timeout=timedelta(seconds=30))
        page = f"Hello from inside Golem!\n... running on {self.provider_name} at {self.network_node.ip}\n"
        script.upload_bytes(page.encode(), f"{SITE}/index.html")
        # The server's output goes to a log, so the command itself ends at once.
        script.run("/bin/sh", "-c", f"cd {SITE} && (python3 -m http.server {SERVER_PORT} > {SITE}/../http.log 2>&1 &)")
        yield script

    async def shutdown(self):
        script = self._ctx.new_script()
        log = script.run("/bin/cat", f"{SITE}/../http.log")
        yield script
        requests = sum(1 for line in (await log).stdout.splitlines() if '"GET ' in line)
        print(f"{self.network_node.ip} served {requests} requests", flush=True)
        async for script in super().shutdown():
            yield script


async def main(num_instances: int, port: int, running_time: float) -> None:
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    async with Golem(budget=1.0, subnet_tag="public") as golem:
        network = await golem.create_network("192.168.0.1/24")
        async with network:
            cluster = await golem.run_service(
                HttpService, network=network, num_instances=num_instances,
                expiration=datetime.now(timezone.utc) + STARTING_TIMEOUT + timedelta(seconds=running_time + 300),
            )
            deadline = asyncio.get_running_loop().time() + STARTING_TIMEOUT.total_seconds()
            while any(i.state in (ServiceState.pending, ServiceState.starting) for i in cluster.instances):
                if asyncio.get_running_loop().time() > deadline or stop.is_set():
                    raise SystemExit(f"instances did not start within {STARTING_TIMEOUT}: {cluster.instances}")
                print(f"instances: {cluster.instances}", flush=True)
                await asyncio.sleep(1)

            proxy = LocalHttpProxy(cluster, port)
            await proxy.run()
            print(f"Local HTTP server listening on:\nhttp://localhost:{proxy.port}", flush=True)
            try:
                await asyncio.wait_for(stop.wait(), running_time)
            except TimeoutError:
                pass
            await proxy.stop()
            print("HTTP server stopped", flush=True)
            await cluster.terminate()
        print(f"network removed; spent {golem.budget.spent:.6f} of {golem.budget.amount}", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-instances", type=int, default=2, help="instances of the HTTP service (default: 2)")
    parser.add_argument("--port", type=int, default=8080, help="local port to listen on; 0 picks one (default: 8080)")
    parser.add_argument("--running-time", type=float, default=600,
                        help="seconds to serve before stopping (default: 600; Ctrl-C stops earlier)")
    args = parser.parse_args()
    enable_default_logger()
    asyncio.run(main(args.num_instances, args.port, args.running_time))
