"""The work context of one service instance: its activity, and how its scripts are executed.

A script runs as a sequence of segments: consecutive provider-side commands (deploy, start, run,
terminate) go as one batch; uploads and downloads go through the Transfer service between them.
"""

from __future__ import annotations

import asyncio
import codecs
import logging
import uuid
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from exeunit.v1.conventions import GIB
from requestor import events
from requestor.client import ActivityHandle
from requestor.errors import BatchTimeoutError, CommandExecutionError, RequestorError
from requestor.model import ActivityStatus
from requestor.script import RESULT_TEXT_CAP, Command, Receive, RemoteCommand, Run, Script, Transfer

log = logging.getLogger(__name__)


class _Output:
    """Decodes one command's stream as it arrives, keeps up to `limit` characters of text for its
    result (None: all) and counts what it drops; with `to`, writes every byte to that file too."""

    def __init__(self, limit: int | None = RESULT_TEXT_CAP, to: Path | None = None) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._parts: list[str] = []
        self._kept = 0
        self._limit = limit
        self.dropped = 0
        self._file = open(to, "wb") if to is not None else None  # noqa: SIM115 - closed at the final feed

    def feed(self, data: bytes, final: bool = False) -> str:
        if self._file is not None:
            self._file.write(data)
            if final:
                self._file.close()
        text = self._decoder.decode(data, final)
        room = len(text) if self._limit is None else max(self._limit - self._kept, 0)
        if text and room:
            self._parts.append(text[:room])
            self._kept += len(self._parts[-1])
        self.dropped += len(text) - min(room, len(text))
        return text

    def close(self) -> None:
        if self._file is not None and not self._file.closed:
            self._file.close()

    def text(self) -> str:
        return "".join(self._parts)


def _outputs_for(command: RemoteCommand) -> tuple[_Output, _Output]:
    if isinstance(command, Run):
        return (_Output(command.output_limit, command.stdout_to), _Output(command.output_limit, command.stderr_to))
    return _Output(), _Output()


# Usage counters as Golem names them (the first two are Golem's linear pricing's own).
USAGE_DURATION = "golem.usage.duration_sec"
USAGE_CPU = "golem.usage.cpu_sec"
USAGE_MEMORY = "golem.usage.gib"  # resident memory now, GiB (Golem: MAXMEM)
USAGE_STORAGE = "golem.usage.storage_gib"  # bytes in use on the activity's volumes now, GiB


@dataclass
class ActivityUsage:
    """An activity's usage counters by name, and when the provider measured them."""

    current_usage: dict[str, float] = field(default_factory=dict)
    timestamp: datetime | None = None


class WorkContext:
    """What a service handler reaches as `self._ctx`: the activity and a script factory."""

    def __init__(self, handle: ActivityHandle, job: events.Job, emit: Callable[[events.Event], None]) -> None:
        self.handle = handle
        self._job = job
        self._emit = emit

    @property
    def id(self) -> str:
        return self.handle.activity.id

    @property
    def provider_name(self) -> str:
        return self.handle.agreement.provider_name

    @property
    def provider_id(self) -> str:
        return self.handle.agreement.provider_id

    def __repr__(self) -> str:
        return f"WorkContext(activity={self.id}, provider={self.provider_name})"

    async def get_usage(self) -> ActivityUsage:
        """The activity's usage counters now (duration and cpu seconds, memory and storage)."""
        usage = await self.handle.client.usage(self.id)
        return ActivityUsage(
            {USAGE_DURATION: usage.duration_seconds, USAGE_CPU: usage.cpu_seconds,
             USAGE_MEMORY: usage.memory_bytes / GIB, USAGE_STORAGE: usage.storage_bytes / GIB, **usage.counters},
            usage.measured.astimezone() if usage.measured else None,
        )

    async def get_cost(self) -> float | None:
        """What the activity has cost so far under the agreement's pricing."""
        return (await self.handle.client.usage(self.id)).cost

    async def get_raw_state(self) -> ActivityStatus:
        """The activity's state as the provider reports it (state, reason, message)."""
        return await self.handle.client.state(self.id)

    def new_script(self, timeout: timedelta | None = None, wait_for_results: bool = True) -> Script:
        """A new, empty script for this activity."""
        return Script(self, timeout=timeout, wait_for_results=wait_for_results)

    def emit(self, event_class: type[events.Event], **fields: Any) -> None:
        """Emits an event of this activity (custom event classes included)."""
        self._emit(event_class(job=self._job, agreement=self.handle.agreement, activity=self.handle.activity, **fields))

    async def execute(self, script: Script) -> list[events.CommandExecuted]:
        """Runs a script to the end; raises CommandExecutionError at the first failed command."""
        if script._ctx is not self:
            raise RequestorError("a script can only be run by the work context that created it")
        self.emit(events.ScriptSent, script=script)
        timeout = script.timeout.total_seconds() if script.timeout else None
        try:  # asyncio.timeout, not wait_for: Python 3.11's wait_for can swallow the stop's cancellation
            async with asyncio.timeout(timeout):
                results = await self._execute(script)
        except TimeoutError:
            error = BatchTimeoutError(repr(script), f"script timed out after {timeout:g}s")
            for command in script.commands:
                command._fail(error)
            raise error from None
        self.emit(events.ScriptFinished, script=script)
        return results

    async def _execute(self, script: Script) -> list[events.CommandExecuted]:
        commands = script.commands
        results: list[events.CommandExecuted] = []
        position = 0
        try:
            while position < len(commands):
                if isinstance(commands[position], Transfer):
                    results.append(await self._transfer(script, position, commands[position]))  # type: ignore[arg-type]
                    position += 1
                    continue
                end = position
                while end < len(commands) and isinstance(commands[end], RemoteCommand):
                    end += 1
                results.extend(await self._batch(script, position, commands[position:end]))  # type: ignore[arg-type]
                position = end
        except CommandExecutionError as error:
            for command in commands[len(results):]:
                command._fail(error)
            raise
        return results

    def _executed(self, script: Script, index: int, command: Command, **fields: Any) -> events.CommandExecuted:
        event = events.CommandExecuted(
            job=self._job, agreement=self.handle.agreement, activity=self.handle.activity,
            script=script, command=command, command_index=index, **fields,
        )
        self._emit(event)
        return event

    async def _transfer(self, script: Script, index: int, command: Transfer) -> events.CommandExecuted:
        self.emit(events.CommandStarted, script=script, command=command)
        is_download = isinstance(command, Receive)
        if is_download:
            self.emit(events.DownloadStarted, script=script, command=command)
        try:
            message = await command.perform(self.handle.client, self.id)
        except CommandExecutionError as exc:
            self._executed(script, index, command, success=False, message=exc.message, return_code=-1)
            raise
        except (RequestorError, OSError, ValueError) as exc:
            self._executed(script, index, command, success=False, message=str(exc), return_code=-1)
            raise CommandExecutionError(repr(command), str(exc)) from exc
        if is_download:
            self.emit(events.DownloadFinished, script=script, command=command)
        event = self._executed(script, index, command, success=True, message=message)
        command._resolve(event)
        return event

    async def _batch(self, script: Script, first: int, commands: list[RemoteCommand]) -> list[events.CommandExecuted]:
        batch_id = f"s{script.id}-{first}-{uuid.uuid4().hex[:8]}"
        outputs = [_outputs_for(c) for c in commands]
        try:
            return await self._follow_batch(script, first, commands, batch_id, outputs)
        finally:
            for stdout, stderr in outputs:
                stdout.close()
                stderr.close()

    async def _follow_batch(self, script: Script, first: int, commands: list[RemoteCommand], batch_id: str,
                            outputs: list[tuple[_Output, _Output]]) -> list[events.CommandExecuted]:
        client = self.handle.client
        results: list[events.CommandExecuted] = []
        async for event in client.run_batch(self.id, [c.spec() for c in commands], batch_id):
            local = event.command_index
            kind = event.kind
            if kind == "batch_finished":
                break
            command = commands[local]
            stdout, stderr = outputs[local]
            if kind == "started":
                self.emit(events.CommandStarted, script=script, command=command)
            elif kind == "stdout":
                if text := stdout.feed(event.data):
                    self.emit(events.CommandStdOut, script=script, command=command, output=text)
            elif kind == "stderr":
                if text := stderr.feed(event.data):
                    self.emit(events.CommandStdErr, script=script, command=command, output=text)
            elif kind == "finished":
                done = event
                stdout.feed(b"", final=True)
                stderr.feed(b"", final=True)
                executed = self._executed(
                    script, first + local, command, success=done.success, message=done.message or None,
                    stdout=stdout.text(), stderr=stderr.text(), return_code=done.return_code,
                    stdout_truncated=stdout.dropped > 0, stderr_truncated=stderr.dropped > 0,
                    stdout_dropped=stdout.dropped, stderr_dropped=stderr.dropped,
                )
                for name, output in (("stdout", stdout), ("stderr", stderr)):
                    if output.dropped:
                        log.warning("event=output_truncated command=%r stream=%s dropped_chars=%d hint=%r",
                                    repr(command), name, output.dropped,
                                    "pass output_limit=None or stdout_to=/stderr_to= to script.run for all of it")
                results.append(executed)
                if not done.success:
                    raise CommandExecutionError(repr(command), done.message, stderr.text())
                command._resolve(executed)
        if len(results) != len(commands):
            raise CommandExecutionError(repr(commands[len(results)]), "the batch ended before this command finished")
        return results


async def drive_scripts(generator: AsyncGenerator[Script, Any], ctx: WorkContext, expected: str,
                        thrown: tuple[type[BaseException], ...]) -> None:
    """Feeds the generator's scripts to the activity and their results back to it (a future of
    the list of CommandExecuted, as yapapi sends), until it returns; what running a script raised
    is thrown in at its `yield` when it is one of `thrown` (the generator may handle it), else it
    ends the drive. `expected` says what should be yielded, for the error of a yield that is not.
    Service handlers and task workers are both driven here."""
    to_send: Any = None
    to_throw: BaseException | None = None
    while True:
        try:
            script = await (generator.athrow(to_throw) if to_throw else generator.asend(to_send))
        except StopAsyncIteration:
            return
        to_send, to_throw = None, None
        if script is None:
            continue
        if not isinstance(script, Script):
            raise TypeError(f"{expected}, not {script!r}")
        if not script.wait_for_results:
            to_send = asyncio.ensure_future(ctx.execute(script))
            to_send.add_done_callback(lambda f: f.cancelled() or f.exception())
            continue
        try:
            results = await ctx.execute(script)
        except thrown as exc:
            to_throw = exc
            continue
        done: asyncio.Future[list[events.CommandExecuted]] = asyncio.get_running_loop().create_future()
        done.set_result(results)
        to_send = done
