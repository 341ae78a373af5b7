"""The requestor's records: what it knows of providers, agreements and activities, the commands it
sends and the events that come back. Plain data, no gRPC: requestor.client converts the contract's
messages to and from these, and everything else works with them."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Union


@dataclass(frozen=True)
class Job:
    """One `run_service` call: its id, payload and agreement expiration."""

    id: str
    payload: Any
    expiration: datetime


@dataclass(frozen=True)
class Agreement:
    """An agreement with one provider. Its repr is yapapi's, `Agreement(id=...)`: event reprs
    carry it, and what reads them (goth's checks) matches on it."""

    id: str
    provider_id: str
    provider_name: str
    address: str

    def __repr__(self) -> str:
        return f"Agreement(id={self.id})"


@dataclass(frozen=True)
class Activity:
    id: str

    def __repr__(self) -> str:
        return f"Activity(id={self.id})"  # yapapi's


# Providers' offers, and what the requestor asks of them


@dataclass(frozen=True)
class PaymentTerms:
    """An offer's payment terms (Golem's `golem.com.payment.*` and `golem.com.scheme.payu.*`), in
    seconds; 0 where the offer says nothing."""

    platforms: tuple[str, ...] = ()
    debit_note_interval: float = 0.0
    min_debit_note_interval: float = 0.0
    payment_timeout: float = 0.0
    min_payment_timeout: float = 0.0
    debit_note_accept_timeout: float = 0.0
    # (platform, payee address lowercase) for each platform whose binding signature verified as the
    # provider's (requestor.client.convert): the only address a payment on it goes to.
    payees: tuple[tuple[str, str], ...] = ()

    def payee_for(self, platform: str) -> str:
        """The payee the provider bound to `platform` with its signature; "" when none verified."""
        return next((payee for name, payee in self.payees if name == platform), "")


@dataclass(frozen=True)
class PaymentChoice:
    """What a demand asks of the offer's payment terms, in seconds; 0 takes the offer's (a
    payment timeout of 0: no mid-agreement payments). No platform: accounted, not paid on a chain."""

    platform: str = ""
    payer_address: str = ""
    debit_note_interval: float = 0.0
    payment_timeout: float = 0.0
    debit_note_accept_timeout: float = 0.0
    payer_proof: bytes = b""  # the payer address's signature showing it is the requestor's (requestor.settlement)


@dataclass(frozen=True)
class Pricing:
    start_fee: float
    per_cpu_second: float
    per_duration_second: float
    currency: str
    per_unit: dict[str, float] = field(default_factory=dict)  # other counters' prices, by name


@dataclass(frozen=True)
class Offer:
    """A provider's offer, with the address it came from."""

    address: str
    provider_id: str
    provider_name: str
    subnet_tag: str
    runtime_name: str
    cpu_threads: int
    memory_bytes: int
    storage_bytes: int
    total_cpu_threads: int
    total_memory_bytes: int
    total_storage_bytes: int
    pricing: Pricing
    images: tuple[str, ...]
    accepts_image_urls: bool
    capabilities: tuple[str, ...]
    runtimes: tuple[str, ...] = ()  # every runtime it runs (runtime_name first)
    overlay_port: int = 0  # where the other providers of a network spanning several reach it (0: none)
    # What an agreement's activities get at least (the operator's preset, as a Golem provider's):
    # a demand's minimum below one is raised to it, one above it is granted while capacity is free.
    # 0: no floor in that field. The agreement states what was granted (AgreementInfo).
    activity_cpu_threads: int = 0
    activity_memory_bytes: int = 0
    activity_storage_bytes: int = 0
    payment: PaymentTerms | None = None  # how it is paid, and the deadlines it offers (None: not said)

    @property
    def issuer(self) -> str:
        """The provider's id (yapapi's `OfferProposal.issuer`, which strategies key their history by)."""
        return self.provider_id

    @property
    def is_draft(self) -> bool:
        """Always true: an offer here carries the terms an agreement is made on, as a draft (the
        provider's answer to the demand) does in yapapi; there is no earlier, unanswered round."""
        return True

    @property
    def overlay_endpoint(self) -> str:
        """host:port of its overlay, at the host the requestor reaches it at; "" without one."""
        return f"{self.address.rpartition(':')[0]}:{self.overlay_port}" if self.overlay_port else ""


@dataclass(frozen=True)
class DemandSpec:
    image_hash: str
    image_tag: str
    image_url: str
    min_memory_bytes: int
    min_storage_bytes: int
    min_cpu_threads: int
    capabilities: tuple[str, ...]
    subnet_tag: str
    expiration: datetime
    runtime: str = ""
    payment: PaymentChoice | None = None


@dataclass(frozen=True)
class Refusal:
    reason: str
    message: str


@dataclass(frozen=True)
class AgreementInfo:
    """An agreement as its provider states it: what it granted (each activity's cpu threads,
    memory limit and storage quota) and until when."""

    agreement_id: str
    cpu_threads: int
    expiration: datetime
    memory_bytes: int = 0
    storage_bytes: int = 0
    created: datetime | None = None
    # What its payment agreed (seconds): debit notes this often, each to be accepted within the
    # accept timeout; a payment timeout (mid-agreement payments) only on a platform.
    debit_note_interval: float = 0.0
    debit_note_accept_timeout: float = 0.0
    payment_timeout: float = 0.0
    platform: str = ""
    # Where it is paid (requestor.settlement): the provider's address, ours, the chain, the token,
    # and how many blocks a payment waits for before the provider counts it.
    payee_address: str = ""
    payer_address: str = ""
    chain_id: int = 0
    token_address: str = ""
    confirmations: int = 0


# Activities


@dataclass(frozen=True)
class ActivityStatus:
    state: str  # "New", "Deployed", "Ready", "Terminated"
    reason: str
    message: str


@dataclass(frozen=True)
class Usage:
    cpu_seconds: float
    duration_seconds: float
    cost: float
    memory_bytes: int = 0
    storage_bytes: int = 0
    measured: datetime | None = None
    counters: dict[str, float] = field(default_factory=dict)


# ExeScript commands, as a batch carries them to the provider


@dataclass(frozen=True)
class DeploySpec:
    network_id: str = ""  # the requestor's network to join, at `ip`
    ip: str = ""


@dataclass(frozen=True)
class StartSpec:
    args: tuple[str, ...] = ()


@dataclass(frozen=True)
class RunSpec:
    entry_point: str
    args: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    workdir: str = ""
    timeout: float | None = None  # seconds


@dataclass(frozen=True)
class TerminateSpec:
    pass


CommandSpec = Union[DeploySpec, StartSpec, RunSpec, TerminateSpec]


@dataclass(frozen=True)
class BatchEvent:
    """One event of a batch, numbered from 0. `kind` is "started", "stdout", "stderr" (with
    `data`), "finished" (with `return_code`, `success`, `message`) or "batch_finished"."""

    sequence: int
    command_index: int
    kind: str
    data: bytes = b""
    return_code: int = 0
    success: bool = False
    message: str = ""
