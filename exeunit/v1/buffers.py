"""Transfer buffers reused instead of mapped anew, on both ends of a transfer (glibc only).

A transfer moves 3 MiB buffers several at a time: a chunk as read, its message, gRPC's copy.
glibc maps each block that large afresh and unmaps it once freed. After it has raised its own
threshold, it hands the top of its heap back whenever more than two such blocks are free. Either
way each buffer pays for its page faults and zeroed pages again, and that was a third of the
daemon's event loop per MiB downloaded. `keep_transfer_buffers` has blocks up to MMAP_THRESHOLD
come from the heap, and keeps up to TRIM_THRESHOLD free at the heap's top, per arena. Measured
with `python bench/transfer_cpu.py down`: the daemon's event loop went from 0.57 to 0.28-0.35 ms
per MiB, its whole process from 1.4 to 0.8, and the requestor's loop from 0.55-0.6 to 0.4-0.46.
The daemon still hands back what is free when a transfer or an activity ends
(exeunit.runtime.memory).
"""

from __future__ import annotations

import ctypes
import ctypes.util

M_TRIM_THRESHOLD = -1  # mallopt's parameter numbers, from glibc's malloc.h
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 8 << 20  # above a transfer's 3 MiB chunk and its message
TRIM_THRESHOLD = 16 << 20  # a few chunks in flight

try:
    _mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
except (OSError, AttributeError):  # not glibc: its own allocator, left as it is
    _mallopt = None
_kept: bool | None = None  # whether it took, once tried


def keep_transfer_buffers() -> bool:
    """Sets glibc to reuse large buffers (tried once per process; any thread). Returns False where
    the C library is not glibc or refused the values (a 32-bit glibc caps the mmap threshold)."""
    global _kept
    if _kept is None:
        _kept = _mallopt is not None and _mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
        if _kept:  # the trim threshold only with the other: alone, glibc's own adjustment would stop
            _kept = _mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    return _kept
