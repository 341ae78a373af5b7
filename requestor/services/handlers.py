"""One handler of a service instance (`start`, `run`, `shutdown`) as the runner drives it: the
handler is an async generator of Scripts; each yielded script runs on the activity and its
results (or its failure, thrown in) go back into the handler. The runner
(requestor.services.runner) decides when a handler is stopped, abandoned or lost."""

from __future__ import annotations

import inspect
from collections.abc import AsyncGenerator
from typing import Any

from requestor.ctx import WorkContext
from requestor.ctx import drive_scripts as run_generator
from requestor.errors import CommandExecutionError
from requestor.script import Script
from requestor.services.service import Service


def handler_of(service: Service, name: str) -> AsyncGenerator[Script, Any]:
    """The service's `name` handler, checked to be an async generator (what the runner drives)."""
    handler = getattr(service, name)()
    if not inspect.isasyncgen(handler):
        if inspect.iscoroutine(handler):
            handler.close()  # never awaited: no warning about it
        raise TypeError(
            f"{type(service).__name__}.{name}() must be an async generator (an `async def` that yields "
            f"scripts, or at least contains a `yield`), but it returned {type(handler).__name__}"
        )
    return handler


async def drive_scripts(handler: AsyncGenerator[Script, Any], ctx: WorkContext) -> None:
    """Feeds the handler's scripts to the activity and their results back to the handler, until
    it returns (or raises: the runner reads it from this task); a failed command is thrown in."""
    await run_generator(handler, ctx, "service handlers yield Scripts from self._ctx.new_script()",
                        (CommandExecutionError,))
