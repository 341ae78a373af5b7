"""Giving freed memory back to the host.

glibc keeps what a process frees for later use; after the output and event logs of finished
batches are dropped, the daemon's resident memory would stay at its peak. `malloc_trim` hands the
free pages back (where glibc is the C library; elsewhere this does nothing). It walks the heap, so
however many activities end at once it runs at most once per TRIM_INTERVAL seconds, the last time
after the last of them."""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import time

TRIM_INTERVAL = 1.0

try:
    _malloc_trim = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
except (OSError, AttributeError):
    _malloc_trim = None
_last_trim = float("-inf")
_pending: asyncio.TimerHandle | None = None


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
