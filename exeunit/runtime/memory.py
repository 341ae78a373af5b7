"""Giving freed memory back to the host.

glibc keeps what a process frees for later use; after the output and event logs of finished
batches are dropped, the daemon's resident memory would stay at its peak. `malloc_trim` hands the
free pages back (where glibc is the C library; elsewhere this does nothing). It walks the heap, so
however many activities end at once it runs at most once per TRIM_INTERVAL seconds, the last time
after the last of them.

glibc also gives each thread that allocates its own arena (up to 8 per core), and what the data
threads (file transfers, journal reads) free there stays: `limit_arenas` keeps the daemon to two
(measured in bench/run.py: the daemon after the transfer cases 76 MiB instead of 92, at the same
throughput).
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import time

TRIM_INTERVAL = 1.0

ARENAS = 2
M_ARENA_MAX = -8  # mallopt's parameter number, from glibc's malloc.h

try:
    _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    _malloc_trim = _libc.malloc_trim
    _mallopt = _libc.mallopt
except (OSError, AttributeError):
    _malloc_trim = _mallopt = None
_last_trim = float("-inf")
_pending: asyncio.TimerHandle | None = None


def limit_arenas() -> bool:
    """Caps glibc's arenas for this process (call it before threads start; False where not glibc)."""
    return _mallopt is not None and _mallopt(M_ARENA_MAX, ARENAS) == 1


def release_memory() -> None:
    """Trims now, or once the interval since the last trim is over (call it on the event loop)."""
    global _pending
    if _malloc_trim is None or _pending is not None:
        return
    wait = _last_trim + TRIM_INTERVAL - time.monotonic()
    if wait <= 0:
        _trim()
    else:
        _pending = asyncio.get_running_loop().call_later(wait, _trim)


def _trim() -> None:
    global _last_trim, _pending
    _pending = None
    _last_trim = time.monotonic()
    _malloc_trim(0)
