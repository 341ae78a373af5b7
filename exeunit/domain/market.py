"""The provider's side of the market: its offer, demands matched against it, and agreements.

Agreements reserve capacity (cpu threads, memory, storage) until they are terminated, so the
offer always shows what is still free and a demand the host cannot fit is refused. What an
agreement reserves is what its containers get: the demand's minimums raised to the operator's
activity preset (`allotment`), as a Golem VM gets what its provider's preset grants.
"""

from __future__ import annotations

import collections
import logging
import re
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum

from exeunit import errors
from exeunit.domain.payments import AgreedPayment, PaymentChoice, agree
from exeunit.domain.resources import LinearPricing, Resources, Spent, describe
from exeunit.domain.settings import ActivityLimits, ProviderSettings
from exeunit.v1.conventions import DOCKER_VM_RUNTIME

log = logging.getLogger(__name__)

IMAGE_ID_PATTERN = re.compile(r"^sha256:[0-9a-f]{64}$")
URL_SCHEMES = ("file://", "http://", "https://")


@dataclass(frozen=True)
class ImageRef:
    """An image as Golem names one: by hash (Docker image id), tag, or archive url + hash."""

    hash: str = ""
    tag: str = ""
    url: str = ""

    def validate(self) -> None:
        if not (self.hash or self.tag or self.url):
            raise errors.InvalidArgument("demand.image needs a hash, a tag or a url")
        if self.hash and not IMAGE_ID_PATTERN.match(self.hash):
            raise errors.InvalidArgument(
                f"demand.image.hash {self.hash!r} is not of the form sha256:<64 lowercase hex digits>"
            )
        if self.url:
            if not self.url.startswith(URL_SCHEMES):
                raise errors.InvalidArgument(
                    f"demand.image.url {self.url!r} must start with one of {', '.join(URL_SCHEMES)}"
                )
            if not self.hash:
                raise errors.InvalidArgument(
                    "demand.image.url needs demand.image.hash: the archive is checked against it before use"
                )

    def describe(self) -> str:
        return self.tag or self.hash or self.url


@dataclass(frozen=True)
class Demand:
    image: ImageRef
    min_memory_bytes: int
    min_storage_bytes: int
    min_cpu_threads: int
    capabilities: tuple[str, ...]
    subnet_tag: str
    expiration: datetime
    runtime: str = DOCKER_VM_RUNTIME
    payment: PaymentChoice | None = None  # None: no platform, and the offer's deadlines

    def validate(self, now: datetime) -> None:
        if self.runtime == DOCKER_VM_RUNTIME or self.image != ImageRef():  # other runtimes may need none
            self.image.validate()
        if self.expiration <= now:
            raise errors.InvalidArgument(
                f"demand.expiration {self.expiration.isoformat()} is not in the future (now {now.isoformat()})"
            )


@dataclass(frozen=True)
class Offer:
    settings: ProviderSettings
    free: Resources
    images: tuple[str, ...]
    limits: ActivityLimits = field(default_factory=ActivityLimits)
    overlay_port: int = 0  # where networks that span providers reach this one (0: they cannot)


class RefusalReason(Enum):
    SUBNET_MISMATCH = "SubnetMismatch"
    INSUFFICIENT_RESOURCES = "InsufficientResources"
    MISSING_CAPABILITY = "MissingCapability"
    IMAGE_UNAVAILABLE = "ImageUnavailable"
    EXPIRATION_TOO_FAR = "ExpirationTooFar"
    RUNTIME_MISMATCH = "RuntimeMismatch"
    PAYMENT_TERMS = "PaymentTerms"


@dataclass(frozen=True)
class Refusal:
    reason: RefusalReason
    message: str


class AgreementState(Enum):
    APPROVED = "Approved"
    TERMINATED = "Terminated"


@dataclass
class Agreement:
    agreement_id: str
    provider_id: str
    requestor_id: str
    demand: Demand
    pricing: LinearPricing
    reserved: Resources
    created: datetime
    state: AgreementState = AgreementState.APPROVED
    termination_reason: str = ""
    termination_message: str = ""
    activity_ids: list[str] = field(default_factory=list)  # oldest first; at most one live at a time
    spent: Spent = field(default_factory=Spent)  # what its ended activities used
    payment: AgreedPayment = field(default_factory=AgreedPayment)

    @property
    def expiration(self) -> datetime:
        return self.demand.expiration


def match(demand: Demand, settings: ProviderSettings, image_available: bool, now: datetime) -> Refusal | None:
    """Why this provider cannot ever serve the demand, or None when it can (capacity aside)."""
    lifetime = (demand.expiration - now).total_seconds()
    if lifetime > settings.max_agreement_seconds:
        return Refusal(
            RefusalReason.EXPIRATION_TOO_FAR,
            f"demand.expiration is {lifetime / 3600:.2f} h away; this provider signs agreements of at most "
            f"{settings.max_agreement_seconds / 3600:.2f} h",
        )
    if demand.runtime not in settings.runtimes:
        return Refusal(
            RefusalReason.RUNTIME_MISMATCH,
            f"demand is for runtime {demand.runtime!r}, this provider runs {', '.join(settings.runtimes)}",
        )
    if demand.subnet_tag != settings.subnet_tag:
        return Refusal(
            RefusalReason.SUBNET_MISMATCH,
            f"demand is for subnet {demand.subnet_tag!r}, this provider serves {settings.subnet_tag!r}",
        )
    wanted = allotment(demand, settings)
    if not wanted.fits_in(settings.capacity):
        return Refusal(
            RefusalReason.INSUFFICIENT_RESOURCES,
            f"demand needs {describe(wanted)}, this provider offers at most {describe(settings.capacity)}",
        )
    missing = sorted(set(demand.capabilities) - set(settings.capabilities))
    if missing:
        offered = ", ".join(settings.capabilities) or "none"
        return Refusal(
            RefusalReason.MISSING_CAPABILITY,
            f"demand needs capabilities {', '.join(missing)}; this provider offers {offered}",
        )
    if not image_available and not (demand.image.url and settings.images.fetch.enabled):
        how = "no url to fetch it was given" if not demand.image.url else "this provider does not fetch image urls"
        return Refusal(
            RefusalReason.IMAGE_UNAVAILABLE,
            f"image {demand.image.describe()!r} is not offered by this provider and {how}",
        )
    return None


def allotment(demand: Demand, settings: ProviderSettings) -> Resources:
    """What an agreement for this demand gets and reserves: its minimums (the provider's default
    allotment for those it leaves at zero), each raised to the provider's activity preset."""
    default, preset = settings.default_allotment, settings.activity_preset
    return Resources(
        cpu_threads=max(demand.min_cpu_threads or default.cpu_threads, preset.cpu_threads),
        memory_bytes=max(demand.min_memory_bytes or default.memory_bytes, preset.memory_bytes),
        storage_bytes=max(demand.min_storage_bytes or default.storage_bytes, preset.storage_bytes),
    )


class Market:
    """Agreements of one provider and the capacity they hold."""

    def __init__(self, settings: ProviderSettings) -> None:
        self.settings = settings
        self._agreements: dict[str, Agreement] = {}
        self._approved_of: collections.Counter[str] = collections.Counter()  # requestor -> live agreements

    def reserved(self) -> Resources:
        total = Resources(0, 0, 0)
        for agreement in self._agreements.values():
            if agreement.state is AgreementState.APPROVED:
                total = total + agreement.reserved
        return total

    def free(self) -> Resources:
        return self.settings.capacity - self.reserved()

    def propose(self, requestor_id: str, demand: Demand, image_available: bool, now: datetime) -> Agreement | Refusal:
        """Signs an agreement for a matching demand; refuses one that cannot match.

        Raises ResourceExhausted when it matches but the capacity is taken by other agreements.
        """
        demand.validate(now)
        refusal = match(demand, self.settings, image_available, now)
        if refusal:
            log.info("event=demand_refused requestor=%s reason=%s", requestor_id, refusal.reason.value)
            return refusal
        payment = agree(demand.payment, self.settings.payment)
        if isinstance(payment, str):
            log.info("event=demand_refused requestor=%s reason=%s", requestor_id, RefusalReason.PAYMENT_TERMS.value)
            return Refusal(RefusalReason.PAYMENT_TERMS, payment)
        wanted = allotment(demand, self.settings)
        free = self.free()
        if not wanted.fits_in(free):
            raise errors.ResourceExhausted(
                f"no free capacity: this agreement would take {describe(wanted)} (the demand's minimums, each "
                f"raised to this provider's activity preset), free now {describe(free)}; retry when other "
                "agreements end"
            )
        agreement = Agreement(
            agreement_id=uuid.uuid4().hex,
            provider_id=self.settings.provider_id,
            requestor_id=requestor_id,
            demand=demand,
            pricing=self.settings.pricing,
            reserved=wanted,
            created=now,
            payment=payment,
        )
        self._agreements[agreement.agreement_id] = agreement
        self._approved_of[requestor_id] += 1
        log.info(
            "event=agreement_approved agreement=%s requestor=%s image=%s expires=%s",
            agreement.agreement_id, requestor_id, demand.image.describe(), demand.expiration.isoformat(),
        )
        return agreement

    def restore(self, agreement: Agreement) -> None:
        """Takes back an agreement a previous daemon on this home signed (with its reservation)."""
        self.forget(agreement.agreement_id)
        self._agreements[agreement.agreement_id] = agreement
        if agreement.state is AgreementState.APPROVED:
            self._approved_of[agreement.requestor_id] += 1

    def forget(self, agreement_id: str) -> None:
        agreement = self._agreements.pop(agreement_id, None)
        if agreement is not None and agreement.state is AgreementState.APPROVED:
            self._ended(agreement.requestor_id)

    def holds_agreement(self, requestor_id: str) -> bool:
        """Whether the requestor has an approved agreement here (in constant time: every call asks)."""
        return requestor_id in self._approved_of

    def _ended(self, requestor_id: str) -> None:
        self._approved_of[requestor_id] -= 1
        if self._approved_of[requestor_id] <= 0:
            del self._approved_of[requestor_id]

    def get(self, agreement_id: str) -> Agreement:
        try:
            return self._agreements[agreement_id]
        except KeyError:
            raise errors.NotFound(f"agreement {agreement_id!r} not found") from None

    def all(self) -> list[Agreement]:
        return list(self._agreements.values())

    def mark_terminated(self, agreement: Agreement, reason: str, message: str) -> bool:
        """Records the termination; False when it was already terminated (first reason kept)."""
        if agreement.state is AgreementState.TERMINATED:
            return False
        agreement.state = AgreementState.TERMINATED
        if self._agreements.get(agreement.agreement_id) is agreement:
            self._ended(agreement.requestor_id)
        agreement.termination_reason = reason
        agreement.termination_message = message
        log.info("event=agreement_terminated agreement=%s reason=%s", agreement.agreement_id, reason)
        return True
