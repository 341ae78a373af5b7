"""Fetching an image archive from a url a requestor gave, fenced.

A requestor's url must not become a way into the provider's host or its network: `file://` reads
only regular files beneath a directory the operator names; http(s) refuses hosts that resolve to
loopback, private, link-local, multicast or otherwise non-public addresses (checked for every
redirect, and the connection goes to the address that was checked, so a second DNS answer cannot
move it). Size is capped, a read that waits too long and a fetch that lasts too long are cut, and
`cancel()` stops a fetch at once from any thread. Errors say what the requestor can fix and never
what the host knows (no errno of host paths, no hashes of host files, no port states); the
provider's log has the detail.
"""

from __future__ import annotations

import hashlib
import http.client
import ipaddress
import logging
import os
import socket
import ssl
import stat
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import BinaryIO, Protocol

from exeunit import errors
from exeunit.domain.settings import FetchPolicy

log = logging.getLogger(__name__)

CHUNK = 1 << 20
REDIRECTS = (301, 302, 303, 307, 308)


class _Readable(Protocol):
    def read1(self, size: int) -> bytes: ...


def public_address(address: str) -> bool:
    """Whether an address is on the public internet (not loopback, private, link-local, ...)."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


class ArchiveFetch:
    """One archive copied from a url into a local file, hashed on the way."""

    def __init__(self, url: str, policy: FetchPolicy, max_bytes: int, target: Path) -> None:
        self.url = url
        self._policy = policy
        self._max_bytes = min(max_bytes, policy.max_bytes)
        self._target = target
        self._cancelled = threading.Event()
        self._socket: socket.socket | None = None
        self._deadline = time.monotonic() + policy.deadline_seconds

    def cancel(self) -> None:
        """Stops the fetch at once (the activity or the daemon is ending). Any thread."""
        self._cancelled.set()
        sock = self._socket
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def run(self) -> str:
        """Copies the archive to the target file; returns its "sha256:..." hash. Blocks."""
        if not self._policy.enabled:
            raise errors.FailedPrecondition("this provider does not fetch images from urls; use an image it offers")
        scheme = urllib.parse.urlsplit(self.url).scheme.lower()
        if scheme == "file":
            with self._open_file() as source:
                return self._copy(source)
        if scheme in ("http", "https"):
            response, connection = self._open_http()
            try:
                return self._copy(response)
            finally:
                connection.close()
        raise errors.InvalidArgument(f"image url scheme {scheme!r} is not one of file, http, https")

    # file://

    def _open_file(self) -> BinaryIO:
        refused = errors.FailedPrecondition(
            "the file url does not name a readable regular file beneath this provider's image directory"
            if self._policy.file_root else "this provider does not accept file:// image urls"
        )
        if not self._policy.file_root:
            raise refused
        parts = urllib.parse.urlsplit(self.url)
        if parts.netloc not in ("", "localhost"):
            raise refused
        root = os.path.realpath(self._policy.file_root)
        path = os.path.realpath(urllib.request.url2pathname(parts.path))
        if os.path.commonpath([root, path]) != root:
            raise refused
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:
            log.info("event=image_file_refused path=%s error=%s", path, exc)
            raise refused from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise refused
        return os.fdopen(fd, "rb")

    # http(s)://

    def _open_http(self) -> tuple[http.client.HTTPResponse, http.client.HTTPConnection]:
        url = self.url
        for _ in range(self._policy.max_redirects + 1):
            parts = urllib.parse.urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise errors.FailedPrecondition("the image url redirects to something that is not an http(s) url")
            port = parts.port or (443 if parts.scheme == "https" else 80)
            address = self._checked_address(parts.hostname, port)
            connection = _pinned_connection(parts.scheme, parts.hostname, port, address, self._policy.idle_seconds)
            try:
                connection.connect()
                self._socket = connection.sock
                if self._cancelled.is_set():
                    raise errors.FailedPrecondition("the image fetch was cancelled")
                target = urllib.parse.urlunsplit(("", "", parts.path or "/", parts.query, ""))
                connection.request("GET", target, headers={"User-Agent": "exeunit-image-fetch"})
                response = connection.getresponse()
            except (OSError, http.client.HTTPException) as exc:
                connection.close()
                if self._cancelled.is_set():
                    raise errors.FailedPrecondition("the image fetch was cancelled") from None
                log.info("event=image_fetch_failed url=%s error=%s", url, exc)
                raise errors.FailedPrecondition(f"could not fetch the image archive from {self.url}") from None
            if response.status in REDIRECTS and response.getheader("Location"):
                url = urllib.parse.urljoin(url, response.getheader("Location", ""))
                connection.close()
                continue
            if response.status != 200:
                connection.close()
                raise errors.FailedPrecondition(f"the image url answered HTTP {response.status}, not 200")
            return response, connection
        raise errors.FailedPrecondition(f"the image url redirects more than {self._policy.max_redirects} times")

    def _checked_address(self, host: str, port: int) -> str:
        """An address of host that the policy allows; every address it resolves to must be allowed."""
        refused = errors.FailedPrecondition(
            f"image url host {host!r} cannot be resolved or is not public (loopback, private, link-local and "
            "multicast addresses are refused)"
        )
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError):
            raise refused from None
        addresses = [str(info[4][0]) for info in infos]
        if not addresses:
            raise refused
        if not self._policy.allow_private_hosts and not all(public_address(a) for a in addresses):
            log.info("event=image_host_refused host=%s addresses=%s", host, ",".join(addresses))
            raise refused
        return addresses[0]

    # copying

    def _copy(self, source: _Readable) -> str:
        digest = hashlib.sha256()
        copied = 0
        with open(self._target, "wb") as out:
            while True:
                if self._cancelled.is_set():
                    raise errors.FailedPrecondition("the image fetch was cancelled")
                if time.monotonic() > self._deadline:
                    raise errors.TimedOut(
                        f"fetching the image archive took longer than {self._policy.deadline_seconds:g}s"
                    )
                try:
                    chunk = source.read1(CHUNK)  # what has arrived: a trickle still meets the deadline
                except (OSError, http.client.HTTPException) as exc:
                    if self._cancelled.is_set():
                        raise errors.FailedPrecondition("the image fetch was cancelled") from None
                    if isinstance(exc, TimeoutError):
                        raise errors.TimedOut(
                            f"the image url sent nothing for {self._policy.idle_seconds:g}s"
                        ) from None
                    log.info("event=image_fetch_failed url=%s error=%s", self.url, exc)
                    raise errors.FailedPrecondition(f"could not fetch the image archive from {self.url}") from None
                if not chunk:
                    if self._cancelled.is_set():  # a shut-down socket reads as the end
                        raise errors.FailedPrecondition("the image fetch was cancelled")
                    break
                copied += len(chunk)
                if copied > self._max_bytes:
                    raise errors.ResourceExhausted(
                        f"the image archive is larger than {self._max_bytes} bytes, the most this agreement's "
                        "storage and the provider (--max-image-gib) allow"
                    )
                digest.update(chunk)
                out.write(chunk)
        return "sha256:" + digest.hexdigest()


def _pinned_connection(scheme: str, host: str, port: int, address: str, timeout: float) -> http.client.HTTPConnection:
    """A connection to `address` that speaks to `host` (Host header, TLS name and certificate)."""
    if scheme == "https":
        return _PinnedHTTPSConnection(host, port, address, timeout)
    return _PinnedHTTPConnection(host, port, address, timeout)


class _PinnedHTTPConnection(http.client.HTTPConnection):
    def __init__(self, host: str, port: int, address: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self._address = address

    def connect(self) -> None:
        self.sock = socket.create_connection((self._address, self.port), self.timeout)


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    def __init__(self, host: str, port: int, address: str, timeout: float) -> None:
        self._tls = ssl.create_default_context()
        super().__init__(host, port, timeout=timeout, context=self._tls)
        self._address = address

    def connect(self) -> None:
        raw = socket.create_connection((self._address, self.port), self.timeout)
        self.sock = self._tls.wrap_socket(raw, server_hostname=self.host)
