"""The requestor library: Golem's Service API (as yapapi's) over ExeUnit provider daemons.

    from requestor import Golem
    from requestor.services import Service, ServiceState
    from requestor.payload import vm
"""

from requestor import events
from requestor.ctx import WorkContext
from requestor.errors import CommandExecutionError, NoMatchingProviderError, RequestorError
from requestor.golem import Golem
from requestor.strategy import LeastExpensiveLinearPayuMS, MarketStrategy

__version__ = "0.1.0"

__all__ = [
    "CommandExecutionError",
    "Golem",
    "LeastExpensiveLinearPayuMS",
    "MarketStrategy",
    "NoMatchingProviderError",
    "RequestorError",
    "WorkContext",
    "events",
]
