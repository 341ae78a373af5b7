"""Files only their owner may read: keys, certificates, records and lists of trusted peers at rest,
on both sides (the requestor imports nothing of the daemon's but this package, so it lives here).

New files are written to a temporary file made with O_CREAT | O_EXCL | O_NOFOLLOW (mode 0600), so
that a link planted where the file goes is neither followed nor written through, and then linked
or renamed into place whole. Files and directories made by someone else (an older version, another tool, a
careless umask) are tightened through a descriptor opened without following links: a link is left
alone, never the file it points at.
"""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

FILE_MODE = 0o600
DIRECTORY_MODE = 0o700
_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def _written_aside(path: Path, data: bytes) -> Path:
    """A new file beside `path` holding `data`, on disk."""
    aside = path.with_name(f".{path.name}.{secrets.token_hex(8)}.new")
    fd = os.open(aside, _NEW, FILE_MODE)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
    except BaseException:
        aside.unlink(missing_ok=True)
        raise
    return aside


def create(path: Path, data: bytes) -> bool:
    """Makes `path` holding `data`, readable by its owner only; False, leaving it as it is, when
    something is there already (another process made it meanwhile: theirs wins, so that both use
    the same file; or a link: not written through). Linked into place rather than renamed, as a
    rename would replace whatever is there."""
    aside = _written_aside(path, data)
    try:
        os.link(aside, path)
    except FileExistsError:
        return False
    finally:
        aside.unlink()
    return True


def replace(path: Path, data: bytes) -> None:
    """Writes `path` whole (or leaves the old one whole), readable by its owner only; a link at
    `path` is replaced, not written through."""
    aside = _written_aside(path, data)
    try:
        os.replace(aside, path)
    except BaseException:
        aside.unlink(missing_ok=True)
        raise


def tighten(path: Path, mode: int = FILE_MODE) -> int | None:
    """Takes group's and others' permissions off the file `path` (down to `mode`); returns the
    mode it had when it changed it, None when there was nothing to do (no such file, a link,
    already private). PermissionError when this user may not change it."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK  # non-blocking: a fifo planted there
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        return None
    except OSError:
        if os.path.islink(path):  # ELOOP: a link, whatever it points at is not ours to change
            return None
        raise
    try:
        before = stat.S_IMODE(os.fstat(fd).st_mode)
        if not before & 0o077:
            return None
        try:
            os.fchmod(fd, before & mode)
        except PermissionError:
            raise PermissionError(f"{path} is open to other users (mode {before:o}) and this user may not change "
                                  f"that: `chmod {before & mode:o} {path}` as its owner") from None
    finally:
        os.close(fd)
    return before


def private_directory(path: Path) -> int | None:
    """Makes directory `path` (and missing parents) if needed, and makes it 0700 whoever made it;
    returns the mode it had when it changed it. PermissionError when this user may not."""
    path.mkdir(mode=DIRECTORY_MODE, parents=True, exist_ok=True)
    before = stat.S_IMODE(os.stat(path).st_mode)  # following a link: the directory was named so
    if not before & 0o077:
        return None
    try:
        os.chmod(path, before & DIRECTORY_MODE)
    except PermissionError:
        raise PermissionError(f"{path} is open to other users (mode {before:o}) and this user may not change "
                              f"that: `chmod 700 {path}` as its owner") from None
    return before
