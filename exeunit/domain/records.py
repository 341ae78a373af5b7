"""What survives a daemon: the records it keeps of agreements, activities, networks and batches,
the `Store` that keeps them (exeunit.persistence.store) and the `Journals` of batches' events
(exeunit.persistence.journals), as the services see them."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Protocol

from exeunit.domain.batch import BatchJournal, Replayed
from exeunit.domain.commands import Command
from exeunit.domain.market import Agreement
from exeunit.domain.networks import NetworkRecord
from exeunit.domain.payments import PaymentStore


@dataclass(frozen=True)
class ActivityRecord:
    """The persisted handle of one activity."""

    activity_id: str
    agreement_id: str
    state: str  # an ActivityState value
    reason: str
    message: str
    container_id: str | None
    image_id: str | None
    image_loaded_here: bool  # fetched from a url by this provider (removed with its last agreement)
    volume_root: str | None
    volume_dirs: dict[str, str]
    volumes_enforced: bool
    started: datetime | None
    ended: datetime | None
    network_id: str = ""  # the requestor's network it joined at deploy, and its address there
    network_ip: str = ""


class Store(PaymentStore, Protocol):
    """Where records are kept as they change, for the next daemon on this home (payment documents
    and credits too: see PaymentStore)."""

    def put_agreement(self, agreement: Agreement) -> None: ...
    def agreements(self) -> list[Agreement]: ...
    def forget_agreement(self, agreement_id: str) -> None: ...
    def put_activity(self, record: ActivityRecord) -> None: ...
    def activities(self) -> list[ActivityRecord]: ...
    def forget_activity(self, activity_id: str) -> None: ...
    def put_network(self, record: NetworkRecord) -> None: ...
    def networks(self) -> list[NetworkRecord]: ...
    def forget_network(self, requestor_id: str, network_id: str) -> None: ...
    def put_batch(self, activity_id: str, batch_id: str, commands: list[Command]) -> None: ...
    def batches(self, activity_id: str) -> list[tuple[str, list[Command]]]: ...
    def forget_batch(self, activity_id: str, batch_id: str) -> None: ...
    def forget_batches(self, activity_id: str) -> None: ...


class ForgottenIds(Protocol):
    """The ids of an activity's batches that ran and were forgotten (kept on disk)."""

    def __len__(self) -> int: ...
    def __contains__(self, batch_id: object) -> bool: ...
    def add(self, batch_id: str) -> None: ...


class Journals(Protocol):
    """Where batches' events are kept on disk (exeunit.persistence.journals): every batch has a
    journal, whether or not its records survive the daemon. Directories are removed by the
    caller, off the event loop."""

    def open(self, activity_id: str, batch_id: str) -> BatchJournal: ...
    def replay(self, activity_id: str, batch_id: str) -> Replayed: ...
    def directory(self, activity_id: str, batch_id: str | None = None) -> Path: ...
    def forgotten_ids(self, activity_id: str) -> ForgottenIds: ...
    def activity_ids(self) -> list[str]: ...
    def close(self) -> None: ...
