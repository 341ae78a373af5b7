"""The requestor's identity: a key it holds, from which providers derive its requestor id.

Made on first use in the user's config directory (`$XDG_CONFIG_HOME/golem/requestor-key.pem`,
else `~/.config/golem/...`; the directory 0700, the key 0600, whoever made them), or where
`Golem(identity=PATH)` or `GOLEM_IDENTITY` says. Keeping the file keeps the identity: the same
agreements, activities and networks can be taken up by a later process (suspend and resume), and
by nobody without the file.
"""

from __future__ import annotations

import logging
import os
import secrets
import time
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from exeunit.v1 import identity as wire
from exeunit.v1 import private_files
from requestor.errors import RequestorError

log = logging.getLogger(__name__)

IDENTITY_ENV = "GOLEM_IDENTITY"
KEY_FILE = "requestor-key.pem"


def config_dir() -> Path:
    """Where this library keeps the user's files (the identity, the known providers)."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "golem"


def default_identity_path() -> Path:
    return Path(os.environ.get(IDENTITY_ENV) or config_dir() / KEY_FILE)


def make_directory_for(path: Path) -> None:
    """Makes the directory `path` goes in (0700) when missing; the config directory, which holds
    the identity and the providers trusted, is made 0700 whoever made it (OSError when it cannot)."""
    if path.parent != config_dir():
        path.parent.mkdir(mode=private_files.DIRECTORY_MODE, parents=True, exist_ok=True)
        return
    changed = private_files.private_directory(path.parent)
    if changed is not None:
        log.warning("event=config_dir_made_private path=%s mode_was=%o", path.parent, changed)


class RequestorIdentity:
    """A requestor key and the proofs it signs, one per call (see exeunit.v1.identity)."""

    def __init__(self, key: ec.EllipticCurvePrivateKey, path: Path | None = None) -> None:
        self._key = key
        self.path = path
        self._spki = key.public_key().public_bytes(serialization.Encoding.DER,
                                                   serialization.PublicFormat.SubjectPublicKeyInfo)
        self.requestor_id = wire.node_id_of_spki(self._spki)

    @classmethod
    def load(cls, path: str | os.PathLike[str] | None = None) -> RequestorIdentity:
        """The identity in `path` (default: GOLEM_IDENTITY, else the config directory's), made
        there when there is none yet (and said so, with where)."""
        where = Path(path) if path is not None else default_identity_path()
        existed = where.exists()
        try:
            make_directory_for(where)
            key = wire.load_or_create_key(where)
        except (OSError, ValueError) as exc:
            raise RequestorError(f"cannot use the requestor identity {where}: {exc}") from None
        made = cls(key, where)
        if not existed:
            log.info("event=identity_created requestor=%s path=%s", made.requestor_id, where)
        return made

    @classmethod
    def ephemeral(cls) -> RequestorIdentity:
        """A key kept nowhere: a requestor nobody, not even a later run of itself, can be again."""
        return cls(ec.generate_private_key(ec.SECP256R1()))

    def proof(self, provider_id: str, boot_epoch: str, method: str, head: bytes) -> tuple[tuple[str, str | bytes], ...]:
        """The metadata proving this identity for one call of `method` to `provider_id` in its
        daemon's start `boot_epoch` (its offer's), carrying the request whose serialized bytes are
        `head` (a client stream's first message; b"" for one of wire.UNBOUND_STREAMS)."""
        stamp = int(time.time() * 1000)
        nonce = secrets.token_hex(wire.NONCE_HEX_CHARS // 2)
        digest = wire.body_digest(head)
        message = wire.proof_message(provider_id, boot_epoch, method, stamp, nonce, digest)
        signature = self._key.sign(message, wire.SIGNATURE_ALGORITHM)
        return ((wire.KEY_METADATA, self._spki), (wire.TIME_METADATA, str(stamp)), (wire.NONCE_METADATA, nonce),
                (wire.EPOCH_METADATA, boot_epoch), (wire.BODY_METADATA, digest), (wire.SIGNATURE_METADATA, signature))

    def sign(self, message: bytes) -> bytes:
        """This key's ECDSA P-256 signature (SHA-256, DER) over `message`: a payment document's
        acceptance (exeunit.v1.payments.acceptance_message)."""
        return self._key.sign(message, wire.SIGNATURE_ALGORITHM)

    def __repr__(self) -> str:
        return f"RequestorIdentity({self.requestor_id}, path={self.path})"
