"""Domain errors -> gRPC status codes, in one place, for unary and streaming handlers alike.

Also where callers are identified: every handler gets the caller's requestor id from metadata
(`x-requestor-id`), and, when the daemon has a token, checks `authorization: Bearer <token>`.
"""

from __future__ import annotations

import functools
import hmac
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from exeunit import errors

log = logging.getLogger(__name__)

REQUESTOR_ID_KEY = "x-requestor-id"
AUTHORIZATION_KEY = "authorization"

CODES: dict[type[errors.ExeUnitError], grpc.StatusCode] = {
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    errors.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    errors.PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    errors.Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    errors.ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.OutOfRange: grpc.StatusCode.OUT_OF_RANGE,
    errors.DataLoss: grpc.StatusCode.DATA_LOSS,
    errors.RuntimeFailure: grpc.StatusCode.UNAVAILABLE,
}


def code_for(exc: errors.ExeUnitError) -> grpc.StatusCode:
    for cls in type(exc).__mro__:
        if cls in CODES:
            return CODES[cls]
    return grpc.StatusCode.INTERNAL


class Caller:
    """Who is calling: checked against the daemon's token, identified by requestor id."""

    def __init__(self, token: str | None) -> None:
        self._token = token

    def identify(self, context: grpc.aio.ServicerContext) -> str:
        metadata = {key: value for key, value in (context.invocation_metadata() or ())}
        if self._token is not None:
            given = str(metadata.get(AUTHORIZATION_KEY, ""))
            if not hmac.compare_digest(given.encode(), f"Bearer {self._token}".encode()):
                raise errors.Unauthenticated(
                    "missing or wrong token: send metadata 'authorization: Bearer <token>' with the "
                    "daemon's --auth-token-file secret"
                )
        requestor_id = str(metadata.get(REQUESTOR_ID_KEY, "")).strip()
        if not requestor_id:
            raise errors.Unauthenticated(f"identify yourself with the {REQUESTOR_ID_KEY!r} metadata key")
        return requestor_id


def unary(handler: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """Wraps a unary handler(self, request, context, requestor_id): identifies the caller and
    turns domain errors into status codes."""

    @functools.wraps(handler)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            requestor_id = self.caller.identify(context)
            return await handler(self, request, context, requestor_id)
        except errors.ExeUnitError as exc:
            await _abort(context, exc)

    return wrapper


def streaming(handler: Callable[..., AsyncIterator[Any]]) -> Callable[..., AsyncIterator[Any]]:
    """The same as `unary`, for handlers that are async generators (server streaming)."""

    @functools.wraps(handler)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        try:
            requestor_id = self.caller.identify(context)
            async for response in handler(self, request, context, requestor_id):
                yield response
        except errors.ExeUnitError as exc:
            await _abort(context, exc)

    return wrapper


async def _abort(context: grpc.aio.ServicerContext, exc: errors.ExeUnitError) -> None:
    code = code_for(exc)
    log.info("event=call_refused code=%s message=%r", code.name, str(exc))
    await context.abort(code, str(exc))
