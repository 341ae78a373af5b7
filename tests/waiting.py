"""Waiting for a condition rather than for a time: poll it, bounded, and fail saying what did not come."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable

import pytest


async def until(condition: Callable[[], bool | Awaitable[bool]], what: Callable[[], str], timeout: float = 30.0,
                every: float = 0.02) -> None:
    """Polls `condition` (a function, or a coroutine function when finding out needs a call to the
    daemon) until it holds; after `timeout` s, fails with `what()` (said then, so it can tell what
    was seen)."""
    deadline = time.monotonic() + timeout
    while True:
        held = condition()
        if inspect.isawaitable(held):
            held = await held
        if held:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout:.0f} s: {what()}")
        await asyncio.sleep(every)
