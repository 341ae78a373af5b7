"""Domain errors -> gRPC status codes, in one place, for unary and streaming handlers alike.

Every handler also gets the caller's identity (exeunit.api.auth) before it runs.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from exeunit import errors
from exeunit.services import telemetry
from exeunit.api.handlers import MalformedRequest

log = logging.getLogger(__name__)

# Status details echo what the caller sent; gRPC refuses trailers over 8 KiB, so keep them short.
MAX_DETAILS_CHARS = 1000

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
    errors.TimedOut: grpc.StatusCode.DEADLINE_EXCEEDED,
    errors.RuntimeFailure: grpc.StatusCode.UNAVAILABLE,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
}


def code_for(exc: errors.ExeUnitError) -> grpc.StatusCode:
    for cls in type(exc).__mro__:
        if cls in CODES:
            return CODES[cls]
    return grpc.StatusCode.INTERNAL


def _parsed(request: Any) -> Any:
    """The request, or INVALID_ARGUMENT when its bytes did not parse (see exeunit.api.handlers)."""
    if isinstance(request, MalformedRequest):
        raise errors.InvalidArgument(f"the request is not a valid {request.message_type} message: {request.error}")
    if hasattr(request, "__aiter__"):
        return _parsed_stream(request)
    return request


async def _parsed_stream(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    async for request in requests:
        yield _parsed(request)


def unary(handler: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """Wraps a unary handler(self, request, context, requestor_id): identifies the caller and
    turns domain errors into status codes."""

    @functools.wraps(handler)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            requestor_id = self.caller.identify(context, getattr(handler, "anonymous_ok", False))
            return await handler(self, _parsed(request), context, requestor_id)
        except errors.ExeUnitError as exc:
            await _abort(context, exc)
        except grpc.aio.AbortError:
            raise
        except Exception:
            await _internal(context, handler.__name__)

    return wrapper


def anonymous_ok(handler: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """Marks a handler that answers callers without a proof (requestor_id "" then); under @unary."""
    handler.anonymous_ok = True  # type: ignore[attr-defined]
    return handler


def streaming(handler: Callable[..., AsyncIterator[Any]]) -> Callable[..., AsyncIterator[Any]]:
    """The same as `unary`, for handlers that are async generators (server streaming)."""

    @functools.wraps(handler)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        try:
            requestor_id = self.caller.identify(context)
            async for response in handler(self, _parsed(request), context, requestor_id):
                yield response
        except errors.ExeUnitError as exc:
            await _abort(context, exc)
        except grpc.aio.AbortError:
            raise
        except Exception:
            await _internal(context, handler.__name__)

    return wrapper


async def _abort(context: grpc.aio.ServicerContext, exc: errors.ExeUnitError) -> None:
    code = code_for(exc)
    details = shorten(str(exc))
    log.info("event=call_refused code=%s message=%r", code.name, details)
    telemetry.REFUSED.labels(code.name).inc()
    await context.abort(code, details)


async def _internal(context: grpc.aio.ServicerContext, method: str) -> None:
    """A bug of ours, not the caller's: logged with its traceback, answered INTERNAL."""
    log.exception("event=call_crashed method=%s", method)
    telemetry.REFUSED.labels("INTERNAL").inc()
    await context.abort(grpc.StatusCode.INTERNAL, f"internal error in {method}; the provider's log has the details")


def shorten(text: str, limit: int = MAX_DETAILS_CHARS) -> str:
    """Text cut to `limit` characters, saying so when it was cut."""
    if len(text) <= limit:
        return text
    return text[: limit - 20] + f"... ({len(text) - limit + 20} more)"
