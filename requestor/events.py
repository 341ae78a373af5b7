"""Events of a Golem computation, with yapapi's names and fields.

Every important step emits an event to the consumers given to `Golem(event_consumer=...)` or
`golem.add_event_consumer(...)`. Events are read-only records; only leaf classes are emitted.
Where yapapi carries its REST objects (agreement, activity), these carry requestor.model's records.

    Event
        JobEvent: JobStarted, JobFinished, ProposalReceived, ProposalRejected, NoProposalsConfirmed
            AgreementEvent: AgreementCreated, AgreementConfirmed, AgreementRejected,
                            AgreementTerminated, ActivityCreateFailed, WorkerStarted, PaymentFailed
                InvoiceEvent: InvoiceReceived, InvoiceAccepted
                DebitNoteEvent: DebitNoteReceived, DebitNoteAccepted
                ActivityEvent: ActivityCreated, WorkerFinished
                    TaskEvent: TaskStarted, TaskFinished, TaskAccepted, TaskRejected, TaskFailed
                    ServiceEvent: ServiceStateChanged, ServiceFinished
                    ScriptEvent: ScriptSent, GettingResults, ScriptFinished
                        CommandEvent: CommandStarted, CommandStdOut, CommandStdErr,
                                      CommandExecuted, DownloadStarted, DownloadFinished
        ShutdownFinished, ExecutionInterrupted
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from datetime import datetime, timedelta
from decimal import Decimal
from types import TracebackType
from typing import Any, Optional

from requestor.model import Activity, Agreement, Job, Offer

ExcInfo = tuple[type[BaseException], BaseException, Optional[TracebackType]]

# Events sit below what emits them: the instance, task, script and command they are about are typed
# Any here (a requestor.services.Service, a requestor.executor.Task, a requestor.script.Script or
# Command, a ServiceState).


@dataclass(kw_only=True, repr=False)
class Event:
    exc_info: ExcInfo | None = None
    timestamp: datetime = field(default_factory=datetime.now)

    @property
    def exception(self) -> BaseException | None:
        return self.exc_info[1] if self.exc_info else None

    def __repr__(self) -> str:
        parts = []
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "exc_info":
                if value:
                    parts.append(f"exception={value[1]!r}")
            elif f.name != "timestamp":
                parts.append(f"{f.name}={value!r}")
        return f"{type(self).__name__}({', '.join(parts)})"

    __str__ = __repr__


@dataclass(kw_only=True, repr=False)
class JobEvent(Event):
    job: Job

    @property
    def job_id(self) -> str:
        return self.job.id


@dataclass(kw_only=True, repr=False)
class AgreementEvent(JobEvent):
    agreement: Agreement

    @property
    def agr_id(self) -> str:
        return self.agreement.id

    @property
    def provider_id(self) -> str:
        return self.agreement.provider_id

    @property
    def provider_name(self) -> str:
        return self.agreement.provider_name


@dataclass(kw_only=True, repr=False)
class ActivityEvent(AgreementEvent):
    activity: Activity


@dataclass(kw_only=True, repr=False)
class TaskEvent(ActivityEvent):
    """An event of one attempt at a task, on the worker's activity."""

    task: Any

    @property
    def task_id(self) -> str:
        return str(self.task.id)

    @property
    def task_data(self) -> Any:
        return self.task.data


@dataclass(kw_only=True, repr=False)
class ServiceEvent(JobEvent):
    """An event of a service instance; agreement and activity are None while it has none."""

    service: Any
    agreement: Agreement | None = None
    activity: Activity | None = None


@dataclass(kw_only=True, repr=False)
class ScriptEvent(ActivityEvent):
    script: Any

    @property
    def script_id(self) -> int:
        return self.script.id


@dataclass(kw_only=True, repr=False)
class CommandEvent(ScriptEvent):
    command: Any


class JobStarted(JobEvent):
    pass


class JobFinished(JobEvent):
    """The job is done; it failed when `exception` is set."""


@dataclass(kw_only=True, repr=False)
class ProposalReceived(JobEvent):
    proposal: Offer

    @property
    def provider_id(self) -> str:
        return self.proposal.provider_id


@dataclass(kw_only=True, repr=False)
class ProposalRejected(JobEvent):
    """An offer was not taken, because of `reason`."""

    proposal: Offer | None = None
    address: str = ""
    reason: str | None = None


@dataclass(kw_only=True, repr=False)
class NoProposalsConfirmed(JobEvent):
    timeout: timedelta
    reason: str = ""


class AgreementCreated(AgreementEvent):
    pass


class AgreementConfirmed(AgreementEvent):
    pass


@dataclass(kw_only=True, repr=False)
class AgreementRejected(AgreementEvent):
    reason: str = ""


@dataclass(kw_only=True, repr=False)
class AgreementTerminated(AgreementEvent):
    reason: dict[str, str]


@dataclass(kw_only=True, repr=False)
class InvoiceEvent(AgreementEvent):
    """About the invoice a provider issued at the agreement's end (a requestor.payments_model.Invoice);
    `amount` is its amount (settled against the budget once accepted)."""

    invoice: Any = None
    amount: Decimal = Decimal(0)

    def __post_init__(self) -> None:
        if self.invoice is not None and not self.amount:
            self.amount = self.invoice.amount


class InvoiceReceived(InvoiceEvent):
    pass


class InvoiceAccepted(InvoiceEvent):
    pass


@dataclass(kw_only=True, repr=False)
class DebitNoteEvent(AgreementEvent):
    """About a debit note a provider issued while the agreement runs (a
    requestor.payments_model.DebitNote); `amount` is its total amount due."""

    debit_note: Any

    @property
    def amount(self) -> Decimal:
        return self.debit_note.total_amount_due


class DebitNoteReceived(DebitNoteEvent):
    pass


class DebitNoteAccepted(DebitNoteEvent):
    pass


class PaymentFailed(AgreementEvent):
    """A debit note or an invoice was not accepted; `exc_info` says why."""


class ActivityCreateFailed(AgreementEvent):
    pass


class ActivityCreated(ActivityEvent):
    pass


class WorkerStarted(AgreementEvent):
    """A task worker got an agreement; its activity comes next."""


class WorkerFinished(ActivityEvent):
    """A task worker ended; it failed when `exception` is set (its tasks go to other workers)."""


class TaskStarted(TaskEvent):
    pass


class TaskFinished(TaskEvent):
    pass


class TaskAccepted(TaskEvent):
    @property
    def result(self) -> Any:
        return self.task.result


@dataclass(kw_only=True, repr=False)
class TaskRejected(TaskEvent):
    reason: str | None


@dataclass(kw_only=True, repr=False)
class TaskFailed(TaskEvent):
    """Not yapapi's: the task used its last attempt (`Task(max_attempts=...)`) and is given up;
    `reason` says how its last attempt ended. The job's iterator raises TaskFailedError at its end."""

    reason: str


@dataclass(kw_only=True, repr=False)
class ServiceStateChanged(ServiceEvent):
    old: Any
    new: Any


class ServiceFinished(ServiceEvent):
    pass


class ScriptSent(ScriptEvent):
    pass


class GettingResults(ScriptEvent):
    pass


class ScriptFinished(ScriptEvent):
    pass


class CommandStarted(CommandEvent):
    pass


@dataclass(kw_only=True, repr=False)
class CommandStdOut(CommandEvent):
    output: str


@dataclass(kw_only=True, repr=False)
class CommandStdErr(CommandEvent):
    output: str


@dataclass(kw_only=True, repr=False)
class CommandExecuted(CommandEvent):
    """A command's result: what the script's awaitables resolve to."""

    success: bool
    message: str | None = None
    stdout: str | None = None
    stderr: str | None = None
    return_code: int = 0
    command_index: int = 0
    # Set when the result kept less than the command printed (see Script.run's output_limit).
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    stdout_dropped: int = 0  # characters not kept
    stderr_dropped: int = 0


class DownloadStarted(CommandEvent):
    @property
    def path(self) -> str:
        return str(getattr(self.command, "src_path", ""))


class DownloadFinished(CommandEvent):
    @property
    def path(self) -> str:
        return str(getattr(self.command, "dst_path", ""))


class ShutdownFinished(Event):
    """Golem completed its shutdown."""


class ExecutionInterrupted(Event):
    """Golem was stopped by an exception raised outside of its own code."""
