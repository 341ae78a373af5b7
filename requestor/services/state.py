"""The service instance state machine, as a table of named transitions (as yapapi's)."""

from __future__ import annotations

from enum import Enum


class ServiceState(Enum):
    """The state of one service instance; `.value` is the state's name."""

    pending = "pending"
    """Not yet assigned to a provider."""
    starting = "starting"
    """An activity exists and the instance's `start` handler runs."""
    running = "running"
    """`start` finished; the `run` handler runs."""
    stopping = "stopping"
    """`run` finished or the instance was stopped; the `shutdown` handler runs."""
    terminated = "terminated"
    """No longer bound to an activity."""
    unresponsive = "unresponsive"
    """The provider stopped answering; the instance will be terminated."""
    suspended = "suspended"
    """Left running on its provider, agreement and activity kept, for a later `resume_service`."""

    def __repr__(self) -> str:
        return f"ServiceState.{self.name}"


S = ServiceState
AVAILABLE = (S.starting, S.running, S.stopping)
"""States in which the instance is bound to an activity and can be interacted with."""

TRANSITIONS: dict[str, tuple[frozenset[ServiceState], ServiceState]] = {
    "start": (frozenset({S.pending}), S.starting),
    "ready": (frozenset({S.starting}), S.running),
    "stop": (frozenset({S.running}), S.stopping),
    "terminate": (frozenset({S.pending, S.starting, S.running, S.stopping, S.terminated, S.unresponsive}), S.terminated),
    "mark_unresponsive": (frozenset({S.starting, S.running, S.stopping}), S.unresponsive),
    "restart": (frozenset(S), S.pending),
    "suspend": (frozenset({S.starting, S.running, S.stopping}), S.suspended),
}


class InvalidTransition(Exception):
    """A transition was asked for in a state it does not start from."""


def next_state(current: ServiceState, transition: str) -> ServiceState:
    """The state `transition` leads to from `current`; InvalidTransition when not allowed."""
    sources, target = TRANSITIONS[transition]
    if current not in sources:
        raise InvalidTransition(f"cannot {transition} a service instance that is {current.value}")
    return target


ServiceState.AVAILABLE = AVAILABLE  # type: ignore[attr-defined]  # as yapapi exposes it
