"""What a restarted daemon recovers: agreements and activities, persisted as they change.

One sqlite3 database in the provider's home (`STATE_DIR/state.sqlite3`, mode 0600), in WAL mode:
a commit is one append to the log, and a daemon killed at any moment leaves either the old or the
new record of a row, never half of one. A host crash may lose the last commits (synchronous=NORMAL),
which is fine: activities do not outlive a host crash anyway. Records are JSON with a version
number (`v`), so that a newer daemon can read what an older one wrote.

Payment documents (debit notes, invoices) and the transactions credited to agreements are kept
for good: they are proof of what was owed and paid, and outlive the agreements they are of.

Activity records are the daemon's handle on a container (like Nomad's task handles): container
id, image, volumes, start time, state. Containers carry labels too (exeunit.runtime.docker.labels), but only the
record knows what the daemon promised the requestor.
"""

from __future__ import annotations

import base64
import json
import sqlite3
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from exeunit import errors
from exeunit.domain.commands import Command, Deploy, Run, Start, Terminate, name_of
from exeunit.domain.market import Agreement, AgreementState, Demand, ImageRef
from exeunit.domain.payments import (
    AgreedPayment, CreditedPayment, DocumentDraft, DocumentKind, DocumentState, PaymentChoice, PaymentDocument, Sealed,
    UsageFigures,
)
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
CREATE TABLE IF NOT EXISTS payment_documents (document_id TEXT PRIMARY KEY, agreement_id TEXT NOT NULL,
                                              sequence INTEGER NOT NULL, record TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS payment_documents_of_agreement ON payment_documents (agreement_id);
CREATE TABLE IF NOT EXISTS credited_payments (transaction_hash TEXT PRIMARY KEY, agreement_id TEXT NOT NULL,
                                              record TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS payment_counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


def _make_private(path: Path) -> None:
    """The database and its log files readable by this user only: made empty (which sqlite takes as
    a new database) with mode 0600 before sqlite makes it, as sqlite makes its -wal and -shm files
    with the database's mode; files an older daemon made are tightened."""
    private_files.create(path, b"")
    for name in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        private_files.tighten(name)


class StateStore:
    """The database (a `Store`, exeunit.domain.records, and a `PaymentStore`,
    exeunit.domain.payments); every call is a short transaction on the caller's thread."""

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
        """Drops an ended agreement with its activities' records; its payment documents and credited
        payments stay (they are proof of what it owed and was paid)."""
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

    # Payments: documents as issued and as their state changes, transactions credited (kept for good)

    def put_payment_document(self, document: PaymentDocument, sequence: int) -> None:
        self._db.execute(  # an upsert keeps the row's rowid: the order documents were issued in
            "INSERT INTO payment_documents (document_id, agreement_id, sequence, record) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (document_id) DO UPDATE SET sequence = excluded.sequence, record = excluded.record",
            (document.document_id, document.draft.agreement_id, sequence, json.dumps(_document_record(document))),
        )

    def payment_documents(self, agreement_id: str, latest: int | None = None) -> list[tuple[int, PaymentDocument]]:
        """The agreement's documents as last put, with the sequence of their last change: its debit
        notes by their sequence (the `latest` ones only, when given), then its invoice."""
        rows = self._db.execute(
            "SELECT sequence, record FROM payment_documents WHERE agreement_id = ? ORDER BY rowid DESC LIMIT ?",
            (agreement_id, -1 if latest is None else latest + 1),  # the invoice, when there is one, is the last row
        ).fetchall()[::-1]
        documents = [(sequence, _document_from(json.loads(record))) for sequence, record in rows]
        return sorted(documents, key=lambda item: (item[1].draft.kind is DocumentKind.INVOICE, item[1].draft.sequence))

    def last_payment_sequence(self) -> int:
        (documents,) = self._db.execute("SELECT MAX(sequence) FROM payment_documents").fetchone()
        (credits,) = self._db.execute("SELECT value FROM payment_counters WHERE name = 'credit'").fetchone() or (0,)
        return max(documents or 0, credits or 0)

    def number_credit(self, transaction_hash: str, sequence: int) -> None:
        """Keeps the number a credit was told under, so that a restarted daemon never reuses it."""
        self._db.execute("INSERT INTO payment_counters (name, value) VALUES ('credit', ?) "
                         "ON CONFLICT (name) DO UPDATE SET value = MAX(value, excluded.value)", (sequence,))

    def credit_payment(self, payment: CreditedPayment) -> bool:
        """Atomic on the transaction hash: of two credits of one transaction, the second finds it
        there and records nothing."""
        try:
            self._db.execute(
                "INSERT INTO credited_payments (transaction_hash, agreement_id, record) VALUES (?, ?, ?)",
                (payment.transaction_hash, payment.agreement_id, json.dumps(_credit_record(payment))),
            )
        except sqlite3.IntegrityError:
            return False
        return True

    def credited_payments(self, agreement_id: str) -> list[CreditedPayment]:
        rows = self._db.execute(
            "SELECT record FROM credited_payments WHERE agreement_id = ? ORDER BY rowid", (agreement_id,)
        ).fetchall()
        return [_credit_from(json.loads(record)) for (record,) in rows]

    def credited_agreement(self, transaction_hash: str) -> str | None:
        row = self._db.execute(
            "SELECT agreement_id FROM credited_payments WHERE transaction_hash = ?", (transaction_hash,)
        ).fetchone()
        return row[0] if row else None

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


def _choice_from(record: dict[str, Any]) -> PaymentChoice:
    return PaymentChoice(**{**record, "payer_proof": bytes.fromhex(record.get("payer_proof", ""))})


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
            "payment": {**vars(demand.payment), "payer_proof": demand.payment.payer_proof.hex()}
                       if demand.payment is not None else None,
        },
        "pricing": vars(agreement.pricing),
        "reserved": vars(agreement.reserved),
        "created": _time(agreement.created),
        "state": agreement.state.value,
        "termination_reason": agreement.termination_reason,
        "termination_message": agreement.termination_message,
        "activity_ids": list(agreement.activity_ids),
        "spent": {**vars(agreement.spent), "last_ended": _time(agreement.spent.last_ended)},
        "payment": vars(agreement.payment),
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
            payment=_choice_from(demand["payment"]) if demand.get("payment") else None,
        ),
        pricing=LinearPricing(**record["pricing"]),
        reserved=Resources(**record["reserved"]),
        created=_parse_time(record["created"]),  # type: ignore[arg-type]
        state=AgreementState(record["state"]),
        termination_reason=record["termination_reason"],
        termination_message=record["termination_message"],
        activity_ids=list(record["activity_ids"]),
        spent=_spent_from(record.get("spent")),  # absent in records of daemons before multi-activity
        payment=AgreedPayment(**record.get("payment") or {}),  # absent in records of daemons before payments
    )


def _spent_from(stored: dict[str, Any] | None) -> Spent:
    if not stored:
        return Spent()
    return Spent(cpu_seconds=stored["cpu_seconds"], duration_seconds=stored["duration_seconds"],
                 counters=dict(stored["counters"]), billed=list(stored["billed"]),
                 last_ended=_parse_time(stored["last_ended"]))


def _bytes(value: bytes) -> str:
    return base64.b64encode(value).decode()


def _from_bytes(value: str) -> bytes:
    return base64.b64decode(value)


def _document_record(document: PaymentDocument) -> dict[str, Any]:
    draft = document.draft
    return {
        "v": RECORD_VERSION,
        "draft": {
            "kind": draft.kind.value,
            "document_id": draft.document_id,
            "agreement_id": draft.agreement_id,
            "requestor_id": draft.requestor_id,
            "amount": str(draft.amount),
            "usage": vars(draft.usage),
            "issued": _time(draft.issued),
            "payment": vars(draft.payment),
            "activity_ids": list(draft.activity_ids),
            "sequence": draft.sequence,
            "previous_id": draft.previous_id,
            "payment_due": _time(draft.payment_due),
        },
        "sealed": {"body": _bytes(document.sealed.body), "signature": _bytes(document.sealed.signature)},
        "state": document.state.value,
        "acceptance_signature": _bytes(document.acceptance_signature),
        "rejection_reason": document.rejection_reason,
    }


def _document_from(record: dict[str, Any]) -> PaymentDocument:
    draft, sealed = record["draft"], record["sealed"]
    usage = draft["usage"]
    return PaymentDocument(
        draft=DocumentDraft(
            kind=DocumentKind(draft["kind"]),
            document_id=draft["document_id"],
            agreement_id=draft["agreement_id"],
            requestor_id=draft["requestor_id"],
            amount=Decimal(draft["amount"]),
            usage=UsageFigures(cpu_seconds=usage["cpu_seconds"], duration_seconds=usage["duration_seconds"],
                               counters=dict(usage["counters"])),
            issued=_parse_time(draft["issued"]),  # type: ignore[arg-type]
            payment=AgreedPayment(**draft["payment"]),
            activity_ids=tuple(draft["activity_ids"]),
            sequence=draft["sequence"],
            previous_id=draft["previous_id"],
            payment_due=_parse_time(draft["payment_due"]),
        ),
        sealed=Sealed(body=_from_bytes(sealed["body"]), signature=_from_bytes(sealed["signature"])),
        state=DocumentState(record["state"]),
        acceptance_signature=_from_bytes(record["acceptance_signature"]),
        rejection_reason=record["rejection_reason"],
    )


def _credit_record(payment: CreditedPayment) -> dict[str, Any]:
    return {"v": RECORD_VERSION, "transaction_hash": payment.transaction_hash, "agreement_id": payment.agreement_id,
            "amount": str(payment.amount), "block_number": payment.block_number}


def _credit_from(record: dict[str, Any]) -> CreditedPayment:
    return CreditedPayment(transaction_hash=record["transaction_hash"], agreement_id=record["agreement_id"],
                           amount=Decimal(record["amount"]), block_number=record["block_number"])


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
