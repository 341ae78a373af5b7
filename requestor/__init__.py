"""The requestor library: Golem's Service API (as yapapi's) over ExeUnit provider daemons.

    from requestor import Golem
    from requestor.services import Service, ServiceState
    from requestor.payload import vm
"""

__version__ = "0.1.0"  # before the imports: requestor.log reads it

from requestor import events  # noqa: E402
from requestor.ctx import WorkContext  # noqa: E402
from requestor.errors import (  # noqa: E402
    BatchTimeoutError, CommandExecutionError, NoMatchingProviderError, NoPaymentAccountError, RequestorError,
)
from requestor.golem import Golem  # noqa: E402
from requestor.strategy import LeastExpensiveLinearPayuMS, MarketStrategy  # noqa: E402


def windows_event_loop_fix() -> None:
    """yapapi's fix for asyncio on Windows before Python 3.8; nothing to fix here (3.11+, Linux)."""

__all__ = [
    "BatchTimeoutError",
    "CommandExecutionError",
    "Golem",
    "LeastExpensiveLinearPayuMS",
    "MarketStrategy",
    "NoMatchingProviderError",
    "NoPaymentAccountError",
    "RequestorError",
    "WorkContext",
    "events",
    "windows_event_loop_fix",
]
