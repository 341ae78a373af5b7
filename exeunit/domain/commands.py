"""ExeScript commands, validated, and the activity state each one needs and leaves behind."""

from __future__ import annotations

from dataclasses import dataclass, field

from exeunit import errors
from exeunit.domain.states import ActivityState


@dataclass(frozen=True)
class Deploy:
    """Resolve the image and create the container (New -> Deployed); with a network, the
    activity joins it at `ip` (its interface comes up at start)."""

    network_id: str = ""
    ip: str = ""


@dataclass(frozen=True)
class Start:
    """Start the container and keep it alive like a booted VM (Deployed -> Ready)."""

    args: tuple[str, ...] = ()


@dataclass(frozen=True)
class Run:
    """Run a process in the container and stream its output (Ready)."""

    entry_point: str
    args: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    workdir: str = ""
    timeout_seconds: float | None = None

    @property
    def argv(self) -> list[str]:
        return [self.entry_point, *self.args]


@dataclass(frozen=True)
class Terminate:
    """Stop and remove the container (any state -> Terminated)."""


Command = Deploy | Start | Run | Terminate

# command type -> (state it needs, state it leaves); Terminate is accepted in any live state.
TRANSITIONS: dict[type, tuple[ActivityState | None, ActivityState]] = {
    Deploy: (ActivityState.NEW, ActivityState.DEPLOYED),
    Start: (ActivityState.DEPLOYED, ActivityState.READY),
    Run: (ActivityState.READY, ActivityState.READY),
    Terminate: (None, ActivityState.TERMINATED),
}

MAX_COMMANDS = 1000


def name_of(command: Command) -> str:
    return type(command).__name__.lower()


def validate(commands: list[Command]) -> None:
    """Checks the shape of a batch; raises InvalidArgument naming the bad command."""
    if not commands:
        raise errors.InvalidArgument("a batch needs at least one command")
    if len(commands) > MAX_COMMANDS:
        raise errors.InvalidArgument(f"a batch holds at most {MAX_COMMANDS} commands, got {len(commands)}")
    for index, command in enumerate(commands):
        if isinstance(command, Run):
            _validate_run(index, command)


def _validate_run(index: int, run: Run) -> None:
    where = f"command {index} (run)"
    if not run.entry_point:
        raise errors.InvalidArgument(f"{where}: entry_point is empty")
    for part in run.argv:
        if "\x00" in part:
            raise errors.InvalidArgument(f"{where}: arguments cannot contain NUL bytes")
    for name, value in run.env.items():
        if not name or "=" in name or "\x00" in name or "\x00" in value:
            raise errors.InvalidArgument(
                f"{where}: environment variable name {name!r} is invalid (empty, or contains '=' or NUL)"
            )
    if "\x00" in run.workdir:
        raise errors.InvalidArgument(f"{where}: workdir cannot contain NUL bytes")
    if run.workdir and not run.workdir.startswith("/"):
        raise errors.InvalidArgument(f"{where}: workdir {run.workdir!r} must be an absolute path")
    if run.timeout_seconds is not None and run.timeout_seconds < 0:
        raise errors.InvalidArgument(f"{where}: timeout cannot be negative")


def check_sequence(commands: list[Command], state: ActivityState) -> None:
    """Checks the batch can run from `state`; FailedPrecondition names the state and the fix."""
    for index, command in enumerate(commands):
        needed, after = TRANSITIONS[type(command)]
        if state is ActivityState.TERMINATED:
            raise errors.FailedPrecondition(
                f"command {index} ({name_of(command)}) cannot run: the activity is Terminated"
            )
        if needed is not None and state is not needed:
            raise errors.FailedPrecondition(
                f"command {index} ({name_of(command)}) needs the activity {needed.value}, "
                f"but it would be {state.value}{_hint(needed)}"
            )
        state = after


def _hint(needed: ActivityState) -> str:
    if needed is ActivityState.READY:
        return "; deploy and start it first"
    if needed is ActivityState.DEPLOYED:
        return "; deploy it first (start comes once, after deploy)"
    return "; deploy comes once, first"
