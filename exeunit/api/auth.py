"""Who is calling: every handler gets the caller's requestor id from metadata (`x-requestor-id`),
and, when the daemon has a token, `TokenCheck` refuses any call without `authorization: Bearer
<token>` before it reaches a handler: the contract's services and reflection alike. Only the
health service stays open, so probes need no secret. On the operator's socket the caller is the
operator, whatever it says.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from exeunit import errors
from exeunit.api.handlers import HANDLER_KINDS
from exeunit.services import telemetry

log = logging.getLogger(__name__)

REQUESTOR_ID_KEY = "x-requestor-id"
AUTHORIZATION_KEY = "authorization"
MAX_REQUESTOR_ID_CHARS = 128
OPEN_SERVICES = ("/grpc.health.v1.Health/",)
TOKEN_HELP = (
    "missing or wrong token: send metadata 'authorization: Bearer <token>' with the daemon's "
    "--auth-token-file secret"
)


class Caller:
    """Who is calling, by the requestor id in the call's metadata; `on_call` hears of each caller
    identified (the daemon's pacer: bulk data yields while others are being served)."""

    def __init__(self, on_call: Callable[[str], None] = lambda requestor_id: None) -> None:
        self._on_call = on_call

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
        self._on_call(requestor_id)
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
        telemetry.REFUSED.labels("UNAUTHENTICATED").inc()
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
