"""The payment journal: every transfer the requestor signed, written down before it is sent.

A JSON-lines file, private (0600, never through a link), one object a line, appended and fsynced
before the transaction leaves this machine:

    {"v": 1, "reference": "invoice-7", "chain_id": 31337, "token": "0x…", "payer": "0x…",
     "payee": "0x…", "amount": "1.5", "nonce": 4, "tx_hash": "0x…", "raw": "0x02f8…",
     "signed_at": "2026-12-07T06:00:00+00:00"}

`reference` is the caller's name for the payment (an invoice id, an agreement and debit note):
a reference is paid at most once per chain, token and payer, whatever happens to the process; the
recorded raw transaction is sent again when the chain does not know it. A line cut short by a
crash was never sent (sending follows the fsync), so it is skipped when read.

Holding `lock()` (an flock on the file) keeps other processes and other journal objects on the
same file from signing with the same nonce meanwhile. Blocking calls: run them in a thread.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

from requestor.payment_account import open_private, sync_directory

log = logging.getLogger(__name__)

JOURNAL_FILE = "requestor-payments.jsonl"
VERSION = 1


@dataclass(frozen=True)
class JournalEntry:
    """One signed transfer: what it pays, and the transaction that pays it."""

    reference: str
    chain_id: int
    token: str
    payer: str
    payee: str
    amount: str  # token units, a decimal string
    nonce: int
    tx_hash: str
    raw: str  # the signed transaction, 0x-hex
    signed_at: str

    @property
    def raw_bytes(self) -> bytes:
        return bytes.fromhex(self.raw.removeprefix("0x"))

    def to_line(self) -> bytes:
        return (json.dumps({"v": VERSION, **asdict(self)}, separators=(",", ":")) + "\n").encode()

    @classmethod
    def from_record(cls, record: dict[str, object]) -> JournalEntry:
        if record.get("v") != VERSION:
            raise ValueError(f"journal version {record.get('v')!r}, not {VERSION}")
        entry = cls(reference=str(record["reference"]), chain_id=int(record["chain_id"]),  # type: ignore[call-overload]
                    token=str(record["token"]).lower(), payer=str(record["payer"]).lower(),
                    payee=str(record["payee"]).lower(), amount=str(Decimal(str(record["amount"]))),
                    nonce=int(record["nonce"]), tx_hash=str(record["tx_hash"]).lower(),  # type: ignore[call-overload]
                    raw=str(record["raw"]), signed_at=str(record["signed_at"]))
        entry.raw_bytes  # noqa: B018 - hex, or ValueError
        return entry


def now_text() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class PaymentJournal:
    """The journal at `path`, made on first use. Entries are read from the file on each `entries()`,
    so what another process appended is seen."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._fd: int | None = None

    def _open(self) -> int:
        if self._fd is None:
            existed = self.path.exists()
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._fd = open_private(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT)
            if not existed:
                sync_directory(self.path.parent)
        return self._fd

    def lock(self) -> _Locked:
        """`with journal.lock():` while reading what was paid, signing and appending."""
        return _Locked(self._open())

    def entries(self) -> list[JournalEntry]:
        """Every whole entry, oldest first; unreadable lines (one cut short by a crash) skipped, said
        in the log."""
        fd = self._open()
        data = os.pread(fd, os.fstat(fd).st_size, 0)
        found: list[JournalEntry] = []
        for number, line in enumerate(data.split(b"\n"), start=1):
            if not line.strip():
                continue
            try:
                found.append(JournalEntry.from_record(json.loads(line)))
            except (ValueError, KeyError, TypeError) as exc:
                log.warning("event=payment_journal_line_skipped path=%s line=%d reason=%s", self.path, number, exc)
        return found

    def append(self, entry: JournalEntry) -> None:
        """Writes `entry` as one line and puts it on disk before returning. A line left cut short
        before it is ended first, so the new one stands alone."""
        fd = self._open()
        size = os.fstat(fd).st_size
        prefix = b"\n" if size and os.pread(fd, 1, size - 1) != b"\n" else b""
        line = prefix + entry.to_line()
        written = 0
        while written < len(line):
            written += os.write(fd, line[written:])
        os.fsync(fd)

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def __del__(self) -> None:
        self.close()


class _Locked:
    def __init__(self, fd: int) -> None:
        self._fd = fd

    def __enter__(self) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_EX)

    def __exit__(self, *exc: object) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_UN)
