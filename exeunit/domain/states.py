"""Activity states, as Golem names them."""

from __future__ import annotations

from enum import Enum


class ActivityState(Enum):
    NEW = "New"
    DEPLOYED = "Deployed"
    READY = "Ready"
    TERMINATED = "Terminated"
