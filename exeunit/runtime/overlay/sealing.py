"""How frames of a network that spans providers are sealed between hosts.

Every network has a secret the requestor gives each member provider over its authenticated TLS
channel (32 random bytes; nobody else has it). With it:

- Direct connections (TCP, provider to provider) open with a handshake: the dialer sends a hello
  sealed with the secret (its node id, the peer's, the time, 16 random bytes); the acceptor
  answers with its own random bytes, sealed too; both derive a pair of session keys (HKDF over
  the secret and both randoms, one key per direction), and the dialer proves it holds them with
  its first frame (`confirm`). A replayed hello gets an answer nobody can use: without the secret
  there are no session keys, so no confirm, and the acceptor drops the connection.
  Frames then carry an 8-byte counter that must grow by exactly one (TCP keeps them in order): a
  frame replayed, dropped, reordered or forged ends the connection.
- Relayed frames (through the requestor, when two providers cannot reach each other) are sealed
  with the secret itself, a random nonce, and a sequence number the receiver checks against a
  sliding window (as WireGuard's), with sender, receiver and network bound as associated data.

AES-256-GCM throughout (cryptography's, OpenSSL underneath): the kernel here has neither
WireGuard nor IPsec ESP nor MACsec nor kTLS, so the sealing is done in user space.
"""

from __future__ import annotations

import os
import struct
import time

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

SECRET_BYTES = 32
RANDOM_BYTES = 16
NONCE_BYTES = 12
COUNTER_BYTES = 8
MAX_CLOCK_SKEW_SECONDS = 60.0
REPLAY_WINDOW = 1024  # relayed frames: how far behind the newest a late one may still arrive
CONFIRM = b"exeunit-overlay-confirm"


class SealError(Exception):
    """A frame or hello that is not authentic (forged, replayed, for another network or node)."""


def _seal(key: bytes, plaintext: bytes, associated: bytes) -> bytes:
    nonce = os.urandom(NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, associated)


def _open(key: bytes, sealed: bytes, associated: bytes) -> bytes:
    try:
        return AESGCM(key).decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], associated)
    except (InvalidTag, ValueError):
        raise SealError("a hello or frame that does not open with the network's secret") from None


def hello(secret: bytes, network: str, sender: str, receiver: str, random: bytes) -> bytes:
    """The sealed hello `sender` sends `receiver` (or answers with) on `network`."""
    body = struct.pack("!Q", int(time.time() * 1000)) + random + f"{sender}\0{receiver}".encode()
    return _seal(secret, body, b"hello\0" + network.encode())


def open_hello(secret: bytes, network: str, sealed: bytes, expect_receiver: str) -> tuple[str, bytes]:
    """(sender, random) of an authentic, fresh hello addressed to `expect_receiver`."""
    body = _open(secret, sealed, b"hello\0" + network.encode())
    if len(body) < 8 + RANDOM_BYTES:
        raise SealError("a hello too short to be one")
    (stamp,) = struct.unpack("!Q", body[:8])
    if abs(stamp / 1000 - time.time()) > MAX_CLOCK_SKEW_SECONDS:
        raise SealError("a hello from too long ago (or a clock far off)")
    random = body[8:8 + RANDOM_BYTES]
    sender, _, receiver = body[8 + RANDOM_BYTES:].decode(errors="replace").partition("\0")
    if receiver != expect_receiver:
        raise SealError(f"a hello for {receiver!r}, not this node")
    return sender, random


class Session:
    """The keys and counters of one direct connection, as one side sees it."""

    def __init__(self, secret: bytes, dialer_random: bytes, acceptor_random: bytes, dialing: bool) -> None:
        material = HKDF(hashes.SHA256(), 64, salt=dialer_random + acceptor_random,
                        info=b"exeunit-overlay-session").derive(secret)
        to_acceptor, to_dialer = material[:32], material[32:]
        self._send = AESGCM(to_acceptor if dialing else to_dialer)
        self._receive = AESGCM(to_dialer if dialing else to_acceptor)
        self._sent = 0
        self._received = 0

    def seal(self, frame: bytes) -> bytes:
        """Counter and ciphertext of the next frame."""
        counter, ciphertext = self.seal_parts(frame)
        return counter + ciphertext

    def seal_parts(self, frame: bytes) -> tuple[bytes, bytes]:
        """The next frame's counter and ciphertext, apart (sent with one sendmsg, not joined)."""
        self._sent += 1
        counter = self._sent.to_bytes(COUNTER_BYTES, "big")
        return counter, self._send.encrypt(b"\0\0\0\0" + counter, frame, None)

    def open(self, sealed: bytes) -> bytes:
        counter = int.from_bytes(sealed[:COUNTER_BYTES], "big")
        if counter != self._received + 1:
            raise SealError(f"frame {counter} where {self._received + 1} was due (replayed, lost or forged)")
        try:
            frame = self._receive.decrypt(b"\0\0\0\0" + sealed[:COUNTER_BYTES],
                                          memoryview(sealed)[COUNTER_BYTES:], None)
        except InvalidTag:
            raise SealError("a frame that does not open with the session's key") from None
        self._received = counter
        return frame


class RelaySealer:
    """Seals the frames one node sends through the requestor, and opens those it receives."""

    def __init__(self, secret: bytes, network: str, node: str) -> None:
        self._secret = secret
        self._network = network
        self._node = node
        self._sequence = int(time.time() * 1_000_000)  # grows across restarts of the node too
        self._windows: dict[str, tuple[int, int]] = {}  # sender -> (newest sequence, bitmap of the window)

    def _associated(self, sender: str, receiver: str, sequence: int) -> bytes:
        return f"relay\0{self._network}\0{sender}\0{receiver}\0".encode() + sequence.to_bytes(8, "big")

    def seal(self, receiver: str, frame: bytes) -> bytes:
        self._sequence += 1
        return self._sequence.to_bytes(8, "big") + _seal(
            self._secret, frame, self._associated(self._node, receiver, self._sequence))

    def open(self, sender: str, sealed: bytes) -> bytes:
        """The frame, once: a sequence seen before, or too old for the window, is a SealError."""
        sequence = int.from_bytes(sealed[:8], "big")
        frame = _open(self._secret, sealed[8:], self._associated(sender, self._node, sequence))
        newest, seen = self._windows.get(sender, (0, 0))
        if sequence > newest:
            shift = sequence - newest
            seen = ((seen << shift) | 1) & ((1 << REPLAY_WINDOW) - 1) if shift < REPLAY_WINDOW else 1
            newest = sequence
        else:
            behind = newest - sequence
            if behind >= REPLAY_WINDOW or seen >> behind & 1:
                raise SealError(f"relayed frame {sequence} from {sender} seen before or too late")
            seen |= 1 << behind
        self._windows[sender] = (newest, seen)
        return frame
