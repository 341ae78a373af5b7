"""Containers of one home as they die, from the engine's event stream."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)


@dataclass
class DeathWatch:
    """Iterates container ids as their containers die; `close()` from any thread ends it."""

    _stream: Any
    _closed: bool = field(default=False)

    def __iter__(self) -> Iterator[str]:
        try:
            for event in self._stream:
                container_id = event.get("id") or (event.get("Actor") or {}).get("ID")
                if container_id:
                    yield str(container_id)
        except Exception as exc:  # the engine went away, or close() cut the stream
            if not self._closed:
                log.warning("event=death_watch_ended error=%s", exc)

    def close(self) -> None:
        self._closed = True
        self._stream.close()
