"""gRPC status codes as the requestor's exceptions: the one place where a failed call becomes one."""

from __future__ import annotations

import grpc

from exeunit.v1 import identity as wire
from requestor.errors import ProviderCallError, ProviderRestartedError, ProviderUnreachableError, RequestorError

UNREACHABLE_CODES = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


def from_rpc_error(method: str, address: str, exc: grpc.aio.AioRpcError) -> RequestorError:
    """Translates a failed gRPC call into this library's exceptions."""
    if exc.code() in UNREACHABLE_CODES:
        return ProviderUnreachableError(f"provider {address} did not answer {method}: {exc.details()}")
    if restarted_as(exc) is not None:
        return ProviderRestartedError(method, address, exc.code().name, exc.details() or "")
    return ProviderCallError(method, address, exc.code().name, exc.details() or "")


def restarted_as(exc: grpc.aio.AioRpcError) -> str | None:
    """The boot epoch a provider's daemon says it runs under when it refused a proof made for an
    earlier start of it (exeunit.v1.identity.PROVIDER_EPOCH_METADATA); None for any other failure."""
    if exc.code() is not grpc.StatusCode.UNAUTHENTICATED:
        return None
    for key, value in exc.trailing_metadata() or ():
        if key == wire.PROVIDER_EPOCH_METADATA and isinstance(value, str):
            return value
    return None
