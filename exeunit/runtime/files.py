"""Files in and out of an activity's container, through the host directories of its volumes.

Transfers reach only the image's declared VOLUMEs (the container's root is writable, as a VM's,
but it is the engine's layer, not a directory of ours), so they are confined to them. Their directories are on the host (see `exeunit.runtime.storage`), so the daemon reads
and writes them itself, without the engine. The container can change them at any moment (swap a
directory for a symbolic link between a check and a use), so a path is never resolved by name: it is
opened one component at a time, each relative to the directory already opened and refusing symbolic
links (`O_NOFOLLOW`), and the file is then used only through its descriptor. Nothing a transfer does
can leave the volume's filesystem.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
import posixpath
import stat
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from exeunit import errors
from exeunit.runtime.threads import in_data_thread
from exeunit.v1.conventions import DIGEST_BLAKE3, DIGEST_SHA256, DOWNLOAD_CHUNK_SIZE

MAX_PATH_BYTES = 4095  # Linux's PATH_MAX, less the terminating NUL
MAX_NAME_BYTES = 255  # Linux's NAME_MAX
_DIRECTORY_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
ABSORB_SLICE = 256 << 10  # an upload is hashed, then written, this much at a time (while in the CPU's cache)


def transfer_digests() -> tuple[str, ...]:
    """The digests beyond SHA-256 this host can check transfers with (BLAKE3 with its package)."""
    try:
        import blake3  # noqa: F401
    except ImportError:
        return ()
    return (DIGEST_BLAKE3,)


def new_digest(algorithm: str) -> Any:
    """A hash object of `algorithm` (DIGEST_SHA256 or DIGEST_BLAKE3): both hash without the GIL."""
    if algorithm == DIGEST_BLAKE3:
        import blake3

        return blake3.blake3()
    if algorithm != DIGEST_SHA256:
        raise errors.InvalidArgument(f"digest {algorithm!r} is not one this provider checks transfers with")
    return hashlib.sha256()


@dataclass(frozen=True)
class Destination:
    """Where a path lands: the volume holding it and the path relative to that volume."""

    volume: str
    relative: str

    @property
    def path(self) -> str:
        return posixpath.join(self.volume, self.relative)


def confine(path: str, volumes: tuple[str, ...]) -> Destination:
    """Checks that a path is a file path inside one of the volumes; names the cause when not."""
    writable = ", ".join(volumes) or "none (the image declares no VOLUME)"
    if not path.startswith("/"):
        raise errors.InvalidArgument(f"path {path!r} must be absolute, for example /golem/input/data.bin")
    if "\x00" in path:
        raise errors.InvalidArgument("path cannot contain NUL bytes")
    if len(path.encode()) > MAX_PATH_BYTES:
        raise errors.InvalidArgument(f"path is {len(path.encode())} bytes long; at most {MAX_PATH_BYTES} are allowed")
    longest = max(path.split("/"), key=lambda part: len(part.encode()))
    if len(longest.encode()) > MAX_NAME_BYTES:
        raise errors.InvalidArgument(
            f"path component {longest[:40]!r}... is {len(longest.encode())} bytes long; a file or directory "
            f"name is at most {MAX_NAME_BYTES} bytes"
        )
    if ".." in path.split("/"):
        raise errors.InvalidArgument(f"path {path!r} contains '..'; give the plain absolute path inside a volume")
    normalized = posixpath.normpath(path)
    for volume in sorted(volumes, key=len, reverse=True):
        if normalized.startswith(volume.rstrip("/") + "/"):
            return Destination(volume, posixpath.relpath(normalized, volume))
        if normalized == volume.rstrip("/"):
            raise errors.InvalidArgument(f"path {path!r} is a volume's root directory; name a file inside it")
    raise errors.FailedPrecondition(
        f"path {path!r} is not under a volume: only the image's volumes can be transferred to or from "
        f"({writable}); a command can copy a file from there to anywhere in the container"
    )


def open_beneath(root: Path, dest: Destination, flags: int, mode: int = 0o644,
                 make_dirs: bool = False, owner: tuple[int, int] = (0, 0)) -> int:
    """Opens dest's file beneath the volume's host directory without following any symbolic link;
    creates missing directories (owned by `owner`) when `make_dirs`. Returns the descriptor."""
    parts = dest.relative.split("/")
    directory = os.open(root, _DIRECTORY_FLAGS)
    try:
        for depth, name in enumerate(parts[:-1], start=1):
            where = posixpath.join(dest.volume, *parts[:depth])
            try:
                inner = os.open(name, _DIRECTORY_FLAGS, dir_fd=directory)
            except FileNotFoundError:
                if not make_dirs:
                    raise errors.NotFound(f"{dest.path} does not exist in the container") from None
                try:
                    os.mkdir(name, 0o755, dir_fd=directory)
                    os.chown(name, *owner, dir_fd=directory, follow_symlinks=False)
                except FileExistsError:
                    pass  # made meanwhile: opened below like any other
                inner = _open_component(name, _DIRECTORY_FLAGS, 0, directory, where)
            except OSError as exc:
                raise _refusal(exc, where, directory, name) from None
            os.close(directory)
            directory = inner
        return _open_component(parts[-1], flags | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, mode,
                               directory, dest.path)
    finally:
        os.close(directory)


def existing_size(root: Path, dest: Destination) -> int:
    """Bytes of the regular file at dest now (what an upload there frees first), 0 when none."""
    try:
        fd = open_beneath(root, dest, os.O_RDONLY)
    except errors.ExeUnitError:
        return 0
    try:
        return os.fstat(fd).st_size
    finally:
        os.close(fd)


def _open_component(name: str, flags: int, mode: int, directory: int, where: str) -> int:
    try:
        fd = os.open(name, flags, mode, dir_fd=directory)
    except FileNotFoundError:
        raise errors.NotFound(f"{where} does not exist in the container") from None
    except OSError as exc:
        raise _refusal(exc, where, directory, name) from None
    kind = os.fstat(fd).st_mode
    wanted_directory = bool(flags & os.O_DIRECTORY)
    if (stat.S_ISDIR(kind) if wanted_directory else stat.S_ISREG(kind)) is False:
        os.close(fd)
        what = "a directory" if wanted_directory else "a regular file; only files can be transferred"
        raise errors.FailedPrecondition(f"{where} is not {what}")
    return fd


def _is_symlink(directory: int, name: str) -> bool:
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=directory, follow_symlinks=False).st_mode)
    except OSError:
        return False


def _refusal(exc: OSError, where: str, directory: int | None = None, name: str = "") -> errors.ExeUnitError:
    if exc.errno == errno.ELOOP or (directory is not None and _is_symlink(directory, name)):
        return errors.FailedPrecondition(
            f"{where} is a symbolic link; transfers do not follow links, which could lead out of the volume"
        )
    if exc.errno in (errno.ENOTDIR, errno.EISDIR, errno.ENXIO):
        return errors.FailedPrecondition(f"{where} is not a regular file or directory as the path needs")
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return errors.ResourceExhausted(f"the activity's storage is full; {where} was not written")
    return errors.FailedPrecondition(f"{where} cannot be opened ({os.strerror(exc.errno or 0)})")


Pace = Callable[[int], Awaitable[None]]  # awaited before each chunk of that many bytes moves


async def unpaced(size: int) -> None:
    return None


@dataclass(frozen=True)
class UploadResult:
    size: int
    digest: str  # hex, in the upload's algorithm


class Upload:
    """Streams one file into a volume while its chunks arrive; verifies size and checksum.

    Feed chunks with `write`, then `finish(digest)`. A failed upload leaves an empty file, never a
    partial one."""

    def __init__(self, root: Path, dest: Destination, size: int, mode: int, owner: tuple[int, int],
                 algorithm: str = DIGEST_SHA256) -> None:
        self._root = root
        self._dest = dest
        self._size = size
        self._mode = (mode & 0o777) or 0o644  # permission bits only: no setuid, setgid or sticky
        self._owner = owner
        self._fd: int | None = None
        self._writing: asyncio.Future[object] | None = None  # the hash and write of the last chunk, if running
        self._received = 0
        self._digest = new_digest(algorithm)
        self._cancelled: errors.ExeUnitError | None = None
        self.on_progress: Callable[[], None] = lambda: None  # called as each chunk arrives
        self.pace: Pace = unpaced

    def cancel(self) -> None:
        """Makes the next write fail (the activity is ending); callable from any thread."""
        self._cancelled = errors.FailedPrecondition(f"the upload to {self._dest.path} was cut: the activity ended")

    async def begin(self) -> None:
        self._fd = await in_data_thread(self._open)

    def _open(self) -> int:
        fd = open_beneath(self._root, self._dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, self._mode,
                          make_dirs=True, owner=self._owner)
        os.fchown(fd, *self._owner)
        os.fchmod(fd, self._mode)
        return fd

    async def write(self, chunk: bytes) -> None:
        if self._cancelled is not None:
            raise self._cancelled
        self._received += len(chunk)
        if self._received > self._size:
            raise errors.DataLoss(f"received more than the declared {self._size} bytes")
        self.on_progress()
        await self.pace(len(chunk))
        if self._writing is not None:  # one chunk in flight: the next one arrives while it is written
            await self._writing
        self._writing = asyncio.ensure_future(in_data_thread(self._absorb, chunk))

    def _absorb(self, chunk: bytes) -> None:
        """Hashes and writes one chunk, off the event loop (one chunk at a time, in order), a slice
        at a time: the write then copies bytes the hash has just brought into the CPU's cache.
        Cheaper than hashing and writing the whole chunk, as two threads at once did before
        (`python bench/absorb.py`), and no slower on two cores (`python bench/run.py --only transfer`)."""
        assert self._fd is not None
        whole = memoryview(chunk)
        try:
            for start in range(0, len(whole), ABSORB_SLICE):
                view = whole[start : start + ABSORB_SLICE]
                self._digest.update(view)
                while view:
                    view = view[os.write(self._fd, view):]
        except OSError as exc:
            raise _refusal(exc, self._dest.path) from None

    async def finish(self, digest: str) -> UploadResult:
        if self._writing is not None:
            await self._writing
        if self._received != self._size:
            raise errors.DataLoss(f"received {self._received} bytes, the header declared {self._size}")
        actual = self._digest.hexdigest()
        if not digest:
            raise errors.InvalidArgument("the trailer has no digest of the file: send it (the receiver checks "
                                         "every upload end to end); the file was emptied")
        if digest.lower() != actual:
            raise errors.DataLoss(
                f"checksum mismatch for {self._dest.path}: sent data hashes to {actual}, the trailer says "
                f"{digest}; the file was emptied"
            )
        await self._close(keep=True)
        return UploadResult(self._received, actual)

    async def abort(self, reason: BaseException) -> None:
        """Ends a failed upload, leaving an empty file."""
        await self._close(keep=False)

    async def _close(self, keep: bool) -> None:
        if self._writing is not None:  # never close the descriptor under a write still running
            await asyncio.wait([self._writing])
        if self._fd is None:
            return
        try:
            if not keep:
                os.ftruncate(self._fd, 0)
        finally:
            os.close(self._fd)
            self._fd = None


@dataclass(frozen=True)
class DownloadHeader:
    size: int
    mode: int


class Download:
    """One file streamed out of a volume: its header (as it was when opened), then its chunks."""

    def __init__(self, fd: int, header: DownloadHeader, path: str, digest: Any) -> None:
        self.header = header
        self._fd: int | None = fd
        self._path = path
        self._cut: errors.ExeUnitError | None = None
        self._digest = digest  # a new_digest(...): what the trailer states
        self._lock = threading.Lock()
        self.on_progress: Callable[[], None] = lambda: None  # called as each chunk is handed on
        self.pace: Pace = unpaced

    def digest(self) -> str:
        """Hex digest (in the download's algorithm) of what `chunks()` has yielded."""
        return self._digest.hexdigest()

    async def chunks(self, frame: Callable[[bytes], bytes] = bytes) -> AsyncIterator[bytes]:
        """The file's first `header.size` bytes, each chunk passed through `frame` (the caller's wire
        encoding, say) in the thread that read and hashed it, so that the event loop does not copy
        it; raises the reason if the download was cut meanwhile. The next chunk is read while the
        current one is sent."""
        offset = 0
        size = self.header.size
        reading = self._read_at(offset, frame) if size else None
        try:
            while reading is not None:
                framed, count = await reading
                if not count:
                    raise errors.DataLoss(
                        f"{self._path} shrank while it was downloaded; its announced size did not arrive"
                    )
                offset += count
                reading = self._read_at(offset, frame) if offset < size else None
                self.on_progress()
                await self.pace(count)
                yield framed
        finally:
            if reading is not None and not reading.done():  # abandoned: nobody wants its outcome
                reading.add_done_callback(lambda done: done.cancelled() or done.exception())

    def _read_at(self, offset: int, frame: Callable[[bytes], bytes]) -> asyncio.Future[tuple[bytes, int]]:
        if self._cut is not None:
            raise self._cut
        count = min(DOWNLOAD_CHUNK_SIZE, self.header.size - offset)
        return asyncio.ensure_future(in_data_thread(self._read, offset, count, frame))

    def _read(self, offset: int, count: int, frame: Callable[[bytes], bytes]) -> tuple[bytes, int]:
        """Reads, hashes and frames the next chunk, off the event loop (never while `close` runs);
        returns the framed chunk and how many of the file's bytes it holds."""
        with self._lock:
            fd = self._fd
            if fd is None:
                raise self._cut or errors.FailedPrecondition(f"the download of {self._path} was closed")
            chunk = os.pread(fd, count, offset)
            self._digest.update(chunk)
        return (frame(chunk) if chunk else b""), len(chunk)

    def cut(self, reason: errors.ExeUnitError) -> None:
        """Stops the download; the reader gets `reason` at its next chunk. Any thread."""
        self._cut = self._cut or reason

    def close(self) -> None:
        with self._lock:  # a read ahead may still be running in a data thread
            fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)


async def download(root: Path, dest: Destination, algorithm: str = DIGEST_SHA256) -> Download:
    """Opens the file at dest for reading: a regular file inside the volume, reached without links."""
    digest = new_digest(algorithm)  # an unknown algorithm is refused before anything is opened
    fd = await in_data_thread(open_beneath, root, dest, os.O_RDONLY)
    info = os.fstat(fd)
    return Download(fd, DownloadHeader(info.st_size, stat.S_IMODE(info.st_mode)), dest.path, digest)
