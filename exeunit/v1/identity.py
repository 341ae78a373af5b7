"""Identities on the wire, as both sides of the contract compute them.

A node (provider or requestor) is an ECDSA P-256 key; its id is "0x" and the first 20 bytes, in
hex, of the SHA-256 of the public key's DER SubjectPublicKeyInfo (the shape of Golem's node ids,
from an encoding anyone can recompute from a key or a certificate).

A provider proves its id with its TLS certificate. A requestor proves its id on every call with
metadata entries: its public key, the time, a fresh nonce, the daemon's boot epoch, the SHA-256 of
the request, and a signature over those bound to the provider id and the method called. The
provider takes the caller's id from the verified key, never from a claim; a proof cannot be
replayed at another provider (another id), on another method, later (the time window), twice
(the nonce), with another request (the hash: of the serialized request, or of a stream's first
message), or at the daemon's next start (the boot epoch, made afresh at each start and stated in
its offer, so the nonces it remembers need not outlive it). gRPC's Python server cannot ask for a
client certificate without also verifying it against fixed roots, so the proof rides in metadata
rather than in the TLS handshake.
"""

from __future__ import annotations

import hashlib
import secrets
from pathlib import Path

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from exeunit.v1 import private_files

ID_BYTES = 20
KEY_METADATA = "x-requestor-key-bin"  # DER SubjectPublicKeyInfo
TIME_METADATA = "x-requestor-time"  # milliseconds since the epoch, decimal
NONCE_METADATA = "x-requestor-nonce"  # 16 random bytes, hex
SIGNATURE_METADATA = "x-requestor-signature-bin"  # ECDSA-SHA256, DER
EPOCH_METADATA = "x-requestor-boot-epoch"  # the daemon's Offer.boot_epoch the proof was made for
BODY_METADATA = "x-requestor-body-sha256"  # SHA-256 of the request's bytes (body_digest), hex
# A refusal of a proof made for an earlier start of the daemon carries the daemon's boot epoch in
# this trailing metadata entry: the requestor asks for the offer again, and signs for the new one.
PROVIDER_EPOCH_METADATA = "x-provider-boot-epoch"
PROOF_DOMAIN = b"exeunit-call-proof/2"
MAX_CLOCK_SKEW_SECONDS = 60.0  # a proof is accepted this far from the provider's clock, either way
NONCE_HEX_CHARS = 32
EPOCH_HEX_CHARS = 32
DIGEST_HEX_CHARS = 64
# Streams whose first message is not known when the call opens, nor a head the call acts on:
# RelayFrames carries sealed frames (each authenticated by its network's secret, not by the
# proof) and opens before the requestor has any to send. Their proofs sign body_digest(b"").
UNBOUND_STREAMS = frozenset({"/exeunit.v1.Network/RelayFrames"})


def load_or_create_key(path: Path) -> ec.EllipticCurvePrivateKey:
    """The P-256 key in `path` (PEM, PKCS#8), made there when there is none (exeunit.v1.private_files:
    never through a link planted there; a key another process made meanwhile is the one used),
    readable by this user only (an existing file is made so); ValueError saying what to do when
    the file holds something else."""
    try:
        private_files.tighten(path)
    except PermissionError as exc:
        raise ValueError(str(exc)) from None
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        key = ec.generate_private_key(ec.SECP256R1())
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
        if private_files.create(path, pem):
            return key
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise ValueError(f"{path} is a link to nothing; remove it and a new key is made") from None
    try:
        loaded = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{path} is not a usable private key ({exc}); move it aside") from None
    if not isinstance(loaded, ec.EllipticCurvePrivateKey) or not isinstance(loaded.curve, ec.SECP256R1):
        raise ValueError(f"{path} is not a P-256 key; move it aside and a new one is made")
    return loaded


def node_id_of(public_key: ec.EllipticCurvePublicKey) -> str:
    """The id of a provider's or a requestor's public key (see the module's docstring)."""
    return node_id_of_spki(public_key.public_bytes(serialization.Encoding.DER,
                                                   serialization.PublicFormat.SubjectPublicKeyInfo))


def node_id_of_spki(spki_der: bytes) -> str:
    return "0x" + hashlib.sha256(spki_der).digest()[:ID_BYTES].hex()


def new_boot_epoch() -> str:
    """A daemon's boot epoch: random, so that no start of a daemon takes a proof made for another."""
    return secrets.token_hex(EPOCH_HEX_CHARS // 2)


def body_digest(head: bytes) -> str:
    """What a proof signs of the request: the SHA-256 of its serialized bytes (of a client stream's
    first message; of no bytes for a stream that sends none, or one of UNBOUND_STREAMS)."""
    return hashlib.sha256(head).hexdigest()


def proof_message(provider_id: str, boot_epoch: str, method: str, time_ms: int, nonce: str, digest: str) -> bytes:
    """The bytes a requestor signs for one call (every field but the method is of fixed form, and
    the method is one the daemon serves: none holds the separator)."""
    fields = (PROOF_DOMAIN, provider_id.encode(), boot_epoch.encode(), method.encode(), str(time_ms).encode(),
              nonce.encode(), digest.encode())
    return b"\0".join(fields)


SIGNATURE_ALGORITHM = ec.ECDSA(hashes.SHA256())
