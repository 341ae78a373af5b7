"""The daemon's handle on its overlay agent (exeunit.runtime.overlay.agent): starts it, gives it
its orders, and hears back the frames it cannot send directly and how each peer is reached."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence

from exeunit.runtime.overlay.agent import MAX_FRAME, parse_relay_body, relay_body

RelayHandler = Callable[[str, str, bytes], None]  # (network, peer, sealed frame): for the requestor to relay
StatusHandler = Callable[[dict], None]


class AgentProcess:
    """`python -m exeunit.runtime.overlay` listening on `listen` ("host:port"), run through
    `prefix` (say, nsenter into a namespace) when given. Handlers are called from a thread."""

    def __init__(self, listen: str, on_relay: RelayHandler, on_status: StatusHandler = lambda status: None,
                 prefix: Sequence[str] = ()) -> None:
        self._on_relay = on_relay
        self._on_status = on_status
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._sock = ours
        self._lock = threading.Lock()
        self.process = subprocess.Popen(
            [*prefix, sys.executable, "-m", "exeunit.runtime.overlay", "--listen", listen,
             "--control-fd", str(theirs.fileno())], pass_fds=(theirs.fileno(),))
        theirs.close()
        first = json.loads(self._receive()[1:] or b"{}")
        if first.get("op") != "listening":
            self.close()
            raise OSError(f"the overlay agent did not start: {first}")
        self.port = int(first["port"])
        threading.Thread(target=self._listen, name="overlay-control", daemon=True).start()

    def _receive(self) -> bytes:
        return self._sock.recv(MAX_FRAME + 4096)

    def _send(self, message: bytes, droppable: bool = False) -> None:
        with self._lock:
            try:
                self._sock.send(message, socket.MSG_DONTWAIT if droppable else 0)
            except BlockingIOError:
                if not droppable:
                    raise
                # the agent is behind: the relayed frame is dropped, as a congested link drops one
            except OSError:
                if self.process.poll() is None and self._sock.fileno() != -1:
                    raise
                # the agent is gone (closed, or died): a frame for it is dropped, as a network would

    def _listen(self) -> None:
        while True:
            try:
                message = self._receive()
            except OSError:
                return
            if not message:
                return
            kind, body = message[:1], message[1:]
            if kind == b"O":
                self._on_relay(*parse_relay_body(body))
            elif kind == b"S":
                self._on_status(json.loads(body))

    def join(self, network: str, netns: str, secret: bytes, node: str, peers: dict[str, str]) -> None:
        """Carries `network` (its id on the wire, the same on every provider) for its namespace
        `netns`, as `node`, to `peers` (node id -> "host:port" of its agent)."""
        self._send(b"J" + json.dumps({"op": "join", "network": network, "netns": netns, "secret": secret.hex(),
                                      "node": node, "peers": peers}).encode())

    def set_peers(self, network: str, peers: dict[str, str]) -> None:
        self._send(b"J" + json.dumps({"op": "peers", "network": network, "peers": peers}).encode())

    def leave(self, network: str) -> None:
        self._send(b"J" + json.dumps({"op": "leave", "network": network}).encode())

    def relay_in(self, network: str, peer: str, sealed: bytes) -> None:
        """A frame `peer` sent through the requestor (dropped when the agent is behind: never waits)."""
        self._send(b"R" + relay_body(network, peer, sealed), droppable=True)

    def close(self) -> None:
        try:  # shutdown, not only close: it wakes the reading thread and tells the agent at once
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()  # the agent ends when its control channel closes
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
