"""Waiting for a condition rather than for a time: poll it, bounded, and fail saying what did not come."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest


async def until(condition: Callable[[], bool], what: Callable[[], str], timeout: float = 30.0,
                every: float = 0.02) -> None:
    """Polls `condition` until it holds; after `timeout` s, fails with `what()` (said then, so it can
    tell what was seen)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout:.0f} s: {what()}")
        await asyncio.sleep(every)
