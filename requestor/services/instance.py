"""One service instance as the runner drives it: its state, the exception behind its last change,
the work context of its activity and its member of a network. The runner (and its cluster) write
these; the `Service` only reads them, through its properties."""

from __future__ import annotations

from dataclasses import dataclass
from types import TracebackType
from typing import Any, Optional

from requestor.ctx import WorkContext
from requestor.network import Node
from requestor.services.state import ServiceState

ExcInfo = tuple[Optional[type[BaseException]], Optional[BaseException], Optional[TracebackType]]
NO_EXC: ExcInfo = (None, None, None)


@dataclass
class ServiceInstance:
    state: ServiceState = ServiceState.pending
    exc_info: ExcInfo = NO_EXC
    ctx: WorkContext | None = None
    network_node: Node | None = None
    cluster: Any = None  # the requestor.services.Cluster it belongs to
    started_successfully: bool = False  # it reached `running` at least once
    suspended_in: ServiceState | None = None  # the state it was suspended in (what resume takes up)

    def change_state(self, state: ServiceState) -> None:
        if state is ServiceState.suspended:
            self.suspended_in = self.state
        self.state = state
        if state is ServiceState.running:
            self.started_successfully = True

    def record_error(self, exc: BaseException | None) -> None:
        """The exception behind the next state change (None: none)."""
        self.exc_info = (type(exc), exc, exc.__traceback__) if exc is not None else NO_EXC
