"""Where a provider's batch journals live: JOURNALS/ACTIVITY/BATCH/ (exeunit.persistence.journal).

Every provider journals its batches, so that output beyond a small in-memory tail is on disk: in
its home when it has one (and then a restarted daemon replays them), else in a temporary directory
of its own, removed when it closes.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from exeunit.domain.batch import BatchJournal, Replayed
from exeunit.persistence.journal import SegmentedJournal


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

    def activity_ids(self) -> list[str]:
        """The activities that have journals here (a restarted daemon removes those it does not run)."""
        return [entry.name for entry in self.root.iterdir() if entry.is_dir()] if self.root.exists() else []

    def close(self) -> None:
        if self._owned:
            shutil.rmtree(self.root, ignore_errors=True)
