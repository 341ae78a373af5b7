#!/usr/bin/env python3
"""yapapi's yacat example, in its style, with the import renamed and the local stand-in of its
image (images/yacat: Debian's hashcat on pocl, a CPU OpenCL runtime). Two jobs on one Golem:
first a single task asks hashcat for the size of the mask's keyspace, then the keyspace is cut
into chunks of --chunk-size words, each chunk a task of its own (a hashcat mask attack that writes
what it cracked to a potfile, downloaded). Like the example, it asks for 0.5 GiB of memory:
hashcat needs about twice that, which the provider's activity preset grants."""
import argparse
import math
from datetime import datetime, timedelta
from pathlib import Path
from tempfile import gettempdir
from typing import AsyncIterable, List, Optional

from requestor import Golem, Task, WorkContext
from requestor.events import CommandExecuted
from requestor.payload import vm
from requestor.rest.activity import CommandExecutionError

from utils import (
    TEXT_COLOR_CYAN,
    TEXT_COLOR_DEFAULT,
    TEXT_COLOR_GREEN,
    TEXT_COLOR_RED,
    build_parser,
    print_env_info,
    run_golem_example,
)

MASK_ATTACK = 3  # hashcat's -a for a brute force over a mask
KEYSPACE_SCRIPT_TIMEOUT = timedelta(minutes=10)
KEYSPACE_JOB_TIMEOUT = KEYSPACE_SCRIPT_TIMEOUT * 2.1  # room for a second try
ATTACK_TIMEOUT = timedelta(minutes=30)

parser = build_parser("Crack a hash with hashcat's mask attack, in chunks, on providers.")
parser.set_defaults(log_file=f"hashcat-yapapi-{datetime.now().strftime('%Y-%m-%d_%H.%M.%S')}.log")
parser.epilog = "For example: ./yacat.py --mask '?a?a' --hash '$P$5ZDzPE45CigTC6EY4cXbyJSLj/pGee0'"
parser.add_argument("--hash", type=str, required=True, help="the hash to crack")
parser.add_argument("--mask", type=str, required=True,
                    help="hashcat's mask of the words to try, e.g. '?a?a?a': every three printable characters")
parser.add_argument("--chunk-size", type=int, default=4096,
                    help="words of the keyspace one task tries (hashcat's --skip and --limit)")
parser.add_argument("--hash-type", type=int, default=400,
                    help="hashcat's -m, the kind of hash (default: 400, phpass)")
parser.add_argument("--max-workers", type=int, default=None,
                    help="providers to attack on at once (default: half the number of chunks)")

args = argparse.Namespace()


async def compute_keyspace(context: WorkContext, tasks: AsyncIterable[Task]):
    """The first job's worker: how many words the mask stands for, as hashcat counts them."""
    async for task in tasks:
        script = context.new_script(timeout=KEYSPACE_SCRIPT_TIMEOUT)
        script.run("/bin/bash", "-c", f"hashcat --keyspace -a {MASK_ATTACK} -m {args.hash_type} {args.mask}")
        try:
            results: List[CommandExecuted] = await (yield script)
            task.accept_result(result=int(results[-1].stdout))  # the last command is ours
        except CommandExecutionError as failure:
            raise RuntimeError(f"hashcat could not count the keyspace: {failure}")


async def perform_mask_attack(context: WorkContext, tasks: AsyncIterable[Task]):
    """The second job's worker: each task tries the words [skip, skip + chunk) of the keyspace."""
    async for task in tasks:
        skip = task.data
        potfile = f"yacat_{skip}.potfile"
        remote = f"/golem/output/{potfile}"
        local = Path(gettempdir()) / potfile

        script = context.new_script(timeout=ATTACK_TIMEOUT)
        script.run("/bin/sh", "-c", attack_command(skip, skip + args.chunk_size, remote))
        try:
            script.download_file(remote, str(local))
            yield script
            with local.open() as cracked:
                task.accept_result(cracked.readline())
        finally:
            local.unlink(missing_ok=True)


def attack_command(skip: int, limit: int, potfile: str) -> str:
    """hashcat exits 1 when a chunk holds no match: the empty potfile says so, not the exit code."""
    return (f"touch {potfile}; hashcat -a {MASK_ATTACK} -m {args.hash_type} --self-test-disable "
            f"--potfile-disable --skip={skip} --limit={limit} -o {potfile} '{args.hash}' '{args.mask}' || true")


def password_in(potfile_line: str) -> Optional[str]:
    """A potfile's line is `hash:word` (the hash may hold colons itself): the word, if any."""
    return potfile_line.rsplit(":", 1)[-1].strip() if potfile_line else None


async def main(args):
    package = await vm.repo(image_tag="exeunit-yacat:latest", min_mem_gib=0.5, min_storage_gib=2.0)

    async with Golem(budget=10.0, subnet_tag=args.subnet_tag, payment_driver=args.payment_driver,
                     payment_network=args.payment_network) as golem:
        print_env_info(golem)
        started = datetime.now()

        keyspace = 0
        async for task in golem.execute_tasks(compute_keyspace, [Task(data="compute_keyspace")],
                                              payload=package, timeout=KEYSPACE_JOB_TIMEOUT):
            keyspace = task.result
        print(f"{TEXT_COLOR_CYAN}Task computed: keyspace size count. The keyspace size is {keyspace}"
              f"{TEXT_COLOR_DEFAULT}")

        chunks = (Task(data=skip) for skip in range(0, keyspace, args.chunk_size))
        workers = args.max_workers or math.ceil(keyspace / args.chunk_size) // 2
        password = None
        async for task in golem.execute_tasks(perform_mask_attack, chunks, payload=package,
                                              max_workers=workers, timeout=ATTACK_TIMEOUT):
            print(f"{TEXT_COLOR_CYAN}Task computed: {task}, result: {task.result}{TEXT_COLOR_DEFAULT}")
            password = password_in(task.result) or password

        if password:
            print(f"{TEXT_COLOR_GREEN}Password found: {password}{TEXT_COLOR_DEFAULT}")
        else:
            print(f"{TEXT_COLOR_RED}No password found{TEXT_COLOR_DEFAULT}")
        print(f"{TEXT_COLOR_CYAN}Total time: {datetime.now() - started}{TEXT_COLOR_DEFAULT}")


if __name__ == "__main__":
    args = parser.parse_args()
    run_golem_example(main(args), log_file=args.log_file)
