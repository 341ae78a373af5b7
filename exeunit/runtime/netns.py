"""Connecting to a port inside a container's network namespace, from the host.

A socket belongs to the network namespace of the thread that creates it. A short-lived thread
enters the container's namespace (`setns` on /proc/PID/ns/net; Python 3.11 has no os.setns, so
through libc), creates and connects the socket, and ends; the socket then works from any thread.
The container needs no network of its own, and the host needs no address on it. The thread is
never a pooled one: it dies with the namespace it entered.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import socket
import threading

from exeunit import errors

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def connect_in_netns(netns_fd: int, port: int, timeout: float) -> socket.socket:
    """A connected TCP socket to 127.0.0.1:`port` in the network namespace `netns_fd` refers to.
    Blocks (call it in a thread); FailedPrecondition when nothing listens there."""
    outcome: list[socket.socket | BaseException] = []

    def inside() -> None:
        try:
            if _libc.setns(netns_fd, CLONE_NEWNET) != 0:
                code = ctypes.get_errno()
                raise OSError(code, os.strerror(code))
            outcome.append(socket.create_connection(("127.0.0.1", port), timeout))
        except BaseException as exc:  # handed to the caller's thread
            outcome.append(exc)

    thread = threading.Thread(target=inside, name="netns-connect", daemon=True)
    thread.start()
    thread.join()
    result = outcome[0]
    if isinstance(result, ConnectionRefusedError):
        raise errors.FailedPrecondition(f"nothing listens on port {port} in the activity") from None
    if isinstance(result, (TimeoutError, socket.timeout)):
        raise errors.TimedOut(f"port {port} in the activity did not accept a connection within {timeout:g}s") from None
    if isinstance(result, OSError):
        raise errors.RuntimeFailure(f"cannot reach port {port} in the activity: {result.strerror or result}") from None
    if isinstance(result, BaseException):
        raise result
    result.settimeout(None)
    return result
