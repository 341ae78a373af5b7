"""Every request message of the contract, filled at random, against a real daemon in its own process.

Whatever a caller sends, the daemon answers with a status that names the caller's mistake (or OK),
never UNKNOWN, INTERNAL or UNAVAILABLE, logs one line for it, not a traceback, and keeps serving.
Messages come from the contract's descriptors, so a field added to the proto is fuzzed too; ids
are sometimes those of a real agreement, activity and batch, so calls reach past the lookups.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exeunit.v1 import activity_pb2 as act
from exeunit.v1 import market_pb2 as mkt
from exeunit.v1 import transfer_pb2 as xfer
from tests.client import expiration, identity_named
from tests.conftest import BASE_IMAGE
from tests.daemon_process import Daemon

METHODS: list[MethodDescriptor] = [
    method
    for module in (mkt, act, xfer)
    for service in module.DESCRIPTOR.services_by_name.values()
    for method in service.methods
]
ALLOWED = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.OUT_OF_RANGE,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.DATA_LOSS,  # an upload that ends early or lies about its size
}
INT_RANGES = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}
ODD_STRINGS = [
    "", "/", "..", "/golem/input/../../etc/shadow", "/golem/work/" + "a" * 300, "/golem/work/x", "/etc/passwd",
    "/golem/output", BASE_IMAGE, "sha256:" + "0" * 64, "file:///etc/passwd", "http://127.0.0.1:1/x.tar",
    "\x00", "a" * 5000, "public", "/bin/true",
]


def integers(field: FieldDescriptor) -> st.SearchStrategy[int]:
    low, high = INT_RANGES[field.type]
    return st.integers(low, high) | st.sampled_from([low, high, 0, 1, -1 if low < 0 else 2])


def strings(field: FieldDescriptor, ids: dict[str, list[str]]) -> st.SearchStrategy[str]:
    choices = st.text(max_size=64) | st.sampled_from(ODD_STRINGS)
    if field.name in ids:
        choices = st.sampled_from(ids[field.name]) | choices
    return choices


def scalars(field: FieldDescriptor, ids: dict[str, list[str]], depth: int) -> st.SearchStrategy[Any]:
    kind = field.type
    if kind == FieldDescriptor.TYPE_MESSAGE:
        return messages(field.message_type, ids, depth + 1)
    if kind == FieldDescriptor.TYPE_STRING:
        return strings(field, ids)
    if kind == FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=4096)
    if kind == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if kind in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return st.floats(width=32 if kind == FieldDescriptor.TYPE_FLOAT else 64)
    if kind == FieldDescriptor.TYPE_ENUM:
        return st.integers(-3, 12)  # proto3 enums are open: unknown numbers must be handled too
    return integers(field)


def messages(descriptor: Descriptor, ids: dict[str, list[str]], depth: int = 0) -> st.SearchStrategy[Any]:
    """Random instances of a message type: each field unset or set to anything its type allows."""
    cls = message_factory.GetMessageClass(descriptor)
    if depth > 4:
        return st.builds(cls)
    values: dict[str, st.SearchStrategy[Any]] = {}
    for field in descriptor.fields:
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            key, value = field.message_type.fields_by_name["key"], field.message_type.fields_by_name["value"]
            values[field.name] = st.dictionaries(scalars(key, ids, depth), scalars(value, ids, depth), max_size=3)
        elif field.is_repeated:
            values[field.name] = st.lists(scalars(field, ids, depth), max_size=3)
        else:
            values[field.name] = scalars(field, ids, depth)

    def build(chosen: dict[str, Any]) -> Any:
        message = cls()
        for name, value in chosen.items():
            field = descriptor.fields_by_name[name]
            if field.message_type is not None and field.message_type.GetOptions().map_entry:
                getattr(message, name).update(value)
            elif field.is_repeated:
                getattr(message, name).extend(value)
            elif field.type == FieldDescriptor.TYPE_MESSAGE:
                getattr(message, name).CopyFrom(value)
            else:
                setattr(message, name, value)
        return message

    return st.fixed_dictionaries({}, optional=values).map(build)


class Caller:
    """Calls any method of the contract with raw or typed requests, the way grpcurl would."""

    def __init__(self, port: int, requestor: str) -> None:
        self.channel = grpc.insecure_channel(
            f"127.0.0.1:{port}", options=[("grpc.max_send_message_length", 64 << 20)]
        )
        self.identity = identity_named(requestor)
        offer = self.typed(method("GetOffer"), mkt.GetOfferRequest()).offer
        self.provider_id, self.boot_epoch = offer.provider_id, offer.boot_epoch

    def proof(self, path: str, head: bytes) -> Any:
        """Signed as the requestor library signs, for the bytes sent (the offer, asked for first,
        needs no proof)."""
        return self.identity.proof(self.provider_id, self.boot_epoch, path, head) if hasattr(self, "provider_id") else ()

    def call(self, method: MethodDescriptor, requests: list[bytes]) -> grpc.StatusCode:
        path = f"/{method.containing_service.full_name}/{method.name}"
        identity = dict(request_serializer=None, response_deserializer=None)
        head = requests[0] if requests else b""
        try:
            if method.client_streaming and not method.server_streaming:
                self.channel.stream_unary(path, **identity)(iter(requests), metadata=self.proof(path, head), timeout=15)
            elif method.server_streaming:
                stream = self.channel.unary_stream(path, **identity)(
                    head, metadata=self.proof(path, head), timeout=3
                )
                for _ in zip(range(3), stream):  # enough to see the first answers; live streams go on
                    pass
                stream.cancel()
            else:
                self.channel.unary_unary(path, **identity)(
                    head, metadata=self.proof(path, head), timeout=15
                )
        except grpc.RpcError as exc:
            code = exc.code()
            if code in (grpc.StatusCode.CANCELLED, grpc.StatusCode.DEADLINE_EXCEEDED) and method.server_streaming:
                return grpc.StatusCode.OK  # a live stream we stopped reading
            return code
        return grpc.StatusCode.OK

    def typed(self, method: MethodDescriptor, request: Any) -> Any:
        path = f"/{method.containing_service.full_name}/{method.name}"
        response_class = message_factory.GetMessageClass(method.output_type)
        call = self.channel.unary_unary(path, request_serializer=type(request).SerializeToString,
                                        response_deserializer=response_class.FromString)
        return call(request, metadata=self.proof(path, request.SerializeToString()), timeout=30)


def method(name: str) -> MethodDescriptor:
    return next(m for m in METHODS if m.name == name)


@pytest.fixture(scope="module")
def target(engine: Any) -> Iterator[tuple[Daemon, Caller, dict[str, list[str]]]]:
    daemon = Daemon("--name", "fuzzed")
    caller = Caller(daemon.port, "fuzzer")
    agreement = caller.typed(method("ProposeAgreement"), mkt.ProposeAgreementRequest(
        demand=mkt.Demand(image=mkt.ImageRef(tag=BASE_IMAGE), subnet_tag="public", expiration=expiration())
    )).agreement.agreement_id
    activity = caller.typed(method("CreateActivity"), act.CreateActivityRequest(agreement_id=agreement)).activity_id
    batch = caller.typed(method("Exec"), act.ExecRequest(activity_id=activity, commands=[
        act.Command(deploy=act.DeployCommand()), act.Command(start=act.StartCommand()),
    ])).batch_id
    ids = {"agreement_id": [agreement], "activity_id": [activity], "batch_id": [batch]}
    try:
        yield daemon, caller, ids
    finally:
        caller.channel.close()
        daemon.stop()


def check_answer(daemon: Daemon, caller: Caller, method_: MethodDescriptor, requests: list[bytes]) -> None:
    before = len(daemon.lines)
    code = caller.call(method_, requests)
    assert code in ALLOWED, f"{method_.full_name} answered {code}: {''.join(daemon.lines[before:])[-2000:]}"
    assert daemon.process.poll() is None, "the daemon died"


FUZZ = settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck), database=None)


@pytest.mark.parametrize("rpc", METHODS, ids=lambda m: m.name)
def test_random_requests_get_a_status_that_names_the_callers_mistake(rpc: MethodDescriptor, target: Any) -> None:
    daemon, caller, ids = target

    @FUZZ
    @given(st.lists(messages(rpc.input_type, ids), min_size=1, max_size=3))
    def fuzz(requests: list[Any]) -> None:
        check_answer(daemon, caller, rpc, [r.SerializeToString() for r in requests])

    fuzz()


@pytest.mark.parametrize("rpc", METHODS, ids=lambda m: m.name)
def test_corrupt_bytes_are_invalid_argument(rpc: MethodDescriptor, target: Any) -> None:
    daemon, caller, _ = target

    @FUZZ
    @given(st.lists(st.binary(min_size=1, max_size=256), min_size=1, max_size=2))
    def fuzz(requests: list[bytes]) -> None:
        check_answer(daemon, caller, rpc, requests)

    fuzz()
    # bytes that cannot be any message: a field with wire type 7 (none exists)
    code = caller.call(rpc, [b"\x0f\x00"])
    assert code == grpc.StatusCode.INVALID_ARGUMENT


def test_fuzzing_left_no_traceback_and_the_daemon_still_serves(target: Any) -> None:
    daemon, caller, _ = target
    log = "".join(daemon.lines)
    assert "Traceback" not in log, log[log.index("Traceback") - 500 :][:3000]
    offer = caller.typed(method("GetOffer"), mkt.GetOfferRequest())
    assert offer.offer.provider_name == "fuzzed"
