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
nothing on the way may drop a sealed message: the sender keeps at most peer.WINDOW bytes of frames
unacknowledged (the receiver acknowledges inside the session), and sheds a frame before sealing
it when its window is full, as a congested link drops a packet; while a session opens, the last
peer.BACKLOG_FRAMES frames wait for it. A daemon that cannot carry a
message after all (no relay stream, over its bound) says so (`relay_lost`) and the session is
started afresh.
"""

from __future__ import annotations

import logging
import os
import struct
import time

from exeunit.runtime.overlay.peer import ACK_EVERY, ControlSide, NetworkSide, Peer, RelayedSession
from exeunit.runtime.overlay.tls import ACK, FRAME, MAX_CERTIFICATE, LinkError, OverlayIdentity, TlsLink


log = logging.getLogger(__name__)

OPEN, OPENED, RECORDS, RESET, PLEASE_OPEN = b"H", b"h", b"T", b"X", b"P"
SESSION_BYTES = 8
RETRY_SECONDS = 0.5  # between attempts to open a session (or to ask for one)


def message(kind: bytes, session: bytes, data: bytes = b"") -> bytes:
    return kind + session + data


def parse(body: bytes) -> tuple[bytes, bytes, bytes]:
    """(kind, session, data); LinkError for a message too short to be one."""
    if len(body) < 1 + SESSION_BYTES:
        raise LinkError("a relayed message too short to be one")
    return body[:1], body[1:1 + SESSION_BYTES], body[1 + SESSION_BYTES:]


def new_session() -> bytes:
    return os.urandom(SESSION_BYTES)


def ack(consumed: int) -> tuple[bytes, bytes]:
    return ACK, struct.pack("!Q", consumed)


def acked_count(payload: bytes) -> int:
    if len(payload) != 8:
        raise LinkError("an acknowledgement that is not one")
    (count,) = struct.unpack("!Q", payload)
    return count


class RelayedPath:
    """One network's sessions through the relay, with each of its peers."""

    def __init__(self, network: NetworkSide, control: ControlSide, identity: OverlayIdentity) -> None:
        self.network = network
        self.control = control
        self.identity = identity

    def send(self, peer: Peer, frame: bytes) -> None:
        """Seals `frame` into the session with `peer` if it has room (else sheds it, or opens one)."""
        with peer.relay_lock:
            session = peer.relayed
            if session is None or session.link is None:
                peer.backlog.append(frame)  # the first frames (ARP, a SYN) go once the session is up
                self._want_session(peer)
                return
            if not session.has_room():
                if session.stalled():  # what it waits for was lost on the way: start afresh
                    peer.relayed = None
                    self.control.relay_out(self.network.wire_id, peer.node, message(RESET, session.session))
                return  # shed before sealing: the relay holds a window's worth already
            try:
                records = session.link.seal(FRAME, frame)
            except LinkError:
                peer.relayed = None
                return
            session.sent += len(frame)
        self.control.relay_out(self.network.wire_id, peer.node, message(RECORDS, session.session, records))

    def _want_session(self, peer: Peer) -> None:
        """Opens a relayed session (the dialing side), or asks the peer to (called under relay_lock)."""
        now = time.monotonic()
        if now < peer.next_relay_attempt:
            return
        peer.next_relay_attempt = now + RETRY_SECONDS
        if self.network.node < peer.node:
            peer.pending = RelayedSession(new_session())
            self.control.relay_out(self.network.wire_id, peer.node, message(
                OPEN, peer.pending.session, self.identity.certificate_der))
        else:
            self.control.relay_out(self.network.wire_id, peer.node, message(PLEASE_OPEN, bytes(8)))

    def receive(self, sender: str, body: bytes) -> None:
        """A message `sender` sent through the requestor."""
        peer = self.network.peers.get(sender)
        if peer is None or self.network.closed:
            return
        kind, session, data = parse(body)
        out: list[bytes] = []
        try:
            with peer.relay_lock:
                self._on_relayed_locked(peer, kind, session, data, out)
        except LinkError as exc:
            log.debug("relayed session with %s dropped: %s", sender, exc)
            with peer.relay_lock:
                peer.forget_session(session)
            out.append(message(RESET, session))
        for answer in out:
            self.control.relay_out(self.network.wire_id, sender, answer)

    def _on_relayed_locked(self, peer: Peer, kind: bytes, session: bytes, data: bytes, out: list[bytes]) -> None:
        identity = self.identity
        if kind == PLEASE_OPEN:
            stale = peer.pending is not None and time.monotonic() - peer.pending.started > RETRY_SECONDS
            if self.network.node < peer.node and peer.relayed is None and (peer.pending is None or stale):
                peer.next_relay_attempt = 0.0
                self._want_session(peer)
        elif kind == OPEN:  # we accept: the sender must be the smaller id
            if not peer.node < self.network.node or len(data) > MAX_CERTIFICATE:
                raise LinkError(f"{peer.node} may not open a relayed session with this node")
            peer.pending = RelayedSession(session, TlsLink(identity, peer.node, data, server_side=True,
                                                                     network=self.network.wire_id))
            out.append(message(OPENED, session, identity.certificate_der))
        elif kind == OPENED:
            if peer.pending is None or peer.pending.session != session or peer.pending.link is not None:
                return  # an answer to an attempt given up
            peer.pending.link = TlsLink(identity, peer.node, data, server_side=False,
                                        network=self.network.wire_id)
            out.append(message(RECORDS, session, peer.pending.link.handshake()))
        elif kind == RECORDS:
            if peer.relayed is not None and peer.relayed.session == session:
                self._receive_relayed(peer, peer.relayed, data, out)
            elif peer.pending is not None and peer.pending.session == session and peer.pending.link is not None:
                pending = peer.pending
                answer = pending.link.handshake(data)
                if answer:
                    out.append(message(RECORDS, session, answer))
                if pending.established:
                    peer.relayed, peer.pending = pending, None
                    self.control.status(op="path", network=self.network.wire_id, peer=peer.node, path="relay")
                    self._receive_relayed(peer, pending, b"", out)  # what came after its Finished
                    while peer.backlog:  # what waited for the session
                        frame = peer.backlog.popleft()
                        out.append(message(RECORDS, session, pending.link.seal(FRAME, frame)))
                        pending.sent += len(frame)
            else:
                out.append(message(RESET, session))  # a session this side does not have (a restart)
        elif kind == RESET and peer.forget_session(session):
            peer.next_relay_attempt = 0.0

    def _receive_relayed(self, peer: Peer, session: RelayedSession, data: bytes, out: list[bytes]) -> None:
        for kind, payload in session.link.receive(data):  # type: ignore[union-attr]
            if kind == FRAME:
                session.consumed += len(payload)
                self.network.deliver(peer.node, payload)
            elif kind == ACK:
                session.acked = max(session.acked, acked_count(payload))
                session.progress = time.monotonic()
        if session.consumed - session.acknowledged >= ACK_EVERY:
            session.acknowledged = session.consumed
            records = session.link.seal(*ack(session.consumed))  # type: ignore[union-attr]
            out.append(message(RECORDS, session.session, records))

    def lost(self, peer_node: str) -> None:
        """The daemon could not carry a message to `peer_node`: the session starts afresh."""
        peer = self.network.peers.get(peer_node)
        if peer is not None:
            with peer.relay_lock:
                peer.relayed = peer.pending = None
