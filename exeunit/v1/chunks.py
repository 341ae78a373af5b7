"""A chunk of a transfer on the wire, encoded and decoded by hand, as both sides do it.

An `UploadRequest` or `DownloadResponse` carrying a chunk is one length-delimited field (the
`chunk` of the `part` oneof, field 2): a tag byte, the length as a varint, the bytes. Through
protobuf, a chunk is copied three times on the way out (into the message, into its encoding, into
a bytes object) and twice on the way in; by hand it is copied once out (the bytes are joined
behind their header) and not at all in (a memoryview of the received bytes). Any message that is
not exactly one chunk field is left to protobuf, so the two agree on every input.
"""

from __future__ import annotations

CHUNK_FIELD = 2  # UploadRequest.chunk and DownloadResponse.chunk
_TAG = (CHUNK_FIELD << 3) | 2  # length-delimited
_MAX_VARINT_BYTES = 5  # protobuf reads a length in at most 5 bytes; so do we


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low = value & 0x7F
        value >>= 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def encode_chunk(data: bytes | memoryview) -> bytes:
    """The bytes of a message holding only `chunk = data` (one copy of `data`)."""
    return b"".join((bytes((_TAG,)), _varint(len(data)), data))


class Chunk:
    """A chunk message read without copying: `chunk` is a view into the received bytes. Answers
    `WhichOneof("part")` as the message would."""

    __slots__ = ("chunk",)

    def __init__(self, chunk: memoryview) -> None:
        self.chunk = chunk

    def WhichOneof(self, oneof: str) -> str | None:  # noqa: N802 - protobuf's name
        return "chunk" if oneof == "part" else None

    def ByteSize(self) -> int:  # noqa: N802 - protobuf's name
        return len(self.chunk)


def decode_chunk(data: bytes) -> Chunk | None:
    """The chunk `data` holds when it is exactly one chunk field; None for anything else (which
    protobuf then parses, or refuses)."""
    if len(data) < 2 or data[0] != _TAG:
        return None
    length, shift, offset = 0, 0, 1
    while True:
        if offset >= len(data) or offset > _MAX_VARINT_BYTES:  # past the tag and 5 bytes: protobuf's to refuse
            return None
        byte = data[offset]
        offset += 1
        length |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            break
    if offset + length != len(data):
        return None
    return Chunk(memoryview(data)[offset:])


def serialized(message: object) -> bytes:
    """A request or response serializer that passes bytes already encoded (encode_chunk) through."""
    if isinstance(message, bytes):
        return message
    return message.SerializeToString()  # type: ignore[attr-defined]
