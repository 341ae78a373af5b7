"""Direct links between overlay agents: one TCP connection per peer and network, the node with
the smaller id dialing, carrying a TLS session (exeunit.runtime.overlay.tls).

A connection opens with a short preamble in clear (magic, the network's wire id, the dialer's
certificate), answered with the acceptor's certificate; each side then trusts only the certificate
whose key is the peer the requestor named, and TLS proves the rest (ALPN binds the network). A
handshake has HANDSHAKE_SECONDS as a whole; at most `handshakes_per_source` run at once from one
named peer's address, or from one /24 or /64 of other addresses, and MAX_HANDSHAKES from all of
those together, so slow or half-open connections from strangers delay no real peer.
"""

from __future__ import annotations

import collections
import ipaddress
import logging
import socket
import struct
import threading
import time

from exeunit.runtime.overlay.addresses import canonical
from exeunit.runtime.overlay.peer import AgentSide, NetworkSide, Peer, close_socket
from exeunit.runtime.overlay.tls import FRAME, MAX_CERTIFICATE, LinkError, TlsLink, certificate_id

log = logging.getLogger(__name__)

MAGIC = b"EXOV2\n"
HANDSHAKE_SECONDS = 5.0  # a direct link's preamble and TLS handshake, together
DIAL_FIRST, DIAL_MOST = 0.1, 30.0  # seconds between attempts at a peer: doubling from the first to the most
PEER_TIMEOUT_MS = 5000
SEND_STALL_SECONDS = 2
SOCKET_BUFFER = 4 << 20  # bytes in flight per direction of a peer connection
MAX_HANDSHAKES = 64  # direct links being set up at once, in all
DEFAULT_HANDSHAKES_PER_SOURCE = 4


class DirectLinks:
    """The agent's listening port and its dialing, and the threads that carry each link."""

    def __init__(self, agent: AgentSide, listener: socket.socket, handshakes_per_source: int) -> None:
        self.agent = agent
        self.listener = listener
        self._per_source = handshakes_per_source
        self._handshakes: collections.Counter[str] = collections.Counter()  # by source address
        self._handshakes_lock = threading.Lock()

    def accept(self) -> None:
        """Takes peers' connections (a thread's loop)."""
        while True:
            try:
                sock, address = self.listener.accept()
            except OSError:
                return
            source = self._source(address[0])
            with self._handshakes_lock:
                strangers = sum(n for s, n in self._handshakes.items() if s.startswith("stranger "))
                busy = self._handshakes[source] >= self._per_source or (
                    source.startswith("stranger ") and strangers >= MAX_HANDSHAKES)
                if not busy:
                    self._handshakes[source] += 1
            if busy:
                close_socket(sock)  # a flood of unauthenticated connections: the real peers retry
                continue
            threading.Thread(target=self._accepted, args=(sock, source), daemon=True).start()

    def _source(self, address: str) -> str:
        """Whom a connection is counted against: a peer's own address (named by a requestor) has
        a quota of its own; any other address shares its /24 or /64's, and all of those together
        MAX_HANDSHAKES, so that strangers with many addresses still cannot crowd out a real peer."""
        ip = canonical(ipaddress.ip_address(address.split("%")[0]))
        for network in list(self.agent.networks.values()):
            if any(peer.address[0] == str(ip) for peer in list(network.peers.values())):
                return f"peer {ip}"
        return f"stranger {ipaddress.ip_network(f'{ip}/{24 if ip.version == 4 else 64}', strict=False)}"

    def _accepted(self, sock: socket.socket, source: str) -> None:
        deadline = time.monotonic() + HANDSHAKE_SECONDS
        try:
            if _read_exactly(sock, len(MAGIC), deadline) != MAGIC:
                raise LinkError("not an overlay peer")
            network = self.agent.networks.get(_read_field(sock, 255, deadline).decode(errors="replace"))
            if network is None:
                raise LinkError("a network this agent does not carry")
            their_certificate = _read_field(sock, MAX_CERTIFICATE, deadline)
            sender = certificate_id(their_certificate)
            peer = network.peers.get(sender)
            if peer is None or not sender < network.node:
                raise LinkError(f"{sender} is not a peer that dials this node on this network")
            link = TlsLink(self.agent.identity, sender, their_certificate, server_side=True, network=network.wire_id)
            _send_within(sock, _field(self.agent.identity.certificate_der), deadline)
            _handshake(sock, link, deadline)
        except Exception as exc:  # whatever a stranger's bytes make of the preamble or handshake
            log.debug("overlay link refused: %s", exc)
            close_socket(sock)
            return
        finally:
            with self._handshakes_lock:
                self._handshakes[source] -= 1
                if self._handshakes[source] <= 0:
                    del self._handshakes[source]
        self._receive(network, peer, sock, link)

    def dial(self) -> None:
        """Dials the peers this node dials, when due (a thread's loop)."""
        while True:
            self.agent.dial_now.wait(DIAL_FIRST)
            self.agent.dial_now.clear()
            now = time.monotonic()
            for network in list(self.agent.networks.values()):
                for peer in list(network.peers.values()):
                    if peer.sock is None and not peer.dialing and network.node < peer.node and not network.closed \
                            and now >= peer.next_dial:
                        peer.dialing = True
                        peer.dial_delay = min(max(peer.dial_delay * 2, DIAL_FIRST), DIAL_MOST)
                        peer.next_dial = now + peer.dial_delay
                        threading.Thread(target=self._connect, args=(network, peer), daemon=True).start()

    def _connect(self, network: NetworkSide, peer: Peer) -> None:
        deadline = time.monotonic() + HANDSHAKE_SECONDS
        try:
            target = self.agent.policy.resolve(*peer.address)
            sock = socket.create_connection(target, timeout=HANDSHAKE_SECONDS)
        except (OSError, ValueError) as exc:
            log.debug("overlay peer %s not dialled: %s", peer.node, exc)
            peer.dialing = False
            return
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            _send_within(sock, MAGIC + _field(network.wire_id.encode()) + _field(self.agent.identity.certificate_der),
                         deadline)
            link = TlsLink(self.agent.identity, peer.node, _read_field(sock, MAX_CERTIFICATE, deadline), server_side=False,
                           network=network.wire_id)
            _handshake(sock, link, deadline)
        except (OSError, LinkError, ValueError) as exc:
            log.debug("overlay dial to %s failed: %s", peer.node, exc)
            close_socket(sock)
            return
        finally:
            peer.dialing = False
        self._receive(network, peer, sock, link)

    def _receive(self, network: NetworkSide, peer: Peer, sock: socket.socket, link: TlsLink) -> None:
        peer.dial_delay = 0.0
        sock.settimeout(None)
        # A peer that vanished (link down, host gone) must not hold frames forever: unacknowledged
        # data fails the connection after PEER_TIMEOUT_MS, and an idle one is probed, so that its
        # frames go through the relay instead.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 5)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 2)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, PEER_TIMEOUT_MS)
        # and a send that cannot go on for SEND_STALL_SECONDS gives the peer up (its frames then go
        # through the relay) rather than holding up the frames of the network's other peers
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("ll", SEND_STALL_SECONDS, 0))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for option in (socket.SO_SNDBUF, socket.SO_RCVBUF):
            sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER)
        if network.closed or not peer.attach(sock, link):  # removed meanwhile: its link goes with it
            close_socket(sock)
            return
        self.agent.control.status(op="path", network=network.wire_id, peer=peer.node, path="direct")
        buffer = bytearray(1 << 18)
        view = memoryview(buffer)
        try:
            while not network.closed:
                count = sock.recv_into(buffer)
                if not count:
                    break
                for kind, payload in link.receive(view[:count]):
                    if kind == FRAME and not peer.gone:
                        network.deliver(peer.node, payload)
        except (OSError, LinkError) as exc:
            log.debug("overlay link to %s ended: %s", peer.node, exc)
        peer.drop(sock)
        if not network.closed:
            self.agent.control.status(op="path", network=network.wire_id, peer=peer.node, path="relay")


def _handshake(sock: socket.socket, link: TlsLink, deadline: float) -> None:
    """Runs the TLS handshake over `sock`, all of it before `deadline`."""
    outgoing = link.handshake()
    while True:
        if outgoing:
            _send_within(sock, outgoing, deadline)
        if link.established:
            return
        sock.settimeout(_remaining(deadline))
        received = sock.recv(1 << 16)
        if not received:
            raise OSError("the connection closed in the handshake")
        outgoing = link.handshake(received)


def _remaining(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("the handshake took too long")
    return left


def _send_within(sock: socket.socket, data: bytes, deadline: float) -> None:
    sock.settimeout(_remaining(deadline))
    sock.sendall(data)


def _read_exactly(sock: socket.socket, size: int, deadline: float) -> bytes:
    data = bytearray()
    while len(data) < size:
        sock.settimeout(_remaining(deadline))
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise OSError("the connection closed")
        data += chunk
    return bytes(data)


def _field(data: bytes) -> bytes:
    return struct.pack("!I", len(data)) + data


def _read_field(sock: socket.socket, limit: int, deadline: float) -> bytes:
    (size,) = struct.unpack("!I", _read_exactly(sock, 4, deadline))
    if size > limit:
        raise ValueError(f"a field of {size} bytes, over {limit}")
    return _read_exactly(sock, size, deadline)

