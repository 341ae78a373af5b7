#!/usr/bin/env python3
"""yapapi's ssh example, in its style, with the import renamed and the local stand-in of its image
(images/ssh: Debian's openssh-server with the example's sshd settings): each instance starts
syslogd, makes its host keys, sets a random root password and starts sshd, and SocketProxy opens a
local port to each instance's port 22. Runs until Ctrl-C (SIGINT)."""
import asyncio
import pathlib
import random
import string
import sys
from datetime import timedelta

from requestor import Golem
from requestor.contrib.service.socket_proxy import SocketProxy, SocketProxyService
from requestor.payload import vm

sys.path.append(str(pathlib.Path(__file__).resolve().parent))

from utils import (  # noqa: E402
    TEXT_COLOR_CYAN, TEXT_COLOR_DEFAULT, TEXT_COLOR_RED, build_parser, print_env_info, run_golem_example,
)


class SshService(SocketProxyService):
    remote_port = 22

    def __init__(self, proxy: SocketProxy):
        super().__init__()
        self.proxy = proxy

    @staticmethod
    async def get_payload():
        return await vm.repo(image_tag="exeunit-ssh:latest", min_mem_gib=0.5, min_storage_gib=2.0,
                             capabilities=[vm.VM_CAPS_VPN])

    async def start(self):
        async for script in super().start():  # deploy on the network, start
            yield script
        password = "".join(random.choice(string.ascii_letters + string.digits) for _ in range(8))
        script = self._ctx.new_script(timeout=timedelta(seconds=10))
        script.run("/bin/bash", "-c", "syslogd")
        script.run("/bin/bash", "-c", "ssh-keygen -A")
        script.run("/bin/bash", "-c", f'echo -e "{password}\n{password}" | passwd')
        script.run("/bin/bash", "-c", "/usr/sbin/sshd")
        yield script

        server = await self.proxy.run_server(self, self.remote_port)
        print(f"{TEXT_COLOR_CYAN}connect with:\n"
              f"ssh -o UserKnownHostsFile=/dev/null -o StrictHostKeyChecking=no "
              f"-p {server.local_port} root@{server.local_address}{TEXT_COLOR_DEFAULT}")
        print(f"{TEXT_COLOR_RED}password: {password}{TEXT_COLOR_DEFAULT}", flush=True)


async def main(subnet_tag, payment_driver=None, payment_network=None, num_instances=2):
    async with Golem(budget=1.0, subnet_tag=subnet_tag, payment_driver=payment_driver,
                     payment_network=payment_network) as golem:
        print_env_info(golem)
        network = await golem.create_network("192.168.0.1/24")
        proxy = SocketProxy(ports=range(2222, 2222 + num_instances))
        async with network:
            cluster = await golem.run_service(SshService, network=network, num_instances=num_instances,
                                              instance_params=[{"proxy": proxy} for _ in range(num_instances)])
            instances = cluster.instances
            while True:
                print(instances, flush=True)
                try:
                    await asyncio.sleep(5)
                except (KeyboardInterrupt, asyncio.CancelledError):
                    break
            await proxy.stop()
            cluster.stop()
            count = 0
            while count < 3 and any(s.is_available for s in instances):
                print(instances)
                await asyncio.sleep(5)
                count += 1


if __name__ == "__main__":
    parser = build_parser("sshd in service instances on a private network, reached through local ports")
    parser.add_argument("--num-instances", type=int, default=2, help="sshd instances to run (default: %(default)s)")
    args = parser.parse_args()
    run_golem_example(
        main(subnet_tag=args.subnet_tag, payment_driver=args.payment_driver, payment_network=args.payment_network,
             num_instances=args.num_instances),
        log_file=args.log_file,
    )
