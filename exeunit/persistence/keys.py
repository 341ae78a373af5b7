"""A provider's key, and the provider id derived from it.

The id is what requestors know a provider by; deriving it from a key the provider holds (as
Golem derives node ids from node keys) lets a requestor check, on every connection, that it talks
to the provider it chose and not to whoever claims that id. The key is ECDSA over P-256, the curve
every TLS stack (gRPC's included) accepts for certificates. The id is "0x" and the first 20 bytes,
in hex, of the SHA-256 of the public key's DER SubjectPublicKeyInfo: the same shape as Golem's
node ids, from a standard encoding anyone can recompute from a certificate.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from exeunit import errors

KEY_FILE = "provider-key.pem"
ID_BYTES = 20


def load_or_create(path: Path) -> ec.EllipticCurvePrivateKey:
    """The key in `path`, made (readable by this user only) when there is none."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        key = ec.generate_private_key(ec.SECP256R1())
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
        partial = path.with_suffix(".partial")
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(pem)
        os.replace(partial, path)  # whole or absent
        return key
    try:
        loaded = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise errors.FailedPrecondition(f"{path} is not a usable private key ({exc}); move it aside") from None
    if not isinstance(loaded, ec.EllipticCurvePrivateKey) or not isinstance(loaded.curve, ec.SECP256R1):
        raise errors.FailedPrecondition(f"{path} is not a P-256 key; move it aside and a new one is made")
    return loaded


def provider_id_of(public_key: ec.EllipticCurvePublicKey) -> str:
    """The provider id of a public key (see the module's docstring)."""
    spki = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return "0x" + hashlib.sha256(spki).digest()[:ID_BYTES].hex()
