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

Who may connect, and how: exeunit.runtime.overlay.direct.

The daemon speaks to the agent over a SOCK_SEQPACKET pair, one message per datagram: a kind byte,
then JSON (`J`: join / peers / leave from the daemon; `S`: status to it) or a relayed message
(`R` from the daemon, `O` to it: a 2-byte length, a JSON header {network, peer}, the message), or
`L` from the daemon: a relayed message to {network, peer} could not be carried.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import socket
import struct
import threading
import time

from exeunit.runtime.overlay.addresses import PeerAddressPolicy
from exeunit.runtime.overlay.direct import DEFAULT_HANDSHAKES_PER_SOURCE, DirectLinks
from exeunit.runtime.overlay.peer import Peer
from exeunit.runtime.overlay.relayed import RelayedPath
from exeunit.runtime.overlay.tap import TAP_NAME, open_tap, run
from exeunit.runtime.overlay.tls import OverlayIdentity

log = logging.getLogger(__name__)

OVERLAY_MTU = 65000
MAX_FRAME = OVERLAY_MTU + 1024  # an Ethernet frame at the MTU, with room to spare
MAX_MESSAGE = MAX_FRAME + 2048  # a frame's TLS records, or a relayed message
DEFAULT_MACS_PER_NETWORK = 4096
MAC_MOVE_SECONDS = 30.0  # a MAC seen behind one peer is not taken as behind another for this long


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


class OverlayNetwork:
    """One network's TAP, peers and learning table on this provider."""

    def __init__(self, agent: Agent, wire_id: str, netns: str) -> None:
        self.agent = agent
        self.wire_id = wire_id
        self.netns = netns
        self.node = agent.identity.node
        self.peers: dict[str, Peer] = {}
        self.macs: dict[bytes, tuple[str, float]] = {}  # a member's MAC -> (the peer it is behind, last seen)
        self.local_macs: collections.OrderedDict[bytes, float] = collections.OrderedDict()  # members here
        self._macs_lock = threading.Lock()
        self.macs_refused = 0
        self.spoofed = 0  # frames from a peer with a source that lives elsewhere (dropped)
        self.delivered = 0  # frames from peers written into the bridge
        self.closed = False
        self.relayed = RelayedPath(self, agent.control, agent.identity)
        self.tap = open_tap(netns)
        run("ip", "-n", netns, "link", "set", TAP_NAME, "mtu", str(OVERLAY_MTU), "master", "br0", "up")
        threading.Thread(target=self._read_tap, name=f"tap-{wire_id[:8]}", daemon=True).start()

    def set_peers(self, peers: dict[str, str]) -> None:
        for node in [n for n in self.peers if n not in peers]:
            self.peers.pop(node).forget()
            with self._macs_lock:
                for mac in [m for m, (owner, _) in self.macs.items() if owner == node]:
                    del self.macs[mac]
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
            destination, source = frame[:6], frame[6:12]
            with self._macs_lock:
                self._seen_here(source)
                owner = self.macs.get(destination, ("", 0.0))[0] if not destination[0] & 1 else ""
            known = self.peers.get(owner)
            for peer in ([known] if known is not None else list(self.peers.values())):
                if not peer.send_direct(frame):
                    self.relayed.send(peer, frame)

    def deliver(self, sender: str, frame: bytes) -> None:
        """A frame from peer `sender`, authentic: into the bridge, and its source learnt."""
        if len(frame) < 14 or self.closed:
            return
        with self._macs_lock:
            if not self._learn(frame[6:12], sender):
                self.spoofed += 1
                return
        self.delivered += 1
        try:
            os.write(self.tap, frame)
        except OSError:
            pass  # the network is going away

    def _seen_here(self, source: bytes) -> None:
        """A frame from a member on this provider: its MAC lives here (bounded as the table is)."""
        if source[0] & 1:
            return
        self.local_macs[source] = time.monotonic()
        self.local_macs.move_to_end(source)
        if len(self.local_macs) > self.agent.macs_per_network:
            self.local_macs.popitem(last=False)
        self.macs.pop(source, None)

    def _learn(self, source: bytes, sender: str) -> bool:
        """Learns where `source` lives; False for a frame that must not be delivered: one whose
        source is a member here or behind another peer, seen there within MAC_MOVE_SECONDS (a
        member passing for another's address, to draw its traffic)."""
        if source[0] & 1:
            return False  # no frame comes from a group address
        now = time.monotonic()
        if now - self.local_macs.get(source, -MAC_MOVE_SECONDS) < MAC_MOVE_SECONDS:
            return False
        owner = self.macs.get(source)
        if owner is not None:
            if owner[0] != sender and now - owner[1] < MAC_MOVE_SECONDS:
                return False
            self.macs[source] = (sender, now)
            return True
        if len(self.macs) >= self.agent.macs_per_network:
            self.macs_refused += 1  # a full table learns nothing new: those destinations go to every peer
            return True
        self.macs[source] = (sender, now)
        return True


class Agent:
    """Listens for peers, dials them, and follows the daemon's orders."""

    def __init__(self, listener: socket.socket, control: Control, identity: OverlayIdentity,
                 policy: PeerAddressPolicy, macs_per_network: int = DEFAULT_MACS_PER_NETWORK,
                 handshakes_per_source: int = DEFAULT_HANDSHAKES_PER_SOURCE) -> None:
        self.control = control
        self.identity = identity
        self.policy = policy
        self.macs_per_network = macs_per_network
        self.networks: dict[str, OverlayNetwork] = {}
        self.dial_now = threading.Event()  # peers changed: try them at once, not at the next round
        self.direct = DirectLinks(self, listener, handshakes_per_source)

    def serve(self) -> None:
        threading.Thread(target=self.direct.accept, name="accept", daemon=True).start()
        threading.Thread(target=self.direct.dial, name="dial", daemon=True).start()
        self.control.status(op="listening", port=self.direct.listener.getsockname()[1], node=self.identity.node)
        while True:
            try:
                message = self.control.sock.recv(MAX_MESSAGE + 4096)
            except OSError:
                return
            if not message:
                return  # the daemon is gone
            try:
                self._handle(message)
            except Exception as exc:  # one bad message (a stranger's bytes, say) never ends the agent
                self.control.status(op="error", error=f"{type(exc).__name__}: {exc}"[:500])

    def _handle(self, message: bytes) -> None:
        kind, body = message[:1], message[1:]
        if kind in (b"R", b"L"):
            wire_id, sender, inner = parse_relay_body(body)
            network = self.networks.get(wire_id)
            if network is None:
                return
            if kind == b"R":
                network.relayed.receive(sender, inner)
            else:
                network.relayed.lost(sender)
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
                    "delivered": n.delivered, "spoofed": n.spoofed}
                for w, n in self.networks.items()})
        self.dial_now.set()

