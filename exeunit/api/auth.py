"""Who is calling, proven rather than claimed.

`CallGate`, a server interceptor, sees every call before a handler does. With a daemon token it
first refuses calls without `authorization: Bearer <token>` (the operator's extra gate for a
private provider). Then it verifies the requestor's proof (exeunit.v1.identity): a signature by
the caller's key over this provider's id, this start's boot epoch, the method, a time within the
accepted skew, a nonce not seen before (exeunit.api.nonces keeps them, per requestor) and the
SHA-256 of the request. An interceptor sees only metadata, so the gate hands gRPC the handler
wrapped: its request deserializer hashes the request's bytes (a client stream's first message)
before parsing them, and a request other than the one signed never reaches the handler. The
wrapper also tells the handlers' `Caller` whom the gate proved, for this call only (a context
variable of the call's task); nothing the caller merely says about itself is believed. Health
checks stay open, and GetOffer answers callers without a proof too: an offer is public, and a
requestor learns the provider's id and boot epoch from it before it can sign for them.

On the operator's socket the caller is the operator, whatever it says.
"""

from __future__ import annotations

import binascii
import functools
import hmac
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import grpc
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from exeunit import errors
from exeunit.api.handlers import HANDLER_KINDS
from exeunit.api.nonces import NonceLedger
from exeunit.services import telemetry
from exeunit.v1 import identity

log = logging.getLogger(__name__)

AUTHORIZATION_KEY = "authorization"
OPEN_SERVICES = ("/grpc.health.v1.Health/",)
ANONYMOUS_METHODS = ("/exeunit.v1.Market/GetOffer",)
PROOF_KEYS = frozenset({identity.KEY_METADATA, identity.TIME_METADATA, identity.NONCE_METADATA,
                        identity.SIGNATURE_METADATA, identity.EPOCH_METADATA, identity.BODY_METADATA})
MAX_KEY_BYTES = 512
MAX_SIGNATURE_BYTES = 256
EMPTY_DIGEST = identity.body_digest(b"")
LOWER_HEX = frozenset("0123456789abcdef")
TOKEN_HELP = (
    "missing or wrong token: send metadata 'authorization: Bearer <token>' with the daemon's "
    "--auth-token-file secret"
)
PROOF_HELP = (
    "sign each call with a requestor key: metadata {keys} (the requestor library does this; see "
    "exeunit/v1/identity.py)"
).format(keys=", ".join(sorted(PROOF_KEYS)))
BODY_HELP = (
    f"the request is not the one this call's proof signed ({identity.BODY_METADATA}): sign the SHA-256 of "
    "the request's bytes (of a client stream's first message)"
)

# The requestor the gate proved for the call being handled: set by the gate's wrapper in the
# call's own task, so that each call sees its own.
_PROVEN_REQUESTOR: ContextVar[str] = ContextVar("proven_requestor", default="")
# And the key (DER SubjectPublicKeyInfo) its proof verified with, the same way.
_PROVEN_KEY: ContextVar[bytes] = ContextVar("proven_key", default=b"")


class Caller:
    """The caller of the call being handled, as CallGate proved it; `on_call` hears of each caller
    identified (the daemon's pacer: bulk data yields while others are being served)."""

    def __init__(self, proofs: ProofCheck | None = None,
                 on_call: Callable[[str], None] = lambda requestor_id: None) -> None:
        self._proofs = proofs
        self._on_call = on_call

    @property
    def boot_epoch(self) -> str:
        """The epoch proofs are signed for at this start of the daemon (stated in the offer)."""
        return self._proofs.boot_epoch if self._proofs is not None else ""

    def identify(self, context: grpc.aio.ServicerContext, anonymous_ok: bool = False) -> str:
        """The proven requestor id; "" for an anonymous call to a handler that takes one."""
        requestor_id = _PROVEN_REQUESTOR.get() if self._proofs is not None else ""
        if not requestor_id:
            if anonymous_ok:
                return ""
            raise errors.Unauthenticated(PROOF_HELP)  # CallGate let an unproven call through: never act on it
        self._on_call(requestor_id)
        return requestor_id

    def public_key(self) -> bytes:
        """The proven caller's public key (DER SubjectPublicKeyInfo), whose id `identify` returns;
        b"" for an anonymous call."""
        return _PROVEN_KEY.get() if self._proofs is not None else b""


class OperatorCaller(Caller):
    """On the admin socket the caller is the host's operator (the socket's file mode says who may
    connect), whatever its metadata says."""

    def identify(self, context: grpc.aio.ServicerContext, anonymous_ok: bool = False) -> str:
        return "operator"


class StaleEpoch(errors.Unauthenticated):
    """A proof made for another start of this daemon: the requestor asks for the offer again."""


@dataclass(frozen=True)
class Proven:
    """What a verified proof says: who signed it, and the SHA-256 of the request it signed."""

    requestor_id: str
    digest: str
    key: bytes = b""  # the caller's DER SubjectPublicKeyInfo


@functools.lru_cache(maxsize=4096)
def _public_key(spki_der: bytes) -> ec.EllipticCurvePublicKey:
    key = serialization.load_der_public_key(spki_der)
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise ValueError("not a P-256 public key")
    return key


class ProofCheck:
    """Verifies requestor proofs bound to one provider id and one start of its daemon."""

    def __init__(self, provider_id: str, nonces: NonceLedger | None = None, boot_epoch: str | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.provider_id = provider_id
        self.boot_epoch = boot_epoch or identity.new_boot_epoch()
        self.nonces = nonces if nonces is not None else NonceLedger()
        self._clock = clock

    def verify(self, method: str, metadata: dict[str, str | bytes]) -> Proven:
        """Who signed this call, and for which request; Unauthenticated saying what is wrong
        (StaleEpoch for a proof made for another start), ResourceExhausted past the nonces'
        bounds."""
        spki, signature = metadata.get(identity.KEY_METADATA), metadata.get(identity.SIGNATURE_METADATA)
        stamp, nonce = metadata.get(identity.TIME_METADATA), metadata.get(identity.NONCE_METADATA)
        epoch, digest = metadata.get(identity.EPOCH_METADATA), metadata.get(identity.BODY_METADATA)
        if not isinstance(spki, bytes) or not isinstance(signature, bytes) or not isinstance(stamp, str) \
                or not isinstance(nonce, str) or not isinstance(epoch, str) or not isinstance(digest, str):
            raise errors.Unauthenticated(PROOF_HELP)
        if len(spki) > MAX_KEY_BYTES or len(signature) > MAX_SIGNATURE_BYTES:
            raise errors.Unauthenticated("the call's key or signature is too long to be a P-256 one")
        if len(nonce) != identity.NONCE_HEX_CHARS or not _is_hex(nonce):
            raise errors.Unauthenticated(f"{identity.NONCE_METADATA} must be {identity.NONCE_HEX_CHARS} hex digits")
        if len(digest) != identity.DIGEST_HEX_CHARS or not LOWER_HEX.issuperset(digest):
            raise errors.Unauthenticated(f"{identity.BODY_METADATA} must be the request's SHA-256 in "
                                         f"{identity.DIGEST_HEX_CHARS} lower-case hex digits")
        if epoch != self.boot_epoch:
            raise StaleEpoch(
                f"this call's proof was made for the daemon's boot epoch {epoch[:identity.EPOCH_HEX_CHARS]!r}, but it "
                f"started again as {self.boot_epoch}: ask for the offer again (GetOffer) and sign for its boot_epoch"
            )
        if not stamp.isdigit() or len(stamp) > 16:
            raise errors.Unauthenticated(f"{identity.TIME_METADATA} must be milliseconds since the epoch")
        now = self._clock()
        skew = int(stamp) / 1000 - now
        if abs(skew) > identity.MAX_CLOCK_SKEW_SECONDS:
            raise errors.Unauthenticated(
                f"the call's time is {skew:+.0f} s from the provider's clock (at most "
                f"{identity.MAX_CLOCK_SKEW_SECONDS:.0f} s either way): set this host's clock right (NTP)"
            )
        try:
            key = _public_key(spki)
        except ValueError as exc:
            raise errors.Unauthenticated(f"{identity.KEY_METADATA} is not a usable public key ({exc})") from None
        try:
            key.verify(signature, identity.proof_message(self.provider_id, epoch, method, int(stamp), nonce, digest),
                       identity.SIGNATURE_ALGORITHM)
        except InvalidSignature:
            raise errors.Unauthenticated(
                f"the call's signature does not verify for provider {self.provider_id} and {method}: "
                "sign for the provider you are calling"
            ) from None
        requestor_id = identity.node_id_of_spki(spki)
        # kept until the proof's time is out of the window (it is now within it)
        self.nonces.record(requestor_id, nonce, int(stamp) / 1000 + identity.MAX_CLOCK_SKEW_SECONDS, now)
        return Proven(requestor_id, digest, spki)


def _is_hex(text: str) -> bool:
    try:
        binascii.unhexlify(text)
    except (binascii.Error, ValueError):
        return False
    return True


class CallGate(grpc.aio.ServerInterceptor):
    """The token (when the daemon has one), then the requestor's proof, before any handler."""

    def __init__(self, proofs: ProofCheck, token: str | None = None) -> None:
        self._proofs = proofs
        self._expected = f"Bearer {token}".encode() if token is not None else None

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or details.method.startswith(OPEN_SERVICES):
            return handler
        metadata: dict[str, str | bytes] = {}
        for key, value in details.invocation_metadata or ():
            if key in PROOF_KEYS and key in metadata:  # one proof per call: a second could name another's nonce
                return _refusing(handler, grpc.StatusCode.UNAUTHENTICATED, f"{key} is given twice; send one proof")
            metadata.setdefault(key, value)
        if self._expected is not None:
            given = metadata.get(AUTHORIZATION_KEY, "")
            given_bytes = given.encode() if isinstance(given, str) else given
            if not hmac.compare_digest(given_bytes, self._expected):
                return _refusing(handler, grpc.StatusCode.UNAUTHENTICATED, TOKEN_HELP)
        if identity.KEY_METADATA not in metadata and details.method in ANONYMOUS_METHODS:
            return handler
        try:
            proven = self._proofs.verify(details.method, metadata)
        except StaleEpoch as exc:
            return _refusing(handler, grpc.StatusCode.UNAUTHENTICATED, str(exc),
                             ((identity.PROVIDER_EPOCH_METADATA, self._proofs.boot_epoch),))
        except errors.Unauthenticated as exc:
            return _refusing(handler, grpc.StatusCode.UNAUTHENTICATED, str(exc))
        except errors.ResourceExhausted as exc:
            return _refusing(handler, grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
        return _proven(handler, proven, bound=details.method not in identity.UNBOUND_STREAMS)


class _Unproven:
    """Stands in for a request whose bytes are not the ones its proof signed."""


UNPROVEN = _Unproven()


class _HeadCheck:
    """The request deserializer of one proven call: the first message's bytes are parsed only
    when they hash to the digest the proof signed."""

    def __init__(self, parse: Callable[[bytes], Any] | None, digest: str) -> None:
        self._parse = parse
        self._digest = digest
        self.seen = False

    def __call__(self, data: bytes) -> Any:
        if not self.seen:
            self.seen = True
            if identity.body_digest(data) != self._digest:
                return UNPROVEN
        return self._parse(data) if self._parse is not None else data


def _proven(handler: grpc.RpcMethodHandler, proven: Proven, bound: bool) -> grpc.RpcMethodHandler:
    """`handler` for a call whose proof verified: the request (a stream's first message) checked
    against the signed digest unless the method is unbound, and the caller's id for `Caller`."""
    check = _HeadCheck(handler.request_deserializer, proven.digest) if bound else None

    async def checked(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        async for request in requests:
            if request is UNPROVEN:
                await _refuse(context, grpc.StatusCode.UNAUTHENTICATED, BODY_HELP)
            yield request
        if check is not None and not check.seen and proven.digest != EMPTY_DIGEST:
            await _refuse(context, grpc.StatusCode.UNAUTHENTICATED, BODY_HELP)  # a signed head, never sent

    def entered(request: Any, context: grpc.aio.ServicerContext) -> Any:
        _PROVEN_REQUESTOR.set(proven.requestor_id)
        _PROVEN_KEY.set(proven.key)
        if handler.request_streaming:
            return checked(request, context) if check is not None else request
        return request

    async def unary_response(request: Any, context: grpc.aio.ServicerContext) -> Any:
        request = entered(request, context)
        if request is UNPROVEN:
            await _refuse(context, grpc.StatusCode.UNAUTHENTICATED, BODY_HELP)
        return await behaviour(request, context)

    async def streamed_response(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        request = entered(request, context)
        if request is UNPROVEN:
            await _refuse(context, grpc.StatusCode.UNAUTHENTICATED, BODY_HELP)
        async for response in behaviour(request, context):
            yield response

    shape = (handler.request_streaming, handler.response_streaming)
    behaviour = {(False, False): handler.unary_unary, (False, True): handler.unary_stream,
                 (True, False): handler.stream_unary, (True, True): handler.stream_stream}[shape]
    return HANDLER_KINDS[shape](
        streamed_response if handler.response_streaming else unary_response,
        request_deserializer=check or handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


async def _refuse(context: grpc.aio.ServicerContext, code: grpc.StatusCode, message: str,
                  trailing: tuple[tuple[str, str], ...] = ()) -> None:
    log.info("event=call_refused code=%s message=%r", code.name, message)
    telemetry.REFUSED.labels(code.name).inc()
    await context.abort(code, message, trailing)


def _refusing(handler: grpc.RpcMethodHandler, code: grpc.StatusCode, message: str,
              trailing: tuple[tuple[str, str], ...] = ()) -> grpc.RpcMethodHandler:
    """A handler of the same shape as `handler` that answers `code` with `message`."""

    async def refuse(request: Any, context: grpc.aio.ServicerContext) -> None:
        await _refuse(context, code, message, trailing)

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
