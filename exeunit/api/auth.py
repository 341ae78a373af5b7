"""Who is calling, proven rather than claimed.

`CallGate`, a server interceptor, sees every call before a handler does. With a daemon token it
first refuses calls without `authorization: Bearer <token>` (the operator's extra gate for a
private provider). Then it verifies the requestor's proof (exeunit.v1.identity): a signature by
the caller's key over this provider's id, the method, a time within the accepted skew and a nonce
not seen before. The ledger of verified proofs remembers which requestor each nonce proved; the
handlers' `Caller` looks the call's nonce up there (a nonce is accepted once, so it names this
call), and nothing the caller merely says about itself is believed. Health
checks stay open, and GetOffer answers callers without a proof too: an offer is public, and a
requestor learns the provider's id from it before it can sign for it.

On the operator's socket the caller is the operator, whatever it says.
"""

from __future__ import annotations

import binascii
import collections
import functools
import hmac
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from exeunit import errors
from exeunit.api.handlers import HANDLER_KINDS
from exeunit.services import telemetry
from exeunit.v1 import identity

log = logging.getLogger(__name__)

AUTHORIZATION_KEY = "authorization"
OPEN_SERVICES = ("/grpc.health.v1.Health/",)
ANONYMOUS_METHODS = ("/exeunit.v1.Market/GetOffer",)
PROOF_KEYS = frozenset({identity.KEY_METADATA, identity.TIME_METADATA, identity.NONCE_METADATA,
                        identity.SIGNATURE_METADATA})
MAX_KEY_BYTES = 512
MAX_SIGNATURE_BYTES = 256
# Proofs seen are remembered until they could no longer be accepted anyway; verifying one costs the
# daemon ~0.1 ms of CPU, so this many cannot be reached by honest traffic (and bounds the memory).
MAX_REMEMBERED_NONCES = 500_000
TOKEN_HELP = (
    "missing or wrong token: send metadata 'authorization: Bearer <token>' with the daemon's "
    "--auth-token-file secret"
)
PROOF_HELP = (
    "sign each call with a requestor key: metadata {key}, {time}, {nonce} and {signature} "
    "(the requestor library does this; see exeunit/v1/identity.py)"
).format(key=identity.KEY_METADATA, time=identity.TIME_METADATA, nonce=identity.NONCE_METADATA,
         signature=identity.SIGNATURE_METADATA)

class Caller:
    """The caller of the call being handled, as CallGate proved it; `on_call` hears of each caller
    identified (the daemon's pacer: bulk data yields while others are being served)."""

    def __init__(self, proofs: ProofCheck | None = None,
                 on_call: Callable[[str], None] = lambda requestor_id: None) -> None:
        self._proofs = proofs
        self._on_call = on_call

    def identify(self, context: grpc.aio.ServicerContext, anonymous_ok: bool = False) -> str:
        """The proven requestor id; "" for an anonymous call to a handler that takes one."""
        key = nonce = None
        for name, value in context.invocation_metadata() or ():  # the first of each, as CallGate read them
            if name == identity.KEY_METADATA and key is None:
                key = value
            elif name == identity.NONCE_METADATA and nonce is None:
                nonce = value
        requestor_id = self._proofs.proven(nonce) if self._proofs and key and isinstance(nonce, str) else ""
        if not requestor_id:
            if anonymous_ok:
                return ""
            raise errors.Unauthenticated(PROOF_HELP)  # CallGate let an unproven call through: never act on it
        self._on_call(requestor_id)
        return requestor_id


class OperatorCaller(Caller):
    """On the admin socket the caller is the host's operator (the socket's file mode says who may
    connect), whatever its metadata says."""

    def identify(self, context: grpc.aio.ServicerContext, anonymous_ok: bool = False) -> str:
        return "operator"


class NonceLedger:
    """Nonces of accepted proofs, each kept until its proof's time is out of the window."""

    def __init__(self, keep_seconds: float, capacity: int = MAX_REMEMBERED_NONCES) -> None:
        self._keep = keep_seconds
        self._capacity = capacity
        self._owners: dict[str, str] = {}  # nonce -> the requestor whose proof carried it
        self._order: collections.deque[tuple[float, str]] = collections.deque()

    def record(self, nonce: str, requestor_id: str, now: float) -> None:
        """Remembers `nonce` as `requestor_id`'s; Unauthenticated when it was already used,
        ResourceExhausted when more calls came within the window than the ledger holds."""
        while self._order and self._order[0][0] <= now:
            self._owners.pop(self._order.popleft()[1], None)
        if nonce in self._owners:
            raise errors.Unauthenticated("this call's proof was used before: sign every call afresh")
        if len(self._owners) >= self._capacity:
            raise errors.ResourceExhausted("too many calls in the last minutes; slow down")
        self._owners[nonce] = requestor_id
        self._order.append((now + self._keep, nonce))

    def owner(self, nonce: str) -> str:
        return self._owners.get(nonce, "")

    def __len__(self) -> int:
        return len(self._owners)


@functools.lru_cache(maxsize=4096)
def _public_key(spki_der: bytes) -> ec.EllipticCurvePublicKey:
    key = serialization.load_der_public_key(spki_der)
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise ValueError("not a P-256 public key")
    return key


class ProofCheck:
    """Verifies requestor proofs bound to one provider id."""

    def __init__(self, provider_id: str, clock: Callable[[], float] = time.time) -> None:
        self.provider_id = provider_id
        self._clock = clock
        self._nonces = NonceLedger(2 * identity.MAX_CLOCK_SKEW_SECONDS)

    def requestor_of(self, method: str, metadata: dict[str, str | bytes]) -> str:
        """The id of the key that signed this call; Unauthenticated saying what is wrong."""
        spki, signature = metadata.get(identity.KEY_METADATA), metadata.get(identity.SIGNATURE_METADATA)
        stamp, nonce = metadata.get(identity.TIME_METADATA), metadata.get(identity.NONCE_METADATA)
        if spki is None or signature is None or stamp is None or nonce is None:
            raise errors.Unauthenticated(PROOF_HELP)
        if not isinstance(spki, bytes) or not isinstance(signature, bytes) or not isinstance(stamp, str) \
                or not isinstance(nonce, str):
            raise errors.Unauthenticated(PROOF_HELP)
        if len(spki) > MAX_KEY_BYTES or len(signature) > MAX_SIGNATURE_BYTES:
            raise errors.Unauthenticated("the call's key or signature is too long to be a P-256 one")
        if len(nonce) != identity.NONCE_HEX_CHARS or not _is_hex(nonce):
            raise errors.Unauthenticated(f"{identity.NONCE_METADATA} must be {identity.NONCE_HEX_CHARS} hex digits")
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
            key.verify(signature, identity.proof_message(self.provider_id, method, int(stamp), nonce),
                       identity.SIGNATURE_ALGORITHM)
        except InvalidSignature:
            raise errors.Unauthenticated(
                f"the call's signature does not verify for provider {self.provider_id} and {method}: "
                "sign for the provider you are calling"
            ) from None
        requestor_id = identity.node_id_of_spki(spki)
        self._nonces.record(nonce, requestor_id, now)
        return requestor_id

    def proven(self, nonce: str) -> str:
        """The requestor a verified call with this nonce proved to be ("" for none)."""
        return self._nonces.owner(nonce)


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
            self._proofs.requestor_of(details.method, metadata)
        except errors.Unauthenticated as exc:
            return _refusing(handler, grpc.StatusCode.UNAUTHENTICATED, str(exc))
        except errors.ResourceExhausted as exc:
            return _refusing(handler, grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
        return handler


def _refusing(handler: grpc.RpcMethodHandler, code: grpc.StatusCode, message: str) -> grpc.RpcMethodHandler:
    """A handler of the same shape as `handler` that answers `code` with `message`."""

    async def refuse(request: Any, context: grpc.aio.ServicerContext) -> None:
        log.info("event=call_refused code=%s message=%r", code.name, message)
        telemetry.REFUSED.labels(code.name).inc()
        await context.abort(code, message)

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
