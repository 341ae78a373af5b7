"""How fast can one Python process stream bytes to another over gRPC on this machine, and what do
writing and hashing on the receiving side cost? The floor under `bench/run.py`'s upload case.

    python bench/grpc_floor.py            # 256 MiB per round, 3 rounds per variant

A server process receives 1 MiB messages on a client stream and, per variant, does nothing with
them, writes each to a file (in a thread, one chunk in flight, as the daemon does), hashes each
with sha256 (likewise), or both. Prints MiB/s per variant (median of the rounds).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import statistics
import subprocess
import sys
import tempfile
import time

import grpc

CHUNK = 1 << 20
OPTIONS = [("grpc.max_receive_message_length", 8 << 20), ("grpc.max_send_message_length", 8 << 20)]
VARIANTS = ("nothing", "write", "sha256", "write+sha256")


async def serve() -> None:
    async def sink(chunks, context) -> bytes:
        variant = dict(context.invocation_metadata())["variant"]
        digest = hashlib.sha256()
        with tempfile.TemporaryFile(dir="/var/tmp") as target:
            pending: asyncio.Future | None = None
            async for chunk in chunks:
                if pending is not None:
                    await pending
                work = []
                if "write" in variant:
                    work.append(asyncio.to_thread(target.write, chunk))
                if "sha256" in variant:
                    work.append(asyncio.to_thread(digest.update, chunk))
                pending = asyncio.gather(*work) if work else None
            if pending is not None:
                await pending
        return b""

    server = grpc.aio.server(options=OPTIONS)
    handler = grpc.method_handlers_generic_handler("floor.Floor", {"Sink": grpc.stream_unary_rpc_method_handler(sink)})
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(port, flush=True)
    await server.wait_for_termination()


async def measure(port: int, size: int, rounds: int) -> None:
    payload = os.urandom(CHUNK)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=OPTIONS) as channel:
        sink = channel.stream_unary("/floor.Floor/Sink")

        async def chunks():
            for _ in range(size // CHUNK):
                yield payload

        for variant in VARIANTS:
            rates = []
            for _ in range(rounds):
                started = time.perf_counter()
                await sink(chunks(), metadata=(("variant", variant),))
                rates.append(size / (time.perf_counter() - started) / CHUNK)
            print(f"{variant:>14}: {statistics.median(rates):6.0f} MiB/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mib", type=int, default=256, help="MiB per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        asyncio.run(serve())
        return
    server = subprocess.Popen([sys.executable, __file__, "--serve"], stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        asyncio.run(measure(int(server.stdout.readline()), args.mib * CHUNK, args.rounds))
    finally:
        server.kill()
        server.wait()


if __name__ == "__main__":
    main()
