"""Where yapapi keeps CommandExecutionError; the class itself lives in requestor.errors."""

from requestor.errors import CommandExecutionError

__all__ = ["CommandExecutionError"]
