"""Finds the image a demand names: by Docker image id, by tag, or from a `docker save` archive url.

An archive is verified before anything is loaded: its hash must be either the sha256 of the
archive file or the id of the image inside it (the sha256 of the image's config, read from the
archive's manifest). On a mismatch nothing is loaded and the downloaded file is deleted.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import tarfile
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from exeunit import errors
from exeunit.docker_runtime import DockerRuntime, ImageInfo
from exeunit.market import ImageRef
from exeunit.threads import in_data_thread

log = logging.getLogger(__name__)

CHUNK = 1 << 20


class ImageResolver:
    def __init__(self, runtime: DockerRuntime, download_timeout: float = 120.0) -> None:
        self._runtime = runtime
        self._download_timeout = download_timeout

    async def find_local(self, ref: ImageRef) -> ImageInfo | None:
        """The image if the engine has it (by tag, else by hash), checked against the hash."""
        key = ref.tag or ref.hash
        if not key:
            return None
        try:
            info = await asyncio.to_thread(self._runtime.image, key)
        except errors.NotFound:
            return None
        if ref.tag and ref.hash and info.id != ref.hash:
            if ref.url:
                return None  # the tag points elsewhere; the url's archive is the truth
            raise errors.FailedPrecondition(
                f"image tag {ref.tag!r} is {info.id} on this provider, but the demand asks for {ref.hash}"
            )
        return info

    async def resolve(self, ref: ImageRef) -> ImageInfo:
        """The image to run, fetching and loading the archive when it is given by url."""
        info = await self.find_local(ref)
        if info:
            return info
        if not ref.url:
            raise errors.NotFound(f"image {ref.describe()!r} is not on this provider")
        return await in_data_thread(self._fetch_and_load, ref)

    def _fetch_and_load(self, ref: ImageRef) -> ImageInfo:
        with tempfile.TemporaryDirectory(prefix="exeunit-image-") as scratch:
            archive, file_hash = self._fetch(ref.url, Path(scratch))
            image_id = _verify_archive(archive, ref.hash, file_hash)
            log.info("event=image_loading url=%s image=%s", ref.url, image_id)
            self._runtime.load_image(str(archive))
        return self._runtime.image(image_id)

    def _fetch(self, url: str, scratch: Path) -> tuple[Path, str]:
        """Copies the archive into scratch, hashing it on the way; returns path and sha256."""
        target = scratch / "image.tar"
        digest = hashlib.sha256()
        try:
            if url.startswith("file://"):
                source = open(urllib.request.url2pathname(url[len("file://") :]), "rb")
            else:
                source = urllib.request.urlopen(url, timeout=self._download_timeout)  # noqa: S310
        except (OSError, urllib.error.URLError) as exc:
            raise errors.FailedPrecondition(f"cannot fetch image archive {url}: {exc}") from exc
        with source, open(target, "wb") as out:
            while chunk := source.read(CHUNK):
                digest.update(chunk)
                out.write(chunk)
        return target, "sha256:" + digest.hexdigest()


def _verify_archive(archive: Path, wanted: str, file_hash: str) -> str:
    """Returns the id of the image in the archive that `wanted` names, or raises."""
    ids = _image_ids_in_archive(archive)
    if wanted in ids:
        return wanted
    if wanted == file_hash and len(ids) == 1:
        return ids[0]
    raise errors.FailedPrecondition(
        f"image archive does not match the demanded hash {wanted}: the file's sha256 is {file_hash} "
        f"and it holds image(s) {', '.join(ids) or 'none'}; nothing was loaded"
    )


def _image_ids_in_archive(archive: Path) -> list[str]:
    try:
        with tarfile.open(archive) as tar:
            manifest_member = tar.extractfile("manifest.json")
            if manifest_member is None:
                raise KeyError("manifest.json")
            manifest = json.load(manifest_member)
            ids = []
            for entry in manifest:
                config = tar.extractfile(entry["Config"])
                if config is None:
                    raise KeyError(entry["Config"])
                digest = hashlib.sha256()
                while chunk := config.read(CHUNK):
                    digest.update(chunk)
                ids.append("sha256:" + digest.hexdigest())
            return ids
    except (tarfile.TarError, KeyError, ValueError, TypeError, OSError) as exc:
        raise errors.FailedPrecondition(
            f"image archive is not a `docker save` archive ({exc.__class__.__name__}: {exc}); nothing was loaded"
        ) from exc

