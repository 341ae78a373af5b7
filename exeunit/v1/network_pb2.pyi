from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class NetworkPeer(_message.Message):
    __slots__ = ("provider_id", "endpoint")
    PROVIDER_ID_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    provider_id: str
    endpoint: str
    def __init__(self, provider_id: _Optional[str] = ..., endpoint: _Optional[str] = ...) -> None: ...

class SetNetworkPeersRequest(_message.Message):
    __slots__ = ("network_id", "peers")
    NETWORK_ID_FIELD_NUMBER: _ClassVar[int]
    PEERS_FIELD_NUMBER: _ClassVar[int]
    network_id: str
    peers: _containers.RepeatedCompositeFieldContainer[NetworkPeer]
    def __init__(self, network_id: _Optional[str] = ..., peers: _Optional[_Iterable[_Union[NetworkPeer, _Mapping]]] = ...) -> None: ...

class RelayFrame(_message.Message):
    __slots__ = ("network_id", "peer", "sealed")
    NETWORK_ID_FIELD_NUMBER: _ClassVar[int]
    PEER_FIELD_NUMBER: _ClassVar[int]
    SEALED_FIELD_NUMBER: _ClassVar[int]
    network_id: str
    peer: str
    sealed: bytes
    def __init__(self, network_id: _Optional[str] = ..., peer: _Optional[str] = ..., sealed: _Optional[bytes] = ...) -> None: ...

class CreateNetworkRequest(_message.Message):
    __slots__ = ("network_id", "address", "gateway", "spans_providers", "peers")
    NETWORK_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    GATEWAY_FIELD_NUMBER: _ClassVar[int]
    SPANS_PROVIDERS_FIELD_NUMBER: _ClassVar[int]
    PEERS_FIELD_NUMBER: _ClassVar[int]
    network_id: str
    address: str
    gateway: str
    spans_providers: bool
    peers: _containers.RepeatedCompositeFieldContainer[NetworkPeer]
    def __init__(self, network_id: _Optional[str] = ..., address: _Optional[str] = ..., gateway: _Optional[str] = ..., spans_providers: _Optional[bool] = ..., peers: _Optional[_Iterable[_Union[NetworkPeer, _Mapping]]] = ...) -> None: ...

class NetworkMember(_message.Message):
    __slots__ = ("activity_id", "ip", "attached")
    ACTIVITY_ID_FIELD_NUMBER: _ClassVar[int]
    IP_FIELD_NUMBER: _ClassVar[int]
    ATTACHED_FIELD_NUMBER: _ClassVar[int]
    activity_id: str
    ip: str
    attached: bool
    def __init__(self, activity_id: _Optional[str] = ..., ip: _Optional[str] = ..., attached: _Optional[bool] = ...) -> None: ...

class NetworkInfo(_message.Message):
    __slots__ = ("network_id", "address", "gateway", "members")
    NETWORK_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    GATEWAY_FIELD_NUMBER: _ClassVar[int]
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    network_id: str
    address: str
    gateway: str
    members: _containers.RepeatedCompositeFieldContainer[NetworkMember]
    def __init__(self, network_id: _Optional[str] = ..., address: _Optional[str] = ..., gateway: _Optional[str] = ..., members: _Optional[_Iterable[_Union[NetworkMember, _Mapping]]] = ...) -> None: ...

class GetNetworkRequest(_message.Message):
    __slots__ = ("network_id",)
    NETWORK_ID_FIELD_NUMBER: _ClassVar[int]
    network_id: str
    def __init__(self, network_id: _Optional[str] = ...) -> None: ...

class RemoveNetworkRequest(_message.Message):
    __slots__ = ("network_id",)
    NETWORK_ID_FIELD_NUMBER: _ClassVar[int]
    network_id: str
    def __init__(self, network_id: _Optional[str] = ...) -> None: ...

class RemoveNetworkResponse(_message.Message):
    __slots__ = ("detached_activity_ids",)
    DETACHED_ACTIVITY_IDS_FIELD_NUMBER: _ClassVar[int]
    detached_activity_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, detached_activity_ids: _Optional[_Iterable[str]] = ...) -> None: ...
