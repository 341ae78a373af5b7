"""A provider's home: the state directory that holds its identity and its lock, readable by the
daemon's user only (made so at every start, whoever made it: it holds the provider's key and the
requestors' records).

One daemon per home at a time: the lock (`flock` on `DIR/lock`, which holds the owner's pid) is
taken before anything else is touched, so a second daemon started on the same directory by
mistake refuses to start and names the first, instead of treating the first one's containers as
leftovers. The identity (`DIR/identity.json`) is made once: the provider id requestors see, derived
from the provider's key (`DIR/provider-key.pem`, exeunit.persistence.keys), and a home id that
labels every container this home starts. A daemon removes only containers with its own home id,
which it can prove are ownerless because it holds the lock. A home made before keys keeps the id it
had (said in the log): its requestors' agreements name it.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

from exeunit import errors
from exeunit.persistence import keys
from exeunit.v1 import private_files

log = logging.getLogger(__name__)

LOCK_FILE = "lock"
IDENTITY_FILE = "identity.json"


@dataclass(frozen=True)
class Identity:
    provider_id: str
    home_id: str
    key_file: Path  # the provider's private key (see exeunit.persistence.keys)


class ProviderHome:
    """An opened, locked state directory. `close` (or the process ending) lets it go."""

    def __init__(self, path: Path, identity: Identity, lock_fd: int) -> None:
        self.path = path
        self.identity = identity
        self._lock_fd: int | None = lock_fd

    @classmethod
    def open(cls, path: Path, provider_id: str = "") -> ProviderHome:
        """Locks `path` (made if missing) and reads its identity, making one on first use.
        `provider_id`, when given, must match the one the home already has."""
        try:
            changed = private_files.private_directory(path)
            fd = os.open(path / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except PermissionError as exc:
            raise errors.FailedPrecondition(f"cannot use {path} as the state directory: {exc.strerror or exc}; "
                                            "or give this daemon a --state-dir of its own") from None
        except OSError as exc:
            raise errors.FailedPrecondition(f"cannot use {path} as the state directory: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise errors.FailedPrecondition(
                f"another exeunit daemon (pid {holder}) is serving from the state directory {path}; "
                "stop it first, or give this one its own --state-dir"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        if changed is not None:
            log.warning("event=home_made_private path=%s mode_was=%o", path, changed)
        try:
            _tighten_files(path)
            identity = _identity(path, provider_id)
        except BaseException:
            os.close(fd)
            raise
        return cls(path, identity, fd)

    def close(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None


def _tighten_files(path: Path) -> None:
    """The home's files readable by this user only, whoever made them (by hand, an older daemon, a
    loose umask); FailedPrecondition naming the fix when that cannot be done."""
    for name in (LOCK_FILE, IDENTITY_FILE, keys.KEY_FILE, keys.CERTIFICATE_FILE):
        try:
            changed = private_files.tighten(path / name)
        except PermissionError as exc:
            raise errors.FailedPrecondition(str(exc)) from None
        if changed is not None:
            log.warning("event=home_file_made_private path=%s mode_was=%o", path / name, changed)


def read_identity(path: Path) -> Identity | None:
    """A home's identity without taking its lock (for `exeunit id`); None where none was made."""
    file, key_file = path / IDENTITY_FILE, path / keys.KEY_FILE
    if not file.exists() or not key_file.exists():
        return None
    try:
        stored = json.loads(file.read_text())
        return Identity(str(stored["provider_id"]), str(stored["home_id"]), key_file)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise errors.FailedPrecondition(f"{file} is unreadable ({exc}); move the state directory aside") from None


def _identity(path: Path, provider_id: str) -> Identity:
    file, key_file = path / IDENTITY_FILE, path / keys.KEY_FILE
    derived = keys.provider_id_of(keys.load_or_create(key_file).public_key())
    try:
        stored = json.loads(file.read_text())
        identity = Identity(str(stored["provider_id"]), str(stored["home_id"]), key_file)
    except FileNotFoundError:
        if provider_id and provider_id != derived:
            raise errors.FailedPrecondition(
                f"--provider-id {provider_id} cannot be chosen: a provider's id is derived from its key, and this "
                f"home's key ({key_file}) gives {derived}; drop --provider-id"
            ) from None
        identity = Identity(derived, uuid.uuid4().hex, key_file)
        record = json.dumps({"provider_id": identity.provider_id, "home_id": identity.home_id}) + "\n"
        private_files.replace(file, record.encode())  # whole or absent, whatever happens meanwhile
        log.info("event=home_created path=%s provider=%s", path, identity.provider_id)
        return identity
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise errors.FailedPrecondition(f"{file} is unreadable ({exc}); move the state directory aside") from None
    if identity.provider_id != derived:
        log.warning("event=provider_id_not_from_key provider=%s key_id=%s hint=%s", identity.provider_id, derived,
                    "a home made before provider keys: requestors cannot verify this id; a new home gets one that they can")
    if provider_id and provider_id != identity.provider_id:
        raise errors.FailedPrecondition(
            f"the state directory {path} belongs to provider {identity.provider_id}, not {provider_id}; "
            "drop --provider-id or give this one its own --state-dir"
        )
    return identity
