"""Bind mounts through the mount system calls (glibc), without a `mount` process per call: the
writable root of every activity is bound in place on deploy, where milliseconds count."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from pathlib import Path

from exeunit import errors

MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MNT_DETACH = 0x2

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def bind(source: Path, target: Path) -> None:
    """Mounts directory `source` at `target` too, with neither set-uid files nor device nodes."""
    _call(_libc.mount(os.fsencode(source), os.fsencode(target), None, MS_BIND, None), "bind", target)
    _call(_libc.mount(None, os.fsencode(target), None, MS_REMOUNT | MS_BIND | MS_NOSUID | MS_NODEV, None),
          "remount", target)


def detach(target: Path) -> None:
    """Unmounts `target` now; what still uses it keeps it until it lets go (a lazy unmount)."""
    _call(_libc.umount2(os.fsencode(target), MNT_DETACH), "unmount", target)


def _call(result: int, what: str, target: Path) -> None:
    if result != 0:
        code = ctypes.get_errno()
        raise errors.RuntimeFailure(f"{what} of {target} failed: {os.strerror(code)}")
