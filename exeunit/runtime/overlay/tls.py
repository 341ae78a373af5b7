"""Links between overlay agents: mutually authenticated TLS 1.3 (Python's ssl, OpenSSL), nothing
of our own.

Each agent presents its provider's certificate (the self-signed one of the key in the provider's
home, exeunit.persistence.keys) and trusts exactly one certificate at the other end: the one the
peer showed before the handshake, accepted only when its key hashes to the provider id the
requestor named for that peer. OpenSSL then checks in the handshake that the other end holds
that key (CertificateVerify over the transcript) and derives fresh keys from an ephemeral ECDHE
exchange, so a link's traffic is authenticated by provider, forward secret, and unreadable by
any other member (as libp2p's TLS handshake binds peer ids to certificate keys). Both sides
check the id again once the handshake is done. No session tickets, no resumption: every link
runs a full handshake.

A `TlsLink` is one end of such a session over memory buffers (ssl.MemoryBIO), whatever carries
its bytes: a TCP connection (the direct path) or the requestor's relay. One lock serialises the
session's crypto (OpenSSL's SSL objects are not for concurrent use); the carrier's I/O happens
outside it. Inside the session, messages are framed as a kind byte and a 4-byte length. ALPN names
the network, so a link is bound to the network it was opened for too: an on-path party that swaps
two connections' clear preambles gets handshakes that fail.
"""

from __future__ import annotations

import hashlib
import ssl
import struct
import threading
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization

HEADER = struct.Struct("!cI")
FRAME = b"F"  # an Ethernet frame
ACK = b"A"  # relayed links: bytes of frames consumed so far (an 8-byte count), for the sender's window
MAX_MESSAGE = 65000 + 1024
MAX_CERTIFICATE = 4096
ID_BYTES = 20


class LinkError(Exception):
    """A peer that is not who it must be, or a session that broke (TLS alert, bad framing)."""


def certificate_id(der: bytes) -> str:
    """The provider id a certificate's key stands for (exeunit.v1.identity's rule: "0x" + the
    first 20 bytes of SHA-256 over the DER SubjectPublicKeyInfo)."""
    try:
        key = x509.load_der_x509_certificate(der).public_key()
        spki = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    except Exception:  # anything a stranger's bytes make the parser raise (unknown curves too)
        raise LinkError("a certificate that does not parse, or of a key this overlay does not take") from None
    return "0x" + hashlib.sha256(spki).digest()[:ID_BYTES].hex()


@dataclass(frozen=True)
class OverlayIdentity:
    """The provider this agent speaks for: its certificate and key files (the daemon's home)."""

    certificate_file: str
    key_file: str
    certificate_der: bytes
    node: str

    @classmethod
    def load(cls, certificate_file: str, key_file: str) -> OverlayIdentity:
        with open(certificate_file, "rb") as f:
            der = x509.load_pem_x509_certificate(f.read()).public_bytes(serialization.Encoding.DER)
        return cls(certificate_file, key_file, der, certificate_id(der))

    def context(self, server_side: bool, peer_certificate_der: bytes, network: str) -> ssl.SSLContext:
        """TLS 1.3 only, our certificate presented, the peer's one certificate the only trust, and
        the network named in ALPN (so a link is bound to its network, not only to its two ends)."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server_side else ssl.PROTOCOL_TLS_CLIENT)
        context.set_alpn_protocols([alpn_name(network)])
        context.minimum_version = ssl.TLSVersion.TLSv1_3
        context.load_cert_chain(self.certificate_file, self.key_file)
        context.check_hostname = False  # the peer is checked by its key's id, below and in `peer_id`
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(cadata=peer_certificate_der)
        if server_side:
            context.num_tickets = 0  # no resumption: each link a full, forward-secret handshake
        return context


def alpn_name(network: str) -> str:
    """The ALPN protocol both ends of a link on `network` must agree on."""
    return f"exov2/{network}"[:255]


def checked_peer_certificate(der: bytes, expected: str) -> bytes:
    """`der`, if it is a certificate of provider `expected`; LinkError otherwise."""
    if len(der) > MAX_CERTIFICATE:
        raise LinkError("a certificate over the size any provider's is")
    found = certificate_id(der)
    if found != expected:
        raise LinkError(f"a certificate of {found} where {expected} was expected")
    return der


class TlsLink:
    """One end of a TLS session with `peer`; bytes in (`receive`) and out (returned) as the
    carrier moves them."""

    def __init__(self, identity: OverlayIdentity, peer: str, peer_certificate_der: bytes, server_side: bool,
                 network: str) -> None:
        self.peer = peer
        self.network = network
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        context = identity.context(server_side, checked_peer_certificate(peer_certificate_der, peer), network)
        self._tls = context.wrap_bio(self._incoming, self._outgoing, server_side=server_side)
        self._lock = threading.Lock()
        self._plain = bytearray()
        self._buffer = bytearray(MAX_MESSAGE + HEADER.size)
        self.established = False

    def handshake(self, received: bytes = b"") -> bytes:
        """Feeds the peer's handshake bytes; returns ours to send. `established` once done (the
        peer's certificate checked against its id again)."""
        with self._lock:
            if received:
                self._incoming.write(received)
            try:
                self._tls.do_handshake()
            except ssl.SSLWantReadError:
                return self._outgoing.read()
            except ssl.SSLError as exc:
                raise LinkError(f"TLS handshake with {self.peer} failed: {exc.reason or exc}") from None
            der = self._tls.getpeercert(binary_form=True)
            if der is None or certificate_id(der) != self.peer:
                raise LinkError(f"the TLS peer is not {self.peer}")
            if self._tls.selected_alpn_protocol() != alpn_name(self.network):
                raise LinkError(f"{self.peer} is not on network {self.network} (ALPN)")
            self.established = True
            return self._outgoing.read()

    def seal(self, kind: bytes, payload: bytes) -> bytes:
        """The TLS records carrying one message."""
        with self._lock:
            try:
                self._tls.write(HEADER.pack(kind, len(payload)) + payload)
            except ssl.SSLError as exc:
                raise LinkError(f"TLS session with {self.peer} broke: {exc.reason or exc}") from None
            return self._outgoing.read()

    def receive(self, data: bytes | memoryview) -> list[tuple[bytes, bytes]]:
        """The whole messages that `data` completes, in order, as (kind, payload)."""
        with self._lock:
            self._incoming.write(data)
            while True:
                try:
                    count = self._tls.read(len(self._buffer), self._buffer)
                except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                    break
                except ssl.SSLZeroReturnError:
                    raise LinkError(f"{self.peer} closed the session") from None
                except ssl.SSLError as exc:
                    raise LinkError(f"TLS session with {self.peer} broke: {exc.reason or exc}") from None
                if not count:
                    break
                self._plain += memoryview(self._buffer)[:count]
            return self._messages()

    def _messages(self) -> list[tuple[bytes, bytes]]:
        messages, start, plain = [], 0, self._plain
        while len(plain) - start >= HEADER.size:
            kind, size = HEADER.unpack_from(plain, start)
            if size > MAX_MESSAGE:
                raise LinkError(f"{self.peer} sent a message of {size} bytes, over {MAX_MESSAGE}")
            if len(plain) - start - HEADER.size < size:
                break
            begin = start + HEADER.size
            messages.append((kind, bytes(plain[begin:begin + size])))
            start = begin + size
        del plain[:start]
        return messages
