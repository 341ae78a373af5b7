"""The requestor library: Golem's Service API (as yapapi's) over ExeUnit provider daemons.

    from requestor import Golem, Task, WorkContext
    from requestor.services import Service, ServiceState
    from requestor.payload import vm
"""

from requestor import events
from requestor.ctx import WorkContext
from requestor.errors import (
    BatchTimeoutError, CommandExecutionError, NoMatchingProviderError, NoPaymentAccountError, RequestorError,
)
from requestor.executor import Task
from requestor.golem import Golem
from requestor.strategy import LeastExpensiveLinearPayuMS, MarketStrategy
from requestor.version import __version__


def windows_event_loop_fix() -> None:
    """yapapi's fix for asyncio on Windows before Python 3.8; nothing to fix here (3.11+, Linux)."""

__all__ = [
    "__version__",
    "BatchTimeoutError",
    "CommandExecutionError",
    "Golem",
    "LeastExpensiveLinearPayuMS",
    "MarketStrategy",
    "NoMatchingProviderError",
    "NoPaymentAccountError",
    "RequestorError",
    "Task",
    "WorkContext",
    "events",
    "windows_event_loop_fix",
]
