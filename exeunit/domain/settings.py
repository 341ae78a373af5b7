"""What the operator sets: the provider's identity, offer and defaults, the images it serves and
fetches, and the limits on what an activity and the requestor behind it may hold."""

from __future__ import annotations

import fnmatch
import uuid
from dataclasses import dataclass, field

from exeunit.domain.payments import PaymentSettings
from exeunit.domain.resources import LinearPricing, Resources
from exeunit.v1.conventions import DOCKER_VM_RUNTIME, GIB

DEFAULT_OFFERED_IMAGES = ("exeunit-*",)
# What an activity gets at least unless the operator says otherwise (capped by the capacity): room
# for what Golem's VM images run, hashcat on a CPU OpenCL runtime among them (about 1 GiB at peak).
DEFAULT_ACTIVITY_PRESET = Resources(cpu_threads=1, memory_bytes=2 * GIB, storage_bytes=4 * GIB)
TEST_COUNTERS_IMAGE = "exeunit-base:latest"  # what the test-counters runtime runs its activities in


@dataclass(frozen=True)
class FetchPolicy:
    """What the operator allows image urls to reach, and how much and how long."""

    enabled: bool = True
    file_root: str | None = None  # file:// urls only beneath this directory; None refuses them
    allow_private_hosts: bool = False
    max_bytes: int = 4 << 30
    idle_seconds: float = 30.0
    deadline_seconds: float = 600.0
    max_redirects: int = 5


@dataclass(frozen=True)
class ImagePolicy:
    """The operator's rules for images: which tags are offered, and how urls are fetched."""

    offered: tuple[str, ...] = DEFAULT_OFFERED_IMAGES  # fnmatch patterns of "repository:tag"
    fetch: FetchPolicy = field(default_factory=FetchPolicy)
    fetches_per_requestor: int = 2

    def offers_tag(self, tag: str) -> bool:
        return any(fnmatch.fnmatchcase(tag, pattern) for pattern in self.offered)


@dataclass(frozen=True)
class ActivityLimits:
    """Limits the operator sets on what an activity, and the requestor behind it, may hold."""

    pids_limit: int = 512
    shm_bytes: int = 64 << 20  # /dev/shm (memory); /tmp is part of the writable root
    result_output_cap: int = 1 << 20
    replay_window_bytes: int = 32 << 20  # a batch's events kept for readers that come back (on disk)
    output_memory_bytes: int = 4 << 20  # of those, what one activity holds in memory (its running batch's tail)
    output_memory_per_requestor_bytes: int = 16 << 20  # and all of one requestor's activities together
    journal_bytes_per_activity: int = 512 << 20  # an activity's batch journals on disk; oldest finished go
    batches_queued: int = 64  # batches of one activity waiting or running at once; more are refused
    # Activities one agreement may hold one after another: each ended one stays a while and in the
    # agreement's bill, so an agreement churning create/destroy would grow both without end.
    activities_per_agreement: int = 256
    batch_ids_remembered: int = 1_000_000  # forgotten batches' ids an activity keeps (8 bytes each), so none runs twice
    replay_grace_seconds: float = 10.0
    stop_timeout_seconds: int = 5
    agent_start_seconds: float = 3.0  # how long after the start the first command waits for the agent
    transfers_per_activity: int = 4
    transfers_per_requestor: int = 16
    transfer_idle_seconds: float = 60.0
    batches_kept: int = 256  # finished batches per activity kept for GetBatch and replay; older ones go
    tunnels_per_activity: int = 64  # TCP connections into one activity through Tunnel at once
    tunnels_per_requestor: int = 16  # and into all of one requestor's activities
    streams_per_requestor: int = 256  # event streams and activity watches one requestor has open at once
    networks_per_requestor: int = 8  # private networks one requestor may have on the provider
    peers_per_network: int = 64  # other providers one spanning network may name
    overlay_macs_per_network: int = 4096  # MAC addresses the overlay learns per network (then it floods)
    relay_queue_bytes: int = 64 << 20  # relayed bytes waiting for one requestor's RelayFrames stream


@dataclass(frozen=True)
class ProviderSettings:
    """What the operator set: identity, caps on offered capacity, pricing and defaults."""

    provider_id: str
    name: str
    subnet_tag: str
    pricing: LinearPricing
    capacity: Resources
    default_allotment: Resources  # what a demand that names no minimum reserves
    # What every agreement's activities get at least, as a Golem VM gets its provider's preset: a
    # demand's minimum below it is raised to it, one above it is granted as asked (capacity allowing).
    # Zero in a field: no floor there, the demand's minimum (or the default allotment) is granted.
    activity_preset: Resources = Resources(0, 0, 0)
    capabilities: tuple[str, ...] = ()
    images: ImagePolicy = field(default_factory=ImagePolicy)
    runtimes: tuple[str, ...] = (DOCKER_VM_RUNTIME,)  # the first is the offer's runtime_name
    # Capacity comes back: no agreement outlives this, and one without a live activity ends after
    # `agreement_idle_seconds` (a requestor cannot hold the host by signing and never running).
    max_agreement_seconds: float = 24 * 3600.0
    agreement_idle_seconds: float = 300.0
    # Ended agreements and activities answer status calls this long, then are forgotten.
    ended_retention_seconds: float = 900.0
    # Labels every container of this provider's home (exeunit.persistence.home); a fresh one unless the
    # home's identity gives it, so two providers never claim each other's containers.
    home_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    # Where the overlay (networks that span providers) listens, "host:port"; "": networks stay here.
    overlay_listen: str = ""
    # The provider's certificate and key, which authenticate it to its peers (its home's files).
    overlay_certificate_file: str = ""
    overlay_key_file: str = ""
    # CIDRs the overlay may dial peers in, comma-separated; "": any address its rules allow.
    overlay_peer_ranges: str = ""
    # How it is paid: platforms and addresses, debit note interval, deadlines (--payment-*).
    payment: PaymentSettings = field(default_factory=PaymentSettings)
