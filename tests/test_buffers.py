"""Transfer buffers reused (exeunit.v1.buffers)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


# Allocates three message-sized buffers (3 MiB: a chunk as read, its message, gRPC's copy) and
# frees them, 64 times over, as a transfer does, and prints the minor page faults it took.
CHURN = """
import resource, sys
from exeunit.v1.buffers import keep_transfer_buffers
if sys.argv[1] == "kept":
    assert keep_transfer_buffers()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(64):
    blocks = [bytearray(3 << 20) for _ in range(3)]  # zero-filled: every page touched
    del blocks
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def faults(mode: str) -> int:
    done = subprocess.run([sys.executable, "-c", CHURN, mode], capture_output=True, text=True, check=True,
                          cwd=Path(__file__).resolve().parent.parent)  # where `exeunit` is imported from
    return int(done.stdout)


def test_kept_buffers_are_not_faulted_in_anew_for_each_chunk() -> None:
    pages = (3 << 20) // 4096
    plain, kept = faults("plain"), faults("kept")
    assert plain > 32 * pages, f"glibc's default was expected to map each block anew: {plain} faults"
    assert kept < 8 * pages, f"with the buffers kept, 64 blocks still took {kept} page faults"



# The requestor tunes the allocator of the process it runs in at its first transfer, unless the
# host program said not to: whether the tuning took, as the library's transfer calls leave it.
REQUESTOR_FIRST_TRANSFER = """
from exeunit.v1 import buffers
from requestor.client import streams
streams._reuse_buffers()  # what upload() and download() call first
print(buffers._kept)
"""


def requestor_tuning(environment: dict[str, str]) -> str:
    done = subprocess.run([sys.executable, "-c", REQUESTOR_FIRST_TRANSFER], capture_output=True, text=True,
                          check=True, cwd=Path(__file__).resolve().parent.parent, env=environment)
    return done.stdout.strip()


def test_a_requestor_host_program_may_keep_its_allocator_as_it_is() -> None:
    base = {k: v for k, v in os.environ.items() if k != "GOLEM_KEEP_TRANSFER_BUFFERS"}
    assert requestor_tuning(base) == "True"  # by default, from the first transfer on
    assert requestor_tuning({**base, "GOLEM_KEEP_TRANSFER_BUFFERS": "0"}) == "None"  # never tried
