"""Golem's test-counters runtime, as yapapi's custom-usage-counter example uses it: `sleep MS` is
not run in the container but waited out by the provider and counted, in seconds, in
CUSTOM_COUNTER, which the agreement prices per unit. Other commands run as in docker-vm."""

from __future__ import annotations

import asyncio

from exeunit.domain.commands import Run
from exeunit.v1.conventions import CUSTOM_COUNTER, TEST_COUNTERS_RUNTIME

MAX_COUNTED_SLEEP_MS = 3_600_000


def is_counted_sleep(runtime: str, run: Run) -> bool:
    return runtime == TEST_COUNTERS_RUNTIME and run.entry_point == "sleep"


async def counted_sleep(run: Run, counters: dict[str, float]) -> tuple[int, str]:
    """Waits out `sleep MS` (at most the command's timeout) and counts it in `counters`; returns
    (return code, failure message or "")."""
    try:
        [milliseconds] = [int(arg) for arg in run.args]
    except ValueError:
        return -1, "sleep takes one whole number of milliseconds (the test-counters runtime's sleep)"
    if not 0 <= milliseconds <= MAX_COUNTED_SLEEP_MS:
        return -1, f"sleep takes 0 to {MAX_COUNTED_SLEEP_MS} milliseconds"
    seconds = milliseconds / 1000
    if run.timeout_seconds and seconds > run.timeout_seconds:
        await asyncio.sleep(run.timeout_seconds)
        counters[CUSTOM_COUNTER] = counters.get(CUSTOM_COUNTER, 0.0) + run.timeout_seconds
        return -1, f"timed out after {run.timeout_seconds:g}s and was killed"
    await asyncio.sleep(seconds)
    counters[CUSTOM_COUNTER] = counters.get(CUSTOM_COUNTER, 0.0) + seconds
    return 0, ""
