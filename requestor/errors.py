"""The requestor's exceptions, under one root. Failed provider calls become them in requestor.client.status."""

from __future__ import annotations

from datetime import timedelta
from typing import Any


class RequestorError(Exception):
    """Root of every error this library raises on purpose."""


class CommandExecutionError(RequestorError):
    """A command of a script failed on the provider; raised into the handler at its `yield`.

    `command` describes the command, `message` says why it failed, `stderr` holds what it printed.
    """

    def __init__(self, command: str, message: str | None = None, stderr: str | None = None) -> None:
        self.command = command
        self.message = message
        self.stderr = stderr
        detail = f"Command '{command}' failed on provider"
        if message:
            detail += f"; message: '{message}'"
        if stderr:
            detail += f"; stderr: '{stderr.strip()[-2000:]}'"
        super().__init__(detail)


class BatchTimeoutError(CommandExecutionError):
    """A script ran longer than its `timeout` (`ctx.new_script(timeout=...)`)."""


class NoPaymentAccountError(RequestorError):
    """yapapi's error: no payment account usable for `required_driver` on `required_network`.
    The payment driver (requestor.payment_driver) raises it when the account cannot pay there:
    the endpoint serves another chain, the token balance is below the budget, no coin for gas;
    `reason` (and a line logged before) says which and what to do."""

    required_driver: str
    required_network: str

    def __init__(self, required_driver: str, required_network: str, *, reason: str = "") -> None:
        self.required_driver = required_driver
        self.required_network = required_network
        self.reason = reason
        super().__init__(required_driver, required_network)

    def __str__(self) -> str:
        return (f"No payment account available for driver `{self.required_driver}`"
                f" and network `{self.required_network}`")


class PackageException(RequestorError):
    """A payload definition is inconsistent (for example an image_url without its image_hash)."""


class NoMatchingProviderError(RequestorError):
    """No configured provider can serve the demand; the message lists each one's reason."""


class BudgetExceededError(RequestorError):
    """The remaining budget cannot cover another agreement."""


class ActivityTerminatedError(RequestorError):
    """The provider ended the activity (agreement terminated or expired, container died)."""

    def __init__(self, reason: str, message: str) -> None:
        self.reason = reason
        super().__init__(f"the provider terminated the activity ({reason}): {message}")


class ProviderUnreachableError(RequestorError):
    """The provider stopped answering."""


class ProviderCallError(RequestorError):
    """A call to a provider failed; `code` names its status (as gRPC does: "RESOURCE_EXHAUSTED"),
    `details` says why."""

    def __init__(self, method: str, address: str, code: str, details: str) -> None:
        self.method = method
        self.address = address
        self.code = code
        self.details = details
        super().__init__(f"{method} on provider {address} failed: {code}: {details}")


class ProviderRestartedError(ProviderCallError):
    """The provider's daemon started again since this client learned its boot epoch, and refused
    a call signed for the earlier start; the client has learned the new one. Calls it can repeat by
    itself it does so once; an upload, whose chunks it cannot read twice, raises this: send it
    again (requestor.script does)."""


class TaskTimeoutError(RequestorError):
    """An attempt at a task ran past its `attempt_timeout`: its worker is stopped, its activity
    destroyed and its agreement ended, and the task goes to another worker (while it has attempts)."""

    def __init__(self, task: object, seconds: float) -> None:
        self.task = task
        self.seconds = seconds
        super().__init__(f"{task!r} was not done within its attempt timeout of {seconds:g}s")


class TaskFailedError(RequestorError):
    """Raised by `execute_tasks`' iterator at the job's end (after every accepted task was yielded)
    when tasks used all their attempts; `tasks` are those tasks, each with its `failure`."""

    def __init__(self, tasks: list[Any]) -> None:
        self.tasks = tasks
        named = "; ".join(f"{t!r} after {t.attempts} attempt(s): {t.failure}" for t in tasks[:5])
        more = f"; and {len(tasks) - 5} more" if len(tasks) > 5 else ""
        super().__init__(f"{len(tasks)} task(s) failed: {named}{more}")


class JobTimeoutError(RequestorError, TimeoutError):
    """The job ran past its `timeout` (yapapi raises TimeoutError: this is one). The message and
    the attributes say what was left undone: `running` and `waiting` tasks, and whether `data`
    still had tasks not read (`data_exhausted` false)."""

    def __init__(self, timeout: timedelta, running: list[Any], waiting: list[Any], data_exhausted: bool) -> None:
        self.timeout = timeout
        self.running = running
        self.waiting = waiting
        self.data_exhausted = data_exhausted

        def listed(tasks: list[Any]) -> str:
            ids = ", ".join(str(t.id) for t in tasks[:10])
            return f"{len(tasks)} {ids and '(ids ' + ids + (', ...' if len(tasks) > 10 else '') + ')'}".strip()

        super().__init__(
            f"Job timed out after {timeout}; left undone: {listed(running)} running, {listed(waiting)} waiting"
            + ("" if data_exhausted else ", and data not read to its end")
        )
