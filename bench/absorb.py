"""What a received chunk costs to hash and write, whole or a slice at a time (issue 28).

    python bench/absorb.py [MIB]     # default 768 MiB a try, three tries of each way

Both ends of a transfer hash each chunk they receive (BLAKE3 here, as both ends pick it when they
have it) and write it to a file. Done whole, a chunk larger than the CPU's cache is read from
memory twice, once by the hash and once by the write's copy into the page cache; done a slice at a
time, the write copies bytes the hash has just brought into the cache. Prints the CPU time per MiB
of each way, in the one thread that does it, with the file written to this machine's temporary
directory and synced between tries.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

import blake3

MIB = 1 << 20
CHUNK = 3 * MIB  # the download chunk (exeunit.v1.conventions.DOWNLOAD_CHUNK_SIZE)
WAYS = {"whole 3 MiB chunk": None, "1 MiB slices": MIB, "256 KiB slices": 256 << 10, "128 KiB slices": 128 << 10}


def absorb(chunk: memoryview, mib: int, slice_bytes: int | None, path: str) -> float:
    """CPU ms per MiB to hash and write `mib` MiB of `chunk` repeated, `slice_bytes` at a time."""
    os.sync()
    digest = blake3.blake3()
    step = slice_bytes or len(chunk)
    started = time.thread_time()
    with open(path, "wb", buffering=0) as out:
        for _ in range(mib * MIB // len(chunk)):
            for at in range(0, len(chunk), step):
                piece = chunk[at : at + step]
                digest.update(piece)
                out.write(piece)
    spent = time.thread_time() - started
    os.unlink(path)
    return spent * 1000 / mib


def main() -> None:
    mib = int(sys.argv[1]) if len(sys.argv) > 1 else 768
    chunk = memoryview(os.urandom(CHUNK))
    path = os.path.join(tempfile.gettempdir(), f"exeunit-absorb-{os.getpid()}.bin")
    spent: dict[str, list[float]] = {way: [] for way in WAYS}
    for _ in range(3):
        for way, slice_bytes in WAYS.items():
            spent[way].append(absorb(chunk, mib, slice_bytes, path))
    for way, figures in spent.items():
        print(f"{way:>18}: " + " ".join(f"{f:.3f}" for f in figures) + " ms CPU per MiB")


if __name__ == "__main__":
    main()
