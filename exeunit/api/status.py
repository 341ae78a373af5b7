"""Domain errors -> gRPC status codes, in one place, for unary and streaming handlers alike.

Also where callers are identified: every handler gets the caller's requestor id from metadata
(`x-requestor-id`), and, when the daemon has a token, `TokenCheck` refuses any call without
`authorization: Bearer <token>` before it reaches a handler: the contract's services and
reflection alike. Only the health service stays open, so probes need no secret.
"""

from __future__ import annotations

import functools
import hmac
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from exeunit import errors
from exeunit.app import metrics
from exeunit.api.handlers import HANDLER_KINDS, MalformedRequest

log = logging.getLogger(__name__)

REQUESTOR_ID_KEY = "x-requestor-id"
AUTHORIZATION_KEY = "authorization"
MAX_REQUESTOR_ID_CHARS = 128
# Status details echo what the caller sent; gRPC refuses trailers over 8 KiB, so keep them short.
MAX_DETAILS_CHARS = 1000
OPEN_SERVICES = ("/grpc.health.v1.Health/",)
TOKEN_HELP = (
    "missing or wrong token: send metadata 'authorization: Bearer <token>' with the daemon's "
    "--auth-token-file secret"
)

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


class Caller:
    """Who is calling, by the requestor id in the call's metadata."""

    def identify(self, context: grpc.aio.ServicerContext) -> str:
        requestor_id = ""
        for key, value in context.invocation_metadata() or ():
            if key == REQUESTOR_ID_KEY:
                requestor_id = str(value).strip()
        if not requestor_id:
            raise errors.Unauthenticated(f"identify yourself with the {REQUESTOR_ID_KEY!r} metadata key")
        if len(requestor_id) > MAX_REQUESTOR_ID_CHARS or not requestor_id.isprintable():
            raise errors.InvalidArgument(
                f"{REQUESTOR_ID_KEY} must be at most {MAX_REQUESTOR_ID_CHARS} printable characters"
            )
        return requestor_id


class OperatorCaller(Caller):
    """On the admin socket the caller is the host's operator (the socket's file mode says who may
    connect), whatever its metadata says."""

    def identify(self, context: grpc.aio.ServicerContext) -> str:
        return "operator"


class TokenCheck(grpc.aio.ServerInterceptor):
    """Refuses every call but health checks unless it carries the daemon's token."""

    def __init__(self, token: str) -> None:
        self._expected = f"Bearer {token}".encode()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or details.method.startswith(OPEN_SERVICES):
            return handler
        given = next((str(v) for k, v in details.invocation_metadata or () if k == AUTHORIZATION_KEY), "")
        if hmac.compare_digest(given.encode(), self._expected):
            return handler
        return _refusing(handler)


def _refusing(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """A handler of the same shape as `handler` that answers UNAUTHENTICATED."""

    async def refuse(request: Any, context: grpc.aio.ServicerContext) -> None:
        log.info("event=call_refused code=UNAUTHENTICATED message=%r", TOKEN_HELP)
        metrics.REFUSED.labels("UNAUTHENTICATED").inc()
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, TOKEN_HELP)

    async def refuse_streaming(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        await refuse(request, context)
        yield  # pragma: no cover - abort raises

    make = HANDLER_KINDS[(handler.request_streaming, handler.response_streaming)]
    behaviour = refuse_streaming if handler.response_streaming else refuse
    return make(
        behaviour,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


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
            requestor_id = self.caller.identify(context)
            return await handler(self, _parsed(request), context, requestor_id)
        except errors.ExeUnitError as exc:
            await _abort(context, exc)
        except grpc.aio.AbortError:
            raise
        except Exception:
            await _internal(context, handler.__name__)

    return wrapper


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
    metrics.REFUSED.labels(code.name).inc()
    await context.abort(code, details)


async def _internal(context: grpc.aio.ServicerContext, method: str) -> None:
    """A bug of ours, not the caller's: logged with its traceback, answered INTERNAL."""
    log.exception("event=call_crashed method=%s", method)
    metrics.REFUSED.labels("INTERNAL").inc()
    await context.abort(grpc.StatusCode.INTERNAL, f"internal error in {method}; the provider's log has the details")


def shorten(text: str, limit: int = MAX_DETAILS_CHARS) -> str:
    """Text cut to `limit` characters, saying so when it was cut."""
    if len(text) <= limit:
        return text
    return text[: limit - 20] + f"... ({len(text) - limit + 20} more)"
