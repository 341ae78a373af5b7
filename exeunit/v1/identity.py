"""Identities on the wire, as both sides of the contract compute them.

A node (provider or requestor) is an ECDSA P-256 key; its id is "0x" and the first 20 bytes, in
hex, of the SHA-256 of the public key's DER SubjectPublicKeyInfo (the shape of Golem's node ids,
from an encoding anyone can recompute from a key or a certificate).

A provider proves its id with its TLS certificate. A requestor proves its id on every call with
four metadata entries: its public key, the time, a fresh nonce, and a signature over those bound
to the provider id and the method called. The provider takes the caller's id from the verified
key, never from a claim; a proof cannot be replayed at another provider (another id), on another
method, later (the time window), or twice (the nonce). gRPC's Python server cannot ask for a
client certificate without also verifying it against fixed roots, so the proof rides in metadata
rather than in the TLS handshake.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from exeunit.v1 import private_files

ID_BYTES = 20
KEY_METADATA = "x-requestor-key-bin"  # DER SubjectPublicKeyInfo
TIME_METADATA = "x-requestor-time"  # milliseconds since the epoch, decimal
NONCE_METADATA = "x-requestor-nonce"  # 16 random bytes, hex
SIGNATURE_METADATA = "x-requestor-signature-bin"  # ECDSA-SHA256, DER
PROOF_DOMAIN = b"exeunit-call-proof/1"
MAX_CLOCK_SKEW_SECONDS = 60.0  # a proof is accepted this far from the provider's clock, either way
NONCE_HEX_CHARS = 32


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


def proof_message(provider_id: str, method: str, time_ms: int, nonce: str) -> bytes:
    """The bytes a requestor signs for one call."""
    return b"\0".join((PROOF_DOMAIN, provider_id.encode(), method.encode(), str(time_ms).encode(), nonce.encode()))


SIGNATURE_ALGORITHM = ec.ECDSA(hashes.SHA256())
