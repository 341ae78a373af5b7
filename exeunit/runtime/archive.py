"""`docker save` archives a requestor supplied: which images they hold, how big they unpack, and a
copy without names to load.

An archive names its images (manifest.json's RepoTags, the legacy `repositories` file, OCI
index.json's annotations), and `docker load` would create or move those tags on the host: the next
requestor who deploys that tag would run the archive's image. So the daemon loads a copy with
every name removed and refers to the image by id only.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import json
import lzma
import tarfile
from pathlib import Path
from typing import IO, Any

from exeunit import errors

CHUNK = 1 << 20
NAME_ANNOTATIONS = ("io.containerd.image.name", "org.opencontainers.image.ref.name")
_DECOMPRESSORS = (
    (b"\x1f\x8b", lambda data: gzip.GzipFile(fileobj=data)),
    (b"BZh", bz2.BZ2File),
    (b"\xfd7zXZ\x00", lzma.LZMAFile),
)
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


def _not_an_archive(exc: BaseException) -> errors.FailedPrecondition:
    return errors.FailedPrecondition(
        f"the image archive is not a `docker save` archive ({exc.__class__.__name__}); nothing was loaded"
    )


def image_ids(archive: Path) -> list[str]:
    """Ids of the images in the archive: the sha256 of each image's config, as Docker computes them."""
    try:
        with tarfile.open(archive) as tar:
            ids = []
            for entry in _manifest(tar):
                config = tar.extractfile(entry["Config"])
                if config is None:
                    raise KeyError(entry["Config"])
                digest = hashlib.sha256()
                while chunk := config.read(CHUNK):
                    digest.update(chunk)
                ids.append("sha256:" + digest.hexdigest())
            return ids
    except (tarfile.TarError, KeyError, ValueError, TypeError, OSError) as exc:
        raise _not_an_archive(exc) from exc


def verify(archive: Path, wanted: str, file_hash: str) -> str:
    """The id of the image `wanted` names (an image id in the archive, or the archive file's own
    hash when it holds one image); FailedPrecondition otherwise. Says nothing of what it found."""
    ids = image_ids(archive)
    if wanted in ids:
        return wanted
    if wanted == file_hash and len(ids) == 1:
        return ids[0]
    raise errors.FailedPrecondition(
        f"the image archive does not match the demanded hash {wanted}: it is neither the archive file's "
        "sha256 nor the id of an image in it; nothing was loaded"
    )


def check_unpacked_size(archive: Path, limit: int) -> int:
    """Bytes the archive takes once Docker has unpacked its layers; ResourceExhausted past `limit`.

    Compressed layers are decompressed (and counted) a chunk at a time, so a small archive that
    would expand without bound is refused before anything is loaded."""
    total = 0
    try:
        with tarfile.open(archive) as tar:
            for member in tar:
                if not member.isfile():
                    continue
                data = tar.extractfile(member)
                assert data is not None
                total += _unpacked_bytes(data, member.size, limit - total)
                if total > limit:
                    break
    except (tarfile.TarError, OSError, EOFError, lzma.LZMAError, ValueError) as exc:
        raise _not_an_archive(exc) from exc
    if total > limit:
        raise errors.ResourceExhausted(
            f"the image unpacks to more than {limit} bytes, the most this agreement's storage and the provider "
            "(--max-image-gib) allow; nothing was loaded"
        )
    return total


def _unpacked_bytes(data: IO[bytes], size: int, room: int) -> int:
    magic = data.read(8)
    data.seek(0)
    if magic.startswith(_ZSTD_MAGIC):
        raise errors.FailedPrecondition(
            "the image archive has zstd-compressed layers, which this provider does not load; save it with "
            "`docker save` (uncompressed or gzip layers)"
        )
    for prefix, opener in _DECOMPRESSORS:
        if magic.startswith(prefix):
            counted = 0
            with opener(data) as stream:  # type: ignore[operator]
                while counted <= room and (chunk := stream.read(CHUNK)):
                    counted += len(chunk)
            return counted
    return size


def write_nameless_copy(archive: Path, target: Path) -> None:
    """Copies the archive to target with every image name removed (see the module docstring)."""
    try:
        with tarfile.open(archive) as source, tarfile.open(target, "w", format=tarfile.PAX_FORMAT) as out:
            for member in source:
                name = member.name.lstrip("./")
                if name == "repositories":
                    continue
                if name == "manifest.json":
                    _add_json(out, member, [_without_tags(e) for e in json.load(_read(source, member))])
                elif name == "index.json":
                    _add_json(out, member, _without_name_annotations(json.load(_read(source, member))))
                elif member.isfile():
                    out.addfile(member, source.extractfile(member))
                else:
                    out.addfile(member)
    except (tarfile.TarError, KeyError, ValueError, TypeError, OSError) as exc:
        raise _not_an_archive(exc) from exc


def _manifest(tar: tarfile.TarFile) -> list[dict[str, Any]]:
    member = tar.extractfile("manifest.json")
    if member is None:
        raise KeyError("manifest.json")
    manifest = json.load(member)
    if not isinstance(manifest, list):
        raise ValueError("manifest.json is not a list")
    return manifest


def _read(tar: tarfile.TarFile, member: tarfile.TarInfo) -> IO[bytes]:
    data = tar.extractfile(member)
    if data is None:
        raise KeyError(member.name)
    return data


def _without_tags(entry: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in entry.items() if key != "RepoTags"}


def _without_name_annotations(index: dict[str, Any]) -> dict[str, Any]:
    for descriptor in index.get("manifests") or ():
        annotations = descriptor.get("annotations") or {}
        for key in NAME_ANNOTATIONS:
            annotations.pop(key, None)
    return index


def _add_json(out: tarfile.TarFile, member: tarfile.TarInfo, value: Any) -> None:
    data = json.dumps(value).encode()
    member.size = len(data)
    out.addfile(member, io.BytesIO(data))
