#!/usr/bin/env python3
"""yapapi's http-proxy example, in its style, with the import renamed and the local stand-in of
its image (images/http-proxy: Debian's nginx laid out as nginx:stable-alpine): each instance runs
the image's entry point, writes its page into the root, removes nginx's logs and starts nginx;
LocalHttpProxy spreads a local port over the instances."""
import asyncio
import pathlib
import shlex
import sys
from datetime import datetime, timedelta, timezone

from requestor import Golem
from requestor.contrib.service.http_proxy import HttpProxyService, LocalHttpProxy
from requestor.payload import vm
from requestor.services import ServiceState

sys.path.append(str(pathlib.Path(__file__).resolve().parent))

from utils import TEXT_COLOR_CYAN, TEXT_COLOR_DEFAULT, build_parser, print_env_info, run_golem_example  # noqa: E402

STARTING_TIMEOUT = timedelta(minutes=4)
EXPIRATION_MARGIN = timedelta(minutes=5)


class HttpService(HttpProxyService):
    @staticmethod
    async def get_payload():
        return await vm.repo(image_tag="exeunit-http-proxy:latest", capabilities=[vm.VM_CAPS_VPN])

    async def start(self):
        async for script in super().start():  # deploy on the network, start
            yield script
        script = self._ctx.new_script(timeout=timedelta(minutes=1))
        script.run("/docker-entrypoint.sh")
        script.run("/bin/chmod", "a+x", "/")
        page = f"Hello from inside Golem!\n... running on {self.provider_name}"
        script.run("/bin/sh", "-c", f"echo {shlex.quote(page)} > /usr/share/nginx/html/index.html")
        script.run("/bin/rm", "/var/log/nginx/access.log", "/var/log/nginx/error.log")
        script.run("/usr/sbin/nginx")
        yield script

    async def shutdown(self):
        script = self._ctx.new_script()  # nginx's logs end up in the example's log file
        script.run("/bin/cat", "/var/log/nginx/access.log")
        script.run("/bin/cat", "/var/log/nginx/error.log")
        yield script


async def main(subnet_tag, payment_driver, payment_network, num_instances, port, running_time):
    async with Golem(budget=1.0, subnet_tag=subnet_tag, payment_driver=payment_driver,
                     payment_network=payment_network) as golem:
        print_env_info(golem)
        commissioning_time = datetime.now()
        network = await golem.create_network("192.168.0.1/24")
        cluster = await golem.run_service(
            HttpService, network=network, num_instances=num_instances,
            expiration=datetime.now(timezone.utc) + STARTING_TIMEOUT + EXPIRATION_MARGIN
            + timedelta(seconds=running_time),
        )
        instances = cluster.instances

        def still_starting():
            return any(i.state in (ServiceState.pending, ServiceState.starting) for i in instances)

        while still_starting() and datetime.now() < commissioning_time + STARTING_TIMEOUT:
            print(f"instances: {instances}")
            await asyncio.sleep(1)
        if still_starting():
            raise Exception(f"instances still starting after {STARTING_TIMEOUT.total_seconds():g}s: {instances}")

        proxy = LocalHttpProxy(cluster, port)
        await proxy.run()
        print(f"{TEXT_COLOR_CYAN}Local HTTP server listening on:\nhttp://localhost:{port}{TEXT_COLOR_DEFAULT}",
              flush=True)

        start_time = datetime.now()
        while datetime.now() < start_time + timedelta(seconds=running_time):
            print(instances)
            try:
                await asyncio.sleep(2)
            except (KeyboardInterrupt, asyncio.CancelledError):
                break

        await proxy.stop()
        print(f"{TEXT_COLOR_CYAN}HTTP server stopped{TEXT_COLOR_DEFAULT}")
        cluster.stop()
        count = 0
        while count < 3 and any(s.is_available for s in instances):
            print(instances)
            await asyncio.sleep(2)
            count += 1
        await network.remove()


if __name__ == "__main__":
    parser = build_parser("nginx in a few service instances, behind one local port")
    parser.add_argument("--num-instances", type=int, default=2, help="nginx instances to run (default: %(default)s)")
    parser.add_argument("--port", type=int, default=8080, help="local port of the proxy (default: %(default)s)")
    parser.add_argument("--running-time", default=600, type=int,
                        help="seconds to serve before the instances are stopped (default: %(default)s)")
    args = parser.parse_args()
    run_golem_example(
        main(subnet_tag=args.subnet_tag, payment_driver=args.payment_driver, payment_network=args.payment_network,
             num_instances=args.num_instances, port=args.port, running_time=args.running_time),
        log_file=args.log_file,
    )
