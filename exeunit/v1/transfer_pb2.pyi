from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DigestAlgorithm(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DIGEST_ALGORITHM_UNSPECIFIED: _ClassVar[DigestAlgorithm]
    DIGEST_ALGORITHM_SHA256: _ClassVar[DigestAlgorithm]
    DIGEST_ALGORITHM_BLAKE3: _ClassVar[DigestAlgorithm]
DIGEST_ALGORITHM_UNSPECIFIED: DigestAlgorithm
DIGEST_ALGORITHM_SHA256: DigestAlgorithm
DIGEST_ALGORITHM_BLAKE3: DigestAlgorithm

class UploadHeader(_message.Message):
    __slots__ = ("activity_id", "path", "size", "mode", "digest")
    ACTIVITY_ID_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    activity_id: str
    path: str
    size: int
    mode: int
    digest: DigestAlgorithm
    def __init__(self, activity_id: _Optional[str] = ..., path: _Optional[str] = ..., size: _Optional[int] = ..., mode: _Optional[int] = ..., digest: _Optional[_Union[DigestAlgorithm, str]] = ...) -> None: ...

class UploadTrailer(_message.Message):
    __slots__ = ("sha256", "digest")
    SHA256_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    sha256: str
    digest: str
    def __init__(self, sha256: _Optional[str] = ..., digest: _Optional[str] = ...) -> None: ...

class UploadRequest(_message.Message):
    __slots__ = ("header", "chunk", "trailer")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    TRAILER_FIELD_NUMBER: _ClassVar[int]
    header: UploadHeader
    chunk: bytes
    trailer: UploadTrailer
    def __init__(self, header: _Optional[_Union[UploadHeader, _Mapping]] = ..., chunk: _Optional[bytes] = ..., trailer: _Optional[_Union[UploadTrailer, _Mapping]] = ...) -> None: ...

class UploadResponse(_message.Message):
    __slots__ = ("size", "sha256", "digest")
    SIZE_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    size: int
    sha256: str
    digest: str
    def __init__(self, size: _Optional[int] = ..., sha256: _Optional[str] = ..., digest: _Optional[str] = ...) -> None: ...

class DownloadRequest(_message.Message):
    __slots__ = ("activity_id", "path", "digest")
    ACTIVITY_ID_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    activity_id: str
    path: str
    digest: DigestAlgorithm
    def __init__(self, activity_id: _Optional[str] = ..., path: _Optional[str] = ..., digest: _Optional[_Union[DigestAlgorithm, str]] = ...) -> None: ...

class DownloadHeader(_message.Message):
    __slots__ = ("size", "mode")
    SIZE_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    size: int
    mode: int
    def __init__(self, size: _Optional[int] = ..., mode: _Optional[int] = ...) -> None: ...

class DownloadTrailer(_message.Message):
    __slots__ = ("sha256", "digest")
    SHA256_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    sha256: str
    digest: str
    def __init__(self, sha256: _Optional[str] = ..., digest: _Optional[str] = ...) -> None: ...

class DownloadResponse(_message.Message):
    __slots__ = ("header", "chunk", "trailer")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    TRAILER_FIELD_NUMBER: _ClassVar[int]
    header: DownloadHeader
    chunk: bytes
    trailer: DownloadTrailer
    def __init__(self, header: _Optional[_Union[DownloadHeader, _Mapping]] = ..., chunk: _Optional[bytes] = ..., trailer: _Optional[_Union[DownloadTrailer, _Mapping]] = ...) -> None: ...
