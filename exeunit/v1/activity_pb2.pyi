import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ActivityState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ACTIVITY_STATE_UNSPECIFIED: _ClassVar[ActivityState]
    ACTIVITY_STATE_NEW: _ClassVar[ActivityState]
    ACTIVITY_STATE_DEPLOYED: _ClassVar[ActivityState]
    ACTIVITY_STATE_READY: _ClassVar[ActivityState]
    ACTIVITY_STATE_TERMINATED: _ClassVar[ActivityState]

class BatchState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    BATCH_STATE_UNSPECIFIED: _ClassVar[BatchState]
    BATCH_STATE_QUEUED: _ClassVar[BatchState]
    BATCH_STATE_RUNNING: _ClassVar[BatchState]
    BATCH_STATE_SUCCEEDED: _ClassVar[BatchState]
    BATCH_STATE_FAILED: _ClassVar[BatchState]

class CommandState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    COMMAND_STATE_UNSPECIFIED: _ClassVar[CommandState]
    COMMAND_STATE_PENDING: _ClassVar[CommandState]
    COMMAND_STATE_RUNNING: _ClassVar[CommandState]
    COMMAND_STATE_SUCCEEDED: _ClassVar[CommandState]
    COMMAND_STATE_FAILED: _ClassVar[CommandState]
    COMMAND_STATE_SKIPPED: _ClassVar[CommandState]
ACTIVITY_STATE_UNSPECIFIED: ActivityState
ACTIVITY_STATE_NEW: ActivityState
ACTIVITY_STATE_DEPLOYED: ActivityState
ACTIVITY_STATE_READY: ActivityState
ACTIVITY_STATE_TERMINATED: ActivityState
BATCH_STATE_UNSPECIFIED: BatchState
BATCH_STATE_QUEUED: BatchState
BATCH_STATE_RUNNING: BatchState
BATCH_STATE_SUCCEEDED: BatchState
BATCH_STATE_FAILED: BatchState
COMMAND_STATE_UNSPECIFIED: CommandState
COMMAND_STATE_PENDING: CommandState
COMMAND_STATE_RUNNING: CommandState
COMMAND_STATE_SUCCEEDED: CommandState
COMMAND_STATE_FAILED: CommandState
COMMAND_STATE_SKIPPED: CommandState

class ListActivitiesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ActivitySummary(_message.Message):
    __slots__ = ("activity_id", "agreement_id", "requestor_id", "state", "reason", "image", "created", "started", "cpu_seconds", "memory_bytes", "storage_bytes", "executor", "network_id", "ip", "amount_due", "amount_invoiced", "amount_accepted", "amount_paid", "amount_overdue")
    ACTIVITY_ID_FIELD_NUMBER: _ClassVar[int]
    AGREEMENT_ID_FIELD_NUMBER: _ClassVar[int]
    REQUESTOR_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    STARTED_FIELD_NUMBER: _ClassVar[int]
    CPU_SECONDS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    STORAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    EXECUTOR_FIELD_NUMBER: _ClassVar[int]
    NETWORK_ID_FIELD_NUMBER: _ClassVar[int]
    IP_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_DUE_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_INVOICED_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_PAID_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_OVERDUE_FIELD_NUMBER: _ClassVar[int]
    activity_id: str
    agreement_id: str
    requestor_id: str
    state: ActivityState
    reason: str
    image: str
    created: _timestamp_pb2.Timestamp
    started: _timestamp_pb2.Timestamp
    cpu_seconds: float
    memory_bytes: int
    storage_bytes: int
    executor: str
    network_id: str
    ip: str
    amount_due: str
    amount_invoiced: str
    amount_accepted: str
    amount_paid: str
    amount_overdue: str
    def __init__(self, activity_id: _Optional[str] = ..., agreement_id: _Optional[str] = ..., requestor_id: _Optional[str] = ..., state: _Optional[_Union[ActivityState, str]] = ..., reason: _Optional[str] = ..., image: _Optional[str] = ..., created: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., started: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., cpu_seconds: _Optional[float] = ..., memory_bytes: _Optional[int] = ..., storage_bytes: _Optional[int] = ..., executor: _Optional[str] = ..., network_id: _Optional[str] = ..., ip: _Optional[str] = ..., amount_due: _Optional[str] = ..., amount_invoiced: _Optional[str] = ..., amount_accepted: _Optional[str] = ..., amount_paid: _Optional[str] = ..., amount_overdue: _Optional[str] = ...) -> None: ...

class ListActivitiesResponse(_message.Message):
    __slots__ = ("activities",)
    ACTIVITIES_FIELD_NUMBER: _ClassVar[int]
    activities: _containers.RepeatedCompositeFieldContainer[ActivitySummary]
    def __init__(self, activities: _Optional[_Iterable[_Union[ActivitySummary, _Mapping]]] = ...) -> None: ...

class TunnelRequest(_message.Message):
    __slots__ = ("open", "data", "close")
    OPEN_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    CLOSE_FIELD_NUMBER: _ClassVar[int]
    open: TunnelOpen
    data: bytes
    close: TunnelClose
    def __init__(self, open: _Optional[_Union[TunnelOpen, _Mapping]] = ..., data: _Optional[bytes] = ..., close: _Optional[_Union[TunnelClose, _Mapping]] = ...) -> None: ...

class TunnelOpen(_message.Message):
    __slots__ = ("activity_id", "port")
    ACTIVITY_ID_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    activity_id: str
    port: int
    def __init__(self, activity_id: _Optional[str] = ..., port: _Optional[int] = ...) -> None: ...

class TunnelClose(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class TunnelOpened(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class TunnelResponse(_message.Message):
    __slots__ = ("opened", "data", "closed")
    OPENED_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    CLOSED_FIELD_NUMBER: _ClassVar[int]
    opened: TunnelOpened
    data: bytes
    closed: TunnelClose
    def __init__(self, opened: _Optional[_Union[TunnelOpened, _Mapping]] = ..., data: _Optional[bytes] = ..., closed: _Optional[_Union[TunnelClose, _Mapping]] = ...) -> None: ...

class ActivityStatus(_message.Message):
    __slots__ = ("activity_id", "agreement_id", "state", "reason", "message", "changed", "executor")
    ACTIVITY_ID_FIELD_NUMBER: _ClassVar[int]
    AGREEMENT_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    CHANGED_FIELD_NUMBER: _ClassVar[int]
    EXECUTOR_FIELD_NUMBER: _ClassVar[int]
    activity_id: str
    agreement_id: str
    state: ActivityState
    reason: str
    message: str
    changed: _timestamp_pb2.Timestamp
    executor: str
    def __init__(self, activity_id: _Optional[str] = ..., agreement_id: _Optional[str] = ..., state: _Optional[_Union[ActivityState, str]] = ..., reason: _Optional[str] = ..., message: _Optional[str] = ..., changed: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., executor: _Optional[str] = ...) -> None: ...

class DeployNetwork(_message.Message):
    __slots__ = ("network_id", "ip")
    NETWORK_ID_FIELD_NUMBER: _ClassVar[int]
    IP_FIELD_NUMBER: _ClassVar[int]
    network_id: str
    ip: str
    def __init__(self, network_id: _Optional[str] = ..., ip: _Optional[str] = ...) -> None: ...

class DeployCommand(_message.Message):
    __slots__ = ("networks",)
    NETWORKS_FIELD_NUMBER: _ClassVar[int]
    networks: _containers.RepeatedCompositeFieldContainer[DeployNetwork]
    def __init__(self, networks: _Optional[_Iterable[_Union[DeployNetwork, _Mapping]]] = ...) -> None: ...

class StartCommand(_message.Message):
    __slots__ = ("args",)
    ARGS_FIELD_NUMBER: _ClassVar[int]
    args: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, args: _Optional[_Iterable[str]] = ...) -> None: ...

class RunCommand(_message.Message):
    __slots__ = ("entry_point", "args", "env", "workdir", "timeout")
    class EnvEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ENTRY_POINT_FIELD_NUMBER: _ClassVar[int]
    ARGS_FIELD_NUMBER: _ClassVar[int]
    ENV_FIELD_NUMBER: _ClassVar[int]
    WORKDIR_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    entry_point: str
    args: _containers.RepeatedScalarFieldContainer[str]
    env: _containers.ScalarMap[str, str]
    workdir: str
    timeout: _duration_pb2.Duration
    def __init__(self, entry_point: _Optional[str] = ..., args: _Optional[_Iterable[str]] = ..., env: _Optional[_Mapping[str, str]] = ..., workdir: _Optional[str] = ..., timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class TerminateCommand(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Command(_message.Message):
    __slots__ = ("deploy", "start", "run", "terminate")
    DEPLOY_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    RUN_FIELD_NUMBER: _ClassVar[int]
    TERMINATE_FIELD_NUMBER: _ClassVar[int]
    deploy: DeployCommand
    start: StartCommand
    run: RunCommand
    terminate: TerminateCommand
    def __init__(self, deploy: _Optional[_Union[DeployCommand, _Mapping]] = ..., start: _Optional[_Union[StartCommand, _Mapping]] = ..., run: _Optional[_Union[RunCommand, _Mapping]] = ..., terminate: _Optional[_Union[TerminateCommand, _Mapping]] = ...) -> None: ...

class ExecRequest(_message.Message):
    __slots__ = ("activity_id", "commands", "batch_id")
    ACTIVITY_ID_FIELD_NUMBER: _ClassVar[int]
    COMMANDS_FIELD_NUMBER: _ClassVar[int]
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    activity_id: str
    commands: _containers.RepeatedCompositeFieldContainer[Command]
    batch_id: str
    def __init__(self, activity_id: _Optional[str] = ..., commands: _Optional[_Iterable[_Union[Command, _Mapping]]] = ..., batch_id: _Optional[str] = ...) -> None: ...

class ExecResponse(_message.Message):
    __slots__ = ("batch_id", "created")
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    batch_id: str
    created: bool
    def __init__(self, batch_id: _Optional[str] = ..., created: _Optional[bool] = ...) -> None: ...

class StreamBatchEventsRequest(_message.Message):
    __slots__ = ("activity_id", "batch_id", "from_sequence")
    ACTIVITY_ID_FIELD_NUMBER: _ClassVar[int]
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    FROM_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    activity_id: str
    batch_id: str
    from_sequence: int
    def __init__(self, activity_id: _Optional[str] = ..., batch_id: _Optional[str] = ..., from_sequence: _Optional[int] = ...) -> None: ...

class CommandStarted(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class OutputChunk(_message.Message):
    __slots__ = ("data",)
    DATA_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    def __init__(self, data: _Optional[bytes] = ...) -> None: ...

class CommandFinished(_message.Message):
    __slots__ = ("return_code", "success", "message")
    RETURN_CODE_FIELD_NUMBER: _ClassVar[int]
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    return_code: int
    success: bool
    message: str
    def __init__(self, return_code: _Optional[int] = ..., success: _Optional[bool] = ..., message: _Optional[str] = ...) -> None: ...

class BatchFinished(_message.Message):
    __slots__ = ("state",)
    STATE_FIELD_NUMBER: _ClassVar[int]
    state: BatchState
    def __init__(self, state: _Optional[_Union[BatchState, str]] = ...) -> None: ...

class BatchEvent(_message.Message):
    __slots__ = ("sequence", "time", "command_index", "started", "stdout", "stderr", "finished", "batch_finished")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    COMMAND_INDEX_FIELD_NUMBER: _ClassVar[int]
    STARTED_FIELD_NUMBER: _ClassVar[int]
    STDOUT_FIELD_NUMBER: _ClassVar[int]
    STDERR_FIELD_NUMBER: _ClassVar[int]
    FINISHED_FIELD_NUMBER: _ClassVar[int]
    BATCH_FINISHED_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    time: _timestamp_pb2.Timestamp
    command_index: int
    started: CommandStarted
    stdout: OutputChunk
    stderr: OutputChunk
    finished: CommandFinished
    batch_finished: BatchFinished
    def __init__(self, sequence: _Optional[int] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., command_index: _Optional[int] = ..., started: _Optional[_Union[CommandStarted, _Mapping]] = ..., stdout: _Optional[_Union[OutputChunk, _Mapping]] = ..., stderr: _Optional[_Union[OutputChunk, _Mapping]] = ..., finished: _Optional[_Union[CommandFinished, _Mapping]] = ..., batch_finished: _Optional[_Union[BatchFinished, _Mapping]] = ...) -> None: ...

class CommandResult(_message.Message):
    __slots__ = ("index", "state", "return_code", "message", "stdout", "stderr", "stdout_truncated", "stderr_truncated", "started", "finished")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    RETURN_CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    STDOUT_FIELD_NUMBER: _ClassVar[int]
    STDERR_FIELD_NUMBER: _ClassVar[int]
    STDOUT_TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    STDERR_TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    STARTED_FIELD_NUMBER: _ClassVar[int]
    FINISHED_FIELD_NUMBER: _ClassVar[int]
    index: int
    state: CommandState
    return_code: int
    message: str
    stdout: bytes
    stderr: bytes
    stdout_truncated: bool
    stderr_truncated: bool
    started: _timestamp_pb2.Timestamp
    finished: _timestamp_pb2.Timestamp
    def __init__(self, index: _Optional[int] = ..., state: _Optional[_Union[CommandState, str]] = ..., return_code: _Optional[int] = ..., message: _Optional[str] = ..., stdout: _Optional[bytes] = ..., stderr: _Optional[bytes] = ..., stdout_truncated: _Optional[bool] = ..., stderr_truncated: _Optional[bool] = ..., started: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., finished: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class GetBatchRequest(_message.Message):
    __slots__ = ("activity_id", "batch_id")
    ACTIVITY_ID_FIELD_NUMBER: _ClassVar[int]
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    activity_id: str
    batch_id: str
    def __init__(self, activity_id: _Optional[str] = ..., batch_id: _Optional[str] = ...) -> None: ...

class GetBatchResponse(_message.Message):
    __slots__ = ("batch_id", "state", "results")
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    batch_id: str
    state: BatchState
    results: _containers.RepeatedCompositeFieldContainer[CommandResult]
    def __init__(self, batch_id: _Optional[str] = ..., state: _Optional[_Union[BatchState, str]] = ..., results: _Optional[_Iterable[_Union[CommandResult, _Mapping]]] = ...) -> None: ...

class CreateActivityRequest(_message.Message):
    __slots__ = ("agreement_id",)
    AGREEMENT_ID_FIELD_NUMBER: _ClassVar[int]
    agreement_id: str
    def __init__(self, agreement_id: _Optional[str] = ...) -> None: ...

class CreateActivityResponse(_message.Message):
    __slots__ = ("activity_id", "status")
    ACTIVITY_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    activity_id: str
    status: ActivityStatus
    def __init__(self, activity_id: _Optional[str] = ..., status: _Optional[_Union[ActivityStatus, _Mapping]] = ...) -> None: ...

class GetActivityStateRequest(_message.Message):
    __slots__ = ("activity_id",)
    ACTIVITY_ID_FIELD_NUMBER: _ClassVar[int]
    activity_id: str
    def __init__(self, activity_id: _Optional[str] = ...) -> None: ...

class GetActivityStateResponse(_message.Message):
    __slots__ = ("status",)
    STATUS_FIELD_NUMBER: _ClassVar[int]
    status: ActivityStatus
    def __init__(self, status: _Optional[_Union[ActivityStatus, _Mapping]] = ...) -> None: ...

class WatchActivityRequest(_message.Message):
    __slots__ = ("activity_id",)
    ACTIVITY_ID_FIELD_NUMBER: _ClassVar[int]
    activity_id: str
    def __init__(self, activity_id: _Optional[str] = ...) -> None: ...

class GetActivityUsageRequest(_message.Message):
    __slots__ = ("activity_id",)
    ACTIVITY_ID_FIELD_NUMBER: _ClassVar[int]
    activity_id: str
    def __init__(self, activity_id: _Optional[str] = ...) -> None: ...

class GetActivityUsageResponse(_message.Message):
    __slots__ = ("cpu_seconds", "duration", "cost", "memory_bytes", "measured", "storage_bytes", "counters")
    class CountersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    CPU_SECONDS_FIELD_NUMBER: _ClassVar[int]
    DURATION_FIELD_NUMBER: _ClassVar[int]
    COST_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    MEASURED_FIELD_NUMBER: _ClassVar[int]
    STORAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    COUNTERS_FIELD_NUMBER: _ClassVar[int]
    cpu_seconds: float
    duration: _duration_pb2.Duration
    cost: float
    memory_bytes: int
    measured: _timestamp_pb2.Timestamp
    storage_bytes: int
    counters: _containers.ScalarMap[str, float]
    def __init__(self, cpu_seconds: _Optional[float] = ..., duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., cost: _Optional[float] = ..., memory_bytes: _Optional[int] = ..., measured: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., storage_bytes: _Optional[int] = ..., counters: _Optional[_Mapping[str, float]] = ...) -> None: ...

class DestroyActivityRequest(_message.Message):
    __slots__ = ("activity_id",)
    ACTIVITY_ID_FIELD_NUMBER: _ClassVar[int]
    activity_id: str
    def __init__(self, activity_id: _Optional[str] = ...) -> None: ...

class DestroyActivityResponse(_message.Message):
    __slots__ = ("status",)
    STATUS_FIELD_NUMBER: _ClassVar[int]
    status: ActivityStatus
    def __init__(self, status: _Optional[_Union[ActivityStatus, _Mapping]] = ...) -> None: ...
