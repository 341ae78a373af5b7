"""Where a provider's batch journals live: JOURNALS/ACTIVITY/BATCH/ (exeunit.persistence.journal).

Every provider journals its batches, so that output beyond a small in-memory tail is on disk: in
its home when it has one (and then a restarted daemon replays them), else in a temporary directory
of its own, removed when it closes.
"""

from __future__ import annotations

import bisect
import hashlib
import os
import shutil
import sys
import tempfile
from array import array
from pathlib import Path

from exeunit.domain.batch import BatchJournal, Replayed
from exeunit.persistence.journal import SegmentedJournal

FORGOTTEN_FILE = "forgotten-batch-ids"  # in ACTIVITY/: a 16-byte key, then 8 bytes per forgotten id
KEY_BYTES = 16


class JournalDirectory:
    def __init__(self, root: Path | None = None) -> None:
        self._owned = root is None  # a temporary one: it goes with the provider
        self.root = root if root is not None else Path(tempfile.mkdtemp(prefix="exeunit-journals-"))

    def open(self, activity_id: str, batch_id: str) -> BatchJournal:
        return SegmentedJournal(self.directory(activity_id, batch_id))

    def replay(self, activity_id: str, batch_id: str) -> Replayed:
        return SegmentedJournal.replay(self.directory(activity_id, batch_id))

    def directory(self, activity_id: str, batch_id: str | None = None) -> Path:
        """A batch's journal directory, or with no batch id, all of the activity's."""
        return self.root / activity_id / batch_id if batch_id is not None else self.root / activity_id

    def forgotten_ids(self, activity_id: str) -> ForgottenIds:
        return ForgottenIds(self.root / activity_id / FORGOTTEN_FILE)

    def activity_ids(self) -> list[str]:
        """The activities that have journals here (a restarted daemon removes those it does not run)."""
        return [entry.name for entry in self.root.iterdir() if entry.is_dir()] if self.root.exists() else []

    def close(self) -> None:
        if self._owned:
            shutil.rmtree(self.root, ignore_errors=True)


class ForgottenIds:
    """The ids of an activity's batches that were run and forgotten, so that none runs twice: a
    keyed 64-bit hash each (8 bytes, in memory and on disk), taken up again after a restart.
    A false match needs a 64-bit collision under a key nobody outside this daemon knows."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._hashes = array("Q")
        self._key = b""
        if path.exists():
            data = path.read_bytes()
            self._key = data[:KEY_BYTES]
            stored = data[KEY_BYTES:len(data) - (len(data) - KEY_BYTES) % 8]
            self._hashes.frombytes(stored)
            if sys.byteorder == "big":  # written little-endian
                self._hashes.byteswap()
            self._hashes = array("Q", sorted(self._hashes))
        if len(self._key) != KEY_BYTES:
            self._key = os.urandom(KEY_BYTES)
            self._hashes = array("Q")

    def __len__(self) -> int:
        return len(self._hashes)

    def _hash(self, batch_id: str) -> int:
        digest = hashlib.blake2b(batch_id.encode(), key=self._key, digest_size=8).digest()
        return int.from_bytes(digest, "little")

    def __contains__(self, batch_id: object) -> bool:
        if not isinstance(batch_id, str) or not self._hashes:
            return False
        value = self._hash(batch_id)
        index = bisect.bisect_left(self._hashes, value)
        return index < len(self._hashes) and self._hashes[index] == value

    def add(self, batch_id: str) -> None:
        value = self._hash(batch_id)
        bisect.insort(self._hashes, value)
        self._path.parent.mkdir(parents=True, exist_ok=True)
        fresh = not self._path.exists()
        with open(self._path, "ab") as record:
            if fresh:
                record.write(self._key)
            record.write(value.to_bytes(8, "little"))
