"""What a restarted daemon recovers: agreements and activities, persisted as they change.

One sqlite3 database in the provider's home (`STATE_DIR/state.sqlite3`, mode 0600), in WAL mode:
a commit is one append to the log, and a daemon killed at any moment leaves either the old or the
new record of a row, never half of one. A host crash may lose the last commits (synchronous=NORMAL),
which is fine: activities do not outlive a host crash anyway. Records are JSON with a version
number (`v`), so that a newer daemon can read what an older one wrote.

Activity records are the daemon's handle on a container (like Nomad's task handles): container
id, image, volumes, start time, state. Containers carry labels too (exeunit.runtime.docker.labels), but only the
record knows what the daemon promised the requestor.
"""

from __future__ import annotations

import json
import sqlite3
from datetime import datetime
from pathlib import Path
from typing import Any

from exeunit import errors
from exeunit.domain.commands import Command, Deploy, Run, Start, Terminate, name_of
from exeunit.domain.market import Agreement, AgreementState, Demand, ImageRef
from exeunit.v1 import private_files
from exeunit.v1.conventions import DOCKER_VM_RUNTIME
from exeunit.domain.resources import LinearPricing, Resources, Spent
from exeunit.domain.networks import NetworkRecord
from exeunit.domain.records import ActivityRecord

RECORD_VERSION = 1
COMMAND_TYPES = {name_of(kind()): kind for kind in (Deploy, Start, Terminate)} | {"run": Run}
SCHEMA = """
CREATE TABLE IF NOT EXISTS agreements (agreement_id TEXT PRIMARY KEY, record TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS activities (activity_id TEXT PRIMARY KEY, agreement_id TEXT NOT NULL, record TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS batches (activity_id TEXT NOT NULL, batch_id TEXT NOT NULL, commands TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS batches_of_activity ON batches (activity_id);
CREATE TABLE IF NOT EXISTS networks (requestor_id TEXT NOT NULL, network_id TEXT NOT NULL, record TEXT NOT NULL,
                                     PRIMARY KEY (requestor_id, network_id));
"""


def _make_private(path: Path) -> None:
    """The database and its log files readable by this user only: made empty (which sqlite takes as
    a new database) with mode 0600 before sqlite makes it, as sqlite makes its -wal and -shm files
    with the database's mode; files an older daemon made are tightened."""
    private_files.create(path, b"")
    for name in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        private_files.tighten(name)


class StateStore:
    """The database (a `Store`, exeunit.domain.records); every call is a short transaction on the
    caller's thread."""

    def __init__(self, path: Path) -> None:
        try:
            _make_private(path)
        except OSError as exc:
            raise errors.FailedPrecondition(f"cannot open the state database {path}: {exc}") from None
        try:
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(SCHEMA)
        except sqlite3.Error as exc:
            raise errors.FailedPrecondition(f"cannot open the state database {path}: {exc}") from None

    def close(self) -> None:
        self._db.close()

    # Agreements

    def put_agreement(self, agreement: Agreement) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO agreements (agreement_id, record) VALUES (?, ?)",
            (agreement.agreement_id, json.dumps(_agreement_record(agreement))),
        )

    def agreements(self) -> list[Agreement]:
        rows = self._db.execute("SELECT record FROM agreements").fetchall()
        return [_agreement_from(json.loads(record)) for (record,) in rows]


    def forget_agreement(self, agreement_id: str) -> None:
        """Drops an ended agreement with its activities' records."""
        with self._db:
            self._db.execute("DELETE FROM activities WHERE agreement_id = ?", (agreement_id,))
            self._db.execute("DELETE FROM agreements WHERE agreement_id = ?", (agreement_id,))

    # Activities

    def put_activity(self, record: ActivityRecord) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO activities (activity_id, agreement_id, record) VALUES (?, ?, ?)",
            (record.activity_id, record.agreement_id, json.dumps(_activity_record(record))),
        )

    def forget_activity(self, activity_id: str) -> None:
        self._db.execute("DELETE FROM activities WHERE activity_id = ?", (activity_id,))

    def activities(self) -> list[ActivityRecord]:
        rows = self._db.execute("SELECT record FROM activities").fetchall()
        return [_activity_from(json.loads(record)) for (record,) in rows]

    # Networks (their members are in the activities' records)

    def put_network(self, record: NetworkRecord) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO networks (requestor_id, network_id, record) VALUES (?, ?, ?)",
            (record.requestor_id, record.network_id, json.dumps({"v": RECORD_VERSION, **vars(record)})),
        )

    def forget_network(self, requestor_id: str, network_id: str) -> None:
        self._db.execute("DELETE FROM networks WHERE requestor_id = ? AND network_id = ?", (requestor_id, network_id))

    def networks(self) -> list[NetworkRecord]:
        rows = self._db.execute("SELECT record FROM networks").fetchall()
        return [_network_from(json.loads(record)) for (record,) in rows]

    # Batches (their events are in journals, exeunit.persistence.journals)

    def put_batch(self, activity_id: str, batch_id: str, commands: list[Command]) -> None:
        self._db.execute(  # rowids grow: they keep the order batches were queued in
            "INSERT INTO batches (activity_id, batch_id, commands) VALUES (?, ?, ?)",
            (activity_id, batch_id, json.dumps([_command_record(c) for c in commands])),
        )

    def batches(self, activity_id: str) -> list[tuple[str, list[Command]]]:
        """The activity's batches in the order they were queued: (batch id, commands)."""
        rows = self._db.execute(
            "SELECT batch_id, commands FROM batches WHERE activity_id = ? ORDER BY rowid", (activity_id,)
        ).fetchall()
        return [(batch_id, [_command_from(c) for c in json.loads(commands)]) for batch_id, commands in rows]

    def forget_batch(self, activity_id: str, batch_id: str) -> None:
        self._db.execute("DELETE FROM batches WHERE activity_id = ? AND batch_id = ?", (activity_id, batch_id))

    def forget_batches(self, activity_id: str) -> None:
        """Drops an ended activity's batch records."""
        self._db.execute("DELETE FROM batches WHERE activity_id = ?", (activity_id,))


def _command_record(command: Command) -> dict[str, Any]:
    return {"type": name_of(command), **{key: list(v) if isinstance(v, tuple) else v for key, v in vars(command).items()}}


def _command_from(record: dict[str, Any]) -> Command:
    kind = COMMAND_TYPES[record["type"]]
    return kind(**{key: tuple(v) if isinstance(v, list) else v for key, v in record.items() if key != "type"})


def _time(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def _parse_time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def _agreement_record(agreement: Agreement) -> dict[str, Any]:
    demand = agreement.demand
    return {
        "v": RECORD_VERSION,
        "agreement_id": agreement.agreement_id,
        "provider_id": agreement.provider_id,
        "requestor_id": agreement.requestor_id,
        "demand": {
            "image": {"hash": demand.image.hash, "tag": demand.image.tag, "url": demand.image.url},
            "min_memory_bytes": demand.min_memory_bytes,
            "min_storage_bytes": demand.min_storage_bytes,
            "min_cpu_threads": demand.min_cpu_threads,
            "capabilities": list(demand.capabilities),
            "subnet_tag": demand.subnet_tag,
            "expiration": _time(demand.expiration),
            "runtime": demand.runtime,
        },
        "pricing": vars(agreement.pricing),
        "reserved": vars(agreement.reserved),
        "created": _time(agreement.created),
        "state": agreement.state.value,
        "termination_reason": agreement.termination_reason,
        "termination_message": agreement.termination_message,
        "activity_ids": list(agreement.activity_ids),
        "spent": {**vars(agreement.spent), "last_ended": _time(agreement.spent.last_ended)},
    }


def _agreement_from(record: dict[str, Any]) -> Agreement:
    demand = record["demand"]
    return Agreement(
        agreement_id=record["agreement_id"],
        provider_id=record["provider_id"],
        requestor_id=record["requestor_id"],
        demand=Demand(
            image=ImageRef(**demand["image"]),
            min_memory_bytes=demand["min_memory_bytes"],
            min_storage_bytes=demand["min_storage_bytes"],
            min_cpu_threads=demand["min_cpu_threads"],
            capabilities=tuple(demand["capabilities"]),
            subnet_tag=demand["subnet_tag"],
            expiration=_parse_time(demand["expiration"]),  # type: ignore[arg-type]
            runtime=demand.get("runtime", DOCKER_VM_RUNTIME),
        ),
        pricing=LinearPricing(**record["pricing"]),
        reserved=Resources(**record["reserved"]),
        created=_parse_time(record["created"]),  # type: ignore[arg-type]
        state=AgreementState(record["state"]),
        termination_reason=record["termination_reason"],
        termination_message=record["termination_message"],
        activity_ids=list(record["activity_ids"]),
        spent=_spent_from(record.get("spent")),  # absent in records of daemons before multi-activity
    )


def _spent_from(stored: dict[str, Any] | None) -> Spent:
    if not stored:
        return Spent()
    return Spent(cpu_seconds=stored["cpu_seconds"], duration_seconds=stored["duration_seconds"],
                 counters=dict(stored["counters"]), billed=list(stored["billed"]),
                 last_ended=_parse_time(stored["last_ended"]))


def _activity_record(record: ActivityRecord) -> dict[str, Any]:
    fields = dict(vars(record))
    fields["started"], fields["ended"] = _time(record.started), _time(record.ended)
    return {"v": RECORD_VERSION, **fields}


def _activity_from(fields: dict[str, Any]) -> ActivityRecord:
    fields = {key: value for key, value in fields.items() if key != "v"}
    fields["started"], fields["ended"] = _parse_time(fields["started"]), _parse_time(fields["ended"])
    return ActivityRecord(**fields)


def _network_from(stored: dict) -> NetworkRecord:
    """A network's record; one from before spans_providers kept the network's secret instead, which
    is read as "spans" and not kept (the next write of the record leaves it out)."""
    stored.pop("v", None)
    legacy_secret = stored.pop("secret", "")
    stored.setdefault("spans", bool(legacy_secret))
    return NetworkRecord(**stored)
