"""The Service API: `Service`, its `ServiceState`, and the `Cluster` of its instances."""

from requestor.services.cluster import Cluster
from requestor.services.service import Service, ServiceSignal
from requestor.services.state import ServiceState

__all__ = ["Cluster", "Service", "ServiceSignal", "ServiceState"]
