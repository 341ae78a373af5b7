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

from exeunit.v1.chunks import decode_chunk, serialized

# The messages that carry a transfer's chunks, (de)serialized by hand (exeunit.v1.chunks): each
# chunk copied once on the way out, not at all on the way in.
CHUNK_REQUESTS = frozenset({"exeunit.v1.UploadRequest"})
CHUNK_RESPONSES = frozenset({"exeunit.v1.DownloadResponse"})


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


def chunk_parser(message_class: type[Message]) -> Callable[[bytes], Any]:
    """`tolerant_parser`, but a message that is exactly one chunk is read without a copy."""
    parse = tolerant_parser(message_class)
    return lambda data: decode_chunk(data) or parse(data)


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
        chunked_in = method.input_type.full_name in CHUNK_REQUESTS
        chunked_out = method.output_type.full_name in CHUNK_RESPONSES
        handlers[method.name] = make(
            getattr(servicer, method.name),
            request_deserializer=(chunk_parser if chunked_in else tolerant_parser)(request_class),
            response_serializer=serialized if chunked_out else response_class.SerializeToString,
        )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service.full_name, handlers),))
    server.add_registered_method_handlers(service.full_name, handlers)
