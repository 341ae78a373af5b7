"""gRPC status codes as the requestor's exceptions: the one place where a failed call becomes one."""

from __future__ import annotations

import grpc

from requestor.errors import ProviderCallError, ProviderUnreachableError, RequestorError

UNREACHABLE_CODES = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


def from_rpc_error(method: str, address: str, exc: grpc.aio.AioRpcError) -> RequestorError:
    """Translates a failed gRPC call into this library's exceptions."""
    if exc.code() in UNREACHABLE_CODES:
        return ProviderUnreachableError(f"provider {address} did not answer {method}: {exc.details()}")
    return ProviderCallError(method, address, exc.code().name, exc.details() or "")
