"""Registers the contract's services on a gRPC server with request parsing that cannot fail inside gRPC.

The generated `add_*Servicer_to_server` functions parse requests with `FromString`; bytes that do
not parse (truncated, invalid UTF-8 in a string, nonsense) then fail inside gRPC's own machinery
with UNKNOWN and a traceback in the log. Here a request that does not parse becomes a
`MalformedRequest`, which the status decorators (`exeunit.api.status`) answer with INVALID_ARGUMENT.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import DecodeError, Message


@dataclass(frozen=True)
class MalformedRequest:
    """Stands in for a request message whose bytes did not parse."""

    message_type: str
    error: str


def tolerant_parser(message_class: type[Message]) -> Callable[[bytes], Message | MalformedRequest]:
    def parse(data: bytes) -> Message | MalformedRequest:
        try:
            return message_class.FromString(data)
        except (DecodeError, RecursionError, ValueError) as exc:
            return MalformedRequest(message_class.DESCRIPTOR.full_name, str(exc) or exc.__class__.__name__)

    return parse


# (request streaming, response streaming) -> how a handler of that shape is made
HANDLER_KINDS = {
    (False, False): grpc.unary_unary_rpc_method_handler,
    (False, True): grpc.unary_stream_rpc_method_handler,
    (True, False): grpc.stream_unary_rpc_method_handler,
    (True, True): grpc.stream_stream_rpc_method_handler,
}


def add_service(server: grpc.aio.Server, service: ServiceDescriptor, servicer: Any) -> None:
    """Serves every method of `service` from the same-named method of `servicer`."""
    handlers = {}
    for method in service.methods:
        request_class = message_factory.GetMessageClass(method.input_type)
        response_class = message_factory.GetMessageClass(method.output_type)
        make = HANDLER_KINDS[(method.client_streaming, method.server_streaming)]
        handlers[method.name] = make(
            getattr(servicer, method.name),
            request_deserializer=tolerant_parser(request_class),
            response_serializer=response_class.SerializeToString,
        )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service.full_name, handlers),))
    server.add_registered_method_handlers(service.full_name, handlers)
