"""TLS links carried through the requestor's relay, for providers that cannot reach each other.

The relay (the requestor, and each daemon on the way) moves opaque messages between two agents;
what they carry is a TLS 1.3 session like a direct link's (exeunit.runtime.overlay.tls), so the
requestor that relays it can neither read nor alter it, and a restart of either side starts a new
session with new keys (nothing recorded before replays into it). A message is a kind byte, an
8-byte session id (random, made by the dialing side) and data:

- `H` (dialer -> acceptor): "open session", the dialer's certificate;
- `h` (acceptor -> dialer): the acceptor's certificate, the session waiting for its handshake;
- `T`: TLS bytes of the session; `X`: the session is gone here (the other side starts afresh);
- `P` (acceptor -> dialer): "open one", from the side that may not open sessions itself.

The node with the smaller id dials, as on the direct path. TLS needs every byte in order, so
nothing on the way may drop a sealed message: the sender keeps at most WINDOW bytes of frames
unacknowledged (the receiver acknowledges inside the session), and sheds a frame before sealing
it when its window is full, as a congested link drops a packet. A daemon that cannot carry a
message after all (no relay stream, over its bound) says so (`relay_lost`) and the session is
started afresh.
"""

from __future__ import annotations

import os
import struct
import time
from dataclasses import dataclass, field

from exeunit.runtime.overlay.tls import ACK, TlsLink

OPEN, OPENED, RECORDS, RESET, PLEASE_OPEN = b"H", b"h", b"T", b"X", b"P"
SESSION_BYTES = 8
WINDOW = 4 << 20  # bytes of frames in flight through the relay, per session
ACK_EVERY = WINDOW // 4
RETRY_SECONDS = 1.0  # between attempts to open a session (or to ask for one)
STALL_SECONDS = 5.0  # a full window with no acknowledgement for this long: the session is given up


def message(kind: bytes, session: bytes, data: bytes = b"") -> bytes:
    return kind + session + data


def parse(body: bytes) -> tuple[bytes, bytes, bytes]:
    """(kind, session, data); ValueError for a message too short to be one."""
    if len(body) < 1 + SESSION_BYTES:
        raise ValueError("a relayed message too short to be one")
    return body[:1], body[1:1 + SESSION_BYTES], body[1 + SESSION_BYTES:]


def new_session() -> bytes:
    return os.urandom(SESSION_BYTES)


def ack(consumed: int) -> tuple[bytes, bytes]:
    return ACK, struct.pack("!Q", consumed)


def acked_count(payload: bytes) -> int:
    (count,) = struct.unpack("!Q", payload)
    return count


@dataclass
class RelayedSession:
    """One session with a peer through the relay, as one side sees it."""

    session: bytes
    link: TlsLink | None = None  # the dialer's, once the acceptor's certificate arrived
    sent: int = 0  # bytes of frames sealed into it
    acked: int = 0  # of those, how many the peer has consumed
    consumed: int = 0  # bytes of frames received from the peer
    acknowledged: int = 0  # of those, how many we have told it of
    started: float = field(default_factory=time.monotonic)
    progress: float = field(default_factory=time.monotonic)  # when the peer last acknowledged

    @property
    def established(self) -> bool:
        return self.link is not None and self.link.established

    def has_room(self) -> bool:
        return self.sent - self.acked < WINDOW

    def stalled(self) -> bool:
        """Its window full and nothing acknowledged for STALL_SECONDS (a message lost on the way)."""
        return not self.has_room() and time.monotonic() - self.progress > STALL_SECONDS
