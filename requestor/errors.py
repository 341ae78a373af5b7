"""The requestor's exceptions, under one root. Failed provider calls become them in requestor.client.status."""

from __future__ import annotations


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
    """yapapi's error for a payment account that is not set up. Budgets here are accounted
    locally, so it is never raised; scripts that catch it keep working."""

    def __init__(self, required_driver: str = "", required_network: str = "") -> None:
        self.required_driver = required_driver
        self.required_network = required_network
        super().__init__(f"no payment account for driver {required_driver!r} and network {required_network!r}")


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
