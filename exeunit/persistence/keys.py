"""A provider's key, and the provider id derived from it.

The id is what requestors know a provider by; deriving it from a key the provider holds (as
Golem derives node ids from node keys) lets a requestor check, on every connection, that it talks
to the provider it chose and not to whoever claims that id. The key is ECDSA over P-256, the curve
every TLS stack (gRPC's included) accepts for certificates. The id is "0x" and the first 20 bytes,
in hex, of the SHA-256 of the public key's DER SubjectPublicKeyInfo: the same shape as Golem's
node ids, from a standard encoding anyone can recompute from a certificate.
"""

from __future__ import annotations

import datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from exeunit import errors
from exeunit.v1 import private_files
from exeunit.v1.identity import load_or_create_key, node_id_of

KEY_FILE = "provider-key.pem"
CERTIFICATE_FILE = "provider-cert.pem"
CERTIFICATE_YEARS = 20


def load_or_create(path: Path) -> ec.EllipticCurvePrivateKey:
    """The key in `path`, made (readable by this user only) when there is none."""
    try:
        return load_or_create_key(path)
    except ValueError as exc:
        raise errors.FailedPrecondition(str(exc)) from None


def provider_id_of(public_key: ec.EllipticCurvePublicKey) -> str:
    """The provider id of a public key (see the module's docstring)."""
    return node_id_of(public_key)


def tls_credentials(key: ec.EllipticCurvePrivateKey, certificate_file: Path) -> tuple[bytes, bytes]:
    """(private key PEM, certificate PEM) for serving TLS as the provider this key is.

    The certificate is self-signed and names the provider id as its subject and DNS name.
    Requestors trust it not for a CA's signature but for its key, whose id they pin, and keep
    using the certificate they fetched while they stay connected: so it is made once, kept in
    `certificate_file` beside the key, and presented again after every restart (one made afresh
    would not verify against the one a connected requestor holds). A file that is missing,
    unreadable or of another key is replaced; either way it is readable by this user only.
    """
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    try:
        private_files.tighten(certificate_file)
        kept = certificate_file.read_bytes()
        if x509.load_pem_x509_certificate(kept).public_key() == key.public_key():
            return key_pem, kept
    except (OSError, ValueError):
        pass
    provider_id = node_id_of(key.public_key())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, provider_id)])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=365 * CERTIFICATE_YEARS))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(provider_id)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    pem = certificate.public_bytes(serialization.Encoding.PEM)
    private_files.replace(certificate_file, pem)
    return key_pem, pem
