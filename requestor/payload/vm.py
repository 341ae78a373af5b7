"""VM payloads, as yapapi's `vm.repo`, for providers whose VMs are Docker containers.

Images are named as Golem names them: by hash (here the Docker image id, `sha256:...`), by tag
(an image the provider already has, e.g. `exeunit-base:latest`), or by url of a `docker save`
archive together with its hash, which the provider checks before use.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from exeunit.v1.conventions import DOCKER_VM_RUNTIME, GIB, TEST_COUNTERS_RUNTIME, VPN_CAPABILITY
from requestor.errors import PackageException
from requestor.payload import Payload

VM_CAPS_VPN = VPN_CAPABILITY
VM_CAPS_MANIFEST_SUPPORT = "manifest-support"
RUNTIME_VM = DOCKER_VM_RUNTIME
__all__ = ["GIB", "RUNTIME_VM", "TEST_COUNTERS_RUNTIME", "VM_CAPS_MANIFEST_SUPPORT", "VM_CAPS_VPN", "VmPackage", "repo"]
_HEX = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class VmPackage(Payload):
    image_hash: str = ""
    image_tag: str = ""
    image_url: str = ""
    min_mem_gib: float = 0.5
    min_storage_gib: float = 2.0
    min_cpu_threads: int = 1
    capabilities: tuple[str, ...] = field(default_factory=tuple)
    runtime: str = RUNTIME_VM

    def __str__(self) -> str:
        image = self.image_tag or self.image_hash or self.image_url or f"({self.runtime} runtime)"
        return f"vm(image={image}, mem>={self.min_mem_gib}GiB, storage>={self.min_storage_gib}GiB, threads>={self.min_cpu_threads})"


async def repo(
    *,
    image_hash: str | None = None,
    image_tag: str | None = None,
    image_url: str | None = None,
    min_mem_gib: float = 0.5,
    min_storage_gib: float = 2.0,
    min_cpu_threads: int = 1,
    capabilities: list[str] | None = None,
) -> VmPackage:
    """Builds the payload for a VM image.

    Example::

        payload = await vm.repo(image_tag="exeunit-base:latest", min_mem_gib=0.5)

    A hash may be given bare (64 hex digits) or as `sha256:<hex>`. An `image_url` needs the
    `image_hash` the provider verifies the archive against; yapapi's registry-only arguments
    (`repository_url`, `image_use_https`) have no equivalent here.
    """
    if not (image_hash or image_tag or image_url):
        raise PackageException("vm.repo needs an image_hash, an image_tag or an image_url")
    if image_url and image_tag:
        raise PackageException("give either an image_tag (an image on the provider) or an image_url, not both")
    if image_url and not image_hash:
        raise PackageException("An image_hash is required when using a direct image_url.")
    normalized = ""
    if image_hash:
        normalized = image_hash if image_hash.startswith("sha256:") else f"sha256:{image_hash}"
        if not _HEX.match(normalized[len("sha256:"):]):
            raise PackageException(f"image_hash {image_hash!r} is not a sha256 (64 lowercase hex digits)")
    if min_mem_gib <= 0 or min_storage_gib <= 0 or min_cpu_threads < 1:
        raise PackageException("min_mem_gib and min_storage_gib must be positive and min_cpu_threads at least 1")
    return VmPackage(
        image_hash=normalized,
        image_tag=image_tag or "",
        image_url=image_url or "",
        min_mem_gib=min_mem_gib,
        min_storage_gib=min_storage_gib,
        min_cpu_threads=min_cpu_threads,
        capabilities=tuple(capabilities or ()),
    )
