"""Which images a requestor may run: those the operator offers, and those it brought itself.

The operator offers images by tag pattern (`exeunit-*` by default: what `images/build.py` builds);
nothing else on the host is listed or deployable. An image a requestor brings as a url to a
`docker save` archive is fetched (fenced, see `exeunit.runtime.fetch`), checked against the demanded hash,
sized, and loaded without any name (see `exeunit.runtime.archive`). It then belongs to the agreements that
loaded it: it is not in anyone's offer, only its owner can deploy it again by hash, and it is removed
when its last agreement ends, unless the operator offers it too.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from exeunit import errors
from exeunit.runtime import archive
from exeunit.runtime.protocols import ImageInfo, Runtime
from exeunit.services.fairness import ConcurrencyQuota
from exeunit.runtime.fetch import ArchiveFetch
from exeunit.domain.settings import ImagePolicy
from exeunit.runtime.threads import in_data_thread

if TYPE_CHECKING:
    from exeunit.domain.market import Agreement, ImageRef

log = logging.getLogger(__name__)

class ImageResolver:
    def __init__(self, runtime: Runtime, policy: ImagePolicy) -> None:
        self._runtime = runtime
        self.policy = policy
        self._owners: dict[str, dict[str, str]] = {}  # loaded image id -> {agreement id: requestor id}
        self._fetches = ConcurrencyQuota(policy.fetches_per_requestor, "image fetches",
                                        "--image-fetches-per-requestor")
        self._preexisting: set[str] = set()

    # What is offered

    async def offered(self) -> list[ImageInfo]:
        """The operator's images present on the engine, with only their offered tags."""
        offered = []
        for image in await self._runtime.images():
            tags = tuple(t for t in image.tags if self.policy.offers_tag(t))
            if tags:
                offered.append(ImageInfo(image.id, tags, image.volumes))
        return offered

    async def _offered_id(self, ref: ImageRef) -> str | None:
        """The id of the offered image a demand names by tag or hash, checked against both when both
        are given."""
        offered = await self.offered()
        if ref.tag:
            info = next((i for i in offered if ref.tag in i.tags), None)
            if info and ref.hash and info.id != ref.hash:
                if ref.url:
                    return None  # the url's archive is the truth
                raise errors.FailedPrecondition(
                    f"image tag {ref.tag!r} is {info.id} on this provider, but the demand asks for {ref.hash}"
                )
            return info.id if info else None
        return next((i.id for i in offered if i.id == ref.hash), None) if ref.hash else None

    def _owned_by(self, requestor_id: str, image_id: str) -> bool:
        return requestor_id in self._owners.get(image_id, {}).values()

    async def available(self, requestor_id: str, ref: ImageRef) -> bool:
        """Whether the demand's image is here for this requestor without fetching anything."""
        if await self._offered_id(ref) is not None:
            return True
        return bool(ref.hash) and self._owned_by(requestor_id, ref.hash)

    # Deploying

    async def resolve(self, agreement: Agreement, on_fetch: Callable[[Callable[[], None]], object]) -> ImageInfo:
        """The image to run for the agreement, fetching and loading the archive a url names.

        `on_fetch(cancel)` is told how to cancel a fetch while it runs (the activity calls it
        when it ends)."""
        ref = agreement.demand.image
        image_id = await self._offered_id(ref)
        if image_id is not None:
            return await self._runtime.image(image_id)
        if ref.hash and self._owned_by(agreement.requestor_id, ref.hash):
            image_id = ref.hash
        elif ref.url:
            with self._fetches.hold(agreement.requestor_id, f"requestor {agreement.requestor_id!r}"):
                image_id = await self._fetch_and_load(ref, agreement, on_fetch)
        else:
            raise errors.NotFound(f"image {ref.describe()!r} is not offered by this provider")
        self._owners.setdefault(image_id, {})[agreement.agreement_id] = agreement.requestor_id
        return await self._runtime.image(image_id)

    async def _fetch_and_load(
        self, ref: ImageRef, agreement: Agreement, on_fetch: Callable[[Callable[[], None]], object]
    ) -> str:
        limit = min(agreement.reserved.storage_bytes, self.policy.fetch.max_bytes)
        with tempfile.TemporaryDirectory(prefix="exeunit-image-") as scratch:
            fetched, nameless = Path(scratch) / "fetched.tar", Path(scratch) / "nameless.tar"
            fetch = ArchiveFetch(ref.url, self.policy.fetch, limit, fetched)
            on_fetch(fetch.cancel)
            log.info("event=image_fetching agreement=%s url=%s", agreement.agreement_id, ref.url)
            file_hash = await in_data_thread(fetch.run)
            image_id = await in_data_thread(archive.verify, fetched, ref.hash, file_hash)
            if image_id not in self._owners and await self._runtime.has_image(image_id):
                self._preexisting.add(image_id)  # the host had it before any requestor: never ours to remove
                return image_id
            await in_data_thread(self._unpack_check_and_strip, fetched, nameless, limit)
            await self._runtime.load_image(str(nameless))
        log.info("event=image_loaded agreement=%s image=%s", agreement.agreement_id, image_id)
        return image_id

    @staticmethod
    def _unpack_check_and_strip(fetched: Path, nameless: Path, limit: int) -> None:
        archive.check_unpacked_size(fetched, limit)
        archive.write_nameless_copy(fetched, nameless)
        fetched.unlink()

    def loaded_here(self, image_id: str) -> bool:
        """Whether this provider loaded the image from a url (so it goes with its agreements)."""
        return image_id in self._owners and image_id not in self._preexisting

    def claim(self, agreement: Agreement, image_id: str, loaded_here: bool) -> None:
        """Restores, after a daemon restart, the agreement's hold on the image it runs."""
        if loaded_here:  # an offered image, or one the host had before, is nobody's to remove
            self._owners.setdefault(image_id, {})[agreement.agreement_id] = agreement.requestor_id

    # Ending

    async def release(self, agreement: Agreement) -> None:
        """Forgets the agreement's claim on images it loaded; removes those nobody else holds."""
        for image_id in [i for i, owners in self._owners.items() if agreement.agreement_id in owners]:
            owners = self._owners[image_id]
            del owners[agreement.agreement_id]
            if owners:
                continue
            del self._owners[image_id]
            if image_id in self._preexisting or any(i.id == image_id for i in await self.offered()):
                continue  # the operator's: it stays
            try:
                await self._runtime.remove_image(image_id)
                log.info("event=image_removed image=%s agreement=%s", image_id, agreement.agreement_id)
            except errors.ExeUnitError as exc:
                log.warning("event=image_remove_failed image=%s error=%s", image_id, exc)
