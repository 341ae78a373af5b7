"""The TAP device through which the overlay agent joins a network's bridge, in the network's own
namespace (entered by a short-lived thread, so the agent itself never leaves its namespace)."""

from __future__ import annotations

import ctypes
import fcntl
import os
import struct
import subprocess
import threading

TAP_NAME = "ov0"
TUNSETIFF, IFF_TAP, IFF_NO_PI = 0x400454CA, 0x0002, 0x1000
CLONE_NEWNET = 0x40000000


def open_tap(netns: str) -> int:
    """A TAP device named ov0 in the namespace `netns`, opened (in a thread of its own, which
    enters that namespace and ends: only that thread ever leaves the agent's namespace)."""
    result: dict[str, int | BaseException] = {}

    def in_namespace() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            target = os.open(f"/run/netns/{netns}", os.O_RDONLY)
            try:
                if libc.setns(target, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), f"cannot enter the namespace {netns}")
            finally:
                os.close(target)
            tap = os.open("/dev/net/tun", os.O_RDWR)
            fcntl.ioctl(tap, TUNSETIFF, struct.pack("16sH", TAP_NAME.encode(), IFF_TAP | IFF_NO_PI))
            result["tap"] = tap
        except BaseException as exc:  # handed to the caller
            result["error"] = exc

    thread = threading.Thread(target=in_namespace)
    thread.start()
    thread.join()
    if "error" in result:
        raise OSError(f"cannot make the overlay's TAP device in {netns}: {result['error']}")
    return int(result["tap"])  # type: ignore[arg-type]


def run(*argv: str) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    if done.returncode != 0:
        raise OSError(f"{' '.join(argv)}: {done.stderr.strip()}")
