"""A container's writable root, kept on a directory the daemon chooses: the activity's own
filesystem, of exactly the agreement's storage, so that what an activity writes anywhere in its
root stops where its volumes stop, enforced by the filesystem's size.

Docker's overlay2 driver keeps each container's writable layer in a directory of its own (`diff`,
the upper directory; `work`, overlayfs' scratch space; `link` and `lower`, the driver's notes) and
mounts the overlay from it when the container starts. Between create and start, `place` copies
that (still empty) directory onto the activity's filesystem and binds the copy over it: the engine
then mounts the overlay as always, with its upper and work directories on the activity's
filesystem, one mount, as overlayfs requires. The image's layers stay shared, read-only, copied for
no activity. Before the engine removes the container, `release` detaches the bind, so that the
engine deletes its own directory and not the activity's (the activity's filesystem goes with its
storage).

Only overlay2 works this way (the engine's default on Linux); `unsupported` says why another
driver does not, for the operator.
"""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path
from typing import Any

from exeunit import errors
from exeunit.runtime import mounts

OVERLAY2 = "overlay2"


def unsupported(info: dict[str, Any]) -> str | None:
    """None when the engine (`docker info`) keeps writable layers where `place` can move them."""
    driver = info.get("Driver")
    if driver != OVERLAY2:
        return f"the engine's storage driver is {driver!r}, not {OVERLAY2!r} (dockerd --storage-driver {OVERLAY2})"
    return None


def layer_dir(inspected: dict[str, Any]) -> Path | None:
    """The engine's directory of a container's writable layer (from `inspect_container`)."""
    graph = inspected.get("GraphDriver") or {}
    upper = (graph.get("Data") or {}).get("UpperDir")
    if graph.get("Name") != OVERLAY2 or not upper:
        return None
    return Path(upper).parent


def place(inspected: dict[str, Any], host_dir: Path) -> None:
    """Moves a created (not yet started) container's writable layer to `host_dir`, which must not
    exist yet. Blocks."""
    layer = layer_dir(inspected)
    if layer is None:
        driver = (inspected.get("GraphDriver") or {}).get("Name")
        raise errors.RuntimeFailure(f"the container's writable layer cannot be placed on the activity's storage: "
                                    f"{unsupported({'Driver': driver})}")
    _copy_tree(layer, host_dir)
    mounts.bind(host_dir, layer)


def release(inspected: dict[str, Any]) -> None:
    """Detaches a placed layer from the engine's directory (nothing to do where none was placed)."""
    layer = layer_dir(inspected)
    if layer is not None and os.path.ismount(layer):
        mounts.detach(layer)


def _copy_tree(source: Path, target: Path) -> None:
    """Copies a small tree with its owners and modes (the layer's directories belong to the
    container's root user, the driver's notes to the engine)."""
    info = os.lstat(source)
    os.mkdir(target)
    _same_owner_and_mode(target, info)
    for entry in os.scandir(source):
        into = target / entry.name
        if entry.is_symlink():
            os.symlink(os.readlink(entry.path), into)
            os.lchown(into, *_owner(entry.stat(follow_symlinks=False)))
        elif entry.is_dir(follow_symlinks=False):
            _copy_tree(Path(entry.path), into)
        elif entry.is_file(follow_symlinks=False):
            shutil.copyfile(entry.path, into, follow_symlinks=False)
            _same_owner_and_mode(into, entry.stat(follow_symlinks=False))
        else:
            raise errors.RuntimeFailure(f"unexpected file {entry.path} in a container's writable layer")


def _owner(info: os.stat_result) -> tuple[int, int]:
    return info.st_uid, info.st_gid


def _same_owner_and_mode(path: Path, info: os.stat_result) -> None:
    os.chown(path, *_owner(info))
    os.chmod(path, stat.S_IMODE(info.st_mode))
