"""The requestor's client of provider daemons: all of its gRPC and protobuf, behind calls that take
and return the records of requestor.model."""

from requestor.client.provider import ActivityHandle, ProviderClient

__all__ = ["ActivityHandle", "ProviderClient"]
