"""Where yapapi keeps CommandExecutionError and BatchTimeoutError (scripts import them from
here); the classes live in requestor.errors."""

from requestor.errors import BatchTimeoutError, CommandExecutionError

__all__ = ["BatchTimeoutError", "CommandExecutionError"]
