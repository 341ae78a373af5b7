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

class AgreementState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    AGREEMENT_STATE_UNSPECIFIED: _ClassVar[AgreementState]
    AGREEMENT_STATE_APPROVED: _ClassVar[AgreementState]
    AGREEMENT_STATE_TERMINATED: _ClassVar[AgreementState]

class RefusalReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REFUSAL_REASON_UNSPECIFIED: _ClassVar[RefusalReason]
    REFUSAL_REASON_SUBNET_MISMATCH: _ClassVar[RefusalReason]
    REFUSAL_REASON_INSUFFICIENT_RESOURCES: _ClassVar[RefusalReason]
    REFUSAL_REASON_MISSING_CAPABILITY: _ClassVar[RefusalReason]
    REFUSAL_REASON_IMAGE_UNAVAILABLE: _ClassVar[RefusalReason]
    REFUSAL_REASON_EXPIRATION_TOO_FAR: _ClassVar[RefusalReason]
    REFUSAL_REASON_RUNTIME_MISMATCH: _ClassVar[RefusalReason]
    REFUSAL_REASON_PAYMENT_TERMS: _ClassVar[RefusalReason]
AGREEMENT_STATE_UNSPECIFIED: AgreementState
AGREEMENT_STATE_APPROVED: AgreementState
AGREEMENT_STATE_TERMINATED: AgreementState
REFUSAL_REASON_UNSPECIFIED: RefusalReason
REFUSAL_REASON_SUBNET_MISMATCH: RefusalReason
REFUSAL_REASON_INSUFFICIENT_RESOURCES: RefusalReason
REFUSAL_REASON_MISSING_CAPABILITY: RefusalReason
REFUSAL_REASON_IMAGE_UNAVAILABLE: RefusalReason
REFUSAL_REASON_EXPIRATION_TOO_FAR: RefusalReason
REFUSAL_REASON_RUNTIME_MISMATCH: RefusalReason
REFUSAL_REASON_PAYMENT_TERMS: RefusalReason

class LinearPricing(_message.Message):
    __slots__ = ("start_fee", "per_cpu_second", "per_duration_second", "per_unit", "currency")
    class PerUnitEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    START_FEE_FIELD_NUMBER: _ClassVar[int]
    PER_CPU_SECOND_FIELD_NUMBER: _ClassVar[int]
    PER_DURATION_SECOND_FIELD_NUMBER: _ClassVar[int]
    PER_UNIT_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    start_fee: float
    per_cpu_second: float
    per_duration_second: float
    per_unit: _containers.ScalarMap[str, float]
    currency: str
    def __init__(self, start_fee: _Optional[float] = ..., per_cpu_second: _Optional[float] = ..., per_duration_second: _Optional[float] = ..., per_unit: _Optional[_Mapping[str, float]] = ..., currency: _Optional[str] = ...) -> None: ...

class Offer(_message.Message):
    __slots__ = ("provider_id", "provider_name", "subnet_tag", "runtime_name", "runtime_version", "cpu_threads", "memory_bytes", "storage_bytes", "total_cpu_threads", "total_memory_bytes", "total_storage_bytes", "pricing", "images", "accepts_image_urls", "capabilities", "max_agreement_duration", "agreement_idle_timeout", "runtimes", "limits", "overlay_port", "boot_epoch", "activity_cpu_threads", "activity_memory_bytes", "activity_storage_bytes", "payment", "transfer_digests")
    PROVIDER_ID_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_NAME_FIELD_NUMBER: _ClassVar[int]
    SUBNET_TAG_FIELD_NUMBER: _ClassVar[int]
    RUNTIME_NAME_FIELD_NUMBER: _ClassVar[int]
    RUNTIME_VERSION_FIELD_NUMBER: _ClassVar[int]
    CPU_THREADS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    STORAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    TOTAL_CPU_THREADS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    TOTAL_STORAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    PRICING_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    ACCEPTS_IMAGE_URLS_FIELD_NUMBER: _ClassVar[int]
    CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    MAX_AGREEMENT_DURATION_FIELD_NUMBER: _ClassVar[int]
    AGREEMENT_IDLE_TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    RUNTIMES_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    OVERLAY_PORT_FIELD_NUMBER: _ClassVar[int]
    BOOT_EPOCH_FIELD_NUMBER: _ClassVar[int]
    ACTIVITY_CPU_THREADS_FIELD_NUMBER: _ClassVar[int]
    ACTIVITY_MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    ACTIVITY_STORAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    PAYMENT_FIELD_NUMBER: _ClassVar[int]
    TRANSFER_DIGESTS_FIELD_NUMBER: _ClassVar[int]
    provider_id: str
    provider_name: str
    subnet_tag: str
    runtime_name: str
    runtime_version: str
    cpu_threads: int
    memory_bytes: int
    storage_bytes: int
    total_cpu_threads: int
    total_memory_bytes: int
    total_storage_bytes: int
    pricing: LinearPricing
    images: _containers.RepeatedScalarFieldContainer[str]
    accepts_image_urls: bool
    capabilities: _containers.RepeatedScalarFieldContainer[str]
    max_agreement_duration: _duration_pb2.Duration
    agreement_idle_timeout: _duration_pb2.Duration
    runtimes: _containers.RepeatedScalarFieldContainer[str]
    limits: OfferLimits
    overlay_port: int
    boot_epoch: str
    activity_cpu_threads: int
    activity_memory_bytes: int
    activity_storage_bytes: int
    payment: PaymentTerms
    transfer_digests: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, provider_id: _Optional[str] = ..., provider_name: _Optional[str] = ..., subnet_tag: _Optional[str] = ..., runtime_name: _Optional[str] = ..., runtime_version: _Optional[str] = ..., cpu_threads: _Optional[int] = ..., memory_bytes: _Optional[int] = ..., storage_bytes: _Optional[int] = ..., total_cpu_threads: _Optional[int] = ..., total_memory_bytes: _Optional[int] = ..., total_storage_bytes: _Optional[int] = ..., pricing: _Optional[_Union[LinearPricing, _Mapping]] = ..., images: _Optional[_Iterable[str]] = ..., accepts_image_urls: _Optional[bool] = ..., capabilities: _Optional[_Iterable[str]] = ..., max_agreement_duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., agreement_idle_timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., runtimes: _Optional[_Iterable[str]] = ..., limits: _Optional[_Union[OfferLimits, _Mapping]] = ..., overlay_port: _Optional[int] = ..., boot_epoch: _Optional[str] = ..., activity_cpu_threads: _Optional[int] = ..., activity_memory_bytes: _Optional[int] = ..., activity_storage_bytes: _Optional[int] = ..., payment: _Optional[_Union[PaymentTerms, _Mapping]] = ..., transfer_digests: _Optional[_Iterable[str]] = ...) -> None: ...

class PaymentTerms(_message.Message):
    __slots__ = ("platforms", "debit_note_interval", "min_debit_note_interval", "payment_timeout", "min_payment_timeout", "debit_note_accept_timeout", "provider_public_key")
    PLATFORMS_FIELD_NUMBER: _ClassVar[int]
    DEBIT_NOTE_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    MIN_DEBIT_NOTE_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    PAYMENT_TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    MIN_PAYMENT_TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    DEBIT_NOTE_ACCEPT_TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    platforms: _containers.RepeatedCompositeFieldContainer[PaymentPlatform]
    debit_note_interval: _duration_pb2.Duration
    min_debit_note_interval: _duration_pb2.Duration
    payment_timeout: _duration_pb2.Duration
    min_payment_timeout: _duration_pb2.Duration
    debit_note_accept_timeout: _duration_pb2.Duration
    provider_public_key: bytes
    def __init__(self, platforms: _Optional[_Iterable[_Union[PaymentPlatform, _Mapping]]] = ..., debit_note_interval: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., min_debit_note_interval: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., payment_timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., min_payment_timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., debit_note_accept_timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., provider_public_key: _Optional[bytes] = ...) -> None: ...

class PaymentPlatform(_message.Message):
    __slots__ = ("platform", "chain_id", "token_address", "payee_address", "confirmations", "binding_signature")
    PLATFORM_FIELD_NUMBER: _ClassVar[int]
    CHAIN_ID_FIELD_NUMBER: _ClassVar[int]
    TOKEN_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    PAYEE_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    CONFIRMATIONS_FIELD_NUMBER: _ClassVar[int]
    BINDING_SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    platform: str
    chain_id: int
    token_address: str
    payee_address: str
    confirmations: int
    binding_signature: bytes
    def __init__(self, platform: _Optional[str] = ..., chain_id: _Optional[int] = ..., token_address: _Optional[str] = ..., payee_address: _Optional[str] = ..., confirmations: _Optional[int] = ..., binding_signature: _Optional[bytes] = ...) -> None: ...

class OfferLimits(_message.Message):
    __slots__ = ("batches_queued", "batches_kept", "batch_ids_remembered", "replay_window_bytes", "result_output_bytes", "transfers_per_activity", "transfers_per_requestor", "tunnels_per_activity", "networks_per_requestor", "tunnels_per_requestor", "streams_per_requestor", "image_fetches_per_requestor", "peers_per_network", "macs_per_network", "relay_queue_bytes", "pids_limit", "transfer_idle_timeout", "output_memory_bytes", "output_memory_per_requestor_bytes", "journal_bytes_per_activity", "image_bytes", "ended_retention", "activities_per_agreement")
    BATCHES_QUEUED_FIELD_NUMBER: _ClassVar[int]
    BATCHES_KEPT_FIELD_NUMBER: _ClassVar[int]
    BATCH_IDS_REMEMBERED_FIELD_NUMBER: _ClassVar[int]
    REPLAY_WINDOW_BYTES_FIELD_NUMBER: _ClassVar[int]
    RESULT_OUTPUT_BYTES_FIELD_NUMBER: _ClassVar[int]
    TRANSFERS_PER_ACTIVITY_FIELD_NUMBER: _ClassVar[int]
    TRANSFERS_PER_REQUESTOR_FIELD_NUMBER: _ClassVar[int]
    TUNNELS_PER_ACTIVITY_FIELD_NUMBER: _ClassVar[int]
    NETWORKS_PER_REQUESTOR_FIELD_NUMBER: _ClassVar[int]
    TUNNELS_PER_REQUESTOR_FIELD_NUMBER: _ClassVar[int]
    STREAMS_PER_REQUESTOR_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FETCHES_PER_REQUESTOR_FIELD_NUMBER: _ClassVar[int]
    PEERS_PER_NETWORK_FIELD_NUMBER: _ClassVar[int]
    MACS_PER_NETWORK_FIELD_NUMBER: _ClassVar[int]
    RELAY_QUEUE_BYTES_FIELD_NUMBER: _ClassVar[int]
    PIDS_LIMIT_FIELD_NUMBER: _ClassVar[int]
    TRANSFER_IDLE_TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_MEMORY_PER_REQUESTOR_BYTES_FIELD_NUMBER: _ClassVar[int]
    JOURNAL_BYTES_PER_ACTIVITY_FIELD_NUMBER: _ClassVar[int]
    IMAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    ENDED_RETENTION_FIELD_NUMBER: _ClassVar[int]
    ACTIVITIES_PER_AGREEMENT_FIELD_NUMBER: _ClassVar[int]
    batches_queued: int
    batches_kept: int
    batch_ids_remembered: int
    replay_window_bytes: int
    result_output_bytes: int
    transfers_per_activity: int
    transfers_per_requestor: int
    tunnels_per_activity: int
    networks_per_requestor: int
    tunnels_per_requestor: int
    streams_per_requestor: int
    image_fetches_per_requestor: int
    peers_per_network: int
    macs_per_network: int
    relay_queue_bytes: int
    pids_limit: int
    transfer_idle_timeout: _duration_pb2.Duration
    output_memory_bytes: int
    output_memory_per_requestor_bytes: int
    journal_bytes_per_activity: int
    image_bytes: int
    ended_retention: _duration_pb2.Duration
    activities_per_agreement: int
    def __init__(self, batches_queued: _Optional[int] = ..., batches_kept: _Optional[int] = ..., batch_ids_remembered: _Optional[int] = ..., replay_window_bytes: _Optional[int] = ..., result_output_bytes: _Optional[int] = ..., transfers_per_activity: _Optional[int] = ..., transfers_per_requestor: _Optional[int] = ..., tunnels_per_activity: _Optional[int] = ..., networks_per_requestor: _Optional[int] = ..., tunnels_per_requestor: _Optional[int] = ..., streams_per_requestor: _Optional[int] = ..., image_fetches_per_requestor: _Optional[int] = ..., peers_per_network: _Optional[int] = ..., macs_per_network: _Optional[int] = ..., relay_queue_bytes: _Optional[int] = ..., pids_limit: _Optional[int] = ..., transfer_idle_timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., output_memory_bytes: _Optional[int] = ..., output_memory_per_requestor_bytes: _Optional[int] = ..., journal_bytes_per_activity: _Optional[int] = ..., image_bytes: _Optional[int] = ..., ended_retention: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., activities_per_agreement: _Optional[int] = ...) -> None: ...

class ImageRef(_message.Message):
    __slots__ = ("hash", "tag", "url")
    HASH_FIELD_NUMBER: _ClassVar[int]
    TAG_FIELD_NUMBER: _ClassVar[int]
    URL_FIELD_NUMBER: _ClassVar[int]
    hash: str
    tag: str
    url: str
    def __init__(self, hash: _Optional[str] = ..., tag: _Optional[str] = ..., url: _Optional[str] = ...) -> None: ...

class Demand(_message.Message):
    __slots__ = ("image", "min_memory_bytes", "min_storage_bytes", "min_cpu_threads", "capabilities", "subnet_tag", "expiration", "runtime", "payment")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    MIN_MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    MIN_STORAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    MIN_CPU_THREADS_FIELD_NUMBER: _ClassVar[int]
    CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    SUBNET_TAG_FIELD_NUMBER: _ClassVar[int]
    EXPIRATION_FIELD_NUMBER: _ClassVar[int]
    RUNTIME_FIELD_NUMBER: _ClassVar[int]
    PAYMENT_FIELD_NUMBER: _ClassVar[int]
    image: ImageRef
    min_memory_bytes: int
    min_storage_bytes: int
    min_cpu_threads: int
    capabilities: _containers.RepeatedScalarFieldContainer[str]
    subnet_tag: str
    expiration: _timestamp_pb2.Timestamp
    runtime: str
    payment: PaymentChoice
    def __init__(self, image: _Optional[_Union[ImageRef, _Mapping]] = ..., min_memory_bytes: _Optional[int] = ..., min_storage_bytes: _Optional[int] = ..., min_cpu_threads: _Optional[int] = ..., capabilities: _Optional[_Iterable[str]] = ..., subnet_tag: _Optional[str] = ..., expiration: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., runtime: _Optional[str] = ..., payment: _Optional[_Union[PaymentChoice, _Mapping]] = ...) -> None: ...

class PaymentChoice(_message.Message):
    __slots__ = ("platform", "payer_address", "debit_note_interval", "payment_timeout", "debit_note_accept_timeout", "payer_proof")
    PLATFORM_FIELD_NUMBER: _ClassVar[int]
    PAYER_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    DEBIT_NOTE_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    PAYMENT_TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    DEBIT_NOTE_ACCEPT_TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    PAYER_PROOF_FIELD_NUMBER: _ClassVar[int]
    platform: str
    payer_address: str
    debit_note_interval: _duration_pb2.Duration
    payment_timeout: _duration_pb2.Duration
    debit_note_accept_timeout: _duration_pb2.Duration
    payer_proof: bytes
    def __init__(self, platform: _Optional[str] = ..., payer_address: _Optional[str] = ..., debit_note_interval: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., payment_timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., debit_note_accept_timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., payer_proof: _Optional[bytes] = ...) -> None: ...

class Agreement(_message.Message):
    __slots__ = ("agreement_id", "provider_id", "requestor_id", "demand", "pricing", "state", "created", "expiration", "cpu_threads", "memory_bytes", "storage_bytes", "termination_reason", "termination_message", "activity_ids", "usage", "payment")
    AGREEMENT_ID_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_ID_FIELD_NUMBER: _ClassVar[int]
    REQUESTOR_ID_FIELD_NUMBER: _ClassVar[int]
    DEMAND_FIELD_NUMBER: _ClassVar[int]
    PRICING_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    EXPIRATION_FIELD_NUMBER: _ClassVar[int]
    CPU_THREADS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    STORAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    TERMINATION_REASON_FIELD_NUMBER: _ClassVar[int]
    TERMINATION_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    ACTIVITY_IDS_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    PAYMENT_FIELD_NUMBER: _ClassVar[int]
    agreement_id: str
    provider_id: str
    requestor_id: str
    demand: Demand
    pricing: LinearPricing
    state: AgreementState
    created: _timestamp_pb2.Timestamp
    expiration: _timestamp_pb2.Timestamp
    cpu_threads: int
    memory_bytes: int
    storage_bytes: int
    termination_reason: str
    termination_message: str
    activity_ids: _containers.RepeatedScalarFieldContainer[str]
    usage: AgreementUsage
    payment: AgreedPayment
    def __init__(self, agreement_id: _Optional[str] = ..., provider_id: _Optional[str] = ..., requestor_id: _Optional[str] = ..., demand: _Optional[_Union[Demand, _Mapping]] = ..., pricing: _Optional[_Union[LinearPricing, _Mapping]] = ..., state: _Optional[_Union[AgreementState, str]] = ..., created: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., expiration: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., cpu_threads: _Optional[int] = ..., memory_bytes: _Optional[int] = ..., storage_bytes: _Optional[int] = ..., termination_reason: _Optional[str] = ..., termination_message: _Optional[str] = ..., activity_ids: _Optional[_Iterable[str]] = ..., usage: _Optional[_Union[AgreementUsage, _Mapping]] = ..., payment: _Optional[_Union[AgreedPayment, _Mapping]] = ...) -> None: ...

class AgreedPayment(_message.Message):
    __slots__ = ("platform", "chain_id", "token_address", "payee_address", "payer_address", "confirmations", "debit_note_interval", "payment_timeout", "debit_note_accept_timeout")
    PLATFORM_FIELD_NUMBER: _ClassVar[int]
    CHAIN_ID_FIELD_NUMBER: _ClassVar[int]
    TOKEN_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    PAYEE_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    PAYER_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    CONFIRMATIONS_FIELD_NUMBER: _ClassVar[int]
    DEBIT_NOTE_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    PAYMENT_TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    DEBIT_NOTE_ACCEPT_TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    platform: str
    chain_id: int
    token_address: str
    payee_address: str
    payer_address: str
    confirmations: int
    debit_note_interval: _duration_pb2.Duration
    payment_timeout: _duration_pb2.Duration
    debit_note_accept_timeout: _duration_pb2.Duration
    def __init__(self, platform: _Optional[str] = ..., chain_id: _Optional[int] = ..., token_address: _Optional[str] = ..., payee_address: _Optional[str] = ..., payer_address: _Optional[str] = ..., confirmations: _Optional[int] = ..., debit_note_interval: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., payment_timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., debit_note_accept_timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class AgreementUsage(_message.Message):
    __slots__ = ("cpu_seconds", "duration", "cost", "counters", "measured")
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
    COUNTERS_FIELD_NUMBER: _ClassVar[int]
    MEASURED_FIELD_NUMBER: _ClassVar[int]
    cpu_seconds: float
    duration: _duration_pb2.Duration
    cost: float
    counters: _containers.ScalarMap[str, float]
    measured: _timestamp_pb2.Timestamp
    def __init__(self, cpu_seconds: _Optional[float] = ..., duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., cost: _Optional[float] = ..., counters: _Optional[_Mapping[str, float]] = ..., measured: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class Refusal(_message.Message):
    __slots__ = ("reason", "message")
    REASON_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    reason: RefusalReason
    message: str
    def __init__(self, reason: _Optional[_Union[RefusalReason, str]] = ..., message: _Optional[str] = ...) -> None: ...

class GetOfferRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetOfferResponse(_message.Message):
    __slots__ = ("offer",)
    OFFER_FIELD_NUMBER: _ClassVar[int]
    offer: Offer
    def __init__(self, offer: _Optional[_Union[Offer, _Mapping]] = ...) -> None: ...

class ProposeAgreementRequest(_message.Message):
    __slots__ = ("demand",)
    DEMAND_FIELD_NUMBER: _ClassVar[int]
    demand: Demand
    def __init__(self, demand: _Optional[_Union[Demand, _Mapping]] = ...) -> None: ...

class ProposeAgreementResponse(_message.Message):
    __slots__ = ("agreement", "refusal")
    AGREEMENT_FIELD_NUMBER: _ClassVar[int]
    REFUSAL_FIELD_NUMBER: _ClassVar[int]
    agreement: Agreement
    refusal: Refusal
    def __init__(self, agreement: _Optional[_Union[Agreement, _Mapping]] = ..., refusal: _Optional[_Union[Refusal, _Mapping]] = ...) -> None: ...

class GetAgreementRequest(_message.Message):
    __slots__ = ("agreement_id",)
    AGREEMENT_ID_FIELD_NUMBER: _ClassVar[int]
    agreement_id: str
    def __init__(self, agreement_id: _Optional[str] = ...) -> None: ...

class GetAgreementResponse(_message.Message):
    __slots__ = ("agreement",)
    AGREEMENT_FIELD_NUMBER: _ClassVar[int]
    agreement: Agreement
    def __init__(self, agreement: _Optional[_Union[Agreement, _Mapping]] = ...) -> None: ...

class TerminateAgreementRequest(_message.Message):
    __slots__ = ("agreement_id", "reason", "message")
    AGREEMENT_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    agreement_id: str
    reason: str
    message: str
    def __init__(self, agreement_id: _Optional[str] = ..., reason: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class TerminateAgreementResponse(_message.Message):
    __slots__ = ("agreement",)
    AGREEMENT_FIELD_NUMBER: _ClassVar[int]
    agreement: Agreement
    def __init__(self, agreement: _Optional[_Union[Agreement, _Mapping]] = ...) -> None: ...
