"""A network's other provider, as the overlay agent holds it: its direct link (a TCP connection
carrying a TLS session) and its session through the relay, each replaced or dropped under a lock of its own;
and the shapes the direct and relayed paths see of a network and of the agent (so that neither
imports the agent)."""

from __future__ import annotations

import collections
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Protocol

from exeunit.runtime.overlay.addresses import PeerAddressPolicy
from exeunit.runtime.overlay.tls import FRAME, LinkError, OverlayIdentity, TlsLink

WINDOW = 4 << 20  # bytes of frames in flight through the relay, per session
ACK_EVERY = WINDOW // 4
BACKLOG_FRAMES = 16
STALL_SECONDS = 5.0  # a full window with no acknowledgement for this long: the session is given up


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


@dataclass
class Peer:
    node: str
    address: tuple[str, int]
    link: TlsLink | None = None  # the direct one
    sock: socket.socket | None = None
    relayed: RelayedSession | None = None  # established through the relay
    pending: RelayedSession | None = None  # being opened through the relay
    next_relay_attempt: float = 0.0
    dialing: bool = False
    next_dial: float = 0.0  # monotonic time of the next attempt (the dialing side's)
    dial_delay: float = 0.0  # grows while attempts fail, so a peer gone quiet costs little
    gone: bool = False  # removed from the network: no link attaches to it any more
    # frames for it while no link is up, sent once a relayed session is (the oldest go first when full)
    backlog: collections.deque = field(default_factory=lambda: collections.deque(maxlen=BACKLOG_FRAMES))
    # One lock for the direct link (held through a send), another for the relayed session, so that
    # a peer slow to read its direct link never holds up the thread that handles relayed messages.
    direct_lock: threading.Lock = field(default_factory=threading.Lock)
    relay_lock: threading.Lock = field(default_factory=threading.Lock)

    def send_direct(self, frame: bytes) -> bool:
        """Sends over the direct link; False when there is none (or it just broke)."""
        with self.direct_lock:
            sock, link = self.sock, self.link
            if sock is None or link is None:
                return False
            try:
                sock.sendall(link.seal(FRAME, frame))
                return True
            except (OSError, LinkError):
                self._drop_locked(sock)
                return False

    def attach(self, sock: socket.socket, link: TlsLink) -> bool:
        """Makes `link` the direct one; False (and it is closed) when the peer is gone."""
        with self.direct_lock:
            if self.gone:
                old = sock
            else:
                old, self.sock, self.link = self.sock, sock, link
        if old is not None:
            close_socket(old)
        return old is not sock

    def drop(self, sock: socket.socket | None = None) -> None:
        """Forgets the direct link (`sock`: only if it is still that one)."""
        with self.direct_lock:
            self._drop_locked(sock)

    def _drop_locked(self, sock: socket.socket | None = None) -> None:
        if sock is not None and self.sock is not sock:
            return
        old, self.sock, self.link = self.sock, None, None
        if old is not None:
            close_socket(old)

    def forget_session(self, session: bytes) -> bool:
        """Drops the relayed session (established or opening) with this id; whether there was one.
        Called under relay_lock."""
        found = False
        for name in ("relayed", "pending"):
            current = getattr(self, name)
            if current is not None and current.session == session:
                setattr(self, name, None)
                found = True
        return found

    def forget(self) -> None:
        """The peer left the network: every link with it goes, and none comes back."""
        with self.direct_lock:
            self.gone = True
            self._drop_locked()
        with self.relay_lock:
            self.relayed = self.pending = None
            self.backlog.clear()


def close_socket(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


class ControlSide(Protocol):
    """The agent's channel to its daemon (exeunit.runtime.overlay.agent.Control)."""

    def status(self, **fields: object) -> None: ...
    def relay_out(self, network: str, peer: str, body: bytes) -> None: ...


class NetworkSide(Protocol):
    """One network as the paths see it (exeunit.runtime.overlay.agent.OverlayNetwork)."""

    wire_id: str
    node: str
    closed: bool
    peers: dict[str, Peer]

    def deliver(self, sender: str, frame: bytes) -> None: ...


class AgentSide(Protocol):
    """The agent as the direct path sees it (exeunit.runtime.overlay.agent.Agent)."""

    control: ControlSide
    identity: OverlayIdentity
    policy: PeerAddressPolicy
    networks: dict
    dial_now: threading.Event
