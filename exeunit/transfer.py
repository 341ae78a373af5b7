"""Files in and out of an activity's container, streamed through tar without holding them in memory.

Only the image's declared VOLUMEs are writable (the root filesystem is read-only), so transfers are
confined to them; paths are checked here before the engine sees them.
"""

from __future__ import annotations

import asyncio
import hashlib
import posixpath
import queue
import tarfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass

from exeunit import errors
from exeunit.docker_runtime import DockerRuntime, PathStat
from exeunit.threads import LoopToThread, in_data_thread, iterate_in_thread

CHUNK_SIZE = 1 << 20
MAX_PATH_BYTES = 4095  # Linux's PATH_MAX, less the terminating NUL
MAX_NAME_BYTES = 255  # Linux's NAME_MAX
_END = object()


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
        f"path {path!r} is not under a writable volume: the container's root filesystem is read-only "
        f"and only the image's volumes can be transferred to or from ({writable})"
    )


def walk_volume_path(runtime: DockerRuntime, container_id: str, dest: Destination) -> tuple[list[str], PathStat | None]:
    """Checks every component below the volume; returns the directories still to be created and
    the stat of the path itself (None when it does not exist).

    Refuses a symbolic link anywhere on the way: the engine would follow it out of the volume
    (for example into the read-only root filesystem, which it writes regardless).
    """
    parts = dest.relative.split("/")
    missing: list[str] = []
    stat: PathStat | None = None
    for depth in range(1, len(parts) + 1):
        relative = "/".join(parts[:depth])
        full = posixpath.join(dest.volume, relative)
        stat = None
        if missing:
            missing.append(relative)
            continue
        try:
            stat = runtime.stat_path(container_id, full)
        except errors.NotFound:
            missing.append(relative)
            continue
        if stat.is_symlink:
            raise errors.FailedPrecondition(
                f"{full} is a symbolic link; transfers do not follow links, which could lead out of the "
                "volume (into the read-only root filesystem)"
            )
        if depth < len(parts) and not stat.is_directory:
            raise errors.FailedPrecondition(f"{full} is not a directory")
    return [d for d in missing if d != dest.relative], stat


@dataclass(frozen=True)
class UploadResult:
    size: int
    sha256: str


class Upload:
    """Streams one file into a container while its chunks arrive; verifies size and checksum.

    Feed chunks with `write`, then `finish(sha256)`. The file is written under a volume through a
    lazily-read tar stream, so memory holds only a few chunks whatever the file size.
    """

    def __init__(self, runtime: DockerRuntime, container_id: str, dest: Destination, size: int, mode: int) -> None:
        self._runtime = runtime
        self._container = container_id
        self._dest = dest
        self._size = size
        self._mode = (mode & 0o777) or 0o644  # permission bits only: no setuid, setgid or sticky
        self._received = 0
        self._digest = hashlib.sha256()
        self._chunks: LoopToThread[object] = LoopToThread(maxsize=8)
        self._writer: asyncio.Future[None] | None = None
        self._cancelled: BaseException | None = None
        self.on_progress: Callable[[], None] = lambda: None  # called as each chunk arrives

    def cancel(self) -> None:
        """Makes the engine's write fail at once (the activity is ending); callable from any thread."""
        self._cancelled = errors.FailedPrecondition(f"the upload to {self._dest.path} was cut: the activity ended")

    async def begin(self) -> None:
        missing_dirs, _ = await asyncio.to_thread(walk_volume_path, self._runtime, self._container, self._dest)
        self._writer = asyncio.ensure_future(
            in_data_thread(self._runtime.put_archive, self._container, self._dest.volume, self._tar(missing_dirs))
        )

    def _tar(self, missing_dirs: list[str]) -> Iterator[bytes]:
        now = time.time()
        for directory in missing_dirs:
            info = tarfile.TarInfo(directory)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, now
            yield info.tobuf(format=tarfile.PAX_FORMAT)
        info = tarfile.TarInfo(self._dest.relative)
        info.size, info.mode, info.mtime = self._size, self._mode, now
        yield info.tobuf(format=tarfile.PAX_FORMAT)
        while (chunk := self._next_chunk()) is not _END:
            if isinstance(chunk, BaseException):
                raise chunk  # aborts the request; the engine rejects the truncated archive
            yield chunk  # type: ignore[misc]
        padding = -self._size % tarfile.BLOCKSIZE
        yield b"\0" * (padding + 2 * tarfile.BLOCKSIZE)

    def _next_chunk(self) -> object:
        while True:
            if self._cancelled is not None:
                raise self._cancelled
            try:
                return self._chunks.get(timeout=0.2)
            except queue.Empty:
                continue

    async def _put(self, item: object) -> None:
        """Hands an item to the engine's writer; raises the writer's error if it stopped reading."""
        while True:
            if self._writer is not None and self._writer.done():
                self._writer.result()
                raise errors.RuntimeFailure(f"the engine stopped reading the upload to {self._dest.path}")
            if await self._chunks.put(item, wait=0.2):
                return

    async def write(self, chunk: bytes) -> None:
        self._received += len(chunk)
        if self._received > self._size:
            raise errors.DataLoss(f"received more than the declared {self._size} bytes")
        self.on_progress()
        self._digest.update(chunk)
        await self._put(chunk)

    async def finish(self, sha256: str) -> UploadResult:
        if self._received != self._size:
            raise errors.DataLoss(f"received {self._received} bytes, the header declared {self._size}")
        await self._put(_END)
        assert self._writer is not None
        await self._writer
        actual = self._digest.hexdigest()
        if sha256 and sha256.lower() != actual:
            await self._replace_with_empty()
            raise errors.DataLoss(
                f"checksum mismatch for {self._dest.path}: sent data hashes to {actual}, the trailer says "
                f"{sha256}; the file was emptied"
            )
        return UploadResult(self._received, actual)

    async def abort(self, reason: BaseException) -> None:
        """Ends a failed upload: stops the engine's write and leaves an empty file, never a partial one."""
        if self._writer is None:
            return
        try:
            if not self._writer.done():
                await self._put(reason)
            await self._writer
        except Exception:  # the engine saw a broken stream or failed on its own; the caller has the cause
            pass
        await self._replace_with_empty()

    async def _replace_with_empty(self) -> None:
        info = tarfile.TarInfo(self._dest.relative)
        info.mode, info.mtime = self._mode, time.time()
        empty = info.tobuf(format=tarfile.PAX_FORMAT) + b"\0" * (2 * tarfile.BLOCKSIZE)
        try:
            await in_data_thread(self._runtime.put_archive, self._container, self._dest.volume, iter([empty]))
        except errors.ExeUnitError:
            pass


@dataclass(frozen=True)
class DownloadHeader:
    size: int
    mode: int


class Download:
    """One file streamed out of a container: its header, then its chunks via `chunks()`."""

    def __init__(self, header: DownloadHeader, tar_stream: Iterator[bytes], path: str) -> None:
        self.header = header
        self._tar_stream = tar_stream
        self._path = path
        self._cut: errors.ExeUnitError | None = None
        self.on_progress: Callable[[], None] = lambda: None  # called as each chunk is handed on

    async def chunks(self) -> AsyncIterator[bytes]:
        """The file's data; raises the reason if the download was cut meanwhile."""
        try:
            async for chunk in iterate_in_thread(lambda: file_in_tar(_Blocks(self._tar_stream), self._path), max_pending=4):
                if self._cut is not None:
                    raise self._cut
                self.on_progress()
                yield chunk
        except Exception:
            if self._cut is not None:
                raise self._cut from None
            raise

    def cut(self, reason: errors.ExeUnitError) -> None:
        """Stops reading from the engine; the reader gets `reason` at its next chunk. Any thread."""
        self._cut = self._cut or reason
        self.close()

    def close(self) -> None:
        """Lets go of the engine's archive stream (the engine locks the container while it is open)."""
        close = getattr(self._tar_stream, "close", None)
        if close:
            close()


async def download(runtime: DockerRuntime, container_id: str, dest: Destination) -> Download:
    """Opens the file at dest for reading, checking that it is a regular file inside the volume."""
    path = dest.path
    _, stat = await asyncio.to_thread(walk_volume_path, runtime, container_id, dest)
    if stat is None:
        raise errors.NotFound(f"{path} does not exist in the container")
    if not stat.is_regular_file:
        raise errors.FailedPrecondition(f"{path} is not a regular file; only files can be downloaded")
    stat, tar_stream = await in_data_thread(runtime.get_archive, container_id, path, CHUNK_SIZE)
    return Download(DownloadHeader(stat.size, stat.mode), tar_stream, path)


class _Blocks:
    """Reads exact byte counts from an iterator of chunks (the engine's tar stream)."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = iter(chunks)
        self._pending = memoryview(b"")

    def read_up_to(self, limit: int) -> bytes | memoryview:
        """At most `limit` bytes, as soon as some are there; empty at the end."""
        while not self._pending:
            try:
                self._pending = memoryview(next(self._chunks))
            except StopIteration:
                return b""
        piece, self._pending = self._pending[:limit], self._pending[limit:]
        return piece

    def read_exactly(self, count: int) -> bytes:
        parts, missing = [], count
        while missing:
            piece = self.read_up_to(missing)
            if not piece:
                raise errors.RuntimeFailure(f"the engine's archive ended {missing} bytes early")
            parts.append(piece)
            missing -= len(piece)
        return b"".join(parts)


def file_in_tar(blocks: _Blocks, path: str) -> Iterator[bytes]:
    """The data of the first regular file of a tar stream, in chunks, without tarfile's small reads.

    Long names and PAX attributes come as extra header entries before the file's own; they are
    skipped (the daemon asked for one path and knows its name)."""
    while True:
        header = blocks.read_exactly(tarfile.BLOCKSIZE)
        if header == bytes(tarfile.BLOCKSIZE):
            raise errors.NotFound(f"{path} is not in the engine's archive")
        info = tarfile.TarInfo.frombuf(header, tarfile.ENCODING, "surrogateescape")
        padded = info.size + (-info.size % tarfile.BLOCKSIZE)
        if info.type in (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK):
            blocks.read_exactly(padded)
            continue
        if not info.isfile():
            raise errors.FailedPrecondition(f"{path} is not a regular file; only files can be downloaded")
        remaining = info.size
        while remaining:  # the engine sends 32 KiB pieces; forward them gathered into CHUNK_SIZE ones
            parts, gathered = [], 0
            while gathered < CHUNK_SIZE and remaining:
                piece = blocks.read_up_to(min(remaining, CHUNK_SIZE - gathered))
                if not piece:
                    raise errors.RuntimeFailure(f"the engine's archive of {path} ended {remaining} bytes early")
                parts.append(piece)
                gathered += len(piece)
                remaining -= len(piece)
            yield b"".join(parts)
        return
