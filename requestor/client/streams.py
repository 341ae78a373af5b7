"""The provider's calls that carry bytes both ways, as a part of ProviderClient (requestor.client
.provider): tunnels to an activity's port, uploads and downloads. Each checks what it carried:
an upload's sha256 is agreed by both sides, a download arrives whole with a matching checksum."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

import grpc

from exeunit.v1 import activity_pb2 as act
from exeunit.v1 import transfer_pb2 as xfer
from exeunit.v1.buffers import keep_transfer_buffers
from exeunit.v1.chunks import decode_chunk, encode_chunk, serialized
from exeunit.v1.conventions import CHUNK_SIZE, DIGEST_BLAKE3, DIGEST_SHA256
from requestor import errors
from requestor.client.status import from_rpc_error

UPLOAD_AHEAD = 4  # chunks read and hashed ahead of the one being sent


def _blake3() -> Any:
    try:
        import blake3
    except ImportError:
        return None
    return blake3.blake3


KEEP_BUFFERS_ENV = "GOLEM_KEEP_TRANSFER_BUFFERS"


def _reuse_buffers() -> None:
    """From the first transfer on, glibc reuses this process's large buffers (exeunit.v1.buffers)
    unless GOLEM_KEEP_TRANSFER_BUFFERS=0 says to leave the allocator as it is."""
    if os.environ.get(KEEP_BUFFERS_ENV, "1") != "0":
        keep_transfer_buffers()


ABSORB_SLICE = 256 << 10  # a downloaded chunk is hashed, then written, this much at a time


def _absorb(digest: Any, sink: Callable[[memoryview], object] | None, chunk: memoryview) -> None:
    """One chunk hashed and handed on, in one thread hop, a slice at a time: the sink (a file's
    write) then copies bytes the hash has just brought into the CPU's cache. BLAKE3 and a write to
    the page cache took a median 0.40 ms of CPU per MiB so (0.39-0.68 in nine tries), against 1.2
    (0.37-2.6) for whole 3 MiB chunks, which the write read from L3 or memory again
    (`python bench/absorb.py`, on this project's 2-core machine with 1 MiB of L2 per core)."""
    if sink is None:
        digest.update(chunk)
        return
    for start in range(0, len(chunk), ABSORB_SLICE):
        piece = chunk[start:start + ABSORB_SLICE]
        digest.update(piece)
        sink(piece)


class TransferCalls:
    """Transfer's two calls, their chunks (de)serialized by hand (exeunit.v1.chunks): a chunk is
    copied once on its way out instead of three times, and read in place on its way in."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.Upload = channel.stream_unary(  # noqa: N803 - the stub's names
            "/exeunit.v1.Transfer/Upload", request_serializer=serialized,
            response_deserializer=xfer.UploadResponse.FromString)
        self.Download = channel.unary_stream(
            "/exeunit.v1.Transfer/Download", request_serializer=xfer.DownloadRequest.SerializeToString,
            response_deserializer=lambda data: decode_chunk(data) or xfer.DownloadResponse.FromString(data))


class TransferDigest:
    """The digest a transfer is checked with: BLAKE3 when both ends have it (three times faster than
    SHA-256 on this side alone, as strong), SHA-256 otherwise; never none."""

    def __init__(self, offered: tuple[str, ...]) -> None:
        blake3 = _blake3() if DIGEST_BLAKE3 in offered else None
        self.name = DIGEST_BLAKE3 if blake3 is not None else DIGEST_SHA256
        self.wire = xfer.DIGEST_ALGORITHM_BLAKE3 if blake3 is not None else xfer.DIGEST_ALGORITHM_SHA256
        self.hasher = blake3() if blake3 is not None else hashlib.sha256()

    def trailer_value(self, part: Any) -> str:
        """The digest a trailer or response states (SHA-256's may come in its older field)."""
        return part.digest or (part.sha256 if self.name == DIGEST_SHA256 else "")


class ByteCalls:
    """Tunnel, Upload and Download, on the client's channel, proofs and retry rules."""

    address: str
    _activity: Any
    _transfer: Any
    _connection: Any

    if TYPE_CHECKING:  # ProviderClient's
        async def connect(self) -> Any: ...
        def signed(self, service: str, method: str, head: Any) -> tuple[tuple[str, str | bytes], ...]: ...
        async def _renewed(self, exc: grpc.aio.AioRpcError, sent: tuple[tuple[str, str | bytes], ...],
                           unheard: bool = False) -> bool: ...
        def _translated(self, method: str) -> Any: ...
        def _answers(self, service: str, method: str, request: Any) -> AsyncIterator[Any]: ...

    # Tunnels

    async def tunnel(self, activity_id: str, port: int, local_reader: asyncio.StreamReader,
                     local_writer: asyncio.StreamWriter) -> None:
        """Carries one local TCP connection to `port` of the activity and back, until both sides
        have closed; half-closes pass through. Raises ProviderCallError when the tunnel cannot
        open (nothing listens there, say)."""
        await self.connect()
        call = await self._open_tunnel(act.TunnelRequest(open=act.TunnelOpen(activity_id=activity_id, port=port)))
        async with self._translated("Tunnel"):
            async def upstream() -> None:
                while data := await local_reader.read(CHUNK_SIZE):
                    await call.write(act.TunnelRequest(data=data))
                await call.write(act.TunnelRequest(close=act.TunnelClose()))
                await call.done_writing()

            sending = asyncio.create_task(upstream())
            try:
                while (response := await call.read()) is not grpc.aio.EOF:
                    kind = response.WhichOneof("part")
                    if kind == "data":
                        local_writer.write(response.data)
                        await local_writer.drain()
                    elif kind == "closed" and local_writer.can_write_eof():
                        try:
                            local_writer.write_eof()
                        except OSError:
                            pass  # the local side is gone already: nothing left to half-close
                await sending
            finally:
                sending.cancel()
                call.cancel()

    async def _open_tunnel(self, opening: act.TunnelRequest) -> Any:
        """A Tunnel call the provider answered `opened` (made once more when its daemon refused
        it for an earlier start)."""
        for attempt in (1, 2):
            sent = self.signed("activity", "Tunnel", opening)
            call = self._activity.Tunnel(metadata=sent)
            try:
                await call.write(opening)
                opened = await call.read()
                if opened is grpc.aio.EOF or opened.WhichOneof("part") != "opened":
                    await call  # raises the provider's status
                    raise errors.RequestorError(f"provider {self.address} did not open the tunnel")
                return call
            except grpc.aio.AioRpcError as exc:
                call.cancel()
                if attempt == 1 and await self._renewed(exc, sent):
                    continue
                raise from_rpc_error("Tunnel", self.address, exc) from exc
        raise AssertionError("unreachable")

    # Transfers

    async def upload(self, activity_id: str, path: str, size: int, chunks: AsyncIterator[bytes]) -> str:
        """Streams `size` bytes to `path`; returns the digest both sides agreed on."""
        await self.connect()
        _reuse_buffers()
        check = TransferDigest(self._connection.transfer_digests)
        digest = check.hasher
        ahead: asyncio.Queue[bytes | BaseException | None] = asyncio.Queue(UPLOAD_AHEAD)

        async def read_ahead() -> None:
            """Reads and hashes (in a thread) the next chunks while earlier ones are sent."""
            try:
                async for chunk in chunks:
                    for start in range(0, len(chunk), CHUNK_SIZE):
                        piece = chunk if len(chunk) <= CHUNK_SIZE else chunk[start : start + CHUNK_SIZE]
                        await asyncio.to_thread(digest.update, piece)
                        await ahead.put(piece)
                await ahead.put(None)
            except Exception as exc:  # handed to the sender, which raises it
                await ahead.put(exc)

        header = xfer.UploadRequest(header=xfer.UploadHeader(activity_id=activity_id, path=path, size=size,
                                                             digest=check.wire))

        async def requests() -> AsyncIterator[xfer.UploadRequest]:
            yield header
            while (piece := await ahead.get()) is not None:
                if isinstance(piece, BaseException):
                    raise piece
                yield encode_chunk(piece)  # an UploadRequest holding the chunk (TransferCalls sends it as is)
            yield xfer.UploadRequest(trailer=xfer.UploadTrailer(digest=digest.hexdigest()))

        reader = asyncio.create_task(read_ahead())
        sent = self.signed("transfer", "Upload", header)
        try:
            response = await self._transfer.Upload(requests(), metadata=sent)
        except grpc.aio.AioRpcError as exc:
            if await self._renewed(exc, sent, unheard=True):  # `chunks` are read already: the caller sends again
                raise errors.ProviderRestartedError("Upload", self.address, exc.code().name,
                                                    exc.details() or "the provider's daemon started again") from exc
            raise from_rpc_error("Upload", self.address, exc) from exc
        finally:
            reader.cancel()
        written = check.trailer_value(response)
        if written != digest.hexdigest():  # the daemon checked it too: this would be its fault, or the link's
            raise errors.RequestorError(f"upload of {path} to {self.address}: the provider wrote data hashing to "
                                        f"{written or 'nothing'}, not {digest.hexdigest()} ({check.name})")
        return written

    async def download(self, activity_id: str, path: str,
                       sink: Callable[[memoryview], object] | None = None) -> AsyncIterator[bytes | memoryview]:
        """The file's chunks (each a view of the bytes received, not a copy); raises at the end
        unless exactly the announced size arrived with a matching checksum (never a silently short
        or corrupted file). `sink` (a file's write, say) gets each chunk's bytes, in order and in
        slices, in the thread that hashes them, while the next chunk arrives; its error is raised
        here."""
        await self.connect()
        _reuse_buffers()
        check = TransferDigest(self._connection.transfer_digests)
        digest = check.hasher
        hashing: asyncio.Future[None] | None = None  # one chunk hashed in a thread while the next arrives
        announced: int | None = None
        received = 0
        request = xfer.DownloadRequest(activity_id=activity_id, path=path, digest=check.wire)
        try:
            async for part in self._answers("transfer", "Download", request):
                kind = part.WhichOneof("part")
                if kind == "header":
                    announced = part.header.size
                elif kind == "chunk":
                    chunk = part.chunk  # a view (exeunit.v1.chunks), or a copy for a message protobuf parsed
                    received += len(chunk)
                    if announced is None or received > announced:  # never more than said: a disk is not endless
                        raise errors.RequestorError(
                            f"download of {path} from {self.address} sent {received} bytes, more than the "
                            f"{announced if announced is not None else 'no'} bytes its header announced")
                    if hashing is not None:
                        await hashing
                    hashing = asyncio.ensure_future(asyncio.to_thread(_absorb, digest, sink, chunk))
                    yield chunk
                elif kind == "trailer":
                    if hashing is not None:
                        await hashing
                    if received != announced:
                        raise errors.RequestorError(
                            f"download of {path} from {self.address} is incomplete: {received} bytes arrived, "
                            f"{announced} were announced"
                        )
                    if check.trailer_value(part.trailer) != digest.hexdigest():
                        raise errors.RequestorError(
                            f"download of {path} from {self.address} arrived corrupted (checksum mismatch)"
                        )
                    return
        finally:  # no chunk is handed to the sink after this generator ends (its file may be closed then)
            if hashing is not None:
                await asyncio.wait([hashing])
                hashing.cancelled() or hashing.exception()  # seen: what ends the download is raised instead
        raise errors.RequestorError(
            f"download of {path} from {self.address} ended after {received} bytes without its trailer"
        )
