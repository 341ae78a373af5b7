"""Where an activity's writable volumes live on the host, and what bounds them.

Each activity gets its own filesystem of exactly its agreement's storage: a sparse file under the
provider's storage directory, formatted ext4 (without a journal: a filesystem outlives a daemon
crash mounted, and its activity does not outlive a host crash) and loop-mounted (`mount -o loop`,
which frees the loop device again at unmount). Every VOLUME the image declares is a directory in it, bind-mounted
into the container, and the container's writable root is kept in it too (ROOT_LAYER, placed there
by the runtime), so writes anywhere inside stop at the agreement's size whatever the container
does. The daemon moves files through the volumes' directories (see `exeunit.runtime.files`)
without the engine. Being its own filesystem also means no hard link from the container can reach
a file outside it.

Where the host cannot loop-mount (no root, no loop devices), `DirectoryStorage` gives plain
directories instead: same layout, no size limit. The daemon uses it only when the operator says so.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from exeunit import errors

log = logging.getLogger(__name__)

# noinit_itable: the kernel does not zero the inode tables in the background (they are marked
# uninitialised and never trusted), which would write to the sparse file for nothing.
MOUNT_OPTIONS = "loop,nosuid,nodev,noinit_itable"
# One inode per 16 KiB, as on a root disk (a writable root holds many small files: an unpacked
# package, a source tree); ext4 then keeps 2-6% of the filesystem for itself (no journal; 6% at
# 64 MiB, 3.4% at 1 GiB, 2.2% at 8 GiB). The file is made this much larger, and what is left over
# beyond the agreement's size is held by RESERVE_FILE.
BYTES_PER_INODE = 16384
FILESYSTEM_SLACK = 1.05
RESERVE_FILE = ".exeunit-reserved"
ROOT_LAYER = ".exeunit-root"  # the container's writable root (made by the runtime, see exeunit.runtime.docker.layers)
OWN_NAMES = (RESERVE_FILE, ROOT_LAYER)  # no volume may take these


@dataclass(frozen=True)
class VolumeDirs:
    """An activity's volumes: container path -> host directory, all on one filesystem."""

    root: Path
    dirs: dict[str, Path]
    enforced: bool
    root_layer: Path | None = None  # where the container's writable root goes; None: the engine's place

    def host_dir(self, volume: str) -> Path:
        return self.dirs[volume]

    def free_bytes(self) -> int:
        stats = os.statvfs(self.root)
        return stats.f_bavail * stats.f_frsize

    def used_bytes(self) -> int:
        """Bytes in use on the volumes' filesystem (for plain directories: their filesystem's)."""
        stats = os.statvfs(self.root)
        return (stats.f_blocks - stats.f_bfree) * stats.f_frsize


class LoopStorage:
    """Volumes in a loop-mounted ext4 file of the agreement's size (the enforced kind)."""

    enforced = True

    def __init__(self, base: Path, owner_uid: int = 0, owner_gid: int = 0) -> None:
        self.base = base
        self._uid, self._gid = owner_uid, owner_gid

    @property
    def owner(self) -> tuple[int, int]:
        """Host uid and gid of the container's root user: the owner of what transfers write."""
        return self._uid, self._gid

    @staticmethod
    def available() -> str | None:
        """None when this host can loop-mount, else why not (for the operator's error message)."""
        if os.geteuid() != 0:
            return "loop-mounting needs root"
        for tool in ("mkfs.ext4", "mount", "umount"):
            if shutil.which(tool) is None:
                return f"{tool} is not installed (Debian: e2fsprogs, mount)"
        if not os.path.exists("/dev/loop-control"):
            return "the kernel offers no loop devices (/dev/loop-control is missing)"
        return None

    def create(self, activity_id: str, size_bytes: int, volumes: tuple[str, ...]) -> VolumeDirs:
        """Makes and mounts the activity's filesystem with one directory per volume. Blocks."""
        home = self.base / activity_id
        image, mountpoint = home / "disk.ext4", home / "fs"
        mountpoint.mkdir(parents=True, exist_ok=True)
        try:
            with open(image, "wb") as disk:  # sparse: room for ext4's own metadata on top
                disk.truncate(int(size_bytes * FILESYSTEM_SLACK) + (8 << 20))
            _run("mkfs.ext4", "-q", "-F", "-m", "0", "-i", str(BYTES_PER_INODE), "-O", "^has_journal",
                 "-E", f"root_owner={self._uid}:{self._gid}", str(image))
            _run("mount", "-o", MOUNT_OPTIONS, str(image), str(mountpoint))
            dirs = _make_volume_dirs(mountpoint, volumes, self._uid, self._gid)
            _reserve_beyond(mountpoint, size_bytes)
        except (errors.ExeUnitError, OSError):
            self.destroy(activity_id)
            raise
        return VolumeDirs(mountpoint, dirs, enforced=True, root_layer=mountpoint / ROOT_LAYER)

    def channel_dir(self, activity_id: str) -> Path:
        """A directory beside the activity's filesystem for its agent's socket (removed with it)."""
        channel = self.base / activity_id / "channel"
        channel.mkdir(parents=True, exist_ok=True)
        channel.chmod(0o755)
        return channel

    def destroy(self, activity_id: str) -> None:
        """Unmounts and deletes the activity's filesystem. Already gone is success. Blocks."""
        home = self.base / activity_id
        mountpoint = home / "fs"
        if os.path.ismount(mountpoint):
            try:
                _run("umount", str(mountpoint))
            except errors.RuntimeFailure:
                _run("umount", "--lazy", str(mountpoint))  # busy: detach now, freed when released
        shutil.rmtree(home, ignore_errors=True)

    def close(self) -> None:
        """Removes the storage directory once no activity has anything left in it."""
        try:
            self.base.rmdir()
        except OSError:
            pass  # not empty (an activity kept on purpose, or a failed unmount), or already gone

    def leftovers(self) -> list[str]:
        """Activity ids that have a filesystem here (a daemon that died left them)."""
        return sorted(p.name for p in self.base.iterdir()) if self.base.is_dir() else []


class DirectoryStorage(LoopStorage):
    """Plain directories under the storage directory: the same layout, no size limit."""

    enforced = False

    def create(self, activity_id: str, size_bytes: int, volumes: tuple[str, ...]) -> VolumeDirs:
        root = self.base / activity_id / "fs"
        root.mkdir(parents=True, exist_ok=True)
        return VolumeDirs(root, _make_volume_dirs(root, volumes, self._uid, self._gid), enforced=False)


def _reserve_beyond(mountpoint: Path, size_bytes: int) -> None:
    """Takes what the filesystem has beyond `size_bytes` into a file at its root, which no container
    sees (only the volume directories are mounted), so exactly the agreement's storage is free. A
    large reserve costs a few blocks of its own metadata: it is trimmed until nothing is missing."""

    def free() -> int:
        stats = os.statvfs(mountpoint)
        return stats.f_bavail * stats.f_frsize

    excess = free() - size_bytes
    if excess > 0:
        fd = os.open(mountpoint / RESERVE_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.posix_fallocate(fd, 0, excess)
            for _ in range(4):
                missing = size_bytes - free()
                if missing <= 0 or excess <= 0:
                    break
                excess = max(excess - missing, 0)
                os.ftruncate(fd, excess)
        finally:
            os.close(fd)
    missing = size_bytes - free()
    if missing > 0:
        log.warning("event=storage_short mountpoint=%s missing_bytes=%d", mountpoint, missing)


def _make_volume_dirs(root: Path, volumes: tuple[str, ...], uid: int, gid: int) -> dict[str, Path]:
    """One directory per volume under root, owned (with the directories above it) by the
    container's root user."""
    os.chown(root, uid, gid)
    dirs = {}
    for volume in volumes:
        if volume.strip("/").split("/")[0] in OWN_NAMES:
            raise errors.InvalidArgument(f"the image's volume {volume} takes a name the provider keeps for itself")
        host = root / volume.strip("/")
        host.mkdir(parents=True, exist_ok=True)
        path = host
        while path != root:
            os.chown(path, uid, gid)
            path = path.parent
        dirs[volume] = host
    return dirs


def _run(*argv: str) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise errors.RuntimeFailure(f"{argv[0]} failed: {(done.stderr or done.stdout).strip()}")
