"""The overlay agent: the data plane of networks that span providers, one process per daemon.

For each network it joins, the agent plugs a TAP device (`ov0`, MTU 65000) into the network's
bridge, in the network's own namespace, and carries the Ethernet frames the members send to
the network's other providers (its peers), each over a TLS 1.3 link authenticated as that peer
provider (exeunit.runtime.overlay.tls):

- directly, over one TCP connection per peer and network (the node with the smaller id dials,
  the other accepts on the agent's listening port), when the two hosts reach each other;
- otherwise through the daemon's control channel: the daemon hands the link's bytes to the
  requestor, which relays them to the peer's provider (exeunit.runtime.overlay.relayed).

Frames go where the learning table says the destination's MAC lives (learnt from the frames each
peer sends; at most `macs_per_network` entries, then unknown destinations go to every peer), and
to every peer when it does not know (broadcast, ARP, a new address). Bulk data stays out of the
daemon's event loop: the agent's threads move it, one TLS write and one send per frame, and the
large MTU keeps frames few (a TCP stream between two members moves 64 KiB per frame).

Who may connect: a direct connection starts with a short preamble in clear (magic, the network's
wire id, the dialer's certificate), answered with the acceptor's certificate; each side then
trusts only the certificate whose key is the peer the requestor named, and TLS proves the rest.
A handshake has HANDSHAKE_SECONDS as a whole; at most `handshakes_per_source` run at once per
source address and MAX_HANDSHAKES in all, so slow or half-open connections delay no real peer.

The daemon speaks to the agent over a SOCK_SEQPACKET pair, one message per datagram: a kind byte,
then JSON (`J`: join / peers / leave from the daemon; `S`: status to it) or a relayed message
(`R` from the daemon, `O` to it: a 2-byte length, a JSON header {network, peer}, the message), or
`L` from the daemon: a relayed message to {network, peer} could not be carried.
"""

from __future__ import annotations

import collections
import ctypes
import fcntl
import json
import logging
import os
import socket
import struct
import subprocess
import threading
import time
from dataclasses import dataclass, field

from exeunit.runtime.overlay import relayed
from exeunit.runtime.overlay.addresses import PeerAddressPolicy
from exeunit.runtime.overlay.relayed import RelayedSession
from exeunit.runtime.overlay.tls import (
    ACK, FRAME, MAX_CERTIFICATE, LinkError, OverlayIdentity, TlsLink, certificate_id,
)

log = logging.getLogger(__name__)

OVERLAY_MTU = 65000
TAP_NAME = "ov0"
MAGIC = b"EXOV2\n"
MAX_FRAME = OVERLAY_MTU + 1024  # an Ethernet frame at the MTU, with room to spare
MAX_MESSAGE = MAX_FRAME + 2048  # a frame's TLS records, or a relayed message
HANDSHAKE_SECONDS = 5.0  # a direct link's preamble and TLS handshake, together
DIAL_FIRST, DIAL_MOST = 0.1, 30.0  # seconds between attempts at a peer: doubling from the first to the most
PEER_TIMEOUT_MS = 5000
SEND_STALL_SECONDS = 2
SOCKET_BUFFER = 4 << 20  # bytes in flight per direction of a peer connection
MAX_HANDSHAKES = 64  # direct links being set up at once, in all
DEFAULT_HANDSHAKES_PER_SOURCE = 4
DEFAULT_MACS_PER_NETWORK = 4096
TUNSETIFF, IFF_TAP, IFF_NO_PI = 0x400454CA, 0x0002, 0x1000
CLONE_NEWNET = 0x40000000


class Control:
    """The agent's end of the channel to its daemon."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._lock = threading.Lock()

    def send(self, kind: bytes, payload: bytes) -> None:
        with self._lock:
            try:
                self.sock.send(kind + payload)
            except OSError:
                pass  # the daemon is gone; the agent ends when its control channel closes

    def status(self, **fields: object) -> None:
        self.send(b"S", json.dumps(fields).encode())

    def relay_out(self, network: str, peer: str, body: bytes) -> None:
        self.send(b"O", relay_body(network, peer, body))


def relay_body(network: str, peer: str, body: bytes) -> bytes:
    """A relayed message on the control channel (after its kind byte: `R` in, `O` out, `L` lost)."""
    header = json.dumps({"network": network, "peer": peer}).encode()
    return struct.pack("!H", len(header)) + header + body


def parse_relay_body(body: bytes) -> tuple[str, str, bytes]:
    """(network, peer, message) of a relay_body."""
    (size,) = struct.unpack("!H", body[:2])
    header = json.loads(body[2:2 + size])
    return header["network"], header["peer"], body[2 + size:]


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
    send_lock: threading.Lock = field(default_factory=threading.Lock)

    def send_direct(self, frame: bytes) -> bool:
        """Sends over the direct link; False when there is none (or it just broke)."""
        with self.send_lock:
            sock, link = self.sock, self.link
            if sock is None or link is None:
                return False
            try:
                sock.sendall(link.seal(FRAME, frame))
                return True
            except (OSError, LinkError):
                self._drop_locked(sock)
                return False

    def attach(self, sock: socket.socket, link: TlsLink) -> None:
        with self.send_lock:
            old, self.sock, self.link = self.sock, sock, link
        if old is not None:
            _close(old)

    def drop(self, sock: socket.socket | None = None) -> None:
        """Forgets the direct link (`sock`: only if it is still that one)."""
        with self.send_lock:
            self._drop_locked(sock)

    def _drop_locked(self, sock: socket.socket | None = None) -> None:
        if sock is not None and self.sock is not sock:
            return
        old, self.sock, self.link = self.sock, None, None
        if old is not None:
            _close(old)

    def forget(self) -> None:
        """The peer left the network: every link with it goes."""
        self.drop()
        with self.send_lock:
            self.relayed = self.pending = None


class OverlayNetwork:
    """One network's TAP, peers and learning table on this provider."""

    def __init__(self, agent: Agent, wire_id: str, netns: str) -> None:
        self.agent = agent
        self.wire_id = wire_id
        self.netns = netns
        self.node = agent.identity.node
        self.peers: dict[str, Peer] = {}
        self.macs: collections.OrderedDict[bytes, str] = collections.OrderedDict()
        self.macs_refused = 0
        self.delivered = 0  # frames from peers written into the bridge
        self.closed = False
        self.tap = _open_tap(netns)
        _run("ip", "-n", netns, "link", "set", TAP_NAME, "mtu", str(OVERLAY_MTU), "master", "br0", "up")
        threading.Thread(target=self._read_tap, name=f"tap-{wire_id[:8]}", daemon=True).start()

    def set_peers(self, peers: dict[str, str]) -> None:
        for node in [n for n in self.peers if n not in peers]:
            self.peers.pop(node).forget()
            for mac in [m for m, owner in self.macs.items() if owner == node]:
                self.macs.pop(mac, None)
        for node, address in peers.items():
            host, _, port = address.rpartition(":")
            if node == self.node:
                continue
            if node not in self.peers:
                self.peers[node] = Peer(node, (host.strip("[]"), int(port)))
            else:
                self.peers[node].address = (host.strip("[]"), int(port))
            self.peers[node].next_dial, self.peers[node].dial_delay = 0.0, 0.0  # try it now

    def close(self) -> None:
        self.closed = True
        for peer in self.peers.values():
            peer.forget()
        os.close(self.tap)  # the TAP device goes with its last descriptor

    def _read_tap(self) -> None:
        while not self.closed:
            try:
                frame = os.read(self.tap, MAX_FRAME)
            except OSError:
                return
            destination = frame[:6]
            owner = self.macs.get(destination) if not destination[0] & 1 else None
            for peer in ([self.peers[owner]] if owner in self.peers else list(self.peers.values())):
                if not peer.send_direct(frame):
                    self._send_relayed(peer, frame)

    def deliver(self, sender: str, frame: bytes) -> None:
        """A frame from peer `sender`, authentic: into the bridge, and its source learnt."""
        if len(frame) < 14 or self.closed:
            return
        self._learn(frame[6:12], sender)
        self.delivered += 1
        try:
            os.write(self.tap, frame)
        except OSError:
            pass  # the network is going away

    def _learn(self, source: bytes, sender: str) -> None:
        if source[0] & 1:
            return
        if source in self.macs:
            self.macs[source] = sender
            return
        if len(self.macs) >= self.agent.macs_per_network:
            self.macs_refused += 1  # a full table learns nothing new: those destinations go to every peer
            return
        self.macs[source] = sender

    # The relayed path

    def _send_relayed(self, peer: Peer, frame: bytes) -> None:
        with peer.send_lock:
            session = peer.relayed
            if session is None or session.link is None:
                self._want_session(peer)
                return  # shed: no session yet (ARP and TCP send again)
            if not session.has_room():
                if session.stalled():  # what it waits for was lost on the way: start afresh
                    peer.relayed = None
                    self.agent.control.relay_out(self.wire_id, peer.node, relayed.message(relayed.RESET, session.session))
                return  # shed before sealing: the relay holds a window's worth already
            try:
                records = session.link.seal(FRAME, frame)
            except LinkError:
                peer.relayed = None
                return
            session.sent += len(frame)
        self.agent.control.relay_out(self.wire_id, peer.node, relayed.message(relayed.RECORDS, session.session, records))

    def _want_session(self, peer: Peer) -> None:
        """Opens a relayed session (the dialing side), or asks the peer to (called under send_lock)."""
        now = time.monotonic()
        if now < peer.next_relay_attempt:
            return
        peer.next_relay_attempt = now + relayed.RETRY_SECONDS
        if self.node < peer.node:
            peer.pending = RelayedSession(relayed.new_session())
            self.agent.control.relay_out(self.wire_id, peer.node, relayed.message(
                relayed.OPEN, peer.pending.session, self.agent.identity.certificate_der))
        else:
            self.agent.control.relay_out(self.wire_id, peer.node, relayed.message(relayed.PLEASE_OPEN, bytes(8)))

    def on_relayed(self, sender: str, body: bytes) -> None:
        """A message `sender` sent through the requestor."""
        peer = self.peers.get(sender)
        if peer is None or self.closed:
            return
        kind, session, data = relayed.parse(body)
        out: list[bytes] = []
        try:
            with peer.send_lock:
                self._on_relayed_locked(peer, kind, session, data, out)
        except LinkError as exc:
            log.debug("relayed session with %s dropped: %s", sender, exc)
            with peer.send_lock:
                for name in ("relayed", "pending"):
                    if getattr(peer, name) is not None and getattr(peer, name).session == session:
                        setattr(peer, name, None)
            out.append(relayed.message(relayed.RESET, session))
        for message in out:
            self.agent.control.relay_out(self.wire_id, sender, message)

    def _on_relayed_locked(self, peer: Peer, kind: bytes, session: bytes, data: bytes, out: list[bytes]) -> None:
        identity = self.agent.identity
        if kind == relayed.PLEASE_OPEN:
            if self.node < peer.node and peer.relayed is None and peer.pending is None:
                peer.next_relay_attempt = 0.0
                self._want_session(peer)
        elif kind == relayed.OPEN:  # we accept: the sender must be the smaller id
            if not peer.node < self.node or len(data) > MAX_CERTIFICATE:
                raise LinkError(f"{peer.node} may not open a relayed session with this node")
            peer.pending = RelayedSession(session, TlsLink(identity, peer.node, data, server_side=True))
            out.append(relayed.message(relayed.OPENED, session, identity.certificate_der))
        elif kind == relayed.OPENED:
            if peer.pending is None or peer.pending.session != session or peer.pending.link is not None:
                return  # an answer to an attempt given up
            peer.pending.link = TlsLink(identity, peer.node, data, server_side=False)
            out.append(relayed.message(relayed.RECORDS, session, peer.pending.link.handshake()))
        elif kind == relayed.RECORDS:
            if peer.relayed is not None and peer.relayed.session == session:
                self._receive_relayed(peer, peer.relayed, data, out)
            elif peer.pending is not None and peer.pending.session == session and peer.pending.link is not None:
                pending = peer.pending
                answer = pending.link.handshake(data)
                if answer:
                    out.append(relayed.message(relayed.RECORDS, session, answer))
                if pending.established:
                    peer.relayed, peer.pending = pending, None
                    self.agent.control.status(op="path", network=self.wire_id, peer=peer.node, path="relay")
                    self._receive_relayed(peer, pending, b"", out)  # what came after its Finished
            else:
                out.append(relayed.message(relayed.RESET, session))  # a session this side does not have (a restart)
        elif kind == relayed.RESET:
            for name in ("relayed", "pending"):
                current = getattr(peer, name)
                if current is not None and current.session == session:
                    setattr(peer, name, None)
                    peer.next_relay_attempt = 0.0

    def _receive_relayed(self, peer: Peer, session: RelayedSession, data: bytes, out: list[bytes]) -> None:
        for kind, payload in session.link.receive(data):  # type: ignore[union-attr]
            if kind == FRAME:
                session.consumed += len(payload)
                self.deliver(peer.node, payload)
            elif kind == ACK:
                session.acked = max(session.acked, relayed.acked_count(payload))
                session.progress = time.monotonic()
        if session.consumed - session.acknowledged >= relayed.ACK_EVERY:
            session.acknowledged = session.consumed
            records = session.link.seal(*relayed.ack(session.consumed))  # type: ignore[union-attr]
            out.append(relayed.message(relayed.RECORDS, session.session, records))

    def relay_lost(self, peer_node: str) -> None:
        """The daemon could not carry a message to `peer_node`: the session starts afresh."""
        peer = self.peers.get(peer_node)
        if peer is not None:
            with peer.send_lock:
                peer.relayed = peer.pending = None


class Agent:
    """Listens for peers, dials them, and follows the daemon's orders."""

    def __init__(self, listener: socket.socket, control: Control, identity: OverlayIdentity,
                 policy: PeerAddressPolicy, macs_per_network: int = DEFAULT_MACS_PER_NETWORK,
                 handshakes_per_source: int = DEFAULT_HANDSHAKES_PER_SOURCE) -> None:
        self.listener = listener
        self.control = control
        self.identity = identity
        self.policy = policy
        self.macs_per_network = macs_per_network
        self.handshakes_per_source = handshakes_per_source
        self.networks: dict[str, OverlayNetwork] = {}
        self._handshakes: collections.Counter[str] = collections.Counter()  # by source address
        self._handshakes_lock = threading.Lock()
        self._dial_now = threading.Event()  # peers changed: try them at once, not at the next round

    def serve(self) -> None:
        threading.Thread(target=self._accept, name="accept", daemon=True).start()
        threading.Thread(target=self._dial, name="dial", daemon=True).start()
        self.control.status(op="listening", port=self.listener.getsockname()[1], node=self.identity.node)
        while True:
            try:
                message = self.control.sock.recv(MAX_MESSAGE + 4096)
            except OSError:
                return
            if not message:
                return  # the daemon is gone
            try:
                self._handle(message)
            except (ValueError, KeyError, OSError, subprocess.SubprocessError, LinkError) as exc:
                self.control.status(op="error", error=str(exc)[:500])

    def _handle(self, message: bytes) -> None:
        kind, body = message[:1], message[1:]
        if kind in (b"R", b"L"):
            wire_id, sender, inner = parse_relay_body(body)
            network = self.networks.get(wire_id)
            if network is None:
                return
            if kind == b"R":
                network.on_relayed(sender, inner)
            else:
                network.relay_lost(sender)
            return
        order = json.loads(body)
        wire_id = order["network"]
        if order["op"] == "join":
            if order.get("node", self.identity.node) != self.identity.node:
                raise ValueError(f"this agent is {self.identity.node}, not {order['node']}")
            if wire_id in self.networks:
                self.networks.pop(wire_id).close()
            self.networks[wire_id] = OverlayNetwork(self, wire_id, order["netns"])
            self.networks[wire_id].set_peers(order.get("peers", {}))
        elif order["op"] == "peers" and wire_id in self.networks:
            self.networks[wire_id].set_peers(order["peers"])
        elif order["op"] == "leave" and wire_id in self.networks:
            self.networks.pop(wire_id).close()
        elif order["op"] == "stats":
            self.control.status(op="stats", networks={
                w: {"macs": len(n.macs), "macs_refused": n.macs_refused, "peers": len(n.peers),
                    "delivered": n.delivered}
                for w, n in self.networks.items()})
        self._dial_now.set()

    # Direct links

    def _accept(self) -> None:
        while True:
            try:
                sock, address = self.listener.accept()
            except OSError:
                return
            source = address[0]
            with self._handshakes_lock:
                busy = (self._handshakes[source] >= self.handshakes_per_source
                        or sum(self._handshakes.values()) >= MAX_HANDSHAKES)
                if not busy:
                    self._handshakes[source] += 1
            if busy:
                _close(sock)  # a flood of unauthenticated connections: the real peers retry
                continue
            threading.Thread(target=self._accepted, args=(sock, source), daemon=True).start()

    def _accepted(self, sock: socket.socket, source: str) -> None:
        deadline = time.monotonic() + HANDSHAKE_SECONDS
        try:
            if _read_exactly(sock, len(MAGIC), deadline) != MAGIC:
                raise LinkError("not an overlay peer")
            network = self.networks.get(_read_field(sock, 255, deadline).decode(errors="replace"))
            if network is None:
                raise LinkError("a network this agent does not carry")
            their_certificate = _read_field(sock, MAX_CERTIFICATE, deadline)
            sender = certificate_id(their_certificate)
            peer = network.peers.get(sender)
            if peer is None or not sender < network.node:
                raise LinkError(f"{sender} is not a peer that dials this node on this network")
            link = TlsLink(self.identity, sender, their_certificate, server_side=True)
            _send_within(sock, _field(self.identity.certificate_der), deadline)
            _handshake(sock, link, deadline)
        except (OSError, LinkError, ValueError) as exc:
            log.debug("overlay link refused: %s", exc)
            _close(sock)
            return
        finally:
            with self._handshakes_lock:
                self._handshakes[source] -= 1
                if self._handshakes[source] <= 0:
                    del self._handshakes[source]
        self._receive(network, peer, sock, link)

    def _dial(self) -> None:
        while True:
            self._dial_now.wait(DIAL_FIRST)
            self._dial_now.clear()
            now = time.monotonic()
            for network in list(self.networks.values()):
                for peer in list(network.peers.values()):
                    if peer.sock is None and not peer.dialing and network.node < peer.node and not network.closed \
                            and now >= peer.next_dial:
                        peer.dialing = True
                        peer.dial_delay = min(max(peer.dial_delay * 2, DIAL_FIRST), DIAL_MOST)
                        peer.next_dial = now + peer.dial_delay
                        threading.Thread(target=self._connect, args=(network, peer), daemon=True).start()

    def _connect(self, network: OverlayNetwork, peer: Peer) -> None:
        deadline = time.monotonic() + HANDSHAKE_SECONDS
        try:
            target = self.policy.resolve(*peer.address)
            sock = socket.create_connection(target, timeout=HANDSHAKE_SECONDS)
        except (OSError, ValueError) as exc:
            log.debug("overlay peer %s not dialled: %s", peer.node, exc)
            peer.dialing = False
            return
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            _send_within(sock, MAGIC + _field(network.wire_id.encode()) + _field(self.identity.certificate_der),
                         deadline)
            link = TlsLink(self.identity, peer.node, _read_field(sock, MAX_CERTIFICATE, deadline), server_side=False)
            _handshake(sock, link, deadline)
        except (OSError, LinkError, ValueError) as exc:
            log.debug("overlay dial to %s failed: %s", peer.node, exc)
            _close(sock)
            return
        finally:
            peer.dialing = False
        self._receive(network, peer, sock, link)

    def _receive(self, network: OverlayNetwork, peer: Peer, sock: socket.socket, link: TlsLink) -> None:
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
        if network.closed or network.peers.get(peer.node) is not peer:
            _close(sock)
            return
        peer.attach(sock, link)
        self.control.status(op="path", network=network.wire_id, peer=peer.node, path="direct")
        buffer = bytearray(1 << 18)
        view = memoryview(buffer)
        try:
            while not network.closed:
                count = sock.recv_into(buffer)
                if not count:
                    break
                for kind, payload in link.receive(view[:count]):
                    if kind == FRAME:
                        network.deliver(peer.node, payload)
        except (OSError, LinkError) as exc:
            log.debug("overlay link to %s ended: %s", peer.node, exc)
        peer.drop(sock)
        if not network.closed:
            self.control.status(op="path", network=network.wire_id, peer=peer.node, path="relay")


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


def _close(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


def _open_tap(netns: str) -> int:
    """A TAP device named ov0 in the namespace `netns`, opened (in a thread of its own, which
    enters that namespace and ends: only that thread ever leaves the agent's namespace)."""
    result: dict[str, int | BaseException] = {}

    def in_namespace() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            target = os.open(f"/run/netns/{netns}", os.O_RDONLY)
            try:
                if libc.setns(target, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), f"cannot enter the namespace {netns}")
            finally:
                os.close(target)
            tap = os.open("/dev/net/tun", os.O_RDWR)
            fcntl.ioctl(tap, TUNSETIFF, struct.pack("16sH", TAP_NAME.encode(), IFF_TAP | IFF_NO_PI))
            result["tap"] = tap
        except BaseException as exc:  # handed to the caller
            result["error"] = exc

    thread = threading.Thread(target=in_namespace)
    thread.start()
    thread.join()
    if "error" in result:
        raise OSError(f"cannot make the overlay's TAP device in {netns}: {result['error']}")
    return int(result["tap"])  # type: ignore[arg-type]


def _run(*argv: str) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    if done.returncode != 0:
        raise OSError(f"{' '.join(argv)}: {done.stderr.strip()}")
