"""The daemon's handle on its overlay agent (exeunit.runtime.overlay.agent): starts it, gives it
its orders, and hears back the messages it relays through the requestor and how each peer is
reached. Relayed messages are pieces of TLS sessions: none may be dropped on the way in (a full
channel waits), and one that cannot be carried out is reported back (`relay_lost`)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass
from collections.abc import Callable, Sequence

from exeunit.runtime.overlay.agent import MAX_MESSAGE, parse_relay_body, relay_body

RelayHandler = Callable[[str, str, bytes], None]  # (network, peer, message): for the requestor to relay
StatusHandler = Callable[[dict], None]


@dataclass(frozen=True)
class AgentOptions:
    """How the agent authenticates and what it bounds (the daemon's flags)."""

    certificate_file: str
    key_file: str
    peer_ranges: str = ""  # CIDRs peers may be dialled in, comma-separated ("" any the rules allow)
    macs_per_network: int = 4096
    handshakes_per_source: int = 4

    def argv(self) -> list[str]:
        return ["--certificate", self.certificate_file, "--key", self.key_file, "--peer-ranges", self.peer_ranges,
                "--macs-per-network", str(self.macs_per_network),
                "--handshakes-per-source", str(self.handshakes_per_source)]


class AgentProcess:
    """`python -m exeunit.runtime.overlay` listening on `listen` ("host:port"), run through
    `prefix` (say, nsenter into a namespace) when given. Handlers are called from a thread."""

    def __init__(self, listen: str, options: AgentOptions, on_relay: RelayHandler,
                 on_status: StatusHandler = lambda status: None, prefix: Sequence[str] = ()) -> None:
        self._on_relay = on_relay
        self._on_status = on_status
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._sock = ours
        self.process = subprocess.Popen(
            [*prefix, sys.executable, "-m", "exeunit.runtime.overlay", "--listen", listen,
             "--control-fd", str(theirs.fileno()),
             *options.argv()], pass_fds=(theirs.fileno(),))
        theirs.close()
        first = json.loads(self._receive()[1:] or b"{}")
        if first.get("op") != "listening":
            self.close()
            why = first.get("error") or f"it ended with status {self.process.returncode} before saying why"
            raise OSError(f"the overlay agent did not start on {listen}: {why}")
        self.port = int(first["port"])
        self.node = str(first.get("node", ""))
        threading.Thread(target=self._listen, name="overlay-control", daemon=True).start()

    def _receive(self) -> bytes:
        return self._sock.recv(MAX_MESSAGE + 4096)

    def _send(self, message: bytes, wait: bool = True) -> bool:
        """Hands the agent a message; False when it would have to wait and `wait` is False. No
        lock: a SOCK_SEQPACKET send is one whole message whichever thread sends it, and a sender
        that waits for the agent holds up no other."""
        try:
            self._sock.send(message, 0 if wait else socket.MSG_DONTWAIT)
        except BlockingIOError:
            if wait:
                raise
            return False
        except OSError:
            if self.process.poll() is None and self._sock.fileno() != -1:
                raise
            # the agent is gone (closed, or died): a message for it is dropped, as a network would
        return True

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

    def join(self, network: str, netns: str, peers: dict[str, str]) -> None:
        """Carries `network` (its id on the wire, the same on every provider) for its namespace
        `netns` to `peers` (provider id -> "host:port" of its agent)."""
        self._send(b"J" + json.dumps({"op": "join", "network": network, "netns": netns, "peers": peers}).encode())

    def set_peers(self, network: str, peers: dict[str, str]) -> None:
        self._send(b"J" + json.dumps({"op": "peers", "network": network, "peers": peers}).encode())

    def leave(self, network: str) -> None:
        self._send(b"J" + json.dumps({"op": "leave", "network": network}).encode())

    def relay_in(self, network: str, peer: str, message: bytes, wait: bool = True) -> bool:
        """A message `peer` sent through the requestor; with `wait` False, False (and nothing
        sent) when the agent is behind, for the caller to wait elsewhere and send it again."""
        return self._send(b"R" + relay_body(network, peer, message), wait=wait)

    def relay_lost(self, network: str, peer: str) -> None:
        """A message the agent handed out for `peer` could not be carried: its session restarts.
        Never waits (the event loop calls it): when the agent is behind, the notice is dropped and
        the session, its window full and unacknowledged, is given up on its own after a while."""
        self._send(b"L" + relay_body(network, peer, b""), wait=False)

    def request_stats(self) -> None:
        """Asks for the tables' sizes; they come back as a status {"op": "stats", ...}."""
        self._send(b"J" + json.dumps({"op": "stats", "network": ""}).encode())

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
