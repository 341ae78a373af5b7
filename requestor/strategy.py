"""Choosing among offers: which match the demand, and which is preferred (pluggable)."""

from __future__ import annotations

from requestor.payload.vm import GIB, VmPackage
from requestor.provider_client import Offer


class MarketStrategy:
    """Scores offers; the lowest score is tried first, None rejects. Subclass to change the choice."""

    def score_offer(self, offer: Offer) -> float | None:
        raise NotImplementedError


class LeastExpensiveLinearPayuMS(MarketStrategy):
    """Prefers the offer that is cheapest for `expected_time_secs` of work at full cpu use,
    optionally capping each price coefficient (as yapapi's strategy of the same name)."""

    def __init__(self, expected_time_secs: float = 60, max_fixed_price: float | None = None,
                 max_price_for: dict[str, float] | None = None) -> None:
        self.expected_time_secs = expected_time_secs
        self.max_fixed_price = max_fixed_price
        self.max_price_for = max_price_for or {}

    def score_offer(self, offer: Offer) -> float | None:
        p = offer.pricing
        if self.max_fixed_price is not None and p.start_fee > self.max_fixed_price:
            return None
        if p.per_cpu_second > self.max_price_for.get("cpu", float("inf")):
            return None
        if p.per_duration_second > self.max_price_for.get("duration", float("inf")):
            return None
        t = self.expected_time_secs
        return p.start_fee + t * p.per_cpu_second + t * p.per_duration_second


def mismatch(offer: Offer, payload: VmPackage, subnet_tag: str) -> str | None:
    """Why the offer cannot serve the payload, or None when it can."""
    if offer.subnet_tag != subnet_tag:
        return f"subnet {offer.subnet_tag!r}, not {subnet_tag!r}"
    if offer.runtime_name != payload.runtime:
        return f"runtime {offer.runtime_name!r}, not {payload.runtime!r}"
    if offer.total_cpu_threads < payload.min_cpu_threads:
        return f"only {offer.total_cpu_threads} cpu threads"
    if offer.total_memory_bytes < payload.min_mem_gib * GIB:
        return f"only {offer.total_memory_bytes / GIB:.1f} GiB memory"
    if offer.total_storage_bytes < payload.min_storage_gib * GIB:
        return f"only {offer.total_storage_bytes / GIB:.1f} GiB storage"
    missing = set(payload.capabilities) - set(offer.capabilities)
    if missing:
        return f"lacks capabilities {', '.join(sorted(missing))}"
    has_image = (payload.image_tag and payload.image_tag in offer.images) or (
        payload.image_hash and payload.image_hash in offer.images
    )
    if not has_image and not (payload.image_url and offer.accepts_image_urls):
        return f"does not have image {payload.image_tag or payload.image_hash or payload.image_url}"
    return None
