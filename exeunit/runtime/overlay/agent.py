"""The overlay agent: the data plane of networks that span providers, one process per daemon.

For each network it joins, the agent plugs a TAP device (`ov0`, MTU 65000) into the network's
bridge, in the network's own namespace, and carries the Ethernet frames the members send to
the network's other providers (its peers), sealed (exeunit.runtime.overlay.sealing):

- directly, over one TCP connection per peer (the node with the smaller id dials, the other
  accepts on the agent's listening port), when the two hosts reach each other;
- otherwise through the daemon's control channel: the daemon hands them to the requestor, which
  relays them to the peer's provider over the connection it has with each (as Golem's relay).

Frames go where the learning table says the destination's MAC lives (learnt from the frames each
peer sends), and to every peer when it does not know (broadcast, ARP, a new address). Bulk data
stays out of the daemon's event loop: the agent's threads move it with one read, one AES-GCM seal
and one send per frame, and the large MTU keeps frames few (a TCP stream between two members
moves 64 KiB per frame).

The daemon speaks to the agent over a SOCK_SEQPACKET pair, one message per datagram: a kind byte,
then JSON (`J`: join / peers / leave from the daemon; `S`: status to it) or a relayed frame (`R`
from the daemon, `O` to it: a 2-byte length, a JSON header {network, peer}, the sealed bytes).
"""

from __future__ import annotations

import ctypes
import fcntl
import ipaddress
import json
import logging
import os
import socket
import struct
import subprocess
import threading
import time
from dataclasses import dataclass, field

from exeunit.runtime.overlay.sealing import (
    CONFIRM, RANDOM_BYTES, SECRET_BYTES, RelaySealer, SealError, Session, hello, open_hello,
)

log = logging.getLogger(__name__)

OVERLAY_MTU = 65000
TAP_NAME = "ov0"
MAGIC = b"EXOV1\n"
MAX_FRAME = OVERLAY_MTU + 1024  # an Ethernet frame at the MTU, sealed, with room to spare
MAX_HELLO = 1024
HANDSHAKE_SECONDS = 5.0
DIAL_FIRST, DIAL_MOST = 0.1, 2.0  # seconds between attempts at a peer: doubling from the first to the most
PEER_TIMEOUT_MS = 5000
SEND_STALL_SECONDS = 2
SOCKET_BUFFER = 4 << 20  # bytes in flight per direction of a peer connection
MAX_HANDSHAKES = 32  # connections being authenticated at once; more wait in the listen backlog
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

    def relay_out(self, network: str, peer: str, sealed: bytes) -> None:
        self.send(b"O", relay_body(network, peer, sealed))


def relay_body(network: str, peer: str, sealed: bytes) -> bytes:
    """A relayed frame on the control channel (after its kind byte: `R` in, `O` out)."""
    header = json.dumps({"network": network, "peer": peer}).encode()
    return struct.pack("!H", len(header)) + header + sealed


def parse_relay_body(body: bytes) -> tuple[str, str, bytes]:
    """(network, peer, sealed) of a relay_body."""
    (size,) = struct.unpack("!H", body[:2])
    header = json.loads(body[2:2 + size])
    return header["network"], header["peer"], body[2 + size:]


@dataclass
class Peer:
    node: str
    address: tuple[str, int]
    session: Session | None = None
    sock: socket.socket | None = None
    dialing: bool = False
    next_dial: float = 0.0  # monotonic time of the next attempt (the dialing side's)
    dial_delay: float = 0.0  # grows while attempts fail, so a peer gone quiet costs little
    send_lock: threading.Lock = field(default_factory=threading.Lock)

    def send_direct(self, frame: bytes) -> bool:
        """Sends over the direct connection; False when there is none (or it just broke)."""
        sock, session = self.sock, self.session
        if sock is None or session is None:
            return False
        with self.send_lock:
            counter, ciphertext = session.seal_parts(frame)
            header = struct.pack("!I", len(counter) + len(ciphertext))
            try:
                sent = sock.sendmsg([header, counter, ciphertext])
                whole = len(header) + len(counter) + len(ciphertext)
                if sent < whole:  # interrupted part-way: the rest, in order
                    sock.sendall((header + counter + ciphertext)[sent:])
                return True
            except OSError:
                self.drop(sock)
                return False

    def attach(self, sock: socket.socket, session: Session) -> None:
        with self.send_lock:
            old, self.sock, self.session = self.sock, sock, session
        if old is not None:
            _close(old)

    def drop(self, sock: socket.socket | None = None) -> None:
        """Forgets the direct connection (`sock`: only if it is still that one)."""
        if sock is not None and self.sock is not sock:
            return
        old, self.sock, self.session = self.sock, None, None
        if old is not None:
            _close(old)


class OverlayNetwork:
    """One network's TAP, peers and learning table on this provider."""

    def __init__(self, agent: Agent, wire_id: str, netns: str, secret: bytes, node: str) -> None:
        self.agent = agent
        self.wire_id = wire_id
        self.netns = netns
        self.secret = secret
        self.node = node
        self.peers: dict[str, Peer] = {}
        self.macs: dict[bytes, str] = {}
        self.relay = RelaySealer(secret, wire_id, node)
        self.closed = False
        self.tap = _open_tap(netns)
        _run("ip", "-n", netns, "link", "set", TAP_NAME, "mtu", str(OVERLAY_MTU), "master", "br0", "up")
        threading.Thread(target=self._read_tap, name=f"tap-{wire_id[:8]}", daemon=True).start()

    def set_peers(self, peers: dict[str, str]) -> None:
        for node in [n for n in self.peers if n not in peers]:
            self.peers.pop(node).drop()
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
            peer.drop()
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
                    self.agent.control.relay_out(self.wire_id, peer.node, self.relay.seal(peer.node, frame))

    def deliver(self, sender: str, frame: bytes) -> None:
        """A frame from peer `sender`, authentic: into the bridge, and its source learnt."""
        if len(frame) < 14 or self.closed:
            return
        source = frame[6:12]
        if not source[0] & 1:
            self.macs[source] = sender
        try:
            os.write(self.tap, frame)
        except OSError:
            pass  # the network is going away


class Agent:
    """Listens for peers, dials them, and follows the daemon's orders."""

    def __init__(self, listener: socket.socket, control: Control) -> None:
        self.listener = listener
        self.control = control
        self.networks: dict[str, OverlayNetwork] = {}
        self._handshakes = threading.BoundedSemaphore(MAX_HANDSHAKES)
        self._dial_now = threading.Event()  # peers changed: try them at once, not at the next round

    def serve(self) -> None:
        threading.Thread(target=self._accept, name="accept", daemon=True).start()
        threading.Thread(target=self._dial, name="dial", daemon=True).start()
        self.control.status(op="listening", port=self.listener.getsockname()[1])
        while True:
            try:
                message = self.control.sock.recv(MAX_FRAME + 4096)
            except OSError:
                return
            if not message:
                return  # the daemon is gone
            try:
                self._handle(message)
            except (ValueError, KeyError, OSError, subprocess.SubprocessError) as exc:
                self.control.status(op="error", error=str(exc)[:500])

    def _handle(self, message: bytes) -> None:
        kind, body = message[:1], message[1:]
        if kind == b"R":
            wire_id, sender, sealed = parse_relay_body(body)
            network = self.networks.get(wire_id)
            if network is not None and sender in network.peers:
                try:
                    network.deliver(sender, network.relay.open(sender, sealed))
                except SealError as exc:
                    log.debug("relayed frame refused: %s", exc)
            return
        order = json.loads(body)
        wire_id = order["network"]
        if order["op"] == "join":
            secret = bytes.fromhex(order["secret"])
            if len(secret) != SECRET_BYTES:
                raise ValueError("a network secret is 32 bytes")
            if wire_id in self.networks:
                self.networks.pop(wire_id).close()
            self.networks[wire_id] = OverlayNetwork(self, wire_id, order["netns"], secret, order["node"])
            self.networks[wire_id].set_peers(order.get("peers", {}))
        elif order["op"] == "peers" and wire_id in self.networks:
            self.networks[wire_id].set_peers(order["peers"])
        elif order["op"] == "leave" and wire_id in self.networks:
            self.networks.pop(wire_id).close()
        self._dial_now.set()

    # Direct connections

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            if not self._handshakes.acquire(blocking=False):
                _close(sock)  # a flood of unauthenticated connections: the real peers retry
                continue
            threading.Thread(target=self._accepted, args=(sock,), daemon=True).start()

    def _accepted(self, sock: socket.socket) -> None:
        try:
            sock.settimeout(HANDSHAKE_SECONDS)
            stream = sock.makefile("rb", buffering=1 << 20)
            if stream.read(len(MAGIC)) != MAGIC:
                raise SealError("not an overlay peer")
            network = self.networks.get(_read_field(stream, 255).decode(errors="replace"))
            if network is None:
                raise SealError("a network this agent does not carry")
            sender, their_random = open_hello(network.secret, network.wire_id, _read_field(stream, MAX_HELLO),
                                              network.node)
            peer = network.peers.get(sender)
            if peer is None:
                raise SealError(f"{sender} is not a peer on this network")
            ours = os.urandom(RANDOM_BYTES)
            sock.sendall(_field(hello(network.secret, network.wire_id, network.node, sender, ours)))
            session = Session(network.secret, their_random, ours, dialing=False)
            if session.open(_read_field(stream, MAX_FRAME)) != CONFIRM:
                raise SealError("no confirmation of the session")
            sock.settimeout(None)
        except (OSError, SealError, ValueError) as exc:
            log.debug("overlay handshake refused: %s", exc)
            _close(sock)
            return
        finally:
            self._handshakes.release()
        self._receive(network, peer, sock, stream, session)

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
        try:
            target = self._dialable(peer.address)
            sock = socket.create_connection(target, timeout=HANDSHAKE_SECONDS)
        except (OSError, ValueError) as exc:
            log.debug("overlay peer %s not dialled: %s", peer.node, exc)
            peer.dialing = False
            return
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            ours = os.urandom(RANDOM_BYTES)
            sock.sendall(MAGIC + _field(network.wire_id.encode())
                         + _field(hello(network.secret, network.wire_id, network.node, peer.node, ours)))
            stream = sock.makefile("rb", buffering=1 << 20)
            sender, theirs = open_hello(network.secret, network.wire_id, _read_field(stream, MAX_HELLO), network.node)
            if sender != peer.node:
                raise SealError(f"{sender} answered where {peer.node} was expected")
            session = Session(network.secret, ours, theirs, dialing=True)
            sealed = session.seal(CONFIRM)
            sock.sendall(struct.pack("!I", len(sealed)) + sealed)
            sock.settimeout(None)
        except (OSError, SealError, ValueError) as exc:
            log.debug("overlay dial to %s failed: %s", peer.node, exc)
            _close(sock)
            return
        finally:
            peer.dialing = False
        self._receive(network, peer, sock, stream, session)

    def _dialable(self, address: tuple[str, int]) -> tuple[str, int]:
        """The peer's address, resolved, unless it is one a requestor must not point this host at:
        the unspecified, multicast or link-local addresses, or loopback (unless this agent itself
        listens on loopback: providers on one machine, as in tests)."""
        resolved = socket.getaddrinfo(address[0], address[1], type=socket.SOCK_STREAM)[0][4]
        ip = ipaddress.ip_address(resolved[0])
        own = ipaddress.ip_address(self.listener.getsockname()[0])
        if ip.is_unspecified or ip.is_multicast or ip.is_link_local or (ip.is_loopback and not own.is_loopback):
            raise ValueError(f"{ip} is not an address a peer provider is reached at")
        return resolved[0], resolved[1]

    def _receive(self, network: OverlayNetwork, peer: Peer, sock: socket.socket, stream, session: Session) -> None:
        peer.dial_delay = 0.0
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
        peer.attach(sock, session)
        self.control.status(op="path", network=network.wire_id, peer=peer.node, path="direct")
        try:
            while not network.closed:
                network.deliver(peer.node, session.open(_read_field(stream, MAX_FRAME)))
        except (OSError, SealError, ValueError) as exc:
            log.debug("overlay connection to %s ended: %s", peer.node, exc)
        peer.drop(sock)
        if not network.closed:
            self.control.status(op="path", network=network.wire_id, peer=peer.node, path="relay")


def _field(data: bytes) -> bytes:
    return struct.pack("!I", len(data)) + data


def _read_field(stream, limit: int) -> bytes:
    header = stream.read(4)
    if len(header) != 4:
        raise OSError("the connection closed")
    (size,) = struct.unpack("!I", header)
    if size > limit:
        raise ValueError(f"a field of {size} bytes, over {limit}")
    data = stream.read(size)
    if len(data) != size:
        raise OSError("the connection closed mid-frame")
    return data


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
